/*
 * backend_redis.c: the Redis byte backend.
 *
 * Layout under prefix..key (a plain Redis string, so one GET reads it):
 *   'P' version[16] payload                 objects up to the chunk size
 *   'C' version[16] "<total> <n> <chunk>"   larger ones; the payload is in
 *        prefix..key..":chunk:<hex version>:<i>", i = 0..n-1
 * Keeping the version in the value makes version and bytes one atomic
 * unit. A get with a version to compare runs a small Lua script that
 * answers 1 (unchanged) after reading 17 bytes, and only otherwise returns
 * the value. Chunk keys carry the version so that a reader never mixes
 * chunks of two writes; put and evict remove the chunks of the value they
 * replace.
 *
 * Versions are 16 random bytes per put: equal versions mean the same put,
 * hence equal bytes. Chunked values: redis_chunks.c; the connection and
 * the RESP reader/writer: redis_conn.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "bigalloc.h"
#include "redis_store.h"

static const char HAVE_SCRIPT[] =
  "local h = redis.call('GETRANGE', KEYS[1], 0, 16)\n"
  "if h == '' then return false end\n"
  "if string.sub(h, 2) == ARGV[1] then return 1 end\n"
  "return redis.call('GET', KEYS[1])\n";

static int ping(ps_redis *x, ps_berr *err) {
  ps_rcmd_begin(x->c, 1);
  ps_rcmd_str(x->c, "PING");
  int code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rreply r;
  code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR)
    code = ps_berr_set(err, ps_rconn_error_code(r.str, PS_BCONFIG),
                      "redis %s: %s", x->c->addr, r.str);
  ps_rreply_free(&r);
  return code;
}

static int settled(ps_redis *x, int code);
static void redis_close(void *ctx);

static void *redis_open(const ps_bconfig *cfg, ps_berr *err) {
  /* An empty host or path is a mistake, not "the default": it would
   * quietly reach 127.0.0.1:6379 (configs may also come from elsewhere). */
  if ((cfg->host && !*cfg->host) || (cfg->path && !*cfg->path)) {
    ps_berr_set(err, PS_BCONFIG, "redis: option '%s' must not be empty",
                cfg->path && !*cfg->path ? "path" : "host");
    return NULL;
  }
  ps_redis *x = calloc(1, sizeof *x);
  if (x == NULL) {
    ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    return NULL;
  }
  x->one.fd = -1;
  x->prefix = strdup(cfg->prefix ? cfg->prefix : "");
  if (x->prefix == NULL) {
    free(x);
    ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    return NULL;
  }
  x->plen = strlen(x->prefix);
  x->chunk = DEFAULT_CHUNK;
  x->plain_max = PLAIN_MAX;
  /* Internal: lets specs and benches exercise chunking with small sizes. */
  const char *cs = getenv("PROXYSTORE_REDIS_CHUNK_SIZE");
  if (cs && *cs) {
    char *end;
    unsigned long long v = strtoull(cs, &end, 10);
    if (*end == '\0' && v > 0 && v <= MAX_CHUNK)
      x->chunk = x->plain_max = (size_t)v;
  }
  if (cfg->cluster && *cfg->cluster) {
    /* Reads the slot map: no reachable node, a bad password or a server
       that is no cluster node fails here. */
    x->cl = ps_rcluster_open(cfg, err);
    if (x->cl == NULL) {
      redis_close(x);
      return NULL;
    }
    return x;
  }
  if (ps_rconn_init(&x->one, cfg, err) != PS_BOK) {
    x->one.fd = -1;
    redis_close(x);
    return NULL;
  }
  x->c = &x->one;
  /* Connect and PING now, so that a bad address, a missing password or a
     bad db fails at init_store rather than at first use. */
  ps_rconn_begin_call(x->c);
  if (ps_rconn_ensure(x->c, err) != PS_BOK ||
      settled(x, ping(x, err)) != PS_BOK) {
    redis_close(x);
    return NULL;
  }
  return x;
}

static void redis_close(void *ctx) {
  ps_redis *x = ctx;
  if (x == NULL) return;
  if (x->c == &x->one) ps_rconn_free(&x->one);
  ps_rcluster_free(x->cl);
  free(x->prefix);
  free(x);
}

static const char *redis_address(void *ctx) {
  ps_redis *x = ctx;
  return x->cl ? ps_rcluster_address(x->cl) : x->one.addr;
}

/* ---- routing ------------------------------------------------------------ */

