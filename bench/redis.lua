-- bench/redis.lua: the Redis store against its baselines.
--
-- For 1 KiB, 1 MiB, 10 MiB and 100 MiB strings and a table workload, over
-- TCP and the Unix socket: put, proxy create, first resolve (cache off),
-- cached resolve. Baselines measured in the same run by bench/redis_raw.c
-- (built by `make bench`): raw hiredis SET/GET, and the server-bound limit
-- (SET with one writev, GET's reply read() into a reused buffer, waiting
-- as the store does: spinning up to 30 us before it sleeps; a row gives
-- the CPU time that spin costs per call). Plus the peak RSS of a fresh
-- process resolving a 100 MiB string.
--
-- Standalone: lua5.4 bench/redis.lua  (prints a markdown table)
-- PROXYSTORE_BENCH_QUICK=1 for fewer runs. Spread is (max-min)/median.
-- From bench/run.lua: return value is function(report).
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PROXYSTORE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local redis = require "helpers.redis"
local now = core.monotonic

local KiB, MiB = 1024, 1024 * 1024
local SIZES = { 1 * KiB, 1 * MiB, 10 * MiB, 100 * MiB }
local QUICK = os.getenv("PROXYSTORE_BENCH_QUICK")   -- fewer runs

local function runs_for(size)
  if size >= 5 * MiB then return QUICK and 5 or 9 end
  if size >= MiB then return QUICK and 11 or 31 end
  return QUICK and 51 or 301
end

-- Times fn(i) runs times; setup(i) and cleanup(i) run untimed around it.
-- One untimed round first: the server's first allocation of a size (a
-- 100 MiB put: 300 ms instead of 65) is not the store's cost, and the
-- baselines (31 runs) hardly see it either.
local function measure(runs, fn, setup, cleanup)
  local warm = setup and setup(0)
  fn(warm, 0)
  if cleanup then cleanup(warm, 0) end
  local t = {}
  for i = 1, runs do
    local arg = setup and setup(i)
    local t0 = now()
    fn(arg, i)
    t[i] = now() - t0
    if cleanup then cleanup(arg, i) end
  end
  local median, spread = stats.median_spread(t)
  return median * 1e9, spread   -- ns, as the report takes
end

