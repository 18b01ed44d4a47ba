-- luarocks --lua-version=5.4 make rockspec/proxystore-scm-1.rockspec [--tree=DIR | --local]
-- builds from this checkout with the project's Makefile (offline): the core
-- module goes to the tree's lib/lua/5.4/proxystore/core.so, the Lua modules
-- to share/lua/5.4/proxystore/, the `proxystore` binary to bin/. The binary
-- links liblua through `pkg-config lua5.4` (the Makefile's LUA_LIBS):
-- luarocks 3.8 does not expose LUA_LIBDIR/LUALIB to make builds.
rockspec_format = "3.0"
package = "proxystore"
version = "scm-1"
-- The repository URL is a placeholder until the project is published.
source = {
  url = "git+https://github.com/proxystore/proxystore-lua.git",
}
description = {
  summary = "Lazy object proxies for Lua 5.4 with a C core",
  detailed = [[
A proxy stands for an object kept in a store (local, file or Redis) and
fetches it at first use; it behaves as its target for every operation Lua
lets a userdata intercept. Includes a worker pool and the `proxystore` host
binary.]],
  license = "MIT",
  labels = { "proxy", "serialization", "redis" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
}
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CC = "$(CC)",
    CFLAGS = "$(CFLAGS)",
    LUA = "$(LUA)",
    LUA_CFLAGS = "-I$(LUA_INCDIR)",
    HIREDIS_CFLAGS = "-I$(HIREDIS_INCDIR)",
    HIREDIS_LIBS = "-L$(HIREDIS_LIBDIR) -lhiredis",
    CRYPTO_CFLAGS = "-I$(OPENSSL_INCDIR)",
    CRYPTO_LIBS = "-L$(OPENSSL_LIBDIR) -lcrypto",
  },
  install_target = "rock-install",
  install_variables = {
    CC = "$(CC)",
    CFLAGS = "$(CFLAGS)",
    LUA = "$(LUA)",
    LUA_CFLAGS = "-I$(LUA_INCDIR)",
    HIREDIS_CFLAGS = "-I$(HIREDIS_INCDIR)",
    HIREDIS_LIBS = "-L$(HIREDIS_LIBDIR) -lhiredis",
    CRYPTO_CFLAGS = "-I$(OPENSSL_INCDIR)",
    CRYPTO_LIBS = "-L$(OPENSSL_LIBDIR) -lcrypto",
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
  },
}
