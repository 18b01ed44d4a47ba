/*
 * owned.c: owned proxies and ps.clone.
 *
 * store:proxy(obj, {owned = true}) records the key in the store's table
 * of owned keys (user value UV_OWNED: key -> the pid that owns it). The
 * object is evicted by whichever comes first: the proxy's __gc (proxy.c,
 * which calls ps_store_drop_owned), the store's close, or the store's
 * __gc when the Lua state closes at exit. Only the owning process evicts:
 * a forked child holds copies of its parent's proxies and stores, and a
 * proxy serialized to another process arrives without the flag.
 */
#include <string.h>
#include <unistd.h>

#include "store.h"

void ps_store_own(lua_State *L, int sidx, int kidx) {
  lua_getiuservalue(L, sidx, UV_OWNED);
  lua_pushvalue(L, kidx);
  lua_pushinteger(L, (lua_Integer)getpid());
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* pcall'ed: evicts key 2 from store 1. */
static int evict_key(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  ps_store_do_evict(L, 1, s, 2);
  return 0;
}

static void evict_quietly(lua_State *L, int sidx, int kidx) {
  lua_pushcfunction(L, evict_key);
  lua_pushvalue(L, sidx);
  lua_pushvalue(L, kidx);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
}

void ps_store_drop_owned(lua_State *L, int sidx, int kidx) {
  sidx = lua_absindex(L, sidx);
  kidx = lua_absindex(L, kidx);
  if (luaL_testudata(L, sidx, STORE_MT) == NULL || !ps_store_is_open(L, sidx))
    return;   /* a closed store evicted what it owned when it closed */
  lua_getiuservalue(L, sidx, UV_OWNED);
  lua_pushvalue(L, kidx);
  lua_rawget(L, -2);
  int mine = lua_tointeger(L, -1) == (lua_Integer)getpid();
  lua_pop(L, 1);
  if (mine) {
    lua_pushvalue(L, kidx);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  if (mine) evict_quietly(L, sidx, kidx);
}

void ps_store_evict_owned(lua_State *L, int sidx) {
  sidx = lua_absindex(L, sidx);
  if (lua_getiuservalue(L, sidx, UV_OWNED) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  int owned = lua_gettop(L);
  lua_Integer me = (lua_Integer)getpid();
  lua_newtable(L);   /* the keys to evict: the table must not change while
                        it is walked */
  int keys = lua_gettop(L);
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, owned)) {
    if (lua_tointeger(L, -1) == me) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, keys, ++n);
    }
    lua_pop(L, 1);
  }
  lua_newtable(L);
  lua_setiuservalue(L, sidx, UV_OWNED);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, keys, i);
    evict_quietly(L, sidx, lua_gettop(L));
    lua_pop(L, 1);
  }
  lua_settop(L, owned - 1);
}

/* ---- ps.clone ---------------------------------------------------------------- */

/*
 * ps.clone(p): the object of the store proxy p copied under a new key of
 * the same store (byte backends copy the stored bytes, never deserialize
 * them; the local store shares the value), and a new owned proxy for it.
 * A future's proxy waits for its future first.
 */
static int l_clone(lua_State *L) {
  double timeout = -1;
  unsigned flags = ps_proxy_flags(L, 1, &timeout);
  if (!ps_proxy_is_reference(L, 1) || ps_future_is(L, 1))
    return ps_error_raise(L, PS_ECONFIG, NULL,
                          "ps.clone needs a store proxy, got %s",
                          luaL_typename(L, 1));
  lua_settop(L, 1);
  ps_proxy_push_store(L, 1);        /* 2 */
  lua_getiuservalue(L, 1, 3);       /* 3: key */
  ps_store *s = ps_store_check_open(L, 2);
  if (flags & PS_PROXY_FUTURE) ps_store_wait(L, 2, 3, timeout);
  char nk[33];
  ps_key_random(nk);
  lua_pushlstring(L, nk, 32);       /* 4: the copy's key */
  size_t klen;
  const char *key = lua_tolstring(L, 3, &klen);
  int found = 1;
  if (s->ops == NULL) {
    found = ps_store_do_get(L, 2, s, 3, 0, 0, NULL);
    if (found) ps_store_do_put(L, 2, s, lua_gettop(L), 4, 0);
  } else {
    double t0 = ps_store_now();
    blobs *bs = ps_blobs_push(L, 1);
    ps_berr err = {0, ""};
    int rc = s->ops->get(s->ctx, ps_key_of(key, klen), NULL, &bs->b[0], NULL,
                         &err);
    found = rc != PS_BNOTFOUND;
    if (found && rc != PS_BOK)
      ps_store_raise_backend(L, 2, s, &err, key, klen);
    ps_store_record(s, OP_GET, t0, bs->b[0].len);
    if (found) {
      t0 = ps_store_now();
      rc = s->ops->put(s->ctx, ps_key_of(nk, 32), bs->b[0].data,
                       bs->b[0].len, NULL, &err);
      size_t len = bs->b[0].len;
      ps_blob_release(&bs->b[0]);
      if (rc != PS_BOK) ps_store_raise_backend(L, 2, s, &err, nk, 32);
      ps_store_record(s, OP_PUT, t0, len);
    }
  }
  if (!found) {
    const char *name = ps_store_name(L, 2);
    return ps_error_raise(L, PS_EMISSING_KEY,
                          &(ps_errctx){.key = key, .keylen = klen,
                                       .store = name},
                          "cannot clone: no object under key '%s' in store "
                          "'%s'", key, name);
  }
  ps_store_own(L, 2, 4);
  ps_proxy_push_store_ref(L, 2, 4,
                          (flags & (PS_PROXY_EVICT | PS_PROXY_STRICT)) |
                              PS_PROXY_OWNED);
  return 1;
}

static const luaL_Reg owned_funcs[] = {
  {"clone", l_clone},
  {NULL, NULL}};

void ps_owned_open(lua_State *L) {
  luaL_setfuncs(L, owned_funcs, 0);
}
