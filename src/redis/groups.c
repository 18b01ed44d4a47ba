/*
 * groups.c: Redis streams and consumer groups over two ps_rconn
 * connections. See groups.h.
 *
 * Every call builds its commands as argument lists (ps_rcmd), sends them
 * in one write and reads each reply whole (ps_rconn_read_value); the
 * parsers below only walk the reply trees. Held reads announce their wait
 * (ps_rconn_allow_wait) and, when a wake fd is set, wait for it and for
 * the socket together, so a stop request does not sit out the wait.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "groups.h"

struct ps_rgroups {
  ps_rconn cmd;              /* ordinary commands */
  ps_rconn blk;              /* reads the server holds */
  ps_rlimits lim;
  int wake_fd;
  unsigned long connects;
  size_t held_n;             /* replies of a held call sent, not yet read */
  int held_queued;           /* ... built in blk's buffer, not yet sent */
  double held_wait;          /* the wait it asks of the server */
  double held_until;         /* then the server is late: 0 no limit */
};

static int flush_held(ps_rgroups *g, ps_berr *err);

static const ps_rlimits default_limits = {(size_t)1 << 30, 4u << 20, 8};

/* Resets the heartbeat's idle time of the ids still pending for consumer.
 * KEYS[1] stream; ARGV: group, consumer, ids... */
static const char TOUCH_SCRIPT[] =
  "local owned = {}\n"
  "for i = 3, #ARGV do\n"
  "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
  "  if p[1] and p[1][2] == ARGV[2] then\n"
  "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')\n"
  "    owned[#owned + 1] = 1\n"
  "  else\n"
  "    owned[#owned + 1] = 0\n"
  "  end\n"
  "end\n"
  "return owned\n";

/* ---- the handle ------------------------------------------------------- */

ps_rgroups *ps_rg_open(const ps_bconfig *cfg, ps_berr *err) {
  ps_rgroups *g = calloc(1, sizeof *g);
  if (g == NULL) {
    ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    return NULL;
  }
  g->lim = default_limits;
  g->wake_fd = -1;
  if (ps_rconn_init(&g->cmd, cfg, err) != PS_BOK) {
    free(g);
    return NULL;
  }
  if (ps_rconn_init(&g->blk, cfg, err) != PS_BOK) {
    ps_rconn_free(&g->cmd);
    free(g);
    return NULL;
  }
  /* A bad address, password or db fails here, not at first use. */
  static const char *const ping[] = {"PING"};
  ps_rcmd c = {1, ping, NULL};
  ps_rvalue v;
  int code = ps_rg_call(g, 1, &c, &v, err);
  if (code == PS_BOK && v.type == PS_R_ERROR)
    code = ps_berr_set(err, ps_rconn_error_code(v.str, PS_BCONFIG),
                       "redis %s: %s", g->cmd.addr, v.str);
  ps_rvalue_free(&v);
  if (code != PS_BOK) {
    ps_rg_close(g);
    return NULL;
  }
  return g;
}

void ps_rg_close(ps_rgroups *g) {
  if (g == NULL) return;
  ps_rconn_free(&g->cmd);
  ps_rconn_free(&g->blk);
  free(g);
}

const char *ps_rg_address(const ps_rgroups *g) {
  return g->cmd.addr;
}

unsigned long ps_rg_connects(const ps_rgroups *g) {
  return g->connects;
}

void ps_rg_set_limits(ps_rgroups *g, const ps_rlimits *lim) {
  g->lim = lim ? *lim : default_limits;
}

void ps_rg_set_wake_fd(ps_rgroups *g, int fd) {
  g->wake_fd = fd;
}

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Polls the wake fd (skipped when < 0) and, when sock >= 0, the socket:
   1 the wake fd is readable, 0 the socket is (or the time ran out).
   seconds < 0: no limit. */
static int wait_wake(int wake, int sock, double seconds) {
  struct pollfd p[2] = {{.fd = wake, .events = POLLIN},
                        {.fd = sock, .events = POLLIN}};
  double until = seconds >= 0 ? mono() + seconds : 0;
  for (;;) {
    int ms = -1;
    if (seconds >= 0) {
      double left = until - mono();
      ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
    }
    int r = poll(p, sock >= 0 ? 2 : 1, ms);
    if (r < 0 && errno == EINTR) continue;   /* a signal's handler wrote to
                                                the wake fd, or did not */
    if (r <= 0) return 0;
    return wake >= 0 && p[0].revents != 0;
  }
}

int ps_rg_woken(const ps_rgroups *g) {
  return g->wake_fd >= 0 && wait_wake(g->wake_fd, -1, 0);
}

