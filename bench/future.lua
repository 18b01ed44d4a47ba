-- bench/future.lua: store futures, woken by the store.
--
--   1. a future set in one process wakes a waiter in another, loopback
--      Redis: median and p99 over 1,000 sets (from just before set() to
--      the waiter holding the value)     targets: median <= 1 ms, p99 <= 5 ms
--      (ProxyStore's Future polls exists() every second by default: a
--      waiter learns of a set 0.5 s after it on average)
--   2. 100 waiting processes on one future: the last one holding the value
--      after the set                                     target: <= 50 ms
--   3. a pipeline in the spirit of ProxyStore's SC'23 evaluation: 8 chained
--      pool tasks on 8 workers, each handing the next 10 MiB; each task
--      waits (not computes) 0.2 s. With futures every task sets its output
--      after its first 10 % and the next starts at once; without, each task
--      is submitted once the previous one's result is back.
--                                              target: >= 3x faster with futures
--      Each mode on a new pool, measured once its workers are warm (see
--      WARM below), and its first run reported as well.
--
-- Standalone: lua5.4 bench/future.lua [runs]  (a markdown table; run from
-- the checkout, after make bench). Driver: returns function(report) as
-- bench/run.lua expects; ratio is baseline time / time.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PROXYSTORE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local is_main = not pcall(debug.getlocal, 4, 1)
local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local redis = require "helpers.redis"
local now = core.monotonic

local RUNS = 5
local MiB = 1024 * 1024

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function blocked_clients(srv)
  return tonumber(srv:cli("INFO", "clients"):match("blocked_clients:(%d+)"))
end

-- A Lua child process that finds the modules where this one did.
local function spawn(code)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local p = assert(io.popen("env -u LD_PRELOAD LUA_PATH=" .. q(package.path) ..
    " LUA_CPATH=" .. q(package.cpath) .. " lua5.4 " .. q(file)))
  return p, file
end

