/*
 * store.h: what the store's files share (store.c: core operations and
 * resolution; store_registry.c: the registry and store creation;
 * store_methods.c: the Lua-facing methods; envelope.c: serializer
 * dispatch; store_batch.c: batches). Internal to proxystore.core.
 */
#ifndef PS_STORE_H
#define PS_STORE_H

#include "ps.h"
#include "backend.h"
#include "cache.h"

#define STORE_MT "proxystore.Store"
#define REGISTRY "proxystore.stores"
#define FACTORY "proxystore.store_factory"
#define BLOBS_MT "proxystore.Blobs"

/* UV_LEASES: key -> the monotonic time the lease this process put it with
 * ends (store.c).
 * UV_OWNED: keys of owned proxies -> the pid that owns them. */
enum { UV_CONFIG = 1, UV_LOCAL, UV_CACHE, UV_SER, UV_DESER, UV_LEASES,
       UV_OWNED, UV_N = UV_OWNED };

/* The first byte of every stored object says how the rest was encoded, so
 * a proxy resolves with the right deserializer in any process. */
enum { ENV_NATIVE = 1, ENV_JSON = 2, ENV_CUSTOM = 3 };

enum { OP_PUT, OP_GET, OP_EXISTS, OP_EVICT, OP_N };

/* A get flag beside PS_PROXY_*: neither read nor fill the cache (a fresh
 * copy of the object). Never stored in a proxy. */
#define PS_GET_FRESH 0x100

typedef struct metric {
  lua_Integer count, bytes;
  double total, max;
} metric;

typedef struct ps_store {
  const ps_backend_ops *ops;   /* NULL: the local store */
  void *ctx;
  int open;
  int serializer;              /* ENV_* used for puts */
  ps_cache cache;
  metric m[OP_N];
  lua_Integer hits, misses;
  ps_bconfig bcfg;             /* strings point into the config table */
  char *cluster;               /* bcfg.cluster: the seeds joined by ',' */
  void *wctx;                  /* a backend context of its own for the
                                  waits of futures (opened at first wait) */
  lua_Integer leases;          /* entries in UV_LEASES */
  lua_Integer lease_sweep_at;  /* sweep UV_LEASES when it grows past this */
} ps_store;


/* Backend bytes owned by a userdata, released by __gc if a Lua error hits. */
typedef struct blobs {
  size_t n;
  ps_blob b[];
} blobs;
blobs *ps_blobs_push(lua_State *L, size_t n);

double ps_store_now(void);
void ps_store_record(ps_store *s, int op, double t0, size_t bytes);
const char *ps_store_name(lua_State *L, int sidx);
ps_store *ps_store_check_open(lua_State *L, int idx);
const char *ps_store_check_key(lua_State *L, int idx, size_t *len);
/* A key argument: a non-empty string, or (proxy_ok) a store proxy, whose
 * key replaces it on the stack. Errors read as lauxlib's argument errors. */
const char *ps_store_check_key_arg(lua_State *L, int arg, int proxy_ok,
                                   size_t *len);
int ps_store_raise_backend(lua_State *L, int sidx, ps_store *s,
                           const ps_berr *err, const char *key, size_t klen);
/* The same with the address given (a backend that failed to open). */
int ps_store_raise_backend_at(lua_State *L, int sidx, const ps_berr *err,
                              const char *key, size_t klen,
                              const char *addr);
void ps_store_cache_drop(lua_State *L, int sidx, ps_store *s, const char *key,
                         size_t klen);
/* Caches the value on top of the stack (an object of bytes stored bytes). */
void ps_store_cache_add(lua_State *L, int sidx, ps_store *s, const char *key,
                        size_t klen, const ps_version *ver, size_t bytes);
void ps_store_do_put(lua_State *L, int sidx, ps_store *s, int obj, int kidx,
                     int ser);
/* Puts the bytes of b (an envelope and its payload, as ps_envelope_serialize
 * makes them) under the key at kidx; frees b's memory. fresh: the store
 * made the key for this put (ps_key.fresh). */
void ps_store_put_bytes(lua_State *L, int sidx, ps_store *s, int kidx,
                        ps_buf *b, int fresh);
