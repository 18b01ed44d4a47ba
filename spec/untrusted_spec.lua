-- Proxies from input nobody vouches for: ps.deserialize(s, {untrusted =
-- true}) resolves them only through stores this process registered, and a
-- carried config, even from trusted input, never disables the timeout nor
-- carries clear or recycle.
local ps = require "proxystore"
local shell = require "helpers.shell"

-- A blob holding one proxy whose reference is exactly ref ({config=,
-- key=, flags=}): the native format writes a proxy as tag 0x0B followed
-- by that table, so a hostile peer can send any config it likes.
local function forge(ref)
  local s = ps.serialize(ref)
  return s:sub(1, 3) .. "\x0B" .. s:sub(4)
end

local function perr(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), tostring(err))
  return err
end

local function listing(dir)
  local rc, out = shell.sh("ls -A " .. shell.quote(dir))
  assert(rc == 0, out)
  local names = {}
  for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

describe("ps.deserialize with untrusted = true", function()
  local tmp

  before_each(function() tmp = shell.tempdir("untrusted") end)
  after_each(function()
    for _, name in ipairs { "victim", "mine", "elsewhere", "ghost" } do
      local s = ps.get_store(name)
      if s then s:close() end
    end
    shell.rmtree(tmp)
  end)

  it("never makes a store from a carried config, nor deletes what it points at", function()
    -- The victim's file lies where an evict-flagged file store proxy points.
    local victim = tmp .. "/victim"
    local w = ps.init_store("file", { name = "victim", dir = victim })
    w:put("precious", { key = "k" })
    local blob = ps.serialize(w:proxy_from_key("k", { evict = true }))
    w:close()

    local p = ps.deserialize(blob, { untrusted = true })
    assert.is_true(ps.is_proxy(p))
    assert.are.equal("k", ps.key(p))
    local err = perr(ps.resolve, p)
    assert.are.equal("resolve", err.kind)
    assert.are.equal("victim", err.store)
    assert.matches("not registered in this process", tostring(err), 1, true)
    assert.is_nil(ps.get_store("victim"))        -- nothing was created
    assert.is_false(ps.is_resolved(p))
    -- the object is still there: it was neither read nor evicted
    local again = ps.init_store("file", { name = "victim", dir = victim })
    assert.are.equal("precious", again:get("k"))
  end)

  it("never connects where a carried config says, and says why at once", function()
    -- Nothing listens on port 1: a store made from this config would fail
    -- with a connection error; an untrusted proxy never gets that far.
    local blob = forge {
      config = { name = "ghost", kind = "redis", host = "127.0.0.1", port = 1,
                 timeout = 0, cache_size = 16, serializer = "native" },
      key = "k", flags = 1,
    }
    local p = ps.deserialize(blob, { untrusted = true })
    local err = perr(ps.extract, p)
    assert.are.equal("resolve", err.kind)
    assert.matches("store 'ghost'", tostring(err), 1, true)
    assert.is_nil(ps.get_store("ghost"))
  end)

  it("resolves through the store registered under the name, ignoring the carried config and flags", function()
    local mine = ps.init_store("file", { name = "mine", dir = tmp .. "/mine" })
    mine:put("ours", { key = "k" })
    -- The peer says: store "mine" lives elsewhere, and evict after use.
    local blob = forge {
      config = { name = "mine", kind = "file", dir = tmp .. "/elsewhere",
                 cache_size = 0, serializer = "native" },
      key = "k", flags = 1 | 2,
    }
    local p = ps.deserialize(blob, { untrusted = true })
    assert.matches("untrusted", ps.repr(p), 1, true)
    assert.are.equal("ours", ps.extract(p))
    assert.is_true(mine:exists("k"))             -- the evict flag was ignored
    assert.is_nil(io.open(tmp .. "/elsewhere"))  -- the carried dir never used
    assert.is_true(ps.is_resolved(p))
  end)

  it("refuses a registered store of another kind under that name", function()
    local l = ps.init_store("local", { name = "mine" })
    local blob = forge {
      config = { name = "mine", kind = "file", dir = tmp .. "/x" },
      key = "k", flags = 0,
    }
    local err = perr(ps.resolve, ps.deserialize(blob, { untrusted = true }))
    assert.are.equal("resolve", err.kind)
    assert.matches("not that store", tostring(err), 1, true)
    l:close()
  end)

  it("applies to every proxy in the value, nested and shared", function()
    local w = ps.init_store("file", { name = "victim", dir = tmp .. "/v" })
    local a, b = w:proxy("a", { evict = true }), w:proxy("b")
    local blob = ps.serialize { a, { deep = { b, b } } }
    w:close()
    local t = ps.deserialize(blob, { untrusted = true })
    assert.are.equal(t[2].deep[1], t[2].deep[2])
    for _, p in ipairs { t[1], t[2].deep[1] } do
      assert.are.equal("resolve", perr(ps.resolve, p).kind)
    end
    assert.is_nil(ps.get_store("victim"))
  end)

  it("stays untrusted when serialized again, even into trusted input", function()
    local w = ps.init_store("file", { name = "victim", dir = tmp .. "/v" })
    local blob = ps.serialize(w:proxy("x", { evict = true }))
    w:close()
    local p = ps.deserialize(blob, { untrusted = true })
    local relayed = ps.deserialize(ps.serialize(p))   -- trusted this time
    local err = perr(ps.resolve, relayed)
    assert.are.equal("resolve", err.kind)
    assert.is_nil(ps.get_store("victim"))
    -- the relayed reference carries only the name and kind
    assert.is_nil(ps.serialize(p):find(tmp, 1, true))
  end)

  it("once bound to a registered store, travels as that store's proxy", function()
    local mine = ps.init_store("file", { name = "mine", dir = tmp .. "/mine" })
    mine:put("ours", { key = "k" })
    local blob = forge { config = { name = "mine", kind = "file" }, key = "k", flags = 1 }
    local p = ps.resolve(ps.deserialize(blob, { untrusted = true }))
    assert.is_nil(ps.repr(p):find("untrusted", 1, true))
    local q = ps.deserialize(ps.serialize(p))
    assert.are.equal("ours", ps.extract(q))
    assert.is_true(mine:exists("k"))
  end)

  it("trusted input still finds or makes the store from the config", function()
    local w = ps.init_store("file", { name = "victim", dir = tmp .. "/v" })
    local blob = ps.serialize(w:proxy("x"))
    w:close()
    assert.are.equal("x", ps.extract(ps.deserialize(blob)))
    assert.are.equal("x", ps.extract(ps.deserialize(blob, { untrusted = false })))
    assert.is_not_nil(ps.get_store("victim"))
  end)

  it("rejects unknown and mistyped options as config errors", function()
    local blob = ps.serialize(1)
    local err = perr(ps.deserialize, blob, { untrustd = true })
    assert.are.equal("config", err.kind)
    assert.matches("untrustd", tostring(err), 1, true)
    assert.are.equal("config", perr(ps.deserialize, blob, { untrusted = "yes" }).kind)
    assert.are.equal("config", perr(ps.deserialize, blob, "untrusted").kind)
    assert.are.equal(1, ps.deserialize(blob, {}))
  end)
end)

