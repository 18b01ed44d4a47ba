/*
 * proxy.c: the proxy userdata.
 *
 * A proxy is a small userdata with three user values:
 *   1  the target once resolved; before that the factory (function
 *      proxies) or an optional per-proxy deserializer (store proxies)
 *   2  store proxies: the store userdata, or the store's config table when
 *      the proxy arrived from another process
 *   3  store proxies: the key
 * Every metamethod resolves, then forwards to the target. A proxy of a table
 * that is used repeatedly gets a metatable of its own whose __index and
 * __newindex are the target itself, so the VM reaches the target without
 * calling C; a fresh proxy keeps the shared metatable so creation stays cheap.
 *
 * A future's proxy (PS_PROXY_FUTURE) waits at resolve until its future is
 * set, within its timeout. An owned proxy (PS_PROXY_OWNED) evicts its
 * object when collected, in the process that made it only: a forked child
 * holds copies of its parent's proxies, and a copy sent elsewhere carries
 * no ownership (the flag never travels).
 */
#include <string.h>
#include <unistd.h>

#include "ps.h"

#define PROXY_MT "proxystore.Proxy"
/* The same with __gc, for proxies that own a background fetch: only they
 * need a finalizer, and finalizers make every collection of a proxy cost
 * an extra cycle. */
#define PROXY_GC_MT "proxystore.Proxy.gc"
#define WRAPPERS "proxystore.method_wrappers"

/* Uses of a table proxy through C before it gets its own metatable. */
#define PROMOTE_AFTER 8

const char ps_proxy_tag = 0;

enum { UNRESOLVED, RESOLVING, RESOLVED };
#define STORE_PROXY 0x80

typedef struct proxy {
  unsigned char state;
  unsigned char flags;      /* PS_PROXY_* | STORE_PROXY */
  unsigned char promoted;
  unsigned char uses;
  pid_t owner;              /* PS_PROXY_OWNED: the process that owns it */
  ps_prefetch_slot prefetch;
  double timeout;           /* PS_PROXY_FUTURE: wait bound (< 0: none) */
} proxy;

static proxy *toproxy(lua_State *L, int idx) {
  proxy *p = lua_touserdata(L, idx);
  if (p == NULL || lua_islightuserdata(L, idx) || !lua_getmetatable(L, idx))
    return NULL;
  int is = lua_rawgetp(L, -1, &ps_proxy_tag) == LUA_TBOOLEAN;
  lua_pop(L, 2);
  return is ? p : NULL;
}

static proxy *checkproxy(lua_State *L, int idx) {
  proxy *p = toproxy(L, idx);
  if (p == NULL) ps_typeerror(L, idx, "proxy");
  return p;
}

int ps_proxy_is(lua_State *L, int idx) { return toproxy(L, idx) != NULL; }

static proxy *newproxy(lua_State *L, unsigned flags) {
  proxy *p = lua_newuserdatauv(L, sizeof *p, 3);
  memset(p, 0, sizeof *p);
  p->flags = (unsigned char)flags;
  p->timeout = -1;
  luaL_setmetatable(L, PROXY_MT);
  return p;
}

/* ---- resolution ------------------------------------------------------ */

/*
 * Pushes the open store of the store proxy at idx. A proxy from another
 * process, or whose store was closed, finds the store by name or creates it
 * from the config (so a re-created store serves old proxies). An untrusted
 * proxy only finds a registered store; once bound to it, it is an ordinary
 * proxy of this process's store (its own config, no carried flags).
 */
void ps_proxy_push_store(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 2) == LUA_TTABLE ||
      !ps_store_is_open(L, -1)) {
    proxy *p = lua_touserdata(L, idx);
    if (lua_type(L, -1) != LUA_TTABLE) {
      ps_store_push_config(L, -1);
      lua_remove(L, -2);
    }
    if (p->flags & PS_PROXY_UNTRUSTED) ps_store_from_registry(L, -1);
    else ps_store_from_config(L, -1);
    lua_remove(L, -2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, 2);
    p->flags &= (unsigned char)~PS_PROXY_UNTRUSTED;
  }
}

