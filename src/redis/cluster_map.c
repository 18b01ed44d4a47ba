/*
 * cluster_map.c: the slot map of a Redis Cluster: which node serves which
 * of the 16384 slots, read from CLUSTER SHARDS (Redis 7) or CLUSTER SLOTS,
 * and the slot of a key. See cluster.h.
 *
 * A topology reply is what a node says, and a node may be broken or not
 * Redis at all: it is read within the limits of ps_rlimits_small, and
 * every field is checked (slot ranges inside 0..16383, ports 1..65535,
 * host names of printable bytes); a reply that is not what Redis sends is
 * an error naming the node, never a map built from guesses. Fields this
 * code does not know are skipped, so later Redis versions still parse.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"

#define MAP_WAIT 1.0      /* seconds one node may take to give its map */

/* CRC16-CCITT (XMODEM), Redis' key hash: table for polynomial 0x1021. */
static const uint16_t crc16tab[256] = {
  0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
  0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
  0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
  0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
  0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
  0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
  0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
  0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
  0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
  0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
  0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
  0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
  0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
  0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
  0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
  0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
  0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
  0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
  0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
  0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
  0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
  0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
  0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
  0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
  0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
  0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
  0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
  0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
  0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
  0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
  0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
  0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

unsigned ps_rcluster_crc16_update(unsigned crc, const char *p, size_t len) {
  for (size_t i = 0; i < len; i++)
    crc = ((crc << 8) ^ crc16tab[((crc >> 8) ^ (unsigned char)p[i]) & 0xff]) &
          0xffff;
  return crc;
}

unsigned ps_rcluster_crc16(const char *p, size_t len) {
  return ps_rcluster_crc16_update(0, p, len);
}

unsigned ps_rcluster_key_slot(const char *key, size_t len) {
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t from = (size_t)(open - key) + 1;
    const char *close = memchr(key + from, '}', len - from);
    if (close && close > open + 1)
      return ps_rcluster_crc16(open + 1, (size_t)(close - open - 1)) &
             (PS_CLUSTER_SLOTS - 1);
  }
  return ps_rcluster_crc16(key, len) & (PS_CLUSTER_SLOTS - 1);
}

double ps_rcluster_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- nodes ------------------------------------------------------------- */

int ps_rcluster_node(ps_rcluster *cl, const char *host, size_t hostlen,
                     int port) {
  for (size_t i = 0; i < cl->n; i++)
    if (cl->nodes[i].port == port && strlen(cl->nodes[i].host) == hostlen &&
        memcmp(cl->nodes[i].host, host, hostlen) == 0)
      return (int)i;
  if (cl->n >= PS_CLUSTER_MAX_NODES) return -1;
  if (cl->n == cl->cap) {
    size_t cap = cl->cap ? cl->cap * 2 : 8;
    ps_rnode *nn = realloc(cl->nodes, cap * sizeof *nn);
    if (nn == NULL) return -1;
    cl->nodes = nn;
    cl->cap = cap;
  }
  char *h = malloc(hostlen + 1);
  if (h == NULL) return -1;
  memcpy(h, host, hostlen);
  h[hostlen] = '\0';
  cl->nodes[cl->n] = (ps_rnode){.host = h, .port = port};
  return (int)cl->n++;
}

ps_rconn *ps_rcluster_node_conn(ps_rcluster *cl, int i) {
  ps_rnode *nd = &cl->nodes[i];
  if (nd->c) return nd->c;
  ps_rconn *c = malloc(sizeof *c);
  if (c == NULL) return NULL;
  ps_bconfig b = cl->cfg;
  b.host = nd->host;
  b.port = nd->port;
  ps_berr ignored;
  if (ps_rconn_init(c, &b, &ignored) != PS_BOK) {
    free(c);
    return NULL;
  }
  c->cluster = 1;
  nd->c = c;
  return c;
}

void ps_rcluster_join(ps_rcluster *cl, ps_rconn *c) {
  ps_rconn_begin_call(c);
  /* one deadline for the whole call, whichever nodes it visits */
  if (cl->deadline) c->deadline = cl->deadline;
  ps_rconn_reset_counts(c);
  c->asking = 0;
}

