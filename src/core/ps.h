/*
 * ps.h: declarations shared by the C files of proxystore.core.
 *
 * Not installed: hosts include proxystore.h. Everything here is either
 * static in its file or prefixed ps_, and the module's only exported symbol
 * is luaopen_proxystore_core.
 */
#ifndef PS_H
#define PS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>

#include "proxystore.h"

/* ---- errors (error.c) ------------------------------------------------ */

/*
 * Library errors are tables {kind=, message=, where=, key=, store=,
 * address=, cause=} whose metatable's __tostring gives one line starting
 * with "proxystore:" and the user's position (where). Kinds are short
 * lowercase words.
 */
#define PS_EMISSING_KEY   "missing_key"
#define PS_ECONNECTION    "connection"
#define PS_ETIMEOUT       "timeout"
#define PS_ESERIALIZATION "serialization"
#define PS_ERESOLVE       "resolve"
#define PS_ECONFIG        "config"
#define PS_ESTORE         "store"
#define PS_EIO            "io"
#define PS_ECLOSED        "closed"
#define PS_EPOOL          "pool"
#define PS_EALREADY_SET   "already_set"

/* Optional context attached to an error; NULL fields are left out. */
typedef struct ps_errctx {
  const char *key;
  size_t keylen;       /* 0: strlen(key) */
  const char *store;
  const char *address;
  int cause;           /* stack index of a cause value, 0 for none */
} ps_errctx;

/* Pushes a new error object. */
void ps_error_push(lua_State *L, const char *kind, const ps_errctx *ctx,
                   const char *fmt, ...);
/* Pushes an error object and raises it. Never returns. */
int ps_error_raise(lua_State *L, const char *kind, const ps_errctx *ctx,
                   const char *fmt, ...);
/* True if the value at idx is a proxystore error object. */
int ps_error_is(lua_State *L, int idx);
/* Kind of the error object at idx, or NULL. */
const char *ps_error_kind(lua_State *L, int idx);
/*
 * Argument errors worded as lauxlib's ("bad argument #1 to 'evict' (string
 * expected, got userdata)"), raised as error objects of kind "config".
 */
int ps_argerror(lua_State *L, int arg, const char *extramsg);
int ps_typeerror(lua_State *L, int arg, const char *tname);
void ps_checktype(lua_State *L, int arg, int t);
void ps_checkany(lua_State *L, int arg);
void *ps_checkudata(lua_State *L, int arg, const char *tname);
/* Pushes a one-line rendering of the plain table at idx: {code = 42}. */
void ps_error_describe(lua_State *L, int idx);
void ps_error_open(lua_State *L);   /* module table on top */

/* ---- byte buffers (buf.c) -------------------------------------------- */

typedef struct ps_buf {
  char *data;
  size_t len;
  size_t cap;
  /* NULL: data is malloc'ed and grows with realloc. Otherwise the owner's
   * memory (a pool's shared mapping): called to make room for n more
   * bytes, 0 or -1; ps_buf_free leaves such memory to its owner. */
  int (*grow)(struct ps_buf *b, size_t n);
} ps_buf;

void ps_buf_init(ps_buf *b);
/* Ensure room for n more bytes; returns 0, or -1 when out of memory. */
int ps_buf_reserve(ps_buf *b, size_t n);
int ps_buf_append(ps_buf *b, const void *p, size_t n);
void ps_buf_free(ps_buf *b);

/*
 * A ps_buf owned by a userdata pushed on the stack, so that a Lua error
 * raised while the buffer is in use frees it through __gc.
 * Call ps_buf_free on it when done to release memory early.
 */
ps_buf *ps_buf_box(lua_State *L);
/* The buffer of the box at idx (raises for anything else). */
ps_buf *ps_buf_check(lua_State *L, int idx);
void ps_buf_open(lua_State *L);

/* ---- random keys (key.c) ---------------------------------------------- */

/* Writes 32 lowercase hex chars (128 random bits) and a NUL into out. */
void ps_key_random(char out[33]);

/* ---- proxies (proxy.c) -------------------------------------------------- */

/* The light userdata key marking every proxy metatable. */
extern const char ps_proxy_tag;

