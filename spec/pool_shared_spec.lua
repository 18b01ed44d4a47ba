-- ps.pool: large frames through the slots' shared memory, and the store
-- calls that let the pool encode a value once.

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
      .. "spec/c/pool_shm_test.c src/pool/pool_shm.c src/core/buf.c "
      .. "$(pkg-config --libs lua5.4)", ROOT, bin))
    assert.are.equal(0, rc, out)
    rc, out = shell.sh(shell.quote(bin))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("0 failures", 1, true), out)
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
