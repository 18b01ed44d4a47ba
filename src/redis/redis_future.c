/*
 * redis_future.c: what futures and leases need of the Redis backend:
 * writes with options (a lease, "only if absent", a wake-up), waiting for
 * a key to be set, and pushing a lease back.
 *
 * Wake-ups. A future's value lives under prefix..key like any object; its
 * wake-up is a list under prefix..key..":wake". Setting a future writes
 * the value and pushes one token onto the list in one MULTI/EXEC, so the
 * two land together (or not at all, if the setter dies first). A waiter,
 * on a connection of its own, first reads the value (one written some
 * other way counts), then blocks in
 *
 *     BLMOVE key:wake key:wake LEFT RIGHT <timeout>
 *     GET key                      (pipelined: runs when BLMOVE returns)
 *
 * which pops the token and pushes it straight back onto the same list.
 * The token therefore never leaves the list: Redis serves every client
 * blocked on the list in turn as long as it is not empty, so one push
 * wakes every waiter however many there are, and a waiter that arrives
 * after the set finds the token and returns at once. Nothing polls, no
 * count of waiters is kept, and keyspace notifications (off by default on
 * real servers) are not needed. Eviction deletes the list with the value.
 *
 * On a Redis Cluster every key of one object (value, chunks, wake-up
 * list) is named through ps_redis_arg_key as prefix{key}suffix, so they
 * all hash to one slot: each call routes to the node serving it
 * (ps_redis_route), and the MULTI over the value and its list is legal.
 * While that slot moves between nodes, a set waits until the move is over
 * (Redis answers TRYAGAIN or ASK for a transaction whose keys are not all
 * on one node), and evict and expire touch the list with a command of its
 * own (ps_redis_queue_wake), so that objects that are no future, which
 * have no list, are not held up by it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "redis_store.h"

/* The longest one BLMOVE blocks; a longer wait issues another (the token
   stays on the list, so nothing can be missed in between). */
#define BLOCK_MAX 30.0

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- writing the main key ------------------------------------------------ */

static int uses_multi(const ps_bput *o) {
  return o && (o->if_absent || o->wake);
}

void ps_redis_queue_main(ps_redis *x, ps_key k, const char *hdr, size_t hlen,
                         const ps_part *parts, size_t n, size_t len,
                         const ps_bput *o) {
  int ttl = o && o->ttl_ms > 0;
  int nx = o && o->if_absent;
  int asking = x->c->asking;
  if (uses_multi(o)) {
    ps_rcmd_begin(x->c, 1);
    ps_rcmd_str(x->c, "MULTI");
    /* On a cluster node importing the slot (after an ASK), the ASKING
       sent before MULTI holds for the whole transaction (the server keeps
       the flag until EXEC), and one inside it would only be queued. */
    x->c->asking = 0;
  }
  ps_rcmd_begin(x->c, 3 + (size_t)nx + 2 * (size_t)ttl);
  ps_rcmd_str(x->c, "SET");
  ps_redis_arg_key(x, k, NULL);
  ps_rcmd_bulk_begin(x->c, hlen + len);
  ps_rcmd_bulk_part(x->c, hdr, hlen);
  for (size_t i = 0; i < n; i++)
    if (parts[i].len) ps_rcmd_bulk_part(x->c, parts[i].data, parts[i].len);
  ps_rcmd_bulk_end(x->c);
  if (nx) ps_rcmd_str(x->c, "NX");
  if (ttl) {
    ps_rcmd_str(x->c, "PX");
    ps_rcmd_int(x->c, (long long)o->ttl_ms);
  }
  if (o && o->wake) {
    ps_rcmd_begin(x->c, 3);
    ps_rcmd_str(x->c, "RPUSH");
    ps_redis_arg_key(x, k, PS_REDIS_WAKE);
    ps_rcmd_str(x->c, "1");
    if (ttl) {
      ps_rcmd_begin(x->c, 3);
      ps_rcmd_str(x->c, "PEXPIRE");
      ps_redis_arg_key(x, k, PS_REDIS_WAKE);
      ps_rcmd_int(x->c, (long long)o->ttl_ms);
    }
  }
  if (uses_multi(o)) {
    ps_rcmd_begin(x->c, 1);
    ps_rcmd_str(x->c, "EXEC");
  }
  x->c->asking = asking;
}

