-- Pluggable serializers: "native" (the default), "json" (lua-cjson) and a
-- pair of Lua functions, per store and per call; the serializer is recorded
-- with each stored object, so it resolves right in any process.
local ps = require "proxystore"
local shell = require "helpers.shell"

local function perr(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("table", type(err), tostring(err))
  assert.matches("^proxystore: [^\n]*$", tostring(err))
  return err
end

-- Runs code in a child lua5.4 (paths and the sanitizer settings come from
-- the environment spec/run.sh sets); returns its stdout and exit status.
local function child(dir, code)
  local path = dir .. "/child.lua"
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local p = io.popen("lua5.4 " .. path .. " 2>&1")
  local out = p:read("a")
  local _, _, status = p:close()
  os.remove(path)
  return out, status
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

describe("serializers", function()
  local dir, store

  before_each(function()
    dir = shell.tempdir("serializer")
    store = ps.init_store("file", { name = "ser-native", dir = dir .. "/objs" })
  end)

  after_each(function()
    for _, name in ipairs { "ser-native", "ser-json", "ser-custom" } do
      local s = ps.get_store(name)
      if s then s:close() end
    end
    shell.rmtree(dir)
  end)

  local function stored_bytes(key)
    local f = assert(io.open(dir .. "/objs/" .. key, "rb"))
    local s = f:read("a")
    f:close()
    return s
  end

  it("round trip JSON data through a json store, as JSON on disk", function()
    local js = ps.init_store("file", { name = "ser-json", dir = dir .. "/objs",
                                       serializer = "json" })
    local v = { name = "x", list = { 1.5, 2.5 }, nested = { ok = true } }
    local key = js:put(v)
    assert.are.same(v, js:get(key))
    assert.are.same(v, ps.extract(js:proxy_from_key(key)))
    -- one envelope byte, then the text another language can read
    local bytes = stored_bytes(key)
    assert.are.equal(2, bytes:byte(1))
    assert.are.same(v, require("cjson").decode(bytes:sub(2)))
  end)

  it("takes json per call on a native store, and reads it back by its byte", function()
    local key = store:put({ a = "b" }, { serializer = "json" })
    assert.are.equal('{"a":"b"}', stored_bytes(key):sub(2))
    assert.are.same({ a = "b" }, store:get(key))
    local p = store:proxy({ c = "d" }, { serializer = "json" })
    assert.are.equal("d", p.c)
    -- and the native default next to it
    local k2 = store:put({ 1, 2 })
    assert.are.equal(1, stored_bytes(k2):byte(1))
    assert.are.same({ 1, 2 }, store:get(k2))
  end)

  it("loses what the README says JSON loses", function()
    local key = store:put({ 1, 2.5, 1 << 60 }, { serializer = "json" })
    local back = store:get(key)
    assert.are.equal("float", math.type(back[1]))   -- integers come back as floats
    assert.are.equal(1.0, back[1])
    assert.are_not.equal(1 << 60, math.tointeger(back[3]))   -- beyond 2^53
    local holes = store:get(store:put({ 1, nil, 3 }, { serializer = "json" }))
    assert.are.equal("userdata", type(holes[2]))    -- cjson.null
    local e = perr(store.put, store, { [true] = 1 }, { serializer = "json" })
    assert.are.equal("serialization", e.kind)
  end)

  it("use a store's function pair for every object, and record it", function()
    local calls = 0
    local cs = ps.init_store("file", {
      name = "ser-custom", dir = dir .. "/objs",
      serializer = function(v) calls = calls + 1; return "<" .. v .. ">" end,
      deserializer = function(s) return s:match("^<(.*)>$") end,
    })
    local key = cs:put("payload")
    assert.are.equal("\3<payload>", stored_bytes(key))
    assert.are.equal("payload", cs:get(key))
    assert.are.equal("payload", ps.extract(cs:proxy_from_key(key)))
    assert.are.equal(1, calls)
    assert.are.equal("custom", cs:config().serializer)
  end)

  it("take a function pair per call", function()
    local p = store:proxy("abc", { serializer = function(v) return v:upper() end,
                                   deserializer = function(s) return s .. "!" end })
    assert.are.equal("ABC!", ps.extract(p))
  end)

  it("turn what a serializer raises into a serialization error keeping the cause", function()
    local js = ps.init_store("file", { name = "ser-json", dir = dir .. "/objs",
                                       serializer = "json" })
    local e = perr(js.put, js, { f = print })
    assert.are.equal("serialization", e.kind)
    assert.matches("json serializer failed", tostring(e), 1, true)
    assert.is_string(e.cause)
    local cause = { code = 7 }
    e = perr(store.put, store, 1, { serializer = function() error(cause) end })
    assert.are.equal("serialization", e.kind)
    assert.are.equal(cause, e.cause)
    -- corrupt JSON on disk: a serialization error at first use, bytes kept
    local key = js:put({ 1 })
    local f = assert(io.open(dir .. "/objs/" .. key, "wb"))
    f:write("\2{not json")
    f:close()
    local p = js:proxy_from_key(key)
    e = perr(ps.resolve, p)
    assert.are.equal("serialization", e.kind)
    assert.matches("json deserializer failed", tostring(e), 1, true)
    assert.is_false(ps.is_resolved(p))
    assert.are.equal("\2{not json", stored_bytes(key))
  end)

  it("resolve in another process with the serializer recorded with the object", function()
    local pj = store:proxy({ list = { 1.5, 2.5 } }, { serializer = "json" })
    local pn = store:proxy({ list = { 1, 2 } })
    local pc = store:proxy("x", { serializer = function(v) return v end,
                                  deserializer = function(s) return s end })
    local blobs = { hex(ps.serialize(pj)), hex(ps.serialize(pn)), hex(ps.serialize(pc)) }
    local out, status = child(dir, ([[
      local ps = require "proxystore"
      local function unhex(h) return (h:gsub("..", function(b) return string.char(tonumber(b, 16)) end)) end
      local pj, pn, pc = ps.deserialize(unhex(%q)), ps.deserialize(unhex(%q)), ps.deserialize(unhex(%q))
      io.write(math.type(pj.list[1]), " ", pj.list[2], " ", math.type(pn.list[1]), " ", pn.list[2])
      local ok, e = pcall(ps.resolve, pc)
      io.write(" | ", e.kind, " | ", tostring(e))
    ]]):format(blobs[1], blobs[2], blobs[3]))
    assert.are.equal(0, status, out)
    local got = out:match("^[^\n]*")
    assert.are.equal("float 2.5 integer 2 | serialization | ", got:match("^(.-| serialization | )"))
    assert.matches("give the store or the proxy a deserializer", got, 1, true)
  end)
end)
