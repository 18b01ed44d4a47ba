/*
 * manners_test.c: a C host whose allocator caps its Lua state at 16 MiB
 * (run by spec/manners_spec.lua). Opening proxystore must leave that
 * allocator alone, so a 64 MiB string fails; ps.use_big_allocator() is the
 * host's opt-in. TAP output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "proxystore.h"

typedef struct cap {
  size_t used, limit;
} cap;

static void *capped(void *ud, void *ptr, size_t osize, size_t nsize) {
  cap *c = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    c->used -= old;
    return NULL;
  }
  if (nsize > old && c->used - old + nsize > c->limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) c->used = c->used - old + nsize;
  return p;
}

static int n, failures;

static void check(int ok, const char *what, const char *detail) {
  printf("%s %d - %s%s%s\n", ok ? "ok" : "not ok", ++n, what,
         detail ? ": " : "", detail ? detail : "");
  if (!ok) failures++;
}

/* Runs code; returns its first result as a string (static copy). */
static const char *run(lua_State *L, const char *code) {
  static char out[256];
  if (luaL_dostring(L, code) != LUA_OK) {
    snprintf(out, sizeof out, "error: %s", lua_tostring(L, -1));
  } else {
    snprintf(out, sizeof out, "%s", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
  }
  lua_settop(L, 0);
  return out;
}

int main(void) {
  cap c = {0, (size_t)16 << 20};
  lua_State *L = lua_newstate(capped, &c);
  luaL_openlibs(L);
  char err[256];
  check(proxystore_open(L, err, sizeof err) == PROXYSTORE_OK, "proxystore_open", err);
  lua_settop(L, 0);
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  check(f == capped && ud == &c, "opening proxystore leaves the host's allocator", NULL);
  const char *r = run(L, "local ok, e = pcall(string.rep, 'x', 64 << 20)\n"
                         "return ok and 'built' or e");
  check(strcmp(r, "not enough memory") == 0,
        "the host's cap holds: a 64 MiB string fails", r);
  r = run(L, "return tostring(require('proxystore').use_big_allocator())");
  check(strcmp(r, "true") == 0, "ps.use_big_allocator() is the opt-in", r);
  f = lua_getallocf(L, &ud);
  check(f != capped, "after the opt-in, large blocks go to the big-block allocator", NULL);
  r = run(L, "return #string.rep('x', 64 << 20)");
  check(strcmp(r, "67108864") == 0, "a 64 MiB string then comes from outside the cap", r);
  lua_close(L);
  check(c.used == 0, "everything the host's allocator gave went back to it", NULL);
  printf("1..%d\n", n);
  return failures != 0;
}
