-- What the README's "Semantics" section says, as it behaves: resolved
-- objects are shared within a process, strict checks the store's version
-- (not local edits), and a proxy of false or nil is truthy.
local ps = require "proxystore"
local shell = require "helpers.shell"

describe("semantics", function()
  local dir, store, other
  before_each(function()
    dir = shell.tempdir("semantics")
    store = ps.init_store("file", { name = "sem", dir = dir })
    -- the same directory through a store of another name: another reader
    other = ps.init_store("file", { name = "sem-other", dir = dir })
  end)
  after_each(function()
    store:close()
    other:close()
    shell.rmtree(dir)
  end)

  it("shares a resolved object between every proxy and get of its key in a process", function()
    local key = store:put({ v = 1 })
    local p1, p2 = store:proxy_from_key(key), store:proxy_from_key(key)
    p1.v = 2
    assert.equal(2, p2.v)
    assert.equal(2, store:get(key).v)
    assert.equal(ps.extract(p1), ps.extract(p2))
    assert.equal(1, other:get(key).v)   -- the stored bytes are unchanged
  end)

  it("hands out a copy per get and fresh proxy with cache_size = 0", function()
    local nocache = ps.init_store("file", { name = "sem-nocache", dir = dir, cache_size = 0 })
    finally(function() nocache:close() end)
    local key = nocache:put({ v = 1 })
    local p1, p2 = nocache:proxy_from_key(key), nocache:proxy_from_key(key)
    p1.v = 2
    assert.equal(1, p2.v)
    assert.equal(1, nocache:get(key).v)
  end)

  it("checks the store's version with strict, not local edits", function()
    local key = store:put({ v = 1 })
    local p = store:proxy_from_key(key, { strict = true })
    p.v = 5                                            -- a local edit
    assert.equal(5, store:proxy_from_key(key, { strict = true }).v)
    other:put({ v = 9 }, { key = key })                -- a new version
    assert.equal(9, store:proxy_from_key(key, { strict = true }).v)
  end)

  it("makes a proxy of false or nil truthy (a userdata)", function()
    for _, v in ipairs { false, "nil" } do
      if v == "nil" then v = nil end
      local p = store:proxy(v)
      assert.is_true(p and true or false)
      assert.is_false(not p)
      assert.equal(v, ps.extract(p))
      assert.equal("userdata", type(p))
    end
  end)
end)