describe("a config carried by a trusted proxy", function()
  local tmp

  before_each(function() tmp = shell.tempdir("carried") end)
  after_each(function()
    for _, name in ipairs { "carried", "carried-redis" } do
      local s = ps.get_store(name)
      if s then s:close() end
    end
    shell.rmtree(tmp)
  end)

  it("never carries clear or recycle into the store it makes", function()
    local dir = tmp .. "/d"
    local blob = forge {
      config = { name = "carried", kind = "file", dir = dir, clear = true,
                 recycle = 8, cache_size = 0, serializer = "native" },
      key = "k", flags = 0,
    }
    local w = ps.init_store("file", { name = "writer", dir = dir })
    w:put("v", { key = "k" })
    w:put("other", { key = "other" })
    w:close()
    local p = ps.deserialize(blob)
    assert.are.equal("v", ps.extract(p))
    local s = ps.get_store("carried")
    local cfg = s:config()
    assert.is_nil(cfg.recycle)
    assert.is_nil(cfg.clear)
    s:evict("k")                       -- no spare is kept: recycle is off
    s:close()                          -- no clear: nothing else goes
    assert.are.same({ "other" }, listing(dir))
  end)

  it("does not send recycle along when a store's proxy is serialized", function()
    local s = ps.init_store("file", { name = "carried", dir = tmp .. "/r", recycle = 4 })
    local ref = ps.deserialize(ps.serialize(s:proxy("x")))
    s:close()
    ps.resolve(ref)
    assert.is_nil(ps.get_store("carried"):config().recycle)
  end)

  describe("with a Redis server", function()
    local redis = require "helpers.redis"
    local srv

    setup(function() srv = redis.start() end)
    teardown(function() if srv then srv:stop() end end)

    local function carried(timeout)
      local w = ps.init_store("redis", { name = "writer", host = srv.host, port = srv.port })
      w:put("v", { key = "k" })
      w:close()
      return forge {
        config = { name = "carried-redis", kind = "redis", host = srv.host,
                   port = srv.port, timeout = timeout, cache_size = 16,
                   serializer = "native" },
        key = "k", flags = 0,
      }
    end

    it("never disables the timeout: 0 becomes the default", function()
      assert.are.equal("v", ps.extract(ps.deserialize(carried(0))))
      assert.are.equal(5, ps.get_store("carried-redis"):config().timeout)
    end)

    it("keeps a positive carried timeout", function()
      assert.are.equal("v", ps.extract(ps.deserialize(carried(2.5))))
      assert.are.equal(2.5, ps.get_store("carried-redis"):config().timeout)
    end)
  end)
end)