/* Byte i of prefix{key} (its '}' is at plen + len + 1). */
static char tagged_at(const ps_redis *x, ps_key k, size_t i) {
  if (i < x->plen) return x->prefix[i];
  if (i == x->plen) return '{';
  return i <= x->plen + k.len ? k.data[i - x->plen - 1] : '}';
}

/*
 * The slot of every key of object k. In a cluster they are named
 * prefix{key}suffix, and Redis hashes what lies between the first '{' of
 * the name and the next '}': that is within prefix{key}, the same for the
 * object's main key, its chunks and any other key made from it, so one
 * object is one slot and the commands that touch several of its keys
 * stay legal. A name where that span is empty (a key starting with '}',
 * a prefix holding "{}") would hash whole, suffix included: refused.
 */
static int key_slot(ps_redis *x, ps_key k, unsigned *slot, ps_berr *err) {
  const char *p = memchr(x->prefix, '{', x->plen);
  if (p == NULL) {
    /* The common case: the span is the key up to its first '}'. */
    const char *e = memchr(k.data, '}', k.len);
    size_t n = e ? (size_t)(e - k.data) : k.len;
    if (n > 0) {
      *slot = ps_rcluster_crc16(k.data, n) & (PS_CLUSTER_SLOTS - 1);
      return PS_BOK;
    }
  }
  size_t open = p ? (size_t)(p - x->prefix) : x->plen;
  size_t close = open + 1;
  while (tagged_at(x, k, close) != '}') close++;
  if (close == open + 1) {
    char kb[80];
    return ps_berr_set(err, PS_BCONFIG,
                       "redis cluster: key '%s' (prefix '%s') cannot be "
                       "stored: Redis would hash each of its keys apart (a "
                       "key starting with '}', or a prefix holding \"{}\")",
                       ps_redis_keyname(k, kb, sizeof kb), x->prefix);
  }
  /* the CRC of bytes open+1 .. close-1, over prefix, '{' and key */
  const char *seg[3] = {x->prefix, "{", k.data};
  size_t len[3] = {x->plen, 1, k.len}, base = 0;
  unsigned crc = 0;
  for (int i = 0; i < 3; base += len[i], i++) {
    size_t lo = open + 1 > base ? open + 1 : base;
    size_t hi = close < base + len[i] ? close : base + len[i];
    if (lo < hi) crc = ps_rcluster_crc16_update(crc, seg[i] + (lo - base), hi - lo);
  }
  *slot = crc & (PS_CLUSTER_SLOTS - 1);
  return PS_BOK;
}

int ps_redis_route(ps_redis *x, ps_key k, ps_berr *err) {
  if (x->cl == NULL) return ps_rconn_ensure(x->c, err);
  unsigned slot;
  int code = key_slot(x, k, &slot, err);
  return code ? code : ps_rcluster_conn(x->cl, slot, &x->c, err);
}

int ps_redis_slot(ps_redis *x, ps_key k, unsigned *slot, ps_berr *err) {
  return key_slot(x, k, slot, err);
}

/* ---- keys --------------------------------------------------------------- */

void ps_redis_arg_key(ps_redis *x, ps_key k, const char *suffix) {
  size_t sl = suffix ? strlen(suffix) : 0;
  int tag = x->cl != NULL;     /* a cluster: prefix{key}suffix, see key_slot */
  ps_rcmd_bulk_begin(x->c, x->plen + k.len + sl + (tag ? 2 : 0));
  ps_rcmd_bulk_part(x->c, x->prefix, x->plen);
  if (tag) ps_rcmd_bulk_part(x->c, "{", 1);
  ps_rcmd_bulk_part(x->c, k.data, k.len);
  if (tag) ps_rcmd_bulk_part(x->c, "}", 1);
  if (sl) ps_rcmd_bulk_part(x->c, suffix, sl);
  ps_rcmd_bulk_end(x->c);
}

/* Short printable form of a key for messages. */
const char *ps_redis_keyname(ps_key k, char *buf, size_t n) {
  size_t l = k.len < n - 4 ? k.len : n - 4;
  for (size_t i = 0; i < l; i++) {
    unsigned char ch = (unsigned char)k.data[i];
    buf[i] = ch >= 32 && ch < 127 ? (char)ch : '?';
  }
  strcpy(buf + l, l < k.len ? "..." : "");
  return buf;
}

