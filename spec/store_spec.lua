-- The local store, the registry of stores, ProxyStore's init_*_backend
-- API, errors.
local ps = require "proxystore"

local function perr(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("the local store", function()
  local store
  before_each(function() store = ps.init_store("local", {name = "spec-local"}) end)
  after_each(function() store:close() end)

  it("keeps objects by reference", function()
    local t = {1, 2}
    local key = store:put(t)
    assert.are.equal(t, store:get(key))
    assert.matches("^%x+$", key)
    assert.are.equal(32, #key)
  end)

  it("stores nil and false, and tells them from a missing key", function()
    local kn, kf = store:put(nil), store:put(false)
    assert.is_true(store:exists(kn))
    assert.is_nil(store:get(kn, "default"))
    assert.is_false(store:get(kf, "default"))
    assert.are.equal("default", store:get("absent", "default"))
    assert.is_nil(store:get("absent"))
  end)

  it("takes a user key, evicts, and evicting an absent key is fine", function()
    assert.are.equal("k1", store:put("v", {key = "k1"}))
    assert.is_true(store:exists("k1"))
    store:evict("k1")
    assert.is_false(store:exists("k1"))
    store:evict("k1")
  end)

  it("makes distinct random keys", function()
    local seen = {}
    for _ = 1, 1000 do
      local k = store:put(1)
      assert.is_nil(seen[k])
      seen[k] = true
    end
  end)

  it("gives proxies that resolve lazily through the store", function()
    local p = store:proxy({v = 1})
    assert.is_false(ps.is_resolved(p))
    assert.are.equal(32, #ps.key(p))
    assert.matches("store=local:spec%-local", ps.repr(p))
    assert.are.equal(1, p.v)
    assert.is_true(ps.is_resolved(p))
  end)

  it("deletes an evict proxy's object once resolved", function()
    local p = store:proxy("once", {evict = true})
    local key = ps.key(p)
    assert.is_true(store:exists(key))
    assert.are.equal("ONCE", p:upper())
    assert.is_false(store:exists(key))
  end)

  it("proxy_from_key resolves later, and a missing key is missing_key", function()
    local p = store:proxy_from_key("later")
    store:put({n = 5}, {key = "later"})
    assert.are.equal(5, p.n)
    local err = perr(function() return store:proxy_from_key("never").x end)
    assert.are.equal("missing_key", err.kind)
    assert.are.equal("never", err.key)
    assert.are.equal("spec-local", err.store)
    assert.matches("store_spec%.lua:%d+$", err.where)
    assert.equal("proxystore: " .. err.where .. ": no object under key 'never' in store 'spec-local'",
      tostring(err))
  end)

  it("does batches", function()
    local keys = store:put_batch({"a", "b", {c = 1}})
    assert.are.equal(3, #keys)
    local vals = store:get_batch({keys[1], "absent", keys[3]})
    assert.are.equal(3, vals.n)
    assert.are.equal("a", vals[1])
    assert.is_nil(vals[2])
    assert.are.equal(1, vals[3].c)
    local proxies = store:proxy_batch({10, 20})
    assert.are.equal(30, proxies[1] + proxies[2])
    local named = store:put_batch({1, 2}, {keys = {"x1", "x2"}})
    assert.are.same({"x1", "x2"}, named)
  end)

  it("refuses a batch whose length is negative or absurd, at once", function()
    for _, n in ipairs {-1, 1 << 40, math.maxinteger} do
      local list = setmetatable({}, {__len = function() return n end})
      for _, call in ipairs {store.put_batch, store.get_batch, store.proxy_batch} do
        local err = perr(call, store, list)
        assert.are.equal("config", err.kind)
        assert.matches("a batch holds", tostring(err), 1, true)
      end
    end
  end)

  it("has a name, a kind, a config and metrics", function()
    assert.are.equal("spec-local", store.name)
    assert.are.equal("local", store.kind)
    assert.are.equal("proxystore.Store: spec-local (local)", tostring(store))
    local cfg = store:config()
    assert.are.equal("local", cfg.kind)
    assert.are.equal("spec-local", cfg.name)
    cfg.name = "changed"
    assert.are.equal("spec-local", store:config().name)
    store:put(1, {key = "m"})
    store:get("m")
    local m = store:metrics()
    assert.are.equal(1, m.put.count)
    assert.are.equal(1, m.get.count)
    assert.is_number(m.get.time_total)
    assert.is_number(m.cache.hits)
  end)
end)

describe("the store registry", function()
  it("registers by name, refuses duplicates, unregisters on close", function()
    local s = ps.init_store("local", {name = "reg"})
    assert.are.equal(s, ps.get_store("reg"))
    local err = perr(ps.init_store, "local", {name = "reg"})
    assert.are.equal("config", err.kind)
    s:close()
    assert.is_nil(ps.get_store("reg"))
    s:close()   -- idempotent
    local err2 = perr(s.put, s, 1)
    assert.are.equal("closed", err2.kind)
    assert.matches("closed", tostring(s))
  end)

  it("accepts the local: URL", function()
    local s = ps.init_store("local:", {name = "by-url"})
    assert.are.equal("local", s.kind)
    s:close()
  end)

  it("never lets a local proxy resolve through another local store of its name", function()
    local s = ps.init_store("local", {name = "swap"})
    local p = s:proxy_from_key("k")
    s:close()
    local s2 = ps.init_store("local", {name = "swap"})
    s2:put("v", {key = "k"})
    local err = perr(ps.resolve, p)   -- its objects died with the first store
    assert.are.equal("resolve", err.kind)
    assert.matches("was closed", tostring(err))
    s2:close()
  end)

  it("lets a file proxy find its store again by name after the store was re-created", function()
    local dir = os.tmpname()
    os.remove(dir)
    local s = ps.init_store("file", {name = "swapf", dir = dir})
    local p = s:proxy({v = 9})
    s:close()
    local s2 = ps.init_store("file", {name = "swapf", dir = dir})
    assert.are.equal(9, p.v)
    s2:evict(ps.key(p))
    s2:close()
    os.remove(dir)
  end)

  it("refuses a local store proxy in a process without its store", function()
    local s = ps.init_store("local", {name = "lonely"})
    local blob = ps.serialize(s:proxy({1}))
    s:close()
    local err = perr(ps.resolve, ps.deserialize(blob))
    assert.are.equal("resolve", err.kind)
    assert.matches("another process", tostring(err))
  end)

  it("rejects bad options clearly", function()
    for _, case in ipairs {
      {"nosuchkind", nil},
      {"local", {cache_size = -1}},
      {"local", {cache_size = "big"}},
      {"local", {cache_bytes = -1}},
      {"local", {cache_bytes = 1.5}},
      {"local", {bogus = 1}},
      {"local", {serializer = "xml"}},
      {"local", {serializer = function() end}},
      {"local", "notatable"},
      {42, nil},
    } do
      local err = perr(ps.init_store, case[1], case[2])
      assert.are.equal("config", err.kind)
      assert.matches("^proxystore: ", tostring(err))
    end
  end)

  it("reads the cache size from PROXYSTORE_CACHE_SIZE only when not given", function()
    local s = ps.init_store("local", {name = "cs", cache_size = 3})
    assert.are.equal(3, s:config().cache_size)
    s:close()
    s = ps.init_store("local", {name = "cs"})
    assert.are.equal(16, s:config().cache_size)   -- the default without it
    s:close()
    local code = [[
      local ps = require "proxystore"
      io.write(ps.init_store("local", {name = "a"}):config().cache_size, " ",
               ps.init_store("local", {name = "b", cache_size = 5}):config().cache_size)
      local ok, e = pcall(ps.init_store, "local", {name = "c"})
      io.write(" ", tostring(ok or e.kind))]]
    local script = os.tmpname()
    finally(function() os.remove(script) end)
    local w = assert(io.open(script, "w"))
    w:write(code)
    w:close()
    local function child(env)
      local f = assert(io.popen(env .. " lua5.4 " .. script .. " 2>&1"))
      local out = f:read("a")
      f:close()
      return out
    end
    assert.are.equal("3 5 true", child("PROXYSTORE_CACHE_SIZE=3"))
    assert.are.equal("0 5 true", child("PROXYSTORE_CACHE_SIZE=0"))
    assert.are.equal("16 5 true", child("PROXYSTORE_CACHE_SIZE="))
    local bad = child("PROXYSTORE_CACHE_SIZE=lots")
    assert.truthy(bad:find("PROXYSTORE_CACHE_SIZE must be a non-negative integer", 1, true), bad)
  end)

  it("hides its metatable, whose __gc trusts its argument", function()
    local s = ps.init_store("local", {name = "mt"})
    assert.are.equal("proxystore.Store", getmetatable(s))
    assert.has_error(function() setmetatable(s, {}) end)
    s:close()
  end)
end)

describe("ProxyStore's init_*_backend API", function()
  after_each(function()
    local s = ps.get_store("local")
    if s then s:close() end
  end)

  it("init_local_backend + to_proxy", function()
    local store = ps.init_local_backend()
    assert.are.equal(store, ps.init_local_backend())   -- idempotent
    local p = ps.to_proxy({1, 2, 3})
    assert.are.equal(3, #p)
    local q = ps.to_proxy("x", {key = "chosen", evict = true})
    assert.are.equal("chosen", ps.key(q))
    assert.are.equal("x", ps.extract(q))
    assert.is_false(store:exists("chosen"))
  end)

  it("init_local_backend refuses other options for the store it made", function()
    local store = ps.init_local_backend({cache_size = 4})
    assert.are.equal(store, ps.init_local_backend({cache_size = 4}))
    local err = perr(ps.init_local_backend, {cache_size = 5})
    assert.are.equal("config", err.kind)
    assert.matches("cache_size", tostring(err))
    err = perr(ps.init_local_backend, {serializer = "json"})
    assert.are.equal("config", err.kind)
    assert.are.equal(store, ps.get_store("local"))
    -- cache_bytes left out means its default, given or not
    assert.are.equal(store, ps.init_local_backend({cache_size = 4,
      cache_bytes = require("proxystore.core").cache_bytes_default}))
    err = perr(ps.init_local_backend, {cache_size = 4, cache_bytes = 1024})
    assert.matches("cache_bytes", tostring(err))
  end)

  it("init_local_backend tells custom serializer pairs apart", function()
    local ser, deser = function(v) return v end, function(s) return s end
    local store = ps.init_local_backend({name = "custom-pair", serializer = ser, deserializer = deser})
    assert.are.equal(store, ps.init_local_backend({name = "custom-pair", serializer = ser,
                                                   deserializer = deser}))
    local err = perr(ps.init_local_backend, {name = "custom-pair",
      serializer = function(v) return v end, deserializer = deser})
    assert.are.equal("config", err.kind)
    assert.matches("serializer functions", tostring(err), 1, true)
    store:close()
  end)
end)

describe("errors", function()
  it("are tables with kind, message and a one-line proxystore: string", function()
    local core = require "proxystore.core"
    local e = core.error("timeout", "too slow", {address = "h:1"})
    assert.are.equal("timeout", e.kind)
    assert.are.equal("h:1", e.address)
    assert.matches("^spec/store_spec%.lua:%d+$", e.where)
    assert.are.equal("proxystore: " .. e.where .. ": too slow", tostring(e))
    assert.is_true(ps.is_error(e))
    assert.is_false(ps.is_error({kind = "x"}))
  end)

  it("bad keys are config errors", function()
    local s = ps.init_store("local", {name = "keys"})
    for _, k in ipairs {"", {}, true} do
      local err = perr(s.get, s, k)
      assert.are.equal("config", err.kind)
    end
    s:close()
  end)
end)

describe("the version", function()
  it("is one string, the same in C, Lua and the rockspec", function()
    assert.matches("^%d+%.%d+%.%d+$", ps._VERSION)
    assert.are.equal(require("proxystore.core")._VERSION, ps._VERSION)
    local root = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
    local f = io.open(root .. "/src/proxystore.h")
    if f then
      local header = f:read("a")
      f:close()
      local part = function(name)
        return header:match("#define PROXYSTORE_VERSION_" .. name .. " (%d+)\n")
      end
      assert.are.equal(ps._VERSION, part("MAJOR") .. "." .. part("MINOR") .. "." .. part("PATCH"))
    end
    local r = io.open(root .. "/rockspec/proxystore-" .. ps._VERSION .. "-1.rockspec")
    if r then
      local text = r:read("a")
      r:close()
      assert.are.equal(ps._VERSION .. "-1", text:match('version%s*=%s*"([^"]+)"'))
    end
  end)
end)

describe("async resolution on a file store", function()
  local dir, store
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    store = ps.init_store("file", {name = "async-file", dir = dir, cache_size = 0})
  end)
  after_each(function()
    store:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("prefetches in the background, then resolves from what was fetched", function()
    local p = store:proxy({payload = string.rep("z", 1 << 20)})
    assert.are.equal(p, ps.resolve_async(p))
    assert.is_false(ps.is_resolved(p))
    assert.are.equal(1 << 20, #p.payload)
    assert.is_true(ps.is_resolved(p))
    assert.are.equal(p, ps.resolve_async(p))   -- resolved: a no-op
  end)

  it("reports a missing key at first use, not at prefetch", function()
    local p = store:proxy_from_key("absent")
    ps.resolve_async(p)
    local ok, err = pcall(ps.resolve, p)
    assert.is_false(ok)
    assert.are.equal("missing_key", err.kind)
    assert.is_false(ps.is_resolved(p))
  end)

  it("frees everything when a proxy is collected while its prefetch runs", function()
    for _ = 1, 50 do
      ps.resolve_async(store:proxy(string.rep("y", 100000)))
    end
    collectgarbage(); collectgarbage()
  end)
end)

describe("a store under hostile callbacks and configs", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
  end)
  after_each(function()
    for _, name in ipairs {"hostile", "shared-name"} do
      local s = ps.get_store(name)
      if s then s:close() end
    end
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function perr2(f, ...)
    local ok, err = pcall(f, ...)
    assert.is_false(ok)
    return err
  end

  it("raises closed when a serializer closes the store mid-put", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir})
    local closing = function() s:close(); return "x" end
    assert.are.equal("closed", perr2(s.put, s, {1}, {serializer = closing}).kind)
    local s2 = ps.init_store("file", {name = "hostile", dir = dir})
    local closing2 = function() s2:close(); return "x" end
    assert.are.equal("closed", perr2(s2.put_batch, s2, {1, 2}, {serializer = closing2}).kind)
  end)

  it("keeps get_batch keys alive whatever the keys table does", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir})
    local real = {}
    for i = 1, 20 do real[i] = s:put(i, {key = ("k%d"):format(i) .. ("x"):rep(60)}) end
    local keys = setmetatable({}, {
      __len = function() return 20 end,
      __index = function(_, i) collectgarbage(); return ("k%d"):format(i) .. ("x"):rep(60) end,
    })
    local vals = s:get_batch(keys)
    for i = 1, 20 do assert.are.equal(i, vals[i]) end
  end)

  it("never serves one proxy's deserializer output to another reader", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir})
    s:put("payload", {key = "k", serializer = function(v) return v end})
    local a = s:proxy_from_key("k", {deserializer = function(b) return "A:" .. b end})
    local b = s:proxy_from_key("k", {deserializer = function(b2) return "B:" .. b2 end})
    assert.are.equal("A:payload", ps.extract(a))
    assert.are.equal("B:payload", ps.extract(b))
    assert.are.equal("serialization", perr2(s.get, s, "k").kind)
  end)

  it("refuses a serializer that returns something other than a string", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir})
    assert.are.equal("serialization", perr2(s.put, s, 1, {serializer = function() return 42 end}).kind)
  end)

  it("keeps the real cause when lua-cjson cannot be loaded", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir, serializer = "json"})
    local saved_loaded, saved_preload = package.loaded.cjson, package.preload.cjson
    package.loaded.cjson = nil
    package.preload.cjson = function() error("BOOM") end
    local err = perr2(s.put, s, {1})
    package.loaded.cjson, package.preload.cjson = saved_loaded, saved_preload
    assert.are.equal("config", err.kind)
    assert.matches("BOOM", tostring(err.cause))
  end)

  it("never resolves a proxy through a store of another kind with its name", function()
    local f = ps.init_store("file", {name = "shared-name", dir = dir})
    local p = f:proxy("from file")
    f:close()
    local l = ps.init_store("local", {name = "shared-name"})
    l:put("impostor", {key = ps.key(p)})
    local err = perr2(ps.resolve, p)
    assert.are.equal("resolve", err.kind)
    l:close()
  end)

  it("does not bring back a cleared file store from a stale proxy", function()
    local s = ps.init_store("file", {name = "hostile", dir = dir, clear = true})
    local p = s:proxy({1})
    s:close()
    local err = perr2(ps.resolve, p)
    assert.are.equal("resolve", err.kind)
    assert.matches("no longer exists", tostring(err))
    assert.is_nil(ps.get_store("hostile"))
    assert.is_nil(io.open(dir .. "/."))
  end)

  it("refuses timeouts that are not finite", function()
    for _, t in ipairs {0 / 0, math.huge, -1} do
      local err = perr2(ps.init_store, "redis", {name = "hostile", timeout = t})
      assert.are.equal("config", err.kind)
    end
  end)

  it("recreates a local store from its config as a new, distinct store", function()
    local s = ps.init_store("local", {name = "hostile"})
    local p = s:proxy(1)
    local cfg = s:config()
    s:close()
    local s2 = ps.init_store(cfg.kind, cfg)
    assert.matches("was closed", tostring(perr2(ps.resolve, p)))
    s2:close()
  end)
