-- bench/stream.lua: streams of proxies (ps.stream) over a loopback Redis.
--
--   1. 100 B items, inline, one producer and one consumer: items/s
--                                                 target >= 50,000 items/s
--   2. 1 MiB items as single-use proxies, one producer and one consumer,
--      against raw SET + GET of the same bytes timed in the same rounds:
--      the server-bound limit, one key written and read back in a tight
--      loop (target >= 0.8 of its throughput), and raw SETs then GETs of
--      five keys at a time and one DEL, as the loop does (what that
--      pattern costs the server over one key); and, timed apart, the
--      same items through the store alone (store:proxy and resolve, no
--      stream: the stream's own share of the cost), the limit's tight
--      loop in a fresh C process (bench/redis_raw) and hiredis
--   3. a dispatcher that routes on metadata alone (reads each event,
--      forwards the proxy to one of two topics) over 10,000 proxies of
--      1 MiB items: events/s, and the GETs it made, from the store's
--      metrics and the server's command counts
--                                  target: 0 GETs and >= 20,000 events/s
--
-- Section 2 runs three times, each in a fresh child lua5.4 that runs
-- only it (a user's consumer has not run this bench's other sections
-- first, and glibc's malloc keeps or returns memory by what the process
-- did before): on lua5.4's own allocator (what a module user of a stock
-- interpreter gets: glibc's malloc, which may hand each 1 MiB value fresh
-- pages that fault in); the same with GLIBC_TUNABLES=glibc.malloc.hugetlb=1
-- (the no-code way the README gives: glibc advises huge pages for its
-- memory); and after ps.use_big_allocator() (what the proxystore binary
-- installs for its own state). A row's name ends with which.
--
-- Producer and consumer run in this process, one after the other, on
-- chunks (send a chunk, flush, read it back): a throughput here pays for
-- both sides, with no overlap between them. (Two processes did no better
-- on these 2 cores, which they share with the server: 650-1050 µs a 1 MiB
-- item in a scratch run, as one process in the same hour.) Section 2's
-- stream and raw loops are timed in rounds of blocks, each block after
-- untimed chunks of its own: the throughput of loops that are running,
-- not of the machine waking up or of a loop just switched to (see
-- rounds below).
--
-- Standalone: lua5.4 bench/stream.lua   (a markdown table)
-- PROXYSTORE_BENCH_QUICK=1 for fewer and shorter runs.
-- From bench/run.lua: returns function(report).
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = (os.getenv("PROXYSTORE_BUILD") or "build") .. "/lib/?.so;" .. package.cpath

local ps = require "proxystore"
local core = require "proxystore.core"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local redis = require "helpers.redis"
local shell = require "helpers.shell"
local now = core.monotonic

local MiB = 1024 * 1024
local QUICK = os.getenv("PROXYSTORE_BENCH_QUICK")