int ps_redis_reply_error(ps_redis *x, ps_key k, const ps_rreply *r, ps_berr *err) {
  char kb[80];
  if (ps_rconn_error_code(r->str, 0) == PS_BCONN)
    return ps_berr_set(err, PS_BCONN, "redis %s: %s", x->c->addr, r->str);
  if (!strncmp(r->str, "NOAUTH", 6) || !strncmp(r->str, "WRONGPASS", 9) ||
      !strncmp(r->str, "NOPERM", 6))
    return ps_berr_set(err, PS_BCONFIG, "redis %s: %s", x->c->addr, r->str);
  if (strstr(r->str, "WRONGTYPE"))
    return ps_berr_set(err, PS_BPROTO,
                       "redis %s: key '%s%s' holds a Redis value that is not "
                       "a string (not a proxystore object): %s",
                       x->c->addr, x->prefix, ps_redis_keyname(k, kb, sizeof kb),
                       r->str);
  return ps_berr_set(err, PS_BPROTO, "redis %s: key '%s%s': %s", x->c->addr,
                     x->prefix, ps_redis_keyname(k, kb, sizeof kb), r->str);
}

int ps_redis_new_version(ps_version *v) {
  size_t got = 0;
  while (got < PS_VERSION_LEN) {
    ssize_t n = getrandom(v->bytes + got, PS_VERSION_LEN - got, 0);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return 0;
}

void ps_redis_queue_old_header(ps_redis *x, ps_key k) {
  ps_redis_queue_range(x, k, 0, OLDHDR_MAX - 1);
}

/* Reads the GETRANGE reply of a value being replaced; notes chunks. */
int ps_redis_read_old_header(ps_redis *x, ps_rchunks *old, int *had_chunks,
                           ps_berr *err) {
  ps_rreply r;
  int code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  /* An error here (WRONGTYPE) is fine: SET replaces any type. */
  *had_chunks = r.type == PS_R_BULK && r.str &&
                ps_redis_parse_chunks(r.str, r.len, old) == 0;
  ps_rreply_free(&r);
  return PS_BOK;
}

/* The replies of a plain put queued by queue_put_parts: the old header's
 * (unless k is fresh: none was asked for), then the SET's. */
int ps_redis_read_put(ps_redis *x, ps_key k, ps_rchunks *old, int *had,
                      ps_berr *err) {
  *had = 0;
  int code = k.fresh ? PS_BOK : ps_redis_read_old_header(x, old, had, err);
  return code ? code : ps_redis_expect_ok(x, k, err);
}

int ps_redis_expect_ok(ps_redis *x, ps_key k, ps_berr *err) {
  ps_rreply r;
  int code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR) code = ps_redis_reply_error(x, k, &r, err);
  else if (r.type != PS_R_STATUS)
    code = ps_rconn_fail(x->c, err, PS_BPROTO, "unexpected reply to SET");
  ps_rreply_free(&r);
  return code;
}

void ps_redis_keep_first(int *first, ps_berr *err, int code,
                         const ps_berr *e) {
  if (code != PS_BOK && *first == PS_BOK) {
    *first = code;
    *err = *e;
  }
}

/* ---- put ---------------------------------------------------------------- */

/* Queues GETRANGE of the old header (not for a fresh key: see
 * put_plain_parts) and the SET of hdr then the parts, laid end to end (len
 * bytes in all), written from where they lie. ps_redis_read_put reads
 * their replies. */
static void queue_put_parts(ps_redis *x, ps_key k, const ps_part *parts,
                            size_t n, size_t len, const char *hdr) {
  if (!k.fresh) ps_redis_queue_old_header(x, k);
  ps_rcmd_begin(x->c, 3);
  ps_rcmd_str(x->c, "SET");
  ps_redis_arg_key(x, k, NULL);
  ps_rcmd_bulk_begin(x->c, HDR_LEN + len);
  ps_rcmd_bulk_part(x->c, hdr, HDR_LEN);
  for (size_t i = 0; i < n; i++)
    ps_rcmd_bulk_part(x->c, parts[i].data, parts[i].len);
  ps_rcmd_bulk_end(x->c);
}

static void queue_put_plain(ps_redis *x, ps_key k, const char *data, size_t len,
                            char *hdr) {
  ps_part one = {data, len};
  queue_put_parts(x, k, &one, 1, len, hdr);
}

/* Sends a put of parts that fits one key, under version v, and reads its
 * replies; the chunks of an old chunked value are deleted. A fresh key has
 * no old value to look at: an earlier attempt of this put, if any, wrote
 * a plain value too (the length decides), which leaves no chunks behind.
 * Skipping that read is worth it: its reply comes back while the SET's
 * bytes are still going out, a wakeup of its own (1 MiB stream items, each
 * a put of a fresh key, went 5-10% faster in paired runs). */