/* One element of EXEC's reply: an error reply inside it, or PS_BOK. */
static int exec_elem(ps_redis *x, ps_key k, const ps_rvalue *e, ps_berr *err) {
  if (e == NULL)
    return ps_rconn_fail(x->c, err, PS_BPROTO, "unexpected reply to EXEC");
  if (e->type != PS_R_ERROR) return PS_BOK;
  ps_rreply r = {.type = PS_R_ERROR, .str = e->str, .len = e->len};
  return ps_redis_reply_error(x, k, &r, err);
}

int ps_redis_read_main(ps_redis *x, ps_key k, const ps_bput *o, ps_berr *err) {
  if (!uses_multi(o)) return ps_redis_expect_ok(x, k, err);
  /* +OK for MULTI, +QUEUED (or an error) per command, then EXEC's array.
     Every reply is read while the connection lives. */
  size_t queued = 1 + (o->wake ? 1 + (o->ttl_ms > 0) : 0);
  int code = PS_BOK;
  for (size_t i = 0; i < 1 + queued && x->c->fd >= 0; i++) {
    ps_rreply r;
    ps_berr e;
    int c = ps_rconn_read_reply(x->c, &r, &e);
    if (c == PS_BOK && r.type == PS_R_ERROR)
      c = ps_redis_reply_error(x, k, &r, &e);
    ps_rreply_free(&r);
    ps_redis_keep_first(&code, err, c, &e);
  }
  if (x->c->fd < 0) return code;
  ps_rvalue v;
  ps_berr e;
  int c = ps_rconn_read_value(x->c, &v, &ps_rlimits_small, &e);
  if (c == PS_BOK) {
    if (v.type == PS_R_ERROR) {   /* EXECABORT: a command was refused */
      ps_rreply r = {.type = PS_R_ERROR, .str = v.str, .len = v.len};
      c = ps_redis_reply_error(x, k, &r, &e);
    } else if (v.type != PS_R_ARRAY || v.n != (long long)queued) {
      c = ps_rconn_fail(x->c, &e, PS_BPROTO, "unexpected reply to EXEC");
    } else {
      for (size_t i = 0; i < queued && c == PS_BOK; i++)
        c = exec_elem(x, k, ps_rvalue_at(&v, i), &e);
      /* SET ... NX answers nil when the key was taken */
      const ps_rvalue *set = ps_rvalue_at(&v, 0);
      if (c == PS_BOK && set->n < 0 && set->type == PS_R_BULK)
        c = ps_berr_set(&e, PS_BEXISTS, "already set");
    }
  }
  ps_rvalue_free(&v);
  ps_redis_keep_first(&code, err, c, &e);
  return code;
}

/* ---- put_ex ---------------------------------------------------------------- */

typedef struct put_args {
  ps_key k;
  const ps_part *parts;
  size_t n;
  size_t len;
  const ps_bput *o;
  ps_version *vout;
} put_args;

static int put_ex_once(ps_redis *x, void *arg, ps_berr *err) {
  put_args *a = arg;
  ps_version v;
  if (ps_redis_new_version(&v) != 0)
    return ps_berr_set(err, PS_BIO, "redis: getrandom failed");
  int code = ps_redis_route(x, a->k, err);
  if (code) return code;
  if (a->len > x->plain_max) {
    code = ps_redis_put_chunked(x, a->k, a->parts, a->n, a->len, &v, a->o,
                                err);
  } else {
    char hdr[HDR_LEN];
    hdr[0] = 'P';
    memcpy(hdr + 1, v.bytes, PS_VERSION_LEN);
    /* A put that may only fill an empty key replaces nothing: no old
       header to read back. */
    int with_old = !a->o->if_absent;
    if (with_old) ps_redis_queue_old_header(x, a->k);
    ps_redis_queue_main(x, a->k, hdr, HDR_LEN, a->parts, a->n, a->len, a->o);
    code = ps_rconn_send(x->c, err);
    ps_rchunks old;
    int had = 0;
    if (!code && with_old) code = ps_redis_read_old_header(x, &old, &had, err);
    if (!code) code = ps_redis_read_main(x, a->k, a->o, err);
    if (!code && had) code = ps_redis_del_chunks(x, a->k, &old, err);
  }
  if (!code && a->vout) *a->vout = v;
  return code;
}

