/*
 * store.c: store objects, the registry of stores by name, and resolution.
 *
 * A store is a userdata over either the in-process "local" table (objects
 * kept by reference, as the seed's local backend did) or a byte backend
 * (backend.h). For byte backends this file owns serializer dispatch, the
 * per-process LRU cache of deserialized objects, strict version checks,
 * evict-on-resolve and metrics; the backend only moves bytes.
 *
 * User values: 1 config table, 2 local objects, 3 cached values,
 * 4 custom serializer, 5 custom deserializer.
 */
#include <string.h>
#include <time.h>

#include "ps.h"
#include "backend.h"
#include "cache.h"
#include "ps_backends.h"
#include "prefetch.h"

#define STORE_MT "proxystore.Store"
#define REGISTRY "proxystore.stores"
#define FACTORY "proxystore.store_factory"
#define BLOBS_MT "proxystore.Blobs"

enum { UV_CONFIG = 1, UV_LOCAL, UV_CACHE, UV_SER, UV_DESER, UV_N = UV_DESER };

/* The first byte of every stored object says how the rest was encoded, so
 * a proxy resolves with the right deserializer in any process. */
enum { ENV_NATIVE = 1, ENV_JSON = 2, ENV_CUSTOM = 3 };

enum { OP_PUT, OP_GET, OP_EXISTS, OP_EVICT, OP_N };
static const char *const op_names[OP_N] = {"put", "get", "exists", "evict"};

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
} ps_store;

/* Stands for a stored nil in the local store's table. */
static const char local_nil = 0;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void record(ps_store *s, int op, double t0, size_t bytes) {
  double dt = now() - t0;
  metric *m = &s->m[op];
  m->count++;
  m->bytes += (lua_Integer)bytes;
  m->total += dt;
  if (dt > m->max) m->max = dt;
}

ps_store *ps_store_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, STORE_MT);
}

/* The store's name (anchored in its config table). */
static const char *store_name(lua_State *L, int sidx) {
  lua_getiuservalue(L, sidx, UV_CONFIG);
  lua_getfield(L, -1, "name");
  const char *name = lua_tostring(L, -1);
  lua_pop(L, 2);
  return name ? name : "?";
}

static ps_store *check_open(lua_State *L, int idx) {
  ps_store *s = ps_store_check(L, idx);
  if (!s->open)
    ps_error_raise(L, PS_ECLOSED, &(ps_errctx){.store = store_name(L, idx)},
                   "store '%s' is closed", store_name(L, idx));
  return s;
}

static const char *check_key(lua_State *L, int idx, size_t *len) {
  const char *k = luaL_checklstring(L, idx, len);
  luaL_argcheck(L, *len > 0, idx, "empty key");
  return k;
}

static const char *address(ps_store *s) {
  return s->ops && s->ctx && s->ops->address ? s->ops->address(s->ctx) : NULL;
}

/* Raises the error a backend reported (err already released everything). */
static int raise_backend(lua_State *L, int sidx, ps_store *s,
                         const ps_berr *err, const char *key, size_t klen) {
  static const char *const kinds[] = {
    [PS_BNOTFOUND] = PS_EMISSING_KEY, [PS_BCONN] = PS_ECONNECTION,
    [PS_BTIMEOUT] = PS_ETIMEOUT,      [PS_BPROTO] = PS_ESTORE,
    [PS_BCONFIG] = PS_ECONFIG,        [PS_BIO] = PS_EIO,
    [PS_BNOMEM] = PS_ESTORE};
  int code = err->code;
  const char *kind = code > 0 && code <= PS_BNOMEM && kinds[code]
                         ? kinds[code] : PS_ESTORE;
  const char *name = store_name(L, sidx);
  return ps_error_raise(L, kind,
                        &(ps_errctx){.key = key, .keylen = klen,
                                     .store = name, .address = address(s)},
                        "store '%s': %s", name,
                        err->msg[0] ? err->msg : "backend error");
}

/* ---- boxes for C memory that must survive a Lua error ------------------- */

typedef struct blobs {
  size_t n;
  ps_blob b[];
} blobs;

static int blobs_gc(lua_State *L) {
  blobs *bs = lua_touserdata(L, 1);
  for (size_t i = 0; i < bs->n; i++) ps_blob_release(&bs->b[i]);
  return 0;
}

