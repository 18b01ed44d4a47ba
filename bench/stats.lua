-- bench/stats.lua: what every benchmark here reports, computed one way.
-- Load it with dofile (benchmarks also run standalone, off the Lua path).
local clock = require("proxystore.core").monotonic

local M = {}

-- Median and spread ((max - min) / median, in percent) of samples (sorted
-- in place).
function M.median_spread(samples)
  table.sort(samples)
  local n = #samples
  local median = n % 2 == 1 and samples[(n + 1) // 2]
    or (samples[n // 2] + samples[n // 2 + 1]) / 2
  return median, (samples[n] - samples[1]) / median * 100
end

-- Median and spread of fn's wall time in seconds over runs runs: one
-- untimed warm-up run first, a full collection before each timed run.
function M.time(runs, fn)
  fn()
  local times = {}
  for i = 1, runs do
    collectgarbage("collect")
    local t0 = clock()
    fn()
    times[i] = clock() - t0
  end
  return M.median_spread(times)
end

-- Per-op medians (ns) of bench/redis_raw's baselines for size bytes over
-- TCP to srv (a spec/helpers/redis server): limit_set, limit_get (the
-- server-bound limit), hiredis_set, hiredis_get. Its runs happen in a
-- process of its own, on fresh connections: the program of this build,
-- without the sanitizer's preload, and without glibc tunables a bench
-- child runs under (the same baseline for every row).
function M.redis_raw(srv, size, runs)
  local build = os.getenv("PROXYSTORE_BUILD") or "build"
  local p = assert(io.popen(("env -u LD_PRELOAD -u GLIBC_TUNABLES %s/bin/redis_raw " ..
    "127.0.0.1 %d %s %d %d"):format(build, srv.port, srv.path, runs, size)))
  local base = {}
  for line in p:lines() do
    local tr, op, med = line:match("^(%S+) (%S+) %d+ (%S+) %S+$")
    if tr == "tcp" then base[op] = tonumber(med) end
  end
  assert(p:close() and base.limit_get, "bench/redis_raw failed (run `make bench` to build it)")
  return base
end

-- A report function for a section run in a child process: one row a line,
-- tab-separated, as bench/run.lua reads them.
function M.print_row(section, name, ns, spread, base, ratio)
  print(table.concat({ section, name, ("%.0f"):format(ns),
    spread and ("%.1f"):format(spread) or "", base or "",
    ratio and ("%.4f"):format(ratio) or "" }, "\t"))
  io.stdout:flush()
end

return M
