-- fuzz/make_corpus.lua: writes the decoder fuzzer's seed corpus.
--   LUA_CPATH="build/lib/?.so;;" lua5.4 fuzz/make_corpus.lua fuzz/corpus
-- Small valid blobs of every type, then a few broken ones (truncated, bad
-- tags, lying sizes) so the fuzzer starts next to the error paths too.
local core = require "proxystore.core"
local dir = assert(arg[1], "usage: make_corpus.lua DIR")

local seeds = {}
local function add(name, blob) seeds[#seeds + 1] = { name, blob } end
local function value(name, v) add(name, core.serialize(v)) end

value("nil", nil)
value("true", true)
value("false", false)
for _, n in ipairs { 0, 1, 127, 128, -1, -128, -129, 255, 32767, -32768, 65536,
  2147483648, -2147483649, 1 << 40, math.mininteger, math.maxinteger } do
  value("int" .. n, n)
end
for i, f in ipairs { 0.0, -0.0, 1.5, -2.25, 1 / 0, -1 / 0, 0 / 0, 1e-310, math.pi } do
  value("float" .. i, f)
end
value("str-empty", "")
value("str-short", "hello")
value("str-63", ("a"):rep(63))
value("str-64", ("b"):rep(64))
value("str-300", ("c"):rep(300))
value("str-binary", "\0\1\2\255\254\0zz\0")
value("tbl-empty", {})
value("tbl-array", { 1, 2, 3, "x", true, 1.5 })
value("tbl-holes", { 1, nil, 3, nil, 5 })
value("tbl-hash", { a = 1, b = "two", c = { d = false } })
value("tbl-mixed", { 10, 20, x = "y", [1.5] = "f", [true] = "t", [false] = 0 })
value("tbl-tablekey", { [{ 1 }] = { 2 } })
local shared = { 1 }
value("tbl-shared", { shared, shared, { s = shared } })
local cyc = { name = "c" }
cyc.self = cyc
cyc.list = { cyc, cyc }
value("tbl-cycle", cyc)
local deep = {}
local t = deep
for _ = 1, 40 do t.n = {} t = t.n end
value("tbl-deep", deep)
local many = {}
for i = 1, 200 do many["k" .. i] = i end
value("tbl-200keys", many)
local arr = {}
for i = 1, 300 do arr[i] = i * 0.25 end
value("tbl-floats", arr)

-- A proxy reference, as a store proxy encodes: TAG_PROXY then the table.
local ref = core.serialize({
  config = { name = "fz", kind = "local", cache_size = 16, serializer = "native" },
  key = ("0"):rep(32), flags = 0,
})
add("proxy", "\250\1\0\11" .. ref:sub(4))
add("proxy-shared", "\250\1\1\9\2\0\11" .. ref:sub(4) .. "\10\1")

-- Broken on purpose.
local good = core.serialize({ 1, "two", { three = 3.0 } })
add("bad-truncated", good:sub(1, #good - 3))
add("bad-magic", "{" .. good:sub(2))
add("bad-version", "\250\2" .. good:sub(3))
add("bad-flags", "\250\1\6" .. good:sub(4))
add("bad-tag", "\250\1\0\12")
add("bad-trailing", good .. "\0")
add("bad-strlen-2^60", "\250\1\0\8\128\128\128\128\128\128\128\128\16abc")
add("bad-table-2^40", "\250\1\0\9\128\128\128\128\128\32\0\0")
add("bad-varint", "\250\1\0\8\255\255\255\255\255\255\255\255\255\255\1")
add("bad-ref", "\250\1\1\9\1\0\10\5")
add("bad-ref-unflagged", "\250\1\0\9\1\0\10\0")
add("bad-ref-unfinished-proxy", "\250\1\1\11\9\1\0\10\0")
add("bad-nilkey", "\250\1\0\9\0\1\0\1")
add("bad-nankey", "\250\1\0\9\0\1\7\0\0\0\0\0\0\248\127\1")
add("bad-proxy-notable", "\250\1\0\11\129")

for i, s in ipairs(seeds) do
  local f = assert(io.open(string.format("%s/%02d-%s", dir, i, s[1]), "wb"))
  f:write(s[2])
  f:close()
end
print(#seeds .. " seeds written to " .. dir)
