/*
 * redis_chunks.c: values larger than the chunk size (Redis refuses bulk
 * strings over 512 MiB). The main key holds 'C' version "<total> <n>
 * <chunk>"; the bytes are in n keys named after the version, so a reader
 * never mixes chunks of two writes. Chunks are written first and the main
 * key only once they all are, so a reader never sees a header whose
 * chunks are missing; the chunks of a replaced value are deleted after.
 *
 * A header is data anyone with access to the key could have written: it
 * is checked strictly, the value's buffer is allocated before any chunk
 * is asked for, and chunk commands go WINDOW at a time, so a forged
 * header costs at most one failed allocation or one window of commands.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "redis_store.h"

#define WINDOW 64         /* chunk commands per round trip */
/*
 * Chunk bytes asked for per round trip when reading (at least one chunk).
 * The server queues the replies of pipelined GETs together, and a queue of
 * many MiB is slow there (fresh memory, as for one large reply): a 32 MiB
 * value in 2 MiB chunks read 16 GETs to a round trip in 160-200 ms, 2 to a
 * round trip in 10-25 ms, one in 8-10 ms (64 MiB: ~400 -> 21-25 ms).
 */
#define READ_AHEAD ((size_t)2 << 20)

static void chunk_suffix(char *out, size_t outlen, const ps_version *v,
                         size_t i) {
  char hex[2 * PS_VERSION_LEN + 1];
  for (int j = 0; j < PS_VERSION_LEN; j++)
    snprintf(hex + 2 * j, 3, "%02x", v->bytes[j]);
  snprintf(out, outlen, ":chunk:%s:%zu", hex, i);
}

/* One decimal number of the header: digits only, no leading zero. */
static const char *parse_num(const char *p, const char *end, size_t *out) {
  size_t v = 0;
  const char *start = p;
  for (; p < end && *p >= '0' && *p <= '9'; p++) {
    if (v > (SIZE_MAX - 9) / 10) return NULL;
    v = v * 10 + (size_t)(*p - '0');
  }
  if (p == start || (*start == '0' && p - start > 1)) return NULL;
  *out = v;
  return p;
}

int ps_redis_parse_chunks(const char *hdr, size_t len, ps_rchunks *ci) {
  if (len < HDR_LEN || hdr[0] != 'C' || len - HDR_LEN > OLDHDR_MAX)
    return -1;
  const char *p = hdr + HDR_LEN, *end = hdr + len;
  size_t t, n, c;
  if (!(p = parse_num(p, end, &t)) || p == end || *p++ != ' ' ||
      !(p = parse_num(p, end, &n)) || p == end || *p++ != ' ' ||
      !(p = parse_num(p, end, &c)) || p != end)
    return -1;
  /* What a writer makes: a chunk no larger than the largest Redis takes,
     a total larger than one chunk, and exactly the chunks it needs. */
  if (c == 0 || c > MAX_CHUNK || t <= c || n > PS_REDIS_MAX_CHUNKS ||
      n != t / c + (t % c != 0))
    return -1;
  memcpy(ci->v.bytes, hdr + 1, PS_VERSION_LEN);
  ci->total = t;
  ci->n = n;
  ci->chunk = c;
  return 0;
}

/* ---- deleting the chunks of a replaced or evicted value ----------------- */

/* Deletes chunks [0, upto) of ci, WINDOW keys per DEL. */
static int del_range(ps_redis *x, ps_key k, const ps_rchunks *ci, size_t upto,
                     ps_berr *err) {
  char suf[80];
  int code = PS_BOK;
  for (size_t i0 = 0; i0 < upto && !code; i0 += WINDOW) {
    size_t m = upto - i0 < WINDOW ? upto - i0 : WINDOW;
    ps_rcmd_begin(x->c, m + 1);
    ps_rcmd_str(x->c, "DEL");
    for (size_t i = i0; i < i0 + m; i++) {
      chunk_suffix(suf, sizeof suf, &ci->v, i);
      ps_redis_arg_key(x, k, suf);
    }
    code = ps_rconn_send(x->c, err);
    if (code) break;
    ps_rreply r;
    code = ps_rconn_read_reply(x->c, &r, err);
    if (code) break;
    if (r.type == PS_R_ERROR) code = ps_redis_reply_error(x, k, &r, err);
    ps_rreply_free(&r);
  }
  return code;
}

