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

int luaopen_proxystore_core(lua_State *L) {
  /* Large strings and tables on warm or huge-page memory (bigalloc.c). */
  ps_alloc_install(L);
  lua_newtable(L);
  for (size_t i = 0; i < sizeof openers / sizeof openers[0]; i++)
    openers[i](L);
  lua_pushliteral(L, PROXYSTORE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
