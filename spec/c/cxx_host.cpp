// cxx_host.cpp: a C++ host that includes proxystore.h as it is (run by
// spec/manners_spec.lua): it links only if the header gives the C API C
// linkage, and checks the numeric version at compile time.
#include <cstdio>
#include <cstring>

#include "proxystore.h"

extern "C" {
#include <lauxlib.h>
#include <lualib.h>
}

static_assert(PROXYSTORE_VERSION_NUM == PROXYSTORE_VERSION_MAJOR * 10000 +
                                            PROXYSTORE_VERSION_MINOR * 100 +
                                            PROXYSTORE_VERSION_PATCH,
              "PROXYSTORE_VERSION_NUM");
#if PROXYSTORE_VERSION_NUM < 100
#error "PROXYSTORE_VERSION_NUM is usable in #if"
#endif

int main() {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  char err[256];
  if (proxystore_open(L, err, sizeof err) != PROXYSTORE_OK) {
    std::fprintf(stderr, "%s\n", err);
    return 1;
  }
  lua_pop(L, 1);
  if (proxystore_put_url(L, "local:", "hello", 5, nullptr, 0, err, sizeof err) !=
          PROXYSTORE_OK ||
      !proxystore_isproxy(L, -1) ||
      proxystore_extract(L, -1, err, sizeof err) != PROXYSTORE_OK) {
    std::fprintf(stderr, "%s\n", err);
    return 1;
  }
  std::printf("%s %s %d\n", lua_tostring(L, -1), PROXYSTORE_VERSION,
              PROXYSTORE_VERSION_NUM);
  lua_close(L);
  return 0;
}