static blobs *push_blobs(lua_State *L, size_t n) {
  blobs *bs = lua_newuserdatauv(L, sizeof *bs + n * sizeof(ps_blob), 0);
  bs->n = 0;
  memset(bs->b, 0, n * sizeof(ps_blob));
  bs->n = n;
  luaL_setmetatable(L, BLOBS_MT);
  return bs;
}

/* ---- serialization -------------------------------------------------------- */

static void call_cjson(lua_State *L, const char *fn) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.cause = -1},
                   "the json serializer needs lua-cjson");
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
}

/* Picks the serializer: a per-call option at opt (0: none) or the store's. */
static int serializer_for(lua_State *L, ps_store *s, int opt) {
  if (opt == 0 || lua_isnil(L, opt)) return s->serializer;
  if (lua_isfunction(L, opt)) return ENV_CUSTOM;
  const char *name = lua_tostring(L, opt);
  if (name && strcmp(name, "native") == 0) return ENV_NATIVE;
  if (name && strcmp(name, "json") == 0) return ENV_JSON;
  return ps_error_raise(L, PS_ECONFIG, NULL,
                        "unknown serializer '%s' (use \"native\", \"json\" "
                        "or a function)", luaL_tolstring(L, opt, NULL));
}

/*
 * Serializes the value at obj into a boxed buffer pushed on the stack:
 * one envelope byte, then the payload.
 */
static ps_buf *serialize(lua_State *L, int sidx, ps_store *s, int obj,
                         int opt) {
  int env = serializer_for(L, s, opt);
  ps_buf *b = ps_buf_box(L);
  unsigned char tag = (unsigned char)env;
  if (ps_buf_append(b, &tag, 1) != 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "out of memory");
  if (env == ENV_NATIVE) {
    ps_codec_encode(L, obj, b);
    return b;
  }
  if (env == ENV_JSON) {
    call_cjson(L, "encode");
  } else if (opt && lua_isfunction(L, opt)) {
    lua_pushvalue(L, opt);
  } else {
    lua_getiuservalue(L, sidx, UV_SER);
  }
  lua_pushvalue(L, obj);
  lua_call(L, 1, 1);
  size_t len;
  const char *bytes = lua_tolstring(L, -1, &len);
  if (bytes == NULL || lua_type(L, -1) != LUA_TSTRING)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "serializer returned %s, not a string",
                   luaL_typename(L, -1));
  if (ps_buf_append(b, bytes, len) != 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "out of memory");
  lua_pop(L, 1);
  return b;
}

/* Pushes the object held in data; deser is a stack index or 0. */
static void deserialize(lua_State *L, int sidx, const char *data, size_t len,
                        int deser) {
  if (len == 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "stored object is empty");
  switch ((unsigned char)data[0]) {
  case ENV_NATIVE:
    ps_codec_decode(L, data + 1, len - 1);
    return;
  case ENV_JSON:
    call_cjson(L, "decode");
    break;
  case ENV_CUSTOM:
    if (deser) {
      lua_pushvalue(L, deser);
    } else if (lua_getiuservalue(L, sidx, UV_DESER) != LUA_TFUNCTION) {
      ps_error_raise(L, PS_ESERIALIZATION, NULL,
                     "object was stored with a custom serializer; give the "
                     "store or the proxy a deserializer");
    }
    break;
  default:
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "stored bytes are not a proxystore object (envelope "
                   "byte %d)", (int)(unsigned char)data[0]);
  }
  lua_pushlstring(L, data + 1, len - 1);
  lua_call(L, 1, 1);
}

/* ---- core operations ------------------------------------------------------- */

