/*
 * cluster.c: routing a call to the node that serves its slot, and what to
 * do with the answers that say the slot is elsewhere or unserved. See
 * cluster.h; the map itself is cluster_map.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"

/* MOVED and ASK followed at once in one call; past that each waits the
   backoff, so nodes that send a call back and forth cannot spin. */
#define MAX_HOPS 16
#define FIRST_PAUSE 0.01
#define MAX_PAUSE 0.2
/* A map refresh after a MOVED waits this long after the last one. */
#define REFRESH_GAP 0.1
/* With timeout 0 (none), retries still end after this long. */
#define RETRY_NO_TIMEOUT 5.0

/* ---- opening ----------------------------------------------------------- */

/* Adds the seeds "host:port,[v6]:port,..." as the first nodes. */
static int add_seeds(ps_rcluster *cl, const char *list, ps_berr *err) {
  const char *p = list;
  while (*p) {
    const char *end = strchr(p, ',');
    if (end == NULL) end = p + strlen(p);
    const char *colon = end;
    while (colon > p && colon[-1] != ':') colon--;
    const char *h = p, *he = colon > p ? colon - 1 : p;
    if (h < he && *h == '[' && he[-1] == ']') h++, he--;
    long port = 0;
    int ok = colon > p && colon < end && end - colon <= 5 && he > h;
    for (const char *q = colon; ok && q < end; q++) {
      if (*q < '0' || *q > '9') ok = 0;
      else port = port * 10 + (*q - '0');
    }
    for (const char *q = h; ok && q < he; q++)
      if ((unsigned char)*q <= ' ' || *q == '/' || *q == '@') ok = 0;
    if (!ok || port < 1 || port > 65535)
      return ps_berr_set(err, PS_BCONFIG,
                         "redis cluster: bad node address '%.*s' (expected "
                         "host:port)", (int)(end - p < 100 ? end - p : 100), p);
    if (ps_rcluster_node(cl, h, (size_t)(he - h), (int)port) < 0)
      return ps_berr_set(err, PS_BCONFIG, "redis cluster: too many nodes");
    p = *end ? end + 1 : end;
  }
  cl->nseeds = cl->n;
  if (cl->n == 0)
    return ps_berr_set(err, PS_BCONFIG, "redis cluster: no node given");
  return PS_BOK;
}

void ps_rcluster_free(ps_rcluster *cl) {
  if (cl == NULL) return;
  for (size_t i = 0; i < cl->n; i++) {
    if (cl->nodes[i].c) {
      ps_rconn_free(cl->nodes[i].c);
      free(cl->nodes[i].c);
    }
    free(cl->nodes[i].host);
  }
  free(cl->nodes);
  free(cl->username);
  if (cl->password) {
    memset(cl->password, 0, strlen(cl->password));
    free(cl->password);
  }
  free(cl->seeds);
  free(cl);
}

ps_rcluster *ps_rcluster_open(const ps_bconfig *cfg, ps_berr *err) {
  ps_rcluster *cl = calloc(1, sizeof *cl);
  if (cl == NULL) {
    ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    return NULL;
  }
  memset(cl->slot, 0xff, sizeof cl->slot);
  cl->ask_node = cl->cur = -1;
  cl->seeds = strdup(cfg->cluster);
  cl->username = cfg->username ? strdup(cfg->username) : NULL;
  cl->password = cfg->password ? strdup(cfg->password) : NULL;
  if (!cl->seeds || (cfg->username && !cl->username) ||
      (cfg->password && !cl->password)) {
    ps_rcluster_free(cl);
    ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    return NULL;
  }
  /* Every node is reached with the same credentials and bounds; a
     cluster has one database, 0. */
  cl->cfg = (ps_bconfig){.username = cl->username, .password = cl->password,
                         .timeout = cfg->timeout};
  if (cfg->db != 0 || (cfg->path && *cfg->path)) {
    ps_berr_set(err, PS_BCONFIG, "redis cluster: %s",
                cfg->db ? "a cluster has only db 0"
                        : "a cluster is reached over TCP, not a socket path");
    ps_rcluster_free(cl);
    return NULL;
  }
  if (add_seeds(cl, cl->seeds, err) != PS_BOK) {
    ps_rcluster_free(cl);
    return NULL;
  }
  /* Read the map now, so that no reachable node, a wrong password or a
     server that is no cluster node fails at init_store. */
  ps_rcluster_begin_call(cl);
  if (ps_rcluster_refresh(cl, err) != PS_BOK) {
    ps_rcluster_free(cl);
    return NULL;
  }
  return cl;
}

const char *ps_rcluster_address(const ps_rcluster *cl) {
  return cl->seeds;
}

