/*
 * file_wait.c: a future's waiter on the file store (see file_wait.h).
 *
 * Objects appear by rename (a put) or by a no-replace rename or link (a
 * future's set), which inotify reports on the directory as IN_MOVED_TO or
 * IN_CREATE with the entry's name. The watch is armed first and the name
 * checked after, so a set that lands before the watch exists is found by
 * the check and one after it by the watch: nothing is missed and nothing
 * polls. Every waiter has an inotify instance of its own, for the length
 * of its wait (the kernel limits instances per user:
 * fs.inotify.max_user_instances, 128 by default).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "file_lease.h"
#include "file_wait.h"

#define WATCH (IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | \
               IN_ONLYDIR)

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Milliseconds poll may wait until end (-1: no end). */
static int ms_until(double end) {
  if (isinf(end)) return -1;
  double left = end - mono_now();
  if (left <= 0) return 0;
  return left * 1000 >= INT_MAX - 1 ? INT_MAX : (int)(left * 1000) + 1;
}

/*
 * Reads the queued events: 1 when one names name (or the queue overflowed:
 * look again), -1 when the directory itself went away, 0 otherwise.
 */
static int drain(int ifd, const char *name) {
  char buf[16 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
      __attribute__((aligned(__alignof__(struct inotify_event))));
  int hit = 0;
  for (;;) {
    ssize_t n = read(ifd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return hit;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) return -1;
      if (ev->mask & IN_Q_OVERFLOW) hit = 1;
      else if (ev->len && strcmp(ev->name, name) == 0) hit = 1;
      p += sizeof *ev + ev->len;
    }
  }
}

int ps_fwait(int dirfd, const char *dir, const char *name, const char *shown,
             double timeout, ps_berr *err) {
  if (ps_flease_present(dirfd, name)) return PS_BOK;
  double end = timeout >= 0 ? mono_now() + timeout : INFINITY;
  if (timeout == 0) goto timed_out;
  int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (ifd < 0)
    return ps_berr_set(err, PS_BIO, "cannot watch '%s' for future '%s': "
                       "inotify: %s%s", dir, shown, strerror(errno),
                       errno == EMFILE ? " (fs.inotify.max_user_instances)"
                                       : "");
  /* Watch the directory this store has open, even if renamed since. */
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", dirfd);
  if (inotify_add_watch(ifd, path, WATCH) < 0 &&
      inotify_add_watch(ifd, dir, WATCH) < 0) {
    int e = errno;
    close(ifd);
    return ps_berr_set(err, PS_BIO, "cannot watch '%s' for future '%s': "
                       "inotify: %s", dir, shown, strerror(e));
  }
  /* Armed: a set from now on wakes us; this check finds one before. */
  int code = PS_BOK;
  while (!ps_flease_present(dirfd, name)) {
    struct pollfd pfd = {.fd = ifd, .events = POLLIN};
    int ms = ms_until(end);
    if (ms == 0) {
      close(ifd);
      goto timed_out;
    }
    int r = poll(&pfd, 1, ms);
    if (r < 0 && errno != EINTR) {
      code = ps_berr_set(err, PS_BIO, "waiting for future '%s' in '%s': "
                         "poll: %s", shown, dir, strerror(errno));
      break;
    }
    if (r > 0 && drain(ifd, name) < 0) {
      if (ps_flease_present(dirfd, name)) break;
      code = ps_berr_set(err, PS_BIO, "waiting for future '%s': directory "
                         "'%s' was removed", shown, dir);
      break;
    }
  }
  close(ifd);
  return code;
timed_out:
  return ps_berr_set(err, PS_BTIMEOUT, "future '%s' was not set within %gs",
                     shown, timeout);
}
