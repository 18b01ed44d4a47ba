/*
 * redis_conn.c: connecting (through hiredis), writing commands with
 * sendmsg, and a buffered RESP reader that can put bulk bodies straight
 * into a caller's buffer. See redis_conn.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "redis_conn.h"
#include "spin.h"

#define RBUF_CAP (64 * 1024)
#define RBUF_FIRST 4096           /* what a connection's first read asks for */
#define INLINE_MAX (16 * 1024)    /* larger arguments are sent by reference */

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

int ps_rconn_init(ps_rconn *c, const ps_bconfig *cfg, ps_berr *err) {
  memset(c, 0, sizeof *c);
  c->fd = -1;
  c->port = cfg->port ? cfg->port : 6379;
  c->db = cfg->db;
  c->timeout = cfg->timeout;
  int use_path = cfg->path && *cfg->path;
  c->path = use_path ? strdup(cfg->path) : NULL;
  c->host = use_path ? NULL : strdup(cfg->host && *cfg->host ? cfg->host
                                                             : "127.0.0.1");
  c->username = dup_or_null(cfg->username && *cfg->username ? cfg->username
                                                            : NULL);
  c->password = dup_or_null(cfg->password);
  c->rbuf = malloc(RBUF_CAP);
  c->rcap = RBUF_CAP;
  if ((use_path ? !c->path : !c->host) || !c->rbuf ||
      (cfg->password && !c->password) ||
      (c->username == NULL && cfg->username && *cfg->username)) {
    ps_rconn_free(c);
    return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  }
  if (use_path)
    snprintf(c->addr, sizeof c->addr, "%s", c->path);
  else if (strchr(c->host, ':'))
    snprintf(c->addr, sizeof c->addr, "[%s]:%d", c->host, c->port);
  else
    snprintf(c->addr, sizeof c->addr, "%s:%d", c->host, c->port);
  return PS_BOK;
}

void ps_rconn_drop(ps_rconn *c) {
  /* In a forked child this closes only the child's copy of the socket:
     the parent's session is untouched. */
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->rpos = c->rlen = 0;
  c->wlen = 0;
  c->nsegs = 0;
  c->oom = 0;
  c->queued = c->pending = c->discards = 0;
  c->asks_owed = 0;
}

void ps_rconn_settle(ps_rconn *c) {
  if (c->fd >= 0 && (c->pending > c->discards || c->queued)) ps_rconn_drop(c);
  c->wlen = c->nsegs = c->queued = 0;
  c->asks_owed = 0;
  c->oom = 0;
}