static void cache_drop(lua_State *L, int sidx, ps_store *s, const char *key,
                       size_t klen) {
  if (s->cache.count == 0) return;
  ps_cache_remove(&s->cache, key, klen);
  lua_getiuservalue(L, sidx, UV_CACHE);
  lua_pushlstring(L, key, klen);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Caches the value on top of the stack under key (leaves it there). */
static void cache_add(lua_State *L, int sidx, ps_store *s, const char *key,
                      size_t klen, const ps_version *ver) {
  ps_cache_node *n = ps_cache_put(&s->cache, key, klen);
  if (n == NULL) return;
  if (ver) {
    n->version = *ver;
    n->has_version = 1;
  }
  lua_getiuservalue(L, sidx, UV_CACHE);
  lua_pushlstring(L, key, klen);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  ps_cache_node *old;
  while ((old = ps_cache_pop_excess(&s->cache)) != NULL) {
    lua_pushlstring(L, old->key, old->keylen);
    lua_pushnil(L);
    lua_rawset(L, -3);
    ps_cache_release(old);
  }
  lua_pop(L, 1);
}

/* Stores the value at obj under the key at kidx. */
static void do_put(lua_State *L, int sidx, ps_store *s, int obj, int kidx,
                   int ser) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = now();
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    if (lua_isnil(L, obj)) lua_pushlightuserdata(L, (void *)&local_nil);
    else lua_pushvalue(L, obj);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    record(s, OP_PUT, t0, 0);
    return;
  }
  ps_buf *b = serialize(L, sidx, s, obj, ser);
  ps_berr err = {0, ""};
  int rc = s->ops->put(s->ctx, (ps_key){key, klen}, b->data, b->len, NULL,
                       &err);
  size_t len = b->len;
  ps_buf_free(b);
  lua_pop(L, 1);
  if (rc != PS_BOK) raise_backend(L, sidx, s, &err, key, klen);
  cache_drop(L, sidx, s, key, klen);
  record(s, OP_PUT, t0, len);
}

/*
 * Pushes the object under the key at kidx and returns 1, or pushes nothing
 * and returns 0 when the key is absent.
 */
static int do_get(lua_State *L, int sidx, ps_store *s, int kidx,
                  unsigned flags, int deser, ps_prefetch_slot *slot) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = now();
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int t = lua_rawget(L, -2);
    lua_remove(L, -2);
    record(s, OP_GET, t0, 0);
    if (t == LUA_TNIL) {
      lua_pop(L, 1);
      return 0;
    }
    if (lua_touserdata(L, -1) == &local_nil) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    return 1;
  }
  ps_cache_node *hit = ps_cache_find(&s->cache, key, klen);
  if (hit && !(flags & PS_PROXY_STRICT)) {
    s->hits++;
    ps_prefetch_slot_free(slot);
    lua_getiuservalue(L, sidx, UV_CACHE);
    lua_pushvalue(L, kidx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return 1;
  }
  ps_version have, ver;
  int use_have = hit && hit->has_version;
  if (use_have) have = hit->version;
  blobs *bs = push_blobs(L, 1);
  ps_berr err = {0, ""};
  int rc;
  if (slot && *slot) {
    rc = ps_prefetch_wait(*slot, &bs->b[0], &ver, &err);
    ps_prefetch_slot_free(slot);
    if (rc == PS_BOK && use_have && memcmp(&ver, &have, sizeof ver) == 0)
      rc = PS_BUNCHANGED;
  } else {
    rc = s->ops->get(s->ctx, (ps_key){key, klen}, use_have ? &have : NULL,
                     &bs->b[0], &ver, &err);
  }
  if (rc == PS_BUNCHANGED) {
    lua_pop(L, 1);
    s->hits++;
    record(s, OP_GET, t0, 0);
    lua_getiuservalue(L, sidx, UV_CACHE);
    lua_pushvalue(L, kidx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return 1;
  }
  if (rc == PS_BNOTFOUND) {
    lua_pop(L, 1);
    if (hit) cache_drop(L, sidx, s, key, klen);
    s->misses++;
    record(s, OP_GET, t0, 0);
    return 0;
  }
  if (rc != PS_BOK) {
    ps_blob_release(&bs->b[0]);
    raise_backend(L, sidx, s, &err, key, klen);
  }
  s->misses++;
  size_t len = bs->b[0].len;
  deserialize(L, sidx, bs->b[0].data, len, deser);
  ps_blob_release(&bs->b[0]);
  lua_remove(L, -2);   /* the blob box */
  cache_add(L, sidx, s, key, klen, &ver);
  record(s, OP_GET, t0, len);
  return 1;
}

static void do_evict(lua_State *L, int sidx, ps_store *s, int kidx) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = now();
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  } else {
    ps_berr err = {0, ""};
    cache_drop(L, sidx, s, key, klen);
    if (s->ops->evict(s->ctx, (ps_key){key, klen}, &err) != PS_BOK)
      raise_backend(L, sidx, s, &err, key, klen);
  }
  record(s, OP_EVICT, t0, 0);
}

