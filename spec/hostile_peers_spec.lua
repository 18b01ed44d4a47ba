-- What other processes and the server can send to the queue pool, streams
-- of proxies and their heartbeat: garbage in a stream, keys of the wrong
-- type, more ids than a batch usually has. Every one must end in a clear
-- proxystore error (or be ignored, where the docs say so), never a crash
-- or a hang. Against a real redis-server; hostile data is written with
-- raw commands.

local core = require "proxystore.core"
local redis = require "helpers.redis"
local child = require "helpers.child"

describe("hostile peers", function()
  local srv, g

  setup(function()
    srv = redis.start()
  end)

  teardown(function()
    if g then g:close() end
    if srv then srv:stop() end
  end)

  before_each(function()
    if g then g:close() end
    g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
    g:call("FLUSHALL")
  end)

  describe("the groups module's arguments", function()
    -- A length that changes between the count and the copy (a __len
    -- metamethod) made the copy write past the arrays sized by the
    -- count. Lists are taken by their raw length: what is in them.
    local function shifty(t)
      local calls = 0
      return setmetatable(t, { __len = function()
        calls = calls + 1
        return calls == 1 and 2 or rawlen(t) + 1000
      end })
    end

    it("copies commands and entries by their raw length, whatever __len says", function()
      local cmd = { "RPUSH", "l" }
      for i = 1, 100 do cmd[#cmd + 1] = "v" .. i end
      local r = g:pipeline(shifty(cmd))
      assert.same({ 100 }, r)
      local fields = {}
      for i = 1, 100 do fields[#fields + 1] = "f" .. i end
      local ids = g:add("s", { shifty(fields) })
      assert.equal(1, #ids)
      local n = 0
      for _ in pairs(g:range("s", "-", "+", 10)[1].fields) do n = n + 1 end
      assert.equal(50, n)
      assert.equal(1, g:delete("s", shifty({ ids[1] })))
    end)
  end)

  describe("the queue pool", function()
    local wire = require "proxystore.queue_wire"
    local SECRET = "hostile-peers-spec-secret"

    -- A reply list that holds a string answers every pop at once with
    -- WRONGTYPE: the pool span on it until result's timeout (for ever
    -- without one).
    it("raises a store error when its reply list holds another type", function()
      local ps = require "proxystore"
      local pool = ps.pool { queue = ("redis://127.0.0.1:%d"):format(srv.port),
        name = "hostile", secret = SECRET, workers = 0 }
      finally(function() pcall(pool.close, pool, { timeout = 0 }) end)
      local f = pool:submit(function() return 1 end)
      g:call("SET", pool.reply_key, "not a list")
      local ok, err = pcall(f.result, f, 10)
      assert.is_false(ok)
      assert.equal("store", err.kind, tostring(err))
      assert.matches("cannot read its replies", err.message)
      assert.matches("WRONGTYPE", tostring(err))
      -- close still shuts the pool down, and says why it could not wait
      local cok, cerr = pcall(pool.close, pool)
      assert.is_false(cok)
      assert.equal("store", cerr.kind)
      assert.equal("closed", select(2, pcall(f.result, f, 0)).kind)
    end)

    -- The finish script set every done bit of a batch before its pushes:
    -- a push that failed on one pool's wrong-typed reply list left the
    -- other pools' bits set and their results never pushed, lost for
    -- good (a second delivery finds the bit and pushes nothing).
    it("stores a batch's other results when one pool's keys are of another type", function()
      local keys = wire.keys("hostile2")
      g:create_group(keys.stream, wire.GROUP, "0")
      local ids = g:add(keys.stream, { { "x", "1" }, { "x", "2" } })
      assert.equal(2, #g:read_group(keys.stream, wire.GROUP, "w", ">", 10))
      local doneA, bitA = wire.done_key(keys, "poolA:1")
      local doneB, bitB = wire.done_key(keys, "poolB:1")
      local replyA, replyB = wire.reply_key(keys, "poolA"), wire.reply_key(keys, "poolB")
      g:call("SET", replyA, "not a list")
      local first = wire.eval(g, "finish", { keys.stream, doneA, replyA, doneB, replyB },
        { wire.GROUP, 60000, bitA, ids[1], "resultA", bitB, ids[2], "resultB" })
      assert.same({ -1, 1 }, first)
      assert.same({ "resultB" }, g:call("LRANGE", replyB, 0, -1))
      assert.equal("not a list", g:call("GET", replyA))
      assert.equal(0, (g:pending_summary(keys.stream, wire.GROUP)))
      -- B's result is stored: a second one is a late duplicate
      first = wire.eval(g, "finish", { keys.stream, doneB, replyB },
        { wire.GROUP, 60000, bitB, ids[2], "resultB2" })
      assert.same({ 0 }, first)
      -- a done bitmap that is a list: the same
      local doneC, bitC = wire.done_key(keys, "poolC:7")
      g:call("RPUSH", doneC, "x")
      first = wire.eval(g, "finish", { keys.stream, doneC, wire.reply_key(keys, "poolC") },
        { wire.GROUP, 60000, bitC, "", "resultC" })
      assert.same({ -1 }, first)
      -- the one-result script (a worker reading tasks one at a time) too
      for _, name in ipairs { "finish", "finish1" } do
        local id = g:add(keys.stream, { { "x", name } })[1]
        g:read_group(keys.stream, wire.GROUP, "w", ">", 10)
        first = wire.eval(g, name, { keys.stream, doneA, replyA },
          { wire.GROUP, 60000, bitA, id, "resultA" })
        assert.same({ -1 }, first)
        assert.equal("not a list", g:call("GET", replyA))
        assert.equal(0, (g:pending_summary(keys.stream, wire.GROUP)))
      end
    end)
  end)

  describe("lifetimes", function()
    -- A lease past 2^63 ms had no integer to be written as: the object was
    -- put with no lease at all, and extend raised a Lua error.
    it("refuses a lease the store cannot keep, and keeps every one it takes", function()
      local ps = require "proxystore"
      local s = ps.init_store("redis", { name = "hostile-lease", host = srv.host,
        port = srv.port, timeout = 30 })
      finally(function() s:close() end)
      for _, lease in ipairs { 1e17, 1e300 } do
        local ok, err = pcall(ps.lifetime, { lease = lease })
        assert.is_false(ok)
        assert.equal("config", err.kind)
      end
      local lt = ps.lifetime { lease = 1e9 }
      local p = s:proxy("x", { lifetime = lt })
      local pttl = g:call("PTTL", ps.key(p))
      assert.is_true(pttl > 0 and pttl <= 1e12, tostring(pttl))
      local ok, err = pcall(lt.extend, lt, 1e17)
      assert.is_false(ok)
      assert.equal("config", err.kind)
      lt:extend(1)
      assert.is_true(g:call("PTTL", ps.key(p)) > pttl - 60000)
      lt:close()
      assert.equal(0, g:call("EXISTS", ps.key(p)))
    end)

    -- A future's reference carries the end of its lease; one of 1e300 s
    -- overflowed set's milliseconds (undefined behaviour; on x86 the
    -- future was set with no lease at all).
    it("refuses a future reference whose lease ends past any lease", function()
      local ps = require "proxystore"
      local s = ps.init_store("redis", { name = "hostile-future", host = srv.host,
        port = srv.port, timeout = 30 })
      local lt = ps.lifetime { lease = 60 }
      finally(function() lt:close(); s:close() end)
      local blob = ps.serialize(s:future { lifetime = lt })
      local at = blob:find("lease_end", 1, true)
      assert.truthy(at)
      local v = at + #"lease_end"
      assert.equal(0x07, blob:byte(v))   -- a float (docs/format.md)
      local forged = blob:sub(1, v) .. string.pack("<d", 1e300) .. blob:sub(v + 9)
      local ok, err = pcall(ps.deserialize, forged)
      assert.is_false(ok)
      assert.equal("serialization", err.kind)
      assert.matches("lease_end", tostring(err))
      -- the real one still reads, and sets with its lease
      local f = ps.deserialize(blob)
      f:set("v")
      local pttl = g:call("PTTL", f.key)
      assert.is_true(pttl > 0 and pttl <= 60000, tostring(pttl))
    end)
  end)

  describe("the queue heartbeat", function()
    -- A worker holds up to 128 entries of a batch at once; pushing them
    -- all on the C stack wrote past it. In a child: the defect corrupts
    -- memory.
    it("holds a batch of 128 ids, and 100000, without a crash", function()
      local out, status = child.run(([[
        local core = require "proxystore.core"
        local cfg = { host = "127.0.0.1", port = %d, timeout = 30 }
        local g = core.redis_groups(cfg)
        g:create_group("s", "g", "0")
        local hb = core.queue_heartbeat(cfg, "s", "g", "me", 3600)
        for _, n in ipairs { 128, 100000 } do
          local ids = {}
          for i = 1, n do ids[i] = "1-" .. i end
          hb:hold(ids)
          assert(hb:release() == nil)
        end
        local ok, err = pcall(hb.hold, hb, { "1-1", 2 })
        assert(not ok and tostring(err):find("ids must be strings"), tostring(err))
        hb:close()
        g:close()
        print("done")
      ]]):format(srv.port))
      assert.equal(0, status, out)
      assert.matches("done", out)
    end)
  end)
end)
