-- ps.pool: worker processes, futures, automatic proxying, worker death,
-- and clean-up.

local ps = require "proxystore"
local core = require "proxystore.core"

local q = require("helpers.shell").quote

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a")
  f:close()
  -- reaped between the open and the read: the read fails, and it is gone
  if not stat then return false end
  -- a zombie is not alive, but it is left behind: count it
  return true, stat:match("^%d+ %b() (%a)")
end

-- Waits (up to 30 s: a hang guard) until none of pids exists; returns
-- those still there. zombies_ok: a zombie that is not ours (reparented to
-- init) counts as gone.
local function gone(pids, zombies_ok)
  local left
  for _ = 1, 600 do
    left = {}
    for _, p in ipairs(pids) do
      local there, state = alive(p)
      if there and not (zombies_ok and state == "Z") then left[#left + 1] = p end
    end
    if #left == 0 then return left end
    os.execute("sleep 0.05")
  end
  return left
end

local function children_of(pid)
  local t = {}
  -- without LD_PRELOAD: ps hangs with the ASan runtime preloaded
  local p = io.popen("env -u LD_PRELOAD ps --ppid " .. pid .. " -o pid= 2>/dev/null")
  for l in p:lines() do t[#t + 1] = tonumber(l) end
  p:close()
  return t
end

local function all_pids(pool)
  local pids, z = pool:pids()
  local t = { z }
  for _, p in pairs(pids) do t[#t + 1] = p end
  return t
end

local function listdir(dir)
  local t = {}
  local p = io.popen("env -u LD_PRELOAD ls -A " .. q(dir) .. " 2>/dev/null")
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

local function tempdir() return require("helpers.shell").tempdir("pool") end

local function catch(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return e
end

describe("ps.pool", function()
  local pool

  before_each(function()
    pool = ps.pool { workers = 2, progress = false }
  end)

  after_each(function()
    if pool then pool:close() end
    pool = nil
  end)

  it("runs a function on a worker and returns all its results", function()
    local f = pool:submit(function(a, b) return a + b, nil, "x" .. a end, 1, 2)
    assert.same(table.pack(3, nil, "x1"), table.pack(f:result()))
    assert.is_true(f:done())
  end)

  it("runs tasks in other processes", function()
    local me = core.pool_getpid()
    local pid = pool:submit(function()
      return tonumber(io.open("/proc/self/stat"):read("a"):match("^%d+"))
    end):result()
    assert.not_equal(me, pid)
    local workers = {}
    for _, p in pairs(pool:pids()) do workers[p] = true end
    assert.is_true(workers[pid])
  end)

  it("carries upvalues, local helper functions, and binds _ENV to the worker's globals", function()
    local k = 10
    local t = { a = { 1, 2, 3 } }
    local function helper(x) return x * k end
    local function rec(n) if n == 0 then return 0 end return n + rec(n - 1) end
    local f = pool:submit(function(x)
      return helper(x) + #t.a, rec(4), type(string.format), math.pi
    end, 4)
    assert.same({ 43, 10, "function", math.pi }, { f:result() })
  end)

  it("sends loaded modules and their functions by name", function()
    local rep, P = string.rep, ps
    local f = pool:submit(function() return rep("x", 2), P.is_proxy(1), P == require("proxystore") end)
    assert.same({ "xx", false, true }, { f:result() })
  end)

  it("refuses a function with a C function upvalue no module holds, clearly", function()
    local w = coroutine.wrap(function() end)   -- a C closure
    local e = catch(pool.submit, pool, function() return w() end)
    assert.equal("serialization", e.kind)
    assert.matches("C function", tostring(e), 1, true)
  end)

  it("gives workers the globals as they were when the pool started, replacements too", function()
    pool:close()
    POOL_SPEC_G = "at start"
    pool = ps.pool { workers = 1 }
    POOL_SPEC_G = "changed later"
    local get = function() return POOL_SPEC_G end
    assert.equal("at start", pool:submit(get):result())
    -- kill the worker: its replacement must also see the start-time value
    local dying = pool:submit(function() os.exit(1) end)
    assert.equal("worker", catch(dying.result, dying).kind)
    assert.equal("at start", pool:submit(get):result())
    POOL_SPEC_G = nil
  end)

  it("runs 1000 small tasks, submitted one by one, with the right results", function()
    local fs = {}
    for i = 1, 1000 do fs[i] = pool:submit(function(x) return x * x end, i) end
    for i = 1000, 1, -1 do assert.equal(i * i, fs[i]:result()) end
    assert.equal(1000, pool:metrics().completed)
  end)

  it("keeps the order of pool:map whatever order tasks finish in", function()
    local list = {}
    for i = 1, 40 do list[i] = i end
    local r = pool:map(function(x)
      local t = os.clock() + (x % 3) * 0.002
      while os.clock() < t do end
      return -x
    end, list)
    assert.equal(40, #r)
    for i = 1, 40 do assert.equal(-i, r[i]) end
  end)

  it("maps 1000 items", function()
    local list = {}
    for i = 1, 1000 do list[i] = tostring(i) end
    local r = pool:map(function(s) return #s end, list)
    assert.equal(1000, #r)
    assert.equal(4, r[1000])
    assert.equal(1, r[9])
  end)

  it("re-raises a task's error with the worker's message and traceback", function()
    local function failing_helper() error("bad input 42") end
    local f = pool:submit(function() failing_helper() end)
    local e = catch(f.result, f)
    assert.equal("task", e.kind)
    assert.matches("bad input 42", e.message, 1, true)
    assert.matches("pool_spec.lua:%d+: bad input 42", tostring(e))
    assert.matches("^proxystore: ", tostring(e))
    assert.is_string(e.traceback)
    assert.matches("stack traceback:", e.traceback, 1, true)
    assert.matches("failing_helper", e.traceback, 1, true)
    -- the pool goes on
    assert.equal(1, pool:submit(function() return 1 end):result())
  end)

  it("keeps a task's error object as the cause", function()
    local f = pool:submit(function() error({ code = 7 }) end)
    local e = catch(f.result, f)
    assert.equal("task", e.kind)
    assert.same({ code = 7 }, e.cause)
  end)

  it("shows a task's error table by its fields, not its address", function()
    local f = pool:submit(function() error({ code = 42 }) end)
    local e = catch(f.result, f)
    assert.same({ code = 42 }, e.cause)
    local s = tostring(e)
    assert.matches("failed: {code = 42}$", s)
    assert.not_matches("table: 0x", s, 1, true)
  end)

  it("says 'not enough memory' for a task that runs out of memory, and its worker goes on", function()
    -- The task caps its own address space 256 MiB above what it has, then
    -- asks for 2 GiB: the allocator refuses and nothing is touched.
    local f = pool:submit(function()
      local pid = io.open("/proc/self/stat"):read("n")
      local vm = io.open("/proc/self/status"):read("a"):match("VmSize:%s*(%d+)")
      assert(os.execute(("env -u LD_PRELOAD prlimit --pid %d --as=%d"):format(pid,
        (tonumber(vm) + 256 * 1024) * 1024)))
      return string.rep("x", (1 << 31) - 1)
    end)
    local e = catch(f.result, f)
    assert.equal("task", e.kind)
    assert.matches("failed: not enough memory$", tostring(e))
    assert.equal(0, pool:metrics().worker_deaths)
    assert.equal(2, pool:submit(function() return 2 end):result())
  end)

  it("collects a task's large garbage once its reply is sent, not at the next task", function()
    local one = ps.pool { workers = 1, progress = false }
    finally(function() one:close() end)
    local function heap() return collectgarbage("count") end
    local base = one:submit(heap):result()
    -- 8 MiB of garbage once the task returns: nothing allocates after it,
    -- so left to its pace the collector would not free it before the next
    -- task
    assert.equal(8 * 1024 * 1024 + 1, one:submit(function()
      local s = ("x"):rep(8 * 1024 * 1024) .. "y"
      return #s
    end):result())
    local after = one:submit(heap):result()
    assert.is_true(after - base < 1024, ("heap grew by %.0f KiB"):format(after - base))
  end)

  it("keeps a task's proxystore error as an error object, quoted once with the task's line", function()
    local f = pool:submit(function()
      local s = require("proxystore").init_store("local", { name = "in-task" })
      return s:proxy_from_key("gone").x
    end)
    local e = catch(f.result, f)
    assert.equal("task", e.kind)
    assert.is_true(ps.is_error(e.cause))
    assert.equal("missing_key", e.cause.kind)
    assert.equal("gone", e.cause.key)
    local s = tostring(e)
    assert.not_matches("proxystore: proxystore:", s, 1, true)
    local _, n = s:gsub("no object under key 'gone'", "")
    assert.equal(1, n, s)
    assert.matches("failed: spec/pool_spec%.lua:%d+: no object under key 'gone'", s)
  end)

  it("names the map item that failed by its index in the list", function()
    local e = catch(pool.map, pool, function(x)
      if x == "bad" then error("bad item") end
      return x
    end, { "a", "b", "bad", "c" })
    assert.equal("task", e.kind)
    assert.equal(3, e.index)
    assert.matches("item 3 of the map failed: [^\n]*bad item", tostring(e))
    e = catch(pool.map, pool, function(x)
      if x == 2 then os.exit(5) end
      return x
    end, { 1, 2 })
    assert.equal("worker", e.kind)
    assert.equal(2, e.index)
    assert.matches("exited with code 5 while running item 2 of the map", tostring(e), 1, true)
  end)

  it("gives map results a field n, and maps over such a list again", function()
    local r = pool:map(function(x) return x end, { 1, 2, 3 })
    assert.same({ 1, 2, 3, n = 3 }, r)
    r = pool:map(function(x) if x ~= 2 then return x end end, { 1, 2, 3 })
    assert.same({ 1, nil, 3, n = 3 }, r)
    r = pool:map(function(x) return x == nil end, r)
    assert.same({ false, true, false, n = 3 }, r)
    assert.same({ n = 0 }, pool:map(function(x) return x end, {}))
  end)

  it("refuses unknown pool and map options, and a list that is not a sequence", function()
    local e = catch(ps.pool, { worker = 2 })
    assert.equal("config", e.kind)
    assert.matches("unknown option 'worker' for ps.pool", e.message, 1, true)
    e = catch(ps.pool, { progress = "no" })
    assert.equal("config", e.kind)
    local id = function(x) return x end
    e = catch(pool.map, pool, id, { 1 }, { progres = false })
    assert.equal("config", e.kind)
    assert.matches("unknown option 'progres' for pool:map", e.message, 1, true)
    for _, list in ipairs {
      { 1, nil, 3 }, { 1, 2, x = 3 }, { [2] = 1 }, { [1.5] = 1 },
      { 1, 2, 3, n = 2 }, { n = -1 }, { n = "2" },
    } do
      e = catch(pool.map, pool, id, list)
      assert.equal("config", e.kind)
      assert.matches("pool:map", e.message, 1, true)
    end
    assert.equal(0, pool:metrics().submitted)
  end)

  it("fails the future of a worker that calls os.exit, naming the code, and replaces it", function()
    local before = pool:pids()
    local f = pool:submit(function() os.exit(3) end)
    local e = catch(f.result, f)
    assert.equal("worker", e.kind)
    assert.equal(3, e.code)
    assert.matches("exited with code 3", tostring(e), 1, true)
    -- still two workers, one of them new
    local r = pool:map(function(x) return x end, { 1, 2, 3, 4 })
    assert.same({ 1, 2, 3, 4, n = 4 }, r)
    local after, n, new = pool:pids(), 0, 0
    local old = {}
    for _, p in pairs(before) do old[p] = true end
    for _, p in pairs(after) do
      n = n + 1
      if not old[p] then new = new + 1 end
    end
    assert.equal(2, n)
    assert.equal(1, new)
    assert.equal(1, pool:metrics().worker_deaths)
  end)

  it("fails the future of a worker killed by SIGKILL, naming the signal", function()
    local f = pool:submit(function()
      os.execute("kill -9 $PPID")   -- the shell's parent is the worker
      return "survived"
    end)
    local e = catch(f.result, f)
    assert.equal("worker", e.kind)
    assert.equal(9, e.signal)
    assert.matches("SIGKILL", tostring(e), 1, true)
    assert.equal("ok", pool:submit(function() return "ok" end):result())
  end)

  -- Polls until check() is true; the bound is only a guard against a hang.
  local function wait_for(check, what)
    for _ = 1, 3000 do
      if check() then return end
      os.execute("sleep 0.01")
    end
    error("gave up waiting for " .. what)
  end

  local function worker_pid()
    return pool:submit(function()
      return tonumber(io.open("/proc/self/stat"):read("a"):match("^%d+"))
    end):result()
  end

  it("runs a task submitted after an idle worker was killed on its replacement", function()
    -- The next task goes to the worker of slot 1. Kill it while idle and
    -- wait until it is gone (its socket closed), before the pool reads of
    -- its death.
    local victim = pool.h:pids()[1]
    os.execute("kill -9 " .. victim)
    wait_for(function()
      local there, state = alive(victim)
      return not there or state == "Z"
    end, "the killed worker to exit")
    local f = pool:submit(function() return "ran" end)
    assert.equal("ran", f:result())
    assert.equal("ran", pool:submit(function() return "ran" end):result())
    assert.equal(1, pool:metrics().worker_deaths)
    assert.equal(0, pool:metrics().failed)
  end)

  it("shows the replacement of a worker killed while idle in pids, and runs tasks there", function()
    local victim = pool:pids()[1]
    os.execute("kill -9 " .. victim)
    local new
    wait_for(function()
      new = pool:pids()[1]
      return new ~= nil and new ~= victim
    end, "the pool to show the replacement worker")
    local seen = {}
    for _ = 1, 2 do seen[worker_pid()] = true end
    assert.is_true(seen[new])
    assert.is_nil(seen[victim])
    assert.equal(1, pool:metrics().worker_deaths)
  end)

  it("runs a task after every worker was killed while idle", function()
    local pids = pool.h:pids()
    for _, p in pairs(pids) do os.execute("kill -9 " .. p) end
    for _, p in pairs(pids) do
      wait_for(function()
        local there, state = alive(p)
        return not there or state == "Z"
      end, "the killed workers to exit")
    end
    local fs = {}
    for i = 1, 3 do fs[i] = pool:submit(function(x) return x * 2 end, i) end
    for i = 1, 3 do assert.equal(i * 2, fs[i]:result()) end
    assert.equal(2, pool:metrics().worker_deaths)
  end)

  it("leaves queued tasks running when a worker dies", function()
    local fs = {}
    for i = 1, 6 do
      fs[i] = pool:submit(function(x)
        if x == 2 then os.exit(9) end
        return x
      end, i)
    end
    for i = 1, 6 do
      if i == 2 then
        assert.equal("worker", catch(fs[i].result, fs[i]).kind)
      else
        assert.equal(i, fs[i]:result())
      end
    end
  end)

  it("fails running tasks and closes itself when its zygote is killed", function()
    local pids, z = pool:pids()
    local f = pool:submit(function() while true do end end)
    os.execute("kill -9 " .. z)
    local e = catch(f.result, f, 60)   -- a hang guard: it fails at once
    assert.equal("pool", e.kind)
    assert.matches("zygote", tostring(e), 1, true)
    assert.equal("closed", catch(pool.submit, pool, function() end).kind)
    local list = { z }
    for _, p in pairs(pids) do list[#list + 1] = p end
    -- orphaned by the kill, the workers are init's to reap
    assert.same({}, gone(list, true))
  end)

  it("raises a timeout error from result(timeout) while the task goes on", function()
    -- the task ends when told to (or after 60 s: a result(0.1) that
    -- waited for it would then return "late" instead of raising)
    local go = os.tmpname()
    os.remove(go)
    finally(function() os.remove(go) end)
    local f = pool:submit(function(path)
      local t = os.time() + 60
      while not io.open(path) and os.time() < t do os.execute("sleep 0.01") end
      return "late"
    end, go)
    local e = catch(f.result, f, 0.1)
    assert.equal("timeout", e.kind)
    assert.is_false(f:done())
    io.open(go, "w"):close()
    assert.equal("late", f:result())
    assert.is_true(f:done())
  end)

  it("rejects a negative timeout", function()
    local f = pool:submit(function() return 1 end)
    assert.has_error(function() f:result(-1) end)
    assert.equal(1, f:result(60))
  end)

  it("waits for running tasks on close", function()
    local f = pool:submit(function()
      local t = os.clock() + 0.2
      while os.clock() < t do end
      return "finished"
    end)
    pool:close()
    assert.equal("finished", f:result())
  end)

  it("refuses work once closed, with a clear error", function()
    pool:close()
    local e = catch(pool.submit, pool, function() end)
    assert.equal("closed", e.kind)
    assert.matches("pool is closed", tostring(e), 1, true)
    e = catch(pool.map, pool, function() end, { 1 })
    assert.equal("closed", e.kind)
    pool:close()  -- idempotent
  end)

  it("leaves no process behind after close", function()
    local pids = all_pids(pool)
    assert.equal(3, #pids)
    pool:submit(function() return 1 end):result()
    pool:close()
    assert.same({}, gone(pids))
    local mine = children_of(core.pool_getpid())
    for _, p in ipairs(pids) do
      for _, c in ipairs(mine) do assert.not_equal(p, c) end
    end
  end)

  it("leaves no process behind when collected unclosed", function()
    pool:close()
    local pids
    do
      local p = ps.pool { workers = 2 }
      p:submit(function() return 1 end):result()
      pids = all_pids(p)
    end
    pool = nil
    collectgarbage()
    collectgarbage()
    assert.same({}, gone(pids))
    local mine = children_of(core.pool_getpid())
    for _, p in ipairs(pids) do
      for _, c in ipairs(mine) do assert.not_equal(p, c) end
    end
  end)

  it("kills workers busy in a task when collected", function()
    pool:close()
    local pids
    do
      local p = ps.pool { workers = 1 }
      p:submit(function() while true do end end)
      pids = all_pids(p)
    end
    pool = nil
    collectgarbage()
    collectgarbage()
    assert.same({}, gone(pids))
  end)

  it("kills busy workers at once when its process exits without closing it", function()
    pool:close()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local ps = require "proxystore"
      local p = ps.pool { workers = 1, progress = false }
      local pids, z = p:pids()
      io.write(z, " ", pids[1], "\n")
      p:submit(function() while true do end end)
      -- when it exits (CLOCK_MONOTONIC: the same clock in every process)
      io.write(("%.6f\n"):format(require("proxystore.core").monotonic()))
      io.stdout:flush()
      os.exit(0)
    ]])
    f:close()
    -- Output to a file, not a pipe: the workers inherit it, and a pipe's
    -- reader would wait for them too (hang, rather than fail, if they
    -- lingered).
    local outfile = script .. ".out"
    local z, w
    finally(function()
      for _, pid in ipairs { z, w } do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
      os.remove(script)
      os.remove(outfile)
    end)
    os.execute("lua5.4 " .. q(script) .. " > " .. q(outfile) .. " 2>&1")
    local of = assert(io.open(outfile))
    local out = of:read("a")
    of:close()
    local exited
    z, w, exited = out:match("^(%d+) (%d+)\n([%d.]+)\n")
    assert.is_truthy(exited, out)
    -- before the 5 s grace a close on purpose gives idle workers, counted
    -- from the exit (not from the child's start, which a loaded machine
    -- can make slow): it takes a fraction of a second
    assert.same({}, gone({ tonumber(z), tonumber(w) }, true))
    local took = core.monotonic() - tonumber(exited)
    assert.is_true(took < 4.5, "the workers were gone " .. took .. " s after the exit")
  end)

  it("works as a to-be-closed variable", function()
    pool:close()
    local pids
    do
      local p <close> = ps.pool { workers = 1 }
      pids = all_pids(p)
      assert.equal(5, p:submit(function() return 5 end):result())
    end
    assert.same({}, gone(pids))
  end)

  it("fails the future of a task whose arguments cannot be sent, and goes on", function()
    local f = pool:submit(function(x) return x end, { fn = print })
    local e = catch(f.result, f)
    assert.equal("serialization", e.kind)
    assert.equal(2, pool:submit(function() return 2 end):result())
  end)

  it("fails a task whose result cannot travel, naming why, and keeps its worker", function()
    local before = pool:pids()
    for _, fn in ipairs {
      function() return function() end end,
      function() return coroutine.create(print) end,
      function() return { list = { 1, io.stdout } } end,
    } do
      local e = catch(function() return pool:submit(fn):result() end)
      assert.equal("task", e.kind)
      assert.matches("task result cannot be sent back", tostring(e), 1, true)
      assert.matches("serializ", tostring(e))
    end
    assert.equal(0, pool:metrics().worker_deaths)
    assert.same(before, pool:pids())
  end)

  it("sends back the text of an error whose cause cannot travel", function()
    local e = catch(function()
      return pool:submit(function() error(io.stdout) end):result()
    end)
    assert.equal("task", e.kind)
    assert.matches("file", tostring(e), 1, true)
    assert.is_nil(e.cause)
    assert.equal(0, pool:metrics().worker_deaths)
  end)

  it("returns a result that already arrived from result(0)", function()
    pool:close()
    pool = ps.pool { workers = 1, progress = false }
    assert.equal(1, pool:submit(function() return 1 end):result())   -- up and idle
    local worker = pool:pids()[1]
    -- The worker is blocked reading its next task once it has sent its
    -- reply: it has blocked once more than before the task. Until then,
    -- and while it runs, it has not.
    local function blocked()
      local f = io.open("/proc/" .. worker .. "/status")
      local s = f:read("a")
      f:close()
      return tonumber(s:match("voluntary_ctxt_switches:%s*(%d+)")),
             s:match("State:%s*(%a)") == "S"
    end
    local before, idle = blocked()
    local t0 = core.monotonic()
    while not idle do
      assert(core.monotonic() - t0 < 30, "the worker never went idle")
      os.execute("sleep 0.01")
      before, idle = blocked()
    end
    local f = pool:submit(function() return "here" end)
    while true do   -- the reply waits on the socket, unread
      local n, sleeping = blocked()
      if n > before and sleeping then break end
      assert(core.monotonic() - t0 < 30, "the worker never answered")
      os.execute("sleep 0.01")
    end
    assert.equal("here", f:result(0))
  end)

  it("checks its options", function()
    assert.equal("config", catch(ps.pool, { workers = 0 }).kind)
    assert.equal("config", catch(ps.pool, { workers = 1.5 }).kind)
    assert.equal("config", catch(ps.pool, { proxy_threshold = -1 }).kind)
    local e = catch(ps.pool, { store = "local:" })
    assert.equal("config", e.kind)
    assert.matches("local store", tostring(e), 1, true)
    assert.has_error(function() pool:submit("not a function") end)
    assert.has_error(function() pool:map(function() end, "not a table") end)
  end)

  it("gives each worker its own random keys (the generator reseeds after fork)", function()
    local keys = pool:map(function()
      local t = os.clock() + 0.02   -- keep this worker busy: the next goes to the other
      while os.clock() < t do end
      return require("proxystore.core").random_key()
    end, { 1, 2, 3, 4, 5, 6 })
    keys[#keys + 1] = core.random_key()
    local seen = {}
    for _, k in ipairs(keys) do
      assert.matches("^%x+$", k)
      assert.is_nil(seen[k], "a key came twice: " .. k)
      seen[k] = true
    end
  end)

  it("describes itself and its futures with tostring", function()
    assert.matches("^proxystore.Pool: 2 workers", tostring(pool))
    local f = pool:submit(function() return 1 end)
    assert.matches("^proxystore.Future: task %d+", tostring(f))
    f:result()
    assert.matches("done", tostring(f))
  end)
end)

describe("a pool with more workers than a private store keeps spare files", function()
  it("starts 70 workers and runs a task on each slot", function()
    -- its private store's spare files are capped at 64; it used to ask for
    -- workers + 2 and failed to start with more than 62 workers
    local pool <close> = ps.pool { workers = 70, progress = false }
    local list = {}
    for i = 1, 70 do list[i] = i end
    local res = pool:map(function(x) return x * 2 end, list)
    assert.equal(70, res.n)
    assert.equal(140, res[70])
    local n = 0
    for _ in pairs(pool:pids()) do n = n + 1 end
    assert.equal(70, n)
  end)
end)

describe("ps.pool and stores", function()
  local dir, store, pool

  before_each(function()
    dir = tempdir()
    store = ps.init_store("file", { name = "pool-spec-" .. dir:match("[^/]+$"), dir = dir })
  end)

  after_each(function()
    if pool then pool:close() end
    pool = nil
    store:close()
    os.execute("rm -rf " .. q(dir))
  end)

  it("sends large arguments and results as proxies and evicts them after", function()
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    local big = ("0123456789"):rep(1000)
    local len, back = pool:submit(function(s)
      return #s, s:upper() .. "!"
    end, big):result()
    assert.equal(10000, len)
    assert.equal(big .. "!", back)
    local m = pool:metrics()
    assert.equal(1, m.proxied_args)
    assert.equal(1, m.proxied_results)
    assert.is_true(store:metrics().put.count >= 1)
    assert.same({}, listdir(dir))   -- evicted once used
  end)

  it("sends small arguments inline, not through the store", function()
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    assert.equal(3, pool:submit(function(s) return #s end, "abc"):result())
    local m = pool:metrics()
    assert.equal(0, m.proxied_args)
    assert.equal(0, m.proxied_results)
    assert.same({}, listdir(dir))
  end)

  it("proxies a large table argument", function()
    pool = ps.pool { workers = 1, store = store, proxy_threshold = 1024 }
    local t = {}
    for i = 1, 1000 do t[i] = i end
    assert.equal(500500, pool:submit(function(list)
      local s = 0
      for _, v in ipairs(list) do s = s + v end
      return s
    end, t):result())
    assert.equal(1, pool:metrics().proxied_args)
  end)

  it("passes user proxies in nested tables as references, resolved where used", function()
    pool = ps.pool { workers = 2, store = store }
    local payload = ("x"):rep(200000)
    local p = store:proxy(payload)
    local arg = { meta = { name = "doc", parts = { p, p } } }
    local r = pool:submit(function(t)
      return #t.meta.parts[1], ps.is_proxy(t.meta.parts[2]), t.meta.name
    end, arg)
    assert.same({ 200000, true, "doc" }, { r:result() })
    -- the 200 kB object went as a reference: nothing was auto-proxied
    assert.equal(0, pool:metrics().proxied_args)
  end)

  it("does not resolve a user proxy the task does not use", function()
    pool = ps.pool { workers = 1, store = store }
    local p = store:proxy_from_key("no-such-key")
    assert.equal("untouched", pool:submit(function(t)
      return "untouched"
    end, { p = p }):result())
    local e = catch(function()
      return pool:submit(function(t) return #t.p end, { p = p }):result()
    end)
    assert.equal("task", e.kind)
    assert.matches("no%-such%-key", tostring(e))
  end)

  it("keeps a private store on /dev/shm by default and removes it at close", function()
    pool = ps.pool { workers = 1, proxy_threshold = 100 }
    local pdir = pool.dir
    assert.is_string(pdir)
    assert.is_truthy(pdir:match("^/dev/shm/") or pdir:match("^/tmp/"))
    assert.equal(1000, pool:submit(function(s) return #s end, ("y"):rep(1000)):result())
    -- its own large values go through shared memory, not the store
    assert.equal(1, pool:metrics().shm_args)
    assert.is_truthy(io.open(pdir .. "/."))
    pool:close()
    pool = nil
    assert.is_nil(io.open(pdir .. "/."))
  end)

  it("accepts a store URL", function()
    pool = ps.pool { workers = 1, store = "file://" .. dir, proxy_threshold = 10 }
    assert.equal(100, pool:submit(function(s) return #s end, ("z"):rep(100)):result())
    assert.equal(1, pool:metrics().proxied_args)
  end)
end)

describe("ps.pool with a Redis store", function()
  local redis = require "helpers.redis"
  local srv, pool

  setup(function() srv = redis.start() end)
  teardown(function() if srv then srv:stop() end end)
  after_each(function()
    if pool then pool:close() end
    pool = nil
  end)

  it("moves large values through Redis, each worker on its own connection", function()
    local url = ("redis://%s:%d"):format(srv.host, srv.port)
    pool = ps.pool { workers = 2, store = url, proxy_threshold = 1024 }
    -- the parent uses the connection before and while workers use theirs
    pool.store:put("warm-up", { key = "warm" })
    local list = {}
    for i = 1, 8 do list[i] = ("%d"):format(i):rep(5000) end
    local r = pool:map(function(s) return s .. s end, list)
    for i = 1, 8 do assert.equal(list[i] .. list[i], r[i]) end
    assert.equal("warm-up", pool.store:get("warm"))
    local m = pool:metrics()
    assert.equal(8, m.proxied_args)
    assert.equal(8, m.proxied_results)
    -- single-use proxies: only the warm-up key is left
    assert.equal("1", srv:cli("DBSIZE"):match("%d+"))
  end)
end)

describe("a pool forked from a process that already maps files", function()
  it("lets workers release mapped objects (no inherited condvar state)", function()
    local ps = require "proxystore"
    local dir = "/dev/shm/ps-premapped-" .. require("proxystore.core").random_key()
    -- Releasing mapped objects wakes this process's unmapper thread; a fork
    -- that lands while it is between wakeup and its next wait used to leave
    -- children whose first unmap waited forever.
    local st = ps.init_store("file", { name = "premapped", dir = dir, clear = true, cache_size = 0 })
    local key = st:put(string.rep("m", 2 << 20))
    for _ = 1, 6 do
      for _ = 1, 10 do assert.are.equal(2 << 20, #st:get(key)) end
      local pool = ps.pool { workers = 2, progress = false }
      local futs = {}
      for i = 1, 4 do
        futs[i] = pool:submit(function(s) return #s end, string.rep("w", 2 << 20))
      end
      for i = 1, 4 do assert.are.equal(2 << 20, futs[i]:result(60)) end   -- hang guard
      pool:close()
    end
    st:close()
  end)
end)

describe("cancelling pool tasks", function()
  local shell = require "helpers.shell"
  local pool, tmp, fifo

  -- A task that blocks for ever: opening a FIFO nobody ever writes. Only a
  -- kill ends it, so a cancel that does not kill hangs no spec (the pool
  -- below is closed by killing its workers).
  local function forever(path)
    return function() io.open(path, "r"):read("a") return "never" end
  end

  local function wait_for(check, what)
    for _ = 1, 3000 do           -- a guard against a hang, not a timing
      if check() then return end
      os.execute("sleep 0.01")
    end
    error("gave up waiting for " .. what)
  end

  before_each(function()
    tmp = shell.tempdir("cancel")
    fifo = tmp .. "/fifo"
    assert(shell.sh("mkfifo " .. shell.quote(fifo)) == 0)
    pool = ps.pool { workers = 1, progress = false }
  end)

  after_each(function()
    if pool and not pool.closed then pool:_shutdown(true) end
    pool = nil
    shell.rmtree(tmp)
  end)

  it("drops a queued task: its future fails with kind cancelled", function()
    local running = pool:submit(forever(fifo))
    local queued = pool:submit(function() return "ran" end)
    assert.equal("queued", queued.state)
    assert.is_true(queued:cancel())
    assert.is_true(queued:done())
    local e = catch(queued.result, queued)
    assert.equal("cancelled", e.kind)
    assert.equal(queued.id, e.task)
    -- the line names where the user called result() (spec/pool_spec.lua)
    assert.matches("^proxystore: [%w_/.]+:%d+: task %d+ cancelled$", tostring(e))
    assert.is_false(queued:cancel())   -- already finished
    assert.equal(0, pool:metrics().queued)
    assert.equal(1, pool:metrics().cancelled)
    assert.is_true(running:cancel())
  end)

  it("kills the worker of a running task, which a replacement takes over", function()
    local old = pool:pids()[1]
    local f = pool:submit(forever(fifo))
    local queued = pool:submit(function() return "after" end)
    assert.equal("running", f.state)
    assert.is_true(f:cancel())
    local e = catch(f.result, f)
    assert.equal("cancelled", e.kind)
    -- the queued task runs on the replacement
    assert.equal("after", queued:result())
    local new = pool:pids()[1]
    assert.is_not_nil(new)
    assert.not_equal(old, new)
    wait_for(function()
      local there, state = alive(old)
      return not there or state == "Z"
    end, "the cancelled task's worker to die")
    local m = pool:metrics()
    assert.equal(1, m.cancelled)
    assert.equal(0, m.worker_deaths)   -- killed on purpose
    assert.equal(0, m.failed)
    assert.equal(1, m.completed)
    pool:close()
  end)

  it("returns false for a task that already finished, and leaves its result", function()
    local f = pool:submit(function() return 42 end)
    assert.equal(42, f:result())
    assert.is_false(f:cancel())
    assert.equal(42, f:result())
  end)

  -- (through a store of the caller's: the private default store sends a
  -- task's own large arguments through shared memory, not as proxies)
  it("evicts the proxies made for a cancelled task's arguments", function()
    pool:_shutdown(true)
    local dir = tmp .. "/store"
    local store = ps.init_store("file", { name = "cancel-" .. tmp:match("[^/]+$"), dir = dir })
    finally(function() store:close() end)
    -- (a threshold over the FIFO's path, which every blocking task captures:
    -- a value several tasks take is shared, and stays until close)
    pool = ps.pool { workers = 1, progress = false, proxy_threshold = 64, store = store }
    local blocker = pool:submit(forever(fifo))
    local f = pool:submit(function(s) return #s end, ("p"):rep(100))
    assert.is_true(blocker:cancel())
    wait_for(function() return f:done() end, "the argument task")
    assert.equal(100, f:result())
    local g = pool:submit(forever(fifo), ("q"):rep(100))
    assert.equal(2, pool:metrics().proxied_args)
    assert.is_true(g:cancel())
    assert.same({}, listdir(dir))
  end)
end)

describe("pool:close with a timeout", function()
  local shell = require "helpers.shell"

  -- In a child lua5.4 under timeout(1): a close that ignored its timeout
  -- would wait for ever on tasks that never end.
  local function run(code)
    local tmp = shell.tempdir("close")
    local path = tmp .. "/child.lua"
    local f = assert(io.open(path, "w"))
    f:write([[
      local ps = require "proxystore"
      local fifo = ...
      local function forever() io.open(fifo, "r"):read("a") return "never" end
    ]], code)
    f:close()
    os.execute("mkfifo " .. q(tmp .. "/fifo"))
    local p = io.popen("timeout 120 lua5.4 " .. q(path) .. " " .. q(tmp .. "/fifo") ..
      " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    shell.rmtree(tmp)
    return tonumber(out:match("rc=(%d+)%s*$")), out
  end

  it("cancels running and queued tasks past the timeout and stops every worker", function()
    local rc, out = run([[
      local pool = ps.pool { workers = 2, progress = false }
      local done = pool:submit(function() return "done" end)
      assert(done:result() == "done")
      local fs = { pool:submit(forever), pool:submit(forever), pool:submit(forever) }
      local pids, z = pool:pids()
      pool:close { timeout = 0.5 }
      for i, f in ipairs(fs) do
        local ok, e = pcall(f.result, f)
        print(i, ok, e.kind, tostring(e))
      end
      print("cancelled", pool:metrics().cancelled)
      local left = 0
      for _, p in pairs(pids) do
        if io.open("/proc/" .. p .. "/stat") then left = left + 1 end
      end
      if io.open("/proc/" .. z .. "/stat") then left = left + 1 end
      print("left", left)
    ]])
    assert.equal(0, rc, out)
    for i = 1, 3 do
      assert.matches(i .. "\tfalse\tcancelled\tproxystore: [^\n]*child%.lua:%d+: task " ..
        (i + 1) .. " cancelled: the pool closed after 0%.5 s", out)
    end
    assert.truthy(out:find("cancelled\t3", 1, true), out)
    assert.truthy(out:find("left\t0", 1, true), out)
  end)

  it("waits for tasks that end within the timeout", function()
    local rc, out = run([[
      local pool = ps.pool { workers = 1, progress = false }
      local f = pool:submit(function() os.execute("sleep 0.2") return "in time" end)
      pool:close { timeout = 60 }
      print(f:result())
    ]])
    assert.equal(0, rc, out)
    assert.truthy(out:find("in time", 1, true), out)
  end)

  it("refuses options other than a non-negative timeout, as config errors", function()
    local pool = ps.pool { workers = 1, progress = false }
    for _, opts in ipairs { { timeot = 1 }, { timeout = -1 }, { timeout = "1" },
                            { timeout = 0 / 0 }, "fast" } do
      local e = catch(pool.close, pool, opts)
      assert.equal("config", e.kind)
    end
    assert.is_false(pool.closed)
    pool:close { timeout = 5 }
    assert.is_true(pool.closed)
  end)

  it("closes a <close> pool whose scope ends with an error", function()
    local p
    local ok, e = pcall(function()
      local pool <close> = ps.pool { workers = 1, progress = false }
      p = pool
      error("boom", 0)
    end)
    assert.is_false(ok)
    assert.equal("boom", e)
    assert.is_true(p.closed)
  end)
end)
