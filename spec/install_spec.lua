-- Installing proxystore: with luarocks into a temporary tree (--tree and
-- --local), and with make install/uninstall into a DESTDIR, then building
-- a C host against the installed header and library through pkg-config.
--
-- These install and run the plain build (luarocks builds a fresh copy of
-- the checkout; make install ships build/), so the sanitized pass of
-- spec/run.sh marks them pending: nothing of build-asan is involved, and
-- the C API itself runs sanitized in embed_spec.lua.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local SANITIZED = (os.getenv("PROXYSTORE_BUILD") or ""):find("build%-asan") ~= nil
local HAS_HOST = io.open(ROOT .. "/src/host/main.c") ~= nil

-- Runs a shell command outside the sanitizer preload; returns rc, output.
-- A user's shell has no LUA_PATH of this checkout either.
local function sh(cmd)
  local f = io.popen("env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH MAKEFLAGS=-j2 sh -c '"
    .. cmd:gsub("'", "'\\''") .. "' 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, out:gsub("rc=%d+\n?$", "")
end

local function ok(cmd)
  local rc, out = sh(cmd)
  assert(rc == 0, cmd .. "\n" .. out)
  return out
end

local function files_under(dir)
  local out = ok(string.format("cd '%s' && find . -type f -o -type l | sort", dir))
  local list = {}
  for line in out:gmatch("[^\n]+") do list[#list + 1] = line:sub(3) end
  return list
end

-- A script that needs every part: the core, the Lua face, a file store.
local SCRIPT = [[
local ps = require "proxystore"
local store = ps.init_store("file", {dir = arg[1]})
local p = store:proxy({words = {"lazy", "proxy"}})
assert(ps.is_proxy(p) and not ps.is_resolved(p))
print(ps._VERSION, table.concat(p.words, " "),
      package.searchpath("proxystore.core", package.cpath))
store:close()
]]

describe("installation", function()
  local tmp

  setup(function()
    tmp = assert(io.popen("mktemp -d /tmp/ps-install.XXXXXX")):read("l")
    local f = assert(io.open(tmp .. "/script.lua", "w"))
    f:write(SCRIPT)
    f:close()
    ok("mkdir -p '" .. tmp .. "/elsewhere' '" .. tmp .. "/data'")
  end)

  teardown(function()
    if tmp then os.execute("rm -rf '" .. tmp .. "'") end
  end)

  -- A fresh copy of the tracked files: luarocks builds it offline, as a
  -- user's checkout, without reusing this checkout's build/.
  local function fresh_copy(name)
    local src = tmp .. "/" .. (name or "src")
    if not io.open(src .. "/Makefile") then
      -- git's list of files when this is a checkout, else all but builds.
      ok(string.format("mkdir -p '%s' && cd '%s' && if git ls-files >/dev/null 2>&1; "
        .. "then git ls-files -z | xargs -0 cp --parents -t '%s'; else tar -cf - "
        .. "--exclude='./build*' --exclude=./.git . | tar -xf - -C '%s'; fi",
        src, ROOT, src, src))
    end
    return src
  end

  it("luarocks make --tree installs the module, the Lua files and the binary", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local src, tree = fresh_copy(), tmp .. "/tree"
    ok(string.format("cd '%s' && luarocks --lua-version=5.4 make --tree='%s' "
      .. "rockspec/proxystore-scm-1.rockspec", src, tree))
    local want = {
      "lib/lua/5.4/proxystore/core.so",
      "share/lua/5.4/proxystore/init.lua",
      "share/lua/5.4/proxystore/url.lua",
    }
    local got = {}
    for _, f in ipairs(files_under(tree)) do got[f] = true end
    for _, f in ipairs(want) do assert.is_true(got[f] or false, f) end
    -- require works from any directory once the tree is on the paths.
    local out = ok(string.format(
      "cd '%s/elsewhere' && eval \"$(luarocks --lua-version=5.4 path --tree='%s')\" "
      .. "&& lua5.4 '%s/script.lua' '%s/data/rock'", tmp, tree, tmp, tmp))
    local version = require("proxystore")._VERSION
    assert.are.equal(version .. "\tlazy proxy\t" .. tree
      .. "/lib/lua/5.4/proxystore/core.so\n", out)
    if HAS_HOST then
      assert.is_true(got["bin/proxystore"] or false, "bin/proxystore")
      -- The binary finds the tree's Lua files by itself.
      out = ok(string.format("cd '%s/elsewhere' && "
        .. "'%s/bin/proxystore' '%s/script.lua' '%s/data/rockbin'", tmp, tree, tmp, tmp))
      assert.matches("^" .. version:gsub("%.", "%%.") .. "\tlazy proxy\t", out)
      assert.are.equal("proxystore " .. version,
        ok(string.format("'%s/bin/proxystore' --version", tree)):match("[^\n]+"))
    end
  end)

  it("luarocks make --local installs into the user's tree", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local src, home = fresh_copy(), tmp .. "/home"
    ok(string.format("mkdir -p '%s' && cd '%s' && HOME='%s' luarocks --lua-version=5.4 "
      .. "make --local rockspec/proxystore-scm-1.rockspec", home, src, home))
    local out = ok(string.format(
      "cd '%s/elsewhere' && export HOME='%s' && eval \"$(luarocks --lua-version=5.4 path)\" "
      .. "&& lua5.4 '%s/script.lua' '%s/data/local'", tmp, home, tmp, tmp))
    assert.matches("\tlazy proxy\t" .. home:gsub("%p", "%%%0")
      .. "/%.luarocks/lib/lua/5%.4/proxystore/core%.so\n$", out)
    if HAS_HOST then
      out = ok(string.format("cd '%s/elsewhere' && '%s/.luarocks/bin/proxystore' "
        .. "'%s/script.lua' '%s/data/localbin'", tmp, home, tmp, tmp))
      assert.truthy(out:find("\tlazy proxy\t", 1, true), out)
    end
  end)

  -- Commands in a directory first on PATH: `fakes` maps a name to the
  -- body of a shell script standing in for that program.
  local function fake_path(name, fakes)
    local bin = tmp .. "/" .. name
    ok("mkdir -p '" .. bin .. "'")
    for prog, body in pairs(fakes) do
      local f = assert(io.open(bin .. "/" .. prog, "w"))
      f:write("#!/bin/sh\n", body, "\n")
      f:close()
      ok("chmod +x '" .. bin .. "/" .. prog .. "'")
    end
    return "PATH='" .. bin .. "':\"$PATH\""
  end

  it("luarocks make builds with its own variables and flags, over a build/ left by make, "
    .. "without a pkg-config entry for Lua", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    -- other distributions call Lua's .pc lua, lua54, or have none
    local path = fake_path("no-lua-pc", {
      ["pkg-config"] = 'case "$*" in *lua*) exit 1;; esac\nexec /usr/bin/pkg-config "$@"',
    })
    local src, tree = fresh_copy("src-nopc"), tmp .. "/tree-nopc"
    ok(string.format("cd '%s' && make -s all", src))   -- a build/ with make's flags
    local out = ok(string.format("cd '%s' && %s luarocks --lua-version=5.4 make --tree='%s' "
      .. "rockspec/proxystore-scm-1.rockspec", src, path, tree))
    -- every object compiled again, with luarocks' CFLAGS
    local n = 0
    for line in out:gmatch("[^\n]+") do
      if line:find(" -c src/", 1, true) and line:find("-O2 -fPIC", 1, true) then n = n + 1 end
    end
    local sources = ok(string.format("cd '%s' && ls src/*/*.c | grep -vc embed.c", src))
    assert.equal(tonumber(sources), n, out)
    out = ok(string.format("cd '%s/elsewhere' && eval \"$(luarocks --lua-version=5.4 path "
      .. "--tree='%s')\" && lua5.4 '%s/script.lua' '%s/data/nopc'", tmp, tree, tmp, tmp))
    assert.truthy(out:find("\tlazy proxy\t" .. tree, 1, true), out)
    if HAS_HOST then
      out = ok(string.format("cd '%s/elsewhere' && '%s/bin/proxystore' '%s/script.lua' "
        .. "'%s/data/nopcbin'", tmp, tree, tmp, tmp))
      assert.truthy(out:find("\tlazy proxy\t", 1, true), out)
    end
    -- and make after it builds with its own flags again
    out = ok(string.format("cd '%s' && make all", src))
    assert.matches(" -c src/core/error.c", out, 1, true)
    assert.not_matches("-O2 -fPIC", out, 1, true)
  end)

  it("make dist writes a source rock of the versioned rockspec that luarocks installs "
    .. "offline, module and binary", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local version = require("proxystore")._VERSION
    local src, tree = fresh_copy("src-dist"), tmp .. "/tree-dist"
    local rock = "proxystore-" .. version .. "-1.src.rock"
    local out = ok(string.format("cd '%s' && make -s dist", src))
    assert.equal(rock .. "\n", out)
    -- any attempt to reach the network fails
    ok(string.format("cd '%s/elsewhere' && http_proxy=http://127.0.0.1:1 "
      .. "https_proxy=http://127.0.0.1:1 luarocks --lua-version=5.4 install --tree='%s' "
      .. "'%s/%s'", tmp, tree, src, rock))
    out = ok(string.format("cd '%s/elsewhere' && eval \"$(luarocks --lua-version=5.4 path "
      .. "--tree='%s')\" && lua5.4 '%s/script.lua' '%s/data/dist' && luarocks "
      .. "--lua-version=5.4 list --tree='%s' --porcelain", tmp, tree, tmp, tmp, tree))
    assert.truthy(out:find(version .. "\tlazy proxy\t" .. tree, 1, true), out)
    assert.truthy(out:find("proxystore\t" .. version .. "%-1\tinstalled"), out)
    if HAS_HOST then
      assert.are.equal("proxystore " .. version,
        ok(string.format("'%s/bin/proxystore' --version", tree)):match("[^\n]+"))
    end
  end)

  it("gives the versioned rockspec a homepage, and luarocks test runs the specs", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local version = require("proxystore")._VERSION
    -- the copy whose build/ make made last (above): only the library is left to build
    local src = fresh_copy("src-nopc")
    local rockspec = "rockspec/proxystore-" .. version .. "-1.rockspec"
    local f = assert(io.open(src .. "/" .. rockspec))
    local text = f:read("a")
    f:close()
    assert.matches('homepage%s*=%s*"https://', text)
    local out = ok(string.format("cd '%s' && luarocks --lua-version=5.4 test %s "
      .. "spec/url_spec.lua", src, rockspec))
    local passed, failed = out:match("\n(%d+) passed, (%d+) failed\n?$")
    assert.is_truthy(passed, out)
    assert.is_true(tonumber(passed) > 10, out)
    assert.equal("0", failed)
  end)

  it("make demo installs only what the demo needs: no clang, no redis-server, no busted", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    -- as on a machine where nothing is installed yet; apt-get only says
    -- what it was asked for
    local log = tmp .. "/apt.log"
    local path = fake_path("fresh-machine", {
      ["dpkg-query"] = "exit 1",
      ["apt-get"] = "echo \"$*\" >> '" .. log .. "'",
      id = "echo 0",
    })
    local out = ok(string.format("cd '%s' && %s make --no-print-directory demo "
      .. "DEMO='examples/mapreduce.lua 4 500 3'", ROOT, path))
    assert.matches("counted 2000 words", out, 1, true)
    local f = assert(io.open(log))
    local asked = f:read("a")
    f:close()
    local install = asked:match("install [^\n]*")
    assert.is_truthy(install, asked)
    local pkgs = {}
    for p in install:gmatch("%S+") do
      if not p:match("^%-") and p ~= "install" then pkgs[#pkgs + 1] = p end
    end
    table.sort(pkgs)
    assert.same({ "gcc", "libedit-dev", "libhiredis-dev", "liblua5.4-dev", "libssl-dev", "make",
      "pkg-config" }, pkgs)
  end)

  it("make install puts exactly its files in DESTDIR, a C host builds against them, "
    .. "and make uninstall removes them all", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local dest, prefix = tmp .. "/dest", "/usr/local"
    ok(string.format("cd '%s' && make --no-print-directory -s BUILD=build install "
      .. "DESTDIR='%s' PREFIX=%s", ROOT, dest, prefix))
    local want = {
      "usr/local/include/proxystore.h",
      "usr/local/lib/libproxystore.a",
      "usr/local/lib/lua/5.4/proxystore/core.so",
      "usr/local/lib/pkgconfig/proxystore.pc",
    }
    for f in ok("cd '" .. ROOT .. "' && ls lua/proxystore/*.lua"):gmatch("lua/proxystore/([^\n]+)") do
      want[#want + 1] = "usr/local/share/lua/5.4/proxystore/" .. f
    end
    if HAS_HOST then want[#want + 1] = "usr/local/bin/proxystore" end
    table.sort(want)
    assert.are.same(want, files_under(dest))

    -- The installed Lua files and module work from another directory.
    local root = dest .. prefix
    local out = ok(string.format("cd '%s/elsewhere' && LUA_PATH='%s/share/lua/5.4/?.lua;"
      .. "%s/share/lua/5.4/?/init.lua' LUA_CPATH='%s/lib/lua/5.4/?.so' lua5.4 "
      .. "'%s/script.lua' '%s/data/make'", tmp, root, root, root, tmp, tmp))
    assert.truthy(out:find("\tlazy proxy\t" .. root .. "/lib/lua/5.4/proxystore/core.so",
      1, true), out)

    -- A C host from a directory with no sources, through pkg-config only.
    local pc = string.format("PKG_CONFIG_PATH='%s/lib/pkgconfig'", root)
    local version = ok(pc .. " pkg-config --modversion proxystore"):gsub("\n", "")
    assert.are.equal(require("proxystore")._VERSION, version)
    local flags = ok(pc .. " pkg-config --cflags --libs proxystore")
    assert.truthy(flags:find("-lproxystore", 1, true), flags)
    assert.truthy(flags:find("-llua5.4", 1, true), flags)
    ok(string.format("cp '%s/examples/embed/host.c' '%s/examples/embed/script.lua' '%s/elsewhere/'",
      ROOT, ROOT, tmp))
    ok(string.format("cd '%s/elsewhere' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror "
      .. "-o host host.c $(%s pkg-config --cflags --libs proxystore)", tmp, pc))
    out = ok(string.format("cd '%s/elsewhere' && ./host script.lua", tmp))
    assert.matches("^pushed a proxy: yes\nsummarize: 85 bytes, 3 lines, 18 words "
      .. "%(resolved before use: false%)\nextracted 85 bytes, same as put: yes\n"
      .. "bad URL: code 2, proxystore: bad store URL 'nosuch://x'", out)
    if HAS_HOST then
      out = ok(string.format("cd '%s/elsewhere' && "
        .. "'%s/bin/proxystore' '%s/script.lua' '%s/data/makebin'", tmp, root, tmp, tmp))
      assert.truthy(out:find("\tlazy proxy\t", 1, true), out)
    end

    ok(string.format("cd '%s' && make --no-print-directory -s BUILD=build uninstall "
      .. "DESTDIR='%s' PREFIX=%s", ROOT, dest, prefix))
    assert.are.same({}, files_under(dest))
    -- proxystore's own directories go too; shared ones (bin, lib) stay.
    ok(string.format("test ! -e '%s/lib/lua/5.4/proxystore' && "
      .. "test ! -e '%s/share/lua/5.4/proxystore' && test -d '%s/lib'", root, root, root))
  end)

  it("writes a proxystore.pc that finds a multiarch LIBDIR outside PREFIX/lib", function()
    if SANITIZED then pending("plain build only (see the top of install_spec.lua)") return end
    local dest = tmp .. "/multiarch"
    ok(string.format("cd '%s' && make --no-print-directory -s BUILD=build install "
      .. "DESTDIR='%s' PREFIX=/usr LIBDIR=/usr/lib/x86_64-linux-gnu", ROOT, dest))
    local pc = string.format("PKG_CONFIG_PATH='%s/usr/lib/x86_64-linux-gnu/pkgconfig'", dest)
    local inc = ok(pc .. " pkg-config --variable=includedir proxystore"):gsub("\n", "")
    local lib = ok(pc .. " pkg-config --variable=libdir proxystore"):gsub("\n", "")
    ok(string.format("test -f '%s/proxystore.h' && test -f '%s/libproxystore.a'", inc, lib))
    ok(string.format("cd '%s' && make --no-print-directory -s BUILD=build uninstall "
      .. "DESTDIR='%s' PREFIX=/usr LIBDIR=/usr/lib/x86_64-linux-gnu", ROOT, dest))
    assert.are.same({}, files_under(dest))
  end)
end)