int ps_redis_del_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                        ps_berr *err) {
  return del_range(x, k, ci, ci->n, err);
}

/* ---- put ------------------------------------------------------------------- */

/* The value laid out as parts, and where the next chunk starts in them. */
typedef struct parts_cursor {
  const ps_part *parts;
  size_t n, i, at;   /* part i, byte at of it */
} parts_cursor;

/* Queues the next l bytes of the parts as one bulk argument. */
static void queue_slice(ps_redis *x, parts_cursor *pc, size_t l) {
  ps_rcmd_bulk_begin(x->c, l);
  while (l > 0 && pc->i < pc->n) {
    const ps_part *p = &pc->parts[pc->i];
    size_t take = p->len - pc->at < l ? p->len - pc->at : l;
    if (take) ps_rcmd_bulk_part(x->c, p->data + pc->at, take);
    pc->at += take;
    l -= take;
    if (pc->at == p->len) {
      pc->i++;
      pc->at = 0;
    }
  }
  ps_rcmd_bulk_end(x->c);
}

/* Sends SETs of chunks [i0, i0 + m) and reads their replies; the first
 * window also reads back the header of the value being replaced. */
static int set_window(ps_redis *x, ps_key k, parts_cursor *pc,
                      const ps_rchunks *ci, size_t i0, size_t m,
                      const ps_bput *o, ps_rchunks *old, int *had,
                      ps_berr *err) {
  char suf[80];
  /* A put that may only fill an empty key replaces nothing. */
  int with_old = i0 == 0 && !(o && o->if_absent);
  int ttl = o && o->ttl_ms > 0;
  if (with_old) ps_redis_queue_old_header(x, k);
  for (size_t i = i0; i < i0 + m; i++) {
    size_t off = i * ci->chunk;
    size_t l = ci->total - off < ci->chunk ? ci->total - off : ci->chunk;
    chunk_suffix(suf, sizeof suf, &ci->v, i);
    ps_rcmd_begin(x->c, ttl ? 5 : 3);
    ps_rcmd_str(x->c, "SET");
    ps_redis_arg_key(x, k, suf);
    queue_slice(x, pc, l);
    if (ttl) {   /* a lease: the chunks go with the object, whoever dies */
      ps_rcmd_str(x->c, "PX");
      ps_rcmd_int(x->c, (long long)o->ttl_ms);
    }
  }
  int code = ps_rconn_send(x->c, err);
  if (!code && with_old) code = ps_redis_read_old_header(x, old, had, err);
  if (code) return code;
  /* Every reply is read while the connection lives, also after an error
     reply: the first error is the put's. */
  for (size_t i = 0; i < m && x->c->fd >= 0; i++) {
    ps_berr e;
    ps_redis_keep_first(&code, err, ps_redis_expect_ok(x, k, &e), &e);
  }
  return code;
}

