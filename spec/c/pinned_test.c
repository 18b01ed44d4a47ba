/*
 * pinned_test.c: loads proxystore.core the way lua5.4 does (require, from
 * package.cpath = argv[1]), closes the state, and says whether the
 * library is still mapped (run by spec/manners_spec.lua). It must be:
 * background threads (resolve_async, the unmapper) run its code and wait
 * on its locks after lua_close has unloaded C modules.
 */
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int mapped(const char *name) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  while (f && fgets(line, sizeof line, f))
    if (strstr(line, name)) found = 1;
  if (f) fclose(f);
  return found;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, argv[1]);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  if (luaL_dostring(L, "require 'proxystore.core'") != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  printf("loaded %s\n", mapped("/proxystore/core.so") ? "mapped" : "not mapped");
  lua_close(L);
  printf("closed %s\n", mapped("/proxystore/core.so") ? "mapped" : "not mapped");
  return 0;
}