/* True if the value at idx is a proxy (never resolves). */
int ps_proxy_is(lua_State *L, int idx);
/* Pushes the key of the store proxy at idx and returns 1; else 0. */
int ps_proxy_push_key(lua_State *L, int idx);
/* Resolves the proxy at idx if needed and pushes its target. */
void ps_proxy_push_target(lua_State *L, int idx);
/*
 * Pushes a new store proxy: store (a store userdata or a store config
 * table) at store_idx, key string at key_idx, PS_PROXY_* flags.
 */
#define PS_PROXY_EVICT  0x01
#define PS_PROXY_STRICT 0x02
/* The proxy came from untrusted input (ps.deserialize(s, {untrusted =
 * true})) and is not bound to a store yet: it resolves only through a
 * store registered in this process under its name. Kept when such a proxy
 * is serialized again, so passing it on does not launder it. */
#define PS_PROXY_UNTRUSTED 0x04
#define PS_PROXY_FUTURE 0x08   /* waits until its future is set (timeout) */
#define PS_PROXY_OWNED  0x10   /* evicts its object when collected; never
                                  travels (copies elsewhere do not own) */
/* The flags a proxy's reference carries to another process (their values
 * are the format's: docs/format.md). */
#define PS_PROXY_TRAVELS (PS_PROXY_EVICT | PS_PROXY_STRICT | \
                          PS_PROXY_UNTRUSTED | PS_PROXY_FUTURE)
void ps_proxy_push_store_ref(lua_State *L, int store_idx, int key_idx,
                             unsigned flags);
/* The same with the wait bound of a future's proxy (seconds, < 0: none). */
void ps_proxy_push_store_ref_ex(lua_State *L, int store_idx, int key_idx,
                                unsigned flags, double timeout);
/*
 * For the codec: pushes a plain table {config=, key=, flags=} describing
 * the store proxy at idx. Raises a serialization error for a proxy whose
 * factory is a Lua function. ps_proxy_from_reference pops such a table and
 * pushes a proxy that will resolve through it; with untrusted != 0 (or a
 * reference that says it is untrusted) the proxy keeps only the store's
 * name and kind and drops every carried flag but PS_PROXY_FUTURE (a wait
 * only reads). A reference with future = true makes a store future
 * instead (ps_future_from_reference).
 */
void ps_proxy_push_reference(lua_State *L, int idx);
void ps_proxy_from_reference(lua_State *L, int untrusted);
/* Replaces the store config table at cfg with one holding only name, kind
   and a local store's instance: what an untrusted reference keeps. */
void ps_proxy_name_only(lua_State *L, int cfg);
/* True for a store proxy or a store future: what the codec writes as a
   reference. */
int ps_proxy_is_reference(lua_State *L, int idx);
/* Pushes the store of the store proxy at idx (found or re-created from
   its config, like a resolve does; an untrusted proxy's only found). */
void ps_proxy_push_store(lua_State *L, int idx);
/* The PS_PROXY_* flags of the store proxy at idx (0 for anything else);
   *timeout gets a future's proxy's wait bound. */
unsigned ps_proxy_flags(lua_State *L, int idx, double *timeout);
void ps_proxy_open(lua_State *L);

/* ---- codec (codec.c) ---------------------------------------------------- */

/* Appends the encoding of the value at idx to b; raises on failure. */
void ps_codec_encode(lua_State *L, int idx, ps_buf *b);
/* The same, but strings of 64 KiB or more are left out of b: pushes the
 * list of holes {at1, s1, at2, s2, ...} where they go (offsets in b,
 * ascending), for a writer that sends b's bytes and those strings in order
 * without joining them. The same bytes on the wire as ps_codec_encode. */
void ps_codec_encode_holes(lua_State *L, int idx, ps_buf *b);
/* Pushes the value encoded in data; raises a serialization error. */
void ps_codec_decode(lua_State *L, const char *data, size_t len);
/* The same; with PS_DECODE_UNTRUSTED every proxy in data is untrusted
 * (PS_PROXY_UNTRUSTED). */
#define PS_DECODE_UNTRUSTED 0x01
void ps_codec_decode_ex(lua_State *L, const char *data, size_t len,
                        unsigned opts);
void ps_codec_open(lua_State *L);

/* ---- stores (store.c) ---------------------------------------------------- */

