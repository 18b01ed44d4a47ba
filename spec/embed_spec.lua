-- The C API of proxystore.h from a C host (spec/c/embed_test.c and
-- examples/embed/host.c), linked with libproxystore.a of the build under
-- test: in the sanitized pass of spec/run.sh, build-asan's, compiled with
-- the sanitizers, so its reports count.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local SANITIZED = BUILD:find("build%-asan") ~= nil
local shell = require "helpers.shell"

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, out
end

-- Compiles a C host with the library (the compiler must not run under the
-- sanitizer preload of spec/run.sh).
local function build_host(src, out)
  local flags = SANITIZED
    and "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer "
      .. "-fno-sanitize-recover=undefined" or "-O1 -g"
  return sh(string.format(
    "cd '%s' && env -u LD_PRELOAD ${CC:-cc} -std=c11 -Wall -Wextra -Werror "
    .. "-D_GNU_SOURCE %s -Isrc $(pkg-config --cflags lua5.4) -o '%s' '%s' "
    .. "'%s/lib/libproxystore.a' $(pkg-config --libs lua5.4 hiredis libcrypto) -lpthread -lm",
    ROOT, flags, out, src, BUILD))
end

describe("the C API (proxystore.h)", function()
  local tmp

  setup(function()
    tmp = assert(io.popen("mktemp -d /tmp/ps-embed.XXXXXX")):read("l")
  end)

  teardown(function()
    if tmp then os.execute("rm -rf '" .. tmp .. "'") end
  end)

  it("opens, puts, tests and extracts, and reports every failure by code and message", function()
    local rc, out = build_host("spec/c/embed_test.c", tmp .. "/embed_test")
    assert(rc == 0, out)
    rc, out = sh(string.format("'%s/embed_test' '%s/run'", tmp, tmp))
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("not ok", 1, true), out)
    assert.truthy(out:find("\n1..39\n", 1, true), out)
  end)

  it("exports only the C API from libproxystore.a", function()
    local rc, out = sh(string.format("env -u LD_PRELOAD nm -g --defined-only '%s/lib/libproxystore.a'",
      BUILD))
    assert(rc == 0, out)
    local names = {}
    for name in out:gmatch(" [A-Za-z] ([%w_.]+)\n") do names[#names + 1] = name end
    table.sort(names)
    assert.are.same({"luaopen_proxystore_core", "proxystore_extract", "proxystore_isproxy",
      "proxystore_open", "proxystore_put", "proxystore_put_url"}, names)
  end)

  it("runs examples/embed/host.c: a proxy handed to a Lua function", function()
    local rc, out = build_host("examples/embed/host.c", tmp .. "/host")
    assert(rc == 0, out)
    rc, out = sh(string.format("cd '%s' && '%s/host' '%s/examples/embed/script.lua'",
      tmp, tmp, ROOT))
    assert.are.equal(0, rc, out)
    assert.are.equal(table.concat({
      "pushed a proxy: yes",
      "summarize: 85 bytes, 3 lines, 18 words (resolved before use: false)",
      "extracted 85 bytes, same as put: yes",
      "bad URL: code 2, proxystore: bad store URL 'nosuch://x': unknown scheme "
        .. "'nosuch' (redis://, redis+cluster://, unix://, file://, local:)",
    }, "\n") .. "\n", out:gsub("rc=%d+\n?$", ""))
  end)

  it("make examples builds examples/embed/host, which runs from any directory", function()
    if SANITIZED then pending("plain build only: make examples links build/") return end
    local host = ROOT .. "/examples/embed/host"
    local existed = io.open(host) ~= nil
    local rc, out = sh(string.format("cd '%s' && env -u LD_PRELOAD make --no-print-directory "
      .. "-s examples", ROOT))
    assert(rc == 0, out)
    rc, out = sh(string.format("cd '%s' && '%s' '%s/examples/embed/script.lua'", tmp, host, ROOT))
    if not existed then os.remove(host) end
    assert.are.equal(0, rc, out)
    assert.matches("^pushed a proxy: yes\nsummarize: 85 bytes", out)
  end)

  it("without the compiled-in modules, opens from package.path or says why not", function()
    -- embed.c compiled with the sources alone (no -DPS_LUASRC), as specs
    -- that compile every C file of src do.
    local flags = SANITIZED and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""
    local rc, out = sh(string.format(
      "cd '%s' && env -u LD_PRELOAD ${CC:-cc} -std=c11 -O1 -g -D_GNU_SOURCE %s "
      .. "$(pkg-config --cflags lua5.4 hiredis) -o '%s/bare_host' examples/embed/host.c "
      .. "%s $(pkg-config --libs lua5.4 hiredis libcrypto) "
      .. "-lpthread -lm", ROOT, flags, tmp, shell.core_c(ROOT)))
    assert(rc == 0, out)
    rc, out = sh(string.format("cd '%s' && LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua' "
      .. "'%s/bare_host' '%s/examples/embed/script.lua'", tmp, ROOT, ROOT, tmp, ROOT))
    assert.are.equal(0, rc, out)
    assert.matches("^pushed a proxy: yes\nsummarize: 85 bytes", out)
    rc, out = sh(string.format("cd '%s' && LUA_PATH='%s/?.lua' '%s/bare_host' x.lua",
      tmp, tmp, tmp))
    assert.are.equal(1, rc, out)
    assert.matches("^host: proxystore: [^\n]*module 'proxystore' not found", out)
  end)
end)
