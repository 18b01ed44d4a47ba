/*
 * pool_zygote.c: the process that forks a pool's workers.
 *
 * The pool forks the zygote once, when it starts; every worker, first ones
 * and replacements alike, is forked from the zygote, so each begins with
 * the parent's Lua globals exactly as they were at pool start, whatever the
 * parent changed since. The zygote reaps its workers and tells the parent
 * how each one ended (exit code or signal), which the parent cannot learn
 * itself since they are not its children.
 *
 * Lifetime: workers die with the zygote (PR_SET_PDEATHSIG) and leave when
 * their socket reaches end of file. The zygote sees end of file on its
 * control socket when the parent closes the pool or dies in any way (the
 * kernel closes a dead process's fds). After a close on purpose (a DRAIN
 * message first: the parent has waited for its tasks, so workers are idle)
 * it gives workers a little time to leave by themselves; when the parent
 * vanished (os.exit, a crash) nobody will read what workers make, so it
 * kills them at once. Then it reaps them all, removes the pool's private
 * store directory and exits: no orphans, no zombies, no files left behind.
 * SIGTERM or SIGHUP (timeout(1), a closed terminal, kill -- -PGID: often
 * the whole process group at once) end it the same way, so the directory
 * goes even when the parent died of the same signal.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

#define GRACE_MS 5000
#define MAXKIDS 4096

typedef struct zygote {
  int ctl;
  int sfd;              /* signalfd for SIGCHLD, SIGTERM and SIGHUP */
  pid_t kids[MAXKIDS];  /* live workers, 0 for a free entry */
} zygote;

static void zsend(int ctl, int type, int slot, int pid, int status) {
  ps_zmsg m = {type, slot, pid, status};
  while (send(ctl, &m, sizeof m, MSG_NOSIGNAL) < 0 && errno == EINTR) {}
}

/* Dies when the process that forked us does; covers the race where it
 * died before prctl took effect. */
static void die_with_parent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
}

/* shm: the slot's memfd, or -1; out: the relay pipes for stdout and
 * stderr, or -1. */
