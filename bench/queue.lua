-- bench/queue.lua: the queue pool (ps.pool{queue = ...}) against the Redis
-- floor measured in the same run by bench/queue_raw.c (built by `make
-- bench`): a task queue in C with hiredis, XADD -> XREADGROUP -> RPUSH+XACK
-- -> BLPOP, nothing else.
--
--   1. one empty task's round trip, one worker       target <= 2x the floor
--   2. 10,000 empty tasks, 2 local workers           target >= 10,000 tasks/s
--   3. 100 tasks sharing one 10 MiB input: by value vs as one proxy
--                                                    target: proxy >= 5x faster
--   4. kill -9 of the worker running a task: until another worker starts
--      it again (visibility 1 s)                     target <= visibility + 1 s
--
-- Floor and queue pool are measured in alternation (ROUNDS rounds), so both
-- see the same load on a shared machine; each row is the median of the
-- rounds' medians, the spread (max - min) / median over the rounds.
--
-- Standalone: lua5.4 bench/queue.lua (prints a markdown table).
-- PROXYSTORE_BENCH_QUICK=1 for fewer runs.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PROXYSTORE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local redis = require "helpers.redis"
local now = core.monotonic

local QUICK = os.getenv("PROXYSTORE_BENCH_QUICK")
local ROUNDS = QUICK and 3 or 5
local SECRET = "bench secret: sixteen bytes or more"
local MiB = 1024 * 1024

-- The floor: {roundtrip = {ns, spread}, throughput = {tasks/s, spread}}.
local function floor(srv, runs)
  local build = os.getenv("PROXYSTORE_BUILD") or "build"
  local p = assert(io.popen(("env -u LD_PRELOAD %s/bin/queue_raw 127.0.0.1 %d %d")
    :format(build, srv.port, runs)))
  local out = {}
  for line in p:lines() do
    local what, med, spread = line:match("^(%S+) (%S+) (%S+)$")
    if what then out[what] = { tonumber(med), tonumber(spread) } end
  end
  assert(p:close() and out.roundtrip and out.throughput,
    "bench/queue_raw failed (run `make bench` to build it)")
  return out
end

local function pool_on(srv, opts)
  opts.queue = "redis://127.0.0.1:" .. srv.port
  opts.secret = SECRET
  opts.progress = false
  return ps.pool(opts)
end

local function median_of(list)
  local copy = {}
  for i, v in ipairs(list) do copy[i] = v end
  return stats.median_spread(copy)
end

-- Median time of one empty task's submit + result, over n tasks.
local function roundtrip(pool, n)
  local empty = function() end
  for _ = 1, 50 do pool:submit(empty):result() end
  local t = {}
  for i = 1, n do
    local t0 = now()
    pool:submit(empty):result()
    t[i] = now() - t0
  end
  return (stats.median_spread(t))
end

-- Keeps at most window tasks in flight (as bench/pool.lua does).
local function run_windowed(pool, n, window, arg)
  local len = function(s) return #ps.extract(s) end
  local fs, total = {}, 0
  for i = 1, n do
    fs[i] = pool:submit(len, arg)
    if i > window then
      total = total + fs[i - window]:result()
      fs[i - window] = nil
    end
  end
  for i = math.max(1, n - window + 1), n do total = total + fs[i]:result() end
  return total
end

-- In a task: pushes its pid to started, waits for go:<pid>.
local function handshake(port)
  local g = core.redis_groups { host = "127.0.0.1", port = port }
  local pid = core.pool_getpid()
  g:call("RPUSH", "bench:started", pid)
  g:call_blocking(60, { "BLPOP", "bench:go:" .. pid, 60 })
  g:close()
  return pid
end