int ps_redis_put_chunked(ps_redis *x, ps_key k, const ps_part *parts,
                         size_t nparts, size_t len, const ps_version *v,
                         const ps_bput *o, ps_berr *err) {
  /* The chunk size is for speed, not a bound on what can be stored: a
     value that would need more chunks than a reader accepts takes larger
     ones, up to Redis' limit. */
  size_t chunk = x->chunk;
  if (len / chunk >= PS_REDIS_MAX_CHUNKS) chunk = len / PS_REDIS_MAX_CHUNKS + 1;
  size_t n = len / chunk + (len % chunk != 0);
  if (n > PS_REDIS_MAX_CHUNKS || chunk > MAX_CHUNK)
    return ps_berr_set(err, PS_BCONFIG,
                       "redis %s: a %zu-byte value is larger than %d chunks "
                       "of Redis' largest string", x->c->addr, len,
                       PS_REDIS_MAX_CHUNKS);
  ps_rchunks ci = {*v, len, n, chunk}, old;
  int had = 0, code = PS_BOK;
  size_t written = 0;
  parts_cursor pc = {parts, nparts, 0, 0};
  for (size_t i0 = 0; i0 < n && !code; i0 += WINDOW) {
    size_t m = n - i0 < WINDOW ? n - i0 : WINDOW;
    code = set_window(x, k, &pc, &ci, i0, m, o, &old, &had, err);
    written = i0 + m;
  }
  if (!code) {
    /* The main key last: readers never see a header before its chunks. */
    char main[HDR_LEN + 64];
    main[0] = 'C';
    memcpy(main + 1, v->bytes, PS_VERSION_LEN);
    int ml = snprintf(main + HDR_LEN, 64, "%zu %zu %zu", ci.total, ci.n,
                      ci.chunk);
    ps_redis_queue_main(x, k, main, HDR_LEN + (size_t)ml, NULL, 0, 0, o);
    code = ps_rconn_send(x->c, err);
    if (!code) code = ps_redis_read_main(x, k, o, err);
  }
  if (code) {
    /* Best effort: chunks nothing will ever point to (also when an
       if_absent put found the key taken). */
    ps_berr ignored;
    if (x->c->fd >= 0) del_range(x, k, &ci, written, &ignored);
    return code;
  }
  if (had) code = ps_redis_del_chunks(x, k, &old, err);
  return code;
}

/* ---- leases ---------------------------------------------------------------- */

int ps_redis_expire_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                           int64_t ttl_ms, ps_berr *err) {
  char suf[80];
  int code = PS_BOK;
  for (size_t i0 = 0; i0 < ci->n && !code; i0 += WINDOW) {
    size_t m = ci->n - i0 < WINDOW ? ci->n - i0 : WINDOW;
    for (size_t i = i0; i < i0 + m; i++) {
      chunk_suffix(suf, sizeof suf, &ci->v, i);
      ps_rcmd_begin(x->c, 3);
      ps_rcmd_str(x->c, "PEXPIRE");
      ps_redis_arg_key(x, k, suf);
      ps_rcmd_int(x->c, (long long)ttl_ms);
    }
    code = ps_rconn_send(x->c, err);
    if (code) break;
    /* Every reply is read while the connection lives: the first error is
       the call's. */
    for (size_t i = 0; i < m && x->c->fd >= 0; i++) {
      ps_rreply r;
      ps_berr e;
      int c = ps_rconn_read_reply(x->c, &r, &e);
      if (c == PS_BOK && r.type == PS_R_ERROR)
        c = ps_redis_reply_error(x, k, &r, &e);
      ps_rreply_free(&r);
      ps_redis_keep_first(&code, err, c, &e);
    }
  }
  return code;
}

/* ---- get ------------------------------------------------------------------- */

/* A chunk gone since its header was read: the value was replaced (or
   evicted) meanwhile; read it again from its main key. */
#define REPLACED (-1)
/* Reads again after so many replacements (each a put that completed
   between two reads of ours) fail as damaged. */
#define REREADS 8

/* Fetches all chunks of ci into out (allocated here): PS_BOK, REPLACED
   (every reply of the window read, out released) or an error. */
