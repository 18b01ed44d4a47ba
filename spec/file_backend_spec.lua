-- The file backend driven from plain C (spec/c/backend_file_test.c), with
-- no Lua in between: versions, refused keys, modes, clear at close.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

-- Without the sanitizer preload of spec/run.sh: compiler and tools are
-- not ours, and the test binary is not instrumented.
local CLEAN = "unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; "

local function sh(cmd)
  local f = io.popen(CLEAN .. cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, out
end

describe("the file backend from C", function()
  local tmp, bin

  setup(function()
    tmp = assert(io.popen(CLEAN .. "mktemp -d /tmp/ps-filebackend.XXXXXX")):read("l")
    bin = tmp .. "/backend_file_test"
    -- The compiler must not run under the sanitizer preload of spec/run.sh.
    -- backends.c lists every backend, so the Redis one links in too.
    local srcs = {}
    for _, f in ipairs { "backend_file", "key", "backends", "backend_redis", "redis_chunks",
                         "redis_conn", "bigalloc", "prefetch" } do
      srcs[#srcs + 1] = "src/" .. f .. ".c"
    end
    local rc, out = sh(string.format(
      "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror "
      .. "-D_GNU_SOURCE -g $(pkg-config --cflags lua5.4 hiredis) -o '%s' "
      .. "spec/c/backend_file_test.c %s $(pkg-config --libs lua5.4 hiredis) -lpthread -ldl",
      ROOT, bin, table.concat(srcs, " ")))
    assert(rc == 0, out)
  end)

  teardown(function()
    if tmp then os.execute(CLEAN .. "rm -rf '" .. tmp .. "'") end
  end)

  local function run_in(dir)
    local rc, out = sh(string.format("'%s' '%s'", bin, dir))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("ok 41 ", 1, true), out)
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