static int put_plain_parts(ps_redis *x, ps_key k, const ps_part *parts,
                           size_t n, size_t len, const ps_version *v,
                           ps_berr *err) {
  char hdr[HDR_LEN];
  hdr[0] = 'P';
  memcpy(hdr + 1, v->bytes, PS_VERSION_LEN);
  queue_put_parts(x, k, parts, n, len, hdr);
  int code = ps_rconn_send(x->c, err);
  ps_rchunks old;
  int had = 0;
  if (!code) code = ps_redis_read_put(x, k, &old, &had, err);
  if (!code && had) code = ps_redis_del_chunks(x, k, &old, err);
  return code;
}

/*
 * put of parts laid end to end: the SET's value is written from the parts
 * where they lie (a large Lua string goes to the socket from the string
 * itself); a value over the chunk size goes in chunks, sliced from the
 * parts the same way.
 */
static int put_once(ps_redis *x, ps_key k, const ps_part *parts, size_t n,
                    size_t len, ps_version *vout, ps_berr *err) {
  ps_version v;
  if (ps_redis_new_version(&v) != 0)
    return ps_berr_set(err, PS_BIO, "redis: getrandom failed");
  int code = ps_redis_route(x, k, err);
  if (code) return code;
  if (len > x->plain_max)
    code = ps_redis_put_chunked(x, k, parts, n, len, &v, NULL, err);
  else
    code = put_plain_parts(x, k, parts, n, len, &v, err);
  if (!code && vout) *vout = v;
  return code;
}

/* ---- get ---------------------------------------------------------------- */

/*
 * Reads the bulk body of a value of n bytes (its head already read).
 * Plain: the payload goes straight into out. Chunked: *ci is filled and
 * *chunked set; the caller fetches the chunks.
 */
int ps_redis_read_value(ps_redis *x, ps_key k, size_t n, ps_blob *out,
                        ps_version *vout, ps_rchunks *ci, int *chunked,
                        ps_berr *err) {
  char hdr[HDR_LEN + OLDHDR_MAX];
  char kb[80];
  *chunked = 0;
  if (n < HDR_LEN) {
    ps_rconn_drop(x->c);        /* unread body: resynchronise by reconnect */
    return ps_berr_set(err, PS_BPROTO,
                       "redis %s: key '%s%s' does not hold a proxystore "
                       "object", x->c->addr, x->prefix,
                       ps_redis_keyname(k, kb, sizeof kb));
  }
  int code = ps_rconn_read_body(x->c, hdr, HDR_LEN, err);
  if (code) return code;
  if (hdr[0] == 'P') {
    if (ps_blob_alloc_object(out, n - HDR_LEN) != 0)
      return ps_rconn_fail(x->c, err, PS_BNOMEM,
                           "out of memory for a %zu-byte value", n);
    code = ps_rconn_read_body(x->c, out->data, n - HDR_LEN, err);
    if (!code) code = ps_rconn_read_crlf(x->c, err);
    if (code) {
      ps_blob_release(out);
      return code;
    }
    if (vout) memcpy(vout->bytes, hdr + 1, PS_VERSION_LEN);
    return PS_BOK;
  }
  if (hdr[0] == 'C' && n - HDR_LEN < OLDHDR_MAX) {
    code = ps_rconn_read_body(x->c, hdr + HDR_LEN, n - HDR_LEN, err);
    if (!code) code = ps_rconn_read_crlf(x->c, err);
    if (code) return code;
    if (ps_redis_parse_chunks(hdr, n, ci) == 0) {
      *chunked = 1;
      return PS_BOK;
    }
    return ps_berr_set(err, PS_BPROTO,
                       "redis %s: key '%s%s' holds a damaged chunk header "
                       "(not written by proxystore?)", x->c->addr, x->prefix,
                       ps_redis_keyname(k, kb, sizeof kb));
  }
  ps_rconn_drop(x->c);        /* its body is unread */
  return ps_berr_set(err, PS_BPROTO,
                     "redis %s: key '%s%s' does not hold a proxystore object",
                     x->c->addr, x->prefix, ps_redis_keyname(k, kb, sizeof kb));
}

