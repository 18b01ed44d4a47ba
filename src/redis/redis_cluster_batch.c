/*
 * redis_cluster_batch.c: get_batch and put_batch on a Redis Cluster.
 *
 * The keys are split by the node serving their slot; the commands of
 * every node are written before any reply is read, so the nodes work at
 * the same time, and each node's replies are read in the order its
 * commands went. Results land at the caller's index of each key.
 *
 * What one round cannot settle goes again alone, through the single-key
 * operation with its redirections and retries (cluster.h), within the
 * same call's deadline: keys whose reply redirected (a resharding, a
 * failover), keys of a node that could not be reached or whose
 * connection broke, chunked values (their chunks are read by the
 * single-key get), and values over the chunk size.
 */
#include <stdlib.h>
#include <string.h>

#include "redis_store.h"

typedef struct group {
  int node;
  ps_rconn *c;           /* NULL: could not be reached */
} group;

typedef struct split {
  group *g;
  size_t ng;
  int *of;               /* group of each key; -1: goes alone */
} split;

static void split_free(split *s) {
  free(s->g);
  free(s->of);
}

/*
 * Groups keys by node (skip[i]: key i goes alone anyway) and connects to
 * each node; a node that cannot be reached leaves its group's connection
 * NULL. A key no slot can hold fails the batch.
 */
static int split_keys(ps_redis *x, size_t n, const ps_key *keys,
                      const char *skip, split *s, ps_berr *err) {
  s->g = calloc(n, sizeof *s->g);
  s->of = malloc(n * sizeof *s->of);
  s->ng = 0;
  if (!s->g || !s->of)
    return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  for (size_t i = 0; i < n; i++) {
    unsigned slot;
    int code = ps_redis_slot(x, keys[i], &slot, err);
    if (code) return code;
    s->of[i] = -1;
    if (skip && skip[i]) continue;
    int node = ps_rcluster_pick(x->cl, slot);
    size_t j = 0;
    while (j < s->ng && s->g[j].node != node) j++;
    if (j == s->ng) s->g[s->ng++].node = node;
    s->of[i] = (int)j;
  }
  for (size_t j = 0; j < s->ng; j++) {
    ps_berr e;
    ps_rconn *c;
    if (ps_rcluster_open_node(x->cl, s->g[j].node, &c, &e) == PS_BOK)
      s->g[j].c = c;
  }
  return PS_BOK;
}

/* Sends each group's commands; a group whose send failed is dropped. */
static void send_all(split *s) {
  for (size_t j = 0; j < s->ng; j++) {
    ps_berr e;
    if (s->g[j].c && s->g[j].c->queued && ps_rconn_send(s->g[j].c, &e))
      s->g[j].c = NULL;
  }
}

/* After a round: MOVED replies update the map, connections settle. */
static void end_round(ps_redis *x, split *s) {
  for (size_t j = 0; j < s->ng; j++) {
    if (s->g[j].c == NULL) continue;
    ps_rcluster_learn(x->cl, s->g[j].c);
    ps_rconn_settle(s->g[j].c);
  }
}

/* A key whose reply says "not here" or whose connection broke under it
   goes again alone. */
static int redo_reply(const ps_rconn *c, unsigned redirects_before,
                      int code) {
  return c->redirects != redirects_before || (code == PS_BCONN && c->fd < 0);
}

int ps_redis_cluster_get_batch(void *ctx, size_t n, const ps_key *keys,
                               ps_blob *out, ps_version *vout, int *codes,
                               ps_berr *err) {
  ps_redis *x = ctx;
  for (size_t i = 0; i < n; i++) {
    out[i] = (ps_blob){0};
    codes[i] = PS_BNOTFOUND;
  }
  if (n == 0) return PS_BOK;
  ps_redis_begin_call(x);
  split s = {0};
  char *redo = calloc(n, 1);
  int code = redo ? split_keys(x, n, keys, NULL, &s, err)
                  : ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  if (code) goto done;
  for (size_t j = 0; j < s.ng; j++) {
    if ((x->c = s.g[j].c) == NULL) continue;
    for (size_t i = 0; i < n; i++)
      if (s.of[i] == (int)j) ps_redis_queue_get(x, keys[i]);
  }
  send_all(&s);
  for (size_t i = 0; i < n; i++)
    if (s.g[s.of[i]].c == NULL) redo[i] = 1;
  for (size_t j = 0; j < s.ng; j++) {
    ps_rconn *c = x->c = s.g[j].c;
    for (size_t i = 0; i < n && c; i++) {
      if (s.of[i] != (int)j) continue;
      if (c->fd < 0) {       /* broke earlier in this round */
        redo[i] = 1;
        continue;
      }
      unsigned before = c->redirects;
      int chunked = 0;
      ps_berr e;
      int r = ps_redis_read_get(x, keys[i], &out[i], vout ? &vout[i] : NULL,
                                &chunked, &e);
      if (redo_reply(c, before, r) || (r == PS_BOK && chunked)) redo[i] = 1;
      else if (r == PS_BOK || r == PS_BNOTFOUND) codes[i] = r;
      else ps_redis_keep_first(&code, err, r, &e);
    }
  }
  end_round(x, &s);
  for (size_t i = 0; i < n && !code; i++) {
    if (!redo[i]) continue;
    x->cl->hops = 0;         /* each key may follow its own redirections */
    ps_berr e;
    int r = ps_redis_get_retried(x, keys[i], &out[i], vout ? &vout[i] : NULL,
                                 &e);
    if (r == PS_BOK || r == PS_BNOTFOUND) codes[i] = r;
    else ps_redis_keep_first(&code, err, r, &e);
  }
done:
  if (code)
    for (size_t i = 0; i < n; i++) ps_blob_release(&out[i]);
  split_free(&s);
  free(redo);
  return code;
}

