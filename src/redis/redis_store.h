/*
 * redis_store.h: what backend_redis.c and redis_chunks.c share: the
 * backend context, the value layout constants and the helpers both use.
 * Private to the Redis backend.
 */
#ifndef PS_REDIS_STORE_H
#define PS_REDIS_STORE_H

#include "cluster.h"
#include "redis_conn.h"

#define HDR_LEN (1 + PS_VERSION_LEN)
/* Redis refuses bulk strings over 512 MiB (proto-max-bulk-len): no chunk
   (and no plain value) is larger. */
#define MAX_CHUNK (((size_t)512 << 20) - 4096)
/*
 * Values over PLAIN_MAX are stored in chunks of DEFAULT_CHUNK. Not for
 * Redis' limit but for its speed: a value of 8 MiB or more is one
 * allocation that Redis' jemalloc serves from fresh pages on every SET and
 * every GET reply (loopback, raw: SET 6 MiB 1.6 ms, 10 MiB 33 ms; GET 1.3
 * and 51 ms); 10 MiB in chunks of 2 MiB put 2.7-3.6 ms and read 2.2-3.0
 * ms. A value that fits 6 MiB with its header stays one key, read in one
 * round trip (the first piece, redis_pieces.c): chunked, a value just over
 * 2 MiB took three.
 */
#define PLAIN_MAX (((size_t)6 << 20) - HDR_LEN)
#define DEFAULT_CHUNK ((size_t)2 << 20)
#define OLDHDR_MAX 96     /* bytes of a replaced value read back (GETRANGE) */
/* Chunks of one value (a larger value takes larger chunks, up to 32 TiB
   in all); it bounds what a forged chunk header can make a reader or an
   evict do. */
#define PS_REDIS_MAX_CHUNKS 65536

/* The key of an object's wake-up list (futures): prefix..key..":wake". */
#define PS_REDIS_WAKE ":wake"

typedef struct ps_redis {
  /* The connection of the current attempt: &one on a single server; on a
     cluster, that of the node serving the key (ps_redis_route). */
  ps_rconn *c;
  ps_rconn one;
  ps_rcluster *cl;       /* a cluster, or NULL */
  int reused, retried;   /* single server: see ps_redis_again */
  char *prefix;
  size_t plen;
  size_t chunk;          /* the size of a chunk */
  size_t plain_max;      /* larger values are chunked */
} ps_redis;

/* A chunked value's descriptor. */
typedef struct ps_rchunks {
  ps_version v;
  size_t total, n, chunk;
} ps_rchunks;

/*
 * Points x->c at the server for object k and connects it: the one server,
 * or the node serving k's slot. Every command of an attempt for k goes
 * there (its keys all share one slot: ps_redis_arg_key).
 */
int ps_redis_route(ps_redis *x, ps_key k, ps_berr *err);
/* The slot of object k's keys; PS_BCONFIG for a key no slot can hold. */
int ps_redis_slot(ps_redis *x, ps_key k, unsigned *slot, ps_berr *err);
/* A call: begin, then attempts while ps_redis_again returns 1. */
void ps_redis_begin_call(ps_redis *x);
int ps_redis_again(ps_redis *x, int *code, ps_berr *err);

/* Appends a key argument: prefix..key..suffix (suffix may be NULL); on a
   cluster prefix..{key}..suffix, so all keys of an object share a slot. */
void ps_redis_arg_key(ps_redis *x, ps_key k, const char *suffix);
/* A printable, shortened key for messages, written to buf. */
const char *ps_redis_keyname(ps_key k, char *buf, size_t n);
/* Turns an error reply about key k into PS_BPROTO with a clear message. */
int ps_redis_reply_error(ps_redis *x, ps_key k, const ps_rreply *r,
                         ps_berr *err);