static int fetch_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                        ps_blob *out, ps_berr *err) {
  char suf[80], kb[80];
  /* First the buffer: a header claiming more than can be had fails here,
     before a single chunk is asked for. */
  if (ps_blob_alloc_object(out, ci->total) != 0)
    return ps_berr_set(err, PS_BNOMEM,
                       "redis %s: key '%s%s': out of memory for its %zu-byte "
                       "value", x->c->addr, x->prefix,
                       ps_redis_keyname(k, kb, sizeof kb), ci->total);
  int code = PS_BOK, gone = 0;
  size_t win = READ_AHEAD / ci->chunk;
  if (win < 1) win = 1;
  if (win > WINDOW) win = WINDOW;
  for (size_t i0 = 0; i0 < ci->n && !code && !gone; i0 += win) {
    size_t m = ci->n - i0 < win ? ci->n - i0 : win;
    for (size_t i = i0; i < i0 + m; i++) {
      chunk_suffix(suf, sizeof suf, &ci->v, i);
      ps_rcmd_begin(x->c, 2);
      ps_rcmd_str(x->c, "GET");
      ps_redis_arg_key(x, k, suf);
    }
    code = ps_rconn_send(x->c, err);
    for (size_t i = i0; i < i0 + m && !code; i++) {
      size_t off = i * ci->chunk;
      size_t want = ci->total - off < ci->chunk ? ci->total - off : ci->chunk;
      ps_rreply r;
      code = ps_rconn_read_head(x->c, &r, err);
      if (code) break;
      if (r.type == PS_R_ERROR) {   /* NOPERM, BUSY...: say what it is */
        code = ps_redis_reply_error(x, k, &r, err);
        ps_rreply_free(&r);
        ps_rconn_drop(x->c);   /* the rest of the window is still owed */
        break;
      }
      if (r.type == PS_R_BULK && r.n < 0) {
        ps_rreply_free(&r);
        gone = 1;   /* the rest of the window is still read, in place */
        continue;
      }
      if (r.type != PS_R_BULK || r.n != (long long)want) {
        ps_rreply_free(&r);
        /* Replies may remain unread: drop the connection to resynchronise. */
        ps_rconn_drop(x->c);
        code = ps_berr_set(err, PS_BPROTO,
                           "redis %s: chunk %zu of key '%s%s' is damaged "
                           "(%lld bytes where %zu were written)",
                           x->c->addr, i, x->prefix,
                           ps_redis_keyname(k, kb, sizeof kb), r.n, want);
        break;
      }
      code = ps_rconn_read_body(x->c, out->data + off, want, err);
      if (!code) code = ps_rconn_read_crlf(x->c, err);
    }
  }
  if (!code && gone) code = REPLACED;
  if (code) ps_blob_release(out);
  return code;
}

/*
 * Fetches all chunks of a chunked value into one buffer of its size. A
 * put that replaces the value while its chunks are read deletes them
 * under us (its new chunks and header are all written first): the value
 * is then read again from its main key, whole, as the new one.
 */
int ps_redis_get_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                        ps_blob *out, ps_version *vout, ps_berr *err) {
  ps_rchunks cur = *ci;
  for (int tries = 0;; tries++) {
    int code = fetch_chunks(x, k, &cur, out, err);
    if (code == PS_BOK) {
      if (vout) *vout = cur.v;
      return PS_BOK;
    }
    if (code != REPLACED) return code;
    if (tries == REREADS) {
      char kb[80];
      return ps_berr_set(err, PS_BPROTO, "redis %s: the chunks of key "
                         "'%s%s' went missing while read, %d times "
                         "(replaced that often, or damaged)", x->c->addr,
                         x->prefix, ps_redis_keyname(k, kb, sizeof kb),
                         REREADS + 1);
    }
    ps_version was = cur.v;
    /* A redirection of this read counts on its own (as get_whole's). */
    ps_rconn_reset_counts(x->c);
    ps_redis_queue_get_first(x, k);
    code = ps_rconn_send(x->c, err);
    int chunked = 0;
    if (!code)
      code = ps_redis_read_get_first(x, k, out, vout, &cur, &chunked, err);
    if (code || !chunked) return code;
    if (memcmp(was.bytes, cur.v.bytes, PS_VERSION_LEN) == 0) {
      /* Not replaced: its chunks went on their own (a lease ending, whose
         chunks expire a moment before the header; the server evicting
         keys under maxmemory). The object is gone. */
      char kb[80];
      return ps_berr_set(err, PS_BNOTFOUND, "redis %s: key '%s%s' lost its "
                         "chunks (its lease ended, or the server evicted "
                         "them)", x->c->addr, x->prefix,
                         ps_redis_keyname(k, kb, sizeof kb));
    }
  }
}