void ps_rcluster_absorb(ps_rcluster *cl, ps_rconn *c) {
  /* the time c was given for the bytes it moved counts for the call */
  if (cl->deadline && c->deadline > cl->deadline) cl->deadline = c->deadline;
}

/* ---- reading a topology reply ------------------------------------------ */

typedef struct reader {
  ps_rcluster *cl;
  int asked;             /* the node that answered */
  const char *what;      /* "CLUSTER SHARDS" or "CLUSTER SLOTS" */
  uint16_t *map;
  size_t mapped;         /* slots given an owner */
  ps_berr *err;
} reader;

static int malformed(reader *r, const char *why) {
  ps_rconn *c = r->cl->nodes[r->asked].c;
  return ps_berr_set(r->err, PS_BPROTO, "redis %s: malformed %s reply: %s",
                     c->addr, r->what, why);
}

static int is_text(const ps_rvalue *v) {
  return v && (v->type == PS_R_BULK || v->type == PS_R_STATUS) && v->str;
}

static int text_is(const ps_rvalue *v, const char *s) {
  return is_text(v) && v->len == strlen(s) && memcmp(v->str, s, v->len) == 0;
}

/* An integer, sent as one or as a decimal string. */
static int as_int(const ps_rvalue *v, long long *out) {
  if (v && v->type == PS_R_INT) {
    *out = v->n;
    return 1;
  }
  if (!is_text(v) || v->len == 0 || v->len > 18) return 0;
  long long n = 0;
  for (size_t i = 0; i < v->len; i++) {
    if (v->str[i] < '0' || v->str[i] > '9') return 0;
    n = n * 10 + (v->str[i] - '0');
  }
  *out = n;
  return 1;
}

/* A host name or address as Redis reports it: printable, no spaces. */
static int good_host(const char *h, size_t len) {
  if (len == 0 || len > 255) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)h[i];
    if (ch <= ' ' || ch >= 127 || ch == ',' || ch == '/' || ch == '@')
      return 0;
  }
  return 1;
}

/*
 * The node index for an address a reply gives. An empty or missing host
 * means "the node you asked" (Redis says so when it does not know its own
 * address); "?" means unknown: *idx = -1, and its slots stay unmapped.
 */
static int reply_node(reader *r, const ps_rvalue *host, long long port,
                      int *idx) {
  *idx = -1;
  if (port < 1 || port > 65535) return malformed(r, "port out of range");
  const char *h;
  size_t hl;
  if (host == NULL || (host->type == PS_R_BULK && host->n <= 0)) {
    h = r->cl->nodes[r->asked].host;
    hl = strlen(h);
  } else if (!is_text(host)) {
    return malformed(r, "a host that is not a string");
  } else if (text_is(host, "?")) {
    return PS_BOK;
  } else {
    h = host->str;
    hl = host->len;
    if (!good_host(h, hl)) return malformed(r, "a bad host name");
  }
  *idx = ps_rcluster_node(r->cl, h, hl, (int)port);
  if (*idx < 0)
    return ps_berr_set(r->err, PS_BPROTO,
                       "redis %s: the cluster names more than %d nodes",
                       r->cl->nodes[r->asked].c->addr, PS_CLUSTER_MAX_NODES);
  return PS_BOK;
}

static int assign(reader *r, long long from, long long to, int node) {
  if (from < 0 || to < from || to >= PS_CLUSTER_SLOTS)
    return malformed(r, "slot range out of 0..16383");
  if (node < 0) return PS_BOK;
  for (long long s = from; s <= to; s++) {
    if (r->map[s] == PS_CLUSTER_NONE) r->mapped++;
    r->map[s] = (uint16_t)node;
  }
  return PS_BOK;
}

/* The value after key name in a flat key/value array, or NULL. */
static const ps_rvalue *field(const ps_rvalue *kv, const char *name) {
  for (long long i = 0; i + 1 < kv->n; i += 2)
    if (text_is(&kv->elem[i], name)) return &kv->elem[i + 1];
  return NULL;
}

static int is_kv(const ps_rvalue *v) {
  return v && v->type == PS_R_ARRAY && v->n >= 0 && v->n % 2 == 0;
}

/* How good a master is to send to: online, loading, anything else. */
static int health_rank(const ps_rvalue *node) {
  const ps_rvalue *h = field(node, "health");
  return text_is(h, "online") ? 2 : text_is(h, "loading") ? 1 : 0;
}

