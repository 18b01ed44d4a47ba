-- luarocks --lua-version=5.4 make rockspec/proxystore-scm-1.rockspec [--tree=DIR | --local]
-- builds from this checkout with the project's Makefile (offline): the core
-- module goes to the tree's lib/lua/5.4/proxystore/core.so, the Lua modules
-- to share/lua/5.4/proxystore/, the `proxystore` binary to bin/. Lua's
-- headers come from what luarocks passes (LUA_INCDIR), its flags too
-- (CFLAGS, LIBFLAG): no pkg-config entry for Lua is needed (luarocks 3.8
-- passes no LUA_LIBDIR/LUALIB to make builds: the Makefile finds the
-- library by linking). `luarocks test` runs the specs.
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
  homepage = "https://github.com/proxystore/proxystore-lua",
  license = "MIT",
  labels = { "proxy", "serialization", "redis" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  EDIT = { header = "editline/readline.h", library = "edit" },
}
-- luarocks test [rockspec] [spec files]: builds with make, then runs the
-- specs on the plain build; they need busted (and redis-server for the
-- Redis ones) on PATH.
test = {
  type = "command",
  command = "sh spec/run.sh plain",
}
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CC = "$(CC)",
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA = "$(LUA)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    HIREDIS_CFLAGS = "-I$(HIREDIS_INCDIR)",
    HIREDIS_LIBS = "-L$(HIREDIS_LIBDIR) -lhiredis",
    CRYPTO_CFLAGS = "-I$(OPENSSL_INCDIR)",
    CRYPTO_LIBS = "-L$(OPENSSL_LIBDIR) -lcrypto",
    EDIT_CFLAGS = "-I$(EDIT_INCDIR)",
    EDIT_LIBS = "-L$(EDIT_LIBDIR) -ledit",
  },
  install_target = "rock-install",
  install_variables = {
    CC = "$(CC)",
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA = "$(LUA)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    HIREDIS_CFLAGS = "-I$(HIREDIS_INCDIR)",
    HIREDIS_LIBS = "-L$(HIREDIS_LIBDIR) -lhiredis",
    CRYPTO_CFLAGS = "-I$(OPENSSL_INCDIR)",
    CRYPTO_LIBS = "-L$(OPENSSL_LIBDIR) -lcrypto",
    EDIT_CFLAGS = "-I$(EDIT_INCDIR)",
    EDIT_LIBS = "-L$(EDIT_LIBDIR) -ledit",
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
  },
}