/* Reads one GET-like reply for key k into out. */
int ps_redis_read_get_reply(ps_redis *x, ps_key k, const ps_version *have,
                          ps_blob *out, ps_version *vout, ps_rchunks *ci,
                          int *chunked, ps_berr *err) {
  ps_rreply r;
  *chunked = 0;
  int code = ps_rconn_read_head(x->c, &r, err);
  if (code) return code;
  switch (r.type) {
  case PS_R_ERROR:
    code = ps_redis_reply_error(x, k, &r, err);
    ps_rreply_free(&r);
    return code;
  case PS_R_INT:
    if (have && r.n == 1) {
      if (vout) *vout = *have;
      return PS_BUNCHANGED;
    }
    break;
  case PS_R_BULK:
    if (r.n < 0) return ps_berr_set(err, PS_BNOTFOUND, "not found");
    return ps_redis_read_value(x, k, (size_t)r.n, out, vout, ci, chunked,
                               err);
  default:
    break;
  }
  ps_rreply_free(&r);
  return ps_rconn_fail(x->c, err, PS_BPROTO, "unexpected reply to GET");
}

static void queue_get(ps_redis *x, ps_key k, const ps_version *have) {
  if (have) {
    ps_rcmd_begin(x->c, 5);
    ps_rcmd_str(x->c, "EVAL");
    ps_rcmd_str(x->c, HAVE_SCRIPT);
    ps_rcmd_str(x->c, "1");
    ps_redis_arg_key(x, k, NULL);
    ps_rcmd_arg(x->c, have->bytes, PS_VERSION_LEN);
  } else {
    ps_rcmd_begin(x->c, 2);
    ps_rcmd_str(x->c, "GET");
    ps_redis_arg_key(x, k, NULL);
  }
}

static int get_once(void *ctx, ps_key k, const ps_version *have,
                     ps_blob *out, ps_version *vout, ps_berr *err) {
  ps_redis *x = ctx;
  int code = ps_redis_route(x, k, err);
  if (code) return code;
  if (have) queue_get(x, k, have);
  else ps_redis_queue_get_first(x, k);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rchunks ci;
  int chunked;
  code = have ? ps_redis_read_get_reply(x, k, have, out, vout, &ci, &chunked,
                                        err)
              : ps_redis_read_get_first(x, k, out, vout, &ci, &chunked, err);
  if (code == PS_BOK && chunked) code = ps_redis_get_chunks(x, k, &ci, out, vout, err);
  return code;
}

/* ---- take: get, then a delete nobody waits for ------------------------- */

/*
 * The resolve of a single-use proxy: GET, and once the whole value is
 * here, its DEL (with the wake-up list's) is sent and not waited for: its
 * reply is read and dropped before the next reply of this connection. So
 * the object is deleted only after this process holds it (a connection
 * lost or a timeout while the value is in flight leaves it in the store,
 * for a retry), at no round trip of its own. A chunked value is evicted
 * after its chunks are read, as evict does; a value that is not
 * proxystore's fails the GET and is never deleted.
 */
static int take_once(ps_redis *x, ps_key k, ps_blob *out, ps_version *vout,
                     int *evict_after, ps_berr *err) {
  *evict_after = 0;
  int code = ps_redis_route(x, k, err);
  if (code) return code;
  ps_redis_queue_get_first(x, k);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rchunks ci;
  int chunked = 0;
  code = ps_redis_read_get_first(x, k, out, vout, &ci, &chunked, err);
  if (code) return code;
  if (chunked) {
    code = ps_redis_get_chunks(x, k, &ci, out, vout, err);
    if (code == PS_BOK) *evict_after = 1;
    return code;
  }
  ps_rcmd_begin(x->c, 3);
  ps_rcmd_str(x->c, "DEL");
  ps_redis_arg_key(x, k, NULL);
  ps_redis_arg_key(x, k, PS_REDIS_WAKE);
  ps_berr e;
  if (ps_rconn_send(x->c, &e) == PS_BOK)
    ps_rconn_discard_reply(x->c);
  else
    *evict_after = 1;     /* the value is here; evict reconnects */
  return PS_BOK;
}

/* ---- exists, evict ------------------------------------------------------ */

static int exists_once(void *ctx, ps_key k, int *found, ps_berr *err) {
  ps_redis *x = ctx;
  int code = ps_redis_route(x, k, err);
  if (code) return code;
  ps_rcmd_begin(x->c, 2);
  ps_rcmd_str(x->c, "EXISTS");
  ps_redis_arg_key(x, k, NULL);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rreply r;
  code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_INT) *found = r.n > 0;
  else if (r.type == PS_R_ERROR) code = ps_redis_reply_error(x, k, &r, err);
  else code = ps_rconn_fail(x->c, err, PS_BPROTO, "unexpected reply");
  ps_rreply_free(&r);
  return code;
}