end)

describe("a file store with recycle", function()
  local dir, store
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    store = ps.init_store("file", {name = "recycling", dir = dir, recycle = 2,
                                   clear = true, cache_size = 0})
  end)
  after_each(function()
    store:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function spares()
    local n = 0
    local p = io.popen("ls -A '" .. dir .. "'")
    for name in p:lines() do
      if name:find("^%.ps%-spare%-") then n = n + 1 end
    end
    p:close()
    return n
  end

  it("reuses evicted files and always returns what was put", function()
    local sizes = {300000, 10, 2000000, 5, 1 << 20, 70000, 3}
    for round = 1, 3 do
      for i, n in ipairs(sizes) do
        local v = string.rep(string.char(64 + i + round), n)
        local p = store:proxy(v, {evict = true})
        assert.are.equal(v, ps.extract(p))
        assert.is_false(store:exists(ps.key(p)))
        assert.is_true(spares() <= 2)
      end
    end
    assert.is_true(spares() > 0)   -- evicted files were kept for reuse
  end)

  it("keeps at most recycle spares and removes them at close with clear", function()
    local keys = {}
    for i = 1, 6 do keys[i] = store:put(("x"):rep(i * 1000)) end
    for i = 1, 6 do store:evict(keys[i]) end
    assert.are.equal(2, spares())
    store:close()
    assert.is_nil(io.open(dir .. "/."))   -- spares gone, so the dir it made too
  end)

  it("refuses a recycle count out of range", function()
    local ok, err = pcall(ps.init_store, "file", {name = "bad-recycle", dir = dir, recycle = 1000})
    assert.is_false(ok)
    assert.are.equal("config", err.kind)
  end)
end)