int ps_rg_sleep(const ps_rgroups *g, double seconds) {
  if (g->wake_fd >= 0) return wait_wake(g->wake_fd, -1, seconds);
  struct timespec ts = {(time_t)seconds,
                        (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  return 0;
}

/* ---- one round trip ---------------------------------------------------- */

static void build(ps_rconn *c, size_t n, const ps_rcmd *cmds) {
  for (size_t i = 0; i < n; i++) {
    ps_rcmd_begin(c, cmds[i].argc);
    for (size_t j = 0; j < cmds[i].argc; j++) {
      const char *a = cmds[i].argv[j];
      ps_rcmd_arg(c, a, cmds[i].lens ? cmds[i].lens[j] : strlen(a));
    }
  }
}

/*
 * Sends n commands on c and reads their n replies. wait_s >= 0: reply
 * npre (the first after npre prompt ones) may be held that long by the
 * server (and a wake fd may cut the wait short; the prompt replies are
 * read first, so a wake never loses them).
 */
static int once(ps_rgroups *g, ps_rconn *c, size_t n, const ps_rcmd *cmds,
                size_t npre, double wait_s, ps_rvalue *out, int *woken,
                ps_berr *err) {
  if (!ps_rconn_owned(c)) g->connects++;
  int code = ps_rconn_ensure(c, err);
  if (code) return code;
  build(c, n, cmds);
  code = ps_rconn_send(c, err);
  if (code) return code;
  if (c == &g->cmd && g->held_queued) {
    /* right after these commands, not before them; a failure is the
       held call's, seen when its replies are asked for */
    ps_berr held_err = {0, ""};
    flush_held(g, &held_err);
  }
  if (wait_s >= 0) ps_rconn_allow_wait(c, wait_s);
  for (size_t i = 0; i < npre; i++) {
    /* waited for in poll too (below): the server answers a prompt
       command after a wake-up of its own, not within a spin */
    if (c->rpos == c->rlen)
      wait_wake(-1, c->fd, c->timeout > 0 ? wait_s + c->timeout : -1);
    code = ps_rconn_read_value(c, &out[i], &g->lim, err);
    if (code) return code;
  }
  /* The first byte is waited for in poll, not spun for first as the
   * store's replies are (spin.h): a held read's reply is rarely
   * microseconds away, and the replies to XADD or a finishing script are
   * off the path of a task's round trip, while the spin (30 us of poll
   * calls, most of it in the kernel on a VM) takes CPU from the server
   * and the workers. Measured per empty task under load: 18 polls a side
   * before, 3 after. Nothing is buffered before a reply: every earlier
   * one was read whole. Only a held read may be woken. */
  if (c->rpos == c->rlen &&
      wait_wake(wait_s >= 0 ? g->wake_fd : -1, c->fd,
                c->timeout > 0 ? (wait_s > 0 ? wait_s : 0) + c->timeout
                               : -1)) {
    ps_rconn_drop(c);   /* the server forgets the read with the client */
    if (woken) *woken = 1;
    return PS_BOK;
  }
  for (size_t i = npre; i < n; i++) {
    code = ps_rconn_read_value(c, &out[i], &g->lim, err);
    if (code) return code;
  }
  return PS_BOK;
}

static void free_values(size_t n, ps_rvalue *out) {
  for (size_t i = 0; i < n; i++) ps_rvalue_free(&out[i]);
}

/* once(), settled, and repeated on a fresh connection when one that had
   served before turns out dead (the server restarted). */
static int roundtrip(ps_rgroups *g, ps_rconn *c, size_t n, const ps_rcmd *cmds,
                     size_t npre, double wait_s, ps_rvalue *out, int *woken,
                     ps_berr *err) {
  memset(out, 0, n * sizeof *out);
  if (woken) *woken = 0;
  if (c == &g->blk && g->held_n)   /* its replies would be read as ours */
    return ps_berr_set(err, PS_BCONFIG, "redis %s: a held call's replies are "
                       "still to be read (ps_rg_recv_held)", c->addr);
  ps_rconn_begin_call(c);
  int reused = ps_rconn_owned(c);
  int code = once(g, c, n, cmds, npre, wait_s, out, woken, err);
  ps_rconn_settle(c);
  if (code == PS_BCONN && reused && c->fd < 0) {
    free_values(n, out);
    memset(out, 0, n * sizeof *out);
    code = once(g, c, n, cmds, npre, wait_s, out, woken, err);
    ps_rconn_settle(c);
  }
  return code;
}

int ps_rg_call(ps_rgroups *g, size_t n, const ps_rcmd *cmds, ps_rvalue *out,
               ps_berr *err) {
  return roundtrip(g, &g->cmd, n, cmds, 0, -1, out, NULL, err);
}

int ps_rg_call_blocking(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                        double wait_s, ps_rvalue *out, int *woken,
                        ps_berr *err) {
  return roundtrip(g, &g->blk, n, cmds, 0, wait_s < 0 ? 0 : wait_s, out,
                   woken, err);
}

/* ---- a held call across calls ---------------------------------------------- */

int ps_rg_queue_held(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                     double wait_s, ps_berr *err) {
  ps_rconn *c = &g->blk;
  if (g->held_n)
    return ps_berr_set(err, PS_BCONFIG, "redis %s: a held call is already "
                       "sent", c->addr);
  if (!ps_rconn_owned(c)) g->connects++;
  ps_rconn_begin_call(c);
  int code = ps_rconn_ensure(c, err);
  if (code != PS_BOK) {
    ps_rconn_settle(c);
    return code;
  }
  build(c, n, cmds);
  g->held_n = n;
  g->held_queued = 1;
  g->held_wait = wait_s > 0 ? wait_s : 0;
  return PS_BOK;
}

static int flush_held(ps_rgroups *g, ps_berr *err) {
  ps_rconn *c = &g->blk;
  g->held_queued = 0;
  int code = ps_rconn_send(c, err);
  if (code != PS_BOK) {
    ps_rconn_settle(c);
    g->held_n = 0;
    return code;
  }
  g->held_until = c->timeout > 0 ? mono() + g->held_wait + c->timeout : 0;
  return PS_BOK;
}

int ps_rg_send_held(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                    double wait_s, ps_berr *err) {
  int code = ps_rg_queue_held(g, n, cmds, wait_s, err);
  return code == PS_BOK ? flush_held(g, err) : code;
}

size_t ps_rg_held(const ps_rgroups *g) {
  return g->held_n;
}

int ps_rg_recv_held(ps_rgroups *g, double wait_s, ps_rvalue *out, int *ready,
                    ps_berr *err) {
  ps_rconn *c = &g->blk;
  size_t n = g->held_n;
  *ready = 0;
  if (n == 0)
    return ps_berr_set(err, PS_BCONFIG, "redis %s: no held call was sent",
                       c->addr);
  memset(out, 0, n * sizeof *out);
  if (g->held_queued) {
    int code = flush_held(g, err);
    if (code) return code;
  }
  if (c->rpos == c->rlen) {
    double left = g->held_until > 0 ? g->held_until - mono() : -1;
    double w = wait_s < 0 ? left : (left >= 0 && left < wait_s ? left : wait_s);
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r;
    do {
      r = poll(&p, 1, w < 0 ? -1 : (int)(w * 1000) + (w > 0));
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
      if (g->held_until == 0 || mono() < g->held_until) return PS_BOK;
      ps_rconn_drop(c);
      g->held_n = 0;
      return ps_berr_set(err, PS_BTIMEOUT, "redis %s: timed out waiting for "
                         "a reply", c->addr);
    }
  }
  /* it has begun to answer: the rest within the connection's timeout */
  ps_rconn_begin_call(c);
  int code = PS_BOK;
  for (size_t i = 0; i < n && code == PS_BOK; i++)
    code = ps_rconn_read_value(c, &out[i], &g->lim, err);
  ps_rconn_settle(c);
  g->held_n = 0;
  if (code == PS_BOK) *ready = 1;
  return code;
}

/* ---- replies ------------------------------------------------------------ */

/* An error reply to what as a PS_B* code: NOGROUP and missing keys are
   PS_BNOTFOUND, refusals of the session PS_BCONFIG. */
static int reply_error(ps_rgroups *g, const ps_rvalue *v, const char *what,
                       ps_berr *err) {
  int code = ps_rconn_error_code(v->str, PS_BPROTO);
  if (!strncmp(v->str, "NOGROUP", 7) || strstr(v->str, "no such key"))
    code = PS_BNOTFOUND;
  else if (!strncmp(v->str, "NOAUTH", 6) || !strncmp(v->str, "WRONGPASS", 9) ||
           !strncmp(v->str, "NOPERM", 6))
    code = PS_BCONFIG;
  return ps_berr_set(err, code, "redis %s: %s: %s", g->cmd.addr, what, v->str);
}

static int malformed(ps_rgroups *g, const char *what, ps_berr *err) {
  return ps_berr_set(err, PS_BPROTO, "redis %s: %s: malformed reply",
                     g->cmd.addr, what);
}

static int is_bulk(const ps_rvalue *v) {
  return v && v->type == PS_R_BULK && v->n >= 0;
}

static int is_nil(const ps_rvalue *v) {
  return v && (v->type == PS_R_BULK || v->type == PS_R_ARRAY) && v->n < 0;
}

/* The integer of an INT reply (or of a numeric bulk), or dflt. */
static long long int_of(const ps_rvalue *v, long long dflt) {
  if (v && v->type == PS_R_INT) return v->n;
  if (is_bulk(v)) {
    char *end;
    long long n = strtoll(v->str, &end, 10);
    if (end != v->str && *end == '\0') return n;
  }
  return dflt;
}

static void copy_id(char dst[PS_RID_MAX], const ps_rvalue *v) {
  size_t n = is_bulk(v) && v->len < PS_RID_MAX ? v->len : 0;
  memcpy(dst, n ? v->str : "", n);
  dst[n] = '\0';
}

/* Fills es from an array of [id, [field, value, ...] or nil]; takes
   ownership of reply (es->reply), whatever the outcome. */
static int parse_entries(ps_rgroups *g, ps_rvalue *reply,
                         const ps_rvalue *list, ps_rentries *es,
                         const char *what, ps_berr *err) {
  es->reply = *reply;
  memset(reply, 0, sizeof *reply);
  if (list == reply) list = &es->reply;   /* the reply is the list */
  if (list == NULL || is_nil(list)) return PS_BOK;
  if (list->type != PS_R_ARRAY) return malformed(g, what, err);
  if (list->n == 0) return PS_BOK;
  es->e = calloc((size_t)list->n, sizeof *es->e);
  if (es->e == NULL)
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
  for (long long i = 0; i < list->n; i++) {
    const ps_rvalue *item = &list->elem[i];
    const ps_rvalue *id = ps_rvalue_at(item, 0), *fv = ps_rvalue_at(item, 1);
    ps_rentry *e = &es->e[es->n];
    if (!is_bulk(id)) return malformed(g, what, err);
    e->id = id->str;
    if (fv == NULL || is_nil(fv)) {
      e->deleted = 1;
    } else {
      if (fv->type != PS_R_ARRAY || fv->n % 2) return malformed(g, what, err);
      for (long long j = 0; j < fv->n; j++)
        if (!is_bulk(&fv->elem[j])) return malformed(g, what, err);
      e->nfields = (size_t)fv->n / 2;
      e->fv = fv->elem;
    }
    es->n++;
  }
  return PS_BOK;
}

void ps_rentries_free(ps_rentries *es) {
  free(es->e);
  ps_rvalue_free(&es->reply);
  memset(es, 0, sizeof *es);
}

const ps_rvalue *ps_rentry_field(const ps_rentry *e, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; i < e->nfields; i++) {
    const ps_rvalue *f = &e->fv[2 * i];
    if (f->len == len && memcmp(f->str, name, len) == 0) return &e->fv[2 * i + 1];
  }
  return NULL;
}

/* One command on the command connection whose reply must not be an error
   reply; *v must be freed by the caller. */
static int simple(ps_rgroups *g, size_t argc, const char *const *argv,
                  const size_t *lens, ps_rvalue *v, ps_berr *err) {
  ps_rcmd c = {argc, argv, lens};
  int code = ps_rg_call(g, 1, &c, v, err);
  if (code == PS_BOK && v->type == PS_R_ERROR)
    code = reply_error(g, v, argv[0], err);
  return code;
}

/* ---- groups --------------------------------------------------------------- */

int ps_rg_create_group(ps_rgroups *g, const char *stream, const char *group,
                       const char *start, ps_berr *err) {
  const char *argv[] = {"XGROUP", "CREATE", stream, group, start, "MKSTREAM"};
  ps_rcmd c = {6, argv, NULL};
  ps_rvalue v;
  int code = ps_rg_call(g, 1, &c, &v, err);
  if (code == PS_BOK && v.type == PS_R_ERROR && strncmp(v.str, "BUSYGROUP", 9))
    code = reply_error(g, &v, "XGROUP CREATE", err);
  ps_rvalue_free(&v);
  return code;
}

int ps_rg_destroy_group(ps_rgroups *g, const char *stream, const char *group,
                        int *existed, ps_berr *err) {
  const char *argv[] = {"XGROUP", "DESTROY", stream, group};
  ps_rvalue v;
  int code = simple(g, 4, argv, NULL, &v, err);
  if (code == PS_BOK && existed) *existed = int_of(&v, 0) > 0;
  ps_rvalue_free(&v);
  return code;
}

int ps_rg_delete_consumer(ps_rgroups *g, const char *stream,
                          const char *group, const char *consumer,
                          long long *dropped, ps_berr *err) {
  const char *argv[] = {"XGROUP", "DELCONSUMER", stream, group, consumer};
  ps_rvalue v;
  int code = simple(g, 5, argv, NULL, &v, err);
  if (code == PS_BOK && dropped) *dropped = int_of(&v, 0);
  ps_rvalue_free(&v);
  return code;
}

int ps_rg_group_info(ps_rgroups *g, const char *stream, const char *group,
                     ps_rgroup_info *out, ps_berr *err) {
  const char *argv[] = {"XINFO", "GROUPS", stream};
  ps_rvalue v;
  int code = simple(g, 3, argv, NULL, &v, err);
  if (code == PS_BOK && v.type != PS_R_ARRAY)
    code = malformed(g, "XINFO GROUPS", err);
  int found = 0;
  for (long long i = 0; code == PS_BOK && !found && i < v.n; i++) {
    const ps_rvalue *gi = &v.elem[i];
    if (gi->type != PS_R_ARRAY || gi->n % 2) {
      code = malformed(g, "XINFO GROUPS", err);
      break;
    }
    memset(out, 0, sizeof *out);
    out->entries_read = out->lag = -1;
    for (long long j = 0; j + 1 < gi->n; j += 2) {
      const ps_rvalue *k = &gi->elem[j], *val = &gi->elem[j + 1];
      if (!is_bulk(k)) continue;
      if (!strcmp(k->str, "name"))
        found = is_bulk(val) && !strcmp(val->str, group);
      else if (!strcmp(k->str, "consumers"))
        out->consumers = int_of(val, 0);
      else if (!strcmp(k->str, "pending"))
        out->pending = int_of(val, 0);
      else if (!strcmp(k->str, "last-delivered-id"))
        copy_id(out->last_delivered, val);
      else if (!strcmp(k->str, "entries-read"))
        out->entries_read = int_of(val, -1);
      else if (!strcmp(k->str, "lag"))
        out->lag = int_of(val, -1);
    }
  }
  if (code == PS_BOK && !found)
    code = ps_berr_set(err, PS_BNOTFOUND, "redis %s: no group '%s' on '%s'",
                       g->cmd.addr, group, stream);
  ps_rvalue_free(&v);
  return code;
}

/* ---- adding and trimming --------------------------------------------------- */

/* Appends the trimming arguments of t to argv; returns how many. */
static size_t trim_args(const ps_rtrim *t, const char **argv, char *num,
                        size_t numlen) {
  if (t == NULL || t->how == PS_RTRIM_NONE) return 0;
  argv[0] = t->how == PS_RTRIM_MAXLEN ? "MAXLEN" : "MINID";
  argv[1] = t->approx ? "~" : "=";
  if (t->how == PS_RTRIM_MAXLEN) {
    snprintf(num, numlen, "%lld", t->maxlen < 0 ? 0 : t->maxlen);
    argv[2] = num;
  } else {
    argv[2] = t->minid ? t->minid : "0";
  }
  return 3;
}

int ps_rg_add(ps_rgroups *g, const char *stream, const ps_rtrim *trim,
              size_t n, const ps_rnew *entries, char (*ids)[PS_RID_MAX],
              ps_berr *err) {
  if (n == 0) return PS_BOK;
  char num[24];
  const char *targs[3];
  size_t nt = trim_args(trim, targs, num, sizeof num);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += 3 + nt + 2 * entries[i].nfields;
  ps_rcmd *cmds = malloc(n * sizeof *cmds);
  const char **argv = malloc(total * sizeof *argv);
  size_t *lens = malloc(total * sizeof *lens);
  ps_rvalue *out = calloc(n, sizeof *out);
  int code = PS_BOK;
  if (!cmds || !argv || !lens || !out) {
    code = ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
    goto done;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    cmds[i] = (ps_rcmd){3 + nt + 2 * entries[i].nfields, argv + k, lens + k};
    argv[k] = "XADD", lens[k++] = 4;
    argv[k] = stream, lens[k++] = strlen(stream);
    for (size_t j = 0; j < nt; j++) argv[k] = targs[j], lens[k++] = strlen(targs[j]);
    argv[k] = "*", lens[k++] = 1;
    for (size_t j = 0; j < 2 * entries[i].nfields; j++)
      argv[k] = entries[i].fv[j].p, lens[k++] = entries[i].fv[j].len;
  }
  code = ps_rg_call(g, n, cmds, out, err);
  for (size_t i = 0; code == PS_BOK && i < n; i++) {
    if (out[i].type == PS_R_ERROR) {
      char what[64];
      snprintf(what, sizeof what, "XADD (entry %zu of %zu)", i + 1, n);
      code = reply_error(g, &out[i], what, err);
    } else if (!is_bulk(&out[i])) {
      code = malformed(g, "XADD", err);
    } else if (ids) {
      copy_id(ids[i], &out[i]);
    }
  }
  free_values(n, out);
done:
  free(cmds);
  free(argv);
  free(lens);
  free(out);
  return code;
}

int ps_rg_trim(ps_rgroups *g, const char *stream, const ps_rtrim *trim,
               long long *removed, ps_berr *err) {
  const char *argv[5] = {"XTRIM", stream};
  char num[24];
  size_t nt = trim_args(trim, argv + 2, num, sizeof num);
  if (nt == 0) {
    if (removed) *removed = 0;
    return PS_BOK;
  }
  ps_rvalue v;
  int code = simple(g, 2 + nt, argv, NULL, &v, err);
  if (code == PS_BOK && removed) *removed = int_of(&v, 0);
  ps_rvalue_free(&v);
  return code;
}

/* A command whose tail is a list of ids; *count gets its integer reply. */
static int with_ids(ps_rgroups *g, const char **head, size_t nhead, size_t n,
                    const char *const *ids, long long *count, ps_berr *err) {
  if (count) *count = 0;
  if (n == 0) return PS_BOK;
  const char **argv = malloc((nhead + n) * sizeof *argv);
  if (argv == NULL)
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
  memcpy(argv, head, nhead * sizeof *argv);
  memcpy(argv + nhead, ids, n * sizeof *argv);
  ps_rvalue v;
  int code = simple(g, nhead + n, argv, NULL, &v, err);
  if (code == PS_BOK && count) *count = int_of(&v, 0);
  ps_rvalue_free(&v);
  free(argv);
  return code;
}

int ps_rg_delete(ps_rgroups *g, const char *stream, size_t n,
                 const char *const *ids, long long *deleted, ps_berr *err) {
  const char *head[] = {"XDEL", stream};
  return with_ids(g, head, 2, n, ids, deleted, err);
}

int ps_rg_length(ps_rgroups *g, const char *stream, long long *len,
                 ps_berr *err) {
  const char *argv[] = {"XLEN", stream};
  ps_rvalue v;
  int code = simple(g, 2, argv, NULL, &v, err);
  if (code == PS_BOK) *len = int_of(&v, 0);
  ps_rvalue_free(&v);
  return code;
}

/* ---- reading -------------------------------------------------------------- */

/*
 * Sends argv (an XREAD or XREADGROUP) and parses its reply into out:
 * [[stream, entries]] or nil goes into out. pre (may be NULL): a command
 * sent first in the same round trip, whose reply goes to *pre_out (the
 * caller frees it) whatever it is, even when the read was woken.
 */
static int read_stream_after(ps_rgroups *g, const ps_rcmd *pre,
                             ps_rvalue *pre_out, const char **argv,
                             size_t argc, long block_ms, ps_rentries *out,
                             int *woken, ps_berr *err) {
  memset(out, 0, sizeof *out);
  if (pre_out) memset(pre_out, 0, sizeof *pre_out);
  if (woken) *woken = 0;
  ps_rcmd c[2];
  size_t n = 0;
  if (pre) c[n++] = *pre;
  c[n++] = (ps_rcmd){argc, argv, NULL};
  ps_rvalue r[2];
  int code = block_ms >= 0
    ? roundtrip(g, &g->blk, n, c, n - 1, (double)block_ms / 1000, r, woken,
                err)
    : roundtrip(g, &g->cmd, n, c, 0, -1, r, NULL, err);
  if (code != PS_BOK) {
    free_values(n, r);
    return code;
  }
  if (pre) {
    if (pre_out) *pre_out = r[0];
    else ps_rvalue_free(&r[0]);
  }
  ps_rvalue v = r[n - 1];
  if (woken && *woken) {
    ps_rvalue_free(&v);
    return PS_BOK;
  }
  if (v.type == PS_R_ERROR) {
    code = reply_error(g, &v, argv[0], err);
    ps_rvalue_free(&v);
    return code;
  }
  const ps_rvalue *list = NULL;
  if (!is_nil(&v)) {
    const ps_rvalue *s = ps_rvalue_at(&v, 0);
    list = ps_rvalue_at(s, 1);
    if (v.type != PS_R_ARRAY || list == NULL) {
      ps_rvalue_free(&v);
      return malformed(g, argv[0], err);
    }
  }
  return parse_entries(g, &v, list, out, argv[0], err);
}

static int read_stream(ps_rgroups *g, const char **argv, size_t argc,
                       long block_ms, ps_rentries *out, int *woken,
                       ps_berr *err) {
  return read_stream_after(g, NULL, NULL, argv, argc, block_ms, out, woken,
                           err);
}

int ps_rg_read_group(ps_rgroups *g, const char *stream, const char *group,
                     const char *consumer, const char *from, long count,
                     long block_ms, ps_rentries *out, int *woken,
                     ps_berr *err) {
  return ps_rg_read_group_after(g, NULL, NULL, stream, group, consumer, from,
                                count, block_ms, out, woken, err);
}

int ps_rg_read_group_after(ps_rgroups *g, const ps_rcmd *pre,
                           ps_rvalue *pre_out, const char *stream,
                           const char *group, const char *consumer,
                           const char *from, long count, long block_ms,
                           ps_rentries *out, int *woken, ps_berr *err) {
  char cnt[24], blk[24];
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  snprintf(blk, sizeof blk, "%ld", block_ms < 1 ? 1 : block_ms);
  const char *argv[12] = {"XREADGROUP", "GROUP", group, consumer, "COUNT", cnt};
  size_t argc = 6;
  if (block_ms >= 0) argv[argc++] = "BLOCK", argv[argc++] = blk;
  argv[argc++] = "STREAMS", argv[argc++] = stream, argv[argc++] = from;
  return read_stream_after(g, pre, pre_out, argv, argc, block_ms, out, woken,
                           err);
}

int ps_rg_read(ps_rgroups *g, const char *stream, const char *from,
               long count, long block_ms, ps_rentries *out, int *woken,
               ps_berr *err) {
  char cnt[24], blk[24];
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  snprintf(blk, sizeof blk, "%ld", block_ms < 1 ? 1 : block_ms);
  const char *argv[10] = {"XREAD", "COUNT", cnt};
  size_t argc = 3;
  if (block_ms >= 0) argv[argc++] = "BLOCK", argv[argc++] = blk;
  argv[argc++] = "STREAMS", argv[argc++] = stream, argv[argc++] = from;
  return read_stream(g, argv, argc, block_ms, out, woken, err);
}

int ps_rg_range(ps_rgroups *g, const char *stream, const char *start,
                const char *end, long count, ps_rentries *out, ps_berr *err) {
  char cnt[24];
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  const char *argv[] = {"XRANGE", stream, start, end, "COUNT", cnt};
  memset(out, 0, sizeof *out);
  ps_rvalue v;
  int code = simple(g, 6, argv, NULL, &v, err);
  if (code != PS_BOK) {
    ps_rvalue_free(&v);
    return code;
  }
  return parse_entries(g, &v, &v, out, "XRANGE", err);
}

int ps_rg_revrange(ps_rgroups *g, const char *stream, const char *end,
                   const char *start, long count, ps_rentries *out,
                   ps_berr *err) {
  char cnt[24];
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  const char *argv[] = {"XREVRANGE", stream, end, start, "COUNT", cnt};
  memset(out, 0, sizeof *out);
  ps_rvalue v;
  int code = simple(g, 6, argv, NULL, &v, err);
  if (code != PS_BOK) {
    ps_rvalue_free(&v);
    return code;
  }
  return parse_entries(g, &v, &v, out, "XREVRANGE", err);
}

int ps_rg_ack_read_group(ps_rgroups *g, const char *stream, const char *group,
                         const char *consumer, size_t nack,
                         const char *const *ack_ids, long long *acked,
                         const char *from, long count, long block_ms,
                         ps_rentries *out, int *woken, ps_berr *err) {
  if (acked) *acked = 0;
  if (nack > 0 && block_ms >= 0 && g->wake_fd >= 0) {
    int code = ps_rg_ack(g, stream, group, nack, ack_ids, acked, err);
    if (code) {
      memset(out, 0, sizeof *out);
      if (woken) *woken = 0;
      return code;
    }
    nack = 0;
  }
  if (nack == 0)
    return ps_rg_read_group(g, stream, group, consumer, from, count, block_ms,
                            out, woken, err);
  const char **ack = malloc((3 + nack) * sizeof *ack);
  if (ack == NULL) {
    memset(out, 0, sizeof *out);
    if (woken) *woken = 0;
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
  }
  ack[0] = "XACK", ack[1] = stream, ack[2] = group;
  memcpy(ack + 3, ack_ids, nack * sizeof *ack);
  ps_rcmd pre = {3 + nack, ack, NULL};
  ps_rvalue a;
  int code = ps_rg_read_group_after(g, &pre, &a, stream, group, consumer,
                                    from, count, block_ms, out, woken, err);
  free(ack);
  if (code == PS_BOK && a.type == PS_R_ERROR) {
    code = reply_error(g, &a, "XACK", err);
    ps_rentries_free(out);
    memset(out, 0, sizeof *out);
  } else if (code == PS_BOK && acked) {
    *acked = int_of(&a, 0);
  }
  ps_rvalue_free(&a);
  return code;
}

/* ---- acknowledging, claiming, pending ---------------------------------------- */

int ps_rg_ack(ps_rgroups *g, const char *stream, const char *group, size_t n,
              const char *const *ids, long long *acked, ps_berr *err) {
  const char *head[] = {"XACK", stream, group};
  return with_ids(g, head, 3, n, ids, acked, err);
}

int ps_rg_autoclaim(ps_rgroups *g, const char *stream, const char *group,
                    const char *consumer, long long min_idle_ms,
                    const char *start, long count, ps_rentries *out,
                    ps_berr *err) {
  char idle[24], cnt[24];
  snprintf(idle, sizeof idle, "%lld", min_idle_ms < 0 ? 0 : min_idle_ms);
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  const char *argv[] = {"XAUTOCLAIM", stream, group, consumer, idle,
                        start ? start : "0-0", "COUNT", cnt};
  memset(out, 0, sizeof *out);
  ps_rvalue v;
  int code = simple(g, 8, argv, NULL, &v, err);
  const ps_rvalue *next = ps_rvalue_at(&v, 0), *list = ps_rvalue_at(&v, 1);
  if (code == PS_BOK && (!is_bulk(next) || list == NULL))
    code = malformed(g, "XAUTOCLAIM", err);
  if (code != PS_BOK) {
    ps_rvalue_free(&v);
    return code;
  }
  copy_id(out->next, next);
  const ps_rvalue *del = ps_rvalue_at(&v, 2);   /* Redis 7 */
  code = parse_entries(g, &v, list, out, "XAUTOCLAIM", err);
  /* del points into the tree now owned by out->reply */
  if (code == PS_BOK && del && del->type == PS_R_ARRAY && del->n > 0) {
    for (long long i = 0; i < del->n; i++)
      if (!is_bulk(&del->elem[i])) return malformed(g, "XAUTOCLAIM", err);
    out->ndeleted = (size_t)del->n;
    out->deleted = del->elem;
  }
  return code;
}

int ps_rg_deliveries(ps_rgroups *g, const char *stream, const char *group,
                     ps_rentries *es, ps_berr *err) {
  if (es->n == 0) return PS_BOK;
  ps_rcmd *cmds = malloc(es->n * sizeof *cmds);
  const char **argv = malloc(es->n * 6 * sizeof *argv);
  ps_rvalue *out = calloc(es->n, sizeof *out);
  int code = PS_BOK;
  if (!cmds || !argv || !out) {
    code = ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
    goto done;
  }
  for (size_t i = 0; i < es->n; i++) {
    const char **a = argv + 6 * i;
    a[0] = "XPENDING", a[1] = stream, a[2] = group;
    a[3] = a[4] = es->e[i].id, a[5] = "1";
    cmds[i] = (ps_rcmd){6, a, NULL};
  }
  code = ps_rg_call(g, es->n, cmds, out, err);
  for (size_t i = 0; code == PS_BOK && i < es->n; i++) {
    if (out[i].type == PS_R_ERROR) {
      code = reply_error(g, &out[i], "XPENDING", err);
      break;
    }
    const ps_rvalue *row = ps_rvalue_at(&out[i], 0);
    es->e[i].deliveries = int_of(ps_rvalue_at(row, 3), 0);
  }
  free_values(es->n, out);
done:
  free(cmds);
  free(argv);
  free(out);
  return code;
}

int ps_rg_pending(ps_rgroups *g, const char *stream, const char *group,
                  long long min_idle_ms, const char *start, const char *end,
                  long count, const char *consumer, ps_rpendings *out,
                  ps_berr *err) {
  char idle[24], cnt[24];
  snprintf(idle, sizeof idle, "%lld", min_idle_ms);
  snprintf(cnt, sizeof cnt, "%ld", count < 1 ? 1 : count);
  const char *argv[10] = {"XPENDING", stream, group};
  size_t argc = 3;
  if (min_idle_ms > 0) argv[argc++] = "IDLE", argv[argc++] = idle;
  argv[argc++] = start, argv[argc++] = end, argv[argc++] = cnt;
  if (consumer) argv[argc++] = consumer;
  memset(out, 0, sizeof *out);
  ps_rvalue v;
  int code = simple(g, argc, argv, NULL, &v, err);
  if (code == PS_BOK && v.type != PS_R_ARRAY)
    code = malformed(g, "XPENDING", err);
  if (code == PS_BOK && v.n > 0) {
    out->p = calloc((size_t)v.n, sizeof *out->p);
    if (out->p == NULL)
      code = ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory",
                         g->cmd.addr);
  }
  for (long long i = 0; code == PS_BOK && i < v.n; i++) {
    const ps_rvalue *row = &v.elem[i];
    const ps_rvalue *id = ps_rvalue_at(row, 0), *c = ps_rvalue_at(row, 1);
    if (!is_bulk(id) || !is_bulk(c)) {
      code = malformed(g, "XPENDING", err);
      break;
    }
    out->p[i] = (ps_rpending){id->str, c->str,
                              int_of(ps_rvalue_at(row, 2), 0),
                              int_of(ps_rvalue_at(row, 3), 0)};
    out->n++;
  }
  out->reply = v;
  return code;
}

