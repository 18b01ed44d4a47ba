/*
 * groups_lua_call.c: any Redis command through a groups handle, for what
 * the stream and group methods of groups_lua.c do not cover (lists,
 * scripts, keys):
 *
 *   g:call(cmd, ...)                       -> the reply (an error reply raises)
 *   g:pipeline({cmd...}, ...)              -> replies, one round trip
 *   g:call_blocking(wait, {cmd...}, ...)   -> replies, woken
 *   g:send_held(wait, {cmd...}, ...)       sends a held call, returns at once
 *   g:queue_held(wait, {cmd...}, ...)      the same, sent right after the
 *                                          next command of g:call, g:add...
 *                                          (or by g:recv_held)
 *   g:recv_held([wait])                    -> its replies, or nil when none
 *                                          came within wait s (then it stays
 *                                          held); wait nil: until they come
 *   g:held()                               -> whether a held call is sent
 *
 * Replies become Lua values as Redis' own scripting does: integers,
 * strings (status replies too), tables for arrays, false for nil inside an
 * array (nil at the top); error replies inside a pipeline are proxystore
 * error objects (kind "store", field redis = the server's text).
 */
#include <stdlib.h>
#include <string.h>

#include "ps.h"
#include "groups_lua.h"

typedef ps_rgl_box box;

/* Room for n replies in b (raises before anything is owned). */
static ps_rvalue *box_values(lua_State *L, box *b, size_t n) {
  b->vals = calloc(n ? n : 1, sizeof *b->vals);
  if (b->vals == NULL) ps_error_raise(L, PS_ESTORE, NULL, "out of memory");
  b->nvals = n;
  return b->vals;
}

/* ---- replies as Lua values ----------------------------------------------- */

static void push_value(lua_State *L, ps_rgroups *g, const ps_rvalue *v,
                       int top);

static void push_error_value(lua_State *L, ps_rgroups *g, const ps_rvalue *v) {
  ps_errctx ctx = {.address = ps_rg_address(g)};
  ps_error_push(L, PS_ESTORE, &ctx, "redis %s: %s", ps_rg_address(g), v->str);
  lua_pushlstring(L, v->str, v->len);
  lua_setfield(L, -2, "redis");
}

static void push_value(lua_State *L, ps_rgroups *g, const ps_rvalue *v,
                       int top) {
  luaL_checkstack(L, 4, "redis reply too deep");
  switch (v->type) {
  case PS_R_STATUS:
    lua_pushlstring(L, v->str, v->len);
    return;
  case PS_R_ERROR:
    push_error_value(L, g, v);
    return;
  case PS_R_INT:
    lua_pushinteger(L, (lua_Integer)v->n);
    return;
  case PS_R_BULK:
    if (v->n < 0) {
      if (top) lua_pushnil(L); else lua_pushboolean(L, 0);
    } else {
      lua_pushlstring(L, v->str, v->len);
    }
    return;
  default:
    if (v->n < 0) {
      if (top) lua_pushnil(L); else lua_pushboolean(L, 0);
      return;
    }
    lua_createtable(L, (int)v->n, 0);
    for (long long i = 0; i < v->n; i++) {
      push_value(L, g, &v->elem[i], 0);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  }
}

ps_rcmd *ps_rgl_check_cmds(lua_State *L, int first, int last, int anchor) {
  size_t n = (size_t)(last - first + 1), total = 0;
  for (int i = first; i <= last; i++) {
    luaL_checktype(L, i, LUA_TTABLE);
    size_t argc = (size_t)lua_rawlen(L, i);
    luaL_argcheck(L, argc > 0, i, "empty command");
    total += argc;
  }
  char *mem = lua_newuserdatauv(L, n * sizeof(ps_rcmd) +
                                total * (sizeof(char *) + sizeof(size_t)), 0);
  ps_rcmd *cmds = (ps_rcmd *)mem;
  const char **argv = (const char **)(mem + n * sizeof(ps_rcmd));
  size_t *lens = (size_t *)(argv + total);
  size_t k = 0;
  for (int i = first; i <= last; i++) {
    size_t argc = (size_t)lua_rawlen(L, i);
    cmds[i - first] = (ps_rcmd){argc, argv + k, lens + k};
    for (size_t j = 0; j < argc; j++, k++) {
      lua_rawgeti(L, i, (lua_Integer)j + 1);
      argv[k] = ps_rgl_arg_string(L, anchor, &lens[k]);
      lua_pop(L, 1);
    }
  }
  return cmds;
}

/* ---- any command -------------------------------------------------------------- */

static int l_call(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  int n = lua_gettop(L);
  luaL_argcheck(L, n >= 2, 2, "command expected");
  lua_createtable(L, n - 1, 0);   /* the command as a list */
  for (int i = 2; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i - 1);
  }
  lua_replace(L, 2);
  lua_settop(L, 2);
  lua_newtable(L);   /* 3: anchors */
  ps_rcmd *cmds = ps_rgl_check_cmds(L, 2, 2, 3);
  box *b = ps_rgl_push_box(L);
  ps_rvalue *v = box_values(L, b, 1);
  ps_berr err = {0, ""};
  if (ps_rg_call(g, 1, cmds, v, &err)) return ps_rgl_raise(L, g, &err);
  push_value(L, g, v, 1);
  if (v->type == PS_R_ERROR) return lua_error(L);
  return 1;
}