-- 1. set -> wake latency, one waiter in another process
local function wake_latency(report, srv)
  local N = 1000
  local s = ps.init_store("redis", { name = "bench-future-1", host = "127.0.0.1",
                                     port = srv.port, prefix = "wake:" })
  -- The waiter takes future i, waits for it and records when it holds the
  -- value (the set time travels in it); this process sets future i once
  -- the waiter is blocked on it (a blocked client on the server), so every
  -- sample is a wake-up, not a late arrival.
  local p, file = spawn(([[
    local ps = require "proxystore"
    local now = require("proxystore.core").monotonic
    local s = ps.init_store("redis", { name = "bench-future-1", host = "127.0.0.1",
                                       port = %d, prefix = "wake:", cache_size = 0 })
    local out = {}
    for i = 1, %d do
      local t = s:future({ key = "f" .. i }):result(60)
      out[i] = string.format("%%.9f", now() - t)
    end
    io.write(table.concat(out, "\n"), "\n")
  ]]):format(srv.port, N))
  local bench = require "proxystore.bench"
  for i = 1, N do
    while blocked_clients(srv) < 1 do bench.sleep(0.0002) end
    local f = s:future { key = "f" .. i }
    f:set(now())
  end
  local lat = {}
  for l in p:lines() do lat[#lat + 1] = tonumber(l) end
  assert(p:close(), "the waiter failed")
  os.remove(file)
  assert(#lat == N, "the waiter reported " .. #lat .. " samples")
  local median, spread = stats.median_spread(lat)
  local p99 = lat[math.ceil(N * 0.99)]
  report("future", "set -> waiter in another process woken, Redis loopback, median of 1000",
    median * 1e9, spread, "ProxyStore poll (1 s): 0.5 s mean", 0.5 / median)
  report("future", "set -> waiter woken, p99 of 1000", p99 * 1e9, nil)
  s:close()
end

-- 2. 100 waiting processes on one future
local function hundred_waiters(report, srv, runs)
  local s = ps.init_store("redis", { name = "bench-future-2", host = "127.0.0.1",
                                     port = srv.port, prefix = "many:" })
  -- (automatic proxies to this store: the pool's private file store takes
  -- at most 62 workers)
  local pool <close> = ps.pool { workers = 100, progress = false, store = s }
  local lasts, firsts = {}, {}
  for r = 1, runs do
    local f = s:future()
    local p = f:proxy()
    local fs = {}
    for i = 1, 100 do
      fs[i] = pool:submit(function(px)
        local v = ps.extract(px)
        return core.monotonic(), v
      end, p)
    end
    local guard = now() + 120
    while blocked_clients(srv) < 100 do
      assert(now() < guard, "the 100 waiters did not block")
      require("proxystore.bench").sleep(0.01)
    end
    local t0 = now()
    f:set("go")
    local last, first = 0, math.huge
    for i = 1, 100 do
      local t, v = fs[i]:result(120)
      assert(v == "go")
      last, first = math.max(last, t), math.min(first, t)
    end
    lasts[r], firsts[r] = last - t0, first - t0
    s:evict(f.key)
  end
  local ml, sl = stats.median_spread(lasts)
  local mf = stats.median_spread(firsts)
  report("future", "100 waiting processes, one set: the first woken", mf * 1e9, nil)
  report("future", "100 waiting processes, one set: the last woken", ml * 1e9, sl)
  pool:close()
  s:close()
end

-- 3. the pipeline
-- Each mode runs on a pool of its own: WARM untimed runs, then runs timed
-- ones. The first run of a new pool is reported too: each worker's store
-- cache keeps up to 32 MiB of what its tasks resolved (three values of 10
-- MiB), so over its first three tasks every value it receives lands on
-- fresh memory (~25 ms a hop on these VMs); from the fourth on, the cache
-- lets go of one value a task and the next reuses its memory. With 8
-- tasks on 8 workers a worker gets one task a run: 4 runs to warm.
local WARM = 4
local function pipeline(report, store, runs, srv)
  local TASKS, WAIT, DATA = 8, 0.2, 10 * MiB
  local data = ("0123456789abcdef"):rep(DATA // 16)
  local bench = require "proxystore.bench"

  -- Makespans of fn on a new pool: WARM untimed runs then runs timed
  -- ones; fn(pool) returns a clean-up to run untimed. Returns the median
  -- and spread of the timed runs and the first run's makespan.
  local function makespans(fn)
    local pool <close> = ps.pool { workers = TASKS, progress = false, store = store }
    local t, first = {}, nil
    for r = 1 - WARM, runs do
      collectgarbage("collect")
      local t0 = now()
      local done = fn(pool)
      local dt = now() - t0
      if r > 0 then t[r] = dt end
      first = first or dt
      done()
    end
    pool:close()
    local med, spread = stats.median_spread(t)
    return med, spread, first
  end

  -- Without futures: each task is submitted once the previous result is
  -- back (the 10 MiB travel as the pool's automatic proxies).
  local function step(x)
    bench.sleep(WAIT)
    return x
  end
  local tw, sw, fw = makespans(function(pool)
    local x = data
    for _ = 1, TASKS do x = pool:submit(step, x):result(120) end
    assert(#x == DATA)
    return function() end
  end)

  -- With futures: all tasks start at once; task i waits for task i-1's
  -- output, sets its own after 10 % of its time and waits out the rest.
  -- Each value has one consumer, so its future is single use (evict), as
  -- the automatic proxies of the run without futures are freed once their
  -- task is done: either way a run holds a value or two, not all nine.
  -- Held to the end of the run (a lifetime alone), the nine values, 90
  -- MiB, outgrew what the Redis server had kept of its freed memory, and
  -- each later set landed on fresh server pages (Redis turns transparent
  -- huge pages off for itself): sets of 30-50 ms from the fourth hop on,
  -- 4-6 ms single use (docs/performance.md). The lifetime still ends the
  -- run (untimed) and deletes the last output, which nobody reads.
  local function stage(input, output)
    local x = ps.extract(input)
    bench.sleep(WAIT * 0.1)
    output:set(x)
    bench.sleep(WAIT * 0.9)
    return #x
  end
  local tf, sf, ff = makespans(function(pool)
    local lt = ps.lifetime()
    local fut = {}
    for i = 0, TASKS do fut[i] = store:future { lifetime = lt, evict = true } end
    local fs = {}
    for i = 1, TASKS do fs[i] = pool:submit(stage, fut[i - 1]:proxy(), fut[i]) end
    fut[0]:set(data)
    for i = 1, TASKS do assert(fs[i]:result(120) == DATA) end
    return function() lt:close() end
  end)
  local where = store.kind == "redis" and "Redis loopback" or "file store on /dev/shm"
  local what = "pipeline of 8 tasks (0.2 s each, 10 MiB handed on), " .. where
  report("future", what .. ", without futures", tw * 1e9, sw)
  report("future", what .. ", with futures", tf * 1e9, sf, "without futures", tw / tf)
  report("future", what .. ", without futures, first run of a new pool", fw * 1e9, nil)
  report("future", what .. ", with futures, first run of a new pool", ff * 1e9, nil,
    "without futures, first run", fw / ff)
end

local function bench(report)
  local srv = redis.start()
  local ok, err = pcall(function()
    wake_latency(report, srv)
    hundred_waiters(report, srv, RUNS)
    local r = ps.init_store("redis", { name = "bench-future-3", host = "127.0.0.1",
                                       port = srv.port, prefix = "pipe:" })
    pipeline(report, r, RUNS)
    r:close()
    local dir = os.tmpname()
    os.remove(dir)
    local shm = io.open("/dev/shm") and "/dev/shm/proxystore-bench-" .. dir:match("[^/]+$") or dir
    local f = ps.init_store("file", { name = "bench-future-4", dir = shm, clear = true })
    pipeline(report, f, RUNS)
    f:close()
  end)
  srv:stop()
  if not ok then error(err, 0) end
end

return (function(b)
  if is_main then
    local runs = tonumber(arg and arg[1])
    if runs then RUNS = runs end
    print("| section | case | median | spread % | baseline | ratio |")
    print("|---|---|---|---|---|---|")
    b(function(section, name, ns, spread, base, ratio)
      local v = ns < 1e6 and ("%.1f us"):format(ns / 1e3)
        or ("%.1f ms"):format(ns / 1e6)
      print(("| %s | %s | %s | %s | %s | %s |"):format(section, name, v,
        spread and ("%.0f"):format(spread) or "—", base or "",
        ratio and ("%.2f"):format(ratio) or ""))
    end)
  end
  return b
end)(bench)