/* ---- resolution, for proxies ------------------------------------------------ */

void ps_store_resolve_ex(lua_State *L, int sidx, int kidx, unsigned flags,
                         int deser, ps_prefetch_slot *slot) {
  sidx = lua_absindex(L, sidx);
  kidx = lua_absindex(L, kidx);
  if (deser) deser = lua_absindex(L, deser);
  ps_store *s = check_open(L, sidx);
  if (!do_get(L, sidx, s, kidx, flags, deser, slot)) {
    size_t klen;
    const char *key = lua_tolstring(L, kidx, &klen);
    const char *name = store_name(L, sidx);
    const char *addr = address(s);
    ps_error_raise(L, PS_EMISSING_KEY,
                   &(ps_errctx){.key = key, .keylen = klen, .store = name,
                                .address = addr},
                   "no object under key '%s' in store '%s'%s%s", key, name,
                   addr ? " at " : "", addr ? addr : "");
  }
  if (flags & PS_PROXY_EVICT) do_evict(L, sidx, s, kidx);
}

void ps_store_resolve(lua_State *L, int sidx, int kidx, unsigned flags) {
  ps_store_resolve_ex(L, sidx, kidx, flags, 0, NULL);
}

void ps_prefetch_slot_free(ps_prefetch_slot *slot) {
  if (slot && *slot) {
    ps_prefetch_free(*slot);
    *slot = NULL;
  }
}

void ps_store_prefetch(lua_State *L, int sidx, int kidx, unsigned flags,
                       ps_prefetch_slot *slot) {
  ps_store *s = check_open(L, sidx);
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  if (s->ops == NULL || *slot) return;
  if (!(flags & PS_PROXY_STRICT) && ps_cache_find(&s->cache, key, klen))
    return;   /* first use will be a cache hit anyway */
  ps_berr err = {0, ""};
  *slot = ps_prefetch_start(s->ops, &s->bcfg, (ps_key){key, klen}, &err);
  if (*slot == NULL) raise_backend(L, sidx, s, &err, key, klen);
}

/* ---- the registry --------------------------------------------------------- */

static void push_registry(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY);
}

