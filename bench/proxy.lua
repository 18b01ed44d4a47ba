-- bench/proxy.lua: the cost of going through a resolved proxy, against the
-- direct operation on the target in the same run, and the cost of creating
-- and first using a small local-store proxy.
local ps = require "proxystore"
local clock = require("proxystore.core").monotonic

local RUNS = 9
local N = 2000000

-- Median and spread (%) of ns per iteration of body(n) over RUNS runs.
local function measure(body, n)
  n = n or N
  body(n // 10)   -- warm up (and promote hot proxies)
  local times = {}
  for i = 1, RUNS do
    local t0 = clock()
    body(n)
    times[i] = (clock() - t0) * 1e9 / n
  end
  table.sort(times)
  local median = times[(RUNS + 1) // 2]
  return median, (times[RUNS] - times[1]) / median * 100
end

return function(report)
  local obj = { x = 1, items = {} }
  function obj.get(self) return self.x end
  local p = ps.proxy(function() return obj end)
  ps.resolve(p)
  local num = ps.proxy(function() return 41 end)
  ps.resolve(num)

  local function pair(name, direct, via)
    local d, ds = measure(direct)
    local v, vs = measure(via)
    report("proxy", name .. " (direct)", d, ds)
    report("proxy", name .. " (proxy)", v, vs, "direct", v / d)
  end

  pair("field read",
    function(n) local t, s = obj, 0 for _ = 1, n do s = s + t.x end return s end,
    function(n) local t, s = p, 0 for _ = 1, n do s = s + t.x end return s end)
  pair("field write",
    function(n) local t = obj for i = 1, n do t.x = i end t.x = 1 end,
    function(n) local t = p for i = 1, n do t.x = i end t.x = 1 end)
  pair("method call",
    function(n) local t, s = obj, 0 for _ = 1, n do s = s + t:get() end return s end,
    function(n) local t, s = p, 0 for _ = 1, n do s = s + t:get() end return s end)
  pair("#p (table)",
    function(n) local t, s = obj, 0 for _ = 1, n do s = s + #t end return s end,
    function(n) local t, s = p, 0 for _ = 1, n do s = s + #t end return s end)
  pair("p + 1 (number)",
    function(n) local t, s = 41, 0 for _ = 1, n do s = t + 1 end return s end,
    function(n) local t, s = num, 0 for _ = 1, n do s = t + 1 end return s end)

  local store = ps.init_store("local", { name = "bench-proxy" })
  local small = { 1, 2, 3 }
  local c, cs = measure(function(n)
    for _ = 1, n do
      local q = store:proxy(small, { evict = true })
      local _ = q[1]
    end
  end, 200000)
  report("proxy", "local store: create + first use (evict=true)", c, cs)
  store:close()
end