/* ---- a call ------------------------------------------------------------ */

void ps_rcluster_begin_call(ps_rcluster *cl) {
  double now = ps_rcluster_now();
  cl->started = now;
  cl->deadline = cl->cfg.timeout > 0 ? now + cl->cfg.timeout : 0;
  cl->retry_until = cl->deadline ? cl->deadline : now + RETRY_NO_TIMEOUT;
  cl->backoff = FIRST_PAUSE;
  cl->hops = 0;
  cl->cur = -1;
  cl->retried = 0;
  cl->ask_node = -1;
  cl->why[0] = '\0';
}

/* A node to ask about a slot nobody is known to serve: it answers with
   MOVED or CLUSTERDOWN. A master that answered lately first. */
static int any_node(ps_rcluster *cl) {
  double now = ps_rcluster_now();
  for (size_t s = 0; s < PS_CLUSTER_SLOTS; s++) {
    unsigned i = cl->slot[s];
    if (i != PS_CLUSTER_NONE &&
        !(cl->nodes[i].down_at > 0 && now - cl->nodes[i].down_at < 1))
      return (int)i;
  }
  for (size_t i = 0; i < cl->n; i++)
    if (!(cl->nodes[i].down_at > 0 && now - cl->nodes[i].down_at < 1))
      return (int)i;
  return 0;
}

int ps_rcluster_pick(ps_rcluster *cl, unsigned slot) {
  if (cl->stale && ps_rcluster_now() - cl->refreshed >= REFRESH_GAP) {
    /* Best effort: the MOVED already put this slot right. */
    ps_berr ignored;
    if (ps_rcluster_refresh(cl, &ignored) != PS_BOK) cl->stale = 0;
  }
  unsigned i = cl->slot[slot & (PS_CLUSTER_SLOTS - 1)];
  return i == PS_CLUSTER_NONE ? any_node(cl) : (int)i;
}

int ps_rcluster_open_node(ps_rcluster *cl, int i, ps_rconn **c,
                          ps_berr *err) {
  ps_rconn *nc = ps_rcluster_node_conn(cl, i);
  *c = nc;
  if (nc == NULL) return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  ps_rcluster_join(cl, nc);
  int code = ps_rconn_ensure(nc, err);
  if (code && nc->fd < 0) cl->nodes[i].down_at = ps_rcluster_now();
  /* AUTH's reply on a new connection is no reply of the attempt's */
  ps_rconn_reset_counts(nc);
  return code;
}

int ps_rcluster_conn(ps_rcluster *cl, unsigned slot, ps_rconn **c,
                     ps_berr *err) {
  int asking = cl->ask_node >= 0 && cl->ask_slot == slot;
  int i = asking ? cl->ask_node : ps_rcluster_pick(cl, slot);
  cl->ask_node = -1;
  cl->cur = i;
  ps_rconn *nc = ps_rcluster_node_conn(cl, i);
  cl->reused = nc && ps_rconn_owned(nc);
  int code = ps_rcluster_open_node(cl, i, c, err);
  if (code == PS_BOK) (*c)->asking = asking;
  return code;
}

/* ---- after an attempt -------------------------------------------------- */

/* Waits the backoff; 0 when the call has no time left for another try. */
static int pause_call(ps_rcluster *cl) {
  double until = cl->deadline ? cl->deadline : cl->retry_until;
  double left = until - ps_rcluster_now() - 0.01;
  if (left <= 0) return 0;
  double d = cl->backoff < left ? cl->backoff : left;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  cl->backoff = cl->backoff * 2 < MAX_PAUSE ? cl->backoff * 2 : MAX_PAUSE;
  return 1;
}

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": the slot and the node (added
   to the map's nodes when new); -1 when malformed. An empty host is the
   host of the node that answered. */
static int target(ps_rcluster *cl, const char *msg, const ps_rnode *from,
                  unsigned *slot) {
  const char *p = strchr(msg, ' ');
  char *end;
  if (p == NULL) return -1;
  long s = strtol(p + 1, &end, 10);
  if (end == p + 1 || *end != ' ' || s < 0 || s >= PS_CLUSTER_SLOTS) return -1;
  const char *addr = end + 1, *colon = strrchr(addr, ':');
  if (colon == NULL) return -1;
  long port = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end != '\0' || port < 1 || port > 65535) return -1;
  const char *h = addr;
  size_t hl = (size_t)(colon - addr);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
  if (hl == 0) {
    h = from->host;
    hl = strlen(h);
  }
  for (size_t i = 0; i < hl; i++)
    if ((unsigned char)h[i] <= ' ' || h[i] == ',' || h[i] == '?') return -1;
  *slot = (unsigned)s;
  return ps_rcluster_node(cl, h, hl, (int)port);
}

