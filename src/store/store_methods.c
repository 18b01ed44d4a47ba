/*
 * store_methods.c: the methods of a store userdata as Lua sees them
 * (store:put, :get, :proxy, :metrics, :close, ...), its metatable, and the
 * option helpers they share with store_batch.c.
 */
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "prefetch.h"

static const char *const op_names[OP_N] = {"put", "get", "exists", "evict"};

/* Key for a put: opts.key at opts (0: none), else 128 random bits
 * (*fresh set: nothing can be stored under it yet). */
static int push_put_key(lua_State *L, int opts, int *fresh) {
  *fresh = 0;
  if (opts && lua_getfield(L, opts, "key") != LUA_TNIL) {
    size_t len;
    ps_store_check_key(L, lua_gettop(L), &len);
    return lua_gettop(L);
  }
  if (opts) lua_pop(L, 1);
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  *fresh = 1;
  return lua_gettop(L);
}

int ps_store_opt_table(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  ps_checktype(L, idx, LUA_TTABLE);
  return idx;
}

int ps_store_opt_field(lua_State *L, int opts, const char *field) {
  if (!opts) return 0;
  lua_getfield(L, opts, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return lua_gettop(L);
}

unsigned ps_store_proxy_flags(lua_State *L, int opts) {
  unsigned flags = 0;
  if (!opts) return 0;
  if (lua_getfield(L, opts, "evict"), lua_toboolean(L, -1)) flags |= PS_PROXY_EVICT;
  if (lua_getfield(L, opts, "strict"), lua_toboolean(L, -1)) flags |= PS_PROXY_STRICT;
  lua_pop(L, 2);
  return flags;
}

/* Puts the value at 2 under the key at k with the serializer and lifetime
   options of put and proxy (a lifetime's lease goes with the write); fresh
   as push_put_key says. */
static void put_with_opts(lua_State *L, ps_store *s, int opts, int k,
                          int fresh) {
  int ser = ps_store_opt_field(L, opts, "serializer");
  int lt = ps_store_opt_field(L, opts, "lifetime");
  ps_bput o = {0, 0, 0, fresh};
  if (lt == 0) {
    ps_store_do_put_ex(L, 1, s, 2, k, ser, &o);
    return;
  }
  ps_lifetime_begin(L, lt, &o);   /* "closed" before anything is written */
  ps_store_do_put_ex(L, 1, s, 2, k, ser, &o);
  ps_lifetime_attach(L, lt, 1, k);
}

static int store_put(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  ps_checkany(L, 2);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  int fresh;
  int k = push_put_key(L, opts, &fresh);
  put_with_opts(L, s, opts, k, fresh);
  lua_pushvalue(L, k);
  return 1;
}

static int store_get(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key_arg(L, 2, 1, &klen);
  lua_settop(L, 3);
  if (!ps_store_do_get(L, 1, s, 2, 0, 0, NULL)) lua_pushvalue(L, 3);
  return 1;
}

static int store_exists(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  const char *key = ps_store_check_key_arg(L, 2, 1, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  int found;
  if (s->ops == NULL) {
    ps_store_lease_over(L, 1, s, 2);
    lua_getiuservalue(L, 1, UV_LOCAL);
    lua_pushvalue(L, 2);
    found = lua_rawget(L, -2) != LUA_TNIL;
  } else {
    ps_berr err = {0, ""};
    if (s->ops->exists(s->ctx, ps_key_of(key, klen), &found, &err) != PS_BOK)
      ps_store_raise_backend(L, 1, s, &err, key, klen);
  }
  ps_store_record(s, OP_EXISTS, t0, 0);
  lua_pushboolean(L, found);
  return 1;
}

static int store_evict(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key_arg(L, 2, 1, &klen);
  ps_store_do_evict(L, 1, s, 2);
  return 0;
}

/* Gives the proxy on top its per-proxy deserializer from opts, if any. */
static void set_proxy_deserializer(lua_State *L, int opts) {
  int d = ps_store_opt_field(L, opts, "deserializer");
  if (d == 0) return;
  if (!lua_isfunction(L, d))
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "option 'deserializer' must be a function, got %s",
                   luaL_typename(L, d));
  lua_setiuservalue(L, -2, 1);
}

static int store_proxy(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  ps_checkany(L, 2);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  int fresh;
  int k = push_put_key(L, opts, &fresh);
  put_with_opts(L, s, opts, k, fresh);
  unsigned flags = ps_store_proxy_flags(L, opts);
  if (opts && (lua_getfield(L, opts, "owned"), lua_toboolean(L, -1))) {
    flags |= PS_PROXY_OWNED;
    ps_store_own(L, 1, k);
  }
  ps_proxy_push_store_ref(L, 1, k, flags);
  set_proxy_deserializer(L, opts);
  return 1;
}

static int store_proxy_from_key(lua_State *L) {
  ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key_arg(L, 2, 0, &klen);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  ps_proxy_push_store_ref(L, 1, 2, ps_store_proxy_flags(L, opts));
  set_proxy_deserializer(L, opts);
  return 1;
}

/* ---- internal: for the pool, which measures a value before it puts it --- */

static ps_store *check_bytes_store(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  if (s->ops == NULL)
    ps_error_raise(L, PS_ECONFIG, NULL, "a local store holds no bytes");
  return s;
}

/*
 * store:_encode(v) -> box, size: v as a put would store it (the envelope
 * byte and the store's serializer) in a buffer box; size is the payload's.
 * With _put_encoded, a value is encoded once even when its size decides
 * whether it is put at all.
 */
static int store_encode(lua_State *L) {
  ps_store *s = check_bytes_store(L);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  ps_buf *b = ps_envelope_serialize(L, 1, s, 2, 0);
  lua_pushinteger(L, (lua_Integer)b->len - 1);
  return 2;
}

/* store:_put_encoded(box [, opts]) -> key: puts a box from _encode (its
 * memory is released); opts: key. */
static int store_put_encoded(lua_State *L) {
  ps_store *s = check_bytes_store(L);
  ps_buf *b = ps_buf_check(L, 2);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  if (b->data == NULL) luaL_argerror(L, 2, "an encoded box already put");
  int fresh;
  int k = push_put_key(L, opts, &fresh);
  ps_store_put_bytes(L, 1, s, k, b, fresh);
  lua_pushvalue(L, k);
  return 1;
}

/* store:_get_copy(key) -> the object, decoded afresh: the cache is neither
 * read nor filled (a pool worker's own copy of a shared table). */
static int store_get_copy(lua_State *L) {
  check_bytes_store(L);
  size_t klen;
  ps_store_check_key(L, 2, &klen);
  lua_settop(L, 2);
  ps_store_resolve(L, 1, 2, PS_GET_FRESH);
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
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, s->hits);
  lua_setfield(L, -2, "hits");
  lua_pushinteger(L, s->misses);
  lua_setfield(L, -2, "misses");
  lua_pushinteger(L, (lua_Integer)s->cache.count);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)s->cache.bytes);
  lua_setfield(L, -2, "bytes");
  lua_setfield(L, -2, "cache");
  return 1;
}