int ps_redis_put_ex(void *ctx, ps_key k, const ps_part *parts, size_t n,
                    const ps_bput *o, ps_version *vout, ps_berr *err) {
  static const ps_bput none = {0, 0, 0, 0};
  put_args a = {k, parts, n, ps_parts_len(parts, n), o ? o : &none, vout};
  return ps_redis_call(ctx, put_ex_once, &a, err);
}

/* ---- wait ------------------------------------------------------------------ */

typedef struct wait_args {
  ps_key k;
  double block;       /* seconds BLMOVE may block */
  int woken;          /* the token came, or the value is there */
  ps_blob *out;       /* NULL: wait only */
  ps_version *vout;
} wait_args;

/*
 * One BLMOVE, and with a->out a GET pipelined behind it: the server holds
 * the GET while BLMOVE blocks and runs it the moment BLMOVE returns, so a
 * woken waiter has its value without another round trip (with a hundred
 * waiters, without a hundred more turns of the server, too).
 */
static int blmove_once(ps_redis *x, void *arg, ps_berr *err) {
  wait_args *a = arg;
  int code = ps_redis_route(x, a->k, err);
  if (code) return code;
  /* Redis takes the timeout in seconds with millisecond resolution, and
     reads anything under 1 ms as 0: block forever. */
  char secs[32];
  snprintf(secs, sizeof secs, "%.3f", a->block < 0.001 ? 0.001 : a->block);
  ps_rcmd_begin(x->c, 6);
  ps_rcmd_str(x->c, "BLMOVE");
  ps_redis_arg_key(x, a->k, PS_REDIS_WAKE);
  ps_redis_arg_key(x, a->k, PS_REDIS_WAKE);
  ps_rcmd_str(x->c, "LEFT");
  ps_rcmd_str(x->c, "RIGHT");
  ps_rcmd_str(x->c, secs);
  if (a->out) ps_redis_queue_get_first(x, a->k);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rconn_allow_wait(x->c, a->block);   /* the server's silence is on purpose */
  ps_rvalue v;
  code = ps_rconn_read_value(x->c, &v, &ps_rlimits_small, err);
  if (code == PS_BOK) {
    if (v.type == PS_R_ERROR) {   /* the GET's reply stays unread: the
                                     call's settle drops the connection */
      ps_rreply r = {.type = PS_R_ERROR, .str = v.str, .len = v.len};
      code = ps_redis_reply_error(x, a->k, &r, err);
    } else {
      a->woken = v.n >= 0;   /* nil: the block ran out */
    }
  }
  ps_rvalue_free(&v);
  if (code || a->out == NULL) return code;
  ps_rchunks ci;
  int chunked = 0;
  code = ps_redis_read_get_first(x, a->k, a->out, a->vout, &ci, &chunked,
                                 err);
  if (code == PS_BOK) {
    a->woken = 1;   /* there, whatever BLMOVE said */
    if (chunked)
      code = ps_redis_get_chunks(x, a->k, &ci, a->out, a->vout, err);
  } else if (code == PS_BNOTFOUND && !a->woken) {
    code = PS_BOK;   /* not set yet */
  }
  return code;
}

int ps_redis_wait(void *ctx, ps_key k, double timeout, ps_blob *out,
                  ps_version *vout, ps_berr *err) {
  ps_redis *x = ctx;
  wait_args a = {k, 0, 0, out, vout};
  /* Set already (by a future, or written some other way)? */
  int code;
  if (out) {
    code = ps_backend_redis.get(x, k, NULL, out, vout, err);
    if (code != PS_BNOTFOUND) return code;
  } else {
    int found = 0;
    code = ps_backend_redis.exists(x, k, &found, err);
    if (code || found) return code;
  }
  double end = timeout >= 0 ? mono_now() + timeout : INFINITY;
  for (;;) {
    double left = end - mono_now();
    if (left <= 0) {
      char kb[80];
      return ps_berr_set(err, PS_BTIMEOUT,
                         "future '%s%s' was not set within %gs", x->prefix,
                         ps_redis_keyname(k, kb, sizeof kb), timeout);
    }
    a.block = left < BLOCK_MAX ? left : BLOCK_MAX;
    code = ps_redis_call(ctx, blmove_once, &a, err);
    if (code || a.woken) return code;
  }
}

