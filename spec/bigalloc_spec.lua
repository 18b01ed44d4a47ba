-- Large blocks (src/bigalloc.c) across fork, from the plain-C test
-- spec/c/bigalloc_fork_test.c: a child forked while the prefetch thread
-- holds the block cache's lock must still allocate.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

-- Without the sanitizer preload of spec/run.sh: compiler and tools are
-- not ours, and the test binary is not instrumented.
local CLEAN = "unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; "

local function sh(cmd)
  local f = io.popen(CLEAN .. cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  return tonumber(out:match("rc=(%d+)\n?$")), out
end

describe("large blocks", function()
  it("stay usable in a child forked while another thread holds their lock", function()
    local tmp = assert(io.popen(CLEAN .. "mktemp -d /tmp/ps-bigalloc.XXXXXX")):read("l")
    finally(function() os.execute(CLEAN .. "rm -rf '" .. tmp .. "'") end)
    local bin = tmp .. "/bigalloc_fork_test"
    -- bigalloc.c is included by the test itself, so it is built alone.
    local rc, out = sh(string.format(
      "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -g "
      .. "$(pkg-config --cflags lua5.4) -o '%s' spec/c/bigalloc_fork_test.c "
      .. "$(pkg-config --libs lua5.4) -lpthread -ldl", ROOT, bin))
    assert.are.equal(0, rc, out)
    rc, out = sh("'" .. bin .. "'")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("3 tests, 0 failures", 1, true), out)
  end)
end)
