/*
 * decode_fuzz.c: libFuzzer target for the native decoder (make fuzz).
 *
 * Every input goes through core.deserialize in a protected call: an error
 * is fine, a crash, sanitizer report, leak or runaway allocation is not.
 * A value that decodes must also survive serialize -> deserialize (the
 * encoder accepts everything the decoder produces).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ps.h"

static lua_State *L;
static int deserialize_ref, serialize_ref;
static unsigned long runs;

static void setup(void) {
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  luaL_requiref(L, "proxystore.core", luaopen_proxystore_core, 0);
  lua_getfield(L, -1, "deserialize");
  deserialize_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "serialize");
  serialize_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) setup();
  lua_rawgeti(L, LUA_REGISTRYINDEX, deserialize_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
    /* Round trip what decoded. Proxies decode lazily (no store is
     * contacted until first use), so they re-encode too. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, serialize_ref);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      fprintf(stderr, "re-serialize failed: %s\n", luaL_tolstring(L, -1, NULL));
      abort();
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, deserialize_ref);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      fprintf(stderr, "re-deserialize failed: %s\n", luaL_tolstring(L, -1, NULL));
      abort();
    }
  } else if (lua_type(L, -1) != LUA_TTABLE) {
    /* Every decode error is a proxystore error object, never a bare
     * string from deep inside Lua (except out of memory). */
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL || strstr(msg, "not enough memory") == NULL) {
      fprintf(stderr, "unexpected error value: %s\n", msg ? msg : "?");
      abort();
    }
  }
  lua_settop(L, 0);
  if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
