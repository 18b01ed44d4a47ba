-- bench/run.lua: the `make bench` driver. Runs each benchmark module and
-- prints one markdown table: median time per operation over several runs,
-- the spread (max-min over median), and the ratio against the baseline
-- measured in the same run.
--
--   lua5.4 bench/run.lua [section ...]
--       (sections: proxy codec file alloc redis cluster pool queue stream
--        future sweep)
--
-- Every section runs in a fresh process of its own, as a user's program
-- would: sections run one after another in one process measured what the
-- earlier ones left behind (the queue section's round trip: 2.2-2.5x its
-- floor after the other sections, 1.1-1.3x alone). The pool and sweep
-- sections are what a user of the `proxystore` binary gets: they run in a
-- child build/bin/proxystore process (whose Lua state has the big-block
-- allocator); the others in a child lua5.4 (bench/child.lua), as a module
-- user's. Children print their rows tab-separated; other lines they print
-- (the sweep's own table) come after the main table.

local root = arg[0]:match("^(.*)/bench/run%.lua$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/lib/?.so;" .. package.cpath

local ALL = { "proxy", "codec", "file", "alloc", "redis", "cluster", "pool", "queue", "stream",
  "future", "sweep" }
local wanted = #arg > 0 and arg or ALL

local function fmt_time(ns)
  if ns >= 1e6 then return string.format("%.2f ms", ns / 1e6) end
  if ns >= 1e3 then return string.format("%.2f µs", ns / 1e3) end
  return string.format("%.1f ns", ns)
end

print("| section | case | median | spread | baseline | ratio |")
print("|---|---|---|---|---|---|")
io.stdout:flush()
local function report(section, name, ns, spread, baseline, ratio)
  -- A row computed from other rows has no spread of its own.
  print(string.format("| %s | %s | %s | %s | %s | %s |", section, name,
    fmt_time(ns), spread and string.format("%.0f%%", spread) or "—", baseline or "",
    ratio and string.format("%.2f", ratio) or ""))
  io.stdout:flush()
end

-- Sections run by the host binary.
local UNDER_BINARY = { pool = true, sweep = true }
local after = {}   -- lines printed after the table

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function run_child(name, path)
  local build = os.getenv("PROXYSTORE_BUILD") or (root .. "/build")
  local runner = UNDER_BINARY[name] and q(build .. "/bin/proxystore") .. " " .. q(path) .. " --rows"
    or "lua5.4 " .. q(root .. "/bench/child.lua") .. " " .. q(path)
  local cmd = ("env LUA_PATH=%s LUA_CPATH=%s %s"):format(
    q(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"), q(build .. "/lib/?.so;;"), runner)
  local p = assert(io.popen(cmd))
  for line in p:lines() do
    if line:find("\t", 1, true) then
      local f = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
      report(f[1], f[2], tonumber(f[3]), tonumber(f[4]), f[5] ~= "" and f[5] or nil,
        tonumber(f[6]))
    else
      after[#after + 1] = line
    end
  end
  return p:close()
end

local failed = 0
for _, name in ipairs(wanted) do
  local path = root .. "/bench/" .. name .. ".lua"
  local chunk = loadfile(path)
  if not chunk then
    io.stderr:write("bench: no ", path, "\n")
    failed = failed + 1
  elseif not run_child(name, path) then
    io.stderr:write("bench ", name, " failed\n")
    failed = failed + 1
  end
end
for _, line in ipairs(after) do print(line) end
os.exit(failed == 0)
