/*
 * worker_cmd.c: `proxystore worker URL [--queue NAME] [--workers N]
 * [--secret-file F]`, a queue worker (lua/proxystore/worker.lua) in the
 * host binary.
 *
 * What belongs to a host program, not to the module, lives here: the
 * secret read from a file (never from argv), signal handlers, and the
 * supervisor of N worker processes.
 *
 * Signals: SIGTERM asks a worker to stop after the task it runs (its
 * result is stored; tasks taken but not started go back to the queue);
 * SIGINT stops the running task too (lua.c's hook raises "interrupted!")
 * and hands it back; a second SIGINT ends the process at once. Both write
 * a byte to a self-pipe, the worker's wake fd, so a worker waiting for
 * tasks stops at once rather than at the end of its wait.
 *
 * With --workers N > 1 this process supervises N worker processes, each in
 * a process group of its own (a terminal's Ctrl-C reaches them once, by
 * way of the supervisor), forwards SIGTERM and SIGINT, and starts a new
 * one when one dies (a task killed it: its task goes to another worker
 * after the visibility). Workers die with the supervisor (PDEATHSIG
 * SIGTERM: a task in progress still finishes).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "worker_cmd.h"

#define SECRET_MAX 4096
#define MAXWORKERS 4096

static volatile sig_atomic_t got_term, got_int, got_chld;
static int wake_pipe[2] = {-1, -1};
static lua_State *worker_L;

/* ---- signals ------------------------------------------------------------ */

static void wake(void) {
  int saved = errno;
  if (wake_pipe[1] >= 0) {
    ssize_t r = write(wake_pipe[1], "x", 1);
    (void)r;   /* a full pipe is awake already */
  }
  errno = saved;
}