void ps_store_lookup(lua_State *L, const char *name) {
  push_registry(L);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

static void copy_table(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

void ps_store_push_config(lua_State *L, int sidx) {
  ps_store_check(L, sidx);
  lua_getiuservalue(L, sidx, UV_CONFIG);
  copy_table(L, -1);
  lua_remove(L, -2);
}

static int l_new_store(lua_State *L);

void ps_store_from_config(lua_State *L, int cfg) {
  cfg = lua_absindex(L, cfg);
  lua_getfield(L, cfg, "name");
  lua_getfield(L, cfg, "kind");
  const char *name = lua_tostring(L, -2);
  const char *kind = lua_tostring(L, -1);
  if (name == NULL || kind == NULL)
    ps_error_raise(L, PS_ECONFIG, NULL, "store config needs name and kind");
  ps_store_lookup(L, name);
  if (!lua_isnil(L, -1)) {
    lua_getiuservalue(L, -1, UV_CONFIG);
    lua_getfield(L, -1, "instance");
    lua_getfield(L, cfg, "instance");
    int same = strcmp(kind, "local") != 0 || lua_rawequal(L, -1, -2);
    lua_pop(L, 3);
    if (same) {
      lua_replace(L, -3);
      lua_pop(L, 1);
      return;
    }
  }
  if (strcmp(kind, "local") == 0)
    ps_error_raise(L, PS_ERESOLVE, &(ps_errctx){.store = name},
                   "local store '%s' lives in another process; a local "
                   "store proxy resolves only where it was made "
                   "(use a file or redis store to share objects)", name);
  lua_pop(L, 3);
  if (lua_getfield(L, LUA_REGISTRYINDEX, FACTORY) == LUA_TFUNCTION) {
    lua_pushvalue(L, cfg);
    lua_call(L, 1, 1);
    ps_store_check(L, -1);
  } else {
    lua_pop(L, 1);
    lua_pushcfunction(L, l_new_store);
    lua_pushvalue(L, cfg);
    lua_call(L, 1, 1);
  }
}

/* ---- Lua-facing functions -------------------------------------------------- */

static const char *cfg_string(lua_State *L, int cfg, const char *field) {
  lua_getfield(L, cfg, field);
  const char *v = lua_tostring(L, -1);   /* anchored in cfg */
  lua_pop(L, 1);
  return v;
}

static lua_Integer cfg_int(lua_State *L, int cfg, const char *field,
                           lua_Integer def) {
  lua_getfield(L, cfg, field);
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : def;
  lua_pop(L, 1);
  return v;
}

/*
 * core.new_store(cfg [, serializer, deserializer]): cfg is normalized by
 * the Lua face (name, kind, cache_size, serializer, backend options).
 */
static int l_new_store(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  const char *name = cfg_string(L, 1, "name");
  const char *kind = cfg_string(L, 1, "kind");
  if (name == NULL || kind == NULL)
    return ps_error_raise(L, PS_ECONFIG, NULL,
                          "store config needs name and kind");
  ps_store_lookup(L, name);
  if (!lua_isnil(L, -1))
    return ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.store = name},
                          "a store named '%s' already exists (close it or "
                          "choose another name)", name);
  lua_pop(L, 1);
  const ps_backend_ops *ops = NULL;
  if (strcmp(kind, "local") != 0 && (ops = ps_backend_find(kind)) == NULL)
    return ps_error_raise(L, PS_ECONFIG, NULL, "unknown store kind '%s'",
                          kind);
  lua_Integer cache_size = cfg_int(L, 1, "cache_size", 16);
  if (cache_size < 0)
    return ps_error_raise(L, PS_ECONFIG, NULL, "cache_size must be >= 0");

  ps_store *s = lua_newuserdatauv(L, sizeof *s, UV_N);   /* 4 */
  memset(s, 0, sizeof *s);
  ps_cache_init(&s->cache, (size_t)cache_size);
  luaL_setmetatable(L, STORE_MT);
  copy_table(L, 1);
  lua_setiuservalue(L, 4, UV_CONFIG);
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_LOCAL);
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_CACHE);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 4, UV_SER);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 4, UV_DESER);

  lua_getiuservalue(L, 4, UV_CONFIG);   /* 5: strings below live here */
  /* clear is this process's request only: a config carried by a proxy
   * re-creates a store that never deletes anything. */
  lua_getfield(L, 5, "clear");
  int clear = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setfield(L, 5, "clear");
  const char *ser = cfg_string(L, 5, "serializer");
  if (lua_isfunction(L, 2)) s->serializer = ENV_CUSTOM;
  else if (ser == NULL || strcmp(ser, "native") == 0) s->serializer = ENV_NATIVE;
  else if (strcmp(ser, "json") == 0) s->serializer = ENV_JSON;
  else
    return ps_error_raise(L, PS_ECONFIG, NULL, "unknown serializer '%s'", ser);
  if (ops) {
    ps_bconfig *b = &s->bcfg;
    b->host = cfg_string(L, 5, "host");
    b->port = (int)cfg_int(L, 5, "port", 6379);
    b->path = cfg_string(L, 5, "path");
    b->db = (int)cfg_int(L, 5, "db", 0);
    b->username = cfg_string(L, 5, "username");
    b->password = cfg_string(L, 5, "password");
    lua_getfield(L, 5, "timeout");
    b->timeout = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 5.0;
    lua_pop(L, 1);
    b->prefix = cfg_string(L, 5, "prefix");
    b->dir = cfg_string(L, 5, "dir");
    b->owns_dir = 0;
    b->clear = clear;
    ps_berr err = {0, ""};
    s->ctx = ops->open(b, &err);
    if (s->ctx == NULL)
      return raise_backend(L, 4, s, &err, NULL, 0);
    s->ops = ops;
  }
  s->open = 1;
  push_registry(L);
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, name);
  lua_pushvalue(L, 4);
  return 1;
}

static int l_get_store(lua_State *L) {
  ps_store_lookup(L, luaL_checkstring(L, 1));
  return 1;
}

static int l_set_store_factory(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FACTORY);
  return 0;
}

