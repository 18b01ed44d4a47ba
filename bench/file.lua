-- bench/file.lua: the file store, put and first resolve, 1 KiB to 100 MiB,
-- on /dev/shm and on the disk, against baselines measured in the same
-- run: memcpy of the same bytes into a reused (warm) buffer, string.rep
-- making a Lua string of the same size (in this process: fresh memory
-- through glibc, as a lua5.4 user's strings get it; and in a child whose
-- glibc keeps freed memory: a warm heap), and the
-- raw read of the stored files (open, fstat, read() into a buffer paged in
-- beforehand, close; each of a run's freshly written files once, as the
-- resolves read them: out of the CPU caches), the floor of any reader. Targets: a first resolve on /dev/shm
-- no slower than on disk and within 1.5x of string.rep; where the raw
-- read alone is above that, its row shows the floor.
--
-- Runs in the process that loads it (lua5.4 and the module under make
-- bench): the rows are what a module user gets.
--
-- Standalone: lua5.4 bench/file.lua [sizes...]   (sizes like 1K 1M 100M)
-- prints a markdown table. Under bench/run.lua: returns function(report).
--
-- Baselines come from the bench module (proxystore.bench.memcpy) and
-- core.monotonic. "First resolve" is a fresh proxy on a store with cache_size = 0, so the
-- bytes come from the file every time. The disk directory is under
-- /var/tmp; its files are in the page cache when read (this measures the
-- store's code path, not the disk).

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT")
if not ROOT then
  local src = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
  ROOT = src:match("^(.*)/bench/[^/]*$") or "."
end
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. package.path
package.cpath = BUILD .. "/lib/?.so;" .. package.cpath

local SIZES = {
  { "1 KiB", 1024, 2000, 9 },
  { "1 MiB", 1024 * 1024, 20, 9 },
  { "10 MiB", 10 * 1024 * 1024, 3, 7 },
  { "100 MiB", 100 * 1024 * 1024, 1, 7 },
}

local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")

-- Runs body(i) iters times per run, runs times; before(i)/after() are
-- untimed set-up and tear-down around each timed call. Returns the median
-- ns per operation and the spread (max-min)/median in percent.
local function measure(now, runs, iters, body, before, after)
  local samples = {}
  for r = 1, runs do
    local total = 0
    for i = 1, iters do
      if before then before(i) end
      local t0 = now()
      body(i)
      total = total + (now() - t0)
      if after then after() end
    end
    samples[r] = total / iters
  end
  return stats.median_spread(samples)
end

-- string.rep of n bytes on a warm heap: in a child lua5.4 whose glibc
-- keeps freed memory (mmap and trim thresholds of 4 GiB), so each string
-- reuses the pages of the last one. In this process (glibc's defaults)
-- every large string is fresh pages: glibc maps a block of 32 MiB or more
-- afresh, and gives smaller ones back to the system from the top of the
-- heap once freed, so the next one faults again (~5 ms a MiB here). The
-- first string is untimed. Returns the median ns and spread in percent.
local function warm_rep(n, iters, runs)
  local script = ([[
    package.cpath = %q
    local now = require("proxystore.core").monotonic
    local piece = string.rep("0123456789abcdef", 64)
    local sink = string.rep(piece, %d // #piece)
    sink = nil
    collectgarbage()
    for _ = 1, %d do
      local t = 0
      for _ = 1, %d do
        local t0 = now()
        sink = string.rep(piece, %d // #piece)
        t = t + (now() - t0)
        sink = nil
        collectgarbage()
      end
      io.write(string.format("%%.17g\n", t / %d * 1e9))
    end
  ]]):format(package.cpath, n, runs, iters, n, iters)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(script)
  f:close()
  local p = assert(io.popen("GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:"
    .. "glibc.malloc.trim_threshold=4294967296 lua5.4 " .. tmp))
  local samples = {}
  for l in p:lines() do samples[#samples + 1] = tonumber(l) end
  p:close()
  os.remove(tmp)
  assert(#samples == runs, "the warm string.rep child failed")
  return stats.median_spread(samples)
end

local function human_ns(ns)
  if ns >= 1e6 then return string.format("%.2f ms", ns / 1e6) end
  if ns >= 1e3 then return string.format("%.2f µs", ns / 1e3) end
  return string.format("%.0f ns", ns)
end

local function run(report, wanted)
  local ps = require "proxystore"
  local core = require "proxystore.core"
  local benchlib = require "proxystore.bench"
  local clock = core.monotonic
  local function now() return clock() * 1e9 end
  local piece = string.rep("0123456789abcdef", 64)   -- 1 KiB

  local dirs = {
    { "/dev/shm", "/dev/shm/proxystore-bench-" .. core.random_key() },
    { "disk", "/var/tmp/proxystore-bench-" .. core.random_key() },
  }

  for _, size in ipairs(SIZES) do
    local label, n, iters, runs = size[1], size[2], size[3], size[4]
    if wanted and not wanted[label:gsub(" ", ""):gsub("iB", "")] then goto continue end
    local data = string.rep(piece, n // #piece)
    local sink
    local function drop()
      sink = nil
      collectgarbage()
    end
    drop()

    local section = "file store, " .. label
    local rep_ns, rep_sp = measure(now, runs, iters,
      function() sink = string.rep(piece, n // #piece) end, nil, drop)
    report(section, "baseline: string.rep (fresh Lua string)", rep_ns, rep_sp)
    local wrep_ns, wrep_sp = warm_rep(n, iters, runs)
    report(section, "baseline: string.rep on a warm heap (child lua5.4, glibc keeping freed memory)",
      wrep_ns, wrep_sp)
    -- benchlib.memcpy: median, min, max seconds of single copies.
    local med, lo, hi = benchlib.memcpy(n, math.min(1000, runs * iters))
    local cpy_ns, cpy_sp = med * 1e9, (hi - lo) / med * 100
    report(section, "baseline: memcpy into a reused buffer", cpy_ns, cpy_sp)

    local first = {}
    for _, d in ipairs(dirs) do
      local where, dir = d[1], d[2]
      local name = "bench-file-" .. where
      local store = ps.init_store("file", { name = name, dir = dir, cache_size = 0,
                                            clear = true })
      -- Each run puts iters objects under fresh random keys (the common
      -- case: overwriting a key is a different path on ext4, which flushes
      -- a file renamed over another), resolves each through a fresh proxy,
      -- then evicts them untimed.
      local put_samples, res_samples, raw_samples = {}, {}, {}
      local _, payload = store:_encode(data)
      local size = payload + 1   -- the envelope byte
      for r = 1, runs do
        local keys, t = {}, 0
        for i = 1, iters do
          local t0 = now()
          keys[i] = store:put(data)
          t = t + (now() - t0)
        end
        put_samples[r] = t / iters
        t = 0
        for i = 1, iters do
          local p = store:proxy_from_key(keys[i])
          local t0 = now()
          sink = ps.extract(p)
          t = t + (now() - t0)
          assert(#sink == n)
          p = nil
          drop()
        end
        res_samples[r] = t / iters
        for i = 1, iters do store:evict(keys[i]) end
        -- the floor, measured the same way: iters files just written, each
        -- read raw once (into a buffer paged in beforehand)
        for i = 1, iters do keys[i] = store:put(data) end
        t = 0
        for i = 1, iters do
          t = t + benchlib.file_read(dir .. "/" .. keys[i], size, 1) * 1e9
        end
        raw_samples[r] = t / iters
        for i = 1, iters do store:evict(keys[i]) end
      end
      local put_ns, put_sp = stats.median_spread(put_samples)
      report(section, "put, " .. where, put_ns, put_sp, "memcpy", put_ns / cpy_ns)
      local res_ns, res_sp = stats.median_spread(res_samples)
      report(section, "first resolve, " .. where, res_ns, res_sp,
        "string.rep (target 1.5)", res_ns / rep_ns)
      local raw_ns, raw_sp = stats.median_spread(raw_samples)
      report(section, "raw read of the stored file (floor), " .. where, raw_ns, raw_sp,
        "string.rep", raw_ns / rep_ns)
      report(section, "first resolve, " .. where .. ", against string.rep on a warm heap",
        res_ns, res_sp, "string.rep, warm heap (target 1.5)", res_ns / wrep_ns)
      report(section, "raw read of the stored file (floor), " .. where
        .. ", against string.rep on a warm heap", raw_ns, raw_sp,
        "string.rep, warm heap", raw_ns / wrep_ns)
      first[where] = res_ns
      store:close()
    end
    report(section, "first resolve, /dev/shm against disk", first["/dev/shm"], nil,
      "disk (target 1)", first["/dev/shm"] / first.disk)
    data = nil
    collectgarbage()
    ::continue::
  end
  for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d[2] .. "'") end
end

local function standalone(...)
  local wanted
  if select("#", ...) > 0 then
    wanted = {}
    for _, s in ipairs({ ... }) do wanted[s:upper()] = true end
  end
  print("| section | operation | median | spread (max-min)/median | vs baseline |")
  print("|---|---|---:|---:|---|")
  run(function(section, name, ns, spread, base, ratio)
    print(string.format("| %s | %s | %s | %s | %s |", section, name, human_ns(ns),
      spread and string.format("%.0f%%", spread) or "—",
      base and string.format("%.2f× %s", ratio, base) or ""))
    io.stdout:flush()
  end, wanted)
end

if arg and arg[0] and arg[0]:match("bench/file%.lua$") then
  standalone(...)
else
  return function(report) run(report) end
end