/* Reads a +OK reply. */
int ps_redis_expect_ok(ps_redis *x, ps_key k, ps_berr *err);
/* Reads the replies of a plain put (ps_redis_queue_put's): the old
   header's unless k is fresh, then the SET's; *had: it replaced a chunked
   value, whose chunks (*old) the caller deletes. */
int ps_redis_read_put(ps_redis *x, ps_key k, ps_rchunks *old, int *had,
                      ps_berr *err);
/*
 * In a pipeline: unless an earlier reply failed, records code and e as
 * the pipeline's failure (in *first and *err). Callers go on reading while
 * the connection lives: an error reply is complete; other failures close
 * the connection.
 */
void ps_redis_keep_first(int *first, ps_berr *err, int code,
                         const ps_berr *e);
/* Queues GETRANGE of the first OLDHDR_MAX bytes of a value about to be
   replaced or deleted (to find its chunks). */
void ps_redis_queue_old_header(ps_redis *x, ps_key k);
/* Reads a GETRANGE reply of a replaced value; notes a chunked one. */
int ps_redis_read_old_header(ps_redis *x, ps_rchunks *old, int *had_chunks,
                             ps_berr *err);

/* 16 fresh random bytes; 0, or -1 when getrandom fails. */
int ps_redis_new_version(ps_version *v);
/*
 * Runs op(x, arg, err) as one call under the backend's rules: one set of
 * time bounds, settled at the end, repeated once on a new connection when
 * a connection that worked before turns out dead.
 */
typedef int (*ps_redis_op)(ps_redis *x, void *arg, ps_berr *err);
int ps_redis_call(void *ctx, ps_redis_op op, void *arg, ps_berr *err);
/* The attempts of op within the call already begun (ps_redis_begin_call):
   a further step of the same call. */
int ps_redis_attempts(ps_redis *x, ps_redis_op op, void *arg, ps_berr *err);

/* redis_future.c: put_ex, wait and expire (futures and leases) */
/*
 * Queues the commands that write the main key of an object, hdr then
 * data, under the options o (NULL: a plain SET): SET with PX for a lease;
 * for if_absent or wake, MULTI / SET [NX] [PX] / RPUSH and PEXPIRE of the
 * wake-up list / EXEC, so the value and its wake-up land together or not
 * at all. ps_redis_read_main reads their replies: PS_BEXISTS when NX
 * found the key taken.
 */
void ps_redis_queue_main(ps_redis *x, ps_key k, const char *hdr, size_t hlen,
                         const ps_part *parts, size_t n, size_t len,
                         const ps_bput *o);
int ps_redis_read_main(ps_redis *x, ps_key k, const ps_bput *o, ps_berr *err);
int ps_redis_put_ex(void *ctx, ps_key k, const ps_part *parts, size_t n,
                    const ps_bput *o, ps_version *vout, ps_berr *err);

int ps_redis_wait(void *ctx, ps_key k, double timeout, ps_blob *out,
                  ps_version *vout, ps_berr *err);
/* backend_redis.c: reads one GET reply for k into out; a chunked value's
   header goes to *ci with *chunked set (ps_redis_get_chunks fetches it). */
/* Reads a GET-like reply's bulk body of n bytes for key k (its head read):
   a plain value into out, a chunked one's descriptor into *ci. */
int ps_redis_read_value(ps_redis *x, ps_key k, size_t n, ps_blob *out,
                        ps_version *vout, ps_rchunks *ci, int *chunked,
                        ps_berr *err);
/* A large value in pieces (redis_pieces.c): queues GETRANGE of the first
   piece; the read takes its reply, and for a longer value asks its length
   and fetches the other pieces, falling back to one GET when a put came in
   between. Replies as ps_redis_read_get_reply (without a version). */
void ps_redis_queue_get_first(ps_redis *x, ps_key k);
/* Queues GETRANGE of bytes from..to (inclusive) of object k's key. */
void ps_redis_queue_range(ps_redis *x, ps_key k, size_t from, size_t to);
int ps_redis_read_get_first(ps_redis *x, ps_key k, ps_blob *out,
                            ps_version *vout, ps_rchunks *ci, int *chunked,
                            ps_berr *err);
