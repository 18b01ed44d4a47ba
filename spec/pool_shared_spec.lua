-- ps.pool: large frames through the slots' shared memory, values that
-- several tasks share put in the store once, and the store calls that let
-- the pool encode a value once.

local ps = require "proxystore"
local pool_mod = require "proxystore.pool"
local shell = require "helpers.shell"

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

local function listdir(dir)
  local t = {}
  local p = io.popen("env -u LD_PRELOAD ls -A " .. shell.quote(dir) .. " 2>/dev/null")
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

-- Objects in dir (a file store's directory), spare and temporary files aside.
local function objects(dir)
  local t = {}
  for _, n in ipairs(listdir(dir)) do
    if n:sub(1, 1) ~= "." then t[#t + 1] = n end
  end
  return t
end

local function len(s) return #s end

describe("a pool's shared memory", function()
  local pool
  after_each(function()
    if pool then pool:close() end
    pool = nil
  end)

  it("carries large arguments and results of the default pool, not the store", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    local big = ("0123456789"):rep(1000)
    local n, back = pool:submit(function(s) return #s, s:upper() .. "!" end, big):result()
    assert.equal(10000, n)
    assert.equal(big .. "!", back)
    local m = pool:metrics()
    assert.equal(1, m.shm_args)
    assert.equal(1, m.shm_results)
    assert.equal(0, m.proxied_args)
    assert.equal(0, m.proxied_results)
    assert.equal(0, pool.store:metrics().put.count)
  end)

  it("sends frames under the threshold inline", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    assert.equal(3, pool:submit(len, "abc"):result())
    local m = pool:metrics()
    assert.equal(0, m.shm_args)
    assert.equal(0, m.shm_results)
  end)

  it("is not used when the threshold is math.huge (by value)", function()
    pool = ps.pool { workers = 1, proxy_threshold = math.huge }
    local big = ("x"):rep(300000)
    assert.equal(300000, pool:submit(len, big):result())
    assert.equal(0, pool:metrics().shm_args)
  end)

  it("carries frames larger than the previous ones, task after task, on every worker", function()
    pool = ps.pool { workers = 2, proxy_threshold = 1024 }
    local sizes = { 5000, 3 << 20, 2000, 9 << 20, 100000 }
    local fs = {}
    for i, n in ipairs(sizes) do
      -- distinct contents: each task's own value, none shared
      fs[i] = pool:submit(function(s) return #s, s:sub(1, 1), s:sub(-1) end,
        string.char(64 + i):rep(n))
    end
    for i, n in ipairs(sizes) do
      local got, first, last = fs[i]:result()
      assert.equal(n, got)
      assert.equal(string.char(64 + i), first)
      assert.equal(string.char(64 + i), last)
    end
    assert.equal(#sizes, pool:metrics().shm_args)
    assert.equal(0, pool:metrics().shared_puts)
  end)

  it("keeps a replacement worker's frames apart from the dead one's", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    local e = select(2, pcall(function()
      return pool:submit(function(s) os.exit(3) end, ("d"):rep(50000)):result()
    end))
    assert.equal("worker", e.kind)
    assert.equal(50000, pool:submit(len, ("e"):rep(50000)):result())
    local s = pool:submit(function() return ("r"):rep(70000) end):result()
    assert.equal(("r"):rep(70000), s)
  end)

  it("gives the slot's memory to no other process a task starts", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    assert.equal(1 << 20, pool:submit(len, ("m"):rep(1 << 20)):result())
    -- a process the worker forks does not inherit the mapping
    local maps = pool:submit(function()
      local f = io.popen("cat /proc/self/maps")
      local out = f:read("a")
      f:close()
      return out
    end):result()
    assert.is_nil(maps:find("proxystore-pool", 1, true))
  end)

  it("is sealed at its size, so no mapping reaches past its end (C test)", function()
    local tmp = shell.tempdir("poolshm")
    finally(function() shell.rmtree(tmp) end)
    local bin = tmp .. "/pool_shm_test"
    local rc, out = shell.sh(string.format(
      "cd '%s' && ${CC:-cc} -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -g -Isrc "
      .. "-Isrc/core -Isrc/pool -Isrc/store $(pkg-config --cflags lua5.4) -o '%s' "
      .. "spec/c/pool_shm_test.c src/pool/pool_shm.c src/core/buf.c src/core/bigalloc.c "
      .. "$(pkg-config --libs lua5.4) -lpthread -ldl", ROOT, bin))
    assert.are.equal(0, rc, out)
    rc, out = shell.sh(shell.quote(bin))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("0 failures", 1, true), out)
  end)
end)

describe("values shared by tasks", function()
  local dir, store, pool, saved

  before_each(function()
    dir = shell.tempdir("poolshared")
    store = ps.init_store("file", { name = "shared-" .. dir:match("[^/]+$"), dir = dir })
    saved = { pool_mod._shared_idle, pool_mod._seen_bytes }
  end)

  after_each(function()
    pool_mod._shared_idle, pool_mod._seen_bytes = saved[1], saved[2]
    if pool then pool:close() end
    pool = nil
    store:close()
    shell.rmtree(dir)
  end)

  it("puts a string that many tasks take in the store once", function()
    pool = ps.pool { workers = 2, store = store, proxy_threshold = 1024 }
    local big = ("s"):rep(100000)
    local fs = {}
    for i = 1, 10 do fs[i] = pool:submit(len, big) end
    for i = 1, 10 do assert.equal(100000, fs[i]:result()) end
    local m = pool:metrics()
    assert.equal(1, m.shared_puts)
    -- the first task took it in its frame (by the store, single use); the
    -- nine others a proxy to the one copy
    assert.equal(9, m.shared_args)
    assert.equal(1, m.proxied_args)
    assert.equal(2, store:metrics().put.count)
    -- shared, not single use: still there for the next task
    assert.equal(1, #objects(dir))
    assert.equal(100000, pool:submit(len, big):result())
    assert.equal(1, pool:metrics().shared_puts)
  end)

  it("puts a string the task's function captures in the store once", function()
    pool = ps.pool { workers = 2, proxy_threshold = 1024 }
    local big = ("u"):rep(200000)
    local f = function() return #big, big:sub(1, 2) end
    local fs = {}
    for i = 1, 6 do fs[i] = pool:submit(f) end
    for i = 1, 6 do assert.same({ 200000, "uu" }, { fs[i]:result() }) end
    assert.same({ 200000, 200000, 200000, n = 3 },
      pool:map(function() return #big end, { 1, 2, 3 }))
    local m = pool:metrics()
    assert.equal(1, m.shared_puts)
    assert.equal(8, m.shared_args)
    assert.equal(1, m.shm_args)
  end)

  it("gives each task its own copy of a shared table", function()
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    local t = {}
    for i = 1, 1000 do t[i] = i end
    local grab = function(list)
      local before = list[1]
      list[1] = "changed by a task"
      return before, #list
    end
    for _ = 1, 4 do
      assert.same({ 1, 1000 }, { pool:submit(grab, t):result() })
    end
    assert.equal(1, t[1])
    assert.equal(1, pool:metrics().shared_puts)
  end)

  it("keeps one table one table within a task (argument and upvalue)", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    local t = {}
    for i = 1, 1000 do t[i] = i end
    local f = function(a, b) return rawequal(a, b), rawequal(a, t), #a end
    for _ = 1, 3 do
      assert.same({ true, true, 1000 }, { pool:submit(f, t, t):result() })
    end
    assert.equal(1, pool:metrics().shared_puts)
  end)

  it("evicts a shared table's copy once the table is collected", function()
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    do
      local t = {}
      for i = 1, 1000 do t[i] = i end
      for _ = 1, 3 do assert.equal(1000, pool:submit(len, t):result()) end
    end
    assert.equal(1, #objects(dir))
    collectgarbage()
    collectgarbage()
    pool:submit(len, "x"):result()   -- the pool evicts on its next step
    assert.same({}, objects(dir))
  end)

  it("evicts the oldest idle shared strings beyond its budget", function()
    pool_mod._shared_idle = 150000
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    local a, b = ("a"):rep(100000), ("b"):rep(100000)
    for _ = 1, 2 do assert.equal(100000, pool:submit(len, a):result()) end
    assert.equal(1, #objects(dir))
    for _ = 1, 2 do assert.equal(100000, pool:submit(len, b):result()) end
    -- a went idle first and does not fit beside b
    assert.equal(1, #objects(dir))
    assert.equal(2, pool:metrics().shared_puts)
    assert.equal(100000, pool:submit(len, b):result())
    assert.equal(2, pool:metrics().shared_puts)
  end)

  it("never takes a new string for an old one that had the same address", function()
    pool_mod._seen_bytes = 1
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    for i = 1, 20 do
      -- same length each time: only the address could tell them apart
      local s = string.char(64 + i):rep(50000)
      local n, c = pool:submit(function(x) return #x, x:sub(-1) end, s):result()
      assert.equal(#s, n)
      assert.equal(string.char(64 + i), c)
      s = nil
      collectgarbage()
    end
    -- none was taken for one seen before
    assert.equal(0, pool:metrics().shared_puts)
    assert.equal(20, pool:metrics().shm_args)
  end)

  it("leaves nothing in the store after close", function()
    pool = ps.pool { workers = 2, store = store, proxy_threshold = 1024 }
    local s = ("c"):rep(100000)
    local t = {}
    for i = 1, 1000 do t[i] = i end
    local fs = {}
    for i = 1, 6 do fs[i] = pool:submit(function(x, y) return #x + #y end, s, t) end
    for i = 1, 6 do assert.equal(101000, fs[i]:result()) end
    assert.equal(2, pool:metrics().shared_puts)
    assert.equal(2, #objects(dir))
    pool:close()
    pool = nil
    assert.same({}, objects(dir))
  end)

  it("sends a shared value by value when the store refuses it", function()
    pool = ps.pool { workers = 1, proxy_threshold = 1024 }
    local big = ("r"):rep(100000)
    assert.equal(100000, pool:submit(len, big):result())
    shell.rmtree(pool.dir)   -- the private store can write nothing now
    assert.equal(100000, pool:submit(len, big):result())
    assert.equal(0, pool:metrics().shared_puts)
    assert.equal(2, pool:metrics().shm_args)
  end)
end)

describe("store internals for the pool", function()
  local dir, store
  before_each(function()
    dir = shell.tempdir("encoded")
    store = ps.init_store("file", { name = "enc-" .. dir:match("[^/]+$"), dir = dir })
  end)
  after_each(function()
    store:close()
    shell.rmtree(dir)
  end)

  it("puts bytes encoded once, under a new key or a given one", function()
    local box, size = store:_encode({ 1, 2, x = "y" })
    assert.is_true(size > 0)
    local key = store:_put_encoded(box)
    assert.same({ 1, 2, x = "y" }, store:get(key))
    local e = select(2, pcall(store._put_encoded, store, box))
    assert.matches("already put", tostring(e))
    box = store:_encode("z")
    assert.equal("k1", store:_put_encoded(box, { key = "k1" }))
    assert.equal("z", store:get("k1"))
  end)

  it("encodes with the store's serializer", function()
    local json = ps.init_store("file", { name = "enc-json-" .. dir:match("[^/]+$"),
                                         dir = dir, serializer = "json" })
    finally(function() json:close() end)
    local box, size = json:_encode({ a = 1 })
    assert.equal(#'{"a":1}', size)
    assert.same({ a = 1 }, json:get(json:_put_encoded(box)))
  end)

  it("gets a fresh copy that the cache neither serves nor keeps", function()
    local key = store:put({ n = 1 })
    local a = store:get(key)
    local b = store:_get_copy(key)
    local c = store:_get_copy(key)
    assert.is_false(rawequal(a, b))
    assert.is_false(rawequal(b, c))
    assert.is_true(rawequal(a, store:get(key)))
    assert.same({ n = 1 }, c)
    assert.equal("missing_key", select(2, pcall(store._get_copy, store, "nope")).kind)
  end)
end)

describe("values shared by tasks on a Redis store", function()
  local redis = require "helpers.redis"
  local srv, pool

  setup(function() srv = redis.start() end)
  teardown(function() if srv then srv:stop() end end)
  after_each(function()
    if pool then pool:close() end
    pool = nil
  end)

  it("are put once and gone from Redis after close", function()
    local url = ("redis://%s:%d"):format(srv.host, srv.port)
    pool = ps.pool { workers = 2, store = url, proxy_threshold = 1024 }
    local big = ("q"):rep(50000)
    local fs = {}
    for i = 1, 6 do fs[i] = pool:submit(function(s, k) return #s + k end, big, i) end
    for i = 1, 6 do assert.equal(50000 + i, fs[i]:result()) end
    assert.equal(1, pool:metrics().shared_puts)
    -- the shared copy is there, the single-use one is gone
    assert.equal("1", srv:cli("DBSIZE"):match("%d+"))
    pool:close()
    pool = nil
    assert.equal("0", srv:cli("DBSIZE"):match("%d+"))
  end)
end)