void ps_rgl_push_reply(lua_State *L, ps_rgroups *g, const ps_rvalue *v) {
  push_value(L, g, v, 1);
}

static void push_replies(lua_State *L, ps_rgroups *g, box *b) {
  lua_createtable(L, (int)b->nvals, 0);
  for (size_t i = 0; i < b->nvals; i++) {
    push_value(L, g, &b->vals[i], 0);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int l_pipeline(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  int last = lua_gettop(L);
  luaL_argcheck(L, last >= 2, 2, "a command (table) expected");
  lua_newtable(L);
  int anchor = lua_gettop(L);
  ps_rcmd *cmds = ps_rgl_check_cmds(L, 2, last, anchor);
  box *b = ps_rgl_push_box(L);
  ps_rvalue *v = box_values(L, b, (size_t)(last - 1));
  ps_berr err = {0, ""};
  if (ps_rg_call(g, (size_t)(last - 1), cmds, v, &err))
    return ps_rgl_raise(L, g, &err);
  push_replies(L, g, b);
  return 1;
}

/* The arguments of a call the server may hold: (self, wait, cmd, ...):
 * the wait, and the commands (how many in *n), anchored on the stack. */
static ps_rcmd *check_held_args(lua_State *L, double *wait, size_t *n) {
  *wait = luaL_checknumber(L, 2);
  luaL_argcheck(L, *wait >= 0 && *wait <= 86400, 2, "wait must be in [0, 86400] s");
  int last = lua_gettop(L);
  luaL_argcheck(L, last >= 3, 3, "a command (table) expected");
  lua_newtable(L);
  int anchor = lua_gettop(L);
  *n = (size_t)(last - 2);
  return ps_rgl_check_cmds(L, 3, last, anchor);
}

static int l_call_blocking(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  double wait;
  size_t n;
  ps_rcmd *cmds = check_held_args(L, &wait, &n);
  box *b = ps_rgl_push_box(L);
  ps_rvalue *v = box_values(L, b, n);
  ps_berr err = {0, ""};
  int woken = 0;
  if (ps_rg_call_blocking(g, n, cmds, wait, v, &woken, &err))
    return ps_rgl_raise(L, g, &err);
  if (woken) {
    lua_pushnil(L);
  } else {
    push_replies(L, g, b);
  }
  lua_pushboolean(L, woken);
  return 2;
}

static int l_send_held(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  double wait;
  size_t n;
  ps_rcmd *cmds = check_held_args(L, &wait, &n);
  ps_berr err = {0, ""};
  int later = lua_toboolean(L, lua_upvalueindex(1));
  if ((later ? ps_rg_queue_held : ps_rg_send_held)(g, n, cmds, wait, &err))
    return ps_rgl_raise(L, g, &err);
  return 0;
}

static int l_recv_held(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  double wait = luaL_optnumber(L, 2, -1);
  size_t n = ps_rg_held(g);
  if (n == 0) return luaL_error(L, "no held call was sent");
  box *b = ps_rgl_push_box(L);
  ps_rvalue *v = box_values(L, b, n);
  ps_berr err = {0, ""};
  int ready = 0;
  if (ps_rg_recv_held(g, wait < 0 ? -1 : wait, v, &ready, &err))
    return ps_rgl_raise(L, g, &err);
  if (!ready) {
    lua_pushnil(L);
    return 1;
  }
  push_replies(L, g, b);
  return 1;
}

static int l_held(lua_State *L) {
  lua_pushboolean(L, ps_rg_held(ps_rgl_check(L)) > 0);
  return 1;
}

static const luaL_Reg call_methods[] = {
  {"call", l_call},
  {"pipeline", l_pipeline},
  {"call_blocking", l_call_blocking},
  {"send_held", l_send_held},
  {"recv_held", l_recv_held},
  {"held", l_held},
  {NULL, NULL}
};

void ps_rgl_call_methods(lua_State *L) {
  luaL_setfuncs(L, call_methods, 0);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_send_held, 1);
  lua_setfield(L, -2, "queue_held");
}