/* pcall'ed: resolves the store proxy at 1 and returns its target. */
static int resolve_store(lua_State *L) {
  proxy *p = lua_touserdata(L, 1);
  ps_proxy_push_store(L, 1);
  lua_getiuservalue(L, 1, 3);   /* 3: key */
  lua_getiuservalue(L, 1, 1);   /* 4: deserializer or nil */
  ps_store_resolve_ex(L, 2, 3, p->flags, lua_isnil(L, 4) ? 0 : 4,
                      &p->prefetch, p->timeout);
  return 1;
}

static int call_factory(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  lua_call(L, 0, 1);
  return 1;
}

static void resolve_factory(lua_State *L, int idx, proxy *p);

/* Pushes the target of the proxy p at idx, resolving it first. */
static void push_target(lua_State *L, int idx, proxy *p) {
  if (p->state == RESOLVED) {
    lua_getiuservalue(L, idx, 1);
    return;
  }
  if (p->state == RESOLVING)
    ps_error_raise(L, PS_ERESOLVE, NULL,
                   "proxy used by its own factory while resolving");
  idx = lua_absindex(L, idx);
  if (p->flags & STORE_PROXY) {
    /*
     * No user factory runs here, so a failure simply leaves the proxy
     * UNRESOLVED and no pcall is needed: the error goes straight up.
     */
    lua_pushcfunction(L, resolve_store);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
  } else {
    resolve_factory(L, idx, p);
  }
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 1);
  p->state = RESOLVED;
}

/* Runs a Lua factory; RESOLVING catches a factory that uses its proxy. */
static void resolve_factory(lua_State *L, int idx, proxy *p) {
  p->state = RESOLVING;
  lua_pushcfunction(L, call_factory);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    p->state = UNRESOLVED;
    if (ps_error_is(L, -1)) lua_error(L);   /* already says what failed */
    ps_error_push(L, PS_ERESOLVE, &(ps_errctx){.cause = -1},
                  "proxy factory failed");
    lua_error(L);
  }
}

void ps_proxy_push_target(lua_State *L, int idx) {
  proxy *p = toproxy(L, idx);
  if (p) push_target(L, idx, p);
  else lua_pushvalue(L, idx);
}

/* Replaces the proxy at idx, if it is one, with its target. */
static void unwrap(lua_State *L, int idx) {
  proxy *p = toproxy(L, idx);
  if (p == NULL) return;
  push_target(L, idx, p);
  lua_replace(L, idx);
}

/* ---- the per-proxy metatable of a table target ------------------------ */

static void promote(lua_State *L, int idx, proxy *p) {
  p->promoted = 1;
  idx = lua_absindex(L, idx);
  lua_createtable(L, 0, 32);
  lua_getmetatable(L, idx);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -5);
  }
  lua_pop(L, 1);
  lua_getiuservalue(L, idx, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, idx);
}

/* Counts a C-level use of a resolved table proxy; promotes when hot. */
static void count_use(lua_State *L, int idx, proxy *p) {
  if (!p->promoted && ++p->uses >= PROMOTE_AFTER &&
      lua_type(L, -1) == LUA_TTABLE)
    promote(L, idx, p);
}

/* ---- method calls on non-table targets ------------------------------- */

/*
 * p:upper() looks up "upper" through the proxy, then calls it with the
 * proxy as self. For string and userdata targets the method wants the real
 * value, so functions found on them come back wrapped: the wrapper swaps a
 * proxy in first position for its target.
 */
static int method_wrapper(lua_State *L) {
  if (lua_gettop(L) >= 1) unwrap(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static void push_wrapped(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, WRAPPERS);
  lua_pushvalue(L, -2);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, method_wrapper, 1);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);   /* wrappers[fn] = wrapper */
  }
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* ---- metamethods ----------------------------------------------------- */

