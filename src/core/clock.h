/* clock.h: a monotonic clock for benchmarks and timeouts in Lua. */
#ifndef PS_CLOCK_H
#define PS_CLOCK_H
#include <lua.h>
/* Adds core.monotonic() (seconds, ns resolution) to the module table. */
void ps_clock_open(lua_State *L);
#endif
