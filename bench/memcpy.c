/*
 * bench/memcpy.c: baselines for the benchmarks, as a tiny Lua module
 * (bench_memcpy). Not part of proxystore.core.
 *
 *   now()          monotonic clock in nanoseconds (integer)
 *   copy(s, n)     copies the bytes of s n times into one reused buffer
 *                  (allocated and touched once, at the first call with that
 *                  size, so the timed copies hit warm memory)
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>

static char *buf;
static size_t buf_cap;

static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000000000 + ts.tv_nsec);
  return 1;
}

static int l_copy(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  if (len > buf_cap) {
    free(buf);
    buf = malloc(len);
    if (buf == NULL) {
      buf_cap = 0;
      return luaL_error(L, "out of memory");
    }
    buf_cap = len;
    memset(buf, 1, len);
  }
  for (lua_Integer i = 0; i < n; i++) {
    memcpy(buf, s, len);
    /* keep the compiler from dropping the copies */
    __asm__ volatile("" : : "r"(buf) : "memory");
  }
  lua_pushinteger(L, len ? (unsigned char)buf[len - 1] : 0);
  return 1;
}

int luaopen_bench_memcpy(lua_State *L) {
  static const luaL_Reg fns[] = {{"now", l_now}, {"copy", l_copy}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
