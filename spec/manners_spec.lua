-- The module minds its manners: it never replaces its host's allocator
-- (the proxystore binary installs the big-block allocator for its own
-- state; a module user opts in with ps.use_big_allocator()), and its C
-- header serves C and C++ hosts alike.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local SANITIZED = BUILD:find("build%-asan") ~= nil
local shell = require "helpers.shell"
local ps = require "proxystore"

local SAN_FLAGS = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer " ..
  "-fno-sanitize-recover=undefined"

-- Compiles a host with libproxystore.a of the build under test (with the
-- sanitizers in the sanitized pass, so its reports count).
local function build_host(compiler, std, src, out)
  return shell.sh(string.format(
    "cd %s && ${%s} -std=%s -Wall -Wextra -Werror -D_GNU_SOURCE %s -Isrc " ..
    "$(pkg-config --cflags lua5.4) -o %s %s %s/lib/libproxystore.a " ..
    "$(pkg-config --libs lua5.4 hiredis libcrypto) -lpthread -lm -ldl",
    shell.quote(ROOT), compiler, std, SANITIZED and SAN_FLAGS or "-O1 -g",
    shell.quote(out), shell.quote(src), shell.quote(BUILD)))
end

-- Runs a program with the sanitizer runtime it was built with.
local function run(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  return tonumber(out:match("rc=(%d+)\n?$")), out
end

describe("the module's manners", function()
  local tmp
  setup(function() tmp = shell.tempdir("manners") end)
  teardown(function() shell.rmtree(tmp) end)

  it("leaves a C host's capped allocator in place; ps.use_big_allocator() opts in", function()
    local bin = tmp .. "/manners_test"
    local rc, out = build_host("CC:-cc", "c11", "spec/c/manners_test.c", bin)
    assert.equal(0, rc, out)
    rc, out = run(shell.quote(bin))
    assert.equal(0, rc, out)
    assert.is_nil(out:find("not ok", 1, true), out)
    assert.truthy(out:find("\n1..7\n", 1, true), out)
  end)

  -- A 64 MiB string from the big-block allocator lives in a mapping of its
  -- own: 2 MiB aligned, its size rounded up to 2 MiB (66 MiB with the
  -- block's header); glibc's malloc maps 64 MiB and a page.
  local PROBE = [[
    local big = string.rep("x", 64 << 20)
    local n = 0
    for line in io.lines("/proc/self/maps") do
      local a, b = line:match("^(%x+)-(%x+)")
      a, b = tonumber(a, 16), tonumber(b, 16)
      if b - a == 66 << 20 and a % (2 << 20) == 0 then n = n + 1 end
    end
    io.write(n >= 1 and "big" or "plain", #big > 0 and "" or "?")
  ]]

  local function lua54(code)
    local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"
    local f = io.open(tmp .. "/probe.lua", "w")
    f:write(code)
    f:close()
    -- the plain build's core: lua5.4 runs without the sanitizer preload
    return shell.sh(("LUA_PATH=%s LUA_CPATH=%s lua5.4 %s"):format(shell.quote(lpath),
      shell.quote(ROOT .. "/build/lib/?.so;;"), shell.quote(tmp .. "/probe.lua")))
  end

  it("never replaces the allocator of lua5.4's state at require", function()
    local rc, out = lua54('require "proxystore"\n' .. PROBE)
    assert.equal(0, rc, out)
    assert.equal("plain", out)
    rc, out = lua54('local ps = require "proxystore"\n' ..
      'assert(ps.use_big_allocator() == true and ps.use_big_allocator() == true)\n' .. PROBE)
    assert.equal(0, rc, out)
    assert.equal("big", out)
  end)

  it("is installed by the proxystore binary for its own state", function()
    local f = io.open(tmp .. "/probe.lua", "w")
    f:write(PROBE)
    f:close()
    local rc, out = run(("%s %s"):format(shell.quote(BUILD .. "/bin/proxystore"),
      shell.quote(tmp .. "/probe.lua")))
    assert.equal(0, rc, out)
    assert.equal("big", out:gsub("rc=%d+\n$", ""))
  end)
end)

describe("proxystore.core", function()
  it("stays loaded after lua_close: its threads may still run its code", function()
    local tmp = shell.tempdir("pinned")
    finally(function() shell.rmtree(tmp) end)
    local bin = tmp .. "/pinned_test"
    local rc, out = shell.sh(string.format("cd %s && ${CC:-cc} -std=c11 -Wall -Wextra -Werror " ..
      "%s -o %s spec/c/pinned_test.c $(pkg-config --cflags --libs lua5.4) -ldl",
      shell.quote(ROOT), SANITIZED and SAN_FLAGS or "-O1 -g", shell.quote(bin)))
    assert.equal(0, rc, out)
    rc, out = run(shell.quote(bin) .. " " .. shell.quote(BUILD .. "/lib/?.so"))
    assert.equal(0, rc, out)
    assert.equal("loaded mapped\nclosed mapped\nrc=0\n", out)
  end)
end)

describe("proxystore.h", function()
  local tmp
  setup(function() tmp = shell.tempdir("cxx") end)
  teardown(function() shell.rmtree(tmp) end)

  it("links into a C++ host and gives the version as numbers", function()
    local bin = tmp .. "/cxx_host"
    local rc, out = build_host("CXX:-c++", "c++11", "spec/c/cxx_host.cpp", bin)
    assert.equal(0, rc, out)
    rc, out = run(shell.quote(bin))
    assert.equal(0, rc, out)
    local maj, min, pat = ps._VERSION:match("^(%d+)%.(%d+)%.(%d+)$")
    local num = tonumber(maj) * 10000 + tonumber(min) * 100 + tonumber(pat)
    assert.equal(("hello %s %d\n"):format(ps._VERSION, num), out:gsub("rc=%d+\n$", ""))
  end)
end)
