/*
 * lifetime.c: the C side of lifetimes (lua/proxystore/lifetime.lua keeps
 * the bookkeeping): the `lifetime` option of store:put, store:proxy and
 * store:future, and the core functions the Lua object calls.
 *
 * A put attached to a lifetime with a lease is written with that lease
 * (what is left of it) in the same backend call (put_ex: Redis SET ... PX,
 * the file store's lease mark), so the object expires whoever dies, and
 * a put into a lifetime that has ended raises kind "closed" before
 * anything is written.
 */
#include <string.h>

#include "store.h"

#define LIFETIME_NAME "proxystore.Lifetime"

/* Calls lt:method(...) with nargs arguments on top; leaves nres results. */
static void call_method(lua_State *L, int lt, const char *method, int nargs,
                        int nres) {
  lua_getfield(L, lt, method);
  lua_insert(L, -nargs - 1);
  lua_pushvalue(L, lt);
  lua_insert(L, -nargs - 1);
  lua_call(L, nargs + 1, nres);
}

void ps_lifetime_begin(lua_State *L, int lt, ps_bput *o) {
  lt = lua_absindex(L, lt);
  int is = 0;
  if (lua_type(L, lt) == LUA_TTABLE &&
      luaL_getmetafield(L, lt, "__name") != LUA_TNIL) {
    is = lua_type(L, -1) == LUA_TSTRING &&
         strcmp(lua_tostring(L, -1), LIFETIME_NAME) == 0;
    lua_pop(L, 1);
  }
  if (!is)
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "option 'lifetime' must be a lifetime (ps.lifetime), "
                   "got %s", luaL_typename(L, lt));
  call_method(L, lt, "_lease_ms", 0, 1);   /* raises "closed" once ended */
  o->ttl_ms = (int64_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
}

void ps_lifetime_attach(lua_State *L, int lt, int sidx, int kidx) {
  lt = lua_absindex(L, lt);
  lua_pushvalue(L, sidx);
  lua_pushvalue(L, kidx);
  call_method(L, lt, "_attach", 2, 0);
}

/* core.store_expire(store, key, ms): the object's lease now ends ms from
   now; false when there is no object under key. */
static int l_store_expire(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key(L, 2, &klen);
  lua_Integer ms = luaL_checkinteger(L, 3);
  luaL_argcheck(L, ms > 0, 3, "a lease must be at least 1 ms");
  lua_settop(L, 2);
  lua_pushboolean(L, ps_store_do_expire(L, 1, s, 2, (int64_t)ms));
  return 1;
}

/* core.store_is_open(store) */
static int l_store_is_open(lua_State *L) {
  lua_pushboolean(L, ps_store_is_open(L, 1));
  return 1;
}

static const luaL_Reg lifetime_funcs[] = {
  {"store_expire", l_store_expire},
  {"store_is_open", l_store_is_open},
  {NULL, NULL}};

void ps_lifetime_open(lua_State *L) {
  luaL_setfuncs(L, lifetime_funcs, 0);
}