/* ---- expire ---------------------------------------------------------------- */

typedef struct expire_args {
  ps_key k;
  int64_t ttl_ms;
  int wake_elsewhere;   /* the wake-up list's PEXPIRE is left for a step
                           of its own (ps_redis_read_wake) */
} expire_args;

static int expire_once(ps_redis *x, void *arg, ps_berr *err) {
  expire_args *a = arg;
  a->wake_elsewhere = 0;
  int code = ps_redis_route(x, a->k, err);
  if (code) return code;
  ps_redis_queue_old_header(x, a->k);   /* chunked? */
  ps_rcmd_begin(x->c, 3);
  ps_rcmd_str(x->c, "PEXPIRE");
  ps_redis_arg_key(x, a->k, NULL);
  ps_rcmd_int(x->c, (long long)a->ttl_ms);
  ps_redis_queue_wake(x, a->k, a->ttl_ms);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rchunks ci;
  int chunked = 0, found = 0;
  code = ps_redis_read_old_header(x, &ci, &chunked, err);
  if (x->c->fd >= 0) {
    ps_rreply r;
    ps_berr e;
    int c = ps_rconn_read_reply(x->c, &r, &e);
    if (c == PS_BOK && r.type == PS_R_ERROR)
      c = ps_redis_reply_error(x, a->k, &r, &e);
    else if (c == PS_BOK)
      found = r.type == PS_R_INT && r.n == 1;
    ps_rreply_free(&r);
    ps_redis_keep_first(&code, err, c, &e);
  }
  if (x->c->fd >= 0) {
    ps_berr e;
    int c = ps_redis_read_wake(x, a->k, &a->wake_elsewhere, &e);
    ps_redis_keep_first(&code, err, c, &e);
  }
  if (code) return code;
  if (!found) return ps_berr_set(err, PS_BNOTFOUND, "not found");
  if (chunked) code = ps_redis_expire_chunks(x, a->k, &ci, a->ttl_ms, err);
  return code;
}

int ps_redis_expire(void *ctx, ps_key k, int64_t ttl_ms, ps_berr *err) {
  ps_redis *x = ctx;
  expire_args a = {k, ttl_ms, 0};
  ps_redis_begin_call(x);
  int code = ps_redis_attempts(x, expire_once, &a, err);
  if (code == PS_BOK && a.wake_elsewhere)
    code = ps_redis_wake_retried(x, k, ttl_ms, err);
  return code;
}

/* ---- the wake-up list's part of evict and expire ---------------------------- */

void ps_redis_queue_wake(ps_redis *x, ps_key k, int64_t ttl_ms) {
  ps_rcmd_begin(x->c, ttl_ms < 0 ? 2 : 3);
  ps_rcmd_str(x->c, ttl_ms < 0 ? "DEL" : "PEXPIRE");
  ps_redis_arg_key(x, k, PS_REDIS_WAKE);
  if (ttl_ms >= 0) ps_rcmd_int(x->c, (long long)ttl_ms);
}

int ps_redis_read_wake(ps_redis *x, ps_key k, int *elsewhere, ps_berr *err) {
  ps_rreply r;
  int code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR) {
    if (elsewhere && x->cl && ps_rconn_redirect_kind(r.str) != PS_RREDIR_NONE)
      *elsewhere = 1;
    else
      code = ps_redis_reply_error(x, k, &r, err);
  }
  ps_rreply_free(&r);
  return code;
}

typedef struct wake_args {
  ps_key k;
  int64_t ttl_ms;
} wake_args;

static int wake_once(ps_redis *x, void *arg, ps_berr *err) {
  wake_args *a = arg;
  int code = ps_redis_route(x, a->k, err);
  if (code) return code;
  ps_redis_queue_wake(x, a->k, a->ttl_ms);
  code = ps_rconn_send(x->c, err);
  return code ? code : ps_redis_read_wake(x, a->k, NULL, err);
}

int ps_redis_wake_retried(ps_redis *x, ps_key k, int64_t ttl_ms,
                          ps_berr *err) {
  wake_args a = {k, ttl_ms};
  return ps_redis_attempts(x, wake_once, &a, err);
}
