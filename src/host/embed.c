/*
 * embed.c: the C API of proxystore.h for hosts that embed Lua.
 *
 * Built into libproxystore only (not into the proxystore.core module),
 * with the Lua modules compiled in (see luasrc.h).
 *
 * Every public function may be called outside any Lua call, so none may
 * raise: each pushes a small C function and its arguments and runs it
 * under lua_pcall, then turns a failure into a return code and a message
 * in the caller's buffer, leaving the stack as it found it.
 */
#include <stdio.h>
#include <string.h>

#include "ps.h"
#include "luasrc.h"

#ifdef PS_LUASRC
#include PS_LUASRC
#else
static const ps_luasrc ps_luasrc_list[] = {{NULL, NULL, NULL, 0}};
#endif

/* store.c's metatable name for store userdata. */
#define STORE_MT "proxystore.Store"

/* ---- running work under lua_pcall ------------------------------------ */

static int tostring_work(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/*
 * Copies a message for the error object on top into err: tostring() of it
 * (which reads "proxystore: ..." for library errors), under its own pcall
 * because a __tostring may itself fail.
 */
static void copy_message(lua_State *L, int status, char *err, size_t errlen) {
  if (err == NULL || errlen == 0) return;
  const char *msg = NULL;
  if (status == LUA_ERRMEM) {
    msg = "not enough memory";
  } else {
    lua_pushcfunction(L, tostring_work);
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) msg = lua_tostring(L, -1);
  }
  if (msg == NULL) msg = "error object is not a string";
  snprintf(err, errlen, "%s%s",
           strncmp(msg, "proxystore:", 11) == 0 ? "" : "proxystore: ", msg);
}

/*
 * Runs fn (already pushed, with nargs arguments above it) under lua_pcall.
 * On success leaves its one result above base; on failure restores the
 * stack to base and reports.
 */
static int run(lua_State *L, int base, int nargs, char *err, size_t errlen) {
  int status = lua_pcall(L, nargs, 1, 0);
  if (status != LUA_OK) {
    copy_message(L, status, err, errlen);
    lua_settop(L, base);
  }
  return status;
}

/* Room for the pushes above, or a failure the host can see. */
static int need_stack(lua_State *L, int n, char *err, size_t errlen) {
  if (lua_checkstack(L, n)) return 1;
  if (err && errlen) snprintf(err, errlen, "proxystore: Lua stack overflow");
  return 0;
}

/* An index of a value on the stack (no pseudo-indices). */
static int valid_index(int top, int idx) {
  return idx > 0 ? idx <= top : idx < 0 && idx >= -top && idx > LUA_REGISTRYINDEX;
}

/* ---- opening ------------------------------------------------------------ */

/* package.preload loader for a compiled-in module (upvalue: its entry). */
static int load_embedded(lua_State *L) {
  const ps_luasrc *src = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbufferx(L, src->code, src->len, src->chunkname, "t") != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, src->name);
  lua_pushliteral(L, ":preload:");
  lua_call(L, 2, 1);
  return 1;
}

static int open_work(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_proxystore_core);
  lua_setfield(L, -2, "proxystore.core");
  for (const ps_luasrc *src = ps_luasrc_list; src->name; src++) {
    lua_pushlightuserdata(L, (void *)src);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, src->name);
  }
  if (lua_getglobal(L, "require") != LUA_TFUNCTION)
    return luaL_error(L, "proxystore_open needs the standard libraries "
                         "(call luaL_openlibs first)");
  lua_pushliteral(L, "proxystore");
  lua_call(L, 1, 1);
  return 1;
}

int proxystore_open(lua_State *L, char *err, size_t errlen) {
  if (!need_stack(L, 8, err, errlen)) return LUA_ERRMEM;
  int base = lua_gettop(L);
  lua_pushcfunction(L, open_work);
  return run(L, base, 0, err, errlen);
}

/* ---- putting bytes --------------------------------------------------- */

typedef struct put_args {
  const char *url;      /* NULL: the store is argument 2 */
  const void *data;
  size_t len;
  const char *key;
  unsigned flags;
  int store_idx;        /* the host's index, for messages */
} put_args;

/*
 * Pushes package.loaded.proxystore, or raises if the host never opened it
 * (a plain string: error objects need the module's metatables).
 */
static void push_module(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "proxystore") != LUA_TTABLE)
    luaL_error(L, "proxystore is not open in this state "
                  "(call proxystore_open first)");
  lua_remove(L, -2);
}

/* The registry name of a URL's store: the URL without its password
 * (url.lua knows both places a URL can carry one). */
