/*
 * redis_pieces.c: reading a large value in pieces.
 *
 * Why: the server answers GET with one reply buffer the size of the value,
 * and Redis's allocator (jemalloc) maps buffers of 8 MiB and more afresh
 * and unmaps them once freed, so each such GET pays for fresh pages in the
 * server: on these VMs a 10 MiB GET took 48-50 ms, ten GETRANGE replies of
 * 1 MiB 4.7-5.2 ms on the same connection (docs/performance.md). Smaller
 * reply buffers come from memory the server keeps.
 *
 * How: GETRANGE of the first FIRST bytes, alone, as GET would go. A value
 * shorter than that is then read as GET reads it. For a longer one STRLEN
 * is sent as soon as the reply's length says so, the first piece is read
 * into a block of its own, and once the length is known the blob is made,
 * the first piece copied in, and the other pieces and the header again
 * asked for in one more write, each piece read where it belongs. Pieces
 * are not one atomic read, so a put between them is caught: every piece
 * must have its length and the header read last must be the one read
 * first (a put writes a new random version into it). When not, the value
 * is read again with one GET, which is atomic.
 */
#include <stdio.h>
#include <string.h>

#include "bigalloc.h"
#include "redis_store.h"

/* Below the server allocator's 8 MiB threshold, with room for the header
 * so that a value of 4 MiB takes one round trip. */
#define FIRST ((size_t)6 << 20)
#define PIECE ((size_t)4 << 20)

void ps_redis_queue_range(ps_redis *x, ps_key k, size_t from, size_t to) {
  char a[24], b[24];
  snprintf(a, sizeof a, "%zu", from);
  snprintf(b, sizeof b, "%zu", to);
  ps_rcmd_begin(x->c, 4);
  ps_rcmd_str(x->c, "GETRANGE");
  ps_redis_arg_key(x, k, NULL);
  ps_rcmd_str(x->c, a);
  ps_rcmd_str(x->c, b);
}

void ps_redis_queue_get_first(ps_redis *x, ps_key k) {
  ps_redis_queue_range(x, k, 0, FIRST - 1);
}

/* read_exact's answer when the value changed under the read. */
#define CHANGED (-1)

/* Reads one bulk reply of exactly len bytes into dst: PS_BOK; CHANGED
 * when the reply is of another shape or length (the connection is then
 * out of step and dropped); or an I/O error code. */
static int read_exact(ps_redis *x, void *dst, size_t len, ps_berr *err) {
  ps_rreply r;
  int code = ps_rconn_read_head(x->c, &r, err);
  if (code) return code;
  if (r.type != PS_R_BULK || r.n < 0 || (size_t)r.n != len) {
    ps_rreply_free(&r);
    ps_rconn_drop(x->c);
    return CHANGED;
  }
  code = ps_rconn_read_body(x->c, dst, len, err);
  if (!code) code = ps_rconn_read_crlf(x->c, err);
  return code;
}

/* The value again with one GET (after a put between two pieces), on this
 * attempt's connection: not routed again, which on a cluster would reset
 * the call's deadline and forget an ASK; a dropped one is reconnected. */
static int get_whole(ps_redis *x, ps_key k, ps_blob *out, ps_version *vout,
                     ps_rchunks *ci, int *chunked, ps_berr *err) {
  ps_blob_release(out);
  int code = ps_rconn_ensure(x->c, err);
  if (code) return code;
  ps_rconn_reset_counts(x->c);
  ps_redis_queue_get(x, k);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  return ps_redis_read_get_reply(x, k, NULL, out, vout, ci, chunked, err);
}

/* The pieces after the first (n > FIRST), then the header again. */
static int read_rest(ps_redis *x, ps_key k, size_t n, const char *hdr,
                     ps_blob *out, ps_version *vout, ps_rchunks *ci,
                     int *chunked, ps_berr *err) {
  for (size_t off = FIRST; off < n; off += PIECE)
    ps_redis_queue_range(x, k, off, (n - off > PIECE ? off + PIECE : n) - 1);
  ps_redis_queue_range(x, k, 0, HDR_LEN - 1);
  int code = ps_rconn_send(x->c, err);
  if (code) return code;
  for (size_t off = FIRST; off < n; off += PIECE) {
    size_t len = n - off > PIECE ? PIECE : n - off;
    code = read_exact(x, out->data + (off - HDR_LEN), len, err);
    if (code == CHANGED) return get_whole(x, k, out, vout, ci, chunked, err);
    if (code) return code;
  }
  char again[HDR_LEN];
  code = read_exact(x, again, HDR_LEN, err);
  if (code == CHANGED ||
      (code == PS_BOK && memcmp(again, hdr, HDR_LEN) != 0))
    return get_whole(x, k, out, vout, ci, chunked, err);
  if (code) return code;
  if (vout) memcpy(vout->bytes, hdr + 1, PS_VERSION_LEN);
  return PS_BOK;
}

