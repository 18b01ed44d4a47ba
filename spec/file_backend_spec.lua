-- The file backend driven from plain C (spec/c/backend_file_test.c), with
-- no Lua in between: versions, refused keys, modes, clear at close.

local shell = require "helpers.shell"
local sh = shell.sh

describe("the file backend from C", function()
  local tmp, bin

  setup(function()
    tmp = shell.tempdir("filebackend")
    bin = shell.build_c_test("backend_file_test", tmp)
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
