/*
 * future.c: store futures, a proxy to a value not made yet.
 *
 * store:future(opts) reserves a key (nothing is written); future:set(v)
 * stores v under it with the backend's put_ex "only if absent, and wake
 * every waiter" (a second set finds the key taken: "already_set");
 * future:proxy() makes store proxies (PS_PROXY_FUTURE) that, at first
 * use, wait until the key is set and then resolve like any store proxy
 * (ps_store_do_get_wait: the backend's wait reads the value too);
 * future:result() does the same. How a backend wakes its waiters is its
 * own (Redis: a wake-up list; the file store: inotify); the local store
 * has nobody else to set a future, so waiting on an unset one raises at
 * once.
 *
 * A future is a userdata, so the codec writes it as a reference (like a
 * store proxy: config, key, flags, timeout, and future = true) and any
 * number of processes can receive, set or wait for it. One read from
 * untrusted input (ps.deserialize(s, {untrusted = true})) follows the
 * rules of an untrusted proxy: it only finds a store registered under its
 * name.
 *
 * User values: 1 the store (or its config table, for a future that came
 * from another process), 2 the key, 3 the lifetime or nil. A lifetime
 * does not travel; the end of its lease does (lease_end), so a copy set
 * in another process is leased too.
 */
#include <string.h>
#include <time.h>

#include "store.h"

#define FUTURE_MT "proxystore.StoreFuture"

typedef struct future {
  double timeout;          /* of its proxies' and result's waits; < 0 none */
  double lease_end;        /* wall-clock time the lease of its lifetime
                              ends (0: none): a copy elsewhere, which has
                              no lifetime, sets with what is left of it */
  unsigned char evict;     /* its proxies are single use */
  unsigned char set;       /* this object has set it */
  unsigned char untrusted; /* from untrusted input and not bound to a store
                              yet: only a registered store serves it */
} future;

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ps_future_is(lua_State *L, int idx) {
  return luaL_testudata(L, idx, FUTURE_MT) != NULL;
}

static future *check_future(lua_State *L, int idx) {
  return ps_checkudata(L, idx, FUTURE_MT);
}

/* Pushes a new future: store (or config) at sidx, key at kidx. */
static future *push_future(lua_State *L, int sidx, int kidx, double timeout,
                           int evict) {
  sidx = lua_absindex(L, sidx);
  kidx = lua_absindex(L, kidx);
  future *f = lua_newuserdatauv(L, sizeof *f, 3);
  f->timeout = timeout;
  f->lease_end = 0;
  f->evict = (unsigned char)(evict != 0);
  f->set = 0;
  f->untrusted = 0;
  luaL_setmetatable(L, FUTURE_MT);
  lua_pushvalue(L, sidx);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, kidx);
  lua_setiuservalue(L, -2, 2);
  return f;
}

/* Pushes the future's open store, found again by name or re-created from
   the config when it came from another process or was closed. An
   untrusted future only finds a registered store (as an untrusted proxy
   does); once bound to it, it is this process's future of that store. */
static void push_store(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 1) == LUA_TTABLE ||
      !ps_store_is_open(L, -1)) {
    future *f = lua_touserdata(L, idx);
    if (lua_type(L, -1) != LUA_TTABLE) {
      ps_store_push_config(L, -1);
      lua_remove(L, -2);
    }
    if (f->untrusted) ps_store_from_registry(L, -1);
    else ps_store_from_config(L, -1);
    lua_remove(L, -2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, 1);
    f->untrusted = 0;
  }
}

/* A wait bound option: nil (none, -1) or seconds >= 0. */
static double opt_timeout(lua_State *L, int idx, double def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (!lua_isnumber(L, idx) || !(lua_tonumber(L, idx) >= 0))
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "a future's timeout must be a number of seconds >= 0, "
                   "got %s", luaL_tolstring(L, idx, NULL));
  return lua_tonumber(L, idx);
}

/* ---- store:future ------------------------------------------------------- */

static const char *const future_opts[] = {"key", "timeout", "evict",
                                          "lifetime", NULL};