/* *wake_elsewhere: the wake-up list's DEL is left for a step of its own
   (ps_redis_read_wake). */
static int evict_once(void *ctx, ps_key k, int *wake_elsewhere,
                      ps_berr *err) {
  ps_redis *x = ctx;
  *wake_elsewhere = 0;
  int code = ps_redis_route(x, k, err);
  if (code) return code;
  ps_redis_queue_old_header(x, k);
  ps_rcmd_begin(x->c, 2);
  ps_rcmd_str(x->c, "DEL");
  ps_redis_arg_key(x, k, NULL);
  ps_redis_queue_wake(x, k, -1);   /* a future's wake-up list */
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  ps_rchunks old;
  int had = 0;
  code = ps_redis_read_old_header(x, &old, &had, err);
  if (code) return code;
  ps_rreply r;
  code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR) code = ps_redis_reply_error(x, k, &r, err);
  ps_rreply_free(&r);
  ps_berr e;
  int c = ps_redis_read_wake(x, k, wake_elsewhere, &e);
  ps_redis_keep_first(&code, err, c, &e);
  if (!code && had) code = ps_redis_del_chunks(x, k, &old, err);
  return code;
}

/* ---- batches ------------------------------------------------------------ */

static int put_batch_once(void *ctx, size_t n, const ps_key *keys,
                           const ps_blob *values, ps_version *vout,
                           ps_berr *err) {
  ps_redis *x = ctx;
  if (n == 0) return PS_BOK;
  char (*hdrs)[HDR_LEN] = malloc(n * sizeof *hdrs);
  ps_rchunks *old = malloc(n * sizeof *old);
  char *had = calloc(n, 1);
  ps_version *vs = malloc(n * sizeof *vs);
  int code = PS_BOK;
  if (!hdrs || !old || !had || !vs) {
    code = ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++)
    if (ps_redis_new_version(&vs[i]) != 0) {
      code = ps_berr_set(err, PS_BIO, "redis: getrandom failed");
      goto done;
    }
  code = ps_rconn_ensure(x->c, err);
  if (code) goto done;
  /* Small values: one pipeline. Values over the chunk size: one by one. */
  size_t queued = 0;
  for (size_t i = 0; i < n; i++) {
    if (values[i].len > x->plain_max) continue;
    hdrs[i][0] = 'P';
    memcpy(hdrs[i] + 1, vs[i].bytes, PS_VERSION_LEN);
    queue_put_plain(x, keys[i], values[i].data, values[i].len, hdrs[i]);
    queued++;
  }
  if (queued) code = ps_rconn_send(x->c, err);
  if (code) goto done;
  /* Every reply is read while the connection lives, also after an error
     reply (NOPERM on one key): the first error is the batch's. */
  for (size_t i = 0; i < n && x->c->fd >= 0; i++) {
    if (values[i].len > x->plain_max) continue;
    ps_berr e;
    int h;
    int c = ps_redis_read_put(x, keys[i], &old[i], &h, &e);
    had[i] = (char)(c == PS_BOK && h);   /* replaced: its chunks go below */
    ps_redis_keep_first(&code, err, c, &e);
  }
  /* The chunks of values that were replaced are deleted even when another
     key failed; large values are written only while all went well. */
  for (size_t i = 0; i < n && x->c->fd >= 0; i++) {
    ps_berr e;
    int c = PS_BOK;
    if (values[i].len > x->plain_max) {
      if (code) continue;
      ps_part one = {values[i].data, values[i].len};
      c = ps_redis_put_chunked(x, keys[i], &one, 1, values[i].len, &vs[i],
                               NULL, &e);
    } else if (had[i]) {
      c = ps_redis_del_chunks(x, keys[i], &old[i], &e);
    }
    ps_redis_keep_first(&code, err, c, &e);
  }
  if (!code && vout) memcpy(vout, vs, n * sizeof *vs);
done:
  free(hdrs);
  free(old);
  free(had);
  free(vs);
  return code;
}

