/*
 * redis_chunks.c: values larger than the chunk size (Redis refuses bulk
 * strings over 512 MiB). The main key holds 'C' version "<total> <n>
 * <chunk>"; the bytes are in n keys named after the version, so a reader
 * never mixes chunks of two writes. Chunks are written before the main
 * key, and the chunks of a replaced value are deleted after it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bigalloc.h"
#include "redis_store.h"

static void chunk_suffix(char *out, size_t outlen, const ps_version *v,
                         size_t i) {
  char hex[2 * PS_VERSION_LEN + 1];
  for (int j = 0; j < PS_VERSION_LEN; j++)
    snprintf(hex + 2 * j, 3, "%02x", v->bytes[j]);
  snprintf(out, outlen, ":chunk:%s:%zu", hex, i);
}

int ps_redis_parse_chunks(const char *hdr, size_t len, ps_rchunks *ci) {
  char tmp[OLDHDR_MAX + 1];
  if (len < HDR_LEN || hdr[0] != 'C' || len - HDR_LEN >= sizeof tmp)
    return -1;
  memcpy(ci->v.bytes, hdr + 1, PS_VERSION_LEN);
  memcpy(tmp, hdr + HDR_LEN, len - HDR_LEN);
  tmp[len - HDR_LEN] = '\0';
  unsigned long long t, n, c;
  char extra;
  if (sscanf(tmp, "%llu %llu %llu%c", &t, &n, &c, &extra) != 3) return -1;
  if (c == 0 || n != (t + c - 1) / c || n == 0) return -1;
  ci->total = (size_t)t;
  ci->n = (size_t)n;
  ci->chunk = (size_t)c;
  return 0;
}

/* ---- deleting the chunks of a replaced or evicted value ----------------- */

int ps_redis_del_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci, ps_berr *err) {
  char suf[80];
  int code = ps_rconn_ensure(&x->c, err);
  if (code) return code;
  ps_rcmd_begin(&x->c, ci->n + 1);
  ps_rcmd_str(&x->c, "DEL");
  for (size_t i = 0; i < ci->n; i++) {
    chunk_suffix(suf, sizeof suf, &ci->v, i);
    ps_redis_arg_key(x, k, suf);
  }
  code = ps_rconn_send(&x->c, err);
  if (code) return code;
  ps_rreply r;
  code = ps_rconn_read_reply(&x->c, &r, err);
  if (code) return code;
  if (r.type == PS_R_ERROR) code = ps_redis_reply_error(x, k, &r, err);
  ps_rreply_free(&r);
  return code;
}

int ps_redis_put_chunked(ps_redis *x, ps_key k, const char *data, size_t len,
                       const ps_version *v, ps_berr *err) {
  ps_rchunks ci = {*v, len, (len + x->chunk - 1) / x->chunk, x->chunk};
  char suf[80], main[HDR_LEN + 64];
  main[0] = 'C';
  memcpy(main + 1, v->bytes, PS_VERSION_LEN);
  int ml = snprintf(main + HDR_LEN, 64, "%zu %zu %zu", ci.total, ci.n,
                    ci.chunk);
  ps_rcmd_begin(&x->c, 4);
  ps_rcmd_str(&x->c, "GETRANGE");
  ps_redis_arg_key(x, k, NULL);
  ps_rcmd_str(&x->c, "0");
  ps_rcmd_str(&x->c, "95");
  for (size_t i = 0; i < ci.n; i++) {
    size_t off = i * ci.chunk;
    size_t l = len - off < ci.chunk ? len - off : ci.chunk;
    chunk_suffix(suf, sizeof suf, v, i);
    ps_rcmd_begin(&x->c, 3);
    ps_rcmd_str(&x->c, "SET");
    ps_redis_arg_key(x, k, suf);
    ps_rcmd_arg(&x->c, data + off, l);
  }
  /* The main key last: readers never see a header before its chunks. */
  ps_rcmd_begin(&x->c, 3);
  ps_rcmd_str(&x->c, "SET");
  ps_redis_arg_key(x, k, NULL);
  ps_rcmd_arg(&x->c, main, HDR_LEN + (size_t)ml);
  int code = ps_rconn_send(&x->c, err);
  if (code) return code;
  ps_rchunks old;
  int had = 0;
  code = ps_redis_read_old_header(x, &old, &had, err);
  if (code) return code;
  /* Every SET reply is read while the connection lives, also after an
     error reply: the first error is the put's. */
  for (size_t i = 0; i <= ci.n && x->c.fd >= 0; i++) {
    ps_berr e;
    ps_redis_keep_first(&code, err, ps_redis_expect_ok(x, k, &e), &e);
  }
  if (!code && had) code = ps_redis_del_chunks(x, k, &old, err);
  return code;
}

/* Fetches all chunks of a chunked value into one buffer of its size. */
int ps_redis_get_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci, ps_blob *out,
                      ps_version *vout, ps_berr *err) {
  char suf[80], kb[80];
  int code = ps_rconn_ensure(&x->c, err);
  if (code) return code;
  for (size_t i = 0; i < ci->n; i++) {
    chunk_suffix(suf, sizeof suf, &ci->v, i);
    ps_rcmd_begin(&x->c, 2);
    ps_rcmd_str(&x->c, "GET");
    ps_redis_arg_key(x, k, suf);
  }
  code = ps_rconn_send(&x->c, err);
  if (code) return code;
  if (ps_blob_alloc(out, ci->total) != 0)
    return ps_rconn_fail(&x->c, err, PS_BNOMEM,
                         "out of memory for a %zu-byte value", ci->total);
  for (size_t i = 0; i < ci->n && !code; i++) {
    size_t off = i * ci->chunk;
    size_t want = ci->total - off < ci->chunk ? ci->total - off : ci->chunk;
    ps_rreply r;
    code = ps_rconn_read_head(&x->c, &r, err);
    if (code) break;
    if (r.type != PS_R_BULK || r.n != (long long)want) {
      ps_rreply_free(&r);
      /* Replies may remain unread: drop the connection to resynchronise. */
      ps_rconn_drop(&x->c);
      code = ps_berr_set(err, PS_BPROTO,
                         "redis %s: chunk %zu of key '%s%s' is missing or "
                         "damaged (value replaced while reading?)",
                         x->c.addr, i, x->prefix, ps_redis_keyname(k, kb, sizeof kb));
      break;
    }
    code = ps_rconn_read_body(&x->c, out->data + off, want, err);
    if (!code) code = ps_rconn_read_crlf(&x->c, err);
  }
  if (code) {
    ps_blob_release(out);
    return code;
  }
  if (vout) *vout = ci->v;
  return PS_BOK;
}
