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
