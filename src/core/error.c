/*
 * error.c: proxystore error objects.
 *
 * Errors are tables rather than strings so callers can branch on err.kind,
 * and because a stored object may itself be nil or false, a "nil, err"
 * return would be ambiguous.
 *
 * lua5.4 prints a table error through its __tostring, with no position and
 * no traceback, so the one line must say where: each error records the
 * position of the user's code that made the call (field `where`,
 * "chunk:line"), found by walking the stack past C functions and
 * proxystore's own Lua files, as error(msg, 2) would name the caller.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ps.h"

#define ERROR_MT "proxystore.Error"
/* Registry field: a set of the `source`s of proxystore's own Lua files. */
#define INTERNAL "proxystore.internal_sources"

static void set_string(lua_State *L, int t, const char *field,
                       const char *s, size_t len) {
  if (s == NULL) return;
  lua_pushlstring(L, s, len ? len : strlen(s));
  lua_setfield(L, t, field);
}

/*
 * Pushes "chunk:line" of the innermost function on the stack that is the
 * user's (Lua code with line information outside proxystore's own files)
 * and returns 1, or pushes nothing and returns 0.
 */
static int push_where(lua_State *L) {
  lua_Debug ar;
  int internal = lua_getfield(L, LUA_REGISTRYINDEX, INTERNAL) == LUA_TTABLE;
  int top = lua_gettop(L);
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0) continue;
    if (internal) {
      int ours = lua_getfield(L, top, ar.source) != LUA_TNIL;
      lua_pop(L, 1);
      if (ours) continue;
    }
    lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
    lua_remove(L, top);
    return 1;
  }
  lua_pop(L, 1);
  return 0;
}

void ps_error_push(lua_State *L, const char *kind, const ps_errctx *ctx,
                   const char *fmt, ...) {
  int cause = ctx && ctx->cause ? lua_absindex(L, ctx->cause) : 0;
  luaL_checkstack(L, 6, "proxystore: error");
  lua_createtable(L, 0, 7);
  int t = lua_gettop(L);
  lua_pushstring(L, kind);
  lua_setfield(L, t, "kind");
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, t, "message");
  if (push_where(L)) lua_setfield(L, t, "where");
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

/* ---- argument errors, as lauxlib words them ---------------------------- */

/* Pushes "module.name" of the function running at level 0 when a loaded
 * module holds it (lauxlib's pushglobalfuncname, one level deep). */
static int push_global_name(lua_State *L, lua_Debug *ar) {
  int top = lua_gettop(L);
  lua_getinfo(L, "f", ar);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, top + 2)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, top + 1)) {
          const char *mod = lua_tostring(L, -4);
          const char *fn = lua_tostring(L, -2);
          if (strcmp(mod, LUA_GNAME) == 0)
            lua_pushstring(L, fn);
          else
            lua_pushfstring(L, "%s.%s", mod, fn);
          lua_replace(L, top + 1);
          lua_settop(L, top + 1);
          return 1;
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return 0;
}

int ps_argerror(lua_State *L, int arg, const char *extramsg) {
  lua_Debug ar;
  if (!lua_getstack(L, 0, &ar))
    return ps_error_raise(L, PS_ECONFIG, NULL, "bad argument #%d (%s)", arg,
                          extramsg);
  lua_getinfo(L, "n", &ar);
  if (ar.namewhat && strcmp(ar.namewhat, "method") == 0) {
    arg--;
    if (arg == 0)
      return ps_error_raise(L, PS_ECONFIG, NULL,
                            "calling '%s' on bad self (%s)", ar.name,
                            extramsg);
  }
  const char *name = ar.name;
  if (name == NULL)
    name = push_global_name(L, &ar) ? lua_tostring(L, -1) : "?";
  return ps_error_raise(L, PS_ECONFIG, NULL, "bad argument #%d to '%s' (%s)",
                        arg, name, extramsg);
}

int ps_typeerror(lua_State *L, int arg, const char *tname) {
  const char *typearg;
  if (luaL_getmetafield(L, arg, "__name") == LUA_TSTRING)
    typearg = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA)
    typearg = "light userdata";
  else
    typearg = luaL_typename(L, arg);
  return ps_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", tname,
                                             typearg));
}

void ps_checktype(lua_State *L, int arg, int t) {
  if (lua_type(L, arg) != t) ps_typeerror(L, arg, lua_typename(L, t));
}

void ps_checkany(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TNONE) ps_argerror(L, arg, "value expected");
}

void *ps_checkudata(lua_State *L, int arg, const char *tname) {
  void *p = luaL_testudata(L, arg, tname);
  if (p == NULL) ps_typeerror(L, arg, tname);
  return p;
}

/* ---- one line ----------------------------------------------------------- */

#define DESCRIBE_MAX 8    /* fields shown of a plain table */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void add_scalar(luaL_Buffer *b, lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      luaL_addchar(b, '"');
      for (size_t i = 0; i < len && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') luaL_addchar(b, '\\');
        if (c < 32 || c == 127) luaL_addchar(b, '?');
        else luaL_addchar(b, (char)c);
      }
      if (len > 80) luaL_addstring(b, "...");
      luaL_addchar(b, '"');
      break;
    }
    case LUA_TNUMBER: case LUA_TBOOLEAN: case LUA_TNIL:
      luaL_tolstring(L, idx, NULL);
      luaL_addvalue(b);
      break;
    case LUA_TTABLE:
      luaL_addstring(b, "{...}");
      break;
    default:
      luaL_addstring(b, luaL_typename(L, idx));
  }
}