void ps_rconn_free(ps_rconn *c) {
  ps_rconn_drop(c);
  free(c->rbuf);
  free(c->host);
  free(c->path);
  free(c->username);
  if (c->password) {
    memset(c->password, 0, strlen(c->password));
    free(c->password);
  }
  free(c->wbuf);
  free(c->segs);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

int ps_rconn_fail(ps_rconn *c, ps_berr *err, int code, const char *fmt, ...) {
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  ps_rconn_drop(c);
  return ps_berr_set(err, code, "redis %s: %s", c->addr, what);
}

/*
 * Fork generation: bumped in the child by pthread_atfork, so telling
 * whether a connection was opened by this process costs no getpid()
 * system call per command.
 */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void forked_child(void) { fork_gen++; }
static void watch_forks(void) { pthread_atfork(NULL, NULL, forked_child); }

int ps_rconn_owned(const ps_rconn *c) {
  return c->fd >= 0 && c->gen == fork_gen;
}

int ps_rconn_error_code(const char *msg, int otherwise) {
  /* The server is there but cannot serve now: a connection problem. */
  if (strstr(msg, "max number of clients") || !strncmp(msg, "LOADING", 7) ||
      !strncmp(msg, "BUSY", 4) || !strncmp(msg, "MASTERDOWN", 10))
    return PS_BCONN;
  return otherwise;
}

/* ---- the deadline of a call ------------------------------------------- */

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ps_rconn_begin_call(ps_rconn *c) {
  c->last_io = c->deadline = c->timeout > 0 ? mono_now() : 0;
  if (c->deadline) c->deadline += c->timeout;
}

void ps_rconn_allow_wait(ps_rconn *c, double seconds) {
  if (c->deadline == 0 || seconds <= 0) return;
  double until = mono_now() + seconds;
  c->deadline += seconds;
  /* the idle bound counts from the end of the server's silence */
  if (c->last_io < until) c->last_io = until;
}

/* More time for a call that moves n more bytes. */
static void allow(ps_rconn *c, size_t n) {
  if (c->deadline) c->deadline += (double)n / PS_RCONN_MIN_RATE;
}

static void progressed(ps_rconn *c) {
  if (c->deadline) c->last_io = mono_now();
}

/*
 * Milliseconds poll may wait: -1 with no timeout, 0 once a bound has
 * passed; *stalled (may be NULL) tells which bound is the nearer one.
 */
static int ms_left(const ps_rconn *c, int *stalled) {
  if (stalled) *stalled = 0;
  if (c->deadline == 0) return -1;
  double now = mono_now(), left = c->deadline - now;
  double idle = c->last_io + c->timeout - now;
  if (idle < left) {
    if (stalled) *stalled = 1;
    left = idle;
  }
  if (left <= 0) return 0;
  return left * 1000 >= INT_MAX - 1 ? INT_MAX : (int)(left * 1000) + 1;
}

/*
 * Waits until the socket is ready for events or a bound of the call
 * passes. Every read and write goes through here when it would block, so
 * the bounds hold however the bytes trickle in (a socket timeout would
 * restart on every partial transfer).
 */
static int wait_ready(ps_rconn *c, short events, const char *doing,
                      ps_berr *err) {
  struct pollfd pfd = {.fd = c->fd, .events = events};
  /* The next segment of a large transfer is microseconds away: sleeping
   * for it paid a wakeup from idle per segment (see spin.h). Measured, a
   * 1 MiB GET over TCP: 403-477 us sleeping, 195-333 us spinning first. */
  if (ps_poll_spin(&pfd, 1) > 0) return PS_BOK;
  for (;;) {
    int stalled;
    int ms = ms_left(c, &stalled);
    if (ms == 0 && stalled)
      return ps_rconn_fail(c, err, PS_BTIMEOUT,
                           "timed out %s: nothing moved for %gs", doing,
                           c->timeout);
    if (ms == 0)
      return ps_rconn_fail(c, err, PS_BTIMEOUT,
                           "timed out %s: the call took longer than its "
                           "timeout (%gs) plus 1 s per %.0f MiB moved",
                           doing, c->timeout,
                           PS_RCONN_MIN_RATE / (1024 * 1024));
    int r = poll(&pfd, 1, ms);
    if (r > 0) return PS_BOK;    /* errors and hangups: the next I/O says */
    if (r < 0 && errno != EINTR)
      return ps_rconn_fail(c, err, PS_BCONN, "poll failed: %s",
                           strerror(errno));
  }
}

/* ---- connecting ------------------------------------------------------- */

/*
 * AUTH and SELECT in one round trip, over the reader below (so the call's
 * bounds hold). Error replies are PS_BCONFIG (bad password, bad db)
 * unless they say the server cannot serve now.
 */
static int setup(ps_rconn *c, ps_berr *err) {
  char db[24], what[64];
  snprintf(db, sizeof db, "%d", c->db);
  if (c->password) {
    ps_rcmd_begin(c, c->username ? 3 : 2);
    ps_rcmd_str(c, "AUTH");
    if (c->username) ps_rcmd_str(c, c->username);
    ps_rcmd_str(c, c->password);
  }
  if (c->db) {
    ps_rcmd_begin(c, 2);
    ps_rcmd_str(c, "SELECT");
    ps_rcmd_str(c, db);
  }
  if (c->queued == 0) return PS_BOK;
  int code = ps_rconn_send(c, err);
  for (int i = 0; i < 2 && code == PS_BOK && c->pending; i++) {
    ps_rreply r;
    code = ps_rconn_read_reply(c, &r, err);
    if (code) break;
    if (r.type == PS_R_ERROR) {
      if (i == 0 && c->password)
        snprintf(what, sizeof what, "authentication failed");
      else
        snprintf(what, sizeof what, "cannot select db %d", c->db);
      code = ps_rconn_fail(c, err, ps_rconn_error_code(r.str, PS_BCONFIG),
                           "%s: %s", what, r.str);
    }
    ps_rreply_free(&r);
  }
  return code;
}

/* hiredis connects (TCP or Unix socket, within the time left); the fd is
   ours from then on, non-blocking: every wait is a poll (wait_ready). */
static int connect_and_setup(ps_rconn *c, ps_berr *err) {
  int ms = ms_left(c, NULL);
  if (ms == 0)
    return ps_berr_set(err, PS_BTIMEOUT, "redis %s: cannot connect: timed "
                       "out after %gs", c->addr, c->timeout);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  redisContext *rc;
  if (c->path)
    rc = ms > 0 ? redisConnectUnixWithTimeout(c->path, tv)
                : redisConnectUnix(c->path);
  else
    rc = ms > 0 ? redisConnectWithTimeout(c->host, c->port, tv)
                : redisConnect(c->host, c->port);
  if (rc == NULL) return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  if (rc->err) {
    int code = strstr(rc->errstr, "timed out") ? PS_BTIMEOUT : PS_BCONN;
    ps_berr_set(err, code, "redis %s: cannot connect: %s", c->addr,
                rc->errstr);
    redisFree(rc);
    return code;
  }
  c->fd = redisFreeKeepFd(rc);
  int fl = fcntl(c->fd, F_GETFL);
  if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return ps_rconn_fail(c, err, PS_BCONN, "cannot set up the socket: %s",
                         strerror(errno));
  if (c->path == NULL) {
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c->gen = fork_gen;
  int code = setup(c, err);
  /* a connection that missed its AUTH or SELECT must never serve a call */
  if (code) ps_rconn_drop(c);
  return code;
}

int ps_rconn_ensure(ps_rconn *c, ps_berr *err) {
  /* A connection that died since its last use (server restarted) is not
     probed here: the first command on it fails with PS_BCONN and the
     backend repeats it once on a new connection (see RETRY). */
  if (ps_rconn_owned(c)) return PS_BOK;
  pthread_once(&fork_once, watch_forks);
  ps_rconn_drop(c);
  return connect_and_setup(c, err);
}

/* ---- writing ---------------------------------------------------------- */

static void wappend(ps_rconn *c, const void *p, size_t n) {
  if (c->oom) return;
  if (c->wcap - c->wlen < n) {
    size_t cap = c->wcap ? c->wcap : 1024;
    while (cap - c->wlen < n) cap *= 2;
    char *w = realloc(c->wbuf, cap);
    if (w == NULL) {
      c->oom = 1;
      return;
    }
    c->wbuf = w;
    c->wcap = cap;
  }
  /* Extend the last segment when it is the tail of wbuf. */
  struct ps_rseg *last = c->nsegs ? &c->segs[c->nsegs - 1] : NULL;
  if (last && last->p == NULL && last->off + last->len == c->wlen) {
    last->len += n;
  } else {
    if (c->nsegs == c->segcap) {
      size_t cap = c->segcap ? c->segcap * 2 : 16;
      struct ps_rseg *s = realloc(c->segs, cap * sizeof *s);
      if (s == NULL) {
        c->oom = 1;
        return;
      }
      c->segs = s;
      c->segcap = cap;
    }
    c->segs[c->nsegs++] = (struct ps_rseg){NULL, c->wlen, n};
  }
  memcpy(c->wbuf + c->wlen, p, n);
  c->wlen += n;
}

static void wref(ps_rconn *c, const void *p, size_t n) {
  if (c->oom || n == 0) return;
  if (n <= INLINE_MAX) {
    wappend(c, p, n);
    return;
  }
  if (c->nsegs == c->segcap) {
    size_t cap = c->segcap ? c->segcap * 2 : 16;
    struct ps_rseg *s = realloc(c->segs, cap * sizeof *s);
    if (s == NULL) {
      c->oom = 1;
      return;
    }
    c->segs = s;
    c->segcap = cap;
  }
  c->segs[c->nsegs++] = (struct ps_rseg){p, 0, n};
}

/* "*3\r\n", "$1024\r\n": written by hand, three per key of a batch (snprintf
   was a third of a 1,000-key get_batch's instructions). */
static void wnum(ps_rconn *c, char kind, size_t n) {
  char h[32];
  char *p = h + sizeof h;
  *--p = '\n';
  *--p = '\r';
  do *--p = (char)('0' + n % 10); while ((n /= 10) != 0);
  *--p = kind;
  wappend(c, p, (size_t)(h + sizeof h - p));
}

void ps_rcmd_begin(ps_rconn *c, size_t nargs) {
  if (c->asking) {
    /* The slot is being imported here: a command runs only right after
       an ASKING (see cluster.c). */
    static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
    wappend(c, asking, sizeof asking - 1);
    c->queued++;
    c->asks_owed++;
  }
  wnum(c, '*', nargs);
  c->queued++;
}

void ps_rcmd_bulk_begin(ps_rconn *c, size_t len) {
  wnum(c, '$', len);
}

void ps_rcmd_bulk_part(ps_rconn *c, const void *p, size_t len) {
  wref(c, p, len);
}

void ps_rcmd_bulk_end(ps_rconn *c) {
  wappend(c, "\r\n", 2);
}

void ps_rcmd_arg(ps_rconn *c, const void *p, size_t len) {
  ps_rcmd_bulk_begin(c, len);
  ps_rcmd_bulk_part(c, p, len);
  ps_rcmd_bulk_end(c);
}

void ps_rcmd_str(ps_rconn *c, const char *s) {
  ps_rcmd_arg(c, s, strlen(s));
}

void ps_rcmd_int(ps_rconn *c, long long v) {
  char num[24];
  int l = snprintf(num, sizeof num, "%lld", v);
  ps_rcmd_arg(c, num, (size_t)l);
}

int ps_rconn_send(ps_rconn *c, ps_berr *err) {
  if (c->oom) {
    c->oom = 0;
    c->wlen = c->nsegs = c->queued = 0;
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", c->addr);
  }
  struct iovec iov[256];
  size_t i = 0, skip = 0;   /* next segment, bytes of it already sent */
  int code = PS_BOK;
  size_t total = 0;
  for (size_t j = 0; j < c->nsegs; j++) total += c->segs[j].len;
  allow(c, total);
  while (i < c->nsegs) {
    int n = 0;
    for (size_t j = i; j < c->nsegs && n < 256; j++, n++) {
      const struct ps_rseg *s = &c->segs[j];
      const char *p = s->p ? s->p : c->wbuf + s->off;
      size_t off = j == i ? skip : 0;
      iov[n].iov_base = (void *)(p + off);
      iov[n].iov_len = s->len - off;
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        code = wait_ready(c, POLLOUT, "sending a command", err);
        if (code) break;
        continue;
      }
      code = ps_rconn_fail(c, err, PS_BCONN, "write failed: %s",
                           strerror(errno));
      break;
    }
    progressed(c);
    size_t left = (size_t)w;
    while (left > 0) {
      size_t rest = c->segs[i].len - skip;
      if (left >= rest) {
        left -= rest;
        i++;
        skip = 0;
      } else {
        skip += left;
        left = 0;
      }
    }
  }
  c->wlen = 0;
  c->nsegs = 0;
  if (code == PS_BOK) c->pending += c->queued;
  c->queued = 0;
  return code;
}

/* ---- reading ---------------------------------------------------------- */

static void reply_read(ps_rconn *c) {
  if (c->pending) c->pending--;
}

/*
 * One read of at most n bytes into dst (*got >= 1 of them), waiting
 * within the call's bounds while nothing has come.
 */
static int read_some(ps_rconn *c, void *dst, size_t n, size_t *got,
                     ps_berr *err) {
  for (;;) {
    ssize_t r = read(c->fd, dst, n);
    if (r > 0) {
      *got = (size_t)r;
      progressed(c);
      return PS_BOK;
    }
    if (r == 0)
      return ps_rconn_fail(c, err, PS_BCONN,
                           "connection closed by the server");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return ps_rconn_fail(c, err, PS_BCONN, "read failed: %s",
                           strerror(errno));
    int code = wait_ready(c, POLLIN, "waiting for a reply", err);
    if (code) return code;
  }
}

/* Reads more bytes into rbuf (at least one). */
static int fill(ps_rconn *c, ps_berr *err) {
  if (c->rpos == c->rlen) {
    c->rpos = c->rlen = 0;
  } else if (c->rlen == c->rcap) {
    if (c->rpos == 0)
      return ps_rconn_fail(c, err, PS_BPROTO, "reply line too long");
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  /*
   * A read asks for at most twice what reads have filled before (a page at
   * first), up to the buffer's size. A large value's body goes straight
   * from the socket into its blob (ps_rconn_read_body); a fresh process's
   * first large reply would otherwise fill all 64 KiB here first, faulting
   * in 16 fresh 4 KiB pages one by one only to copy them out. Pipelined
   * small replies reach the whole buffer after a few reads.
   */
  size_t lim = c->rtouched < RBUF_FIRST / 2 ? RBUF_FIRST : 2 * c->rtouched;
  if (lim > c->rcap) lim = c->rcap;
  /* An empty socket is waited for by read_some's wait_ready, which spins
   * briefly before it sleeps (spin.h). */
  size_t n;
  int code = read_some(c, c->rbuf + c->rlen, lim - c->rlen, &n, err);
  if (code) return code;
  c->rlen += n;
  if (c->rlen > c->rtouched) c->rtouched = c->rlen;
  return PS_BOK;
}

/* Finds a CRLF-terminated line; line and len exclude the CRLF. */
static int read_line(ps_rconn *c, char **line, size_t *len, ps_berr *err) {
  size_t scan = c->rpos;
  for (;;) {
    char *p = c->rlen > scan
                  ? memchr(c->rbuf + scan, '\n', c->rlen - scan) : NULL;
    if (p) {
      size_t end = (size_t)(p - c->rbuf);
      if (end == c->rpos || c->rbuf[end - 1] != '\r')
        return ps_rconn_fail(c, err, PS_BPROTO, "malformed reply");
      *line = c->rbuf + c->rpos;
      *len = end - 1 - c->rpos;
      c->rpos = end + 1;
      return PS_BOK;
    }
    size_t seen = c->rlen - c->rpos;
    int code = fill(c, err);
    if (code) return code;
    scan = c->rpos + seen;
  }
}

static int read_head(ps_rconn *c, ps_rreply *r, ps_berr *err) {
  char *line = NULL;
  size_t len = 0;
  memset(r, 0, sizeof *r);
  int code = read_line(c, &line, &len, err);
  if (code) return code;
  if (len == 0) return ps_rconn_fail(c, err, PS_BPROTO, "empty reply line");
  r->type = line[0];
  switch (r->type) {
  case PS_R_STATUS:
  case PS_R_ERROR:
    r->str = malloc(len);
    if (r->str == NULL)
      return ps_rconn_fail(c, err, PS_BNOMEM, "out of memory");
    memcpy(r->str, line + 1, len - 1);
    r->str[len - 1] = '\0';
    r->len = len - 1;
    reply_read(c);
    return PS_BOK;
  case PS_R_INT:
  case PS_R_BULK:
  case PS_R_ARRAY: {
    long long v = 0;
    int neg = 0;
    size_t i = 1;
    if (i < len && line[i] == '-') neg = 1, i++;
    if (i == len) return ps_rconn_fail(c, err, PS_BPROTO, "malformed number");
    for (; i < len; i++) {
      if (line[i] < '0' || line[i] > '9' || v > (LLONG_MAX - 9) / 10)
        return ps_rconn_fail(c, err, PS_BPROTO, "malformed number");
      v = v * 10 + (line[i] - '0');
    }
    r->n = neg ? -v : v;
    if (r->type != PS_R_INT && r->n < -1)   /* RESP's nil is -1, only */
      return ps_rconn_fail(c, err, PS_BPROTO, "malformed length %lld", r->n);
    if (r->type == PS_R_INT || (r->type == PS_R_BULK && r->n < 0))
      reply_read(c);
    if (r->type == PS_R_BULK && r->n > 0) allow(c, (size_t)r->n);
    return PS_BOK;
  }
  default:
    return ps_rconn_fail(c, err, PS_BPROTO, "unexpected reply type '%c'",
                         r->type);
  }
}

int ps_rconn_redirect_kind(const char *msg) {
  if (!strncmp(msg, "MOVED ", 6)) return PS_RREDIR_MOVED;
  if (!strncmp(msg, "ASK ", 4)) return PS_RREDIR_ASK;
  if (!strncmp(msg, "TRYAGAIN", 8)) return PS_RREDIR_TRYAGAIN;
  if (!strncmp(msg, "CLUSTERDOWN", 11)) return PS_RREDIR_CLUSTERDOWN;
  return PS_RREDIR_NONE;
}

void ps_rconn_reset_counts(ps_rconn *c) {
  c->replies = c->redirects = 0;
  c->redirect[0] = '\0';
}

void ps_rconn_discard_reply(ps_rconn *c) {
  if (c->pending > c->discards) c->discards++;
}

/* Reads and drops the replies no one wants, sent before what comes next. */
static int take_discards(ps_rconn *c, ps_berr *err) {
  while (c->discards) {
    ps_rreply r;
    int code = read_head(c, &r, err);
    if (code) return code;
    c->discards--;
    int kind = r.type;
    ps_rreply_free(&r);
    if (kind == PS_R_BULK || kind == PS_R_ARRAY)
      return ps_rconn_fail(c, err, PS_BPROTO, "unexpected reply to a "
                           "command whose answer was not wanted");
  }
  return PS_BOK;
}

/* Reads what precedes the next reply: the replies no one wants, then the
 * +OK of the ASKING sent before the next reply's command. */
static int take_asking(ps_rconn *c, ps_berr *err) {
  int code = take_discards(c, err);
  if (code) return code;
  if (c->asks_owed == 0) return PS_BOK;
  ps_rreply r;
  code = read_head(c, &r, err);
  if (code) return code;
  c->asks_owed--;
  int ok = r.type == PS_R_STATUS && strcmp(r.str, "OK") == 0;
  if (!ok) {
    char what[100];
    snprintf(what, sizeof what, "%s", r.str ? r.str : "");
    ps_rreply_free(&r);
    return ps_rconn_fail(c, err, PS_BPROTO, "ASKING refused: %s", what);
  }
  ps_rreply_free(&r);
  return PS_BOK;
}

/* A reply's head (after its ASKING's +OK); counted on a cluster node. */
int ps_rconn_read_head(ps_rconn *c, ps_rreply *r, ps_berr *err) {
  memset(r, 0, sizeof *r);
  int code = take_asking(c, err);
  if (code) return code;
  code = read_head(c, r, err);
  if (code || !c->cluster) return code;
  c->replies++;
  if (r->type == PS_R_ERROR && ps_rconn_redirect_kind(r->str) &&
      c->redirects++ == 0)
    snprintf(c->redirect, sizeof c->redirect, "%s", r->str);
  return PS_BOK;
}

int ps_rconn_read_body(ps_rconn *c, void *dst, size_t n, ps_berr *err) {
  char *d = dst;
  size_t have = c->rlen - c->rpos;
  size_t take = have < n ? have : n;
  memcpy(d, c->rbuf + c->rpos, take);
  c->rpos += take;
  d += take;
  n -= take;
  /* The rest goes straight from the socket into dst: one copy only. */
  while (n > 0) {
    size_t got;
    int code = read_some(c, d, n, &got, err);
    if (code) return code;
    d += got;
    n -= got;
  }
  return PS_BOK;
}

int ps_rconn_read_crlf(ps_rconn *c, ps_berr *err) {
  while (c->rlen - c->rpos < 2) {
    int code = fill(c, err);
    if (code) return code;
  }
  if (c->rbuf[c->rpos] != '\r' || c->rbuf[c->rpos + 1] != '\n')
    return ps_rconn_fail(c, err, PS_BPROTO, "malformed bulk reply");
  c->rpos += 2;
  reply_read(c);
  return PS_BOK;
}

#define SMALL_REPLY_MAX (64 * 1024)

int ps_rconn_read_reply(ps_rconn *c, ps_rreply *r, ps_berr *err) {
  int code = ps_rconn_read_head(c, r, err);
  if (code || r->type != PS_R_BULK || r->n < 0) {
    if (!code && r->type == PS_R_ARRAY)
      return ps_rconn_fail(c, err, PS_BPROTO, "unexpected array reply");
    return code;
  }
  /* Only small commands (PING, AUTH, SET, GETRANGE of a header...) are
   * read this way: a huge length is a broken or hostile server, not a
   * reason to allocate gigabytes. */
  if (r->n > SMALL_REPLY_MAX)
    return ps_rconn_fail(c, err, PS_BPROTO,
                         "a %lld-byte reply to a command that answers in a "
                         "few bytes", r->n);
  r->len = (size_t)r->n;
  r->str = malloc(r->len + 1);
  if (r->str == NULL) return ps_rconn_fail(c, err, PS_BNOMEM, "out of memory");
  r->str[r->len] = '\0';
  code = ps_rconn_read_body(c, r->str, r->len, err);
  if (!code) code = ps_rconn_read_crlf(c, err);
  if (code) ps_rreply_free(r);
  return code;
}

void ps_rreply_free(ps_rreply *r) {
  free(r->str);
  r->str = NULL;
  r->len = 0;
}

/* ---- whole replies of any shape ---------------------------------------- */

const ps_rlimits ps_rlimits_small = {1 << 20, 1 << 16, 8};

typedef struct budget {
  size_t bytes, elems;
} budget;

static int read_tree(ps_rconn *c, ps_rvalue *v, const ps_rlimits *lim,
                     budget *left, int depth, ps_berr *err) {
  ps_rreply r;
  /* an element of an array is no reply of its own */
  int code = depth ? read_head(c, &r, err) : ps_rconn_read_head(c, &r, err);
  if (code) return code;
  v->type = r.type;
  v->n = r.n;
  if (r.type == PS_R_STATUS || r.type == PS_R_ERROR) {
    v->str = r.str;
    v->len = r.len;
    if (r.len > left->bytes)
      return ps_rconn_fail(c, err, PS_BPROTO, "reply larger than %zu bytes",
                           lim->max_bytes);
    left->bytes -= r.len;
    return PS_BOK;
  }
  if (r.type == PS_R_INT || r.n < 0) return PS_BOK;
  if (r.type == PS_R_BULK) {
    if ((unsigned long long)r.n > left->bytes)
      return ps_rconn_fail(c, err, PS_BPROTO, "reply larger than %zu bytes",
                           lim->max_bytes);
    left->bytes -= (size_t)r.n;
    v->len = (size_t)r.n;
    v->str = malloc(v->len + 1);
    if (v->str == NULL)
      return ps_rconn_fail(c, err, PS_BNOMEM, "out of memory");
    v->str[v->len] = '\0';
    code = ps_rconn_read_body(c, v->str, v->len, err);
    return code ? code : ps_rconn_read_crlf(c, err);
  }
  /* an array */
  if (depth >= lim->max_depth)
    return ps_rconn_fail(c, err, PS_BPROTO, "reply nested deeper than %d",
                         lim->max_depth);
  if ((unsigned long long)r.n > left->elems)
    return ps_rconn_fail(c, err, PS_BPROTO,
                         "reply with more than %zu elements", lim->max_elems);
  left->elems -= (size_t)r.n;
  if (r.n == 0) return PS_BOK;
  v->elem = calloc((size_t)r.n, sizeof *v->elem);
  if (v->elem == NULL) {
    v->n = 0;
    return ps_rconn_fail(c, err, PS_BNOMEM, "out of memory");
  }
  for (long long i = 0; i < r.n; i++) {
    code = read_tree(c, &v->elem[i], lim, left, depth + 1, err);
    if (code) return code;
  }
  return PS_BOK;
}

int ps_rconn_read_value(ps_rconn *c, ps_rvalue *v, const ps_rlimits *lim,
                        ps_berr *err) {
  memset(v, 0, sizeof *v);
  int code = take_asking(c, err);
  if (code) return code;
  /* The reader below counts every element it completes as a reply;
     the server owes one reply for the whole tree. */
  size_t owed = c->pending;
  budget left = {lim->max_bytes, lim->max_elems};
  code = read_tree(c, v, lim, &left, 0, err);
  if (code == PS_BOK) c->pending = owed ? owed - 1 : 0;
  return code;
}

void ps_rvalue_free(ps_rvalue *v) {
  if (v->type == PS_R_ARRAY && v->elem) {
    for (long long i = 0; i < v->n; i++) ps_rvalue_free(&v->elem[i]);
    free(v->elem);
  }
  free(v->str);
  memset(v, 0, sizeof *v);
}

const ps_rvalue *ps_rvalue_at(const ps_rvalue *v, size_t i) {
  if (v == NULL || v->type != PS_R_ARRAY || v->n < 0 || i >= (size_t)v->n)
    return NULL;
  return &v->elem[i];
}
