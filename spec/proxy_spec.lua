-- Proxies: transparency, laziness, failure and retry, garbage collection.
local ps = require "proxystore"

-- A canonical text for a value, so results from a target and from its proxy
-- can be compared (tables by content, other references by identity).
local function canon(v, seen)
  v = ps.extract(v)
  local t = type(v)
  if t == "table" then
    seen = seen or {}
    if seen[v] then return "<cycle>" end
    seen[v] = true
    local keys = {}
    for k in next, v do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do
      parts[#parts + 1] = canon(k, seen) .. "=" .. canon(rawget(v, k), seen)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "number" then
    return math.type(v) .. ":" .. string.format("%.17g", v)
  elseif t == "string" then
    return string.format("%q", v)
  end
  return t .. ":" .. tostring(v)
end

local function outcome(ok, ...)
  if not ok then return "error" end
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = canon((select(i, ...))) end
  return "ok(" .. table.concat(parts, ";") .. ")"
end

local Point = {}
Point.__index = Point
Point.__add = function(a, b) return setmetatable({x = a.x + b.x}, Point) end
Point.__eq = function(a, b) return a.x == b.x end
Point.__lt = function(a, b) return a.x < b.x end
Point.__le = function(a, b) return a.x <= b.x end
Point.__len = function() return 99 end
Point.__tostring = function(p) return "Point(" .. p.x .. ")" end
Point.__call = function(self, y) return self.x + y end
Point.__concat = function(a, b)
  return (type(a) == "table" and "P" or tostring(a)) .. (type(b) == "table" and "P" or tostring(b))
end
function Point:get() return self.x end
function Point:set(v) self.x = v end

local tmpfile = io.tmpfile()

-- Each target kind is made fresh for every operation.
local targets = {
  table = function() return {10, 20, 30, x = 1, name = "n", nested = {a = {b = 2}}} end,
  object = function() return setmetatable({x = 5}, Point) end,
  string = function() return "hello" end,
  integer = function() return 42 end,
  float = function() return 2.5 end,
  ["function"] = function() return function(a, b) return (a or 0) + (b or 0), "two" end end,
  userdata = function() return tmpfile end,
  ["true"] = function() return true end,
  ["false"] = function() return false end,
  ["nil"] = function() return nil end,
}

-- Operations Lua lets a userdata intercept; mutating ones report the state
-- of the target afterwards.
local ops = {
  ["index field"] = function(v) return v.x end,
  ["index integer"] = function(v) return v[2] end,
  ["index nested"] = function(v) return v.nested.a.b end,
  ["assign field"] = function(v, t) v.y = 7; return v.y, t end,
  ["call"] = function(v) return v(1, 2) end,
  ["method upper"] = function(v) return v:upper() end,
  ["method get/set"] = function(v, t) v:set(8); return v:get(), t end,
  ["method on userdata"] = function(v) return v:seek("set", 0) end,
  ["length"] = function(v) return #v end,
  ["concat right"] = function(v) return v .. "!" end,
  ["concat left"] = function(v) return "<" .. v end,
  ["add"] = function(v) return v + 1 end,
  ["add left"] = function(v) return 1 + v end,
  ["sub"] = function(v) return v - 3 end,
  ["mul"] = function(v) return v * 2 end,
  ["div"] = function(v) return v / 4 end,
  ["mod"] = function(v) return v % 5 end,
  ["pow"] = function(v) return v ^ 2 end,
  ["idiv"] = function(v) return v // 3 end,
  ["unm"] = function(v) return -v end,
  ["band"] = function(v) return v & 6 end,
  ["bor"] = function(v) return v | 1 end,
  ["bxor"] = function(v) return v ~ 3 end,
  ["shl"] = function(v) return v << 2 end,
  ["shr"] = function(v) return v >> 1 end,
  ["bnot"] = function(v) return ~v end,
  ["lt number"] = function(v) return v < 50, 50 < v end,
  ["le number"] = function(v) return v <= 42, 42 <= v end,
  ["lt string"] = function(v) return v < "m", "a" < v end,
  ["add object"] = function(v) return v + setmetatable({x = 1}, Point) end,
  ["tostring"] = function(v) return tostring(v) end,
  ["format %s"] = function(v) return string.format("[%s]", v) end,
  ["pairs"] = function(v)
    local acc = {}
    for k, x in pairs(v) do acc[#acc + 1] = tostring(k) .. "=" .. canon(x) end
    table.sort(acc)
    return table.concat(acc, " ")
  end,
  ["ipairs"] = function(v)
    local acc = {}
    for i, x in ipairs(v) do acc[i] = x end
    return acc
  end,
  ["table.concat"] = function(v) return table.concat(v, ",") end,
  ["table.unpack"] = function(v) return table.unpack(v) end,
  ["table.insert"] = function(v, t) table.insert(v, 40); return t end,
  ["table.remove"] = function(v, t) return table.remove(v), t end,
  ["table.sort"] = function(v, t) table.sort(v, function(a, b) return a > b end); return t end,
}

-- The three ways a proxy reaches its target: a Lua factory, a store
-- reference (the local store keeps the very object), and a hot table proxy
-- that has its own metatable (used through C often enough to be promoted).
local store = ps.init_store("local", { name = "proxy-spec" })
local makers = {
  ["function proxy"] = function(t) return ps.proxy(function() return t end) end,
  ["store proxy"] = function(t) return store:proxy(t) end,
  ["hot proxy"] = function(t)
    local p = ps.proxy(function() return t end)
    if type(t) == "table" then
      for _ = 1, 20 do local _ = p[1] end
      assert.are.equal(t, debug.getmetatable(p).__index)   -- promoted
    end
    return p
  end,
}

describe("a proxy", function()
  teardown(function() store:close() end)

  describe("behaves as its target", function()
    local names = {}
    for name in pairs(targets) do names[#names + 1] = name end
    table.sort(names)
    local opnames = {}
    for name in pairs(ops) do opnames[#opnames + 1] = name end
    table.sort(opnames)
    for _, mname in ipairs { "function proxy", "store proxy", "hot proxy" } do
     for _, tname in ipairs(names) do
      it("for every operation on a " .. tname .. " target (" .. mname .. ")", function()
        for _, oname in ipairs(opnames) do
          local direct_target = targets[tname]()
          local via_target = targets[tname]()
          local p = makers[mname](via_target)
          local expected = outcome(pcall(ops[oname], direct_target, direct_target))
          local got = outcome(pcall(ops[oname], p, via_target))
          -- identities differ between the two instances; compare shapes
          expected = expected:gsub("0x%x+", "ADDR")
          got = got:gsub("0x%x+", "ADDR")
          assert.are.equal(expected, got, tname .. " / " .. oname)
        end
      end)
     end
    end
  end)

  it("hides its metatable, whose metamethods trust their first argument", function()
    local p = ps.proxy(function() return { 1 } end)
    assert.are.equal("proxystore.Proxy", getmetatable(p))
    assert.is_nil(getmetatable(p).__index)   -- a string's fields, not ours
    assert.has_error(function() setmetatable(p, {}) end)
    assert.are.equal(1, p[1])
  end)

  it("compares equal to another proxy of the same or an equal target", function()
    local t = {}
    assert.is_true(ps.proxy(function() return t end) == ps.proxy(function() return t end))
    local a = ps.proxy(function() return setmetatable({x = 1}, Point) end)
    local b = ps.proxy(function() return setmetatable({x = 1}, Point) end)
    assert.is_true(a == b)
    assert.is_false(a == ps.proxy(function() return setmetatable({x = 2}, Point) end))
    assert.is_true(ps.proxy(function() return tmpfile end) == tmpfile)
  end)

  it("passes itself as self to methods of a table target", function()
    local obj = {n = 0}
    function obj:inc() self.n = self.n + 1; return self end
    local p = ps.proxy(function() return obj end)
    assert.are.equal(p, p:inc())
    assert.are.equal(1, obj.n)
  end)

  it("keeps forwarding after a hot table proxy gets its own metatable", function()
    local t = setmetatable({}, {__index = function(_, k) return k .. "?" end})
    local p = ps.proxy(function() return t end)
    for i = 1, 100 do p[i] = i * 2 end
    for i = 1, 100 do assert.are.equal(i * 2, p[i]) end
    assert.are.equal("zz?", p.zz)
    assert.are.equal(100, #p)
    assert.is_true(ps.is_proxy(p))
    assert.is_true(ps.is_resolved(p))
    assert.are.equal(t, ps.extract(p))
  end)

  it("resolves once, at first use", function()
    local calls = 0
    local p = ps.proxy(function() calls = calls + 1; return {v = 1} end)
    assert.are.equal(0, calls)
    assert.is_true(ps.is_proxy(p))
    assert.is_false(ps.is_resolved(p))
    assert.matches("unresolved", ps.repr(p))
    assert.are.equal(0, calls)
    assert.are.equal(1, p.v)
    assert.are.equal(1, p.v)
    local _ = #p, tostring(p)
    assert.are.equal(1, calls)
    assert.is_true(ps.is_resolved(p))
  end)

  it("resolves nil and false targets once", function()
    local calls = 0
    local pn = ps.proxy(function() calls = calls + 1; return nil end)
    local pf = ps.proxy(function() calls = calls + 1; return false end)
    assert.are.equal("nil", ps.type(pn))
    assert.is_nil(ps.extract(pn))
    assert.are.equal("boolean", ps.type(pf))
    assert.is_false(ps.extract(pf))
    assert.are.equal("false", tostring(pf))
    ps.extract(pn); ps.extract(pf)
    assert.are.equal(2, calls)
  end)

  it("accepts a callable table as factory", function()
    local f = setmetatable({}, {__call = function() return "made" end})
    assert.are.equal("MADE", ps.proxy(f):upper())
  end)

  it("refuses a factory that is not callable", function()
    assert.has_error(function() ps.proxy(42) end)
    assert.has_error(function() ps.proxy({}) end)
  end)

  it("stays unresolved when its factory raises, and retries on next use", function()
    local fail = true
    local p = ps.proxy(function()
      if fail then error("backend down") end
      return {ok = true}
    end)
    local ok, err = pcall(function() return p.ok end)
    assert.is_false(ok)
    assert.are.equal("resolve", err.kind)
    assert.matches("backend down", tostring(err.cause))
    assert.matches("^proxystore: .*backend down", tostring(err))
    assert.is_false(ps.is_resolved(p))
    fail = false
    assert.is_true(p.ok)
    assert.is_true(ps.is_resolved(p))
  end)

  it("keeps a proxystore error from its factory as it is", function()
    local p = ps.proxy(function() error(require("proxystore.core").error("timeout", "slow")) end)
    local ok, err = pcall(ps.resolve, p)
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
  end)

  it("refuses to be used by its own factory", function()
    local p
    p = ps.proxy(function() return p.x end)
    local ok, err = pcall(ps.resolve, p)
    assert.is_false(ok)
    assert.are.equal("resolve", err.kind)
    assert.is_false(ps.is_resolved(p))
  end)

  it("is collected with its target when dropped", function()
    local weak = setmetatable({}, {__mode = "v"})
    do
      local p = ps.proxy(function() return {big = string.rep("x", 1000)} end)
      weak.target = ps.extract(p)
      weak.proxy = p
      for i = 1, 20 do local _ = p.big, i end   -- promote it too
    end
    collectgarbage(); collectgarbage()
    assert.is_nil(weak.proxy)
    assert.is_nil(weak.target)
  end)

  it("is collected unresolved along with its factory", function()
    local weak = setmetatable({}, {__mode = "k"})
    do
      local f = function() return 1 end
      weak[f] = true
      local _ = ps.proxy(f)
    end
    collectgarbage(); collectgarbage()
    assert.is_nil(next(weak))
  end)
end)

describe("the proxy functions", function()
  it("is_proxy is false for anything else", function()
    for _, v in ipairs {1, "s", {}, print, io.stdout, true} do
      assert.is_false(ps.is_proxy(v))
    end
    assert.is_false(ps.is_proxy(nil))
    assert.is_false(ps.is_resolved({}))
  end)

  it("resolve returns the proxy, resolved", function()
    local p = ps.proxy(function() return 3 end)
    assert.are.equal(p, ps.resolve(p))
    assert.is_true(ps.is_resolved(p))
  end)

  it("extract and type pass non-proxies through", function()
    local t = {}
    assert.are.equal(t, ps.extract(t))
    assert.are.equal("number", ps.type(1))
    assert.are.equal("string", ps.type(ps.proxy(function() return "s" end)))
  end)

  it("key is nil for a function proxy, repr never resolves", function()
    local p = ps.proxy(function() error("must not run") end)
    assert.is_nil(ps.key(p))
    assert.matches("^proxystore.Proxy%(factory, unresolved%)$", ps.repr(p))
    assert.is_false(ps.is_resolved(p))
  end)

  it("resolve_async is a no-op on a function proxy", function()
    local calls = 0
    local p = ps.proxy(function() calls = calls + 1; return 1 end)
    assert.are.equal(p, ps.resolve_async(p))
    assert.are.equal(0, calls)
  end)

  it("serializing a function proxy is a clear error", function()
    local ok, err = pcall(ps.serialize, ps.proxy(function() return 1 end))
    assert.is_false(ok)
    assert.are.equal("serialization", err.kind)
  end)
end)