local function payload(size)
  local seed = {}
  for i = 1, 1024 do seed[i] = string.char((i * 131 + 7) % 256) end
  local chunk = table.concat(seed)
  return string.rep(chunk, size // 1024) .. chunk:sub(1, size % 1024)
end

local function cmdstat(g, name)
  local info = g:call("INFO", "commandstats")
  return tonumber(info:match("cmdstat_" .. name .. ":calls=(%d+)")) or 0
end

local raw = stats.redis_raw
local benchlib = require "proxystore.bench"

-- 1. Small items, inline.
local function small_items(report, url, g)
  local item = ("x"):rep(100)
  local chunk, n, runs = 2000, QUICK and 10000 or 20000, QUICK and 3 or 7
  local per = {}
  for r = 1, runs do
    local topic = "bench-small-" .. r
    local p = ps.stream.producer { broker = url }
    local c = ps.stream.consumer(topic, { broker = url })
    collectgarbage()
    local t0 = now()
    for _ = 1, n // chunk do
      for _ = 1, chunk do p:send(topic, item) end
      p:flush()
      for _ = 1, chunk do
        if #c:next(10) ~= 100 then error("bench: wrong item") end
      end
    end
    per[r] = (now() - t0) / n
    p:close()
    c:close()
    g:call("DEL", topic)
  end
  local med, spread = stats.median_spread(per)
  report("stream", ("100 B items inline, 1 producer + 1 consumer: %.0f items/s")
    :format(1 / med), med * 1e9, spread, "target 50,000 items/s", (1 / med) / 50000)
end

-- 2. Large items as proxies, against raw SET + GET. tag ends every row's
-- name (which allocator the Lua state has).
local function large_items(report, url, srv, g, tag)
  local data = payload(MiB)
  local chunk, n, runs = 5, QUICK and 20 or 40, QUICK and 3 or 7
  local WARM_ITEMS = QUICK and 20 or 100
  local store = ps.init_store("redis", { name = "bench-stream-large", port = srv.port,
                                         cache_size = 0 })
  local p = ps.stream.producer { broker = url, store = store }
  local c = ps.stream.consumer("bench-large", { broker = url })
  -- each of these runs one chunk: chunk items
  local function via_store()
    local px = {}
    for i = 1, chunk do px[i] = store:proxy(data, { evict = true }) end
    for i = 1, chunk do
      if #px[i] ~= MiB then error("bench: wrong item") end
    end
  end
  -- a consumer gets a Lua string: here made as the stream's consumer
  -- makes them, one at a time, each dropped once used, by a copy of the
  -- bytes into memory of the state's allocator (ps.deserialize of the
  -- stored form). A resolve makes it in the block it read into instead
  -- where it can (the big allocator), so there the store can beat this.
  local stored = ps.serialize(data)
  local function copies()
    for _ = 1, chunk do
      if #ps.deserialize(stored) ~= MiB then error("bench: wrong copy") end
    end
  end
  local function via_stream()
    for _ = 1, chunk do p:send("bench-large", data, { evict = true }) end
    p:flush()
    for _ = 1, chunk do
      if #c:next(10) ~= MiB then error("bench: wrong item") end
    end
  end
  -- The raw baselines in this process, on a connection of their own at
  -- the server-bound limit (proxystore.bench's redis_limit: the writev and
  -- read()s of bench/redis_raw): a chunk of SET + GET pairs of one key
  -- (the limit), and the loop's pattern (batch: chunk distinct keys
  -- written, read back, one DEL).
  local limit_key = "bench-stream-limit"
  g:call("SET", limit_key, data)
  local lim = benchlib.redis_limit("127.0.0.1", srv.port, limit_key, MiB)
  -- ops, in the rounds' timed chunks, keeps each SET's and GET's own
  -- seconds: the statistic of bench/redis_raw's tight loop (medians of
  -- single operations), taken in this process and at this moment (the
  -- two stores into a table cost ~0.1 µs a pair of ~600)
  local function limit_pairs(ops)
    for _ = 1, chunk do
      local set, get = lim:set(data), lim:get()
      if ops then
        table.insert(ops.set, set)
        table.insert(ops.get, get)
      end
    end
  end
  -- its own seconds an item: batch() checks the bytes it read after its
  -- clock stops (five 1 MiB compares, which a clock outside would count)
  local function pattern()
    return lim:batch(data, chunk)
  end
  -- The stream and its raw baselines are timed together, in rounds, so
  -- that they meet the same machine (on these VMs a loop timed a minute
  -- apart from another drifts 30-50%). A round runs a block of each:
  -- BLOCK_WARM untimed chunks, then BLOCK_TIMED chunks each timed. The
  -- untimed chunks let a loop settle after the others (caches, the
  -- server's and malloc's state: chunk by chunk alternation cost the
  -- stream 5-15% more than the raw loops in a scratch A/B, each loop's
  -- first chunk after another paying for it), so each block measures a
  -- running loop, as a user's is. The blocks' order comes from a Williams
  -- square: over its six rounds each loop runs twice in each place and,
  -- within the rounds, follows each other loop twice (the rows go in an
  -- order where no loop follows itself from one round to the next).
  -- Before the first round WARM_ITEMS untimed items of each: a process
  -- that has slept even 0.1 s runs its next ~50 ms of transfers ~1.5x
  -- slower here (a spin instead of the sleep does not), so a loop timed
  -- from cold measured the machine waking. Returns per loop the median
  -- chunk's time an item (the pattern's as batch() times it), the sum of
  -- the medians of the limit's single SETs and GETs (ops), and the
  -- stream's mean over its timed items.
  local loops = { via_stream, limit_pairs, pattern }
  local NAMES = { "stream", "limit", "pattern" }
  local WILLIAMS = { { 1, 2, 3 }, { 2, 3, 1 }, { 3, 1, 2 }, { 3, 2, 1 }, { 2, 1, 3 }, { 1, 3, 2 } }
  local BLOCK_WARM, BLOCK_TIMED = 2, QUICK and 2 or 4
  local function rounds()
    for _ = 1, WARM_ITEMS // chunk do
      for _, loop in ipairs(loops) do loop() end
    end
    collectgarbage()
    local t, stream_sum, ops = { {}, {}, {} }, 0, { set = {}, get = {} }
    for _, order in ipairs(WILLIAMS) do
      for _, which in ipairs(order) do
        for _ = 1, BLOCK_WARM do loops[which]() end
        for _ = 1, BLOCK_TIMED do
          local c0 = now()
          local own = loops[which](ops)
          local took = now() - c0
          table.insert(t[which], own or took / chunk)
          if which == 1 then stream_sum = stream_sum + took end
        end
      end
    end
    local med = {}
    for which, samples in ipairs(t) do med[NAMES[which]] = (stats.median_spread(samples)) end
    med.ops = stats.median_spread(ops.set) + stats.median_spread(ops.get)
    return med, stream_sum / (#t[1] * chunk)
  end
  -- Seconds an item of one_chunk, on its own after the rounds (the store
  -- alone holds five values at once, a pattern that in rounds changed
  -- what glibc's malloc gave the stream after it; a copy involves no
  -- server): the median chunk of n items timed after WARM_ITEMS untimed.
  local function per_item(one_chunk)
    for _ = 1, WARM_ITEMS // chunk do one_chunk() end
    collectgarbage()
    local t = {}
    for i = 1, n // chunk do
      local c0 = now()
      one_chunk()
      t[i] = (now() - c0) / chunk
    end
    return (stats.median_spread(t))
  end
  local per, limit, hiredis, alone, copied, pattern_t, per_mean = {}, {}, {}, {}, {}, {}, {}
  local child_limit, op_limit = {}, {}
  for r = 1, runs do
    -- hiredis from bench/redis_raw's child, and its tight loop of the
    -- limit: the medians of 11 SETs then 11 GETs, in a fresh C process
    local base = raw(srv, MiB, QUICK and 5 or 11)
    hiredis[r] = (base.hiredis_set + base.hiredis_get) / 1e9
    child_limit[r] = (base.limit_set + base.limit_get) / 1e9
    local med
    med, per_mean[r] = rounds()
    per[r], limit[r], pattern_t[r], op_limit[r] = med.stream, med.limit, med.pattern, med.ops
    alone[r] = per_item(via_store)
    copied[r] = per_item(copies)
  end
  lim:close()
  g:call("DEL", limit_key)
  p:close()
  c:close()
  g:call("DEL", "bench-large")
  store:close()
  local inner = report
  report = function(section, name, ...) inner(section, name .. tag, ...) end
  local lmed, lspread = stats.median_spread(limit)
  local hmed, hspread = stats.median_spread(hiredis)
  local cmed, cspread = stats.median_spread(child_limit)
  local omed, ospread = stats.median_spread(op_limit)
  local amed, aspread = stats.median_spread(alone)
  local fmed, fspread = stats.median_spread(copied)
  local pmed, pspread = stats.median_spread(pattern_t)
  local med, spread = stats.median_spread(per)
  local mmed, mspread = stats.median_spread(per_mean)
  report("stream baseline", "raw SET + GET of 1 MiB, one key, server-bound limit, in rounds " ..
    "with the stream (the target's)", lmed * 1e9, lspread)
  report("stream baseline", "raw SET + GET of 1 MiB, server-bound limit, medians of a tight " ..
    "loop in a fresh C process before the rounds", cmed * 1e9, cspread, "limit in rounds",
    lmed / cmed)
  report("stream baseline", "raw SET + GET of 1 MiB, server-bound limit, medians of the " ..
    "rounds' single SETs and GETs", omed * 1e9, ospread, "C process's medians", cmed / omed)
  report("stream baseline", "raw SET + GET of 1 MiB, hiredis", hmed * 1e9, hspread)
  report("stream baseline", ("raw SET x%d, GET x%d, one DEL of 1 MiB values (the loop's pattern), " ..
    "server-bound, an item"):format(chunk, chunk), pmed * 1e9, pspread, "limit in rounds",
    lmed / pmed)
  report("stream baseline", "a 1 MiB Lua string copied as a consumer's are made (one at a time)",
    fmed * 1e9, fspread)
  report("stream baseline", "raw SET + GET limit plus that copy", (lmed + fmed) * 1e9,
    nil, "limit in rounds", lmed / (lmed + fmed))
  report("stream baseline", "1 MiB items through the store alone (proxy, resolve, evict), " ..
    "after the rounds",
    amed * 1e9, aspread, "limit in rounds", lmed / amed)
  report("stream", ("1 MiB items as proxies (evict), 1 producer + 1 consumer: %.0f items/s")
    :format(1 / med), med * 1e9, spread, "raw SET+GET limit (target 0.8)", lmed / med)
  report("stream", "1 MiB items as proxies, against the tight loop of the fresh C process",
    med * 1e9, spread, "raw SET+GET limit, C process", cmed / med)
  report("stream", "1 MiB items as proxies, against hiredis SET + GET", med * 1e9, spread,
    "raw SET+GET hiredis", hmed / med)
  report("stream", "1 MiB items as proxies, against the store alone", med * 1e9, spread,
    "store alone", amed / med)
  report("stream", "1 MiB items as proxies, against raw SET/GET in the loop's pattern", med * 1e9,
    spread, "raw, loop's pattern", pmed / med)
  report("stream", "1 MiB items as proxies, the mean over each run's timed items " ..
    "(not the median chunk)", mmed * 1e9, mspread, "raw SET+GET limit", lmed / mmed)
end

-- 3. A dispatcher routing on metadata alone.
local function dispatcher(report, url, srv, g)
  local total = QUICK and 2000 or 10000
  local round = 500
  local data = payload(MiB)
  local store = ps.init_store("redis", { name = "bench-stream-dispatch", port = srv.port })
  local p = ps.stream.producer { broker = url, store = store }
  local d = ps.stream.consumer("bench-in", { broker = url })
  local fwd = ps.stream.producer { broker = url }
  local per, gets, server_gets = {}, 0, 0
  for r = 1, total // round do
    for i = 1, round do
      p:send("bench-in", data, { metadata = { route = i % 2 == 0 and "even" or "odd", i = i } })
    end
    p:flush()
    local keys = {}
    local g0, s0 = store:metrics().get.count, cmdstat(g, "get") + cmdstat(g, "getrange")
    collectgarbage()
    local t0 = now()
    for i = 1, round do
      local obj, meta = d:next(10)
      keys[i] = ps.key(obj)
      fwd:send(meta.route, obj, { metadata = meta })
    end
    fwd:flush()
    per[r] = (now() - t0) / round
    gets = gets + store:metrics().get.count - g0
    server_gets = server_gets + cmdstat(g, "get") + cmdstat(g, "getrange") - s0
    for _, k in ipairs(keys) do store:evict(k) end
    g:call("DEL", "bench-in", "even", "odd")
  end
  p:close()
  d:close()
  fwd:close()
  store:close()
  local med, spread = stats.median_spread(per)
  report("stream", ("metadata dispatcher over %d proxies of 1 MiB: %.0f events/s, " ..
    "%d GETs (store metrics), %d GET/GETRANGE at the server"):format(total, 1 / med,
    gets, server_gets), med * 1e9, spread, "target 20,000 events/s", (1 / med) / 20000)
end

-- Section 2's users: the child's environment, whether it opts in to the
-- big allocator, and the end of its rows' names.
local ALLOCATORS = {
  { env = "", tag = ", lua5.4's allocator" },
  { env = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1", tag = ", lua5.4's allocator, glibc.malloc.hugetlb=1" },
  { env = "", big = true, tag = ", big allocator" },
}

-- Section 2 in a child lua5.4 for one of ALLOCATORS: its rows come back
-- as tab-separated lines (as bench/run.lua's children do).
local function large_items_child(report, srv, i)
  local a = ALLOCATORS[i]
  local here = debug.getinfo(1, "S").source:match("^@(.*)$")
  local q = shell.quote
  local p = assert(io.popen(("env %s lua5.4 %s --large %d %d %s"):format(a.env, q(here), i,
    srv.port, q(srv.path))))
  for line in p:lines() do
    local f = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
    report(f[1], f[2], tonumber(f[3]), tonumber(f[4]), f[5] ~= "" and f[5] or nil,
      tonumber(f[6]))
  end
  assert(p:close(), "bench stream: the run" .. a.tag .. " failed")
end

local function bench(report)
  local srv = redis.start()
  local g
  local ok, err = pcall(function()
    local url = ("redis://127.0.0.1:%d"):format(srv.port)
    g = core.redis_groups { host = "127.0.0.1", port = srv.port }
    small_items(report, url, g)
    for i = 1, #ALLOCATORS do large_items_child(report, srv, i) end
    dispatcher(report, url, srv, g)
  end)
  if g then g:close() end
  srv:stop()
  if not ok then error(err, 0) end
end

if arg and arg[1] == "--large" then
  local a = assert(ALLOCATORS[tonumber(arg[2])], "bench stream: --large takes 1-3")
  if a.big then
    assert(ps.use_big_allocator(), "bench stream: ps.use_big_allocator() failed")
  end
  local srv = { port = tonumber(arg[3]), path = arg[4] }
  local g = core.redis_groups { host = "127.0.0.1", port = srv.port }
  large_items(stats.print_row, ("redis://127.0.0.1:%d"):format(srv.port), srv, g, a.tag)
  g:close()
elseif arg and arg[0] and arg[0]:match("stream%.lua$") then
  print("| section | measurement | median | spread | baseline | ratio |")
  print("|---|---|---|---|---|---|")
  bench(function(section, name, ns, spread, bname, ratio)
    local v = ns >= 1e6 and ("%.2f ms"):format(ns / 1e6) or ("%.2f µs"):format(ns / 1e3)
    print(("| %s | %s | %s | %s | %s | %s |"):format(section, name, v,
      spread and ("%.0f%%"):format(spread) or "—", bname or "",
      ratio and ("%.2f"):format(ratio) or ""))
    io.stdout:flush()
  end)
else
  return bench
end