static void become_worker(lua_State *L, zygote *z, int fd, int shm,
                          const int out[2], int fn_idx, pid_t zpid) {
  close(z->ctl);
  close(z->sfd);
  if (out[0] >= 0) {
    fflush(NULL);
    dup2(out[0], 1);
    dup2(out[1], 2);
    close(out[0]);
    close(out[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines reach the parent whole */
  }
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  signal(SIGINT, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  die_with_parent(zpid);
  lua_pushvalue(L, fn_idx);
  ps_channel_push(L, fd, shm);
  int status = lua_pcall(L, 1, 0, 0);
  const char *kind = status == LUA_OK ? NULL : ps_error_kind(L, -1);
  if (kind && strcmp(kind, PS_ECLOSED) == 0) {
    status = LUA_OK;   /* the parent is gone: nobody to tell */
  } else if (status != LUA_OK) {
    const char *msg = luaL_tolstring(L, -1, NULL);
    fprintf(stderr, "proxystore: worker %d: %s\n", (int)getpid(), msg);
  }
  fflush(NULL);
  _exit(status == LUA_OK ? 0 : 1);
}

static int add_kid(zygote *z, pid_t pid) {
  for (int i = 0; i < MAXKIDS; i++)
    if (z->kids[i] == 0) {
      z->kids[i] = pid;
      return 0;
    }
  return -1;
}

static int nkids(const zygote *z) {
  int n = 0;
  for (int i = 0; i < MAXKIDS; i++) n += z->kids[i] != 0;
  return n;
}

/* Reaps every finished worker and reports it (unless the parent is gone).
 * Returns 1 when SIGTERM or SIGHUP arrived. */
static int reap(zygote *z, int report) {
  struct signalfd_siginfo si;
  int stop = 0;
  while (read(z->sfd, &si, sizeof si) > 0)
    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGHUP) stop = 1;
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    for (int i = 0; i < MAXKIDS; i++)
      if (z->kids[i] == pid) z->kids[i] = 0;
    if (report) zsend(z->ctl, PS_Z_EXITED, -1, pid, status);
  }
  return stop;
}

static void kill_all(zygote *z) {
  for (int i = 0; i < MAXKIDS; i++)
    if (z->kids[i] > 0) kill(z->kids[i], SIGKILL);
}

/* Kills one worker (a cancelled task's), only while it is still a child
 * not yet reaped: its pid cannot have been reused by then. */
static void kill_one(zygote *z, pid_t pid) {
  for (int i = 0; i < MAXKIDS; i++)
    if (pid > 0 && z->kids[i] == pid) kill(pid, SIGKILL);
}

static void spawn(lua_State *L, zygote *z, int fd, int shm, const int out[2],
                  int slot, int fn_idx) {
  pid_t zpid = getpid();
  pid_t pid = fork();
  if (pid == 0) become_worker(L, z, fd, shm, out, fn_idx, zpid);
  int err = errno;
  close(fd);
  if (shm >= 0) close(shm);
  if (out[0] >= 0) close(out[0]);
  if (out[1] >= 0) close(out[1]);
  if (pid < 0 || add_kid(z, pid) != 0) {
    if (pid > 0) kill(pid, SIGKILL);
    zsend(z->ctl, PS_Z_SPAWN_FAILED, slot, 0, pid < 0 ? err : EAGAIN);
    return;
  }
  zsend(z->ctl, PS_Z_SPAWNED, slot, pid, 0);
}

/* One message from the parent; 0 when the parent has closed. */
static int serve(lua_State *L, zygote *z, int fn_idx, int *draining) {
  ps_zmsg m;
  char cbuf[CMSG_SPACE(4 * sizeof(int))];
  struct iovec iov = {&m, sizeof m};
  struct msghdr h = {0};
  h.msg_iov = &iov;
  h.msg_iovlen = 1;
  h.msg_control = cbuf;
  h.msg_controllen = sizeof cbuf;
  ssize_t n = recvmsg(z->ctl, &h, MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return 0;
  /* the worker's socket, then as m.status says its memfd and the write
   * ends of its relayed stdout and stderr */
  int got[4] = {-1, -1, -1, -1};
  size_t ngot = 0;
  struct cmsghdr *c = CMSG_FIRSTHDR(&h);
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
    ngot = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    if (ngot > 4) ngot = 4;
    memcpy(got, CMSG_DATA(c), ngot * sizeof(int));
  }
  size_t want = 1;
  if (m.type == PS_Z_SPAWN) {
    if (m.status & PS_SPAWN_SHM) want += 1;
    if (m.status & PS_SPAWN_RELAY) want += 2;
  }
  int fd = got[0], shm = -1, out[2] = {-1, -1};
  if ((size_t)n != sizeof m || (m.type == PS_Z_SPAWN && ngot != want)) {
    for (size_t i = 0; i < ngot; i++) close(got[i]);
    return 1;
  }
  if (m.type == PS_Z_SPAWN) {
    int k = 1;
    if (m.status & PS_SPAWN_SHM) shm = got[k++];
    if (m.status & PS_SPAWN_RELAY) {
      out[0] = got[k++];
      out[1] = got[k++];
    }
  }
  if (m.type == PS_Z_SPAWN && fd >= 0) {
    spawn(L, z, fd, shm, out, m.slot, fn_idx);
  } else {
    for (size_t i = 0; i < ngot; i++) close(got[i]);
    if (m.type == PS_Z_KILL) kill_all(z);
    if (m.type == PS_Z_KILL_ONE) kill_one(z, m.pid);
    if (m.type == PS_Z_DRAIN) *draining = 1;
  }
  return 1;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* core.pool_rmtree(dir): removes a pool's private store directory. */
int ps_rmtree(const char *dir) {
  return nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void ps_zygote_run(lua_State *L, int ctl, int fn_idx, const char *dir) {
  static zygote z;  /* this process is the zygote and nothing else */
  memset(&z, 0, sizeof z);
  z.ctl = ctl;
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGCHLD);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  sigprocmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGINT, SIG_IGN);  /* the parent decides; workers take ^C */
  z.sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
  if (z.sfd < 0) _exit(1);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) {
    dup2(devnull, 0);  /* workers never compete for the parent's stdin */
    close(devnull);
  }
  int open_ctl = 1, draining = 0;
  long deadline = 0;
  for (;;) {
    struct pollfd p[2] = {{z.sfd, POLLIN, 0}, {z.ctl, POLLIN, 0}};
    int timeout = -1;
    if (!open_ctl) {
      if (nkids(&z) == 0) break;
      long left = deadline - now_ms();
      if (left <= 0) {
        kill_all(&z);
        deadline = now_ms() + 60000;
        left = 100;
      }
      timeout = (int)left;
    }
    int r = poll(p, open_ctl ? 2 : 1, timeout);
    if (r < 0 && errno != EINTR) break;
    if (p[0].revents && reap(&z, open_ctl) && open_ctl) {
      open_ctl = 0;       /* as if the parent had vanished */
      deadline = now_ms();
      continue;
    }
    if (open_ctl && p[1].revents) {
      if (!serve(L, &z, fn_idx, &draining)) {
        open_ctl = 0;
        deadline = now_ms() + (draining ? GRACE_MS : 0);
        reap(&z, 0);
      }
    }
  }
  reap(&z, 0);
  if (dir) ps_rmtree(dir);
  _exit(0);
}
