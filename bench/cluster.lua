-- bench/cluster.lua: the Redis store on a Redis Cluster (3 masters, 3
-- replicas, cluster-node-timeout 1000 ms) against the same store on one
-- redis-server, measured in the same run:
--
--   - first resolve of a 1 KiB object (cache off), cluster / single node;
--   - get_batch of 1,000 1 KiB objects spread over the 3 masters, cluster /
--     single node (every master's pipeline is written before any reply
--     is read, so the nodes work at the same time);
--   - kill -9 of a master: the time from the kill to the first successful
--     call for its slots, against node timeout + 2 s; calls to the other
--     masters' slots meanwhile, and how many of them failed.
--
-- Cluster and single-node samples alternate, so both see the same load on
-- a shared machine. Standalone: lua5.4 bench/cluster.lua; with
-- PROXYSTORE_BENCH_QUICK=1 fewer runs. From bench/run.lua: the return
-- value is function(report).
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PROXYSTORE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local redis = require "helpers.redis"
local rc = require "helpers.redis_cluster"
local now = core.monotonic

local QUICK = os.getenv("PROXYSTORE_BENCH_QUICK")
local NODE_TIMEOUT = 1000   -- ms

local function payload(size, salt)
  local t = {}
  for i = 1, size do t[i] = string.char((i * 131 + salt) % 256) end
  return table.concat(t)
end

