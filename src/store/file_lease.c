/*
 * file_lease.c: leases on the file store (see file_lease.h).
 *
 * Why a mark file and a mode bit: the lease must be readable by any
 * process with nothing but the directory (the one that set it may be
 * dead), cost nothing for objects without one, and survive the object
 * being replaced by rename. A stored file's own times are its version,
 * so they cannot hold the lease's end; extended attributes are missing
 * on tmpfs before Linux 6.6 and on many NFS servers. The mark's mtime is
 * set with futimens, which works on any filesystem.
 *
 * Races: a put of a leased object sets the mark before it renames the
 * object into place, so a visible leased object always has a mark unless
 * it is being evicted or swept (then "not found" is right). The sweeper
 * never deletes a file it only looked at: it renames the object (and the
 * mark) aside, checks again, and puts back what turned out fresh.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "file_lease.h"
#include "ps.h"

#define MARK_PATH_MAX (sizeof PS_FLEASE_DIR + NAME_MAX + 1)
#define ASIDE_PREFIX ".ps-tmp-sweep-"

static void mark_path(char out[MARK_PATH_MAX], const char *name) {
  snprintf(out, MARK_PATH_MAX, "%s/%s", PS_FLEASE_DIR, name);
}

static int past(const struct timespec *t) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return t->tv_sec < now.tv_sec ||
         (t->tv_sec == now.tv_sec && t->tv_nsec <= now.tv_nsec);
}

int ps_flease_set(int dirfd, const char *name, int64_t ttl_ms) {
  struct timespec end[2];
  clock_gettime(CLOCK_REALTIME, &end[0]);
  end[0].tv_sec += (time_t)(ttl_ms / 1000);
  end[0].tv_nsec += (long)(ttl_ms % 1000) * 1000000L;
  if (end[0].tv_nsec >= 1000000000L) {
    end[0].tv_sec++;
    end[0].tv_nsec -= 1000000000L;
  }
  end[1] = end[0];
  char path[MARK_PATH_MAX];
  mark_path(path, name);
  /* A sweeper may remove the (empty) mark directory between our mkdir and
     our create: try again. */
  for (int tries = 0; tries < 4; tries++) {
    if (mkdirat(dirfd, PS_FLEASE_DIR, 0700) != 0 && errno != EEXIST)
      return -1;
    int fd = openat(dirfd, path,
                    O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                    0600);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      return -1;
    }
    int rc = futimens(fd, end);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
  }
  return -1;
}

int ps_flease_ended(int dirfd, const char *name) {
  char path[MARK_PATH_MAX];
  mark_path(path, name);
  struct stat st;
  if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0) return 1;
  return past(&st.st_mtim);
}

int ps_flease_present(int dirfd, const char *name) {
  struct stat st;
  /* a symlink is no object: this store never writes one (reads refuse it) */
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode))
    return 0;
  return !PS_FLEASE_MARKED(&st) || !ps_flease_ended(dirfd, name);
}

int ps_flease_drop(int dirfd, const char *name) {
  char path[MARK_PATH_MAX];
  mark_path(path, name);
  return unlinkat(dirfd, path, 0) == 0;
}

/* Puts back a file moved aside that turned out fresh; a newer file under
   the name meanwhile wins (a rename would have replaced ours anyway). */
static void put_back(int dirfd, const char *aside, const char *name) {
  if (renameat2(dirfd, aside, dirfd, name, RENAME_NOREPLACE) != 0)
    unlinkat(dirfd, aside, 0);
}

void ps_flease_reap(int dirfd, const char *name) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode) || !PS_FLEASE_MARKED(&st) ||
      !ps_flease_ended(dirfd, name))
    return;
  char rnd[33], aside[sizeof ASIDE_PREFIX + 32];
  ps_key_random(rnd);
  snprintf(aside, sizeof aside, "%s%s", ASIDE_PREFIX, rnd);
  if (renameat(dirfd, name, dirfd, aside) != 0) return;
  /* A leased put sets its mark before its rename: if one came in between,
     the mark is fresh now and what we moved may be its object. */
  if (fstatat(dirfd, aside, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      PS_FLEASE_MARKED(&st) && ps_flease_ended(dirfd, name))
    unlinkat(dirfd, aside, 0);
  else
    put_back(dirfd, aside, name);
}

/* Drops the mark of name when it has passed, moving it aside first: a put
   may be refreshing it for a new object. */
static void drop_if_past(int ldfd, const char *name) {
  char rnd[33], aside[sizeof ASIDE_PREFIX + 32];
  ps_key_random(rnd);
  snprintf(aside, sizeof aside, "%s%s", ASIDE_PREFIX, rnd);
  if (renameat(ldfd, name, ldfd, aside) != 0) return;
  struct stat st;
  if (fstatat(ldfd, aside, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      past(&st.st_mtim))
    unlinkat(ldfd, aside, 0);
  else
    put_back(ldfd, aside, name);
}

void ps_flease_sweep(int dirfd) {
  int ldfd = openat(dirfd, PS_FLEASE_DIR,
                    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  if (ldfd < 0) return;
  int fd = dup(ldfd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (d == NULL) {
    if (fd >= 0) close(fd);
    close(ldfd);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const char *n = e->d_name;
    struct stat st;
    if (n[0] == '.') {
      /* a mark moved aside by a sweeper that died: nothing refers to it */
      if (strncmp(n, ASIDE_PREFIX, sizeof ASIDE_PREFIX - 1) == 0)
        unlinkat(ldfd, n, 0);
      continue;
    }
    if (fstatat(ldfd, n, &st, AT_SYMLINK_NOFOLLOW) != 0 || !past(&st.st_mtim))
      continue;   /* an unexpired mark stays, even if its object is gone:
                     a put may be about to rename that object into place */
    ps_flease_reap(dirfd, n);
    drop_if_past(ldfd, n);
  }
  closedir(d);
  close(ldfd);
  /* Only an empty directory goes. */
  unlinkat(dirfd, PS_FLEASE_DIR, AT_REMOVEDIR);
}
