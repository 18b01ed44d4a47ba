/*
 * groups_lua.h: what the two files of the groups module's Lua face share
 * (groups_lua.c: the handle and its stream and group methods;
 * groups_lua_call.c: any command). Private to them.
 */
#ifndef PS_GROUPS_LUA_H
#define PS_GROUPS_LUA_H

#include "ps.h"
#include "groups.h"

/* Replies owned by a userdata until they are turned into Lua values, so a
   Lua error (out of memory) frees them through __gc. */
typedef struct ps_rgl_box {
  ps_rentries es;
  ps_rpendings ps;
  size_t nvals;
  ps_rvalue *vals;
} ps_rgl_box;

/* Pushes an empty box. */
ps_rgl_box *ps_rgl_push_box(lua_State *L);
/* The open groups handle at index 1; raises kind "closed" when closed. */
ps_rgroups *ps_rgl_check(lua_State *L);
/* Raises err as a proxystore error (connection, timeout, config,
   missing_key for NOGROUP, store). */
int ps_rgl_raise(lua_State *L, ps_rgroups *g, const ps_berr *err);
/* The string or number on top as a command argument; a number's string is
   kept alive in the table at anchor. */
const char *ps_rgl_arg_string(lua_State *L, int anchor, size_t *len);
/* The commands in the lists at first..last ({word, arg, ...} each), in a
   userdata pushed on the stack; number arguments' strings anchored in the
   table at anchor. */
ps_rcmd *ps_rgl_check_cmds(lua_State *L, int first, int last, int anchor);
/* Pushes reply v as g:call gives it (an error reply as an error object,
   not raised). */
void ps_rgl_push_reply(lua_State *L, ps_rgroups *g, const ps_rvalue *v);
/* Adds call, pipeline and call_blocking to the methods table on top. */
void ps_rgl_call_methods(lua_State *L);

#endif
