-- Errors a Lua user can read: the user's line in the one line of every
-- error raised at a call or a proxy use (lua5.4 prints a table error with
-- no position and no traceback), argument errors worded as Lua's own.

local ps = require "proxystore"
local core = require "proxystore.core"
local shell = require "helpers.shell"

local SRC = debug.getinfo(1, "S").short_src
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

-- The error fn raises, and the line it ran on.
local function catch(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return e
end

local function here() return debug.getinfo(2, "l").currentline end
local function line_of(fn) return debug.getinfo(fn, "S").linedefined end

-- err names this spec's line as where it was raised.
local function assert_at(line, err)
  assert.is_true(ps.is_error(err), tostring(err))
  assert.equal(SRC .. ":" .. line, err.where)
  local s = tostring(err)
  assert.equal("proxystore: " .. SRC .. ":" .. line .. ": ", s:sub(1, #SRC + #tostring(line) + 15))
  assert.not_matches("\n", s, 1, true)
end

describe("an error's one line", function()
  local tmp
  setup(function() tmp = shell.tempdir("errors") end)
  teardown(function() shell.rmtree(tmp) end)

  it("names the user's line when lua5.4 runs the script (the peer prints it as is)", function()
    local f = assert(io.open(tmp .. "/miss.lua", "w"))
    f:write([[
local ps = require "proxystore"
local store = ps.init_store("local", { name = "m" })
local p = store:proxy_from_key("nope")
print(p.x)
]])
    f:close()
    -- the plain build's core: lua5.4 runs without the sanitizer preload
    local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"
    local rc, out = shell.sh(("cd %s && LUA_PATH=%s LUA_CPATH=%s lua5.4 miss.lua"):format(
      shell.quote(tmp), shell.quote(lpath), shell.quote(ROOT .. "/build/lib/?.so;;")))
    assert.equal(1, rc, out)
    assert.equal("lua5.4: proxystore: miss.lua:4: no object under key 'nope' in store 'm'\n", out)
  end)

  describe("names the line of the call that raised it", function()
    local store
    before_each(function() store = ps.init_store("local", { name = "where" }) end)
    after_each(function() store:close() end)

    it("for a proxy used with its key missing, and ps.extract of it", function()
      local p = store:proxy_from_key("absent")
      local e, line = catch(function() return (p.field) end), here()
      assert_at(line, e)
      assert.equal("missing_key", e.kind)
      e, line = catch(function() return (ps.extract(p)) end), here()
      assert_at(line, e)
    end)

    it("for a factory that raises, with its cause", function()
      local p = ps.proxy(function() error("no way") end)
      local e, line = catch(function() return #p end), here()
      assert_at(line, e)
      assert.equal("resolve", e.kind)
      assert.matches("no way", tostring(e), 1, true)
    end)

    it("for store calls with bad arguments or a closed store", function()
      local cases = {
        function() return (store:get({})) end,
        function() return (store:exists(true)) end,
        function() return (store:evict(false)) end,
        function() return (store:put(1, "not a table")) end,
        function() return (store:proxy()) end,
        function() return (store:proxy_from_key("")) end,
        function() return (store:get_batch("x")) end,
        function() return (store:put_batch(42)) end,
      }
      for _, fn in ipairs(cases) do
        local e = catch(fn)
        assert_at(line_of(fn), e)
        assert.equal("config", e.kind)
      end
      local other = ps.init_store("local", { name = "closing" })
      other:close()
      local e, line = catch(function() return (other:get("k")) end), here()
      assert_at(line, e)
      assert.equal("closed", e.kind)
    end)

    it("for init_store, URLs, to_proxy and the codec", function()
      local cases = {
        function() return (ps.init_store("local", { name = "x", bogus = 1 })) end,
        function() return (ps.init_store("bogus://x")) end,
        function() return (ps.init_store("nothing")) end,
        function() return (ps.init_store("redis", { port = "x" })) end,
        function() return (ps.deserialize("\255garbage")) end,
        function() return (ps.serialize({ f = print })) end,
        function() return (ps.proxy(42)) end,
        function() return (ps.resolve(42)) end,
      }
      for _, fn in ipairs(cases) do assert_at(line_of(fn), catch(fn)) end
    end)

    it("for a refused connection at init_store, with its address", function()
      -- port 1 on loopback: nothing listens there
      local e, line = catch(function() return (ps.init_store("redis", { name = "refused", port = 1, timeout = 2 })) end), here()
      assert_at(line, e)
      assert.equal("connection", e.kind)
      assert.equal("127.0.0.1:1", e.address)
      e = catch(ps.init_store, "unix:///nonexistent/redis.sock")
      assert.equal("connection", e.kind)
      assert.equal("/nonexistent/redis.sock", e.address)
    end)

    it("for a pool: its options, a task's error and a result's timeout", function()
      local pool = ps.pool { workers = 1, progress = false }
      finally(function() pool:close() end)
      local e, line = catch(function() return (ps.pool { worker = 2 }) end), here()
      assert_at(line, e)
      local f = pool:submit(function() error("task broke") end)
      e, line = catch(function() return (f:result()) end), here()
      assert_at(line, e)
      -- raised again from another line, it names that one
      e, line = catch(function() return (f:result()) end), here()
      assert_at(line, e)
      e, line = catch(function() return (pool:map(function(x) error(x) end, { "m" })) end), here()
      assert_at(line, e)
      e, line = catch(function() return (pool:submit(42)) end), here()
      assert_at(line, e)
      local go = os.tmpname()
      os.remove(go)
      local slow = pool:submit(function(path)   -- ends when told to
        local t = os.time() + 60
        while not io.open(path) and os.time() < t do os.execute("sleep 0.01") end
      end, go)
      e, line = catch(function() return (slow:result(0)) end), here()
      io.open(go, "w"):close()
      assert_at(line, e)
      assert.equal("timeout", e.kind)
      slow:result()
      os.remove(go)
    end)
  end)

  it("keeps kind, message and the other fields as they are, and says where in `where`", function()
    local e = core.error("timeout", "too slow", { address = "h:1", key = "k" })
    assert.equal("timeout", e.kind)
    assert.equal("too slow", e.message)
    assert.equal("h:1", e.address)
    assert.matches("^" .. SRC:gsub("%p", "%%%0") .. ":%d+$", e.where)
  end)

  it("quotes a cause once, and an error cause as its message", function()
    local inner = core.error("missing_key", "no object under key 'a'")
    local outer = core.error("task", "task 1 failed: " .. inner.message, { cause = inner })
    local s = tostring(outer)
    local _, n = s:gsub("no object under key", "")
    assert.equal(1, n, s)
    assert.not_matches("proxystore: proxystore:", s, 1, true)
    local wrapped = core.error("pool", "fetching", { cause = inner })
    assert.matches("fetching: no object under key 'a'$", tostring(wrapped))
    local t = core.error("task", "x", { cause = { code = 42, why = "no" } })
    assert.matches("x: {code = 42, why = \"no\"}$", tostring(t))
  end)
end)

describe("errors of the pool, queue and stream modules", function()
  it("name the user's line, never a line of proxystore's own Lua files", function()
    local e = catch(function() ps.pool { worker = 2 } end)
    assert_at(here() - 1, e)
    e = catch(function() ps.pool { queue = "redis://127.0.0.1:1", bogus = 1 } end)
    assert_at(here() - 1, e)
    e = catch(function() ps.stream.producer { bogus = 1 } end)
    assert_at(here() - 1, e)
  end)
end)

describe("argument errors", function()
  local store
  before_each(function() store = ps.init_store("local", { name = "args" }) end)
  after_each(function() store:close() end)

  -- The peer is Lua's own: ("x"):find(v) checks a string argument of a
  -- method call as store:evict(v) does.
  local calls = {
    evict = function(v) return (store:evict(v)) end,
    exists = function(v) return (store:exists(v)) end,
    get = function(v) return (store:get(v)) end,
  }
  for _, v in ipairs { {}, true, io.stdout, print, "thread" } do
    it("read as Lua's own for a " .. (v == "thread" and v or type(v)), function()
      if v == "thread" then v = coroutine.create(print) end
      local lua = catch(function() return ("x"):find(v) end)
      lua = lua:gsub("^[^:]+:%d+: ", "")
      for method, fn in pairs(calls) do
        local ours = catch(fn, v)
        assert.equal("config", ours.kind)
        assert_at(line_of(fn), ours)
        assert.equal((lua:gsub("'find'", "'" .. method .. "'")), ours.message)
      end
    end)
  end

  it("name a proxy that has no key by its type's __name, as luaL_typeerror does", function()
    local p = ps.proxy(function() return "k" end)
    local e = catch(store.evict, store, p)
    assert.equal("config", e.kind)
    assert.equal("bad argument #2 to '?' (string expected, got proxystore.Proxy)", e.message)
    e = catch(function() return (store:evict(p)) end)
    assert.equal("bad argument #1 to 'evict' (string expected, got proxystore.Proxy)", e.message)
    assert.is_false(ps.is_resolved(p))
  end)

  it("take a number as a key, as Lua's string arguments do", function()
    store:put("twelve", { key = "12" })
    assert.equal("twelve", store:get(12))
    assert.is_true(store:exists(12))
    assert.equal("twelve", store:get_batch({ 12 })[1])
    store:evict(12)
    assert.is_false(store:exists("12"))
  end)

  it("name a library function by its module, as lauxlib does", function()
    local e = catch(ps.deserialize, 42)
    assert.equal("config", e.kind)
    assert.matches("bad argument #1 to '[%w.]*deserialize' %(string expected, got number%)", e.message)
  end)
end)

describe("store:evict, :exists and :get", function()
  it("accept a store proxy and use its key", function()
    local store = ps.init_store("local", { name = "by-proxy" })
    finally(function() store:close() end)
    local p = store:proxy({ v = 1 })
    assert.is_true(store:exists(p))
    assert.equal(1, store:get(p).v)
    store:evict(p)
    assert.is_false(store:exists(p))
    assert.equal("gone", store:get(p, "gone"))
    assert.is_false(store:exists(ps.key(p)))
  end)
end)