/*
 * CLUSTER SHARDS: one entry per shard, each a flat list of fields, among
 * them "slots" (start, end, start, end...) and "nodes" (each a flat list:
 * "endpoint", "ip", "port", "role", "health"...). A shard's slots go to
 * its master: the online one when a dead master is still listed.
 */
static int parse_shards(reader *r, const ps_rvalue *v) {
  if (v->type != PS_R_ARRAY || v->n < 0) return malformed(r, "not an array");
  for (long long s = 0; s < v->n; s++) {
    const ps_rvalue *shard = &v->elem[s];
    if (!is_kv(shard)) return malformed(r, "a shard is not a field list");
    const ps_rvalue *slots = field(shard, "slots");
    const ps_rvalue *nodes = field(shard, "nodes");
    if (!slots || slots->type != PS_R_ARRAY || slots->n < 0 || slots->n % 2)
      return malformed(r, "a shard without its slot ranges");
    if (!nodes || nodes->type != PS_R_ARRAY || nodes->n < 0)
      return malformed(r, "a shard without its nodes");
    const ps_rvalue *best = NULL;
    for (long long i = 0; i < nodes->n; i++) {
      const ps_rvalue *nd = &nodes->elem[i];
      if (!is_kv(nd)) return malformed(r, "a node is not a field list");
      if (text_is(field(nd, "role"), "master") &&
          (best == NULL || health_rank(nd) > health_rank(best)))
        best = nd;
    }
    int idx = -1;
    if (best) {
      long long port;
      if (!as_int(field(best, "port"), &port))
        return malformed(r, "a master without a port");
      const ps_rvalue *host = field(best, "endpoint");
      if (!is_text(host) || host->len == 0 || text_is(host, "?")) {
        const ps_rvalue *ip = field(best, "ip");
        if (is_text(ip) && ip->len > 0) host = ip;
      }
      int code = reply_node(r, host, port, &idx);
      if (code) return code;
    }
    for (long long i = 0; i < slots->n; i += 2) {
      long long a, b;
      if (!as_int(&slots->elem[i], &a) || !as_int(&slots->elem[i + 1], &b))
        return malformed(r, "a slot that is not a number");
      int code = assign(r, a, b, idx);
      if (code) return code;
    }
  }
  return PS_BOK;
}

/* CLUSTER SLOTS: one entry per range: start, end, then the master's
   (host, port, id...) and its replicas'. */
static int parse_slots(reader *r, const ps_rvalue *v) {
  if (v->type != PS_R_ARRAY || v->n < 0) return malformed(r, "not an array");
  for (long long s = 0; s < v->n; s++) {
    const ps_rvalue *e = &v->elem[s];
    long long a, b, port;
    const ps_rvalue *m = ps_rvalue_at(e, 2);
    if (!m || !as_int(ps_rvalue_at(e, 0), &a) || !as_int(ps_rvalue_at(e, 1), &b))
      return malformed(r, "a slot range that is not start, end, master");
    if (m->type != PS_R_ARRAY || !as_int(ps_rvalue_at(m, 1), &port))
      return malformed(r, "a master that is not host, port");
    int idx;
    int code = reply_node(r, ps_rvalue_at(m, 0), port, &idx);
    if (!code) code = assign(r, a, b, idx);
    if (code) return code;
  }
  return PS_BOK;
}

/* Sends CLUSTER <sub> and reads the whole reply. */
static int ask(ps_rconn *c, const char *sub, ps_rvalue *v, ps_berr *err) {
  ps_rcmd_begin(c, 2);
  ps_rcmd_str(c, "CLUSTER");
  ps_rcmd_str(c, sub);
  int code = ps_rconn_send(c, err);
  memset(v, 0, sizeof *v);
  return code ? code : ps_rconn_read_value(c, v, &ps_rlimits_small, err);
}