int ps_store_future(lua_State *L) {
  ps_store_check_open(L, 1);
  int opts = ps_store_opt_table(L, 2);
  lua_settop(L, 2);
  if (opts) {
    lua_pushnil(L);
    while (lua_next(L, opts)) {
      lua_pop(L, 1);
      const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                     : NULL;
      int known = 0;
      for (int i = 0; k && future_opts[i]; i++)
        known |= strcmp(k, future_opts[i]) == 0;
      if (!known)
        ps_error_raise(L, PS_ECONFIG, NULL,
                       "unknown option '%s' for store:future (key, timeout, "
                       "evict, lifetime)", luaL_tolstring(L, -1, NULL));
    }
  }
  int kidx;
  if (opts && lua_getfield(L, opts, "key") != LUA_TNIL) {
    size_t len;
    ps_store_check_key(L, -1, &len);
    kidx = lua_gettop(L);
  } else {
    char key[33];
    ps_key_random(key);
    if (opts) lua_pop(L, 1);
    lua_pushlstring(L, key, 32);
    kidx = lua_gettop(L);
  }
  double timeout = -1;
  int evict = 0, lt = 0;
  ps_bput o = {0, 0, 0, 0};
  if (opts) {
    lua_getfield(L, opts, "timeout");
    timeout = opt_timeout(L, -1, -1);
    lua_getfield(L, opts, "evict");
    evict = lua_toboolean(L, -1);
    lt = ps_store_opt_field(L, opts, "lifetime");
  }
  if (lt) {
    /* Attached now, so the lifetime's end evicts it, set or not. */
    ps_lifetime_begin(L, lt, &o);
    ps_lifetime_attach(L, lt, 1, kidx);
  }
  future *f = push_future(L, 1, kidx, timeout, evict);
  if (lt) {
    lua_pushvalue(L, lt);
    lua_setiuservalue(L, -2, 3);
    if (o.ttl_ms > 0) f->lease_end = wall_now() + (double)o.ttl_ms / 1000;
  }
  return 1;
}

/* ---- methods --------------------------------------------------------------- */

static int future_set(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 2);   /* a missing value sets nil */
  push_store(L, 1);                 /* 3 */
  lua_getiuservalue(L, 1, 2);       /* 4: key */
  size_t klen;
  const char *key = lua_tolstring(L, 4, &klen);
  const char *name = ps_store_name(L, 3);
  if (f->set)
    return ps_error_raise(L, PS_EALREADY_SET,
                          &(ps_errctx){.key = key, .keylen = klen,
                                       .store = name},
                          "future '%s' in store '%s' is already set (by this "
                          "future)", key, name);
  ps_bput o = {0, 1, 1, 0};
  if (lua_getiuservalue(L, 1, 3) != LUA_TNIL) {
    ps_lifetime_begin(L, 5, &o);   /* the lifetime knows best */
  } else if (f->lease_end > 0) {
    double left = f->lease_end - wall_now();
    if (left <= 0)
      return ps_error_raise(L, PS_ECLOSED,
                            &(ps_errctx){.key = key, .keylen = klen,
                                         .store = name},
                            "future '%s' in store '%s': the lease of its "
                            "lifetime has ended", key, name);
    o.ttl_ms = (int64_t)(left * 1000) + 1;   /* rounded up, no libm */
  }
  ps_store *s = ps_store_check_open(L, 3);
  if (ps_store_do_put_ex(L, 3, s, 2, 4, 0, &o) == PS_BEXISTS)
    return ps_error_raise(L, PS_EALREADY_SET,
                          &(ps_errctx){.key = key, .keylen = klen,
                                       .store = name},
                          "future '%s' in store '%s' is already set", key,
                          name);
  f->set = 1;
  return 0;
}

static int future_proxy(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, 1, 2);
  ps_proxy_push_store_ref_ex(L, 2, 3,
                             PS_PROXY_FUTURE | (f->evict ? PS_PROXY_EVICT : 0) |
                                 (f->untrusted ? PS_PROXY_UNTRUSTED : 0),
                             f->timeout);
  return 1;
}

static int future_result(lua_State *L) {
  future *f = check_future(L, 1);
  double timeout = opt_timeout(L, 2, f->timeout);
  lua_settop(L, 1);
  push_store(L, 1);               /* 2 */
  lua_getiuservalue(L, 1, 2);     /* 3 */
  ps_store_resolve_ex(L, 2, 3, PS_PROXY_FUTURE, 0, NULL, timeout);
  return 1;
}

static int future_done(lua_State *L) {
  check_future(L, 1);
  lua_settop(L, 1);
  push_store(L, 1);
  lua_getfield(L, 2, "exists");
  lua_pushvalue(L, 2);
  lua_getiuservalue(L, 1, 2);
  lua_call(L, 2, 1);
  return 1;
}

