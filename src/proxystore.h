/*
 * proxystore.h: the public C interface of proxystore, for hosts that embed
 * Lua 5.4.
 */
#ifndef PROXYSTORE_H
#define PROXYSTORE_H

#include <lua.h>

#define PROXYSTORE_VERSION "0.1.0"

/* The Lua module proxystore.core; require "proxystore" is the public face. */
int luaopen_proxystore_core(lua_State *L);

#endif