/*
 * Pushes a one-line rendering of the plain table at idx, as a user would
 * write it: {1, 2, code = 42, msg = "x"} (sequence first, then string
 * keys in order, at most DESCRIBE_MAX fields; nested tables as {...}).
 */
void ps_error_describe(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "proxystore: error");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '{');
  int shown = 0;
  lua_Integer n = 0;
  while (shown < DESCRIBE_MAX) {
    if (lua_rawgeti(L, idx, n + 1) == LUA_TNIL) {
      lua_pop(L, 1);
      break;
    }
    if (shown++) luaL_addstring(&b, ", ");
    add_scalar(&b, L, -1);
    lua_pop(L, 1);
    n++;
  }
  /* the other keys: string keys sorted, then the rest in table order */
  size_t nkeys = 0, more = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
        lua_tointeger(L, -1) <= n) continue;
    if (lua_type(L, -1) == LUA_TSTRING) nkeys++;
    else more++;
  }
  const char **keys = nkeys ? lua_newuserdatauv(L, nkeys * sizeof *keys, 0)
                            : NULL;
  int box = lua_gettop(L);
  size_t k = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING && k < nkeys)
      keys[k++] = lua_tostring(L, -1);   /* anchored in the table */
  }
  if (k) qsort(keys, k, sizeof *keys, cmp_str);
  for (size_t i = 0; i < k && shown < DESCRIBE_MAX; i++, shown++) {
    if (shown) luaL_addstring(&b, ", ");
    luaL_addstring(&b, keys[i]);
    luaL_addstring(&b, " = ");
    lua_getfield(L, idx, keys[i]);
    add_scalar(&b, L, -1);
    lua_pop(L, 1);
  }
  if ((size_t)shown < (size_t)n + nkeys + more)
    luaL_addstring(&b, shown ? ", ..." : "...");
  luaL_addchar(&b, '}');
  if (keys) lua_remove(L, box);
  luaL_pushresult(&b);
}

/* Pushes how a cause reads inside another error's line: a proxystore
 * error as its own message chain, a plain table as its fields, anything
 * else as the first line of tostring(). */
static void push_chain(lua_State *L, int err, int depth);

static void push_cause(lua_State *L, int c, int depth) {
  c = lua_absindex(L, c);
  if (ps_error_is(L, c)) {
    push_chain(L, c, depth + 1);
    return;
  }
  if (lua_type(L, c) == LUA_TTABLE &&
      luaL_getmetafield(L, c, "__tostring") == LUA_TNIL) {
    ps_error_describe(L, c);
    return;
  }
  if (lua_type(L, c) == LUA_TTABLE) lua_pop(L, 1);
  size_t len;
  const char *s = luaL_tolstring(L, c, &len);
  const char *nl = memchr(s, '\n', len);
  lua_pushlstring(L, s, nl ? (size_t)(nl - s) : len);
  lua_remove(L, -2);
}

/* message[: cause], the cause left out when the message already ends
 * with it (a wrapper that quoted its cause). */
static void push_chain(lua_State *L, int err, int depth) {
  luaL_checkstack(L, 6, "proxystore: error");
  if (lua_getfield(L, err, "message") != LUA_TSTRING &&
      !lua_isnumber(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "error");
  }
  if (depth < 8 && lua_getfield(L, err, "cause") != LUA_TNIL) {
    push_cause(L, -1, depth);
    lua_remove(L, -2);
    size_t ml, cl;
    const char *m = lua_tolstring(L, -2, &ml);
    const char *c = lua_tolstring(L, -1, &cl);
    if (cl == 0 || (ml >= cl && memcmp(m + ml - cl, c, cl) == 0)) {
      lua_pop(L, 1);
    } else {
      lua_pushliteral(L, ": ");
      lua_insert(L, -2);
      lua_concat(L, 3);
    }
  } else if (depth < 8) {
    lua_pop(L, 1);
  }
}

/* "proxystore: where: message[: cause]": one line even when the cause
 * carries a traceback. */
static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushliteral(L, "proxystore: ");
  int n = 1;
  if (lua_getfield(L, 1, "where") == LUA_TSTRING) {
    lua_pushliteral(L, ": ");
    n += 2;
  } else {
    lua_pop(L, 1);
  }
  push_chain(L, 1, 0);
  lua_concat(L, n + 1);
  return 1;
}

/* core.error(kind, message [, fields]): an error object, for Lua code. A
 * `where` among fields replaces the one found on the stack. */
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

/*
 * core.raise(err): raises err; a proxystore error is raised as a copy
 * whose `where` is the current user position (an error kept and raised
 * later, e.g. a future's, names the call that raises it).
 */
static int l_raise(lua_State *L) {
  lua_settop(L, 1);
  if (ps_error_is(L, 1)) {
    lua_createtable(L, 0, 8);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, 2);
    }
    lua_pushnil(L);
    lua_setfield(L, 2, "where");
    if (push_where(L)) lua_setfield(L, 2, "where");
    luaL_setmetatable(L, ERROR_MT);
  }
  return lua_error(L);
}

/* core.internal_source(source): frames of this chunk are proxystore's own
 * and never the position an error names. */
static int l_internal_source(lua_State *L) {
  luaL_checkstring(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, INTERNAL) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, INTERNAL);
  }
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  return 0;
}

/* core.describe(t): the one-line rendering of a plain table's fields. */
static int l_describe(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  ps_error_describe(L, 1);
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
  static const luaL_Reg funcs[] = {
    {"error", l_error},
    {"is_error", l_is_error},
    {"raise", l_raise},
    {"internal_source", l_internal_source},
    {"describe", l_describe},
    {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