static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_signal(int sig) {
  if (sig == SIGTERM) {
    got_term = 1;
  } else if (sig == SIGINT) {
    got_int = 1;
    signal(SIGINT, SIG_DFL);   /* a second SIGINT ends the process */
    if (worker_L)
      lua_sethook(worker_L, lstop,
                  LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
  } else if (sig == SIGCHLD) {
    got_chld = 1;
  }
  wake();
}

static int make_pipe(void) {
  if (wake_pipe[0] >= 0) close(wake_pipe[0]);
  if (wake_pipe[1] >= 0) close(wake_pipe[1]);
  if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  return 0;
}

static void handle(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

/* stop_reason() -> "SIGINT" | "SIGTERM" | nil. Once the worker has seen a
   SIGINT it disarms the hook, so its own clean-up runs to the end. */
static int l_stop_reason(lua_State *L) {
  if (got_int) {
    lua_sethook(L, NULL, 0, 0);
    lua_pushliteral(L, "SIGINT");
  } else if (got_term) {
    lua_pushliteral(L, "SIGTERM");
  } else {
    lua_pushnil(L);
  }
  return 1;
}

/* ---- arguments and the secret ---------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
    "usage: proxystore worker URL [--queue NAME] [--workers N] [--secret-file F]\n"
    "Runs the tasks of a queue pool (ps.pool{queue = URL, name = NAME}) until\n"
    "SIGTERM (finishes its task, then exits) or SIGINT (stops at once; the\n"
    "task goes back to the queue).\n"
    "  URL              the queue's Redis: redis://[user:pass@]host:port[/db]\n"
    "                   or unix:///path.sock\n"
    "  --queue NAME     the queue's name (default: default)\n"
    "  --workers N      worker processes (default 1)\n"
    "  --secret-file F  the shared secret that signs tasks (default:\n"
    "                   $PROXYSTORE_SECRET); never pass it in arguments\n");
}

static int bad_usage(const char *fmt, const char *what) {
  fprintf(stderr, "proxystore worker: ");
  fprintf(stderr, fmt, what);
  fprintf(stderr, "\nusage: proxystore worker URL [--queue NAME] "
                  "[--workers N] [--secret-file F]; try --help\n");
  return 1;
}

/* Reads the secret file into buf (one trailing newline dropped); 0, or -1
   with a message printed. The secret itself is never printed. */
static int read_secret(const char *path, char *buf, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    fprintf(stderr, "proxystore worker: proxystore: cannot read the secret "
                    "file %s: %s\n", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  if (!S_ISREG(st.st_mode) || st.st_size > SECRET_MAX) {
    fprintf(stderr, "proxystore worker: proxystore: the secret file %s must "
                    "be a regular file of at most %d bytes\n", path, SECRET_MAX);
    close(fd);
    return -1;
  }
  if (st.st_mode & S_IROTH) {
    fprintf(stderr, "proxystore worker: proxystore: the secret file %s is "
                    "readable by every user; chmod o-r it\n", path);
    close(fd);
    return -1;
  }
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, SECRET_MAX - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (n > 0 && buf[n - 1] == '\n') n--;
  if (n > 0 && buf[n - 1] == '\r') n--;
  *len = n;
  return 0;
}

typedef struct wopts {
  const char *url, *queue, *secret_file;
  long workers;
  char secret[SECRET_MAX + 1];
  size_t secret_len;
  int have_secret;
} wopts;

/* Value of --opt=v or --opt v at argv[*i]. */
static const char *optval(int argc, char **argv, int *i, size_t n) {
  if (argv[*i][n] == '=') return argv[*i] + n + 1;
  if (*i + 1 >= argc) return NULL;
  return argv[++*i];
}

static int parse(int argc, char **argv, wopts *o) {
  o->workers = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 2;
    } else if (!strncmp(a, "--queue", 7) && (a[7] == '\0' || a[7] == '=')) {
      if ((o->queue = optval(argc, argv, &i, 7)) == NULL || !*o->queue)
        return bad_usage("'%s' needs a queue name", a);
    } else if (!strncmp(a, "--workers", 9) && (a[9] == '\0' || a[9] == '=')) {
      const char *v = optval(argc, argv, &i, 9);
      char *end;
      o->workers = v ? strtol(v, &end, 10) : 0;
      if (!v || !*v || *end || o->workers < 1 || o->workers > MAXWORKERS)
        return bad_usage("'%s' needs a worker count between 1 and 4096", a);
    } else if (!strncmp(a, "--secret-file", 13) &&
               (a[13] == '\0' || a[13] == '=')) {
      if ((o->secret_file = optval(argc, argv, &i, 13)) == NULL ||
          !*o->secret_file)
        return bad_usage("'%s' needs a file", a);
    } else if (!strncmp(a, "--secret", 8)) {
      /* never echo it: the value may be the secret */
      return bad_usage("%s: secrets are never taken from arguments (other "
                       "users see them in ps); use --secret-file or "
                       "PROXYSTORE_SECRET", "--secret");
    } else if (a[0] == '-') {
      return bad_usage("'%s' is not a known option", a);
    } else if (o->url == NULL) {
      o->url = a;
    } else {
      return bad_usage("'%s': one queue URL only", a);
    }
  }
  if (o->url == NULL) return bad_usage("%s", "needs the queue's Redis URL");
  if (o->secret_file) {
    if (read_secret(o->secret_file, o->secret, &o->secret_len) != 0) return 1;
    o->have_secret = 1;
  } else {
    const char *env = getenv("PROXYSTORE_SECRET");
    if (env && strlen(env) <= SECRET_MAX) {
      o->secret_len = strlen(env);
      memcpy(o->secret, env, o->secret_len);
      o->have_secret = 1;
    }
  }
  /* tasks this worker runs need not see it in their environment */
  unsetenv("PROXYSTORE_SECRET");
  return 0;
}

/* ---- running ------------------------------------------------------------------ */

/* Calls require("proxystore.worker")[fn]{...}; 0, or 1 with the error
   printed. The error of a bad option or an unreachable server is one line. */
static int call_lua(lua_State *L, const char *fn, const wopts *o) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "proxystore.worker");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) goto fail;
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, o->url);
  lua_setfield(L, -2, "url");
  if (o->queue) {
    lua_pushstring(L, o->queue);
    lua_setfield(L, -2, "queue");
  }
  if (o->have_secret) {
    lua_pushlstring(L, o->secret, o->secret_len);
    lua_setfield(L, -2, "secret");
  }
  lua_pushinteger(L, wake_pipe[0]);
  lua_setfield(L, -2, "wake_fd");
  lua_pushcfunction(L, l_stop_reason);
  lua_setfield(L, -2, "stop_reason");
  worker_L = L;
  int st = lua_pcall(L, 1, 1, 0);
  worker_L = NULL;
  if (st != LUA_OK) goto fail;
  int ok = lua_type(L, -1) == LUA_TSTRING &&
           strcmp(lua_tostring(L, -1), "interrupted") != 0;
  lua_pop(L, 1);
  return ok ? 0 : 1;