static int get_batch_once(void *ctx, size_t n, const ps_key *keys,
                           ps_blob *out, ps_version *vout, int *codes,
                           ps_berr *err) {
  ps_redis *x = ctx;
  if (n == 0) return PS_BOK;
  ps_rchunks *ci = malloc(n * sizeof *ci);
  char *chunked = calloc(n, 1);
  int code = PS_BOK;
  for (size_t i = 0; i < n; i++) {
    out[i] = (ps_blob){0};
    codes[i] = PS_BNOTFOUND;
  }
  if (!ci || !chunked) {
    code = ps_berr_set(err, PS_BNOMEM, "redis: out of memory");
    goto done;
  }
  code = ps_rconn_ensure(x->c, err);
  if (code) goto done;
  for (size_t i = 0; i < n; i++) queue_get(x, keys[i], NULL);
  code = ps_rconn_send(x->c, err);
  if (code) goto done;
  /* Every reply is read while the connection lives, also after an error
     reply: the first error is the batch's. */
  for (size_t i = 0; i < n && x->c->fd >= 0; i++) {
    int ch = 0;
    ps_berr e;
    int c = ps_redis_read_get_reply(x, keys[i], NULL, &out[i],
                                    vout ? &vout[i] : NULL, &ci[i], &ch, &e);
    chunked[i] = (char)ch;
    if (c == PS_BOK || c == PS_BNOTFOUND) codes[i] = c;
    else ps_redis_keep_first(&code, err, c, &e);
  }
  for (size_t i = 0; i < n && !code; i++) {
    if (!chunked[i]) continue;
    code = ps_redis_get_chunks(x, keys[i], &ci[i], &out[i],
                               vout ? &vout[i] : NULL, err);
    /* gone while read (evicted, its lease ended): missing, as a key
       missing from the start is */
    if (code == PS_BNOTFOUND) {
      codes[i] = PS_BNOTFOUND;
      code = PS_BOK;
    }
  }
done:
  if (code)
    for (size_t i = 0; i < n; i++) ps_blob_release(&out[i]);
  free(ci);
  free(chunked);
  return code;
}

/*
 * Every call has one set of time bounds (ps_rconn_begin_call; on a
 * cluster, ps_rcluster_begin_call, shared by every node it visits) and
 * ends settled: no reply left unread on a connection that is kept
 * (ps_rconn_settle closes it otherwise).
 *
 * A connection that worked before may have died since (server restarted):
 * its first use fails with PS_BCONN and closes it. Such a call is repeated
 * once on a new connection, so the first call after Redis is back
 * succeeds; every operation here is safe to repeat. A PS_BCONN that left
 * the connection open (a LOADING or BUSY reply: the server is there but
 * cannot serve now) is not repeated: the same socket would answer the same.
 * On a cluster, ps_rcluster_again decides instead: redirections, and
 * nodes that cannot serve while the cluster fails over (cluster.h).
 */
static int settled(ps_redis *x, int code) {
  if (x->c) ps_rconn_settle(x->c);
  return code;
}

void ps_redis_begin_call(ps_redis *x) {
  if (x->cl) {
    ps_rcluster_begin_call(x->cl);
    return;
  }
  ps_rconn_begin_call(x->c);
  x->reused = ps_rconn_owned(x->c);
  x->retried = 0;
}

int ps_redis_again(ps_redis *x, int *code, ps_berr *err) {
  if (x->cl) return ps_rcluster_again(x->cl, code, err);
  if (*code != PS_BCONN || !x->reused || x->c->fd >= 0 || x->retried)
    return 0;
  x->retried = 1;
  return 1;
}

/* One call: attempts of op until ps_redis_again says it is done. */
#define RETRY(op)                                                \
  do {                                                           \
    ps_redis *x_ = ctx;                                          \
    int code_;                                                   \
    ps_redis_begin_call(x_);                                     \
    do code_ = settled(x_, (op));                                \
    while (ps_redis_again(x_, &code_, err));                     \
    return code_;                                                \
  } while (0)

int ps_redis_call(void *ctx, ps_redis_op op, void *arg, ps_berr *err) {
  RETRY(op(x_, arg, err));
}

static int redis_put(void *ctx, ps_key k, const char *data, size_t len,
                     ps_version *vout, ps_berr *err) {
  ps_part one = {data, len};
  RETRY(put_once(x_, k, &one, 1, len, vout, err));
}

static int redis_put_parts(void *ctx, ps_key k, const ps_part *parts,
                           size_t n, ps_version *vout, ps_berr *err) {
  RETRY(put_once(x_, k, parts, n, ps_parts_len(parts, n), vout, err));
}

static int redis_get(void *ctx, ps_key k, const ps_version *have,
                     ps_blob *out, ps_version *vout, ps_berr *err) {
  RETRY(get_once(ctx, k, have, out, vout, err));
}

static int redis_exists(void *ctx, ps_key k, int *found, ps_berr *err) {
  RETRY(exists_once(ctx, k, found, err));
}