local function payload(size)
  local seed = {}
  for i = 1, 1024 do seed[i] = string.char((i * 131 + 7) % 256) end
  local chunk = table.concat(seed)
  return string.rep(chunk, size // 1024) .. chunk:sub(1, size % 1024)
end

local function size_name(n)
  if n >= MiB then return (n // MiB) .. " MiB" end
  return (n // KiB) .. " KiB"
end

-- Client and server on fixed, different cores, as they are wherever Redis
-- is a server of its own. Unpinned, this 2-core VM puts them on one core in
-- some runs (a blocking read hands the core straight to the server: 15 us a
-- 1 KiB round trip) and on two in others (each side wakes from idle: 42
-- us), so a baseline and the store measured a second apart could differ 3x
-- for no reason of theirs. CLIENT_CPU is "" without taskset or one core.
-- Returns a function that gives this process its CPUs back (later
-- sections fork pool workers, which would inherit the pinning).
local CLIENT_CPU = ""
local function pin(srv)
  local ok = os.execute("command -v taskset >/dev/null 2>&1")
  local f = io.popen("nproc")
  local ncpu = tonumber(f:read("a")) or 1
  f:close()
  if not ok or ncpu < 2 or not srv.pid then return function() end end
  local me = core.pool_getpid()
  f = io.popen(("taskset -p %d"):format(me))
  local mask = f:read("a"):match("mask: (%x+)")
  f:close()
  os.execute(("taskset -pc 1 %d >/dev/null"):format(srv.pid))
  os.execute(("taskset -pc 0 %d >/dev/null"):format(me))
  CLIENT_CPU = "taskset -c 0 "
  return function()
    CLIENT_CPU = ""
    if mask then os.execute(("taskset -p %s %d >/dev/null"):format(mask, me)) end
  end
end

local function raw_baselines(srv, sizes)
  local build = os.getenv("PROXYSTORE_BUILD") or "build"
  local args = {}
  for i, s in ipairs(sizes) do args[i] = tostring(s) end
  local cmd = ("env -u LD_PRELOAD %s%s/bin/redis_raw 127.0.0.1 %d %s %d %s"):format(
    CLIENT_CPU, build, srv.port, srv.path, QUICK and 11 or 31, table.concat(args, " "))
  local p = assert(io.popen(cmd))
  local base = {}
  for line in p:lines() do
    local tr, op, size, med, spread = line:match("^(%S+) (%S+) (%d+) (%S+) (%S+)$")
    if tr then
      base[tr .. " " .. op .. " " .. size] = { tonumber(med), tonumber(spread) }
    end
  end
  assert(p:close(), "bench/redis_raw failed (run `make bench` to build it)")
  return base
end

-- Peak RSS of a fresh process resolving a stored string of size bytes.
local function peak_rss(srv, key, size)
  local code = ([[
    local ps = require "proxystore"
    local function kb(field)
      for l in io.lines("/proc/self/status") do
        local v = l:match("^" .. field .. ":%%s+(%%d+)")
        if v then return tonumber(v) end
      end
    end
    local s = ps.init_store("redis", {name = "rss", host = "127.0.0.1", port = %d, cache_size = 0})
    local p = s:proxy_from_key(%q)
    local before = kb("VmRSS")
    local t0 = require("proxystore.core").monotonic()
    local n = #p
    local dt = require("proxystore.core").monotonic() - t0
    io.write(n, " ", before, " ", kb("VmHWM"), " ", dt)
  ]]):format(srv.port, key)
  local f = os.tmpname()
  local h = assert(io.open(f, "w"))
  h:write(code)
  h:close()
  local function q(v) return "'" .. v:gsub("'", "'\\''") .. "'" end
  -- the child finds the modules where this process did
  local p = assert(io.popen("env -u LD_PRELOAD LUA_PATH=" .. q(package.path) ..
    " LUA_CPATH=" .. q(package.cpath) .. " lua5.4 " .. f .. " 2>&1"))
  local out = p:read("a")
  p:close()
  os.remove(f)
  local n, before, hwm, dt = out:match("(%d+) (%d+) (%d+) (%S+)")
  assert(tonumber(n) == size, "rss child failed: " .. out)
  return tonumber(before) * 1024, tonumber(hwm) * 1024, tonumber(dt)
end

local function table_workload()
  local t = {}
  for i = 1, 10000 do
    t[i] = { id = i, name = "user" .. i, score = i * 1.5, tags = { "a", "b", i % 7 } }
  end
  return t
end

local function bench(report)
  local srv = redis.start()
  local unpin = function() end
  local ok, err = pcall(function()
    unpin = pin(srv)
    local stores = {}
    for _, tr in ipairs { "tcp", "unix" } do
      local conn = tr == "tcp" and { host = srv.host, port = srv.port } or { path = srv.path }
      local function store(name, cache)
        local o = { name = name .. "-" .. tr, cache_size = cache }
        for k, v in pairs(conn) do o[k] = v end
        return ps.init_store("redis", o)
      end
      stores[tr] = { s = store("bench", 0), c = store("bench-cached", 16) }
    end
    -- Baselines are measured per size right before the store's numbers
    -- for that size, so both see the same load on a shared machine.
    local function baselines(size)
      local base = raw_baselines(srv, { size })
      for _, tr in ipairs { "tcp", "unix" } do
        for _, op in ipairs { "hiredis_set", "hiredis_get", "limit_set", "limit_get" } do
          local b = base[tr .. " " .. op .. " " .. size]
          report("redis baseline (" .. tr .. ")", op .. " " .. size_name(size), b[1], b[2])
        end
        local cpu = base[tr .. " limit_get_cpu " .. size]
        report("redis baseline (" .. tr .. ")", ("limit_get %s: CPU the spin costs "
          .. "per call (%.1f µs CPU spinning, %.1f µs blocking)"):format(size_name(size),
          cpu[1] / 1e3, cpu[2] / 1e3), math.max(0, cpu[1] - cpu[2]), nil)
      end
      return function(tr, op, med)
        local b = base[tr .. " " .. op .. " " .. size]
        if not b then return nil, nil end
        return op, med / b[1]
      end
    end
    for _, size in ipairs(SIZES) do
      local ratio_to = baselines(size)
      local data = payload(size)
      local runs = runs_for(size)
      local sn = size_name(size)
      for _, tr in ipairs { "tcp", "unix" } do
        local s, c = stores[tr].s, stores[tr].c
        local section = "redis store (" .. tr .. ")"
        local med, spread = measure(runs, function() s:put(data, { key = "b" }) end)
        report(section, "put " .. sn, med, spread, ratio_to(tr, "limit_set", med))
        med, spread = measure(runs, function(_, i) s:proxy(data, { key = "p" .. i }) end,
          nil, function(_, i) s:evict("p" .. i) end)
        report(section, "proxy create " .. sn, med, spread, ratio_to(tr, "limit_set", med))
        collectgarbage()
        med, spread = measure(runs, function(p) ps.resolve(p) end,
          function() return s:proxy_from_key("b") end,
          function() collectgarbage() end)
        -- against the limit at every size: it waits as the store does, so
        -- it is a floor even for small replies
        report(section, "first resolve " .. sn, med, spread, ratio_to(tr, "limit_get", med))
        -- measure's warm-up resolve fills c's cache
        med, spread = measure(runs, function(p) ps.resolve(p) end,
          function() return c:proxy_from_key("b") end)
        report(section, "cached resolve " .. sn, med, spread, nil, nil)
        c:evict("b")
        collectgarbage()
      end
      data = nil
      collectgarbage()
    end
    -- A table workload, against the limit for its serialized size.
    local t = table_workload()
    local tsize = #ps.serialize(t)
    local ratio_to = baselines(tsize)
    local runs = QUICK and 5 or 15
    for _, tr in ipairs { "tcp", "unix" } do
      local s = stores[tr].s
      local section = "redis store (" .. tr .. ")"
      local name = ("table, 10k records (%d KiB)"):format(tsize // KiB)
      local med, spread = measure(runs, function() s:put(t, { key = "t" }) end)
      report(section, "put " .. name, med, spread, ratio_to(tr, "limit_set", med))
      med, spread = measure(runs, function(p) ps.resolve(p) end,
        function() return s:proxy_from_key("t") end, function() collectgarbage() end)
      report(section, "first resolve " .. name, med, spread, ratio_to(tr, "limit_get", med))
    end
    for _, tr in ipairs { "tcp", "unix" } do
      stores[tr].s:close()
      stores[tr].c:close()
    end
    -- peak RSS of a fresh process resolving a 100 MiB string
    local s = ps.init_store("redis", { name = "bench-rss", host = srv.host, port = srv.port })
    local size = 100 * MiB
    s:put(payload(size), { key = "rss" })
    collectgarbage()
    local before, hwm, dt = peak_rss(srv, "rss", size)
    report("redis peak RSS", ("first resolve of 100 MiB in a fresh process: peak RSS %.0f MiB "
      .. "(%.0f MiB before)"):format(hwm / MiB, before / MiB), dt * 1e9, 0,
      "peak RSS / size", hwm / size)
    s:close()
  end)
  unpin()
  srv:stop()
  if not ok then error(err, 0) end
end

if arg and arg[0] and arg[0]:match("redis%.lua$") then
  print("| section | measurement | median | spread | baseline | ratio |")
  print("|---|---|---|---|---|---|")
  bench(function(section, name, ns, spread, bname, ratio)
    local v = ns >= 1e6 and ("%.2f ms"):format(ns / 1e6) or ("%.1f µs"):format(ns / 1e3)
    print(("| %s | %s | %s | %s | %s | %s |"):format(section, name, v,
      spread and ("±%.1f%%"):format(spread) or "—", bname or "",
      ratio and ("%.2f"):format(ratio) or ""))
    io.stdout:flush()
  end)
else
  return bench
end