int ps_redis_read_get_reply(ps_redis *x, ps_key k, const ps_version *have,
                            ps_blob *out, ps_version *vout, ps_rchunks *ci,
                            int *chunked, ps_berr *err);
int ps_redis_expire(void *ctx, ps_key k, int64_t ttl_ms, ps_berr *err);
/*
 * The wake-up list's part of evict (ttl_ms < 0: DEL) and expire (PEXPIRE
 * ttl_ms): a command of its own, queued in the pipeline of the object's
 * commands. Never one command over the list and the object's keys: while
 * a cluster moves their slot the list (which only futures have) may sit
 * on the other node, and Redis refuses a command whose keys are not all
 * on one node (ASK, TRYAGAIN) until the move ends. ps_redis_read_wake
 * reads its reply; on a cluster, a redirection sets *elsewhere (when
 * given) instead of failing, and ps_redis_wake_retried then runs the
 * command as a step of its own in the current call, following it.
 */
void ps_redis_queue_wake(ps_redis *x, ps_key k, int64_t ttl_ms);
int ps_redis_read_wake(ps_redis *x, ps_key k, int *elsewhere, ps_berr *err);
int ps_redis_wake_retried(ps_redis *x, ps_key k, int64_t ttl_ms,
                          ps_berr *err);

/* redis_chunks.c: values over the chunk size */
/* Parses and checks a 'C' header of len bytes; 0, or -1 when malformed. */
int ps_redis_parse_chunks(const char *hdr, size_t len, ps_rchunks *ci);
int ps_redis_del_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                        ps_berr *err);
/* o (may be NULL): the chunks get the lease, the main key all of o. */
int ps_redis_put_chunked(ps_redis *x, ps_key k, const ps_part *parts,
                         size_t nparts, size_t len,
                         const ps_version *v, const ps_bput *o, ps_berr *err);
/* PEXPIRE of every chunk of ci, 64 to a round trip. */
int ps_redis_expire_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                           int64_t ttl_ms, ps_berr *err);
int ps_redis_get_chunks(ps_redis *x, ps_key k, const ps_rchunks *ci,
                        ps_blob *out, ps_version *vout, ps_berr *err);

/* backend_redis.c, for redis_cluster_batch.c: the pieces of a batch, and
   whole operations retried within the current call. */
void ps_redis_queue_get(ps_redis *x, ps_key k);
/* Reads a GET reply; *chunked: a chunked value, whose chunks were not
   read (fetch it with ps_redis_get_retried). */
int ps_redis_read_get(ps_redis *x, ps_key k, ps_blob *out, ps_version *vout,
                      int *chunked, ps_berr *err);
/* GETRANGE of the old header (unless k is fresh), then SET of a plain
   value; hdr must live on. ps_redis_read_put reads the replies. */
void ps_redis_queue_put(ps_redis *x, ps_key k, const char *data, size_t len,
                        char *hdr);
int ps_redis_get_retried(ps_redis *x, ps_key k, ps_blob *out,
                         ps_version *vout, ps_berr *err);
/* A put as the store's own (a fresh k reads no old header). */
int ps_redis_put_retried(ps_redis *x, ps_key k, const char *data, size_t len,
                         ps_version *vout, ps_berr *err);
int ps_redis_del_chunks_retried(ps_redis *x, ps_key k, const ps_rchunks *ci,
                                ps_berr *err);

/* redis_cluster_batch.c: batches split by node, all nodes at once. */
int ps_redis_cluster_get_batch(void *ctx, size_t n, const ps_key *keys,
                               ps_blob *out, ps_version *vout, int *codes,
                               ps_berr *err);
int ps_redis_cluster_put_batch(void *ctx, size_t n, const ps_key *keys,
                               const ps_blob *values, ps_version *vout,
                               ps_berr *err);

#endif
