-- bench/run.lua: the `make bench` driver. Runs each benchmark module and
-- prints one markdown table: median time per operation over several runs,
-- the spread (max-min over median), and the ratio against the baseline
-- measured in the same run.
--
--   lua5.4 bench/run.lua [section ...]     (sections: proxy codec file redis pool future)

local root = arg[0]:match("^(.*)/bench/run%.lua$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/lib/?.so;" .. package.cpath

local ALL = { "proxy", "codec", "file", "redis", "pool", "future" }
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

local failed = 0
for _, name in ipairs(wanted) do
  local path = root .. "/bench/" .. name .. ".lua"
  local chunk = loadfile(path)
  if not chunk then
    io.stderr:write("bench: no ", path, "\n")
    failed = failed + 1
  else
    local ok, err = pcall(function() chunk()(report) end)
    if not ok then
      io.stderr:write("bench ", name, " failed: ", tostring(err), "\n")
      failed = failed + 1
    end
  end
end
os.exit(failed == 0)