-- runs interleaved samples of a and b (one untimed round first); the
-- median and spread of each, in ns and percent.
-- Also returns the median CPU time of a (this process's, os.clock).
local function ab(runs, a, b)
  a(0)
  b(0)
  local ta, tb, ca = {}, {}, {}
  for i = 1, runs do
    local t0, c0 = now(), os.clock()
    a(i)
    ta[i] = now() - t0
    ca[i] = os.clock() - c0
    t0 = now()
    b(i)
    tb[i] = now() - t0
  end
  local ma, sa = stats.median_spread(ta)
  local mb, sb = stats.median_spread(tb)
  local mc, sc = stats.median_spread(ca)
  return ma * 1e9, sa, mb * 1e9, sb, mc * 1e9, sc
end

local function bench(report)
  local srv = redis.start()
  local c
  local ok, err = pcall(function()
    c = rc.start { masters = 3, replicas = 1, node_timeout = NODE_TIMEOUT }
    local single = ps.init_store("redis", { name = "bench-single", host = srv.host,
                                            port = srv.port, cache_size = 0 })
    local cl = ps.init_store("redis", { name = "bench-cluster", cluster = c.seeds,
                                        cache_size = 0 })
    local kib = payload(1024, 7)

    -- first resolve of 1 KiB
    single:put(kib, { key = "one" })
    cl:put(kib, { key = "one" })
    local ps_s, ps_c = {}, {}
    local runs = QUICK and 51 or 301
    for i = 0, runs do
      ps_s[i] = single:proxy_from_key("one")
      ps_c[i] = cl:proxy_from_key("one")
    end
    local mc, sc, ms, ss = ab(runs, function(i) ps.resolve(ps_c[i]) end,
                                    function(i) ps.resolve(ps_s[i]) end)
    report("redis cluster", "first resolve 1 KiB, single node", ms, ss)
    report("redis cluster", "first resolve 1 KiB, cluster", mc, sc,
           "single node (target ≤ 1.2)", mc / ms)
    ps_s, ps_c = nil, nil
    collectgarbage()

    -- get_batch of 1,000 1 KiB objects
    local list = {}
    for i = 1, 1000 do list[i] = payload(1024, i) end
    local keys_s = single:put_batch(list)
    local keys_c = cl:put_batch(list)
    local topo = c:topology()
    local per = {}
    local names = {}
    for i, k in ipairs(keys_c) do names[i] = "{" .. k .. "}" end
    for _, slot in ipairs(c:slots(names)) do
      local n = c:owner(slot, topo)
      per[n] = (per[n] or 0) + 1
    end
    local spread_over = {}
    for _, m in ipairs(c:masters(topo)) do spread_over[#spread_over + 1] = per[m] or 0 end
    runs = QUICK and 11 or 41
    -- What parallel nodes cannot shorten, measured over the same calls:
    -- the client's own CPU time per get_batch (requests, parsing, decoding
    -- 1,000 replies) and the masters' CPU time (INFO cpu), which on this
    -- machine's cores add up; the busier of (all CPU over the cores) and
    -- (the client alone) is the floor of a cluster get_batch, its ratio
    -- to the single node's time the best ratio reachable here.
    local function server_cpu()
      local sum = 0
      for _, m in ipairs(c:masters(topo)) do
        local info = c:cli(m, "INFO", "cpu")
        sum = sum + tonumber(info:match("used_cpu_sys:([%d.]+)")) +
          tonumber(info:match("used_cpu_user:([%d.]+)"))
      end
      return sum
    end
    local s0 = server_cpu()
    local mcpu, scpu
    mc, sc, ms, ss, mcpu, scpu = ab(runs,
      function() assert(cl:get_batch(keys_c)[1000] == list[1000]) end,
      function() assert(single:get_batch(keys_s)[1000] == list[1000]) end)
    local servers = (server_cpu() - s0) / (runs + 1)
    report("redis cluster", "get_batch 1,000 x 1 KiB, single node", ms, ss)
    report("redis cluster", ("get_batch 1,000 x 1 KiB, cluster (%s per master)")
      :format(table.concat(spread_over, "/")), mc, sc, "single node (target ≤ 0.6)", mc / ms)
    local ncores = tonumber(io.popen("nproc"):read("l")) or 1
    local floor = math.max(mcpu, (mcpu + servers * 1e9) / ncores)
    report("redis cluster", "the client's CPU time per cluster get_batch", mcpu, scpu)
    report("redis cluster", "the masters' CPU time per cluster get_batch (sum)", servers * 1e9)
    report("redis cluster", ("floor: the busier of all CPU over %d cores and the client alone")
      :format(ncores), floor, nil, "single node", floor / ms)
    single:close()

    -- kill -9 of a master
    assert(c:wait_replicas(), "replicas did not sync")
    local victim = c:masters(topo)[1]
    local mine, others = {}, {}
    for i, slot in ipairs(c:slots(names)) do
      local n = c:owner(slot, topo)
      if n == victim then mine[#mine + 1] = i else others[#others + 1] = i end
    end
    local probe = ps.init_store("redis", { name = "bench-probe", cluster = c.seeds,
                                           cache_size = 0, timeout = 0.1 })
    probe:get(keys_c[mine[1]])     -- connected to every node it will ask
    probe:get(keys_c[others[1]])
    -- The other masters' slots are read meanwhile by another process,
    -- through a store with the default timeout (5 s), so that its waits
    -- (the cluster answers CLUSTERDOWN for a moment) never delay the probe.
    local tmp = os.tmpname()
    local stop = tmp .. ".stop"
    local f = assert(io.open(tmp, "w"))
    for _, i in ipairs(others) do f:write(i, " ", keys_c[i], "\n") end
    f:close()
    local script = ([[
      local ps = require "proxystore"
      local now = require("proxystore.core").monotonic
      local s = ps.init_store("redis", { cluster = %s, cache_size = 0 })
      local keys = {}
      for line in io.lines(%q) do
        local i, k = line:match("(%%d+) (%%S+)")
        keys[#keys + 1] = { tonumber(i), k }
      end
      local function payload(size, salt)
        local t = {}
        for i = 1, size do t[i] = string.char((i * 131 + salt) %% 256) end
        return table.concat(t)
      end
      local calls, failed, worst, j = 0, 0, 0, 0
      repeat
        j = j %% #keys + 1
        local t0 = now()
        local ok, v = pcall(s.get, s, keys[j][2])
        local dt = now() - t0
        if dt > worst then worst = dt end
        calls = calls + 1
        if not ok or v ~= payload(1024, keys[j][1]) then failed = failed + 1 end
        if calls == 1 then io.open(%q, "w"):close() end
      until io.open(%q)
      io.write(calls, " ", failed, " ", worst)
    ]]):format("{" .. ("%q,"):rep(#c.seeds):format(table.unpack(c.seeds)) .. "}", tmp,
               tmp .. ".ready", stop)
    local sf = assert(io.open(tmp .. ".lua", "w"))
    sf:write(script)
    sf:close()
    local child = assert(io.popen("env -u LD_PRELOAD LUA_PATH='" .. package.path ..
      "' LUA_CPATH='" .. package.cpath .. "' lua5.4 " .. tmp .. ".lua 2>&1"))
    for _ = 1, 600 do                    -- the reader is under way
      local r = io.open(tmp .. ".ready")
      if r then r:close() break end
      os.execute("sleep 0.05")
    end
    local killed = now()
    c:kill(victim)
    local back
    repeat
      if pcall(probe.get, probe, keys_c[mine[1]]) then back = now() - killed end
    until back or now() - killed > 60
    os.execute("sleep 0.5")              -- the others a moment more, after it
    f = assert(io.open(stop, "w"))
    f:close()
    local out = child:read("a")
    child:close()
    for _, name in ipairs { tmp, stop, tmp .. ".lua", tmp .. ".ready" } do os.remove(name) end
    local calls_other, failed_other, worst = out:match("^(%d+) (%d+) (%S+)$")
    assert(calls_other, "the other masters' reader failed: " .. out)
    worst = tonumber(worst)
    assert(back, "no replica took over within 60 s")
    local target = NODE_TIMEOUT / 1000 + 2
    report("redis cluster", ("unavailability of a master's slots after kill -9 "
      .. "(node timeout %d ms)"):format(NODE_TIMEOUT), back * 1e9, nil,
      ("node timeout + 2 s (target ≤ 1)"), back / target)
    report("redis cluster", ("slowest call to other masters' slots meanwhile; %d of %d failed")
      :format(failed_other, calls_other), worst * 1e9, nil)
    probe:close()
    cl:close()
  end)
  if c then c:stop() end
  srv:stop()
  if not ok then error(err, 0) end
end

if arg and arg[0] and arg[0]:match("cluster%.lua$") then
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
