/*
 * clock.c: core.monotonic(), seconds since an arbitrary point as a float
 * with nanosecond resolution. os.clock() is CPU time and os.time() whole
 * seconds; benchmarks and wait loops need wall time.
 */
#include <time.h>

#include "ps.h"
#include "clock.h"

static int clock_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

void ps_clock_open(lua_State *L) {
  lua_pushcfunction(L, clock_monotonic);
  lua_setfield(L, -2, "monotonic");
}