/* Key for a put: opts.key at opts (0: none), else 128 random bits. */
static int push_put_key(lua_State *L, int opts) {
  if (opts && lua_getfield(L, opts, "key") != LUA_TNIL) {
    size_t len;
    check_key(L, lua_gettop(L), &len);
    return lua_gettop(L);
  }
  if (opts) lua_pop(L, 1);
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  return lua_gettop(L);
}

static int opt_table(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return idx;
}

static int opt_field(lua_State *L, int opts, const char *field) {
  if (!opts) return 0;
  lua_getfield(L, opts, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return lua_gettop(L);
}

static unsigned proxy_flags(lua_State *L, int opts) {
  unsigned flags = 0;
  if (!opts) return 0;
  if (lua_getfield(L, opts, "evict"), lua_toboolean(L, -1)) flags |= PS_PROXY_EVICT;
  if (lua_getfield(L, opts, "strict"), lua_toboolean(L, -1)) flags |= PS_PROXY_STRICT;
  lua_pop(L, 2);
  return flags;
}

static int store_put(lua_State *L) {
  ps_store *s = check_open(L, 1);
  luaL_checkany(L, 2);
  int opts = opt_table(L, 3);
  lua_settop(L, 3);
  int k = push_put_key(L, opts);
  do_put(L, 1, s, 2, k, opt_field(L, opts, "serializer"));
  lua_pushvalue(L, k);
  return 1;
}

static int store_get(lua_State *L) {
  ps_store *s = check_open(L, 1);
  size_t klen;
  check_key(L, 2, &klen);
  lua_settop(L, 3);
  if (!do_get(L, 1, s, 2, 0, 0, NULL)) lua_pushvalue(L, 3);
  return 1;
}

static int store_exists(lua_State *L) {
  ps_store *s = check_open(L, 1);
  size_t klen;
  const char *key = check_key(L, 2, &klen);
  double t0 = now();
  int found;
  if (s->ops == NULL) {
    lua_getiuservalue(L, 1, UV_LOCAL);
    lua_pushvalue(L, 2);
    found = lua_rawget(L, -2) != LUA_TNIL;
  } else {
    ps_berr err = {0, ""};
    if (s->ops->exists(s->ctx, (ps_key){key, klen}, &found, &err) != PS_BOK)
      raise_backend(L, 1, s, &err, key, klen);
  }
  record(s, OP_EXISTS, t0, 0);
  lua_pushboolean(L, found);
  return 1;
}

static int store_evict(lua_State *L) {
  ps_store *s = check_open(L, 1);
  size_t klen;
  check_key(L, 2, &klen);
  do_evict(L, 1, s, 2);
  return 0;
}

/* Gives the proxy on top its per-proxy deserializer from opts, if any. */
static void set_proxy_deserializer(lua_State *L, int opts) {
  int d = opt_field(L, opts, "deserializer");
  if (d == 0) return;
  luaL_argexpected(L, lua_isfunction(L, d), opts, "deserializer function");
  lua_setiuservalue(L, -2, 1);
}

static int store_proxy(lua_State *L) {
  ps_store *s = check_open(L, 1);
  luaL_checkany(L, 2);
  int opts = opt_table(L, 3);
  lua_settop(L, 3);
  int k = push_put_key(L, opts);
  do_put(L, 1, s, 2, k, opt_field(L, opts, "serializer"));
  ps_proxy_push_store_ref(L, 1, k, proxy_flags(L, opts));
  set_proxy_deserializer(L, opts);
  return 1;
}

static int store_proxy_from_key(lua_State *L) {
  check_open(L, 1);
  size_t klen;
  check_key(L, 2, &klen);
  int opts = opt_table(L, 3);
  lua_settop(L, 3);
  ps_proxy_push_store_ref(L, 1, 2, proxy_flags(L, opts));
  set_proxy_deserializer(L, opts);
  return 1;
}

/*
 * put_batch(list [, opts]): stores every element, returns their keys.
 * With a batch-capable backend all objects go in one round trip.
 * opts.keys: a list of keys to use.
 */
static int put_batch(lua_State *L, int make_proxies) {
  ps_store *s = check_open(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int opts = opt_table(L, 3);
  lua_settop(L, 3);
  lua_Integer n = luaL_len(L, 2);
  int keys_opt = opt_field(L, opts, "keys");   /* 4 or 0 */
  if (!keys_opt) lua_pushnil(L);
  int ser = opt_field(L, opts, "serializer");  /* 5 or 0 */
  if (!ser) lua_pushnil(L);
  lua_createtable(L, (int)n, 0);               /* 6: keys */
  for (lua_Integer i = 1; i <= n; i++) {
    if (keys_opt) {
      lua_geti(L, 4, i);
      size_t len;
      check_key(L, -1, &len);
    } else {
      char key[33];
      ps_key_random(key);
      lua_pushlstring(L, key, 32);
    }
    lua_rawseti(L, 6, i);
  }
  double t0 = now();
  if (s->ops && s->ops->put_batch && n > 0) {
    blobs *bs = push_blobs(L, (size_t)n);      /* 7 */
    ps_key *keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0); /* 8 */
    size_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      ps_buf *b = serialize(L, 1, s, lua_gettop(L), ser ? 5 : 0);
      /* Move the buffer into the blob box, which now owns it. */
      bs->b[i - 1].data = b->data;
      bs->b[i - 1].len = b->len;
      total += b->len;
      ps_buf_init(b);
      lua_pop(L, 2);
      lua_rawgeti(L, 6, i);
      keys[i - 1].data = lua_tolstring(L, -1, &keys[i - 1].len);
      lua_pop(L, 1);   /* anchored in the keys table */
    }
    ps_berr err = {0, ""};
    int rc = s->ops->put_batch(s->ctx, (size_t)n, keys, bs->b, NULL, &err);
    for (lua_Integer i = 0; i < n; i++) ps_blob_release(&bs->b[i]);
    if (rc != PS_BOK) raise_backend(L, 1, s, &err, NULL, 0);
    for (lua_Integer i = 0; i < n; i++)
      cache_drop(L, 1, s, keys[i].data, keys[i].len);
    record(s, OP_PUT, t0, total);
    lua_settop(L, 6);
  } else {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      lua_rawgeti(L, 6, i);
      do_put(L, 1, s, lua_gettop(L) - 1, lua_gettop(L), ser ? 5 : 0);
      lua_pop(L, 2);
    }
  }
  if (make_proxies) {
    unsigned flags = proxy_flags(L, opts);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 6, i);
      ps_proxy_push_store_ref(L, 1, -1, flags);
      lua_rawseti(L, -3, i);
      lua_pop(L, 1);
    }
  }
  return 1;
}