static int future_index(lua_State *L) {
  check_future(L, 1);
  const char *field = lua_tostring(L, 2);
  if (field && strcmp(field, "key") == 0) {
    lua_getiuservalue(L, 1, 2);
    return 1;
  }
  if (field && strcmp(field, "store") == 0) {
    push_store(L, 1);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int future_tostring(lua_State *L) {
  check_future(L, 1);
  lua_getiuservalue(L, 1, 1);
  if (lua_type(L, -1) != LUA_TTABLE) {
    ps_store_push_config(L, -1);
    lua_remove(L, -2);
  }
  lua_getfield(L, -1, "name");
  lua_getiuservalue(L, 1, 2);
  lua_pushfstring(L, "proxystore.StoreFuture: key=%s store=%s",
                  lua_tostring(L, -1), lua_tostring(L, -2));
  return 1;
}

/* ---- references, for the codec --------------------------------------------- */

void ps_future_push_reference(lua_State *L, int idx) {
  future *f = check_future(L, idx);
  idx = lua_absindex(L, idx);
  lua_createtable(L, 0, 5);
  lua_getiuservalue(L, idx, 1);
  if (lua_type(L, -1) != LUA_TTABLE) {
    ps_store_push_config(L, -1);
    lua_remove(L, -2);
  }
  lua_setfield(L, -2, "config");
  lua_getiuservalue(L, idx, 2);
  lua_setfield(L, -2, "key");
  lua_pushinteger(L, (f->evict ? PS_PROXY_EVICT : 0) |
                     (f->untrusted ? PS_PROXY_UNTRUSTED : 0));
  lua_setfield(L, -2, "flags");
  if (f->timeout >= 0) {
    lua_pushnumber(L, f->timeout);
    lua_setfield(L, -2, "timeout");
  }
  if (f->lease_end > 0) {
    lua_pushnumber(L, f->lease_end);
    lua_setfield(L, -2, "lease_end");
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "future");
}

void ps_future_from_reference(lua_State *L, int untrusted) {
  int t = lua_gettop(L);
  int ok = lua_type(L, t) == LUA_TTABLE &&
           lua_getfield(L, t, "config") == LUA_TTABLE &&
           lua_getfield(L, -1, "name") == LUA_TSTRING &&
           lua_getfield(L, -2, "kind") == LUA_TSTRING &&
           lua_getfield(L, t, "key") == LUA_TSTRING &&
           lua_getfield(L, t, "flags") == LUA_TNUMBER && lua_isinteger(L, -1);
  if (ok) {
    int type = lua_getfield(L, t, "timeout");
    ok = type == LUA_TNIL || (type == LUA_TNUMBER && lua_tonumber(L, -1) >= 0);
  }
  if (ok) {
    /* A wall-clock time, seconds: past 1e12 (year 33000) it is no lease
       end a lifetime makes (at most 1e10 s from now), and its milliseconds
       left would not fit set's integer. */
    int type = lua_getfield(L, t, "lease_end");
    ok = type == LUA_TNIL || (type == LUA_TNUMBER && lua_tonumber(L, -1) > 0 &&
                              lua_tonumber(L, -1) <= 1e12);
  }
  if (!ok)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "malformed future reference (needs config.name, "
                   "config.kind, key, flags, a timeout >= 0 or none, a "
                   "lease_end in (0, 1e12] or none)");
  double timeout = lua_isnil(L, t + 6) ? -1 : lua_tonumber(L, t + 6);
  double lease_end = lua_isnil(L, t + 7) ? 0 : lua_tonumber(L, t + 7);
  lua_Integer flags = lua_tointeger(L, t + 5);
  int evict = (flags & PS_PROXY_EVICT) != 0;
  /* From untrusted input (or relayed from there): only the store's name
     and kind are kept, and nothing carried that deletes or expires data
     (single-use proxies, a lease) is obeyed; its wait bound is, a wait
     only reads. */
  untrusted = untrusted || (flags & PS_PROXY_UNTRUSTED);
  if (untrusted) {
    ps_proxy_name_only(L, t + 1);
    evict = 0;
    lease_end = 0;
  }
  future *f = push_future(L, t + 1, t + 4, timeout, evict);
  f->lease_end = lease_end;
  f->untrusted = (unsigned char)(untrusted != 0);
  lua_replace(L, t);
  lua_settop(L, t);
}

static const luaL_Reg future_methods[] = {
  {"set", future_set},
  {"proxy", future_proxy},
  {"result", future_result},
  {"done", future_done},
  {NULL, NULL}};

void ps_future_open(lua_State *L) {
  luaL_newmetatable(L, FUTURE_MT);
  lua_pushliteral(L, FUTURE_MT);
  lua_setfield(L, -2, "__metatable");
  lua_pushcfunction(L, future_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, future_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, future_methods);
  lua_setfield(L, -2, "__methods");
  lua_pop(L, 1);
}