int ps_redis_cluster_put_batch(void *ctx, size_t n, const ps_key *keys,
                               const ps_blob *values, ps_version *vout,
                               ps_berr *err) {
  ps_redis *x = ctx;
  if (n == 0) return PS_BOK;
  ps_redis_begin_call(x);
  split s = {0};
  char (*hdrs)[HDR_LEN] = malloc(n * sizeof *hdrs);
  ps_rchunks *old = malloc(n * sizeof *old);
  ps_version *vs = malloc(n * sizeof *vs);
  char *had = calloc(n, 1), *alone = calloc(n, 1);
  int code = PS_BOK;
  if (!hdrs || !old || !vs || !had || !alone) {
    code = ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    goto done;
  }
  /* Values over the chunk size go alone, after the others. */
  for (size_t i = 0; i < n; i++) {
    alone[i] = values[i].len > x->plain_max;
    if (!alone[i] && ps_redis_new_version(&vs[i]) != 0) {
      code = ps_berr_set(err, PS_BIO, "redis: getrandom failed");
      goto done;
    }
  }
  code = split_keys(x, n, keys, alone, &s, err);
  if (code) goto done;
  for (size_t j = 0; j < s.ng; j++) {
    if ((x->c = s.g[j].c) == NULL) continue;
    for (size_t i = 0; i < n; i++) {
      if (s.of[i] != (int)j) continue;
      hdrs[i][0] = 'P';
      memcpy(hdrs[i] + 1, vs[i].bytes, PS_VERSION_LEN);
      ps_redis_queue_put(x, keys[i], values[i].data, values[i].len, hdrs[i]);
    }
  }
  send_all(&s);
  for (size_t i = 0; i < n; i++)
    if (s.of[i] >= 0 && s.g[s.of[i]].c == NULL) alone[i] = 1;
  /* Every reply is read while the connection lives, also after an error
     reply (NOPERM on one key): the first error is the batch's. */
  for (size_t j = 0; j < s.ng; j++) {
    ps_rconn *c = x->c = s.g[j].c;
    for (size_t i = 0; i < n && c; i++) {
      if (s.of[i] != (int)j) continue;
      if (c->fd < 0) {
        alone[i] = 1;
        continue;
      }
      unsigned before = c->redirects;
      int h;
      ps_berr e;
      int r = ps_redis_read_put(x, keys[i], &old[i], &h, &e);
      if (redo_reply(c, before, r)) {
        alone[i] = 1;        /* written again alone, old chunks and all */
        continue;
      }
      had[i] = (char)(r == PS_BOK && h);
      ps_redis_keep_first(&code, err, r, &e);
    }
  }
  end_round(x, &s);
  /* The chunks of values that were replaced are deleted even when another
     key failed; the rest is written only while all went well. */
  for (size_t i = 0; i < n; i++) {
    ps_berr e;
    int r = PS_BOK;
    x->cl->hops = 0;
    if (had[i]) r = ps_redis_del_chunks_retried(x, keys[i], &old[i], &e);
    else if (alone[i] && !code)
      r = ps_redis_put_retried(x, keys[i], values[i].data, values[i].len,
                               &vs[i], &e);
    ps_redis_keep_first(&code, err, r, &e);
  }
  if (!code && vout) memcpy(vout, vs, n * sizeof *vs);
done:
  split_free(&s);
  free(hdrs);
  free(old);
  free(vs);
  free(had);
  free(alone);
  return code;
}
