/*
 * redis_conn.c: connecting (through hiredis), writing commands with
 * sendmsg, and a buffered RESP reader that can put bulk bodies straight
 * into a caller's buffer. See redis_conn.h.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "redis_conn.h"
#include "spin.h"

#define RBUF_CAP (64 * 1024)
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
  c->queued = c->pending = 0;
}

void ps_rconn_settle(ps_rconn *c) {
  if (c->fd >= 0 && (c->pending || c->queued)) ps_rconn_drop(c);
  c->wlen = c->nsegs = c->queued = 0;
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

static int is_timeout_msg(const char *s) {
  return strstr(s, "timed out") || strstr(s, "temporarily unavailable");
}

/* Maps a failed hiredis call on rc to an error; frees rc. */
static int hiredis_fail(ps_rconn *c, redisContext *rc, ps_berr *err,
                        const char *what) {
  int code = is_timeout_msg(rc->errstr) ? PS_BTIMEOUT : PS_BCONN;
  ps_berr_set(err, code, "redis %s: %s: %s", c->addr, what, rc->errstr);
  redisFree(rc);
  return code;
}

int ps_rconn_error_code(const char *msg, int otherwise) {
  /* The server is there but cannot serve now: a connection problem. */
  if (strstr(msg, "max number of clients") || !strncmp(msg, "LOADING", 7) ||
      !strncmp(msg, "BUSY", 4) || !strncmp(msg, "MASTERDOWN", 10))
    return PS_BCONN;
  return otherwise;
}

/* Runs one setup command; error replies become PS_BCONFIG (bad password,
   bad db) unless they say the server cannot serve now. */
static int setup_cmd(ps_rconn *c, redisContext *rc, ps_berr *err,
                     const char *what, int argc, const char **argv) {
  redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
  if (r == NULL) return hiredis_fail(c, rc, err, what);
  int code = PS_BOK;
  if (r->type == REDIS_REPLY_ERROR) {
    code = ps_berr_set(err, ps_rconn_error_code(r->str, PS_BCONFIG),
                       "redis %s: %s: %s", c->addr, what, r->str);
    redisFree(rc);
  }
  freeReplyObject(r);
  return code;
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

static int connect_and_setup(ps_rconn *c, ps_berr *err) {
  struct timeval tv = {0, 0};
  if (c->timeout > 0) {
    tv.tv_sec = (time_t)c->timeout;
    tv.tv_usec = (suseconds_t)((c->timeout - (double)tv.tv_sec) * 1e6);
    if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1;
  }
  redisContext *rc;
  if (c->path)
    rc = c->timeout > 0 ? redisConnectUnixWithTimeout(c->path, tv)
                        : redisConnectUnix(c->path);
  else
    rc = c->timeout > 0 ? redisConnectWithTimeout(c->host, c->port, tv)
                        : redisConnect(c->host, c->port);
  if (rc == NULL) return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  if (rc->err) return hiredis_fail(c, rc, err, "cannot connect");
  if (c->timeout > 0 && redisSetTimeout(rc, tv) != REDIS_OK)
    return hiredis_fail(c, rc, err, "cannot set timeout");
  int code;
  if (c->password) {
    const char *argv[3] = {"AUTH", c->username ? c->username : c->password,
                           c->password};
    code = setup_cmd(c, rc, err, "authentication failed",
                     c->username ? 3 : 2, argv);
    if (code) return code;
  }
  if (c->db) {
    char db[24];
    snprintf(db, sizeof db, "%d", c->db);
    const char *argv[2] = {"SELECT", db};
    char what[64];
    snprintf(what, sizeof what, "cannot select db %d", c->db);
    code = setup_cmd(c, rc, err, what, 2, argv);
    if (code) return code;
  }
  c->fd = rc->fd;
  redisFreeKeepFd(rc);
  if (c->path == NULL) {
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c->gen = fork_gen;
  c->fresh = 1;
  return PS_BOK;
}

int ps_rconn_ensure(ps_rconn *c, ps_berr *err) {
  /* A connection that died since its last use (server restarted) is not
     probed here: the first command on it fails with PS_BCONN and the
     backend repeats it once on a new connection (see RETRY). */
  if (ps_rconn_owned(c)) {
    c->fresh = 0;
    return PS_BOK;
  }
  pthread_once(&fork_once, watch_forks);
  ps_rconn_drop(c);
  /* hiredis writes AUTH/SELECT with write(): a server that closes right
     after accepting (maxclients) would kill the process with SIGPIPE.
     Block it meanwhile and swallow one raised here. */
  sigset_t pipe, old, pending;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, &old);
  sigpending(&pending);
  int was_pending = sigismember(&pending, SIGPIPE);
  int code = connect_and_setup(c, err);
  if (!was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe, NULL, &zero) == SIGPIPE) {}
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return code;
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

static void wnum(ps_rconn *c, char kind, size_t n) {
  char h[32];
  int l = snprintf(h, sizeof h, "%c%zu\r\n", kind, n);
  wappend(c, h, (size_t)l);
}

void ps_rcmd_begin(ps_rconn *c, size_t nargs) {
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

int ps_rconn_send(ps_rconn *c, ps_berr *err) {
  if (c->oom) {
    c->oom = 0;
    c->wlen = c->nsegs = c->queued = 0;
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", c->addr);
  }
  struct iovec iov[256];
  size_t i = 0, skip = 0;   /* next segment, bytes of it already sent */
  int code = PS_BOK;
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
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        code = ps_rconn_fail(c, err, PS_BTIMEOUT,
                             "timed out after %gs sending a command",
                             c->timeout);
      else
        code = ps_rconn_fail(c, err, PS_BCONN, "write failed: %s",
                             strerror(errno));
      break;
    }
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

static int read_fail(ps_rconn *c, ssize_t n, ps_berr *err) {
  if (n == 0)
    return ps_rconn_fail(c, err, PS_BCONN, "connection closed by the server");
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    return ps_rconn_fail(c, err, PS_BTIMEOUT,
                         "timed out after %gs waiting for a reply",
                         c->timeout);
  return ps_rconn_fail(c, err, PS_BCONN, "read failed: %s", strerror(errno));
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
  if (c->rlen == c->rpos) {   /* waiting for a reply: see spin.h */
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    ps_poll_spin(&pfd, 1);
  }
  ssize_t n;
  do n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return read_fail(c, n, err);
  c->rlen += (size_t)n;
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

int ps_rconn_read_head(ps_rconn *c, ps_rreply *r, ps_berr *err) {
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
    if (r->type == PS_R_INT || (r->type == PS_R_BULK && r->n < 0))
      reply_read(c);
    return PS_BOK;
  }
  default:
    return ps_rconn_fail(c, err, PS_BPROTO, "unexpected reply type '%c'",
                         r->type);
  }
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
    ssize_t got = read(c->fd, d, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return read_fail(c, got, err);
    d += got;
    n -= (size_t)got;
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

int ps_rconn_read_reply(ps_rconn *c, ps_rreply *r, ps_berr *err) {
  int code = ps_rconn_read_head(c, r, err);
  if (code || r->type != PS_R_BULK || r->n < 0) {
    if (!code && r->type == PS_R_ARRAY)
      return ps_rconn_fail(c, err, PS_BPROTO, "unexpected array reply");
    return code;
  }
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