/* The first piece's bytes after the header into first (FIRST - HDR_LEN
 * of them), and the STRLEN sent before them: the value's length. */
static int read_first(ps_redis *x, char *first, long long *n, ps_berr *err) {
  int code = ps_rconn_read_body(x->c, first, FIRST - HDR_LEN, err);
  if (!code) code = ps_rconn_read_crlf(x->c, err);
  if (code) return code;
  ps_rreply r;
  code = ps_rconn_read_reply(x->c, &r, err);
  if (code) return code;
  *n = r.type == PS_R_INT ? r.n : -1;
  ps_rreply_free(&r);
  return PS_BOK;
}

int ps_redis_read_get_first(ps_redis *x, ps_key k, ps_blob *out,
                            ps_version *vout, ps_rchunks *ci, int *chunked,
                            ps_berr *err) {
  *chunked = 0;
  ps_rreply r;
  int code = ps_rconn_read_head(x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR) {
    code = ps_redis_reply_error(x, k, &r, err);
    ps_rreply_free(&r);
    return code;
  }
  if (r.type != PS_R_BULK) {
    ps_rreply_free(&r);
    return ps_rconn_fail(x->c, err, PS_BPROTO, "unexpected reply to GETRANGE");
  }
  if (r.n <= 0) {   /* no such key (a proxystore value is never empty) */
    code = r.n == 0 ? ps_rconn_read_crlf(x->c, err) : PS_BOK;
    return code ? code : ps_berr_set(err, PS_BNOTFOUND, "not found");
  }
  if ((unsigned long long)r.n > FIRST)
    return ps_rconn_fail(x->c, err, PS_BPROTO, "a %lld-byte reply to a "
                         "GETRANGE of %zu bytes", r.n, FIRST);
  if ((size_t)r.n < FIRST)
    return ps_redis_read_value(x, k, (size_t)r.n, out, vout, ci, chunked,
                               err);
  /* A value of FIRST bytes or more: its length, asked for now. */
  ps_rcmd_begin(x->c, 2);
  ps_rcmd_str(x->c, "STRLEN");
  ps_redis_arg_key(x, k, NULL);
  code = ps_rconn_send(x->c, err);
  if (code) return code;
  char hdr[HDR_LEN];
  code = ps_rconn_read_body(x->c, hdr, HDR_LEN, err);
  if (code) return code;
  if (hdr[0] != 'P') {   /* chunk headers are short: not proxystore's */
    char kb[80];
    ps_rconn_drop(x->c);
    return ps_berr_set(err, PS_BPROTO, "redis %s: key '%s%s' does not hold "
                       "a proxystore object", x->c->addr, x->prefix,
                       ps_redis_keyname(k, kb, sizeof kb));
  }
  char *first = ps_big_alloc(FIRST);
  if (first == NULL)
    return ps_rconn_fail(x->c, err, PS_BNOMEM, "out of memory");
  long long n;
  code = read_first(x, first, &n, err);
  /* Shorter: a put between the two. Longer than a plain value can be
     (larger ones are chunked): not believed, read as GET reads it. */
  if (code == PS_BOK && (n < (long long)FIRST ||
                         (unsigned long long)n > MAX_CHUNK + HDR_LEN)) {
    ps_big_free(first);
    return get_whole(x, k, out, vout, ci, chunked, err);
  }
  if (code == PS_BOK && ps_blob_alloc_object(out, (size_t)n - HDR_LEN) != 0)
    code = ps_rconn_fail(x->c, err, PS_BNOMEM,
                         "out of memory for a %lld-byte value", n);
  if (code == PS_BOK) memcpy(out->data, first, FIRST - HDR_LEN);
  ps_big_free(first);
  if (code == PS_BOK)
    code = read_rest(x, k, (size_t)n, hdr, out, vout, ci, chunked, err);
  if (code) ps_blob_release(out);
  return code;
}