void ps_rpendings_free(ps_rpendings *ps) {
  free(ps->p);
  ps_rvalue_free(&ps->reply);
  memset(ps, 0, sizeof *ps);
}

int ps_rg_pending_summary(ps_rgroups *g, const char *stream,
                          const char *group, long long *count,
                          char lowest[PS_RID_MAX], ps_berr *err) {
  const char *argv[] = {"XPENDING", stream, group};
  ps_rvalue v;
  int code = simple(g, 3, argv, NULL, &v, err);
  if (code == PS_BOK && (v.type != PS_R_ARRAY || v.n < 2))
    code = malformed(g, "XPENDING", err);
  if (code == PS_BOK) {
    *count = int_of(ps_rvalue_at(&v, 0), 0);
    copy_id(lowest, ps_rvalue_at(&v, 1));
  }
  ps_rvalue_free(&v);
  return code;
}

int ps_rg_touch(ps_rgroups *g, const char *stream, const char *group,
                const char *consumer, size_t n, const char *const *ids,
                int *owned, ps_berr *err) {
  if (n == 0) return PS_BOK;
  const char **argv = malloc((n + 6) * sizeof *argv);
  if (argv == NULL)
    return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory", g->cmd.addr);
  argv[0] = "EVAL", argv[1] = TOUCH_SCRIPT, argv[2] = "1", argv[3] = stream;
  argv[4] = group, argv[5] = consumer;
  memcpy(argv + 6, ids, n * sizeof *argv);
  ps_rvalue v;
  int code = simple(g, n + 6, argv, NULL, &v, err);
  free(argv);
  if (code == PS_BOK && (v.type != PS_R_ARRAY || (size_t)v.n != n))
    code = malformed(g, "EVAL (touch)", err);
  for (size_t i = 0; code == PS_BOK && owned && i < n; i++)
    owned[i] = int_of(&v.elem[i], 0) == 1;
  ps_rvalue_free(&v);
  return code;
}