fail:;
  const char *msg = luaL_tolstring(L, -1, NULL);
  fprintf(stderr, "proxystore worker: %s\n", msg);
  lua_pop(L, 2);
  return 1;
}

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    if (got_term || got_int) return;
  }
}

/* A worker process: its own process group, pipe and handlers. */
static pid_t spawn(lua_State *L, const wopts *o, pid_t parent) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid != 0) return pid;
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  got_term = got_int = got_chld = 0;
  signal(SIGCHLD, SIG_DFL);
  if (make_pipe() != 0) _exit(1);
  handle(SIGTERM);
  handle(SIGINT);
  int st = call_lua(L, "main", o);
  fflush(NULL);
  _exit(st);   /* the state is the supervisor's copy: not ours to close */
}

static const char *signame(int sig) {
  switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    default: return "a signal";
  }
}

static int supervise(lua_State *L, const wopts *o) {
  pid_t me = getpid();
  pid_t *kids = calloc((size_t)o->workers, sizeof *kids);
  double *born = calloc((size_t)o->workers, sizeof *born);
  if (!kids || !born) {
    free(kids);
    free(born);
    fprintf(stderr, "proxystore worker: out of memory\n");
    return 1;
  }
  struct timespec ts;
  for (long i = 0; i < o->workers; i++) {
    kids[i] = spawn(L, o, me);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    born[i] = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
  }
  fprintf(stderr, "proxystore worker[%d]: supervising %ld workers\n", (int)me,
          o->workers);
  int forwarded = 0, status = 0;
  long alive = o->workers;
  while (alive > 0) {
    if ((got_term || got_int) && !forwarded) {
      for (long i = 0; i < o->workers; i++)
        if (kids[i] > 0) kill(kids[i], got_int ? SIGINT : SIGTERM);
      forwarded = 1;
    }
    struct pollfd p = {.fd = wake_pipe[0], .events = POLLIN};
    if (!got_chld) poll(&p, 1, 1000);
    char buf[64];
    while (read(wake_pipe[0], buf, sizeof buf) > 0) {}
    got_chld = 0;
    int ws;
    pid_t pid;
    while ((pid = waitpid(-1, &ws, WNOHANG)) > 0) {
      long i = 0;
      while (i < o->workers && kids[i] != pid) i++;
      if (i == o->workers) continue;
      kids[i] = 0;
      alive--;
      if (!(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) status = 1;
      if (got_term || got_int) continue;
      if (WIFSIGNALED(ws))
        fprintf(stderr, "proxystore worker[%d]: worker %d was killed by %s; "
                "starting another\n", (int)me, (int)pid, signame(WTERMSIG(ws)));
      else
        fprintf(stderr, "proxystore worker[%d]: worker %d exited with code "
                "%d; starting another\n", (int)me, (int)pid,
                WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
      clock_gettime(CLOCK_MONOTONIC, &ts);
      double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
      if (t - born[i] < 1) sleep_s(1);   /* one that dies at start: no storm */
      if (got_term || got_int) continue;
      kids[i] = spawn(L, o, me);
      clock_gettime(CLOCK_MONOTONIC, &ts);
      born[i] = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
      alive++;
    }
  }
  free(kids);
  free(born);
  fprintf(stderr, "proxystore worker[%d]: all workers stopped\n", (int)me);
  return (got_term && !got_int) ? status : 1;
}

int ps_host_worker(lua_State *L, int argc, char **argv) {
  wopts o;
  memset(&o, 0, sizeof o);
  int st = parse(argc, argv, &o);
  if (st) return st == 2 ? 0 : 1;
  if (make_pipe() != 0) {
    fprintf(stderr, "proxystore worker: pipe: %s\n", strerror(errno));
    return 1;
  }
  handle(SIGTERM);
  handle(SIGINT);
  if (o.workers == 1) {
    st = call_lua(L, "main", &o);
  } else {
    /* options, secret and server are checked once, before any fork */
    st = call_lua(L, "check", &o);
    if (st == 0) {
      handle(SIGCHLD);
      st = supervise(L, &o);
    }
  }
  memset(o.secret, 0, sizeof o.secret);
  close(wake_pipe[0]);
  close(wake_pipe[1]);
  wake_pipe[0] = wake_pipe[1] = -1;
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  return st;
}