/* Releases the backend, its background prefetch contexts and the cache;
 * safe on a half-built store, idempotent. */
static void release(ps_store *s) {
  if (s->ops && s->ctx) {
    ps_prefetch_forget(s->ops, &s->bcfg);
    s->ops->close(s->ctx);
  }
  if (s->ops && s->wctx) s->ops->close(s->wctx);
  s->ctx = s->wctx = NULL;
  s->ops = NULL;
  s->open = 0;
  ps_cache_free(&s->cache);
  free(s->cluster);
  s->cluster = NULL;
  s->bcfg.cluster = NULL;
}

static int store_close(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  if (s->open) {
    ps_store_evict_owned(L, 1);   /* its owned proxies' objects go with it */
    ps_store_unregister(L, 1);
  }
  release(s);
  lua_newtable(L);
  lua_setiuservalue(L, 1, UV_CACHE);
  return 0;
}

static int store_gc(lua_State *L) {
  ps_store *s = ps_checkudata(L, 1, STORE_MT);
  /* At exit (lua_close) the owned objects of a store still open go. */
  if (s->open) ps_store_evict_owned(L, 1);
  release(s);
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
  {"future", ps_store_future},
  {"put_batch", ps_store_put_batch},
  {"get_batch", ps_store_get_batch},
  {"proxy_batch", ps_store_proxy_batch},
  {"config", store_config},
  {"metrics", store_metrics},
  {"_encode", store_encode},
  {"_put_encoded", store_put_encoded},
  {"_get_copy", store_get_copy},
  {"close", store_close},
  {NULL, NULL}};

void ps_store_methods_open(lua_State *L) {
  luaL_newmetatable(L, STORE_MT);
  /* getmetatable(store) must not hand out __gc to be called on any value */
  lua_pushliteral(L, STORE_MT);
  lua_setfield(L, -2, "__metatable");
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
}