/* Returns the store userdata at idx or raises. */
struct ps_store *ps_store_check(lua_State *L, int idx);
/* True if the store userdata at idx is open. */
int ps_store_is_open(lua_State *L, int idx);
/* Pushes the registered store called name, or nil. */
void ps_store_lookup(lua_State *L, const char *name);
/*
 * Resolves key through the store at store_idx: pushes the object or raises
 * (missing_key when absent). flags are PS_PROXY_*.
 */
void ps_store_resolve(lua_State *L, int store_idx, int key_idx, unsigned flags);
/*
 * Finds or creates the store described by the config table at cfg_idx and
 * pushes it (for proxies that arrive from another process).
 */
void ps_store_from_config(lua_State *L, int cfg_idx);
/*
 * Pushes the store registered under the config's name when it is the
 * store the config names (same kind; for a local store, the same
 * instance), or raises a resolve error saying why not. Never creates a
 * store: for proxies from untrusted input.
 */
void ps_store_from_registry(lua_State *L, int cfg_idx);
/* Pushes the store's config table (a fresh copy). */
void ps_store_push_config(lua_State *L, int store_idx);
/*
 * Proxies keep a pending background fetch (ps.resolve_async) in a slot;
 * the store starts it and consumes it when the proxy resolves.
 */
struct ps_prefetch;
typedef struct ps_prefetch *ps_prefetch_slot;
void ps_prefetch_slot_free(ps_prefetch_slot *slot);
/* True once the slot's fetch has finished (never blocks). */
int ps_prefetch_slot_done(ps_prefetch_slot *slot);
/* Starts fetching key in the background when the store's backend can. */
/* A future's proxy (PS_PROXY_FUTURE) waits first, within timeout seconds
   (< 0: no limit), in the background too. */
void ps_store_prefetch(lua_State *L, int store_idx, int key_idx,
                       unsigned flags, double timeout, ps_prefetch_slot *slot);
/*
 * Blocks until the future under the key at key_idx is set, or raises kind
 * "timeout" after timeout seconds (< 0: no limit). A local store raises at
 * once for an unset one: nothing else can set it while this process waits.
 */
void ps_store_wait(lua_State *L, int store_idx, int key_idx, double timeout);
/*
 * An owned proxy was collected: evicts the key at key_idx from the store at
 * store_idx (a store userdata; anything else is ignored) if this process
 * owns it there. Never raises: it runs in __gc.
 */
void ps_store_drop_owned(lua_State *L, int store_idx, int key_idx);
/* ---- futures (future.c) --------------------------------------------------- */
/* True if the value at idx is a store future. */
int ps_future_is(lua_State *L, int idx);
/* For the codec: the future's reference table (as ps_proxy_push_reference;
   it has future = true). */
void ps_future_push_reference(lua_State *L, int idx);
/* Pops a reference table with future = true and pushes the future; with
   untrusted != 0 (or a reference that says so) as an untrusted proxy:
   name-only config, no evict, no lease. */
void ps_future_from_reference(lua_State *L, int untrusted);
/*
 * ps_store_resolve with an optional deserializer (stack index, 0 for the
 * store's), the proxy's prefetch slot (may be NULL) and, for a future's
 * proxy (PS_PROXY_FUTURE), how long to wait for it to be set (seconds,
 * < 0: no limit; kind "timeout" past it).
 */
void ps_store_resolve_ex(lua_State *L, int store_idx, int key_idx,
                         unsigned flags, int deserializer,
                         ps_prefetch_slot *slot, double timeout);
void ps_store_open(lua_State *L);

/* ---- worker pool (pool.c, pool_zygote.c, pool_channel.c) ---------------- */

void ps_pool_open(lua_State *L);   /* module table on top */

/* ---- Redis streams and consumer groups (redis/groups_lua.c) -------------- */

void ps_groups_open(lua_State *L);   /* module table on top */

/* ---- HMAC-SHA256 under a shared secret (pool/secret.c) ------------------- */

void ps_secret_open(lua_State *L);   /* module table on top */
/* A queue worker's heartbeat thread (pool/queue_heartbeat.c). */
void ps_heartbeat_open(lua_State *L);   /* module table on top */

#endif