static int redis_evict(void *ctx, ps_key k, ps_berr *err) {
  ps_redis *x = ctx;
  int wake_elsewhere = 0, code;
  ps_redis_begin_call(x);
  do code = settled(x, evict_once(x, k, &wake_elsewhere, err));
  while (ps_redis_again(x, &code, err));
  if (code == PS_BOK && wake_elsewhere)
    code = ps_redis_wake_retried(x, k, -1, err);
  return code;
}

static int redis_take(void *ctx, ps_key k, ps_blob *out, ps_version *vout,
                      ps_berr *err) {
  ps_redis *x = ctx;
  int evict_after = 1, code;
  if (x->cl) {
    /* a cluster's calls follow redirections op by op: get, then evict */
    code = redis_get(ctx, k, NULL, out, vout, err);
  } else {
    ps_redis_begin_call(x);
    do code = settled(x, take_once(x, k, out, vout, &evict_after, err));
    while (ps_redis_again(x, &code, err));
  }
  if (code == PS_BOK && evict_after) {
    code = redis_evict(ctx, k, err);
    if (code) ps_blob_release(out);
  }
  return code;
}

static int redis_put_batch(void *ctx, size_t n, const ps_key *keys,
                           const ps_blob *values, ps_version *vout,
                           ps_berr *err) {
  if (((ps_redis *)ctx)->cl)
    return ps_redis_cluster_put_batch(ctx, n, keys, values, vout, err);
  RETRY(put_batch_once(ctx, n, keys, values, vout, err));
}

static int redis_get_batch(void *ctx, size_t n, const ps_key *keys,
                           ps_blob *out, ps_version *vout, int *codes,
                           ps_berr *err) {
  if (((ps_redis *)ctx)->cl)
    return ps_redis_cluster_get_batch(ctx, n, keys, out, vout, codes, err);
  RETRY(get_batch_once(ctx, n, keys, out, vout, codes, err));
}

/* ---- for the cluster's batches (redis_cluster_batch.c) ------------------ */

void ps_redis_queue_get(ps_redis *x, ps_key k) {
  queue_get(x, k, NULL);
}

int ps_redis_read_get(ps_redis *x, ps_key k, ps_blob *out, ps_version *vout,
                      int *chunked, ps_berr *err) {
  ps_rchunks ci;
  int code = ps_redis_read_get_reply(x, k, NULL, out, vout, &ci, chunked,
                                     err);
  /* a chunked value is fetched again, alone: ps_redis_get_retried */
  return code;
}

void ps_redis_queue_put(ps_redis *x, ps_key k, const char *data, size_t len,
                        char *hdr) {
  queue_put_plain(x, k, data, len, hdr);
}

/* Attempts of op within the call already begun, until ps_redis_again
   says it is done. */
#define ATTEMPTS(x, op)                                          \
  do {                                                           \
    int code_;                                                   \
    do code_ = settled((x), (op));                               \
    while (ps_redis_again((x), &code_, err));                    \
    return code_;                                                \
  } while (0)

int ps_redis_attempts(ps_redis *x, ps_redis_op op, void *arg, ps_berr *err) {
  ATTEMPTS(x, op(x, arg, err));
}

int ps_redis_get_retried(ps_redis *x, ps_key k, ps_blob *out,
                         ps_version *vout, ps_berr *err) {
  ATTEMPTS(x, get_once(x, k, NULL, out, vout, err));
}

int ps_redis_put_retried(ps_redis *x, ps_key k, const char *data, size_t len,
                         ps_version *vout, ps_berr *err) {
  ps_part one = {data, len};
  ATTEMPTS(x, put_once(x, k, &one, 1, len, vout, err));
}

static int del_chunks_once(ps_redis *x, ps_key k, const ps_rchunks *ci,
                           ps_berr *err) {
  int code = ps_redis_route(x, k, err);
  return code ? code : ps_redis_del_chunks(x, k, ci, err);
}

int ps_redis_del_chunks_retried(ps_redis *x, ps_key k, const ps_rchunks *ci,
                                ps_berr *err) {
  ATTEMPTS(x, del_chunks_once(x, k, ci, err));
}

const ps_backend_ops ps_backend_redis = {
  .kind = "redis",
  .open = redis_open,
  .close = redis_close,
  .address = redis_address,
  .put = redis_put,
  .put_parts = redis_put_parts,
  .get = redis_get,
  .exists = redis_exists,
  .evict = redis_evict,
  .take = redis_take,
  .put_batch = redis_put_batch,
  .get_batch = redis_get_batch,
  .put_ex = ps_redis_put_ex,
  .wait = ps_redis_wait,
  .expire = ps_redis_expire,
};
