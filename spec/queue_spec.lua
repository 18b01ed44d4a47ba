-- Pools across machines: ps.pool{queue = ...} and `proxystore worker`
-- processes, against a real redis-server. Workers are started from the
-- shell as separate processes (spec/helpers/workers.lua), as they would
-- be on another machine; tasks that must be caught in the middle wait for
-- a handshake through Redis, so nothing depends on timing.

local ps = require "proxystore"
local core = require "proxystore.core"
local wire = require "proxystore.queue_wire"
local redis = require "helpers.redis"
local workers = require "helpers.workers"
local shell = require "helpers.shell"

local SECRET = "queue-spec secret, 32 bytes long"

-- A task's half of the handshake: helpers/queue.lua
local handshake = require("helpers.queue").handshake

describe("queue pool", function()
  local fx = require("helpers.queue").new(SECRET)
  local srv, g   -- fx's, once started

  setup(function()
    fx:start()
    srv, g = fx.srv, fx.g
  end)

  teardown(function()
    fx:stop()
  end)

  after_each(function()
    fx:reset()
  end)

  describe("with worker processes started from the shell", function()
    it("loses no reply to the wait submit sends early, whatever times out", function()
      workers.start(srv, { queue = "early", secret = SECRET })
      local pool = fx:pool { name = "early" }
      finally(function() pool:close { timeout = 60 } end)
      -- submit sends the wait for replies before its XADD's reply is read
      local f = pool:submit(handshake, srv.port, "early")
      assert.is_true(pool.g:held())
      local pid = fx:started("early")
      for _ = 1, 3 do   -- waits that end before the reply: it stays sent
        local ok, err = pcall(f.result, f, 0.01)
        assert.is_false(ok)
        assert.equal("timeout", err.kind)
        assert.is_false(f:done())
      end
      local g2 = pool:submit(function() return "quick" end)
      fx:go("early", pid)
      assert.equal(pid, f:result(60))
      assert.equal("quick", g2:result(60))
      assert.same({ 1, 2, n = 2 }, pool:map(function(x) return x end, { 1, 2 }))
      assert.equal(pool:metrics().submitted, pool:metrics().done)
    end)

    it("stores results when the server forgot its scripts (SCRIPT FLUSH)", function()
      local w = workers.start(srv, { queue = "noscript", secret = SECRET })
      local pool = fx:pool { name = "noscript", visibility = 600 }
      finally(function() pool:close { timeout = 60 } end)
      assert.equal(1, pool:submit(function() return 1 end):result(60))
      -- the worker sends its next result with its next read, by the
      -- script's sha: the server answers NOSCRIPT, the worker loads it
      -- again, and the task is not left to the visibility (600 s)
      g:call("SCRIPT", "FLUSH")
      assert.equal(2, pool:submit(function() return 2 end):result(60))
      g:call("SCRIPT", "FLUSH")
      assert.same({ 3, 4, n = 2 }, pool:map(function(x) return x end, { 3, 4 }))
      assert.equal(0, pool:metrics().reclaimed)
      assert.is_truthy(w)
    end)

    it("runs tasks and maps in order, results and errors as the local pool's", function()
      local w = workers.start(srv, { queue = "basic", secret = SECRET })
      local pool = fx:pool { name = "basic" }
      finally(function() pool:close { timeout = 60 } end)
      local f = pool:submit(function(a, b) return a + b, nil, "x" end, 2, 3)
      local r = table.pack(f:result(60))
      assert.equal(3, r.n)
      assert.same({ 5, nil, "x" }, { r[1], r[2], r[3] })
      assert.is_true(f:done())
      assert.matches("^proxystore.Future: task %d+, done$", tostring(f))
      local squares = pool:map(function(x) return x * x end, { 1, 2, 3, 4, 5, 6, 7 })
      assert.same({ 1, 4, 9, 16, 25, 36, 49, n = 7 }, squares)
      local bad = pool:submit(function() error("boom") end)
      local ok, err = pcall(bad.result, bad, 60)
      assert.is_false(ok)
      assert.equal("task", err.kind)
      assert.matches("^proxystore: spec/queue_spec.lua:%d+: task %d+ failed: .*boom", tostring(err))
      assert.matches("queue_spec.lua", err.traceback)
      assert.is_nil(err.traceback:find("proxystore/worker.lua", 1, true))
      local e2 = pool:submit(function() error({ code = 7 }) end)
      ok, err = pcall(e2.result, e2, 60)
      assert.equal(7, err.cause.code)
      -- map stops at the first failure, with the task's error
      ok, err = pcall(pool.map, pool, function(x)
        if x == 2 then error("two") end
        return x
      end, { 1, 2, 3 })
      assert.is_false(ok)
      assert.matches("item 2 of the map failed: .*two", tostring(err))
      -- map's arguments and options are checked as the local pool's are
      assert.equal(7, squares.n)
      local function config_err(...)
        local ok2, e = pcall(pool.map, pool, ...)
        assert.is_false(ok2)
        assert.equal("config", e.kind)
        return tostring(e)
      end
      assert.matches("unknown option 'progres'",
        config_err(function(x) return x end, { 1 }, { progres = false }))
      assert.matches("needs a sequence",
        config_err(function(x) return x end, { 1, 2, x = 3 }))
      assert.matches("bad argument #3 to 'map'",
        config_err(function(x) return x end, { 1 }, "fast"))
      -- the worker logged its start, not each task
      local log = w:wait_log("started on queue 'basic'")
      assert.is_nil(log:find("task %d", 1))
      assert.equal(1, select(2, log:gsub("\n", "")))
    end)

    it("times a result out and the task goes on", function()
      workers.start(srv, { queue = "slow", secret = SECRET })
      local pool = fx:pool { name = "slow" }
      finally(function() pool:close { timeout = 60 } end)
      local f = pool:submit(handshake, srv.port, "slow")
      local pid = fx:started("slow")
      local ok, err = pcall(f.result, f, 0.2)
      assert.is_false(ok)
      assert.equal("timeout", err.kind)
      assert.is_false(f:done())
      fx:go("slow", pid)
      assert.equal(pid, f:result(60))
    end)

    it("moves large arguments and results as proxies through the queue's store", function()
      workers.start(srv, { queue = "big", secret = SECRET })
      local pool = fx:pool { name = "big", proxy_threshold = 1000 }
      finally(function() pool:close { timeout = 60 } end)
      local big = ("abc"):rep(100000)
      local f = pool:submit(function(s, n) return #s + n, s:upper() end, big, 1)
      local n, up = f:result(60)
      assert.equal(300001, n)
      assert.equal(big:upper(), up)
      local m = pool:metrics()
      assert.equal(1, m.proxied_args)
      assert.equal(1, m.proxied_results)
      -- both are gone from the store once the task is done
      local keys = g:call("KEYS", "*")
      for _, k in ipairs(keys) do
        assert.is_nil(k:match("^%x+$"), "left in the store: " .. k)
      end
      -- a proxy passed by the caller is used in place: one copy for many tasks
      local p = pool.store:proxy(big)
      local lens = pool:map(function(s) return #s end, { p, p, p })
      assert.same({ 300000, 300000, 300000, n = 3 }, lens)
      assert.is_true(pool.store:exists(ps.key(p)))
    end)

    it("sees the worker's globals, and requires the modules its upvalues name", function()
      workers.start(srv, { queue = "globals", secret = SECRET })
      local pool = fx:pool { name = "globals" }
      finally(function()
        pool:close()
        rawset(_G, "queue_spec_global", nil)
        package.loaded["queue_spec_nowhere"] = nil
      end)
      rawset(_G, "queue_spec_global", "submitter's")
      local url = require "proxystore.url"
      local insert = table.insert
      local f = pool:submit(function()
        local t = {}
        insert(t, url.parse("redis://h:1").port)
        return rawget(_G, "queue_spec_global"), t[1], type(string.rep)
      end)
      local gv, port, rep = f:result(60)
      assert.is_nil(gv)           -- the worker's _G has no such global
      assert.equal(1, port)       -- proxystore.url was required there
      assert.equal("function", rep)
      -- a module the worker cannot require fails the task, clearly
      package.loaded["queue_spec_nowhere"] = { f = function() return 1 end }
      local mod = package.loaded["queue_spec_nowhere"]
      local bad = pool:submit(function() return mod.f() end)
      local ok, err = pcall(bad.result, bad, 60)
      assert.is_false(ok)
      assert.equal("task", err.kind)
      assert.matches("queue_spec_nowhere", tostring(err))
    end)

    it("works with a worker started before the pool and one started after", function()
      local before = workers.start(srv, { queue = "order", secret = SECRET })
      before:wait_log("started on queue 'order'")
      local pool = fx:pool { name = "order" }
      finally(function() pool:close { timeout = 60 } end)
      local pid = core.pool_getpid()
      local first = pool:submit(function() return core.pool_getpid() end):result(60)
      assert.equal(before.pid, first)
      before:signal("TERM")
      assert.equal(0, before:wait(60))
      -- queued while no worker runs
      local f = pool:submit(function() return core.pool_getpid() end)
      assert.is_false(f:done())
      assert.equal(1, pool:metrics().queued)
      local after = workers.start(srv, { queue = "order", secret_env = SECRET })
      assert.equal(after.pid, f:result(60))
      assert.not_equal(pid, after.pid)
    end)

    it("counts queued, running, done, failed and reclaimed tasks", function()
      workers.start(srv, { queue = "counts", secret = SECRET })
      local pool = fx:pool { name = "counts" }
      finally(function() pool:close { timeout = 60 } end)
      local busy = pool:submit(handshake, srv.port, "counts")
      local pid = fx:started("counts")
      local waiting = pool:submit(function() return 1 end)
      local m = pool:metrics()
      assert.equal(1, m.running)
      assert.equal(1, m.queued)
      assert.equal(0, m.done)
      fx:go("counts", pid)
      busy:result(60)
      waiting:result(60)
      local f = pool:submit(function() error("x") end)
      pcall(f.result, f, 60)
      m = pool:metrics()
      assert.equal(0, m.running)
      assert.equal(0, m.queued)
      assert.equal(3, m.submitted)
      assert.equal(2, m.done)
      assert.equal(1, m.failed)
      assert.equal(0, m.reclaimed)
      assert.equal(0, m.refused)
    end)

    it("refuses, and reports, a task whose signature does not verify", function()
      local w = workers.start(srv, { queue = "forged", secret = SECRET })
      local pool = fx:pool { name = "forged", visibility = 0.3 }
      finally(function() pool:close { timeout = 60 } end)
      local keys = wire.keys("forged")
      -- a task signed with another secret, then one with no signature
      local other = core.secret("not the shared secret at all!!")
      local code = string.dump(function() os.exit(99) end)
      local m = ps.serialize { fn = { code = code, n = 0 }, args = { n = 0 }, max = 3 }
      g:add(keys.stream, { wire.task_fields(other, "x:1", "nowhere", m),
                           { v = "1", t = "x:2", r = "nowhere", m = m } })
      w:wait_log("refused entry")
      local log = w:wait_log("task 'x:2'")
      assert.matches("its signature does not verify", log)
      -- the worker goes on, and runs good tasks
      assert.equal(42, pool:submit(function() return 42 end):result(60))
      -- refused entries are claimed again (for a worker holding the right
      -- secret), then dropped
      w:wait_log("dropped after", 60)
      -- the secret itself never reaches the log
      assert.is_nil(w:log():find(SECRET, 1, true))
    end)

    it("fails with a clear error a task whose code is for another Lua", function()
      workers.start(srv, { queue = "lua53", secret = SECRET })
      local pool = fx:pool { name = "lua53" }
      finally(function() pool:close { timeout = 60 } end)
      local code = string.dump(function() return 1 end)
      local forged = code:sub(1, 4) .. "\x53" .. code:sub(6)
      local f = pool:_submit_packed({ code = forged, n = 0 }, table.pack())
      local ok, err = pcall(f.result, f, 60)
      assert.is_false(ok)
      assert.equal("task", err.kind)
      assert.matches("cannot run on worker", tostring(err))
      assert.matches("Lua 5.3 bytecode", tostring(err))
      -- not bytecode at all: the same, never a crash
      f = pool:_submit_packed({ code = "return 1", n = 0 }, table.pack())
      ok, err = pcall(f.result, f, 60)
      assert.matches("not Lua bytecode", tostring(err))
      -- the worker lives on
      assert.equal(2, pool:submit(function() return 2 end):result(60))
    end)

    it("answers a message of another format with a clear error", function()
      workers.start(srv, { queue = "format", secret = SECRET })
      local s = core.secret(SECRET)
      local keys = wire.keys("format")
      g:create_group(keys.stream, wire.GROUP, "0")
      local f = wire.task_fields(s, "p:1", "format-replies", "whatever")
      f.v = "2"
      f.s = s:sign("task", "2", f.t, f.r, f.m)
      g:add(keys.stream, { f })
      local r = g:call_blocking(61, { "BLPOP", "format-replies", 60 })[1]
      assert.is_truthy(r)
      local reply = assert(wire.open_reply(s, r[2]))
      assert.is_false(reply.ok)
      assert.matches("message format is 2", reply.e.message)
      assert.matches("reads format 1", reply.e.message)
    end)

    it("ignores replies that are not signed with the secret", function()
      workers.start(srv, { queue = "replies", secret = SECRET })
      local pool = fx:pool { name = "replies" }
      finally(function() pool:close { timeout = 60 } end)
      local f = pool:submit(handshake, srv.port, "replies")
      local pid = fx:started("replies")
      -- a forged reply for that very task
      local blob = ps.serialize { t = f.pool.id .. ":" .. f.id, ok = true,
                                  v = { "forged", n = 1 } }
      g:call("RPUSH", pool.reply_key, ("\0"):rep(32) .. blob)
      assert.is_false(f:done())
      assert.equal(1, pool:metrics().refused)
      fx:go("replies", pid)
      assert.equal(pid, f:result(60))
    end)

    it("keeps the first stored result when a silent worker finishes late", function()
      local a = workers.start(srv, { queue = "late", secret = SECRET })
      a:wait_log("started on queue")
      local pool = fx:pool { name = "late", visibility = 0.5 }
      finally(function() pool:close { timeout = 60 } end)
      local f = pool:submit(handshake, srv.port, "late")
      local pid_a = fx:started("late")
      assert.equal(a.pid, pid_a)
      a:signal("STOP")   -- silent: no heartbeat
      local b = workers.start(srv, { queue = "late", secret = SECRET })
      local pid_b = fx:started("late")   -- claimed after the visibility
      assert.equal(b.pid, pid_b)
      fx:go("late", pid_b)
      assert.equal(pid_b, f:result(60))
      assert.equal(1, pool:metrics().reclaimed)
      b:wait_log("reclaimed entry")
      -- a comes back and finishes: its result changes nothing
      a:signal("CONT")
      fx:go("late", pid_a)
      a:wait_log("had a result already", 60)
      assert.equal(0, g:call("LLEN", pool.reply_key))
      assert.equal(pid_b, f:result(0))
    end)

    it("never puts the secret in the stream, a proxy or an error", function()
      local pool = fx:pool { name = "secret", proxy_threshold = 10 }
      finally(function() pool:close { timeout = 60 } end)
      local f = pool:submit(function(s) return s .. "!" end, ("x"):rep(100))
      -- the task as it waits in the stream for a worker
      local rc, dump = shell.sh("redis-cli -p " .. srv.port .. " XRANGE " ..
        shell.quote(wire.keys("secret").stream) .. " - +")
      assert.equal(0, rc)
      assert.is_truthy(dump:find("proxystore:queue:{secret}:reply:", 1, true), dump)
      assert.is_nil(dump:find(SECRET, 1, true))
      workers.start(srv, { queue = "secret", secret = SECRET })
      assert.equal(("x"):rep(100) .. "!", f:result(60))
      assert.is_nil(ps.serialize(pool.store:config()):find(SECRET, 1, true))
      assert.is_nil(ps.serialize(pool.store:proxy("v")):find(SECRET, 1, true))
    end)
  end)

  it("runs examples/cluster_mapreduce.lua on two worker processes", function()
    local root = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
    local w = workers.start(srv, { queue = "mapreduce", secret = SECRET, workers = 2 })
    w:wait_log("supervising 2 workers")
    local objects = #g:call("KEYS", "[0-9a-f]*")   -- what earlier specs left
    local rc, out = shell.sh("cd " .. shell.quote(root) .. " && PROXYSTORE_SECRET=" ..
      shell.quote(SECRET) .. " env -u LD_PRELOAD " .. shell.quote(workers.BIN) ..
      " examples/cluster_mapreduce.lua " .. shell.quote(fx:url()) .. " 6 2000 3")
    assert.equal(0, rc, out)
    assert.matches("counted 12000 words on the workers of queue 'mapreduce'", out)
    assert.matches("top 3 words:\n +1%. the ", out)
    -- the documents were evicted after the map
    assert.equal(objects, #g:call("KEYS", "[0-9a-f]*"))
    w:signal("TERM")
    assert.equal(0, w:wait(60))
    local ran = 0
    for n in w:log():gmatch("stopped after (%d+) task") do ran = ran + tonumber(n) end
    assert.equal(6, ran)
  end)

  it("gives back the tasks of a batch that wait behind a long one", function()
    local pool = fx:pool { name = "holdlimit" }
    local w = require("proxystore.worker").new {
      redis = wire.redis_config(fx:url()), queue = "holdlimit", secret = SECRET }
    finally(function()
      w:close()
      pool:close { timeout = 60 }
    end)
    local long = pool:submit(function()
      os.execute("sleep 1.2")   -- longer than a batch may hold the others
      return "long"
    end)
    local a = pool:submit(function() return "a" end)
    local b = pool:submit(function() return "b" end)
    local before = g:range(wire.keys("holdlimit").stream, "-", "+", 10)
    w.count = 8        -- as after a run of short tasks
    w:cycle()          -- takes all three, runs the long one, gives back two
    assert.equal("long", long:result(0))
    assert.is_false(a:done())
    -- the long task's entry (done), then the two given back as new
    -- entries (not a delivery: no attempt is counted against them)
    local after = g:range(wire.keys("holdlimit").stream, "-", "+", 10)
    assert.equal(3, #after)
    assert.equal(before[1].id, after[1].id)
    assert.is_true(after[2].id > before[3].id)
    workers.start(srv, { queue = "holdlimit", secret = SECRET })
    assert.equal("a", a:result(60))
    assert.equal("b", b:result(60))
    assert.equal(0, pool:metrics().reclaimed)
  end)

  describe("with local workers", function()
    it("forks them, runs on them, and stops them at close", function()
      local pool = fx:pool { name = "local", workers = 2 }
      local pids = pool:pids()
      assert.equal(2, #pids)
      local seen = {}
      local list = {}
      for i = 1, 40 do list[i] = i end
      local r = pool:map(function(x) return x * 2, core.pool_getpid() end, list)
      for i = 1, 40 do assert.equal(2 * i, r[i]) end
      local who = pool:submit(function() return core.pool_getpid() end):result(60)
      seen[who] = true
      assert.is_true(who == pids[1] or who == pids[2])
      assert.equal(2, pool:metrics().workers)
      pool:close()
      pool:close()   -- idempotent
      for _, pid in pairs(pids) do
        assert.is_false(workers.alive(pid), "worker " .. pid .. " still runs")
      end
      local ok, err = pcall(pool.submit, pool, function() end)
      assert.is_false(ok)
      assert.equal("closed", err.kind)
      assert.matches("QueuePool: queue 'local' at %-, closed", tostring(pool))
      -- the pool's keys are gone
      assert.equal(0, g:call("EXISTS", pool.reply_key, pool.alive_key))
    end)

    it("replaces a local worker that dies, and its task runs again", function()
      local pool = fx:pool { name = "localdeath", workers = 1, visibility = 0.5 }
      finally(function() pool:close { timeout = 60 } end)
      local first = pool:pids()[1]
      local f = pool:submit(handshake, srv.port, "localdeath")
      assert.equal(first, fx:started("localdeath"))
      os.execute(shell.CLEAN .. "kill -9 " .. first)
      -- the pool replaces its workers while it waits (done() looks)
      local second
      for _ = 1, 300 do
        assert.is_false(f:done())
        second = g:call("LPOP", "started:localdeath")
        if second then break end
        g:call_blocking(1, { "BLPOP", "nothing", 0.2 })
      end
      second = tonumber(second)   -- the replacement claimed it
      assert.not_equal(first, second)
      fx:go("localdeath", second)
      assert.equal(second, f:result(60))
      assert.equal(1, pool:metrics().worker_deaths)
      assert.equal(1, pool:metrics().reclaimed)
    end)

    it("shows map's progress bar on a terminal", function()
      local dir = shell.tempdir("progress")
      finally(function() shell.rmtree(dir) end)
      local script = dir .. "/map.lua"
      local f = assert(io.open(script, "w"))
      f:write(([[
local ps = require "proxystore"
local pool = ps.pool { queue = %q, name = "bar", secret = %q, workers = 1 }
local list = {}
for i = 1, 30 do list[i] = i end
local r = pool:map(function(x) return x end, list)
pool:close()
io.stdout:write("sum ", #r, "\n")
]]):format(fx:url(), SECRET))
      f:close()
      local rc, out = shell.sh("cd " .. shell.quote(os.getenv("PROXYSTORE_SOURCE_ROOT") or ".") ..
        " && script -qec " .. shell.quote("env -u LD_PRELOAD " .. shell.quote(workers.BIN) ..
        " " .. shell.quote(script)) .. " /dev/null")
      assert.equal(0, rc, out)
      assert.matches("sum 30", out)
      assert.matches("%[#+%] 30/30", out)
    end)
  end)

  describe("options", function()
    it("refuses to start without a secret, naming where one comes from", function()
      local ok, err = pcall(ps.pool, { queue = fx:url() })
      assert.is_false(ok)
      assert.equal("config", err.kind)
      assert.matches("secret", tostring(err))
      assert.matches("PROXYSTORE_SECRET", tostring(err))
      ok, err = pcall(ps.pool, { queue = fx:url(), secret = "short" })
      assert.equal("config", err.kind)
      assert.matches("at least 16 bytes %(got 5%)", tostring(err))
      assert.is_nil(tostring(err):find("short", 1, true))
    end)

    it("refuses unknown options and bad values with config errors", function()
      local cases = {
        { queue = fx:url(), secret = SECRET, nope = 1 },
        { queue = fx:url(), secret = SECRET, visibility = 0 },
        { queue = fx:url(), secret = SECRET, visibility = "10" },
        { queue = fx:url(), secret = SECRET, max_attempts = 0 },
        { queue = fx:url(), secret = SECRET, workers = -1 },
        { queue = fx:url(), secret = SECRET, name = "bad name" },
        { queue = fx:url(), secret = SECRET, name = "" },
        { queue = "file:///tmp", secret = SECRET },
        { queue = "redis://h:notaport", secret = SECRET },
        { queue = fx:url(), secret = SECRET, store = "local:" },
      }
      for i, opts in ipairs(cases) do
        local ok, err = pcall(ps.pool, opts)
        assert.is_false(ok, "case " .. i)
        assert.equal("config", err.kind, "case " .. i .. ": " .. tostring(err))
        assert.is_nil(tostring(err):find(SECRET, 1, true))
      end
    end)

    it("fails with a connection error when the server cannot be reached", function()
      local ok, err = pcall(ps.pool, { queue = "redis://127.0.0.1:" ..
        redis.dead_port(), secret = SECRET })
      assert.is_false(ok)
      assert.equal("connection", err.kind)
    end)

    it("closes within a timeout, failing what no worker finished", function()
      local pool = fx:pool { name = "nobody" }
      local f = pool:submit(function() return 1 end)
      pool:close { timeout = 0.2 }
      local ok, err = pcall(f.result, f)
      assert.is_false(ok)
      assert.equal("closed", err.kind)
      assert.has_error(function() fx:pool { name = "x" }:close { timeout = -1 } end)
    end)

    it("takes the secret from PROXYSTORE_SECRET", function()
      local rc, out = shell.sh("cd " .. shell.quote(os.getenv("PROXYSTORE_SOURCE_ROOT") or ".") ..
        " && PROXYSTORE_SECRET=" .. shell.quote(SECRET) .. " env -u LD_PRELOAD " ..
        shell.quote(workers.BIN) .. " -e " .. shell.quote(([[
local ps = require "proxystore"
local pool = ps.pool { queue = %q, name = "env", workers = 1 }
io.write(pool:submit(function() return "ran" end):result(60))
pool:close()]]):format(fx:url())))
      assert.equal(0, rc, out)
      assert.equal("ran", out)
    end)
  end)
end)
