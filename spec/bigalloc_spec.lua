-- Large blocks (src/core/bigalloc.c) across fork, from the plain-C test
-- spec/c/bigalloc_fork_test.c: a child forked while the prefetch thread
-- holds the block cache's lock must still allocate.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

local shell = require "helpers.shell"

local function build_and_run(name)
  local tmp = shell.tempdir("bigalloc")
  local bin = tmp .. "/" .. name
  -- bigalloc.c is included by the test itself, so it is built alone.
  local rc, out = shell.sh(string.format(
    "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -g -Isrc -Isrc/core -Isrc/store "
    .. "$(pkg-config --cflags lua5.4) -o '%s' spec/c/%s.c "
    .. "$(pkg-config --libs lua5.4) -lpthread -ldl", ROOT, bin, name))
  if rc == 0 then rc, out = shell.sh(shell.quote(bin)) end
  shell.rmtree(tmp)
  return rc, out
end

describe("medium blocks", function()
  it("are carved from huge-page chunks and move between kinds in a Lua state", function()
    local rc, out = build_and_run("bigalloc_medium_test")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find(" 0 failures", 1, true), out)
  end)
end)

describe("a blob placed for a string", function()
  it("becomes that Lua string without a copy where the wrapper is, else is copied", function()
    local rc, out = build_and_run("bigalloc_adopt_test")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find(" 0 failures", 1, true), out)
  end)
end)

describe("large blocks", function()
  it("stay usable in a child forked while another thread holds their lock", function()
    local tmp = shell.tempdir("bigalloc")
    finally(function() shell.rmtree(tmp) end)
    local bin = tmp .. "/bigalloc_fork_test"
    -- bigalloc.c is included by the test itself, so it is built alone.
    local rc, out = shell.sh(string.format(
      "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -g -Isrc -Isrc/core -Isrc/store "
      .. "$(pkg-config --cflags lua5.4) -o '%s' spec/c/bigalloc_fork_test.c "
      .. "$(pkg-config --libs lua5.4) -lpthread -ldl", ROOT, bin))
    assert.are.equal(0, rc, out)
    rc, out = shell.sh(shell.quote(bin))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("3 tests, 0 failures", 1, true), out)
  end)
end)

describe("serialization buffers", function()
  it("of 1 MiB and more are big blocks, reused warm after they are freed", function()
    local rc, out = build_and_run("bigalloc_buf_test")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find(" 0 failures", 1, true), out)
  end)
end)
