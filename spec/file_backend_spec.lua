-- The file backend driven from plain C (spec/c/backend_file_test.c), with
-- no Lua in between: versions, refused keys, modes, clear at close.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

local shell = require "helpers.shell"
local sh = shell.sh

describe("the file backend from C", function()
  local tmp, bin

  setup(function()
    tmp = shell.tempdir("filebackend")
    bin = tmp .. "/backend_file_test"
    -- The compiler must not run under the sanitizer preload of spec/run.sh.
    -- backends.c lists every backend, so the C test links the whole core
    -- (without the Lua-facing host program).
    local rc, out = sh(string.format(
      "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror "
      .. "-D_GNU_SOURCE -g $(pkg-config --cflags lua5.4 hiredis) -o '%s' "
      .. "spec/c/backend_file_test.c %s "
      .. "$(pkg-config --libs lua5.4 hiredis libcrypto) -lpthread -lm -ldl",
      ROOT, bin, shell.core_c(ROOT)))
    assert(rc == 0, out)
  end)

  teardown(function()
    shell.rmtree(tmp)
  end)

  local function run_in(dir)
    local rc, out = sh(string.format("'%s' '%s'", bin, dir))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("ok 45 ", 1, true), out)
    assert.is_nil(out:find("not ok", 1, true), out)
  end

  it("passes its checks on a disk directory, creating and removing parents", function()
    run_in(tmp .. "/a/b/c")
    assert.is_nil((os.rename(tmp .. "/a", tmp .. "/a")))
  end)

  it("passes its checks on /dev/shm", function()
    local dir = tmp:gsub("^/tmp/", "/dev/shm/")
    run_in(dir)
    assert.is_nil((os.rename(dir, dir)))
  end)
end)