static int refused(ps_rconn *c, const char *what, const char *msg,
                   ps_berr *err) {
  if (strstr(msg, "cluster support disabled"))
    return ps_berr_set(err, PS_BCONFIG,
                       "redis %s is not a cluster node (cluster support "
                       "disabled): give host and port for a single server",
                       c->addr);
  int code = ps_rconn_error_code(msg, PS_BPROTO);
  if (!strncmp(msg, "NOAUTH", 6) || !strncmp(msg, "NOPERM", 6) ||
      !strncmp(msg, "WRONGPASS", 9) || !strncmp(msg, "ERR unknown command", 19))
    code = PS_BCONFIG;
  return ps_berr_set(err, code, "redis %s: %s: %s", c->addr, what, msg);
}

int ps_rcluster_read_map(ps_rcluster *cl, int i, ps_berr *err) {
  ps_rconn *c = ps_rcluster_node_conn(cl, i);
  if (c == NULL) return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  ps_rcluster_join(cl, c);
  /* A map is a few kilobytes: a node silent for longer than MAP_WAIT
     (stopped, swapping) is not answering, and the next one is asked
     rather than letting it take the whole call. */
  if (c->timeout > 0 && c->deadline > ps_rcluster_now() + MAP_WAIT)
    c->deadline = ps_rcluster_now() + MAP_WAIT;
  int code = ps_rconn_ensure(c, err);
  if (code) {
    if (c->fd < 0) cl->nodes[i].down_at = ps_rcluster_now();
    return code;
  }
  reader r = {cl, i, "CLUSTER SHARDS", NULL, 0, err};
  ps_rvalue v;
  code = ask(c, "SHARDS", &v, err);
  int shards = 1;
  if (!code && v.type == PS_R_ERROR && strstr(v.str, "nknown subcommand")) {
    ps_rvalue_free(&v);          /* before Redis 7 */
    r.what = "CLUSTER SLOTS";
    shards = 0;
    code = ask(c, "SLOTS", &v, err);
  }
  if (!code && v.type == PS_R_ERROR) code = refused(c, r.what, v.str, err);
  if (!code) {
    r.map = malloc(sizeof cl->slot);
    if (r.map == NULL) code = ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  }
  if (!code) {
    memset(r.map, 0xff, sizeof cl->slot);
    code = shards ? parse_shards(&r, &v) : parse_slots(&r, &v);
  }
  /* A node that serves nothing (not yet part of a cluster, or reset)
     must not wipe the map: its answer is no answer. */
  if (!code && r.mapped == 0)
    code = ps_berr_set(err, PS_BCONN,
                       "redis %s: the cluster serves no slot (was it "
                       "created: redis-cli --cluster create?)", c->addr);
  if (!code) {
    memcpy(cl->slot, r.map, sizeof cl->slot);
    cl->refreshed = ps_rcluster_now();
    cl->stale = 0;
  }
  free(r.map);
  ps_rvalue_free(&v);
  ps_rconn_settle(c);
  ps_rcluster_absorb(cl, c);
  return code;
}

/* How telling an error is: a refusal says more than "no answer". */
static int rank(int code) {
  return code == PS_BCONFIG ? 3 : code == PS_BPROTO ? 2 : 1;
}

int ps_rcluster_refresh(ps_rcluster *cl, ps_berr *err) {
  double now = ps_rcluster_now();
  char *owns = calloc(cl->n ? cl->n : 1, 1);
  if (owns == NULL) return ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
  for (size_t s = 0; s < PS_CLUSTER_SLOTS; s++)
    if (cl->slot[s] != PS_CLUSTER_NONE && cl->slot[s] < cl->n)
      owns[cl->slot[s]] = 1;
  int best = 0;
  size_t known = cl->n;   /* nodes a reply adds are asked next time */
  for (int pass = 0; pass < 3; pass++) {
    for (size_t i = 0; i < known; i++) {
      int down = cl->nodes[i].down_at > 0 && now - cl->nodes[i].down_at < 1;
      int want = pass == 0 ? owns[i] && !down : pass == 1 ? !owns[i] && !down
                                                          : down;
      if (!want) continue;
      ps_berr e;
      int code = ps_rcluster_read_map(cl, (int)i, &e);
      if (code == PS_BOK) {
        free(owns);
        return PS_BOK;
      }
      if (best == 0 || rank(code) > rank(best)) {
        best = code;
        *err = e;
      }
    }
  }
  free(owns);
  return best ? best : ps_berr_set(err, PS_BCONN, "redis cluster: no node");
}