static void push_url_name(lua_State *L, const char *url) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "proxystore.url");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "without_password");
  lua_pushstring(L, url);
  lua_call(L, 1, 1);
  lua_remove(L, -2);
}

/* Pushes the store named by the URL, creating it on first use. */
static void push_url_store(lua_State *L, const char *url) {
  push_module(L);                        /* ps */
  int ps = lua_gettop(L);
  push_url_name(L, url);                 /* name */
  ps_store_lookup(L, lua_tostring(L, -1));
  if (!lua_isnil(L, -1)) {
    lua_replace(L, ps);
    lua_settop(L, ps);
    return;
  }
  lua_pop(L, 1);
  lua_getfield(L, ps, "init_store");
  lua_pushstring(L, url);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, ps + 1);
  lua_setfield(L, -2, "name");
  lua_call(L, 2, 1);
  lua_replace(L, ps);
  lua_settop(L, ps);
}

static int put_work(lua_State *L) {
  const put_args *a = lua_touserdata(L, 1);
  if (a->url) {
    push_url_store(L, a->url);
    lua_replace(L, 2);
  } else if (luaL_testudata(L, 2, STORE_MT) == NULL) {
    return ps_error_raise(L, PS_ECONFIG, NULL,
                          "the value at stack index %d is a %s, not a store",
                          a->store_idx, luaL_typename(L, 2));
  }
  lua_getfield(L, 2, "proxy");           /* store:proxy(bytes, opts) */
  lua_pushvalue(L, 2);
  lua_pushlstring(L, (const char *)a->data, a->len);
  lua_createtable(L, 0, 3);
  if (a->key) {
    lua_pushstring(L, a->key);
    lua_setfield(L, -2, "key");
  }
  lua_pushboolean(L, (a->flags & PROXYSTORE_EVICT) != 0);
  lua_setfield(L, -2, "evict");
  lua_pushboolean(L, (a->flags & PROXYSTORE_STRICT) != 0);
  lua_setfield(L, -2, "strict");
  lua_call(L, 3, 1);
  return 1;
}

static int put(lua_State *L, put_args *a, char *err, size_t errlen) {
  if (!need_stack(L, 8, err, errlen)) return LUA_ERRMEM;
  if (a->data == NULL && a->len > 0) {
    if (err && errlen) snprintf(err, errlen, "proxystore: data is NULL");
    return LUA_ERRRUN;
  }
  int base = lua_gettop(L);
  int store = 0;
  if (a->url == NULL) {
    if (!valid_index(base, a->store_idx)) {
      if (err && errlen)
        snprintf(err, errlen, "proxystore: no stack index %d", a->store_idx);
      return LUA_ERRRUN;
    }
    store = lua_absindex(L, a->store_idx);
  }
  lua_pushcfunction(L, put_work);
  lua_pushlightuserdata(L, a);
  if (store) lua_pushvalue(L, store);
  else lua_pushnil(L);
  return run(L, base, 2, err, errlen);
}

int proxystore_put(lua_State *L, int store, const void *data, size_t len,
                   const char *key, unsigned flags, char *err, size_t errlen) {
  put_args a = {NULL, data, len, key, flags, store};
  return put(L, &a, err, errlen);
}

int proxystore_put_url(lua_State *L, const char *url, const void *data,
                       size_t len, const char *key, unsigned flags,
                       char *err, size_t errlen) {
  if (url == NULL) {
    if (err && errlen) snprintf(err, errlen, "proxystore: url is NULL");
    return LUA_ERRRUN;
  }
  put_args a = {url, data, len, key, flags, 0};
  return put(L, &a, err, errlen);
}

/* ---- proxies on the stack -------------------------------------------- */

int proxystore_isproxy(lua_State *L, int idx) {
  return valid_index(lua_gettop(L), idx) && lua_checkstack(L, 2) &&
         ps_proxy_is(L, idx);
}

static int extract_work(lua_State *L) {
  ps_proxy_push_target(L, 1);
  return 1;
}

int proxystore_extract(lua_State *L, int idx, char *err, size_t errlen) {
  if (!need_stack(L, 4, err, errlen)) return LUA_ERRMEM;
  int base = lua_gettop(L);
  if (!valid_index(base, idx)) {
    if (err && errlen) snprintf(err, errlen, "proxystore: no stack index %d", idx);
    return LUA_ERRRUN;
  }
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, extract_work);
  lua_pushvalue(L, idx);
  return run(L, base, 1, err, errlen);
}
