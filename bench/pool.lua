-- bench/pool.lua: the worker pool.
--
--   1. empty-task round trip (submit + result, one worker)   target <= 50 us
--   2. 100 tasks sharing one 10 MiB input: by value vs as one proxy
--                                                 target: proxy >= 5x faster
--   3. 100 tasks each with its own 10 MiB input: by value vs automatic
--      proxies on the pool's /dev/shm store        target: proxies <= 1.2x
--
-- Standalone: lua5.4 bench/pool.lua [runs]   (a markdown table; needs
-- LUA_PATH/LUA_CPATH as in the README's Development section, or run with
-- build/bin/proxystore)
-- Driver: returns function(report) as bench/run.lua expects; ratio is
-- baseline time / time (above 1: faster than the baseline).
local is_main = not pcall(debug.getlocal, 4, 1)
local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local clock = core.monotonic

local RUNS = 5
local MiB = 1024 * 1024

local function len(s) return #ps.extract(s) end

-- Keeps at most `window` tasks in flight so that queued inputs do not pile
-- up in memory; both variants of a case use the same window.
local function run_windowed(pool, n, window, make_arg)
  local fs, total = {}, 0
  for i = 1, n do
    fs[i] = pool:submit(len, make_arg(i))
    if i > window then
      total = total + fs[i - window]:result()
      fs[i - window] = nil
    end
  end
  for i = math.max(1, n - window + 1), n do total = total + fs[i]:result() end
  return total
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
    report("pool", "empty task round trip (1 worker)", t / N * 1e9, s)
  end

  -- 2. one shared 10 MiB input
  do
    local data = ("0123456789abcdef"):rep(10 * MiB // 16)
    local by_value <close> = ps.pool { workers = 2, progress = false,
                                       proxy_threshold = math.huge }
    local tv, sv = stats.time(RUNS, function()
      assert(run_windowed(by_value, 100, 4, function() return data end)
        == 100 * #data)
    end)
    by_value:close()
    local proxied <close> = ps.pool { workers = 2, progress = false }
    local store = proxied.store
    local tp, sp = stats.time(RUNS, function()
      local p = store:proxy(data)
      assert(run_windowed(proxied, 100, 4, function() return p end)
        == 100 * #data)
      store:evict(ps.key(p))
    end)
    report("pool", "100 tasks, one shared 10 MiB input, by value", tv * 1e9, sv)
    report("pool", "100 tasks, one shared 10 MiB input, as one proxy", tp * 1e9, sp,
      "by value", tv / tp)
  end

  -- 3. a 10 MiB input per task (4 distinct strings in rotation)
  do
    local inputs = {}
    for i = 1, 4 do inputs[i] = (string.char(64 + i) .. "123456789abcdef"):rep(10 * MiB // 16) end
    local arg_of = function(i) return inputs[i % 4 + 1] end
    local by_value <close> = ps.pool { workers = 2, progress = false,
                                       proxy_threshold = math.huge }
    local tv, sv = stats.time(RUNS, function()
      assert(run_windowed(by_value, 100, 4, arg_of) == 100 * 10 * MiB)
    end)
    by_value:close()
    local proxied <close> = ps.pool { workers = 2, progress = false }
    local tp, sp = stats.time(RUNS, function()
      assert(run_windowed(proxied, 100, 4, arg_of) == 100 * 10 * MiB)
    end)
    assert(proxied:metrics().proxied_args >= 100)
    report("pool", "100 tasks, own 10 MiB input each, by value", tv * 1e9, sv)
    report("pool", "100 tasks, own 10 MiB input each, auto proxies on " ..
      (proxied.dir or "store"):match("^/[^/]+/[^/]+"), tp * 1e9, sp,
      "by value", tv / tp)
  end
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
      print(("| %s | %s | %s | %.0f | %s | %s |"):format(section, name, v,
        spread, base or "", ratio and ("%.2f"):format(ratio) or ""))
    end)
  end
  return b
end)(bench)
