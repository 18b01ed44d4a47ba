-- The native serializer: core.serialize / core.deserialize (docs/format.md).
local core = require "proxystore.core"
local ps = require "proxystore"
local redis = require "helpers.redis"

local serialize, deserialize = core.serialize, core.deserialize

local function rt(v) return deserialize(serialize(v)) end

local function bits(x) return string.pack("<d", x) end

-- Calls fn(...) expecting a proxystore serialization error; returns it.
local function serialization_error(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), "error is not an error object: " .. tostring(err))
  assert.are.equal("serialization", err.kind)
  assert.truthy(tostring(err):match("^proxystore: "), tostring(err))
  assert.is_nil(tostring(err):find("\n"), "error is not one line")
  return err
end

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    out[#out + 1] = string.char(n ~= 0 and (b | 0x80) or b)
  until n == 0
  return table.concat(out)
end

describe("core.serialize / core.deserialize", function()
  describe("scalars", function()
    it("round-trips nil and booleans", function()
      assert.is_nil(rt(nil))
      assert.are.equal(true, rt(true))
      assert.are.equal(false, rt(false))
    end)

    it("round-trips integers over the whole 64-bit range, as integers", function()
      for _, n in ipairs { 0, 1, 127, 128, 255, 256, -1, -127, -128, -129, 32767, 32768,
        -32768, -32769, 2147483647, 2147483648, -2147483648, -2147483649,
        1 << 40, -(1 << 40), 1 << 62, math.maxinteger, math.mininteger,
        math.maxinteger - 1, math.mininteger + 1 } do
        local back = rt(n)
        assert.are.equal(n, back)
        assert.are.equal("integer", math.type(back))
      end
    end)

    it("keeps floats that hold integral values floats", function()
      assert.are.equal("float", math.type(rt(3.0)))
      assert.are.equal("float", math.type(rt(2.0 ^ 63)))
    end)

    it("round-trips floats bit for bit: -0.0, infinities, NaN payloads, subnormals", function()
      local payload_nan = string.unpack("<d", "\1\2\3\0\0\0\248\127")
      local negative_nan = string.unpack("<d", "\0\0\0\0\0\0\248\255")
      for _, x in ipairs { 0.0, -0.0, 1.5, -2.25, math.pi, 1e308, -1e-308,
        4.9e-324, 1 / 0, -1 / 0, 0 / 0, payload_nan, negative_nan,
        math.maxinteger + 0.0 } do
        local back = rt(x)
        assert.are.equal("float", math.type(back))
        assert.are.equal(bits(x), bits(back))
      end
      assert.are.equal(-math.huge, 1 / rt(-0.0))
    end)

    it("round-trips strings binary-safe: empty, embedded NULs, every byte value", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      for _, s in ipairs { "", "a", "\0", "a\0b\0", all, all:rep(300),
        ("x"):rep(63), ("x"):rep(64), ("y"):rep(65535), ("z"):rep(65536) } do
        assert.are.equal(s, rt(s))
      end
    end)

    -- Short strings are copied in overlapping blocks whose sizes depend on
    -- the length: every length, every byte in a distinct place.
    it("round-trips strings of every length up to 80, as values and as keys", function()
      local t = {}
      for n = 0, 80 do
        local bytes = {}
        for i = 1, n do bytes[i] = string.char((i * 37 + n) % 256) end
        local s = table.concat(bytes)
        t[#t + 1] = s
        t[s] = n
      end
      local back = rt(t)
      for n = 0, 80 do
        local s = t[n + 1]
        assert.are.equal(s, back[n + 1], "value of length " .. n)
        assert.are.equal(n, back[s], "key of length " .. n)
      end
    end)

    it("writes small values compactly", function()
      assert.are.equal(4, #serialize(5))
      assert.are.equal(4, #serialize(true))
      assert.are.equal(5, #serialize(-5))
      assert.are.equal(7, #serialize("abc"))
      assert.are.equal(12, #serialize(1.5))
      assert.are.equal(12, #serialize(math.mininteger))
    end)

    it("writes the documented bytes (docs/format.md)", function()
      assert.are.equal("\250\1\0\9\3\0\129\65a\2", serialize({ 1, "a", true }))
      assert.are.equal("\250\1\0\9\0\1\65k\4\0\1", serialize({ k = 256 }))
      assert.are.equal("\250\1\0\7\0\0\0\0\0\0\248\63", serialize(1.5))
      local t = {}
      t.self = t
      assert.are.equal("\250\1\1\9\0\1\68self\10\0", serialize(t))
    end)
  end)

  describe("tables", function()
    it("round-trips arrays with holes, hashes and mixed tables", function()
      local t = rt({ 1, nil, 3, name = "n", nested = { deep = { 1, 2 } } })
      assert.are.equal(1, t[1])
      assert.is_nil(t[2])
      assert.are.equal(3, t[3])
      assert.are.equal("n", t.name)
      assert.are.same({ 1, 2 }, t.nested.deep)
      assert.are.same({}, rt({}))
    end)

    it("round-trips arrays built backwards, sparse arrays and negative indices", function()
      local back = {}
      for i = 300, 1, -1 do back[i] = i end
      assert.are.same(back, rt(back))
      local sparse = { [1] = 1, [2] = 2, [4] = 4, [1000] = 1000, [-1] = -1, [0] = 0 }
      assert.are.same(sparse, rt(sparse))
      local grown = { 1, 2, 3 }
      for i = 4, 1000 do grown[i] = i end
      grown[500] = nil
      assert.are.same(grown, rt(grown))
    end)

    it("keeps non-string keys: integers, floats, booleans, tables", function()
      local k = { "key table" }
      local t = rt({ [0] = "zero", [-5] = "neg", [1.5] = "float", [1e300] = "big",
        [true] = "yes", [false] = "no", [k] = "tk", [math.mininteger] = "min" })
      assert.are.equal("zero", t[0])
      assert.are.equal("neg", t[-5])
      assert.are.equal("float", t[1.5])
      assert.are.equal("big", t[1e300])
      assert.are.equal("yes", t[true])
      assert.are.equal("no", t[false])
      assert.are.equal("min", t[math.mininteger])
      local found
      for key, v in pairs(t) do
        if type(key) == "table" then found = { key, v } end
      end
      assert.are.same({ "key table" }, found[1])
      assert.are.equal("tk", found[2])
    end)

    it("keeps shared references: a table met twice comes back as one table", function()
      local shared = { 1, 2 }
      local t = rt({ a = shared, b = shared, list = { shared, shared } })
      assert.are.equal(t.a, t.b)
      assert.are.equal(t.a, t.list[1])
      assert.are.equal(t.a, t.list[2])
      assert.are.same({ 1, 2 }, t.a)
    end)

    it("keeps cycles, including through keys", function()
      local t = { name = "root" }
      t.self = t
      t.children = { { parent = t } }
      t[t] = t
      local r = rt(t)
      assert.are.equal(r, r.self)
      assert.are.equal(r, r.children[1].parent)
      assert.are.equal(r, r[r])
      assert.are.equal("root", r.name)
    end)

    it("writes a shared table once", function()
      local big = {}
      for i = 1, 1000 do big[i] = i end
      local once = #serialize({ big })
      local thrice = #serialize({ big, big, big })
      assert.is_true(thrice - once < 10)
    end)

    it("ignores metatables: the raw contents travel", function()
      local t = setmetatable({ x = 1 }, { __index = function() return "meta" end,
        __pairs = function() error("must not be called") end })
      local r = rt(t)
      assert.is_nil(getmetatable(r))
      assert.are.equal(1, r.x)
      assert.is_nil(r.y)
    end)

    it("round-trips a 1e6-element array", function()
      local t = {}
      for i = 1, 1e6 do t[i] = (i % 3 == 0) and i * 0.5 or i end
      local r = rt(t)
      assert.are.equal(1e6, #r)
      for i = 1, 1e6 do
        if r[i] ~= t[i] or math.type(r[i]) ~= math.type(t[i]) then
          error("element " .. i .. " differs")
        end
      end
    end)

    it("round-trips a table with more than 127 hash entries", function()
      local t = {}
      for i = 1, 5000 do t["k" .. i] = { i } end
      local r = rt(t)
      for i = 1, 5000 do assert(r["k" .. i][1] == i) end
    end)

    -- The decoder remembers recent short keys in slots chosen by a key's
    -- length and its first, middle and last bytes: keys alike in all four
    -- share a slot, and must still come back as themselves.
    it("keeps short keys apart that look alike to the key memo", function()
      local keys = { "", "a", "aXbca", "aYbca", "aZbca", "id", "ie", "name",
                     "score", string.rep("k", 63), string.rep("k", 62) .. "j",
                     "k" .. string.rep("x", 8) .. string.rep("z", 54),
                     "k" .. string.rep("y", 8) .. string.rep("z", 54),
                     "12345678", "12345679", "1234567890123456", "1234567890123457" }
      local records = {}
      for i = 1, 50 do
        local r = {}
        for j, k in ipairs(keys) do r[k] = i * 100 + j end
        records[i] = r
      end
      local back = rt(records)
      for i = 1, 50 do
        local n = 0
        for k, v in pairs(back[i]) do
          n = n + 1
          assert.are.equal(records[i][k], v, ("record %d, key %q"):format(i, k))
        end
        assert.are.equal(#keys, n)
      end
    end)
  end)

  it("round-trips a 100 MiB string", function()
    local s = ("\0\1\2\3\254\255ab"):rep(100 * 1024 * 1024 // 8)
    local blob = serialize(s)
    assert.is_true(#blob - #s < 16)
    assert.are.equal(s, deserialize(blob))
    assert.are.equal(s, rt({ s, n = 1 })[1])
  end)

  it("round-trips many large strings inside big and nested tables", function()
    local big = ("q"):rep(70000)
    local t = { list = {} }
    for i = 1, 300 do t["k" .. i] = (i % 50 == 0) and { big .. i, n = { big } } or i end
    for i = 1, 450 do t.list[i] = big .. i end
    local r = rt(t)
    for i = 1, 300 do
      if i % 50 == 0 then
        assert(r["k" .. i][1] == big .. i and r["k" .. i].n[1] == big, "k" .. i)
      else
        assert(r["k" .. i] == i, "k" .. i)
      end
    end
    for i = 1, 450 do assert(r.list[i] == big .. i, "list " .. i) end
  end)

  describe("refuses values it cannot carry, naming where they are", function()
    it("functions, threads and userdata at the top", function()
      local err = serialization_error(serialize, print)
      assert.are.equal("cannot serialize a function at value", err.message)
      err = serialization_error(serialize, coroutine.create(function() end))
      assert.are.equal("cannot serialize a thread at value", err.message)
      err = serialization_error(serialize, io.stdout)
      assert.are.equal("cannot serialize a userdata at value", err.message)
    end)

    it("deep inside tables, with the path", function()
      local cases = {
        { { items = { 1, 2, { cb = print } } }, "value.items[3].cb" },
        { { 1, { 2, { 3, print } } }, "value[2][2][2]" },
        { { ["a b"] = { f = print } }, 'value["a b"].f' },
        { { [true] = print }, "value[true]" },
        { { [1.5] = print }, "value[1.5]" },
        { { [-7] = { x = io.stdout } }, "value[-7].x" },
        { { list = { n = 1, [2] = coroutine.create(print) } }, "value.list[2]" },
      }
      for _, c in ipairs(cases) do
        local err = serialization_error(serialize, c[1])
        assert.truthy(err.message:find("at " .. c[2], 1, true),
          "expected path " .. c[2] .. " in: " .. err.message)
        assert.are.equal(#err.message, err.message:find("at " .. c[2], 1, true) + #c[2] + 2)
      end
    end)

    it("inside tables used as keys, and under awkward string keys", function()
      local err = serialization_error(serialize, { x = { [{ cb = print }] = 1 } })
      assert.are.equal("cannot serialize a function at value.x[<key>].cb", err.message)
      err = serialization_error(serialize, { ["a\0b\"c"] = print })
      assert.are.equal('cannot serialize a function at value["a\\0b\\34c"]', err.message)
    end)

    it("functions used as table keys", function()
      local err = serialization_error(serialize, { x = { [print] = 1 } })
      assert.are.equal("cannot serialize a function used as a table key in value.x",
        err.message)
    end)

    it("and keeps working after a refusal", function()
      for _ = 1, 3 do serialization_error(serialize, { 1, 2, print }) end
      assert.are.same({ 1, 2, 3 }, rt({ 1, 2, 3 }))
    end)
  end)

  describe("proxies", function()
    it("a store proxy travels as a reference, not its target, and resolves", function()
      local store = ps.init_store("local", { name = "codec-spec-local" })
      finally(function() store:close() end)
      local big = ("x"):rep(1000000)
      local p = store:proxy({ big, n = 1 })
      local blob = serialize(p)
      assert.is_true(#blob < 200, "blob of " .. #blob .. " bytes")
      local q = deserialize(blob)
      assert.is_true(ps.is_proxy(q))
      assert.is_false(ps.is_resolved(q))
      assert.are.equal(ps.key(p), ps.key(q))
      assert.are.equal(big, q[1])
      assert.are.equal(1, q.n)
    end)

    it("a proxy met twice comes back as one proxy, inside tables and cycles", function()
      local store = ps.init_store("local", { name = "codec-spec-shared" })
      finally(function() store:close() end)
      local p = store:proxy({ 7 })
      local t = { p, p, inner = { p } }
      t.self = t
      local r = deserialize(serialize(t))
      assert.is_true(ps.is_proxy(r[1]))
      assert.is_true(rawequal(r[1], r[2]))
      assert.is_true(rawequal(r[1], r.inner[1]))
      assert.are.equal(r, r.self)
      assert.are.equal(7, r[1][1])
    end)

    it("refuses a proxy whose factory is a Lua function, naming where", function()
      local p = ps.proxy(function() return 1 end)
      local err = serialization_error(serialize, { a = { 1, p } })
      assert.truthy(err.message:find("^cannot serialize the proxy at value%.a%[2%]: "), err.message)
      assert.truthy(err.message:find("factory is a Lua function", 1, true), err.message)
    end)

    it("refuses a malformed proxy reference", function()
      serialization_error(deserialize, "\250\1\0\11\9\0\0")
      serialization_error(deserialize, "\250\1\0\11\9\0\1\67key\129")
    end)

    it("a Redis store proxy on localhost fits in 200 bytes and resolves in another process", function()
      -- busted keeps only the last finally of a test: one does it all
      local srv, store, file, script
      finally(function()
        if file then os.remove(file) end
        if script then os.remove(script) end
        if store then store:close() end
        if srv then srv:stop() end
      end)
      srv = redis.start()
      store = ps.init_store("redis", { name = "codec-spec-redis", host = "localhost",
        port = srv.port })
      local p = store:proxy({ answer = 42, text = ("t"):rep(100000) })
      local blob = serialize(p)
      assert.is_true(#blob <= 200, "blob of " .. #blob .. " bytes")
      file = os.tmpname()
      local f = assert(io.open(file, "wb"))
      f:write(blob)
      f:close()
      local code = [[
        local ps = require "proxystore"
        local f = assert(io.open(arg[1], "rb"))
        local p = ps.deserialize(f:read("a"))
        f:close()
        io.write(tostring(ps.is_proxy(p)), " ", p.answer, " ", #p.text)
      ]]
      script = os.tmpname()
      f = assert(io.open(script, "w"))
      f:write(code)
      f:close()
      local pipe = assert(io.popen("lua5.4 " .. script .. " " .. file .. " 2>&1"))
      local out = pipe:read("a")
      pipe:close()
      assert.are.equal("true 42 100000", out)
    end)
  end)

  describe("nesting depth", function()
    local function nest(n)
      local root = {}
      local t = root
      for _ = 2, n do t[1] = {} t = t[1] end
      return root
    end

    it("round-trips 500 levels", function()
      local r = rt(nest(500))
      local depth = 0
      while r do depth = depth + 1 r = r[1] end
      assert.are.equal(500, depth)
    end)

    it("refuses to encode deeper than 512 levels, with a clear error", function()
      local err = serialization_error(serialize, nest(100000))
      assert.truthy(err.message:find("deeper than 512", 1, true))
    end)

    it("counts tables used as keys towards the limit", function()
      local t = {}
      for _ = 1, 600 do t = { [t] = true } end
      local err = serialization_error(serialize, t)
      assert.truthy(err.message:find("deeper than 512", 1, true))
    end)

    it("refuses to decode deeper than 512 levels", function()
      local blob = "\250\1\0" .. ("\9\1\0"):rep(100000) .. "\0"
      local err = serialization_error(deserialize, blob)
      assert.truthy(err.message:find("deeper than 512", 1, true))
    end)
  end)

  describe("hostile input", function()
    local sample = serialize({ 1, -1, 300, 70000, 1 << 40, 2.5, "short", ("long"):rep(40),
      true, false, { nested = { 1, 2 }, [1.5] = "f" }, k = { [true] = "t" } })

    it("decodes the sample", function()
      assert.are.equal("short", deserialize(sample)[7])
    end)

    it("refuses every truncation of a valid blob", function()
      for n = 0, #sample - 1 do
        serialization_error(deserialize, sample:sub(1, n))
      end
    end)

    it("errors or decodes bit-flipped and mutated blobs, never crashes", function()
      local rand = math.random
      math.randomseed(1234)
      local decoded, refused = 0, 0
      for i = 1, 20000 do
        local b = { sample:byte(1, -1) }
        local kind = i % 4
        local pos = rand(1, #b)
        if kind == 0 then
          b[pos] = b[pos] ~ (1 << rand(0, 7))
        elseif kind == 1 then
          b[pos] = rand(0, 255)
        elseif kind == 2 then
          table.insert(b, pos, rand(0, 255))
        else
          table.remove(b, pos)
        end
        local ok, err = pcall(deserialize, string.char(table.unpack(b)))
        if ok then
          decoded = decoded + 1
        else
          assert.are.equal("serialization", type(err) == "table" and err.kind, tostring(err))
          refused = refused + 1
        end
      end
      assert.is_true(decoded > 0 and refused > 0)
    end)

    it("refuses foreign data by its magic byte", function()
      local err = serialization_error(deserialize, '{"a":1}')
      assert.truthy(err.message:find("not proxystore native data", 1, true))
      serialization_error(deserialize, "")
      serialization_error(deserialize, "\250")
      serialization_error(deserialize, "\250\1")
      err = serialization_error(deserialize, "\250\1\2\0")
      assert.truthy(err.message:find("unknown header flags", 1, true))
    end)

    it("refuses a newer format version by name", function()
      local err = serialization_error(deserialize, "\250\2\0\0")
      assert.truthy(err.message:find("version 2 is newer", 1, true))
    end)

    it("refuses a string length of 2^60 before allocating", function()
      local err = serialization_error(deserialize, "\250\1\0\8" .. varint(1 << 60) .. "abc")
      assert.truthy(err.message:find("1152921504606846976 bytes claimed", 1, true))
    end)

    it("refuses a table claiming 2^40 entries before allocating", function()
      local err = serialization_error(deserialize, "\250\1\0\9" .. varint(1 << 40) .. "\0\0")
      assert.truthy(err.message:find("1099511627776 array", 1, true))
      err = serialization_error(deserialize, "\250\1\0\9\0" .. varint(1 << 40) .. "\0\0")
      assert.truthy(err.message:find("1099511627776 hash", 1, true))
    end)

    it("never reserves much more than the input for nested tables claiming its rest", function()
      -- 500 nested tables, each claiming an array as long as the bytes
      -- left: alone each claim passes the bytes-left check
      local levels, pad, parts = 500, 10000, {}
      for i = 1, levels do
        local left = (levels - i) * 4 + pad   -- bytes after this header
        parts[i] = string.char(9, (left & 0x7f) | 0x80, left >> 7, 0)
      end
      -- the innermost table's entries are nils; then the blob ends
      local blob = "\250\1\0" .. table.concat(parts) .. ("\0"):rep(pad)
      collectgarbage("collect")
      collectgarbage("stop")
      finally(function() collectgarbage("restart") end)
      local before = collectgarbage("count")
      serialization_error(deserialize, blob)
      local grew = (collectgarbage("count") - before) * 1024
      collectgarbage("restart")
      assert.is_true(grew < 200 * #blob, ("%d bytes for a %d-byte input"):format(grew, #blob))
    end)

    it("refuses varints longer than 64 bits", function()
      serialization_error(deserialize, "\250\1\0\8" .. ("\255"):rep(10) .. "\1")
      serialization_error(deserialize, "\250\1\0\8" .. ("\128"):rep(20))
    end)

    it("refuses unknown tags, trailing bytes, bad references and bad keys", function()
      local err = serialization_error(deserialize, "\250\1\0\12")
      assert.truthy(err.message:find("unknown tag 12", 1, true))
      err = serialization_error(deserialize, "\250\1\0\0\0")
      assert.truthy(err.message:find("unexpected byte", 1, true))
      serialization_error(deserialize, "\250\1\1\10\0")
      serialization_error(deserialize, "\250\1\1\9\1\0\10\1")
      -- a proxy whose reference table refers to the unfinished proxy
      err = serialization_error(deserialize, "\250\1\1\11\9\1\0\10\0")
      assert.truthy(err.message:find("not defined yet", 1, true))
      -- a reference in a blob whose header does not announce references
      err = serialization_error(deserialize, "\250\1\0\9\1\0\10\0")
      assert.truthy(err.message:find("says it has none", 1, true))
      serialization_error(deserialize, "\250\1\0\9\0\1\0\1")
      serialization_error(deserialize, "\250\1\0\9\0\1\7" .. string.pack("<d", 0 / 0) .. "\1")
      serialization_error(deserialize, "\250\1\0\11\129")
    end)

    it("accepts only strings", function()
      assert.has_error(function() deserialize(12) end)
      assert.has_error(function() deserialize() end)
    end)
  end)
end)
