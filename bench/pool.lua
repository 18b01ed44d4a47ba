-- bench/pool.lua: the worker pool, as a user of the `proxystore` binary
-- gets it (bench/run.lua runs this file under build/bin/proxystore, whose
-- Lua state has the big-block allocator).
--
--   1. empty-task round trip (submit + result, one worker)   target <= 50 us
--   2. 100 tasks taking one 10 MiB string as an argument: automatic
--      proxying (the default pool) against the same pool by value
--      (proxy_threshold = math.huge)                     target: >= 5x
--   3. the same with the string captured as an upvalue   target: >= 5x
--   4. 100 tasks with one explicit store:proxy (a reference row)
--   5. 40 tasks, each with its own 10 MiB string (made before each run,
--      never seen by the pool before): automatic against by value
--                                      target: never slower, goal >= 2x
--   6. 40 tasks each returning its own 10 MiB string: the same
-- For 5 and 6 a floor row, the least any transport needs, its ratio the
-- best one reachable. 5: the parent must encode every argument once (one
-- copy of a 10 MiB string not in any cache; the workers' decoding overlaps
-- it on the other core): memcpy of 40 fresh inputs into a reused buffer.
-- 6: the tasks themselves (making each string, returning only its length)
-- plus one 10 MiB memcpy a task for the parent's decoding.
--
-- Each case runs both pools in turn, RUNS times, one untimed warm-up
-- each, so a loaded machine slows both alike (ratio = by value / auto).
--
-- Standalone: build/bin/proxystore bench/pool.lua [runs]   (a markdown
-- table), or with --rows: tab-separated rows for bench/run.lua.
local is_main = not pcall(debug.getlocal, 4, 1)
local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local clock = core.monotonic

local RUNS = 7
local MiB = 1024 * 1024
local WHO = "proxystore binary"

local function len(s) return #s end

-- Keeps at most `window` tasks in flight so that queued inputs do not pile
-- up in memory; both variants of a case use the same window.
local function run_windowed(pool, n, window, submit)
  local fs, total = {}, 0
  for i = 1, n do
    fs[i] = submit(pool, i)
    if i > window then
      total = total + fs[i - window]:result()
      fs[i - window] = nil
    end
  end
  for i = math.max(1, n - window + 1), n do total = total + fs[i]:result() end
  return total
end

-- Times fn(pool) for two pools in alternation: RUNS samples each after
-- one warm-up each; setup(), untimed, before every call.
local function ab(pool_a, pool_b, fn, setup)
  local ta, tb = {}, {}
  for r = 0, RUNS do
    for k, pool in ipairs { pool_a, pool_b } do
      local arg = setup and setup()
      collectgarbage("collect")
      local t0 = clock()
      fn(pool, arg)
      local dt = clock() - t0
      if r > 0 then (k == 1 and ta or tb)[r] = dt end
    end
  end
  local ma, sa = stats.median_spread(ta)
  local mb, sb = stats.median_spread(tb)
  return ma, sa, mb, sb
end

local function pools()
  local by_value = ps.pool { workers = 2, progress = false, proxy_threshold = math.huge }
  local auto = ps.pool { workers = 2, progress = false }
  return by_value, auto
end

