-- store:config() for every kind: ps.init_store(cfg.kind, cfg) gives an
-- equivalent store, URLs give the same configs as options, and Redis store
-- proxies serialized in one process resolve in another.
local ps = require "proxystore"
local url = require "proxystore.url"
local have_redis, redis = pcall(require, "helpers.redis")

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function run_lua(code)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local p = assert(io.popen("lua5.4 " .. quote(file) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(file)
  return ok, out
end

local counter = 0
local function unique(what)
  counter = counter + 1
  return string.format("config-spec-%s-%d", what, counter)
end

-- Closes s, re-creates it from its config, checks the new store has the
-- same config and reaches the object stored under key; returns the new one.
local function recreate(s, key, value)
  local cfg = s:config()
  assert.are.equal(s.kind, cfg.kind)
  assert.are.equal(s.name, cfg.name)
  s:close()
  assert.is_nil(ps.get_store(cfg.name))
  local again = ps.init_store(cfg.kind, cfg)
  local got = again:config()
  if cfg.kind == "local" then
    -- a re-created local store is a new instance: old proxies never see it
    assert.are_not.equal(cfg.instance, got.instance)
    cfg.instance, got.instance = nil, nil
  end
  assert.are.same(cfg, got)
  assert.are.equal(cfg.name, again.name)
  if key then assert.are.same(value, again:get(key)) end
  return again
end

describe("store configs", function()
  it("round trip for a local store", function()
    local s = ps.init_store("local", { name = unique("local"), cache_size = 2 })
    local again = recreate(s)
    assert.are.equal("local", again.kind)
    again:close()
  end)

  it("round trip for a file store, with a URL given the same config as options", function()
    local dir = os.tmpname()
    os.remove(dir)
    local a = ps.init_store("file", { name = unique("file"), dir = dir })
    local b = ps.init_store("file://" .. dir, { name = unique("file") })
    local ca, cb = a:config(), b:config()
    ca.name, cb.name = nil, nil
    assert.are.same(ca, cb)
    b:close()
    local key = a:put({ 1, 2, 3 })
    local again = recreate(a, key, { 1, 2, 3 })
    assert.are.equal(url.format(again:config()), "file://" .. dir)
    again:close()
    os.execute("unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; rm -rf " .. quote(dir))
  end)

  it("are plain tables that survive ps.serialize", function()
    local s = ps.init_store("local", { name = unique("plain") })
    local cfg = s:config()
    for k, v in pairs(cfg) do
      assert.are.equal("string", type(k))
      assert.truthy(({ string = true, number = true, boolean = true })[type(v)],
        k .. " is a " .. type(v))
    end
    assert.are.same(cfg, ps.deserialize(ps.serialize(cfg)))
    s:close()
  end)
end)

describe("redis store configs", function()
  local srv

  setup(function()
    if have_redis then srv = redis.start() end
  end)
  teardown(function()
    if srv then srv:stop() end
  end)

  local function needs_redis()
    if not srv then
      pending("spec/helpers/redis.lua is not available: " .. tostring(redis))
      return false
    end
    return true
  end

  it("round trip over TCP, with prefix, db and timeout", function()
    if not needs_redis() then return end
    local s = ps.init_store("redis", { name = unique("tcp"), host = srv.host, port = srv.port,
                                       db = 2, prefix = "cfg:", timeout = 3 })
    local key = s:put({ tcp = true })
    local again = recreate(s, key, { tcp = true })
    again:evict(key)
    again:close()
  end)

  it("round trip over a Unix socket", function()
    if not needs_redis() then return end
    local s = ps.init_store("redis", { name = unique("unix"), path = srv.path })
    local key = s:put("over the socket")
    local again = recreate(s, key, "over the socket")
    again:evict(key)
    again:close()
  end)

  it("accepts redis:// and unix:// URLs", function()
    if not needs_redis() then return end
    local s = ps.init_store(string.format("redis://%s:%d/3?prefix=u%%3A", srv.host, srv.port),
      { name = unique("url") })
    local cfg = s:config()
    assert.are.equal("redis", cfg.kind)
    assert.are.equal(srv.port, cfg.port)
    assert.are.equal(3, cfg.db)
    assert.are.equal("u:", cfg.prefix)
    local key = s:put(11)
    assert.are.equal(11, s:get(key))
    s:evict(key)
    s:close()
    local u = ps.init_store("unix://" .. srv.path .. "?db=1", { name = unique("url") })
    assert.are.equal(srv.path, u:config().path)
    assert.are.equal(1, u:config().db)
    u:close()
  end)

  it("lets a proxy serialized in one process resolve in another", function()
    if not needs_redis() then return end
    local s = ps.init_store("redis", { name = unique("xproc"), host = srv.host, port = srv.port,
                                       prefix = "xp:" })
    local p = s:proxy({ answer = 42, text = string.rep("r", 100000) })
    local wire = ps.serialize(p)
    assert.is_true(#wire < 512)
    local ok, out = run_lua(string.format([[
      local ps = require "proxystore"
      local p = ps.deserialize(%q)
      assert(not ps.is_resolved(p))
      assert(p.answer == 42 and #p.text == 100000)
      local s = assert(ps.get_store(%q))
      local q = s:proxy("from the child")
      io.write(string.format("%%q", ps.serialize(q)))
      s:close()
    ]], wire, s.name))
    assert.is_true(ok, out)
    local q = ps.deserialize(load("return " .. out)())
    assert.are.equal("from the child", ps.extract(q))
    s:close()
  end)
end)
