/*
 * error.c: proxystore error objects.
 *
 * Errors are tables rather than strings so callers can branch on err.kind,
 * and because a stored object may itself be nil or false, a "nil, err"
 * return would be ambiguous (STYLE 17).
 */
#include <stdarg.h>
#include <string.h>

#include "ps.h"

#define ERROR_MT "proxystore.Error"

static void set_string(lua_State *L, int t, const char *field,
                       const char *s, size_t len) {
  if (s == NULL) return;
  lua_pushlstring(L, s, len ? len : strlen(s));
  lua_setfield(L, t, field);
}

void ps_error_push(lua_State *L, const char *kind, const ps_errctx *ctx,
                   const char *fmt, ...) {
  int cause = ctx && ctx->cause ? lua_absindex(L, ctx->cause) : 0;
  luaL_checkstack(L, 4, "proxystore: error");
  lua_createtable(L, 0, 6);
  int t = lua_gettop(L);
  lua_pushstring(L, kind);
  lua_setfield(L, t, "kind");
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, t, "message");
  if (ctx) {
    set_string(L, t, "key", ctx->key, ctx->keylen);
    set_string(L, t, "store", ctx->store, 0);
    set_string(L, t, "address", ctx->address, 0);
    if (cause) {
      lua_pushvalue(L, cause);
      lua_setfield(L, t, "cause");
    }
  }
  luaL_setmetatable(L, ERROR_MT);
}

int ps_error_raise(lua_State *L, const char *kind, const ps_errctx *ctx,
                   const char *fmt, ...) {
  ps_errctx abs;
  if (ctx && ctx->cause) {   /* the message pushed below shifts -1 */
    abs = *ctx;
    abs.cause = lua_absindex(L, ctx->cause);
    ctx = &abs;
  }
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  ps_error_push(L, kind, ctx, "%s", lua_tostring(L, -1));
  return lua_error(L);
}

int ps_error_is(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ERROR_MT);
  int is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return is;
}

const char *ps_error_kind(lua_State *L, int idx) {
  if (!ps_error_is(L, idx)) return NULL;
  lua_getfield(L, idx, "kind");
  const char *kind = lua_tostring(L, -1);
  lua_pop(L, 1);  /* still anchored in the error table */
  return kind;
}

/* "proxystore: message[: first line of tostring(cause)]": one line even
 * when the cause carries a traceback. */
static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushliteral(L, "proxystore: ");
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, 3)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "error");
  }
  int n = 2;
  if (lua_getfield(L, 1, "cause") != LUA_TNIL) {
    size_t len;
    const char *s = luaL_tolstring(L, -1, &len);
    const char *nl = memchr(s, '\n', len);
    lua_pushliteral(L, ": ");
    lua_pushlstring(L, s, nl ? (size_t)(nl - s) : len);
    lua_remove(L, -3);  /* the full string */
    lua_remove(L, -3);  /* the cause */
    n += 2;
  } else {
    lua_pop(L, 1);
  }
  lua_concat(L, n);
  return 1;
}

/* core.error(kind, message [, fields]): an error object, for Lua code. */
static int l_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *message = luaL_checkstring(L, 2);
  ps_error_push(L, kind, NULL, "%s", message);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  return 1;
}

static int l_is_error(lua_State *L) {
  lua_pushboolean(L, ps_error_is(L, 1));
  return 1;
}

void ps_error_open(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, ERROR_MT);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_error);
  lua_setfield(L, -2, "error");
  lua_pushcfunction(L, l_is_error);
  lua_setfield(L, -2, "is_error");
}