static int store_put_batch(lua_State *L) { return put_batch(L, 0); }
static int store_proxy_batch(lua_State *L) { return put_batch(L, 1); }

/* get_batch(keys): values in order (nil where absent), with field n. */
static int store_get_batch(lua_State *L) {
  ps_store *s = check_open(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_Integer n = luaL_len(L, 2);
  lua_createtable(L, (int)n, 1);   /* 3: results */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    size_t len;
    check_key(L, -1, &len);
    lua_pop(L, 1);
  }
  if (s->ops && s->ops->get_batch && n > 0) {
    double t0 = now();
    blobs *bs = push_blobs(L, (size_t)n);                                /* 4 */
    ps_key *keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0);   /* 5 */
    int *codes = lua_newuserdatauv(L, (size_t)n * sizeof *codes, 0);    /* 6 */
    ps_version *vers = lua_newuserdatauv(L, (size_t)n * sizeof *vers, 0); /* 7 */
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      keys[i - 1].data = lua_tolstring(L, -1, &keys[i - 1].len);
      lua_pop(L, 1);
    }
    ps_berr err = {0, ""};
    int rc = s->ops->get_batch(s->ctx, (size_t)n, keys, bs->b, vers, codes,
                               &err);
    if (rc != PS_BOK) {
      for (lua_Integer i = 0; i < n; i++) ps_blob_release(&bs->b[i]);
      raise_backend(L, 1, s, &err, NULL, 0);
    }
    size_t total = 0;
    for (lua_Integer i = 0; i < n; i++) {
      if (codes[i] != PS_BOK) {
        s->misses++;
        continue;
      }
      s->misses++;
      total += bs->b[i].len;
      deserialize(L, 1, bs->b[i].data, bs->b[i].len, 0);
      ps_blob_release(&bs->b[i]);
      cache_add(L, 1, s, keys[i].data, keys[i].len, &vers[i]);
      lua_rawseti(L, 3, i + 1);
    }
    record(s, OP_GET, t0, total);
    lua_settop(L, 3);
  } else {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      if (do_get(L, 1, s, lua_gettop(L), 0, 0, NULL)) lua_rawseti(L, 3, i);
      lua_pop(L, 1);
    }
  }
  lua_pushinteger(L, n);
  lua_setfield(L, 3, "n");
  return 1;
}