/* The call ends with the cluster's last word on it. */
static int give_up(ps_rcluster *cl, int *code, ps_berr *err,
                   const ps_rconn *c, const char *redirect) {
  double took = ps_rcluster_now() - cl->started;
  if (redirect) {
    *code = ps_berr_set(err, PS_BCONN, "redis %s: %s (still so after %.1f s "
                        "of retries)", c->addr, redirect, took);
  } else {
    size_t l = strlen(err->msg);
    snprintf(err->msg + l, sizeof err->msg - l,
             " (cluster: retried for %.1f s)", took);
  }
  return 0;
}

int ps_rcluster_again(ps_rcluster *cl, int *code, ps_berr *err) {
  if (cl->cur < 0) return 0;     /* the call failed before any node */
  ps_rnode *nd = &cl->nodes[cl->cur];
  ps_rconn *c = nd->c;
  if (c == NULL) return 0;
  int asked = c->asking;
  c->asking = 0;
  ps_rcluster_absorb(cl, c);
  int k = *code;
  if (k == PS_BOK || k == PS_BNOTFOUND || k == PS_BUNCHANGED) return 0;
  int kind = c->redirects ? ps_rconn_redirect_kind(c->redirect) : 0;
  if (kind == PS_RREDIR_NONE) {
    /* Timeouts, refusals, bad data: final. A timeout met while waiting
       out the cluster's state says what was waited for. */
    if (k == PS_BTIMEOUT && cl->why[0]) {
      size_t l = strlen(err->msg);
      snprintf(err->msg + l, sizeof err->msg - l, " (after %.1f s of retries: %s)",
               ps_rcluster_now() - cl->started, cl->why);
    }
    if (k != PS_BCONN) return 0;
    /* A connection that died while idle (the node restarted): once at
       once, as on a single server. */
    if (c->fd < 0 && cl->reused && !cl->retried) {
      cl->retried = 1;
      return 1;
    }
    if (c->fd < 0) nd->down_at = ps_rcluster_now();
    /* The node is gone or cannot serve now: the map may change (a replica
       taking over). Wait, read it again, try again. */
    if (!pause_call(cl)) return give_up(cl, code, err, c, NULL);
    ps_berr ignored;
    ps_rcluster_refresh(cl, &ignored);
    return 1;
  }
  char redirect[sizeof c->redirect];
  snprintf(redirect, sizeof redirect, "%s", c->redirect);
  snprintf(cl->why, sizeof cl->why, "%s", redirect);
  unsigned slot = 0;
  int to = -1;
  if (kind == PS_RREDIR_MOVED || kind == PS_RREDIR_ASK) {
    to = target(cl, redirect, nd, &slot);
    if (to < 0) {
      *code = ps_berr_set(err, PS_BPROTO, "redis %s: malformed redirection "
                          "(or too many nodes): %s", c->addr, redirect);
      return 0;
    }
  }
  if (kind == PS_RREDIR_MOVED) {
    /* The slot is served elsewhere now: a resharding moved it, or a
       replica took over. Others may have moved too: the map is read again
       before the next call that routes. */
    cl->slot[slot] = (uint16_t)to;
    cl->stale = 1;
    if (++cl->hops <= MAX_HOPS || pause_call(cl)) return 1;
    return give_up(cl, code, err, c, redirect);
  }
  if (kind == PS_RREDIR_ASK && !asked && c->redirects == c->replies &&
      ++cl->hops <= MAX_HOPS) {
    /* The slot is moving and none of this call's keys is left here: the
       importing node has them (or nobody does). Once, there, the map
       unchanged. */
    cl->ask_node = to;
    cl->ask_slot = slot;
    return 1;
  }
  /* TRYAGAIN, CLUSTERDOWN, or an ASK for some of an object's keys while
     others were still here (a slot half moved): the same wait as Redis'
     own TRYAGAIN, until the move is over. */
  if (pause_call(cl)) return 1;
  return give_up(cl, code, err, c, redirect);
}

void ps_rcluster_learn(ps_rcluster *cl, ps_rconn *c) {
  ps_rcluster_absorb(cl, c);
  c->asking = 0;
  if (c->redirects && ps_rconn_redirect_kind(c->redirect) == PS_RREDIR_MOVED) {
    for (size_t i = 0; i < cl->n; i++) {
      if (cl->nodes[i].c != c) continue;
      unsigned slot;
      int to = target(cl, c->redirect, &cl->nodes[i], &slot);
      if (to >= 0) {
        cl->slot[slot] = (uint16_t)to;
        cl->stale = 1;
      }
      break;
    }
  }
}