int ps_rg_reclaim(ps_rgroups *g, const char *stream, const char *group,
                  const char *consumer, long long min_idle_ms, long count,
                  char cursor[PS_RID_MAX], ps_rentries *out, ps_berr *err) {
  int code = ps_rg_autoclaim(g, stream, group, consumer, min_idle_ms,
                             cursor[0] ? cursor : "0-0", count, out, err);
  if (code) return code;
  /* Entries gone from the stream while pending (Redis 6.2 returns them
     without fields): acknowledged, so that they leave the pending list. */
  size_t ngone = 0;
  for (size_t i = 0; i < out->n; i++) ngone += out->e[i].deleted != 0;
  if (ngone > 0) {
    const char **gone = malloc(ngone * sizeof *gone);
    if (gone == NULL)
      return ps_berr_set(err, PS_BNOMEM, "redis %s: out of memory",
                         g->cmd.addr);
    size_t k = 0, kept = 0;
    for (size_t i = 0; i < out->n; i++) {
      if (out->e[i].deleted) gone[k++] = out->e[i].id;
      else out->e[kept++] = out->e[i];
    }
    code = ps_rg_ack(g, stream, group, ngone, gone, NULL, err);
    free(gone);
    out->n = kept;   /* the ids live in out->reply, still owned */
    if (code) return code;
  }
  code = ps_rg_deliveries(g, stream, group, out, err);
  if (code) return code;
  snprintf(cursor, PS_RID_MAX, "%s", out->next[0] ? out->next : "0-0");
  return PS_BOK;
}