static int store_config(lua_State *L) {
  ps_store_check(L, 1);
  ps_store_push_config(L, 1);
  return 1;
}

static int store_metrics(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  lua_createtable(L, 0, OP_N + 1);
  for (int i = 0; i < OP_N; i++) {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s->m[i].count);
    lua_setfield(L, -2, "count");
    lua_pushinteger(L, s->m[i].bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushnumber(L, s->m[i].total);
    lua_setfield(L, -2, "time_total");
    lua_pushnumber(L, s->m[i].max);
    lua_setfield(L, -2, "time_max");
    lua_setfield(L, -2, op_names[i]);
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, s->hits);
  lua_setfield(L, -2, "hits");
  lua_pushinteger(L, s->misses);
  lua_setfield(L, -2, "misses");
  lua_pushinteger(L, (lua_Integer)s->cache.count);
  lua_setfield(L, -2, "size");
  lua_setfield(L, -2, "cache");
  return 1;
}

/* Releases the backend and cache; safe on a half-built store, idempotent. */
static void release(ps_store *s) {
  if (s->ops && s->ctx) s->ops->close(s->ctx);
  s->ctx = NULL;
  s->ops = NULL;
  s->open = 0;
  ps_cache_free(&s->cache);
}

static int store_close(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  if (s->open) {
    push_registry(L);
    const char *name = store_name(L, 1);
    lua_getfield(L, -1, name);
    if (lua_rawequal(L, -1, 1)) {
      lua_pushnil(L);
      lua_setfield(L, -3, name);
    }
    lua_pop(L, 2);
  }
  release(s);
  lua_newtable(L);
  lua_setiuservalue(L, 1, UV_CACHE);
  return 0;
}

static int store_gc(lua_State *L) {
  release(lua_touserdata(L, 1));
  return 0;
}

static int store_tostring(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  lua_getiuservalue(L, 1, UV_CONFIG);
  lua_getfield(L, -1, "name");
  lua_getfield(L, -2, "kind");
  lua_pushfstring(L, "proxystore.Store: %s (%s%s)", lua_tostring(L, -2),
                  lua_tostring(L, -1), s->open ? "" : ", closed");
  return 1;
}

static int store_index(lua_State *L) {
  ps_store_check(L, 1);
  const char *field = lua_tostring(L, 2);
  if (field && (strcmp(field, "name") == 0 || strcmp(field, "kind") == 0)) {
    lua_getiuservalue(L, 1, UV_CONFIG);
    lua_getfield(L, -1, field);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static const luaL_Reg store_methods[] = {
  {"put", store_put},
  {"get", store_get},
  {"exists", store_exists},
  {"evict", store_evict},
  {"proxy", store_proxy},
  {"proxy_from_key", store_proxy_from_key},
  {"put_batch", store_put_batch},
  {"get_batch", store_get_batch},
  {"proxy_batch", store_proxy_batch},
  {"config", store_config},
  {"metrics", store_metrics},
  {"close", store_close},
  {NULL, NULL}};

static int l_random_key(lua_State *L) {
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  return 1;
}

static const luaL_Reg store_funcs[] = {
  {"random_key", l_random_key},
  {"new_store", l_new_store},
  {"get_store", l_get_store},
  {"set_store_factory", l_set_store_factory},
  {NULL, NULL}};

void ps_store_open(lua_State *L) {
  luaL_newmetatable(L, STORE_MT);
  lua_pushcfunction(L, store_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, store_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, store_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, store_close);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, store_methods);
  lua_setfield(L, -2, "__methods");
  lua_pop(L, 1);
  luaL_newmetatable(L, BLOBS_MT);
  lua_pushcfunction(L, blobs_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  /* One registry per Lua state, kept if the module is loaded again. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY) != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REGISTRY);
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, store_funcs, 0);
}