/*
 * ps_store_do_put with backend options (o may be NULL): a lease, "only if
 * absent", a wake-up; o->fresh_key alone (the store made the key) leaves
 * it a plain put, under a fresh ps_key. Returns PS_BOK, or PS_BEXISTS (nothing written) for
 * an if_absent put onto a key that holds an object; raises otherwise.
 */
int ps_store_do_put_ex(lua_State *L, int sidx, ps_store *s, int obj,
                       int kidx, int ser, const ps_bput *o);
/* Every key of the object at kidx now expires ttl_ms from now: 1, or 0
   when there is no object under the key. */
int ps_store_do_expire(lua_State *L, int sidx, ps_store *s, int kidx,
                       int64_t ttl_ms);
/* True when the key at kidx has a lease this process gave it that has
   ended: a local store's object is removed then, a byte store's cached
   copy dropped. */
int ps_store_lease_over(lua_State *L, int sidx, ps_store *s, int kidx);
int ps_store_do_get(lua_State *L, int sidx, ps_store *s, int kidx,
                    unsigned flags, int deser, ps_prefetch_slot *slot);
/* ps_store_do_get that, with PS_PROXY_FUTURE in flags, first waits up to
   timeout seconds (< 0: no limit) for the key to be set. */
int ps_store_do_get_wait(lua_State *L, int sidx, ps_store *s, int kidx,
                         unsigned flags, int deser, ps_prefetch_slot *slot,
                         double timeout);
/* Deletes the key at kidx (cache included); an absent key is no error. */
void ps_store_do_evict(lua_State *L, int sidx, ps_store *s, int kidx);
int ps_store_opt_table(lua_State *L, int idx);
int ps_store_opt_field(lua_State *L, int opts, const char *field);
unsigned ps_store_proxy_flags(lua_State *L, int opts);

/* store_registry.c: stores by name, one table per Lua state. */
void ps_store_registry_push(lua_State *L);
/* Removes the store at sidx from the registry if it is the one registered
 * under its name. */
void ps_store_unregister(lua_State *L, int sidx);
void ps_store_registry_open(lua_State *L);   /* module table on top */

/* store_methods.c: the store metatable and its methods. */
void ps_store_methods_open(lua_State *L);

/* envelope.c: the serializer byte in front of every stored object. */
ps_buf *ps_envelope_serialize(lua_State *L, int sidx, ps_store *s, int obj,
                              int opt);
/* The same, and then pushes the holes list of ps_codec_encode_holes (nil
   when the serializer is not the native codec). */
ps_buf *ps_envelope_serialize_holes(lua_State *L, int sidx, ps_store *s,
                                    int obj, int opt);
void ps_envelope_deserialize(lua_State *L, int sidx, const char *data,
                             size_t len, int deser);
/* The same for a blob's bytes; an object that is one string may take the
 * blob's block (bigalloc.c, ps_blob_push_string). Release b after. */
void ps_envelope_deserialize_blob(lua_State *L, int sidx, ps_blob *b,
                                  int deser);

/* future.c: store:future and the future userdata. */
int ps_store_future(lua_State *L);
void ps_future_open(lua_State *L);

/* lifetime.c: the lifetime option of put, proxy and future. */
/*
 * Checks the lifetime at lt (a ps.lifetime object, else a config error)
 * and fills o->ttl_ms with what is left of its lease (0: none); raises
 * kind "closed" when it has ended.
 */
void ps_lifetime_begin(lua_State *L, int lt, ps_bput *o);
/* Records the key at kidx of the store at sidx in the lifetime at lt. */
void ps_lifetime_attach(lua_State *L, int lt, int sidx, int kidx);
void ps_lifetime_open(lua_State *L);   /* module table on top */

/* owned.c: owned proxies and ps.clone. */
/* Records the key at kidx as owned by this process's proxy. */
void ps_store_own(lua_State *L, int sidx, int kidx);
/* Evicts every key this process owns in the store at sidx (its close);
   errors are swallowed: it runs in close and __gc. */
void ps_store_evict_owned(lua_State *L, int sidx);
void ps_owned_open(lua_State *L);   /* module table on top */

/* store_batch.c: the batch methods. */
int ps_store_put_batch(lua_State *L);
int ps_store_proxy_batch(lua_State *L);
int ps_store_get_batch(lua_State *L);

#endif