local function bench(report)
  local srv = redis.start()
  local ok, err = pcall(function()
    -- 1 and 2: floor and queue pool in alternation
    local f_rt, f_tp, q_rt, q_tp = {}, {}, {}, {}
    local list = {}
    for i = 1, 10000 do list[i] = i end
    for r = 1, ROUNDS do
      local fl = floor(srv, QUICK and 3 or 5)
      f_rt[r], f_tp[r] = fl.roundtrip[1], fl.throughput[1]
      local one <close> = pool_on(srv, { name = "rt", workers = 1 })
      q_rt[r] = roundtrip(one, QUICK and 300 or 1000) * 1e9
      one:close()
      local two <close> = pool_on(srv, { name = "tp", workers = 2 })
      two:map(function() end, { 1, 2, 3, 4 })   -- workers up
      local t0 = now()
      local res = two:map(function() end, list)
      q_tp[r] = #list / (now() - t0)
      assert(#res == 0 or res[1] == nil)
      two:close()
    end
    local frt, frs = median_of(f_rt)
    local qrt, qrs = median_of(q_rt)
    report("queue", "Redis floor (C): XADD, XREADGROUP, RPUSH+XACK, BLPOP", frt, frs)
    report("queue", "one empty task round trip, 1 worker (target <= 2x floor)",
      qrt, qrs, "floor", qrt / frt)
    local ftp, fts = median_of(f_tp)
    local qtp, qts = median_of(q_tp)
    report("queue", ("Redis floor (C), 10,000 tasks, 2 workers: %.0f tasks/s"):format(ftp),
      1e9 / ftp, fts)
    report("queue", ("10,000 empty tasks, 2 local workers: %.0f tasks/s " ..
      "(target >= 10,000/s)"):format(qtp), 1e9 / qtp, qts, "floor", ftp / qtp)

    -- 3. one shared 10 MiB input: inline in every message, or one proxy
    do
      local data = ("0123456789abcdef"):rep(10 * MiB // 16)
      local runs = QUICK and 3 or 5
      local by_value <close> = pool_on(srv, { name = "value", workers = 2,
                                              proxy_threshold = math.huge })
      local tv, sv = stats.time(runs, function()
        assert(run_windowed(by_value, 100, 4, data) == 100 * #data)
      end)
      by_value:close()
      local proxied <close> = pool_on(srv, { name = "proxy", workers = 2 })
      local store = proxied.store
      local tp, sp = stats.time(runs, function()
        local p = store:proxy(data)
        assert(run_windowed(proxied, 100, 4, p) == 100 * #data)
        store:evict(ps.key(p))
      end)
      proxied:close()
      report("queue", "100 tasks, one shared 10 MiB input, by value", tv * 1e9, sv)
      report("queue", "100 tasks, one shared 10 MiB input, as one proxy " ..
        "(target >= 5x faster)", tp * 1e9, sp, "by value", tv / tp)
    end

    -- 4. recovery after kill -9 of the worker running a task
    do
      local g = core.redis_groups { host = "127.0.0.1", port = srv.port }
      local times = {}
      for r = 1, QUICK and 3 or 5 do
        local pool <close> = pool_on(srv, { name = "kill" .. r, workers = 2,
                                            visibility = 1 })
        local f = pool:submit(handshake, srv.port)
        local pid = tonumber(g:call_blocking(61, { "BLPOP", "bench:started", 60 })[1][2])
        local t0 = now()
        os.execute("kill -9 " .. pid)
        local again = g:call_blocking(61, { "BLPOP", "bench:started", 60 })[1]
        times[r] = now() - t0
        again = tonumber(again[2])
        assert(again ~= pid)
        g:call("RPUSH", "bench:go:" .. again, "go")
        assert(f:result(60) == again)
        pool:close()
      end
      g:close()
      local med, spread = median_of(times)
      report("queue", "kill -9 of the worker mid-task: claimed again by another " ..
        "(visibility 1 s, target <= 2 s)", med * 1e9, spread)
    end
  end)
  srv:stop()
  if not ok then error(err, 0) end
end

local is_main = not pcall(debug.getlocal, 4, 1)
if is_main then
  print("| section | case | median | spread % | baseline | ratio |")
  print("|---|---|---|---|---|---|")
  bench(function(section, name, ns, spread, base, ratio)
    local v = ns < 1e6 and ("%.1f us"):format(ns / 1e3) or ("%.1f ms"):format(ns / 1e6)
    print(("| %s | %s | %s | %.0f | %s | %s |"):format(section, name, v,
      spread or 0, base or "", ratio and ("%.2f"):format(ratio) or ""))
  end)
end
return bench
