/* module.c: luaopen_proxystore_core, the only symbol the module exports. */
#include "ps.h"
#include "bigalloc.h"
#include "clock.h"

static void (*const openers[])(lua_State *) = {
  ps_error_open,
  ps_buf_open,
  ps_proxy_open,
  ps_store_open,
  ps_codec_open,
  ps_clock_open,
  ps_pool_open,
  ps_groups_open,
  ps_secret_open,
  ps_heartbeat_open,
};

/*
 * core.use_big_allocator() -> true, or false when it cannot: large strings
 * and tables of this state on warm or huge-page memory (bigalloc.c). The
 * user's choice (ps.use_big_allocator), never the module's: the state's
 * allocator belongs to its host.
 */
static int l_use_big_allocator(lua_State *L) {
  lua_pushboolean(L, ps_alloc_install(L) == 0);
  return 1;
}

int luaopen_proxystore_core(lua_State *L) {
  /* Background threads (resolve_async's fetches, the unmapper) run this
   * library's code and wait on its static locks, past lua_close, which
   * unloads C modules: the library must stay mapped (unloaded under a
   * waiting thread, a process aborted at exit with a futex error). */
  ps_pin_library();
  lua_newtable(L);
  lua_pushcfunction(L, l_use_big_allocator);
  lua_setfield(L, -2, "use_big_allocator");
  for (size_t i = 0; i < sizeof openers / sizeof openers[0]; i++)
    openers[i](L);
  lua_pushliteral(L, PROXYSTORE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
