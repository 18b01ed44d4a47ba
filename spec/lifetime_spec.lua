-- Lifetimes and leases: ps.lifetime, the lifetime option of put, proxy and
-- future, leases kept by the store (Redis expiry on every key of an
-- object; the file store's expiry marks, honoured by reads and swept),
-- and kill -9 of the process that made leased objects.
local ps = require "proxystore"
local core = require "proxystore.core"
local shell = require "helpers.shell"
local child = require "helpers.child"

local now = core.monotonic

-- Leases in these specs: long enough that a loaded machine does not end
-- one before the check that it still holds (that would fail the spec),
-- short enough to wait out.
local LEASE = 1.5

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

-- Sleeps until `seconds` have passed since t0 (monotonic).
local function sleep_until(t0, seconds)
  while now() - t0 < seconds do os.execute("sleep 0.05") end
end

local function listdir(dir)
  local t = {}
  local p = io.popen("ls -A " .. shell.quote(dir) .. " 2>/dev/null")
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  table.sort(t)
  return t
end

local fixture = require("helpers.stores").new("lifetime", { cache_size = 4 })
local srv, dir

local function new_store(kind, opts)
  return fixture:store(kind, opts)
end

-- The keys of the redis store s (its prefix), sorted.
local function redis_keys(s)
  local t = {}
  for k in srv:cli("--scan", "--pattern", s:config().prefix .. "*"):gmatch("[^\n]+") do
    t[#t + 1] = k
  end
  table.sort(t)
  return t
end

setup(function()
  fixture:start()
  srv, dir = fixture.srv, fixture.dir
end)

teardown(function() fixture:stop() end)

after_each(function() fixture:reset() end)

describe("ps.lifetime", function()
  it("takes only a positive lease, and says what it is", function()
    assert.equal("config", error_of(ps.lifetime, { leas = 1 }).kind)
    assert.equal("config", error_of(ps.lifetime, { lease = 0 }).kind)
    assert.equal("config", error_of(ps.lifetime, { lease = -1 }).kind)
    assert.equal("config", error_of(ps.lifetime, { lease = "1" }).kind)
    assert.equal("config", error_of(ps.lifetime, { lease = math.huge }).kind)
    assert.equal("config", error_of(ps.lifetime, 5).kind)
    assert.matches("no lease", tostring(ps.lifetime()))
    assert.matches("lease ends in", tostring(ps.lifetime { lease = 60 }))
  end)

  it("refuses something else as the lifetime option", function()
    local s = new_store("local")
    local err = error_of(s.put, s, 1, { lifetime = {} })
    assert.equal("config", err.kind)
    assert.matches("ps.lifetime", tostring(err), 1, true)
    assert.equal("config", error_of(s.future, s, { lifetime = "x" }).kind)
  end)

  it("extends only a lease, and only while it lasts", function()
    local lt = ps.lifetime()
    assert.equal("config", error_of(lt.extend, lt, 1).kind)
    local leased = ps.lifetime { lease = 60 }
    assert.equal("config", error_of(leased.extend, leased, -1).kind)
    leased:close()
    assert.equal("closed", error_of(leased.extend, leased, 1).kind)
  end)

  for _, kind in ipairs { "local", "file", "redis" } do
    describe("on a " .. kind .. " store", function()
      it("evicts every object attached when closed, once", function()
        local s = new_store(kind)
        local lt = ps.lifetime()
        local k1 = s:put("a", { lifetime = lt })
        local p = s:proxy({ 1, 2 }, { lifetime = lt })
        local f = s:future { lifetime = lt }
        f:set("set")
        local other = s:put("not attached")
        assert.is_false(lt:done())
        lt:close()
        assert.is_true(lt:done())
        assert.is_false(s:exists(k1))
        assert.is_false(s:exists(ps.key(p)))
        assert.is_false(s:exists(f.key))
        assert.is_true(s:exists(other))
        lt:close()   -- idempotent
      end)

      it("ends at the end of a <close> variable's scope", function()
        local s = new_store(kind)
        local k
        do
          local lt <close> = ps.lifetime()
          k = s:put("scoped", { lifetime = lt })
          assert.is_true(s:exists(k))
        end
        assert.is_false(s:exists(k))
      end)

      it("refuses puts, proxies, futures and sets into an ended lifetime", function()
        local s = new_store(kind)
        local lt = ps.lifetime()
        local f = s:future { lifetime = lt }
        lt:close()
        for name, call in pairs {
          put = function() return s:put(1, { lifetime = lt }) end,
          proxy = function() return s:proxy(1, { lifetime = lt }) end,
          future = function() return s:future { lifetime = lt } end,
          set = function() return f:set(1) end,
        } do
          local err = error_of(call)
          assert.equal("closed", err.kind, name)
          assert.matches("ended", tostring(err), 1, true)
        end
        assert.is_false(s:exists(f.key))
      end)

      it("lets its objects go when its lease ends, and refuses puts after", function()
        local s = new_store(kind)
        local t0 = now()
        local lt = ps.lifetime { lease = LEASE }
        local k = s:put({ "leased" }, { lifetime = lt })
        local f = s:future { lifetime = lt }
        f:set("leased future")
        assert.same({ "leased" }, s:get(k))   -- also in the cache now
        sleep_until(t0, LEASE + 0.3)
        assert.is_nil(s:get(k))               -- not from the cache either
        assert.is_false(s:exists(k))
        assert.is_false(f:done())
        assert.is_true(lt:done())
        assert.equal("closed", error_of(s.put, s, 1, { lifetime = lt }).kind)
      end)

      it("pushes the lease's end back with extend", function()
        local s = new_store(kind)
        local t0 = now()
        local lt = ps.lifetime { lease = LEASE }
        local k = s:put("kept", { lifetime = lt })
        local f = s:future { lifetime = lt }   -- not set: nothing to extend
        lt:extend(60)
        sleep_until(t0, LEASE + 0.3)
        assert.equal("kept", s:get(k))
        assert.is_false(lt:done())
        f:set("set later")                       -- with the extended lease
        assert.equal("set later", f:result())
        lt:close()
        assert.is_false(s:exists(k))
      end)
    end)
  end
end)

describe("a lease on a redis store", function()
  local function pttl(key)
    return tonumber(srv:cli("PTTL", key):match("%-?%d+"))
  end

  it("expires every key of an object, chunks and wake-up list included", function()
    local s = new_store("redis")
    local prefix = s:config().prefix
    -- small chunks need a store opened with them: a child process
    local out, status = child.run(([[
      local ps = require "proxystore"
      local s = ps.init_store("redis", { host = "127.0.0.1", port = %d, prefix = %q })
      local lt = ps.lifetime { lease = 30 }
      s:future({ lifetime = lt }):set(string.rep("x", 5000))
      s:put(string.rep("y", 3500), { lifetime = lt })
      local function sh(cmd)
        local p = io.popen("env -u LD_PRELOAD redis-cli -p %d " .. cmd)
        local r = p:read("a")
        p:close()
        return r
      end
      local function pttls()
        local t = {}
        for k in sh("--scan --pattern '%s*'"):gmatch("[^\n]+") do
          t[#t + 1] = sh("PTTL '" .. k .. "'"):match("%%-?%%d+")
        end
        return table.concat(t, " ")
      end
      print(pttls())
      lt:extend(100)
      print(pttls())
    ]]):format(srv.port, prefix, srv.port, prefix), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
    assert.equal(0, status, out)
    local before, after = out:match("^([^\n]*)\n([^\n]*)\n$")
    assert.is_string(before, out)
    local n = 0
    for t in before:gmatch("%S+") do
      n = n + 1
      assert.is_true(tonumber(t) > 0 and tonumber(t) <= 30000, before)
    end
    -- the future: value, wake-up list and 6 chunks; the put: value, 4 chunks
    assert.equal(2 + 6 + 1 + 4, n, before)
    n = 0
    for t in after:gmatch("%S+") do
      n = n + 1
      assert.is_true(tonumber(t) > 30000 and tonumber(t) <= 130000, after)
    end
    assert.equal(13, n, after)
  end)

  it("leases a future that a copy sets in another process, until it ends", function()
    local s = new_store("redis")
    local lt = ps.lifetime { lease = 30 }
    local f = s:future { lifetime = lt }
    local out, status = child.run(([[
      local ps = require "proxystore"
      ps.deserialize(%q):set("from a copy")
    ]]):format(ps.serialize(f)))
    assert.equal(0, status, out)
    assert.equal("from a copy", f:result())
    for _, suffix in ipairs { "", ":wake" } do
      local t = pttl(s:config().prefix .. f.key .. suffix)
      assert.is_true(t > 0 and t <= 30000, suffix .. " has PTTL " .. t)
    end
    -- once the lease has ended, a copy's set is refused
    local t0 = now()
    local short = ps.lifetime { lease = LEASE }
    local g = s:future { lifetime = short }
    local blob = ps.serialize(g)
    sleep_until(t0, LEASE + 0.3)
    out = child.run(([[
      local ps = require "proxystore"
      local g = ps.deserialize(%q)
      local ok, err = pcall(g.set, g, "too late")
      print(ok, err.kind)
    ]]):format(blob))
    assert.equal("false\tclosed\n", out)
    assert.is_false(g:done())
  end)

  it("outlives a kill -9 of the process that made it, and ends on time", function()
    local s = new_store("redis")
    local fdir = dir .. "/killed"
    local c = child.spawn(([[
      local ps = require "proxystore"
      local r = ps.init_store("redis", { host = "127.0.0.1", port = %d, prefix = %q })
      local f = ps.init_store("file", { dir = %q })
      local lt = ps.lifetime { lease = %g }
      r:put(string.rep("r", 100), { lifetime = lt })
      r:future({ lifetime = lt }):set("future")
      f:put(string.rep("f", 100), { lifetime = lt })
      f:put(string.rep("g", 2 << 20), { lifetime = lt })
      local none = ps.lifetime()
      print(f:put("no lease", { lifetime = none }))
      print("ready")
      io.read("a")   -- waits for the kill
    ]]):format(srv.port, s:config().prefix, fdir, LEASE))
    finally(function() c:kill() end)
    local plain = c:line()
    assert.equal("ready", c:line())
    local t0 = now()
    c:kill("KILL")
    c:finish()
    assert.equal(3, #redis_keys(s))     -- value, future value, wake-up list
    assert.equal(4, #listdir(fdir))      -- 3 objects and the lease marks
    sleep_until(t0, LEASE + 1)           -- lease + 1 s, with no client alive
    -- Redis dropped them by itself: no proxystore process is alive
    assert.equal(0, #redis_keys(s))
    -- the file store: any process that opens it sweeps
    local f = new_store("file", { dir = fdir })
    assert.same({ plain }, listdir(fdir))
    assert.equal("no lease", f:get(plain))
  end)
end)

describe("a lease on a file store", function()
  it("is honoured by every reader and swept at close", function()
    local s = new_store("file")
    local fdir = s:config().dir
    local t0 = now()
    local short = ps.lifetime { lease = LEASE }
    local long = ps.lifetime { lease = 600 }
    local k = s:put("short", { lifetime = short })
    local big = s:put(string.rep("b", 3 << 20), { lifetime = short })   -- mapped
    local kept = s:put("long", { lifetime = long })
    local bigkept = s:put(string.rep("B", 3 << 20), { lifetime = long })
    local function read_in_child()
      return child.run(([[
        local ps = require "proxystore"
        local s = ps.init_store("file", { dir = %q, cache_size = 0 })
        local b = s:get(%q)
        print(s:get(%q), s:exists(%q), b and #b, s:get(%q), #s:get(%q))
      ]]):format(fdir, big, k, k, kept, bigkept))
    end
    -- (the short lease may or may not have ended by now: not checked)
    sleep_until(t0, LEASE + 0.3)
    assert.equal("nil\tfalse\tnil\tlong\t" .. (3 << 20) .. "\n", read_in_child())
    -- the child's open swept the expired ones; the live ones' marks stay
    local live = { bigkept, kept }
    table.sort(live)
    assert.same({ ".ps-leases", live[1], live[2] }, listdir(fdir))
    assert.same(live, listdir(fdir .. "/.ps-leases"))
    long:close()
    assert.same({ ".ps-leases" }, listdir(fdir))
    s:close()   -- its sweep removes the empty marks' directory
    assert.same({}, listdir(fdir))
  end)

  it("lets an expired future be set again, and puts keep their own lease", function()
    local s = new_store("file", { cache_size = 0 })
    local t0 = now()
    local lt = ps.lifetime { lease = LEASE }
    local f = s:future { key = "again", lifetime = lt }
    f:set("first")
    sleep_until(t0, LEASE + 0.3)
    local g = s:future { key = "again" }
    g:set("second")                       -- the expired value counts as none
    assert.equal("second", g:result())
    -- a plain put over a leased object holds no lease
    t0 = now()
    local lt2 = ps.lifetime { lease = LEASE }
    local k = s:put("leased", { lifetime = lt2 })
    s:put("plain", { key = k })
    sleep_until(t0, LEASE + 0.3)
    assert.equal("plain", s:get(k))
  end)
end)
