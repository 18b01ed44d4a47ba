-- bench/codec.lua: the native codec (core.serialize + core.deserialize)
-- against lua-cjson encode + decode of the same data in the same run, and a
-- 100 MiB string against memcpy into a reused buffer.
--
-- Standalone: lua5.4 bench/codec.lua [runs]   (prints a markdown table;
-- runs defaults to 11, medians of that many timed runs after one warm-up)
-- Driver: loading it returns function(report) as bench/run.lua expects.
-- True when run as a script rather than required or loaded by a driver.
local is_main = not pcall(debug.getlocal, 4, 1)

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT")
if not ROOT then
  local src = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
  ROOT = src:match("^(.*)/bench/[^/]*$") or "."
end
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
package.cpath = BUILD .. "/lib/?.so;" .. package.cpath

local core = require "proxystore.core"
local benchlib = require "proxystore.bench"
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
local cjson = require "cjson"
local clock = core.monotonic

local RUNS = 11

local function floats(n)
  local t = {}
  for i = 1, n do t[i] = (i * 0.37) % 1000 + 0.001 end
  return t
end

local function records(n)
  local t = {}
  for i = 1, n do t[i] = { id = i, name = "x" .. i, score = i * 0.5 } end
  return t
end

return (function(bench)
  if is_main then
    local runs = tonumber(arg[1])
    if runs then RUNS = runs end
    print("| section | case | median ms | spread % | baseline | ratio |")
    print("|---|---|---|---|---|---|")
    bench(function(section, name, ns, spread, base, ratio)
      print(string.format("| %s | %s | %.2f | %s | %s | %s |", section, name,
        ns / 1e6, spread and string.format("%.0f", spread) or "—", base or "",
        ratio and string.format("%.2f", ratio) or ""))
    end)
  end
  return bench
end)(function(report)
  local function native(v) return core.deserialize(core.serialize(v)) end
  local function json(v) return cjson.decode(cjson.encode(v)) end

  local recs = records(1e5)
  local cases = {
    { "array of 1e6 floats", floats(1e6) },
    { "1e5 records {id,name,score}", recs },
  }
  local cjson_records   -- the bound row below divides it
  for _, c in ipairs(cases) do
    local name, data = c[1], c[2]
    local tj, sj = stats.time(RUNS, function() json(data) end)
    local tn, sn = stats.time(RUNS, function() native(data) end)
    report("codec", name .. ": cjson encode+decode", tj * 1e9, sj)
    report("codec", name .. ": native encode+decode", tn * 1e9, sn,
      "cjson encode+decode", tj / tn)
    if data == recs then cjson_records = tj end
  end
  cases = nil
  collectgarbage("collect")

  -- What the records cost at least through Lua's C API, whatever the
  -- format: decoding must build the 1e5 tables (with 1e5 new strings),
  -- encoding must read every record's identity, keys and values. The
  -- bound row is the ratio a codec running at both floors would reach.
  local tf, sf = stats.time(RUNS, function() benchlib.build_records(1e5) end)
  report("codec", "1e5 records: build through the C API (decode floor)", tf * 1e9, sf)
  local tr, sr = stats.time(RUNS, function() benchlib.read_records(recs) end)
  report("codec", "1e5 records: read through the C API (encode floor)", tr * 1e9, sr)
  report("codec", "1e5 records: both floors (best any C-API codec can do)",
    (tf + tr) * 1e9, nil, "cjson encode+decode", cjson_records / (tf + tr))
  local blob = core.serialize(recs)
  local te, se = stats.time(RUNS, function() core.serialize(recs) end)
  report("codec", "1e5 records: native encode alone", te * 1e9, se,
    "C-API floor", tr / te)
  local td, sd = stats.time(RUNS, function() core.deserialize(blob) end)
  report("codec", "1e5 records: native decode alone", td * 1e9, sd,
    "C-API floor", tf / td)
  recs, blob = nil, nil
  collectgarbage("collect")

  -- 100 MiB string. An ideal codec copies the bytes once each way, so the
  -- baseline for encode+decode is two memcpys of the same size into a
  -- reused buffer; ratio = fraction of memcpy bandwidth reached.
  local N = 100 * 1024 * 1024
  local s = string.rep("\1\2\3\4\5\6\7\0", N // 8)
  local tm, lo, hi = benchlib.memcpy(N, math.max(RUNS, 5))
  report("codec", "100 MiB memcpy (reused buffer)", tm * 1e9, (hi - lo) / tm * 100)
  local te, se = stats.time(math.max(RUNS, 5), function() blob = core.serialize(s) end)
  report("codec", "100 MiB string: native encode", te * 1e9, se, "memcpy", tm / te)
  local td, sd = stats.time(math.max(RUNS, 5), function() core.deserialize(blob) end)
  report("codec", "100 MiB string: native decode", td * 1e9, sd, "memcpy", tm / td)
  blob = nil
  local tb, sb = stats.time(math.max(RUNS, 5), function() native(s) end)
  report("codec", "100 MiB string: native encode+decode", tb * 1e9, sb,
    "2x memcpy", 2 * tm / tb)
end)