static int mm_index(lua_State *L) {
  proxy *p = lua_touserdata(L, 1);
  push_target(L, 1, p);
  int t = lua_type(L, -1);
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  if (t == LUA_TTABLE) {
    lua_insert(L, -2);
    count_use(L, 1, p);
    lua_pop(L, 1);
  } else if (lua_type(L, -1) == LUA_TFUNCTION &&
             (t == LUA_TSTRING || t == LUA_TUSERDATA)) {
    push_wrapped(L);
  }
  return 1;
}

static int mm_newindex(lua_State *L) {
  proxy *p = lua_touserdata(L, 1);
  push_target(L, 1, p);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_settable(L, -3);
  count_use(L, 1, p);
  return 0;
}

static int mm_call(lua_State *L) {
  unwrap(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int mm_len(lua_State *L) {
  unwrap(L, 1);
  lua_len(L, 1);
  return 1;
}

static int mm_concat(lua_State *L) {
  unwrap(L, 1);
  unwrap(L, 2);
  lua_concat(L, 2);
  return 1;
}

#define ARITH(name, op)                  \
  static int name(lua_State *L) {        \
    unwrap(L, 1);                        \
    unwrap(L, 2);                        \
    lua_settop(L, 2);                    \
    lua_arith(L, op);                    \
    return 1;                            \
  }
ARITH(mm_add, LUA_OPADD)
ARITH(mm_sub, LUA_OPSUB)
ARITH(mm_mul, LUA_OPMUL)
ARITH(mm_div, LUA_OPDIV)
ARITH(mm_mod, LUA_OPMOD)
ARITH(mm_pow, LUA_OPPOW)
ARITH(mm_idiv, LUA_OPIDIV)
ARITH(mm_band, LUA_OPBAND)
ARITH(mm_bor, LUA_OPBOR)
ARITH(mm_bxor, LUA_OPBXOR)
ARITH(mm_shl, LUA_OPSHL)
ARITH(mm_shr, LUA_OPSHR)

#define UNARY(name, op)                  \
  static int name(lua_State *L) {        \
    unwrap(L, 1);                        \
    lua_settop(L, 1);                    \
    lua_arith(L, op);                    \
    return 1;                            \
  }
UNARY(mm_unm, LUA_OPUNM)
UNARY(mm_bnot, LUA_OPBNOT)

#define COMPARE(name, op)                          \
  static int name(lua_State *L) {                  \
    unwrap(L, 1);                                  \
    unwrap(L, 2);                                  \
    lua_pushboolean(L, lua_compare(L, 1, 2, op));  \
    return 1;                                      \
  }
COMPARE(mm_eq, LUA_OPEQ)
COMPARE(mm_lt, LUA_OPLT)
COMPARE(mm_le, LUA_OPLE)

static int mm_tostring(lua_State *L) {
  unwrap(L, 1);
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static int target_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

static int mm_pairs(lua_State *L) {
  unwrap(L, 1);
  if (luaL_getmetafield(L, 1, "__pairs") != LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_call(L, 1, 3);
    return 3;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushcfunction(L, target_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int mm_gc(lua_State *L) {
  proxy *p = toproxy(L, 1);
  if (p == NULL) return 0;
  ps_prefetch_slot_free(&p->prefetch);
  if ((p->flags & PS_PROXY_OWNED) && p->owner == getpid()) {
    p->flags &= (unsigned char)~PS_PROXY_OWNED;   /* once */
    lua_settop(L, 1);
    lua_getiuservalue(L, 1, 2);
    lua_getiuservalue(L, 1, 3);
    ps_store_drop_owned(L, 2, 3);
  }
  return 0;
}

/* ---- library functions ----------------------------------------------- */

static int is_callable(lua_State *L, int idx) {
  if (lua_isfunction(L, idx)) return 1;
  int has = luaL_getmetafield(L, idx, "__call") != LUA_TNIL;
  if (has) lua_pop(L, 1);
  return has;
}

static int l_proxy(lua_State *L) {
  if (!is_callable(L, 1)) ps_typeerror(L, 1, "callable factory");
  lua_settop(L, 1);
  newproxy(L, 0);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

void ps_proxy_push_store_ref(lua_State *L, int store_idx, int key_idx,
                             unsigned flags) {
  ps_proxy_push_store_ref_ex(L, store_idx, key_idx, flags, -1);
}

void ps_proxy_push_store_ref_ex(lua_State *L, int store_idx, int key_idx,
                                unsigned flags, double timeout) {
  store_idx = lua_absindex(L, store_idx);
  key_idx = lua_absindex(L, key_idx);
  proxy *p = newproxy(L, (flags & (PS_PROXY_TRAVELS | PS_PROXY_OWNED)) |
                             STORE_PROXY);
  if (flags & PS_PROXY_FUTURE) p->timeout = timeout;
  if (flags & PS_PROXY_OWNED) {
    p->owner = getpid();
    luaL_setmetatable(L, PROXY_GC_MT);   /* evicts when collected */
  }
  lua_pushvalue(L, store_idx);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, key_idx);
  lua_setiuservalue(L, -2, 3);
}

static int l_is_proxy(lua_State *L) {
  lua_pushboolean(L, toproxy(L, 1) != NULL);
  return 1;
}

static int l_is_resolved(lua_State *L) {
  proxy *p = toproxy(L, 1);
  lua_pushboolean(L, p != NULL && p->state == RESOLVED);
  return 1;
}

static int l_resolve(lua_State *L) {
  proxy *p = checkproxy(L, 1);
  lua_settop(L, 1);
  push_target(L, 1, p);
  lua_settop(L, 1);
  return 1;
}

static int l_resolve_async(lua_State *L) {
  proxy *p = checkproxy(L, 1);
  lua_settop(L, 1);
  if (p->state != UNRESOLVED || !(p->flags & STORE_PROXY)) return 1;
  ps_proxy_push_store(L, 1);
  lua_getiuservalue(L, 1, 3);
  ps_store_prefetch(L, 2, 3, p->flags, p->timeout, &p->prefetch);
  lua_settop(L, 1);
  if (p->prefetch) luaL_setmetatable(L, PROXY_GC_MT);
  return 1;
}

static int l_extract(lua_State *L) {
  lua_settop(L, 1);
  ps_proxy_push_target(L, 1);
  return 1;
}

static int l_type(lua_State *L) {
  ps_checkany(L, 1);
  lua_settop(L, 1);
  ps_proxy_push_target(L, 1);
  lua_pushstring(L, luaL_typename(L, -1));
  return 1;
}

int ps_proxy_push_key(lua_State *L, int idx) {
  proxy *p = toproxy(L, idx);
  if (p == NULL || !(p->flags & STORE_PROXY)) return 0;
  lua_getiuservalue(L, idx, 3);
  return 1;
}

static int l_key(lua_State *L) {
  proxy *p = toproxy(L, 1);
  if (p == NULL || !(p->flags & STORE_PROXY)) lua_pushnil(L);
  else lua_getiuservalue(L, 1, 3);
  return 1;
}

/* Pushes the config table of the store proxy at idx. */
static void push_proxy_config(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getiuservalue(L, idx, 2) != LUA_TTABLE) {
    ps_store_push_config(L, -1);
    lua_remove(L, -2);
  }
}

static int l_repr(lua_State *L) {
  proxy *p = checkproxy(L, 1);
  const char *state = p->state == RESOLVED ? "resolved" : "unresolved";
  if (!(p->flags & STORE_PROXY)) {
    if (p->state == RESOLVED)
      lua_pushfstring(L, "proxystore.Proxy(factory, resolved, %s)",
                      luaL_typename(L, (lua_getiuservalue(L, 1, 1), -1)));
    else
      lua_pushliteral(L, "proxystore.Proxy(factory, unresolved)");
    return 1;
  }
  /* a background fetch (ps.resolve_async) still running, or done */
  const char *bg = "";
  if (p->state != RESOLVED && p->prefetch)
    bg = ps_prefetch_slot_done(&p->prefetch) ? ", fetched" : ", fetching";
  push_proxy_config(L, 1);
  lua_getfield(L, -1, "kind");
  lua_getfield(L, -2, "name");
  lua_getiuservalue(L, 1, 3);
  lua_pushfstring(L, "proxystore.Proxy(store=%s:%s, key=%s, %s%s%s%s%s%s%s)",
                  lua_tostring(L, -3), lua_tostring(L, -2),
                  lua_tostring(L, -1), state, bg,
                  (p->flags & PS_PROXY_FUTURE) ? ", future" : "",
                  (p->flags & PS_PROXY_EVICT) ? ", evict" : "",
                  (p->flags & PS_PROXY_STRICT) ? ", strict" : "",
                  (p->flags & PS_PROXY_OWNED) ? ", owned" : "",
                  (p->flags & PS_PROXY_UNTRUSTED) ? ", untrusted" : "");
  return 1;
}

/* ---- references for the codec ---------------------------------------- */

unsigned ps_proxy_flags(lua_State *L, int idx, double *timeout) {
  proxy *p = toproxy(L, idx);
  if (p == NULL || !(p->flags & STORE_PROXY)) return 0;
  if (timeout) *timeout = p->timeout;
  return p->flags & (PS_PROXY_TRAVELS | PS_PROXY_OWNED);
}

int ps_proxy_is_reference(lua_State *L, int idx) {
  proxy *p = toproxy(L, idx);
  return p ? (p->flags & STORE_PROXY) != 0 : ps_future_is(L, idx);
}

void ps_proxy_push_reference(lua_State *L, int idx) {
  if (ps_future_is(L, idx)) {
    ps_future_push_reference(L, idx);
    return;
  }
  proxy *p = toproxy(L, idx);
  if (p == NULL || !(p->flags & STORE_PROXY))
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "a proxy whose factory is a Lua function cannot be "
                   "serialized (only store proxies travel as references)");
  idx = lua_absindex(L, idx);
  lua_createtable(L, 0, 3);
  push_proxy_config(L, idx);
  /* What only this process asked for never travels: clear is not in a
   * config anyway, and recycle (evicted files reused in place) is only
   * for the store's own single-use proxies. */
  lua_pushnil(L);
  lua_setfield(L, -2, "recycle");
  lua_setfield(L, -2, "config");
  lua_getiuservalue(L, idx, 3);
  lua_setfield(L, -2, "key");
  lua_pushinteger(L, p->flags & PS_PROXY_TRAVELS);
  lua_setfield(L, -2, "flags");
  if ((p->flags & PS_PROXY_FUTURE) && p->timeout >= 0) {
    lua_pushnumber(L, p->timeout);
    lua_setfield(L, -2, "timeout");
  }
}

/* The optional timeout of a reference table at t: < 0 when absent. */
static double reference_timeout(lua_State *L, int t) {
  int type = lua_getfield(L, t, "timeout");
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (type == LUA_TNIL) return -1;
  if (type != LUA_TNUMBER || !(v >= 0))   /* NaN too */
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "malformed proxy reference (timeout must be a number of "
                   "seconds >= 0)");
  return v;
}

/*
 * Replaces the config table at cfg with one that holds only what names a
 * store of this process: name, kind and a local store's instance. An
 * untrusted proxy keeps nothing else (no address, no options), so nothing
 * it carries can ever create or configure a store.
 */
void ps_proxy_name_only(lua_State *L, int cfg) {
  cfg = lua_absindex(L, cfg);
  static const char *const fields[] = {"name", "kind", "instance"};
  lua_createtable(L, 0, 3);
  for (int i = 0; i < 3; i++)
    if (lua_getfield(L, cfg, fields[i]) == LUA_TSTRING)
      lua_setfield(L, -2, fields[i]);
    else
      lua_pop(L, 1);
  lua_replace(L, cfg);
}

void ps_proxy_from_reference(lua_State *L, int untrusted) {
  int t = lua_gettop(L);
  if (lua_type(L, t) == LUA_TTABLE) {
    int fut = lua_getfield(L, t, "future") != LUA_TNIL;
    lua_pop(L, 1);
    if (fut) {
      ps_future_from_reference(L, untrusted);
      return;
    }
  }
  int ok = lua_type(L, t) == LUA_TTABLE &&
           lua_getfield(L, t, "config") == LUA_TTABLE &&
           lua_getfield(L, -1, "name") == LUA_TSTRING &&
           lua_getfield(L, -2, "kind") == LUA_TSTRING &&
           lua_getfield(L, t, "key") == LUA_TSTRING &&
           lua_getfield(L, t, "flags") == LUA_TNUMBER && lua_isinteger(L, -1);
  if (!ok)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "malformed proxy reference (needs config.name, "
                   "config.kind, key and flags)");
  unsigned flags = (unsigned)lua_tointeger(L, t + 5) & PS_PROXY_TRAVELS;
  /* Untrusted input, or a reference an untrusted proxy was serialized
   * into: no carried flag that acts is obeyed (evict would delete at first
   * use). A future's proxy stays one: its wait only reads. */
  if (untrusted || (flags & PS_PROXY_UNTRUSTED)) {
    flags = PS_PROXY_UNTRUSTED | (flags & PS_PROXY_FUTURE);
    ps_proxy_name_only(L, t + 1);
  }
  ps_proxy_push_store_ref_ex(L, t + 1, t + 4, flags, reference_timeout(L, t));
  lua_replace(L, t);
  lua_settop(L, t);
}

static const luaL_Reg proxy_mm[] = {
  {"__index", mm_index},   {"__newindex", mm_newindex},
  {"__call", mm_call},     {"__len", mm_len},
  {"__concat", mm_concat}, {"__add", mm_add},
  {"__sub", mm_sub},       {"__mul", mm_mul},
  {"__div", mm_div},       {"__mod", mm_mod},
  {"__pow", mm_pow},       {"__idiv", mm_idiv},
  {"__band", mm_band},     {"__bor", mm_bor},
  {"__bxor", mm_bxor},     {"__shl", mm_shl},
  {"__shr", mm_shr},       {"__unm", mm_unm},
  {"__bnot", mm_bnot},     {"__eq", mm_eq},
  {"__lt", mm_lt},         {"__le", mm_le},
  {"__tostring", mm_tostring}, {"__pairs", mm_pairs},
  {NULL, NULL}};

static const luaL_Reg proxy_funcs[] = {
  {"proxy", l_proxy},
  {"is_proxy", l_is_proxy},
  {"is_resolved", l_is_resolved},
  {"resolve", l_resolve},
  {"resolve_async", l_resolve_async},
  {"extract", l_extract},
  {"type", l_type},
  {"key", l_key},
  {"repr", l_repr},
  {NULL, NULL}};

void ps_proxy_open(lua_State *L) {
  for (int gc = 0; gc <= 1; gc++) {
    luaL_newmetatable(L, gc ? PROXY_GC_MT : PROXY_MT);
    luaL_setfuncs(L, proxy_mm, 0);
    if (gc) {
      lua_pushcfunction(L, mm_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_pushboolean(L, 1);
    lua_rawsetp(L, -2, &ps_proxy_tag);
    /* The metamethods trust that their first argument is a proxy (the
     * hot path has no room for a check): getmetatable(p) must not hand
     * them out to be called on other values. */
    lua_pushliteral(L, PROXY_MT);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_newtable(L);   /* weak-keyed: a wrapper never keeps its method alive */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, WRAPPERS);
  luaL_setfuncs(L, proxy_funcs, 0);
}
