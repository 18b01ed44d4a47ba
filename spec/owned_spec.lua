-- Owned proxies and ps.clone: an owned proxy's object is evicted when the
-- proxy is collected, when its store closes, or at exit, in the process
-- that owns it only; copies sent elsewhere (serialized, or forked into a
-- pool's workers) never evict it.
local ps = require "proxystore"
local shell = require "helpers.shell"
local child = require "helpers.child"

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

local function full_gc()
  collectgarbage()
  collectgarbage()
end

local fixture = require("helpers.stores").new("owned", { cache_size = 0 })
local srv, dir

local function new_store(kind, opts)
  return fixture:store(kind, opts)
end

setup(function()
  fixture:start()
  srv, dir = fixture.srv, fixture.dir
end)

teardown(function() fixture:stop() end)

after_each(function() fixture:reset() end)

for _, kind in ipairs { "local", "file", "redis" } do
  describe("an owned proxy on a " .. kind .. " store", function()
    it("evicts its object when collected, resolved or not", function()
      local s = new_store(kind)
      local p = s:proxy({ "owned" }, { owned = true })
      local q = s:proxy("also owned", { owned = true })
      local k, kq = ps.key(p), ps.key(q)
      assert.matches(", owned", ps.repr(p), 1, true)
      assert.equal("owned", p[1])
      assert.is_true(s:exists(k))
      p, q = nil, nil
      full_gc()
      assert.is_false(s:exists(k))
      assert.is_false(s:exists(kq))
    end)

    -- (a closed local store's objects are gone with it; a local proxy
    -- cannot travel)
    if kind ~= "local" then
    it("evicts its object when its store closes", function()
      local s = new_store(kind)
      local p = s:proxy("x", { owned = true })
      local plain = s:proxy("y")
      local k, kp = ps.key(p), ps.key(plain)
      s:close()
      local again = new_store(kind, s:config())
      assert.is_false(again:exists(k))
      assert.is_true(again:exists(kp))
      p = nil
      full_gc()   -- a collected proxy of a closed store does nothing more
      assert.is_true(again:exists(kp))
    end)

    it("gives copies sent elsewhere no ownership", function()
      local s = new_store(kind)
      local p = s:proxy("shared", { owned = true })
      local copy = ps.deserialize(ps.serialize(p))
      assert.not_matches(", owned", ps.repr(copy), 1, true)
      copy = nil
      full_gc()
      assert.is_true(s:exists(ps.key(p)))
      -- another process resolves its copy, collects it and exits
      local out = child.run(([[
        local ps = require "proxystore"
        local p = ps.deserialize(%q)
        print(ps.extract(p))
        p = nil
        collectgarbage()
      ]]):format(ps.serialize(p)))
      assert.equal("shared\n", out)
      assert.is_true(s:exists(ps.key(p)))
      local k = ps.key(p)
      p = nil     -- while the original owns it
      full_gc()
      assert.is_false(s:exists(k))
    end)
    end

    it("clones: a copy under a new key, owned, the original untouched", function()
      local s = new_store(kind)
      local orig = s:proxy({ n = 1 }, { strict = true })
      local c = ps.clone(orig)
      assert.not_equal(ps.key(orig), ps.key(c))
      assert.matches(", owned", ps.repr(c), 1, true)
      assert.matches("strict", ps.repr(c), 1, true)
      assert.equal(1, c.n)
      local kc = ps.key(c)
      c = nil
      full_gc()
      assert.is_false(s:exists(kc))
      assert.equal(1, orig.n)
      assert.is_true(s:exists(ps.key(orig)))
      -- a clone of a clone, of a future's proxy, of an evicted object
      local f = s:future()
      f:set("future value")
      assert.equal("future value", ps.extract(ps.clone(ps.clone(f:proxy()))))
      s:evict(ps.key(orig))
      assert.equal("missing_key", error_of(ps.clone, orig).kind)
    end)
  end)
end

describe("owned proxies", function()
  it("are evicted at exit by the process that owns them", function()
    local s = new_store("redis")
    local out, status = child.run(([[
      local ps = require "proxystore"
      local s = ps.init_store("redis", { host = "127.0.0.1", port = %d, prefix = %q })
      KEEP = s:proxy("held until exit", { owned = true })
      print(ps.key(KEEP))
    ]]):format(srv.port, s:config().prefix))
    assert.equal(0, status, out)
    local k = out:match("^(%x+)\n$")
    assert.is_string(k, out)
    assert.is_false(s:exists(k))
  end)

  it("are not evicted by a pool's workers, which hold forked copies", function()
    local s = new_store("file")
    local p = s:proxy("parent's", { owned = true })
    local pool = ps.pool { workers = 2, progress = false }
    finally(function() pool:close() end)
    -- workers collect their copy of p (forked) and the one sent to them
    local results = pool:map(function(px)
      local v = ps.extract(px)
      px = nil
      collectgarbage()
      collectgarbage()
      return v
    end, { p, p, p, p })
    assert.same({ "parent's", "parent's", "parent's", "parent's", n = 4 }, results)
    assert.is_true(s:exists(ps.key(p)))
    pool:close()
    local k = ps.key(p)
    assert.is_true(s:exists(k))
    p = nil     -- the parent's own proxy owns it
    full_gc()
    assert.is_false(s:exists(k))
  end)

  it("refuses ps.clone of anything but a store proxy", function()
    assert.equal("config", error_of(ps.clone, ps.proxy(function() return 1 end)).kind)
    assert.equal("config", error_of(ps.clone, {}).kind)
    local s = new_store("local")
    assert.equal("config", error_of(ps.clone, s:future()).kind)
  end)
end)