local function bench(report)
  -- 1. empty task
  do
    local pool <close> = ps.pool { workers = 1, progress = false }
    local empty = function() end
    local N = 2000
    local t, s = stats.time(RUNS, function()
      for _ = 1, N do pool:submit(empty):result() end
    end)
    report("pool", "empty task round trip (1 worker, " .. WHO .. ")", t / N * 1e9, s)
  end

  local by_value, auto = pools()
  local data = ("0123456789abcdef"):rep(10 * MiB // 16)

  -- 2. one shared 10 MiB argument
  do
    local tv, sv, ta, sa = ab(by_value, auto, function(pool)
      assert(run_windowed(pool, 100, 4, function(p) return p:submit(len, data) end)
        == 100 * #data)
    end)
    report("pool", "100 tasks, one shared 10 MiB argument, by value", tv * 1e9, sv)
    report("pool", "100 tasks, one shared 10 MiB argument, auto (" .. WHO .. ")",
      ta * 1e9, sa, "by value (target 5)", tv / ta)
  end

  -- 3. one shared 10 MiB upvalue
  do
    local f = function() return #data end
    local tv, sv, ta, sa = ab(by_value, auto, function(pool)
      assert(run_windowed(pool, 100, 4, function(p) return p:submit(f) end)
        == 100 * #data)
    end)
    report("pool", "100 tasks, one shared 10 MiB upvalue, by value", tv * 1e9, sv)
    report("pool", "100 tasks, one shared 10 MiB upvalue, auto (" .. WHO .. ")",
      ta * 1e9, sa, "by value (target 5)", tv / ta)
  end

  -- 4. one explicit proxy, for reference
  do
    local store = auto.store
    local t, s = stats.time(RUNS, function()
      local p = store:proxy(data)
      assert(run_windowed(auto, 100, 4, function(pool) return pool:submit(len, p) end)
        == 100 * #data)
      store:evict(ps.key(p))
    end)
    report("pool", "100 tasks, one explicit store:proxy of 10 MiB (" .. WHO .. ")",
      t * 1e9, s)
  end
  data = nil

  -- 5. each task its own 10 MiB argument: fresh strings for every run, so
  -- that none was seen by a pool before.
  local N = 40
  local gen = 0
  local function fresh_inputs()
    local inputs = {}
    for i = 1, N do
      gen = gen + 1
      inputs[i] = string.pack("<i8", gen):rep(10 * MiB // 8)
    end
    return inputs
  end
  do
    local puts = auto:metrics().shared_puts
    local tv, sv, ta, sa = ab(by_value, auto, function(pool, inputs)
      assert(run_windowed(pool, N, 4, function(p, i) return p:submit(len, inputs[i]) end)
        == N * 10 * MiB)
    end, fresh_inputs)
    assert(auto:metrics().shared_puts == puts, "own values were shared")
    report("pool", "40 tasks, own 10 MiB argument each, by value", tv * 1e9, sv)
    report("pool", "40 tasks, own 10 MiB argument each, auto (" .. WHO .. ")",
      ta * 1e9, sa, "by value (target 1, goal 2)", tv / ta)
    local fl = {}
    for r = 1, RUNS do
      local inputs = fresh_inputs()
      collectgarbage("collect")
      fl[r] = require("proxystore.bench").copy_strings(inputs)
    end
    local floor = stats.median_spread(fl)
    report("pool", "40 tasks, own 10 MiB argument each: floor, one copy of each argument",
      floor * 1e9, nil, "by value", tv / floor)
  end

  -- 6. each task returns its own 10 MiB string
  do
    local make = function(i) return string.pack("<i8", i):rep(10 * MiB // 8) end
    local tv, sv, ta, sa = ab(by_value, auto, function(pool)
      assert(run_windowed(pool, N, 4, function(p, i)
        local f = p:submit(make, i)
        return { result = function() return #f:result() end }
      end) == N * 10 * MiB)
    end)
    report("pool", "40 tasks, own 10 MiB result each, by value", tv * 1e9, sv)
    report("pool", "40 tasks, own 10 MiB result each, auto (" .. WHO .. ")",
      ta * 1e9, sa, "by value (target 1, goal 2)", tv / ta)
    local tc = stats.time(RUNS, function()
      assert(run_windowed(auto, N, 4, function(p, i)
        return p:submit(function(k) return #make(k) end, i)
      end) == N * 10 * MiB)
    end)
    local copy = require("proxystore.bench").memcpy(10 * MiB, 21)
    local floor = tc + N * copy
    report("pool", "40 tasks, own 10 MiB result each: floor, the tasks alone "
      .. "plus one 10 MiB memcpy a task", floor * 1e9, nil, "by value", tv / floor)
  end
  by_value:close()
  auto:close()
end

return (function(b)
  if is_main then
    local rows = arg and arg[1] == "--rows"
    local runs = tonumber(arg and arg[rows and 2 or 1])
    if runs then RUNS = runs end
    if rows then
      b(stats.print_row)
      return b
    end
    print("| section | case | median | spread % | baseline | ratio |")
    print("|---|---|---|---|---|---|")
    b(function(section, name, ns, spread, base, ratio)
      local v = ns < 1e6 and ("%.1f us"):format(ns / 1e3)
        or ("%.1f ms"):format(ns / 1e6)
      print(("| %s | %s | %s | %.0f | %s | %s |"):format(section, name, v,
        spread or 0, base or "", ratio and ("%.2f"):format(ratio) or ""))
      io.stdout:flush()
    end)
  end
  return b
end)(bench)
