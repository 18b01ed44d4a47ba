-- bench/alloc.lua: a 100 MiB resolve under the three ways of allocating
-- its Lua string, each in fresh lua5.4 processes, interleaved round by
-- round so that load on the machine falls on all three alike:
--
--   plain     the state's own allocator (glibc malloc): what require gives
--   opt-in    ps.use_big_allocator(): huge-page blocks and a warm cache
--   tunable   GLIBC_TUNABLES=glibc.malloc.hugetlb=1: glibc advises huge
--             pages for its own mappings, no code
--
-- Each process puts 100 MiB in a file store on /dev/shm and resolves it
-- through fresh proxies (cache_size = 0): the first resolve of the
-- process (fresh memory) and the median of the next ones (memory freed by
-- the previous resolve may be reused). Baseline: plain, in the same run;
-- the ratio is time / plain's time (below 1: faster).
--
-- Standalone: lua5.4 bench/alloc.lua (prints a markdown table).
-- From bench/run.lua: return value is function(report).

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT")
if not ROOT then
  local src = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
  ROOT = src:match("^(.*)/bench/[^/]*$") or "."
end
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. package.path
package.cpath = BUILD .. "/lib/?.so;" .. package.cpath

local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")

local ROUNDS = os.getenv("PROXYSTORE_BENCH_QUICK") and 3 or 7
local REPEATS = 5       -- resolves after the first, per process
local SIZE = 100 << 20

-- The child: prints the first resolve's time, then the others', in ns.
local CHILD = [[
local ps = require "proxystore"
local core = require "proxystore.core"
if arg[1] == "opt-in" then assert(ps.use_big_allocator()) end
local dir = "/dev/shm/proxystore-bench-alloc-" .. core.random_key()
local store = ps.init_store("file", { name = "alloc", dir = dir, cache_size = 0, clear = true })
local key = store:put(string.rep("0123456789abcdef", ]] .. SIZE // 16 .. [[))
collectgarbage()
local out = {}
for i = 1, 1 + ]] .. REPEATS .. [[ do
  local p = store:proxy_from_key(key)
  local t0 = core.monotonic()
  local s = ps.extract(p)
  out[i] = string.format("%.0f", (core.monotonic() - t0) * 1e9)
  assert(#s == ]] .. SIZE .. [[)
  s, p = nil, nil
  collectgarbage()
end
store:close()
os.execute("rm -rf '" .. dir .. "'")
io.write(table.concat(out, " "), "\n")
]]

local MODES = {
  { "plain", "" },
  { "opt-in", "" },
  { "tunable", "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 " },
}

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function run(report)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(CHILD)
  f:close()
  local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"
  local cpath = BUILD .. "/lib/?.so;;"
  local first, rest = {}, {}
  for _, m in ipairs(MODES) do first[m[1]], rest[m[1]] = {}, {} end
  for _ = 1, ROUNDS do
    for _, m in ipairs(MODES) do
      local p = assert(io.popen(("env LUA_PATH=%s LUA_CPATH=%s %slua5.4 %s %s"):format(
        q(lpath), q(cpath), m[2], q(script), m[1])))
      local line = p:read("a")
      p:close()
      local times = {}
      for t in line:gmatch("%d+") do times[#times + 1] = tonumber(t) end
      assert(#times == 1 + REPEATS, "bench alloc: child said: " .. line)
      local name = m[1]
      first[name][#first[name] + 1] = times[1]
      local later = {}
      for i = 2, #times do later[#later + 1] = times[i] end
      rest[name][#rest[name] + 1] = (stats.median_spread(later))
    end
  end
  os.remove(script)
  local section = "100 MiB resolve, allocator"
  local base_first = stats.median_spread({ table.unpack(first.plain) })
  local base_rest = stats.median_spread({ table.unpack(rest.plain) })
  for _, m in ipairs(MODES) do
    local name = m[1]
    local med, sp = stats.median_spread(first[name])
    report(section, "first resolve in a fresh process, " .. name, med, sp,
      name ~= "plain" and "plain" or nil, name ~= "plain" and med / base_first or nil)
  end
  for _, m in ipairs(MODES) do
    local name = m[1]
    local med, sp = stats.median_spread(rest[name])
    report(section, "later resolves, " .. name, med, sp,
      name ~= "plain" and "plain" or nil, name ~= "plain" and med / base_rest or nil)
  end
end

if arg and arg[0] and arg[0]:match("bench/alloc%.lua$") then
  print("| section | case | median | spread | baseline | ratio |")
  print("|---|---|---:|---:|---|---:|")
  run(function(section, name, ns, spread, base, ratio)
    print(string.format("| %s | %s | %.2f ms | %.0f%% | %s | %s |", section, name,
      ns / 1e6, spread, base or "", ratio and string.format("%.2f", ratio) or ""))
    io.stdout:flush()
  end)
else
  return function(report) run(report) end
end
