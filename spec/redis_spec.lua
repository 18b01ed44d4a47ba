-- The Redis store, against a real redis-server started by helpers.redis.
local ps = require "proxystore"
local shell = require "helpers.shell"
local core = require "proxystore.core"
local redis = require "helpers.redis"
local child = require "helpers.child"

local now = core.monotonic

-- Runs fn and returns the error it raises (fails if it does not raise).
local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a Lua chunk in a fresh lua5.4 process (same LUA_PATH/LUA_CPATH and
-- sanitizer settings as this run); returns its stdout and exit status.
local function run_lua(code, env)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local p = assert(io.popen((env or "") .. " lua5.4 " .. shell_quote(file) .. " 2>&1"))
  local out = p:read("a")
  local ok, _, status = p:close()
  os.remove(file)
  return out, ok and 0 or status
end

local function lua_literal(s)
  return string.format("%q", s)
end

-- A relay in front of port that moves bytes on a fixed schedule
-- (spec/c/trickle_relay.c): at most up bytes to the server and down bytes
-- back per tick of pause_ms (0: all there are). Returns {port=, stop=}.
local relay_bin
local function trickle(port, up, down, pause_ms)
  local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
  if not relay_bin then
    local dir = shell.tempdir("relay")
    relay_bin = dir .. "/trickle_relay"
    local rc, out = shell.sh(("cd %s && ${CC:-cc} -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE "
      .. "-O1 -o %s spec/c/trickle_relay.c"):format(shell.quote(ROOT), shell.quote(relay_bin)))
    assert(rc == 0, out)
  end
  local portfile = os.tmpname()
  os.remove(portfile)
  local f = assert(io.popen(("%s%s %d %s %d %d %d %d >/dev/null 2>&1 & echo $!"):format(
    shell.CLEAN, shell.quote(relay_bin), shell.my_pid(), shell.quote(portfile), port, up,
    down, pause_ms)))
  local pid = tonumber(f:read("a"):match("%d+"))
  f:close()
  local relay_port
  local t0 = now()
  while not relay_port and now() - t0 < 30 do
    local pf = io.open(portfile)
    relay_port = pf and tonumber(pf:read("a"))
    if pf then pf:close() else os.execute("sleep 0.01") end
  end
  os.remove(portfile)
  local function stop() os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  if not relay_port then stop() end
  assert(relay_port, "the relay did not start")
  return { port = relay_port, stop = stop }
end

describe("the redis store", function()
  local srv
  local stores = {}
  local serial = 0

  -- calls of a command since CONFIG RESETSTAT
  local function calls(name)
    local info = srv:cli("INFO", "commandstats")
    return tonumber(info:match("cmdstat_" .. name .. ":calls=(%d+)")) or 0
  end

  setup(function() srv = redis.start() end)
  teardown(function()
    for _, s in ipairs(stores) do pcall(s.close, s) end
    if srv then srv:stop() end
  end)
  after_each(function()
    for _, s in ipairs(stores) do pcall(s.close, s) end
    stores = {}
    -- a spec that failed between killing and restarting the server
    -- must not take every later spec with it
    if srv.pid then srv:resume() else srv:restart() end
  end)

  -- A store on srv with a unique name and prefix; opts override. Its
  -- timeout is generous: on a loaded machine an ordinary call may take
  -- seconds, and only specs about timeouts want a short one.
  local function new_store(opts)
    serial = serial + 1
    local o = { name = "redis-spec-" .. serial, host = srv.host, port = srv.port,
                timeout = 30, prefix = "spec" .. serial .. ":", cache_size = 0 }
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.path then o.host, o.port = nil, nil end
    local s = ps.init_store("redis", o)
    stores[#stores + 1] = s
    return s
  end

  -- fn(), tried again while it fails with a timeout: for calls to a
  -- running server through a store with a short timeout, which a loaded
  -- machine can make late (what such specs test is the hang, not this).
  local function eventually(fn, ...)
    for _ = 1, 19 do
      local res = table.pack(pcall(fn, ...))
      if res[1] then return table.unpack(res, 2, res.n) end
      if not (ps.is_error(res[2]) and res[2].kind == "timeout") then error(res[2], 0) end
    end
    return fn(...)
  end

  -- A store with a short timeout, for a server about to hang, sharing the
  -- prefix of `like` (a store with the usual timeout that does the
  -- set-up): its first PING goes to a running server, hence eventually.
  local function hang_store(like, opts)
    local o = { prefix = like:config().prefix }
    for k, v in pairs(opts) do o[k] = v end
    return eventually(new_store, o)
  end

  describe("basic operations", function()
    for _, transport in ipairs { "tcp", "unix" } do
      it("puts, gets, tests and evicts values over " .. transport, function()
        local s = new_store(transport == "unix" and { path = srv.path } or nil)
        local bin = "a\0b\255" .. string.rep("x", 5000)
        local k1 = s:put(bin)
        local k2 = s:put({ 1, 2, { x = "y" }, n = 1.5 })
        local k3 = s:put(false)
        assert.is_string(k1)
        assert.equal(bin, s:get(k1))
        assert.same({ 1, 2, { x = "y" }, n = 1.5 }, s:get(k2))
        assert.equal(false, s:get(k3, "default"))
        assert.is_true(s:exists(k1))
        s:evict(k1)
        assert.is_false(s:exists(k1))
        assert.is_nil(s:get(k1))
        assert.equal("dflt", s:get(k1, "dflt"))
        s:evict(k1)       -- absent: not an error
      end)
    end

    it("opens from a unix:// URL with a db", function()
      serial = serial + 1
      local s = ps.init_store("unix://" .. srv.path .. "?db=4", { name = "unixurl" .. serial })
      stores[#stores + 1] = s
      s:put("sock", { key = "via-unix" })
      assert.equal("1", srv:cli("-n", "4", "EXISTS", "via-unix"):match("%d+"))
      assert.equal("sock", s:get("via-unix"))
    end)

    it("stores under the prefix and in the chosen db", function()
      local s = new_store { prefix = "pfx:", db = 3 }
      local k = s:put("hello", { key = "mine" })
      assert.equal("mine", k)
      assert.equal("1", srv:cli("-n", "3", "EXISTS", "pfx:mine"):match("%d+"))
      assert.equal("0", srv:cli("-n", "0", "EXISTS", "pfx:mine"):match("%d+"))
      assert.equal("hello", s:get("mine"))
    end)

    it("handles values of 0 bytes to several MiB", function()
      local s = new_store()
      for _, n in ipairs { 0, 1, 1000, 70000, 3 * 1024 * 1024 + 7 } do
        local v = string.rep("q", n)
        assert.equal(v, s:get(s:put(v)))
      end
    end)
  end)

  describe("options", function()
    it("a db outside 0..2^31-1 is a config error, never another db", function()
      for _, db in ipairs { -1, 2147483648, 4294967296, 4294967299, 1.5 } do
        local err = error_of(new_store, { db = db })
        assert.equal("config", err.kind)
        assert.matches("'db'", tostring(err), 1, true)
      end
      -- the core checks a config that did not come through the options
      local err = error_of(core.new_store, { name = "raw-db", kind = "redis",
        host = srv.host, port = srv.port, db = 4294967296, timeout = 2 })
      assert.equal("config", err.kind)
      assert.is_nil(ps.get_store("raw-db"))
      local s = new_store { db = 15 }    -- the last of the server's 16
      assert.equal("x", s:get(s:put("x")))
    end)

    it("an empty host or path is a config error, not the default address", function()
      for _, opt in ipairs { "host", "hostname", "path" } do
        local err = error_of(ps.init_store, "redis", { name = "empty-" .. opt,
          [opt] = "", port = opt ~= "path" and srv.port or nil, timeout = 2 })
        assert.equal("config", err.kind)
        assert.matches("'" .. opt .. "' must not be empty", tostring(err), 1, true)
        assert.is_nil(ps.get_store("empty-" .. opt))
      end
      -- the core checks a config that did not come through the options
      for _, opt in ipairs { "host", "path" } do
        local err = error_of(core.new_store, { name = "raw-empty", kind = "redis",
          [opt] = "", port = srv.port, timeout = 2 })
        assert.equal("config", err.kind)
        assert.matches("'" .. opt .. "' must not be empty", tostring(err), 1, true)
        assert.is_nil(ps.get_store("raw-empty"))
      end
    end)

    it("a username without a password is a config error, not a silent no-AUTH", function()
      local err = error_of(new_store, { username = "alice" })
      assert.equal("config", err.kind)
      assert.matches("password", tostring(err), 1, true)
      err = error_of(ps.init_store, ("redis://alice@127.0.0.1:%d"):format(srv.port),
                     { name = "user-no-pass" })
      assert.equal("config", err.kind)
    end)
  end)

  describe("ProxyStore's init_*_backend API", function()
    it("init_redis_backend takes hostname and port, and to_proxy goes through Redis", function()
      local s = ps.init_redis_backend { hostname = srv.host, port = srv.port,
                                        prefix = "seed:", timeout = 30 }
      stores[#stores + 1] = s
      assert.equal("redis", s.kind)
      assert.equal(srv.host, s:config().host)
      local p = ps.to_proxy({ seed = "api" })
      assert.is_true(ps.is_proxy(p))
      assert.equal("1", srv:cli("EXISTS", "seed:" .. ps.key(p)):match("%d+"))
      assert.equal("api", p.seed)
      local q = ps.to_proxy("once", { key = "seed-once", evict = true })
      assert.equal("once", ps.extract(q))
      assert.equal("0", srv:cli("EXISTS", "seed:seed-once"):match("%d+"))
    end)

    it("init_redis_backend reuses the store for the same options and refuses others", function()
      local opts = { name = "seed-reuse", host = srv.host, port = srv.port, db = 1,
                     timeout = 30 }
      local s = ps.init_redis_backend(opts)
      stores[#stores + 1] = s
      assert.equal(s, ps.init_redis_backend(opts))
      assert.equal(s, ps.init_redis_backend { name = "seed-reuse", hostname = srv.host,
                                              port = srv.port, db = 1, timeout = 30 })
      local other = redis.start()
      finally(function() other:stop() end)
      for _, change in ipairs { { port = other.port }, { db = 2 }, { prefix = "x:" },
                                { timeout = 31 }, { cache_size = 99 } } do
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        for k, v in pairs(change) do o[k] = v end
        local err = error_of(ps.init_redis_backend, o)
        assert.equal("config", err.kind)
        assert.matches("already registered with other options", tostring(err), 1, true)
        assert.matches((next(change)), tostring(err), 1, true)
      end
      -- the registered store is untouched and still the default
      assert.equal(s, ps.get_store("seed-reuse"))
      ps.to_proxy("still here", { key = "seed-reuse-k" })
      assert.equal("still here", s:get("seed-reuse-k"))
    end)
  end)

  describe("proxies", function()
    it("resolve lazily, once, through the store", function()
      local s = new_store()
      local p = s:proxy({ a = 1, b = "two" })
      assert.is_true(ps.is_proxy(p))
      assert.is_false(ps.is_resolved(p))
      assert.equal("two", p.b)
      assert.is_true(ps.is_resolved(p))
      local q = s:proxy_from_key(ps.key(p))
      assert.equal(1, q.a)
    end)

    it("raise missing_key naming key, store and address, and stay unresolved", function()
      local s = new_store()
      local p = s:proxy_from_key("no-such-key")
      local err = error_of(function() return p.x end)
      assert.equal("missing_key", err.kind)
      assert.equal("no-such-key", err.key)
      assert.equal(s.name, err.store)
      assert.matches(tostring(srv.port), err.address, 1, true)
      assert.matches("^proxystore:", tostring(err))
      assert.is_false(ps.is_resolved(p))
      s:put("now here", { key = "no-such-key" })
      assert.equal("now here", ps.extract(p))
      assert.is_true(ps.is_resolved(p))
    end)

    it("with evict delete the object once resolved", function()
      local s = new_store()
      local p = s:proxy("once", { evict = true })
      local k = ps.key(p)
      assert.is_true(s:exists(k))
      assert.equal("once", ps.extract(p))
      assert.is_false(s:exists(k))
    end)
  end)

  describe("puts", function()
    -- A key the store makes (128 random bits) holds nothing yet, so its
    -- put sends the SET alone; a key given may hold an object in chunks,
    -- whose header is read in the same round trip so that they go too.
    it("under a key the store made send no read of an old object; under a key given, one", function()
      local s = new_store()
      local made = {}
      finally(function() for _, k in ipairs(made) do s:evict(k) end end)
      srv:cli("CONFIG", "RESETSTAT")
      local k1 = s:put(("a"):rep(100000))
      made[1] = k1
      local p = s:proxy(("b"):rep(100000))
      made[2] = ps.key(p)
      local k3 = s:_put_encoded((s:_encode("c")))
      made[3] = k3
      assert.equal(0, calls("getrange"))
      assert.equal(3, calls("set"))
      assert.equal(("a"):rep(100000), ps.extract(s:proxy_from_key(k1)))
      assert.equal(("b"):rep(100000), ps.extract(p))
      assert.equal("c", s:get(k3))
      srv:cli("CONFIG", "RESETSTAT")
      assert.equal(k1, s:put("d", { key = k1 }))
      assert.equal(1, calls("getrange"))
      assert.equal(1, calls("set"))
      assert.equal("d", s:get(k1))
    end)

    it("in a batch under keys the store made send no read of old objects; under keys given, one each", function()
      local s = new_store()
      local made, given = {}, { "pb-given-1", "pb-given-2", "pb-given-3" }
      finally(function()
        for _, k in ipairs(made) do s:evict(k) end
        for _, k in ipairs(given) do s:evict(k) end
      end)
      local values = { ("a"):rep(1000), { t = "b" }, ("c"):rep(70000) }
      local function reads_back(keys)
        local got = s:get_batch(keys)
        for i = 1, #values do assert.same(values[i], got[i]) end
      end
      srv:cli("CONFIG", "RESETSTAT")
      made = s:put_batch(values)
      assert.equal(0, calls("getrange"))
      assert.equal(3, calls("set"))
      local px = s:proxy_batch(values)
      for _, p in ipairs(px) do made[#made + 1] = ps.key(p) end
      assert.equal(0, calls("getrange"))
      assert.equal(6, calls("set"))
      reads_back { made[1], made[2], made[3] }
      assert.same(values[2], ps.extract(px[2]))
      srv:cli("CONFIG", "RESETSTAT")
      s:put_batch(values, { keys = given })
      assert.equal(3, calls("getrange"))
      assert.equal(3, calls("set"))
      reads_back(given)
    end)

    it("of a small object under a key given delete the chunks of the large one it replaces", function()
      local prefix = "shrink:"
      assert.equal("done", run_lua(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { port = %d, prefix = %q })
        s:put(string.rep("z", 2500), { key = "k" })
        io.write("done")
      ]]):format(srv.port, prefix), "PROXYSTORE_REDIS_CHUNK_SIZE=1000"))
      local function chunks()
        local n = 0
        for _ in srv:cli("KEYS", prefix .. "k:chunk:*"):gmatch("[^\n]+") do n = n + 1 end
        return n
      end
      local s = new_store { prefix = prefix }
      finally(function() s:evict("k") end)
      assert.equal(3, chunks())
      s:put("small", { key = "k" })
      assert.equal(0, chunks())
      assert.equal("small", s:get("k"))
    end)
  end)

  describe("single-use proxies", function()
    it("read their object, then delete it with no wait of their own, wake-up list included", function()
      local s = new_store()
      local p = s:proxy(("v"):rep(100000), { evict = true })
      local k = ps.key(p)
      srv:cli("RPUSH", s:config().prefix .. k .. ":wake", "1")   -- as a future leaves it
      srv:cli("CONFIG", "RESETSTAT")
      assert.equal(100000, #ps.extract(p))
      -- the store's next call reads the DEL's reply first: the server has
      -- run it by then
      assert.is_false(s:exists(k))
      -- one read (a GETRANGE of the first piece: the whole value), then
      -- one DEL of both keys sent once the value was read; no evict of its
      -- own after the read (GETRANGE of the old header, DEL, DEL)
      assert.equal(0, calls("get"))
      assert.equal(1, calls("getrange"))
      assert.equal(1, calls("del"))
      assert.equal("0\n", srv:cli("EXISTS", s:config().prefix .. k .. ":wake"))
      local m = s:metrics()
      assert.equal(1, m.get.count)
      assert.equal(1, m.evict.count)
      -- many in a row on one connection: each DEL's reply is read before
      -- the next GET's, none taken for another's
      local ps_ = {}
      for i = 1, 20 do ps_[i] = s:proxy(("x"):rep(i * 1000), { evict = true }) end
      for i = 1, 20 do assert.equal(i * 1000, #ps.extract(ps_[i])) end
      assert.equal("y", s:get(s:put("y")))
      for i = 1, 20 do assert.is_false(s:exists(ps.key(ps_[i]))) end
    end)

    -- The object is deleted only once this process holds it: a single-use
    -- resolve cut off while the value is in flight (here a 1 s timeout
    -- against a relay that moves 1000 bytes every 20 ms) leaves it there.
    it("keep their object when the read fails part way", function()
      local direct = new_store {}
      local big = string.rep("0123456789abcdef", 64 * 1024)   -- 1 MiB
      local k = direct:put(big)
      local relay = trickle(srv.port, 0, 1000, 20)
      finally(relay.stop)
      local s = new_store { port = relay.port, timeout = 1,
                            prefix = direct:config().prefix }
      local p = s:proxy_from_key(k, { evict = true })
      local err = error_of(ps.resolve, p)
      assert.equal("timeout", err.kind, tostring(err))
      assert.is_true(direct:get(k) == big, "the object is gone")
    end)

    it("put the object back when its bytes do not deserialize", function()
      local s = new_store()
      local p = s:proxy({ n = 1 }, { evict = true, serializer = function() return "n=1" end,
                                     deserializer = function() error("bad day") end })
      local k = ps.key(p)
      local err = error_of(ps.resolve, p)
      assert.equal("serialization", err.kind)
      assert.matches("bad day", tostring(err), 1, true)
      assert.is_false(ps.is_resolved(p))
      -- nothing was lost: the object is there for a proxy that can read it
      assert.is_true(s:exists(k))
      local q = s:proxy_from_key(k, { evict = true, deserializer = function(b) return b end })
      assert.equal("n=1", ps.extract(q))
      assert.is_false(s:exists(k))
    end)

    it("delete nothing that proxystore did not write", function()
      local s = new_store { prefix = "su:" }
      srv:cli("SET", "su:plain", "not ours")
      srv:cli("HSET", "su:hash", "f", "v")
      local err = error_of(ps.resolve, s:proxy_from_key("plain", { evict = true }))
      assert.matches("not hold a proxystore object", tostring(err), 1, true)
      assert.equal("not ours\n", srv:cli("GET", "su:plain"))
      err = error_of(ps.resolve, s:proxy_from_key("hash", { evict = true }))
      assert.matches("not a string", tostring(err), 1, true)
      assert.equal("v\n", srv:cli("HGET", "su:hash", "f"))
      local missing = error_of(ps.resolve, s:proxy_from_key("none", { evict = true }))
      assert.equal("missing_key", missing.kind)
      assert.equal("x", ps.extract(s:proxy("x", { evict = true })))   -- connection fine
    end)

    it("are evicted also where scripts are refused", function()
      srv:cli("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-@scripting")
      local ok, e = pcall(function()
        local s = new_store { username = "noscript", password = "pw" }
        local p = s:proxy(("w"):rep(70000), { evict = true })
        local k = ps.key(p)
        assert.equal(70000, #ps.extract(p))
        assert.is_false(s:exists(k))
      end)
      srv:cli("ACL", "DELUSER", "noscript")
      assert(ok, e)
    end)

    it("of chunked objects delete every chunk", function()
      local code = ([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", {host = "127.0.0.1", port = %d, prefix = "suc:"})
        local big = string.rep("0123456789", 8000)
        local p = s:proxy({ big, "x" }, { evict = true })
        local v = ps.extract(p)
        assert(v[1] == big and v[2] == "x")
        assert(not s:exists(ps.key(p)))
        io.write("done")
      ]]):format(srv.port)
      assert.equal("done", run_lua(code, "PROXYSTORE_REDIS_CHUNK_SIZE=1000"))
      assert.equal("\n", srv:cli("KEYS", "suc:*"))
    end)
  end)

  describe("large strings", function()
    it("are stored as the same bytes as serialize makes, read back whole", function()
      local s = new_store()
      local big = ("ab"):rep(50000)
      local v = { big, x = 1, y = { big .. "z", ("q"):rep(70000), "short" } }
      local k = s:put(v)
      local raw = core.redis_groups { host = srv.host, port = srv.port }
      local ok, bytes = pcall(raw.call, raw, "GET", s:config().prefix .. k)
      raw:close()
      assert(ok, bytes)
      -- 'P', 16 bytes of version, the envelope byte, then the codec's bytes
      assert.equal("P", bytes:sub(1, 1))
      assert.equal(ps.serialize(v), bytes:sub(19))
      assert.same(v, s:get(k))
      assert.equal(big, s:get(s:put(big)))
    end)

    it("over the chunk size are chunked as before", function()
      local code = ([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", {host = "127.0.0.1", port = %d, prefix = "lsc:"})
        local big = string.rep("9876543210", 7000)
        s:put({ big, big .. "!" }, { key = "two" })
        local v = s:get("two")
        assert(v[1] == big and v[2] == big .. "!")
        io.write("done")
      ]]):format(srv.port)
      assert.equal("done", run_lua(code, "PROXYSTORE_REDIS_CHUNK_SIZE=1000"))
      local n = 0
      for _ in srv:cli("KEYS", "lsc:two:chunk:*"):gmatch("[^\n]+") do n = n + 1 end
      assert.is_true(n >= 140)
    end)

    it("too many for the chunk size are written in larger chunks", function()
      -- 8-byte chunks: 600,000 bytes would be 75,000 of them, over the
      -- 65,536 a reader accepts; the writer takes 10-byte ones instead.
      local code = ([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", {host = "127.0.0.1", port = %d, prefix = "many:"})
        local big = string.rep("0123456789", 60000)
        s:put(big, { key = "k" })
        assert(s:get("k") == big)
        io.write("done")
      ]]):format(srv.port)
      assert.equal("done", run_lua(code, "PROXYSTORE_REDIS_CHUNK_SIZE=8"))
      local hdr = srv:cli("GETRANGE", "many:k", "17", "-1")
      local total, n, size = hdr:match("^(%d+) (%d+) (%d+)")
      total, n, size = tonumber(total), tonumber(n), tonumber(size)
      assert.is_true(total > 600000, hdr)
      assert.equal(10, size)
      assert.equal((total + 9) // 10, n)
      srv:cli("EVAL", "for _, k in ipairs(redis.call('KEYS', 'many:*')) do redis.call('DEL', k) end", "0")
    end)

    -- Reads key (under prefix) in a child through a relay moving bytes on a
    -- fixed schedule (relay = { up, down, pause_ms }, as trickle takes);
    -- once the server has counted one call of the command asked, runs
    -- replace(). Returns what the reader saw: "<bytes> whole <char>", or
    -- "<bytes> mixed" for a value read half old, half new.
    local function read_while_replaced(prefix, key, relay, asked, replace)
      local r = trickle(srv.port, relay[1], relay[2], relay[3])
      local reader
      finally(function()
        r.stop()
        if reader then reader:kill() end
      end)
      srv:cli("CONFIG", "RESETSTAT")
      reader = child.spawn(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { port = %d, prefix = %q, cache_size = 0, timeout = 60 })
        local v = ps.extract(s:proxy_from_key(%q))
        io.write(#v, " ", v == v:sub(1, 1):rep(#v) and "whole " .. v:sub(1, 1) or "mixed")
      ]]):format(r.port, prefix, key))
      local t0 = now()
      while calls(asked) < 1 and now() - t0 < 60 do redis.sleep(0.005) end
      assert.equal(1, calls(asked), "the reader never asked")
      replace()
      local out, status = reader:finish()
      reader = nil
      assert.equal(0, status, out)   -- (its pid line is read by spawn)
      return out
    end

    -- 13 MiB, each MiB of other bytes: a piece out of place shows
    local function thirteen()
      local parts = {}
      for i = 1, 13 do parts[i] = string.char(64 + i):rep(1024 * 1024 - 1) .. "\n" end
      return table.concat(parts)
    end

    -- A value as proxystore writes one that fits a single key: 'P', 16
    -- bytes of version, the envelope byte (1: native), then what serialize
    -- makes. Values over 6 MiB are written in chunks; plain ones this large
    -- are what a store with larger chunks (or an older proxystore) wrote.
    local function put_plain(s, key, v)
      local raw = core.redis_groups { host = srv.host, port = srv.port }
      local bytes = "P" .. core.random_key():sub(1, 16) .. "\1" .. ps.serialize(v)
      local ok, err = pcall(raw.call, raw, "SET", s:config().prefix .. key, bytes)
      raw:close()
      assert(ok, err)
    end

    it("plain over 6 MiB are read in pieces, each in its place: resolve, single use, futures", function()
      local s = new_store()
      local big = thirteen()
      put_plain(s, "plain13", big)
      srv:cli("CONFIG", "RESETSTAT")
      assert.is_true(ps.extract(s:proxy_from_key("plain13")) == big)
      -- the first 6 MiB, its length, two pieces of 4 MiB and less, the
      -- header again; no GET of the whole
      assert.equal(0, calls("get"))
      assert.equal(4, calls("getrange"))
      assert.equal(1, calls("strlen"))
      put_plain(s, "plain13-once", big)
      local p = s:proxy_from_key("plain13-once", { evict = true })
      assert.is_true(ps.extract(p) == big)
      assert.is_false(s:exists("plain13-once"))
      local f = s:future()
      local fp = f:proxy()
      put_plain(s, f.key, big)
      assert.is_true(ps.extract(fp) == big)
      assert.is_true(f:result(30) == big)
      -- exactly one piece, and a byte more
      for _, n in ipairs { 6 * 1024 * 1024 - 18, 6 * 1024 * 1024 - 17 } do
        local v = big:sub(1, n)
        put_plain(s, "edge" .. n, v)
        assert.is_true(s:get("edge" .. n) == v, n)
      end
    end)

    -- Pieces are no atomic read: a put between two of them must never give
    -- a mix of two values. A relay slows the reader's replies (128 KiB
    -- every 20 ms: its first piece takes about a second), and the value is
    -- replaced once the server has answered its first GETRANGE.
    it("plain over 6 MiB are never read half old, half new when replaced between pieces", function()
      local direct = new_store {}
      local n = 7 * 1024 * 1024
      local k = "torn-plain"
      put_plain(direct, k, ("a"):rep(n))
      local out = read_while_replaced(direct:config().prefix, k, { 0, 128 * 1024, 20 },
        "getrange", function() put_plain(direct, k, ("b"):rep(n)) end)
      assert.equal(n .. " whole b", out)   -- (its pid line is read by spawn)
      assert.equal(1, calls("get"))   -- read again whole, once the mix showed
    end)

    local function chunk_keys(s, key)
      local n = 0
      for _ in srv:cli("KEYS", s:config().prefix .. key .. ":chunk:*"):gmatch("[^\n]+") do
        n = n + 1
      end
      return n
    end

    it("over 6 MiB are stored in chunks of 2 MiB, each read in its place: resolve, single use, futures, leases", function()
      local s = new_store()
      local big = thirteen()
      local k = s:put(big)
      assert.equal(7, chunk_keys(s, k))   -- 13 MiB in chunks of 2 MiB
      srv:cli("CONFIG", "RESETSTAT")
      assert.is_true(ps.extract(s:proxy_from_key(k)) == big)
      assert.equal(1, calls("getrange"))   -- the first piece: the header
      assert.equal(7, calls("get"))        -- then each chunk once
      local p = s:proxy({ big, "tail" }, { evict = true })
      local key = ps.key(p)
      assert.same({ big, "tail" }, ps.extract(p))
      assert.is_false(s:exists(key))
      assert.equal(0, chunk_keys(s, key))
      local f = s:future()
      f:set(big)
      assert.is_true(ps.extract(f:proxy()) == big)
      local lt <close> = ps.lifetime { lease = 60 }
      local leased = s:put(big, { lifetime = lt })
      for key_name in srv:cli("KEYS", s:config().prefix .. leased .. "*"):gmatch("[^\n]+") do
        local ttl = tonumber(srv:cli("PTTL", key_name))
        assert.is_true(ttl > 0 and ttl <= 60000, key_name .. " " .. ttl)
      end
      s:evict(k)
      assert.equal(0, chunk_keys(s, k))
      -- the largest plain value, and a byte more (a string of n bytes, n
      -- near 6 MiB, is stored as n + 9: the envelope byte, then the codec's
      -- n + 8; a plain value and its 17-byte header fit 6 MiB)
      for _, n in ipairs { 6 * 1024 * 1024 - 26, 6 * 1024 * 1024 - 25 } do
        local v = big:sub(1, n)
        local kn = s:put(v)
        assert.equal(n == 6 * 1024 * 1024 - 26 and 0 or 3, chunk_keys(s, kn))
        assert.is_true(s:get(kn) == v, n)
      end
    end)

    -- A chunk can go on its own: a lease's chunks expire a moment before
    -- its header, and a server under maxmemory evicts keys. The header
    -- read again is the same one: nothing replaced the value, it is gone.
    it("in chunks that lost one (evicted, a lease ending) read as missing, alone and in a batch", function()
      local s = new_store()
      local k = s:put(thirteen())
      local other = s:put("other")
      local chunk = srv:cli("KEYS", s:config().prefix .. k .. ":chunk:*"):match("[^\n]+")
      assert.equal("1", srv:cli("DEL", chunk):match("%d+"))
      srv:cli("CONFIG", "RESETSTAT")
      local err = error_of(ps.extract, s:proxy_from_key(k))
      assert.equal("missing_key", err.kind)
      assert.equal(2, calls("getrange"))   -- the header, and once more: no 9 rereads
      assert.is_nil(s:get(k))
      local got = s:get_batch({ other, k, other })
      assert.equal("other", got[1])
      assert.is_nil(got[2])
      assert.equal("other", got[3])
    end)

    -- A put that replaces a chunked value deletes the old chunks once its
    -- own are written: a reader between its chunk GETs finds the rest gone
    -- and reads the value again, whole. A relay lets the reader's commands
    -- reach the server 8 bytes every 50 ms (a chunk GET takes about half a
    -- second), and the value is replaced once the first chunk is served.
    it("in chunks are never read half old, half new when replaced while read", function()
      local direct = new_store {}
      local n = 7 * 1024 * 1024
      local k = direct:put(("a"):rep(n))
      local out = read_while_replaced(direct:config().prefix, k, { 8, 0, 50 }, "get",
        function() direct:put(("b"):rep(n), { key = k }) end)
      assert.equal(n .. " whole b", out)
      assert.equal(2, calls("getrange") - 1)   -- its header read twice (the put read one)
    end)

    -- The same with a chunk gone in the middle of a window: chunks of 512
    -- KiB (written by a child with that chunk size) are read 4 to a round
    -- trip; the value is replaced (its old chunks deleted, a new value
    -- under the key) once the server has served the first of them, while
    -- the rest of the window still trickles in.
    it("in chunks are read again whole when a chunk goes in the middle of a window", function()
      local direct = new_store {}
      local prefix = direct:config().prefix
      local n = 5 * 1024 * 1024
      assert.equal("done", run_lua(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { port = %d, prefix = %q })
        s:put(string.rep("a", %d), { key = "torn-small" })
        io.write("done")
      ]]):format(srv.port, prefix, n), "PROXYSTORE_REDIS_CHUNK_SIZE=524288"))
      local out = read_while_replaced(prefix, "torn-small", { 16, 0, 50 }, "get", function()
        for key in srv:cli("KEYS", prefix .. "torn-small:chunk:*"):gmatch("[^\n]+") do
          srv:cli("DEL", key)
        end
        put_plain(direct, "torn-small", ("b"):rep(n))
      end)
      assert.equal(n .. " whole b", out)
    end)
  end)

  describe("strict", function()
    it("never returns a stale cached copy", function()
      local a = new_store { cache_size = 16, prefix = "shared:" }
      local b = new_store { cache_size = 16, prefix = "shared:" }
      local k = a:put("v1")
      assert.equal("v1", ps.extract(a:proxy_from_key(k)))     -- now cached in a
      b:put("v2", { key = k })                                  -- another writer
      assert.equal("v2", ps.extract(a:proxy_from_key(k, { strict = true })))
      -- unchanged: served from the cache after a version check that moves
      -- no object bytes (same round trip as the read would have been)
      local m0 = a:metrics()
      assert.equal("v2", ps.extract(a:proxy_from_key(k, { strict = true })))
      local m1 = a:metrics()
      assert.equal(m0.cache.hits + 1, m1.cache.hits)
      assert.equal(m0.get.count + 1, m1.get.count)
      assert.equal(m0.get.bytes, m1.get.bytes)
      b:put({ "v3" }, { key = k })
      assert.same({ "v3" }, ps.extract(a:proxy_from_key(k, { strict = true })))
    end)
  end)

  describe("metrics", function()
    it("count operations, bytes and time, and cache hits and misses", function()
      local s = new_store { cache_size = 4 }
      local k = s:put(string.rep("m", 1000))
      s:get(k)
      s:get(k)
      s:exists(k)
      s:evict(k)
      local m = s:metrics()
      assert.equal(1, m.put.count)
      assert.is_true(m.put.bytes >= 1000)
      assert.equal(1, m.get.count)     -- the second get was a cache hit
      assert.is_true(m.get.bytes >= 1000)
      assert.equal(1, m.cache.hits)
      assert.equal(1, m.cache.misses)
      assert.equal(1, m.exists.count)
      assert.equal(1, m.evict.count)
      assert.is_true(m.get.time_total > 0 and m.get.time_max <= m.get.time_total)
    end)
  end)

  describe("batches", function()
    it("put, get and proxy many objects", function()
      local s = new_store()
      local keys = s:put_batch({ "a", { 1 }, 3, string.rep("z", 100000) })
      assert.equal(4, #keys)
      local got = s:get_batch({ keys[1], keys[2], "absent", keys[3], keys[4] })
      assert.equal("a", got[1])
      assert.same({ 1 }, got[2])
      assert.is_nil(got[3])
      assert.equal(3, got[4])
      assert.equal(100000, #got[5])
      local ps_ = s:proxy_batch({ "x", "y" })
      assert.equal("x", ps.extract(ps_[1]))
      assert.equal("y", ps.extract(ps_[2]))
    end)

    it("go in one round trip: the server reads a batch of 100 in a few reads, not 100", function()
      -- INFO's total_reads_processed counts the server's read events; each
      -- INFO asked by redis-cli adds one of its own.
      local function reads()
        return tonumber(srv:cli("INFO", "stats"):match("total_reads_processed:(%d+)"))
      end
      local s = new_store()
      local list = {}
      for i = 1, 100 do list[i] = "v" .. i end
      local r0 = reads()
      local keys = s:put_batch(list)
      local r1 = reads()
      local got = s:get_batch(keys)
      local r2 = reads()
      s:proxy_batch(list)
      local r3 = reads()
      for _, k in ipairs(keys) do s:get(k) end
      local r4 = reads()
      assert.equal("v100", got[100])
      assert.is_true(r1 - r0 <= 10, "put_batch: " .. (r1 - r0) .. " reads")
      assert.is_true(r2 - r1 <= 10, "get_batch: " .. (r2 - r1) .. " reads")
      assert.is_true(r3 - r2 <= 10, "proxy_batch: " .. (r3 - r2) .. " reads")
      assert.is_true(r4 - r3 >= 100, "100 gets one by one: " .. (r4 - r3) .. " reads")
    end)
  end)

  describe("an error in the middle of a pipeline", function()
    -- A real ACL user that may touch acl:ok:* and the key acl:half only
    -- (not its chunk keys): the other commands of a pipeline still succeed,
    -- and every reply must be read before the connection serves again.
    setup(function()
      srv:cli("ACL", "SETUSER", "piped", "on", ">pw", "resetkeys", "~acl:ok:*",
              "~acl:half", "+@all")
    end)

    teardown(function() srv:cli("ACL", "DELUSER", "piped") end)

    local function acl_store()
      return new_store { username = "piped", password = "pw", prefix = "acl:" }
    end

    it("put_batch raises the refused key's error and the next call reads its own reply", function()
      local s = acl_store()
      local err = error_of(s.put_batch, s, { "one", "two", "three" },
                           { keys = { "ok:1", "no:2", "ok:3" } })
      assert.equal("config", err.kind)
      assert.matches("NOPERM", tostring(err), 1, true)
      assert.equal("one", s:get("ok:1"))
      assert.equal("three", s:get("ok:3"))
      assert.is_true(s:exists("ok:1"))
    end)

    -- Under keys the store makes no old header is asked for: the reader
    -- must take the SETs' refusals alone, no more, no fewer.
    it("puts under keys the store made, refused, leave the connection in step", function()
      -- no cache: each get goes to the server
      local s = new_store { username = "piped", password = "pw", prefix = "acl:",
                            cache_size = 0 }
      finally(function() new_store({ prefix = "acl:" }):evict("ok:1") end)
      s:put("one", { key = "ok:1" })
      local err = error_of(s.put, s, "made")
      assert.equal("config", err.kind)
      assert.matches("NOPERM", tostring(err), 1, true)
      assert.equal("one", s:get("ok:1"))
      err = error_of(s.put_batch, s, { "a", ("b"):rep(70000), "c" })
      assert.equal("config", err.kind)
      assert.matches("NOPERM", tostring(err), 1, true)
      assert.equal("one", s:get("ok:1"))
      assert.same({ "one", n = 1 }, s:get_batch({ "ok:1" }))
    end)

    it("get_batch raises the refused key's error and the next call reads its own reply", function()
      local s = acl_store()
      s:put_batch({ "one", "three" }, { keys = { "ok:1", "ok:3" } })
      local err = error_of(s.get_batch, s, { "ok:1", "no:2", "ok:3" })
      assert.equal("config", err.kind)
      assert.equal("three", s:get("ok:3"))
      assert.same({ "one", "three", n = 2 }, s:get_batch({ "ok:1", "ok:3" }))
    end)

    it("a chunked put with refused chunk keys leaves the connection in step", function()
      local out = run_lua(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { host = "127.0.0.1", port = %d,
          username = "piped", password = "pw", prefix = "acl:", cache_size = 0 })
        s:put("first", { key = "ok:1" })
        s:put("small", { key = "half" })
        local ok, err = pcall(s.put, s, string.rep("c", 3000), { key = "half" })
        assert(not ok and err.kind == "config", tostring(err))
        assert(s:get("ok:1") == "first")
        -- the main key is written only once every chunk is: still the old value
        assert(s:get("half") == "small")
        s:put("again", { key = "ok:1" })
        assert(s:get("ok:1") == "again")
        io.write("done")
      ]]):format(srv.port), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      assert.equal("done", out)
    end)

    it("a chunked get refused on its chunk keys says why and leaves the connection in step", function()
      local out = run_lua(([[
        local ps = require "proxystore"
        local w = ps.init_store("redis", { name = "w", host = "127.0.0.1", port = %d,
          prefix = "acl:", cache_size = 0 })
        w:put(string.rep("c", 3000), { key = "half" })   -- chunks: acl:half:chunk:...
        local s = ps.init_store("redis", { name = "r", host = "127.0.0.1", port = %d,
          username = "piped", password = "pw", prefix = "acl:", cache_size = 0 })
        s:put("first", { key = "ok:1" })
        local ok, err = pcall(s.get, s, "half")
        assert(not ok and err.kind == "config", tostring(err))
        assert(tostring(err):find("NOPERM", 1, true), tostring(err))
        assert(s:get("ok:1") == "first")
        w:evict("half")
        io.write("done")
      ]]):format(srv.port, srv.port), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      assert.equal("done", out)
    end)

    it("a server busy with a script (BUSY replies) is not retried on the same socket", function()
      local s = new_store { timeout = 5 }
      local keys = s:put_batch({ "a", "b", "c" })
      srv:cli("CONFIG", "SET", "busy-reply-threshold", "50")
      finally(function()
        srv:cli("SCRIPT", "KILL")
        srv:cli("CONFIG", "SET", "busy-reply-threshold", "5000")
      end)
      local rejected_before = tonumber(srv:cli("INFO", "commandstats")
        :match("cmdstat_set:[^\n]*rejected_calls=(%d+)") or 0)
      os.execute("env -u LD_PRELOAD redis-cli -p " .. srv.port ..
                 " EVAL 'while true do end' 0 >/dev/null 2>&1 &")
      local busy, t0 = false, now()
      while not busy and now() - t0 < 30 do
        busy = srv:cli("PING"):match("BUSY") ~= nil
        if not busy then redis.sleep(0.05) end
      end
      assert.is_true(busy, "the script did not start")
      local function rejected_sets()
        return tonumber(srv:cli("INFO", "commandstats"):match("cmdstat_set:[^\n]*rejected_calls=(%d+)") or 0)
      end
      local err = error_of(s.put_batch, s, { "x", "y", "z" })
      assert.equal("connection", err.kind)
      assert.matches("BUSY", tostring(err), 1, true)
      err = error_of(s.get_batch, s, keys)
      assert.matches("BUSY", tostring(err), 1, true)
      srv:cli("SCRIPT", "KILL")
      t0 = now()
      while not srv:ping() and now() - t0 < 30 do redis.sleep(0.05) end
      -- three SETs refused once each: the pipeline was sent once
      assert.equal(3, rejected_sets() - rejected_before)
      assert.same({ "a", "b", "c", n = 3 }, s:get_batch(keys))
      assert.equal("b", s:get(keys[2]))
    end)
  end)

  describe("wrong data under a key", function()
    it("a key of another Redis type raises a clear error", function()
      local s = new_store { prefix = "wt:" }
      srv:cli("HSET", "wt:h", "f", "v")
      local err = error_of(s.get, s, "h")
      assert.matches("WRONGTYPE", tostring(err), 1, true)
      assert.matches("wt:h", tostring(err), 1, true)
      local p = s:proxy_from_key("h")
      err = error_of(ps.resolve, p)
      assert.matches("not a string", tostring(err), 1, true)
      assert.is_false(ps.is_resolved(p))
    end)

    it("a string not written by proxystore raises a clear error", function()
      local s = new_store { prefix = "ws:" }
      srv:cli("SET", "ws:s", "plain")
      local err = error_of(s.get, s, "s")
      assert.matches("not hold a proxystore object", tostring(err), 1, true)
      assert.equal("x", s:get(s:put("x")))   -- the connection still works
    end)
  end)

  describe("connection failures", function()
    it("an unreachable port raises connection naming the address", function()
      local port = redis.dead_port()
      local err = error_of(ps.init_store, "redis",
        { name = "unreach", host = "127.0.0.1", port = port, timeout = 30 })
      assert.equal("connection", err.kind)
      assert.matches("127.0.0.1:" .. port, tostring(err), 1, true)
      assert.matches("refused", tostring(err), 1, true)
      assert.is_nil(ps.get_store("unreach"))
    end)

    it("a server with no room for another client raises connection", function()
      local full = redis.start { args = "--maxclients 1" }
      finally(function() full:stop() end)
      serial = serial + 1
      local a = ps.init_store("redis", { name = "full" .. serial, host = full.host,
                                         port = full.port, timeout = 30 })
      stores[#stores + 1] = a                   -- holds the only slot
      local err = error_of(ps.init_store, "redis", { name = "full-b" .. serial,
        host = full.host, port = full.port, timeout = 30 })
      assert.equal("connection", err.kind)
      assert.matches("max number of clients", tostring(err), 1, true)
      assert.equal("fine", a:get(a:put("fine")))
    end)

    it("a wrong db raises config", function()
      local err = error_of(new_store, { db = 99 })
      assert.equal("config", err.kind)
      assert.matches("DB index is out of range", tostring(err), 1, true)
    end)

    it("a hanging server (SIGSTOP) times out within the timeout, then recovers", function()
      local direct = new_store {}
      local s = hang_store(direct, { timeout = 0.5 })
      local k = direct:put("before")
      srv:pause()
      finally(function() srv:resume() end)
      local t0 = now()
      local err = error_of(s.get, s, k)
      local dt = now() - t0
      assert.equal("timeout", err.kind)
      assert.matches(tostring(srv.port), tostring(err), 1, true)
      -- never early; the upper bounds here are hang guards, far above
      -- the timeout, so load on the machine cannot fail them
      assert.is_true(dt >= 0.45 and dt < 10, "took " .. dt)
      t0 = now()
      err = error_of(s.put, s, "during")
      assert.equal("timeout", err.kind)
      assert.is_true(now() - t0 < 10)
      local p = s:proxy_from_key(k)
      error_of(ps.resolve, p)
      assert.is_false(ps.is_resolved(p))
      srv:resume()
      assert.equal("before", eventually(s.get, s, k))
      assert.equal("before", eventually(ps.extract, p))
    end)

    -- The timeout bounds a whole call, not each system call: a large
    -- transfer to a stopped server must not take a timeout per partial
    -- write. Bounds are hang guards (timeout + 5 s), not tight timings.
    it("a large put, a large get and batches to a hanging server raise timeout within the timeout", function()
      local timeout = 1
      local direct = new_store {}
      local s = hang_store(direct, { timeout = timeout })
      local big = string.rep("0123456789abcdef", 4 * 1024 * 1024)   -- 64 MiB
      local k = direct:put(big)
      local list = {}
      for i = 1, 8 do list[i] = string.rep(string.char(64 + i), 4 * 1024 * 1024) end
      local keys = direct:put_batch(list)
      srv:pause()
      finally(function() srv:resume() end)
      local function times_out(what, fn, ...)
        local t0 = now()
        local err = error_of(fn, ...)
        local dt = now() - t0
        assert.equal("timeout", err.kind, what .. ": " .. tostring(err))
        assert.matches(tostring(srv.port), tostring(err), 1, true)
        assert.is_true(dt < timeout + 5, what .. " took " .. dt .. " s")
      end
      times_out("put", s.put, s, big)
      times_out("get", s.get, s, k)
      times_out("put_batch", s.put_batch, s, list)
      times_out("get_batch", s.get_batch, s, keys)
      srv:resume()
      assert.equal(big, eventually(s.get, s, k))
      assert.equal(list[8], eventually(s.get_batch, s, keys)[8])
    end)

    -- The timeout is for hangs: a large transfer that keeps moving takes
    -- longer than the timeout and still succeeds (it has 1 s more per
    -- 8 MiB it moves). The relay lets 4 MiB through every 0.2 s: the
    -- 32 MiB put needs at least 8 ticks, 1.4 s, more than the 1 s timeout;
    -- a byte moves at least once a tick, so it never hangs; its cap (1 s
    -- plus 4 s for 32 MiB) is far off.
    it("lets a large put that keeps moving take longer than the timeout", function()
      local timeout = 1
      local relay = trickle(srv.port, 4 * 1024 * 1024, 0, 200)
      finally(relay.stop)
      local s = new_store { port = relay.port, timeout = timeout }
      local big = string.rep("0123456789abcdef", 32 * 1024 * 1024 // 16)
      local t0 = now()
      local ok, k = pcall(s.put, s, big)
      local dt = now() - t0
      assert.is_true(ok, tostring(k))
      assert.is_true(dt > timeout, "the put was not slowed: " .. dt .. " s")
      -- read back directly: a chunked read takes a round trip per chunk,
      -- 0.4 s each through this relay (8 MiB/s is the least a call may
      -- move: its cap)
      assert.is_true(new_store { prefix = s:config().prefix }:get(k) == big)
    end)

    -- Bytes that keep trickling in, each far sooner than the timeout: a
    -- timeout per read never fires, and the 8 MiB would crawl on for
    -- minutes (1000 bytes every 20 ms). The call's cap, its timeout plus
    -- 1 s per 8 MiB moved, ends it.
    it("a server that keeps stalling cannot stretch a get beyond its cap", function()
      local direct = new_store {}
      local big = string.rep("0123456789abcdef", 512 * 1024)   -- 8 MiB
      local k = direct:put(big)
      local relay = trickle(srv.port, 0, 1000, 20)
      finally(relay.stop)
      local s = new_store { port = relay.port, timeout = 1,
                            prefix = direct:config().prefix }
      local t0 = now()
      local ok, err = pcall(s.get, s, k)
      local dt = now() - t0
      assert.is_false(ok, "the get succeeded after " .. dt .. " s")
      assert.equal("timeout", err.kind, tostring(err))
      assert.matches("plus 1 s per 8 MiB", tostring(err), 1, true)
      -- a hang guard: at the trickle's pace the get would take minutes
      assert.is_true(dt < 30, "get took " .. dt .. " s")
      assert.equal(big, direct:get(k))
    end)

    it("a killed server raises connection; after a restart the first call reconnects", function()
      local s = new_store {}
      local k = s:put("before")
      srv:kill()
      local err = error_of(s.get, s, k)
      assert.equal("connection", err.kind)
      assert.matches(tostring(srv.port), tostring(err), 1, true)
      srv:restart()
      -- no persistence: the data is gone, the connection comes back by itself
      assert.is_nil(s:get(k))
      assert.equal("after", s:get(s:put("after")))
    end)

    it("a restarted server is reconnected to by the first call over a unix socket", function()
      local s = new_store { path = srv.path }
      assert.equal("x", s:get(s:put("x")))
      srv:restart()
      assert.equal("y", s:get(s:put("y")))
    end)

    it("exists, evict and the batches time out against a hanging server, then recover", function()
      local timeout = 0.5
      local direct = new_store {}
      local s = hang_store(direct, { timeout = timeout })
      local keys = direct:put_batch({ "a", "b" })
      srv:pause()
      finally(function() srv:resume() end)
      for name, call in pairs {
        exists = function() return s:exists(keys[1]) end,
        evict = function() return s:evict(keys[1]) end,
        get_batch = function() return s:get_batch(keys) end,
        put_batch = function() return s:put_batch({ "c" }) end,
        proxy_batch = function() return s:proxy_batch({ "d" }) end,
      } do
        local t0 = now()
        local err = error_of(call)
        local dt = now() - t0
        assert.equal("timeout", err.kind, name .. ": " .. tostring(err))
        assert.matches(tostring(srv.port), tostring(err), 1, true)
        assert.is_true(dt < timeout + 5, name .. " took " .. dt .. " s")
      end
      srv:resume()
      -- (a command that was sent still runs when the server goes on: the
      -- evict of keys[1] may or may not have happened)
      assert.is_true(eventually(s.exists, s, keys[2]))
      assert.same({ "b", n = 1 }, eventually(s.get_batch, s, { keys[2] }))
    end)

    it("exists, evict and the batches reconnect by themselves after a restart", function()
      local s = new_store {}
      local ops = {
        { "exists", function(k) assert.is_false(s:exists(k)) end },
        { "evict", function(k) s:evict(k) end },
        { "get_batch", function(k) assert.same({ n = 1 }, s:get_batch({ k })) end },
        { "put_batch", function() assert.equal(1, #s:put_batch({ "p" })) end },
      }
      for _, op in ipairs(ops) do
        local k = s:put("before " .. op[1])    -- the connection is open
        srv:kill()
        local err = error_of(op[2], k)
        assert.equal("connection", err.kind, op[1] .. ": " .. tostring(err))
        srv:restart()
        op[2](k)                               -- the data went with the server
        k = s:put("after")                     -- and the connection is fine
        assert.equal("after", s:get(k))
        -- a restart between two calls on a live connection: the next call
        -- succeeds at once
        srv:restart()
        op[2](k .. "-gone")
      end
    end)

    it("a new store times out connecting to a hanging server", function()
      srv:pause()
      finally(function() srv:resume() end)
      for _, opts in ipairs { {}, { db = 1 }, { path = srv.path } } do
        opts.timeout = 0.5
        local t0 = now()
        local err = error_of(new_store, opts)
        local dt = now() - t0
        assert.equal("timeout", err.kind, tostring(err))
        assert.is_true(dt < 6, "took " .. dt .. " s")
      end
    end)

    it("a hanging server over the unix socket times out within the timeout, then recovers", function()
      local timeout = 0.5
      local direct = new_store { path = srv.path }
      local s = hang_store(direct, { path = srv.path, timeout = timeout })
      local big = string.rep("u", 16 * 1024 * 1024)
      local k = direct:put(big)
      srv:pause()
      finally(function() srv:resume() end)
      for name, call in pairs {
        get = function() return s:get(k) end,
        put = function() return s:put(big) end,
        exists = function() return s:exists(k) end,
      } do
        local t0 = now()
        local err = error_of(call)
        local dt = now() - t0
        assert.equal("timeout", err.kind, name .. ": " .. tostring(err))
        assert.matches(srv.path, tostring(err), 1, true)
        assert.is_true(dt < timeout + 5, name .. " took " .. dt .. " s")
      end
      srv:resume()
      assert.equal(big, eventually(s.get, s, k))
    end)
  end)

  describe("authentication", function()
    local auth
    setup(function()
      auth = redis.start { args = "--requirepass s3cret", password = "s3cret" }
      auth:cli("ACL", "SETUSER", "alice", "on", ">wonder", "~*", "&*", "+@all")
    end)
    teardown(function() if auth then auth:stop() end end)

    it("accepts the right password, with or without a username", function()
      serial = serial + 1
      local a = ps.init_store("redis", { name = "auth" .. serial, host = auth.host,
        port = auth.port, password = "s3cret", timeout = 30 })
      stores[#stores + 1] = a
      assert.equal("ok", a:get(a:put("ok")))
      local b = ps.init_store("redis", { name = "authu" .. serial, host = auth.host,
        port = auth.port, username = "alice", password = "wonder", timeout = 30 })
      stores[#stores + 1] = b
      assert.equal("ok", b:get(b:put("ok")))
    end)

    it("takes the credentials and db from a redis:// URL", function()
      serial = serial + 1
      local s = ps.init_store(("redis://alice:wonder@127.0.0.1:%d/2"):format(auth.port),
                              { name = "authurl" .. serial })
      stores[#stores + 1] = s
      s:put("via url", { key = "u" })
      assert.equal("1", auth:cli("-n", "2", "EXISTS", "u"):match("%d+"))
      assert.equal("via url", s:get("u"))
    end)

    it("rejects a wrong password or none", function()
      local err = error_of(ps.init_store, "redis", { name = "badauth", host = auth.host,
        port = auth.port, password = "nope", timeout = 30 })
      assert.equal("config", err.kind)
      assert.matches("WRONGPASS", tostring(err), 1, true)
      err = error_of(ps.init_store, "redis", { name = "noauth", host = auth.host,
        port = auth.port, timeout = 30 })
      assert.matches("NOAUTH", tostring(err), 1, true)
    end)

    it("rejects a wrong password given with a username", function()
      local err = error_of(ps.init_store, "redis", { name = "badauthu", host = auth.host,
        port = auth.port, username = "alice", password = "wrong", timeout = 30 })
      assert.equal("config", err.kind)
      assert.matches("WRONGPASS", tostring(err), 1, true)
      assert.is_nil(ps.get_store("badauthu"))
      err = error_of(ps.init_store, ("redis://alice:wrong@127.0.0.1:%d"):format(auth.port),
                     { name = "badauthu" })
      assert.equal("config", err.kind)
      assert.matches("WRONGPASS", tostring(err), 1, true)
    end)

    it("a new store with a password times out against a hanging server", function()
      auth:pause()
      finally(function() auth:resume() end)
      local t0 = now()
      local err = error_of(ps.init_store, "redis", { name = "authhang", host = auth.host,
        port = auth.port, username = "alice", password = "wonder", db = 1, timeout = 0.5 })
      local dt = now() - t0
      assert.equal("timeout", err.kind, tostring(err))
      assert.is_true(dt < 6, "took " .. dt .. " s")
    end)
  end)

  describe("objects over the chunk size", function()
    -- The chunk size is internal (PROXYSTORE_REDIS_CHUNK_SIZE, read when a
    -- store opens), so a child process with a small one writes them.
    it("are split across keys, reassembled, and evicted completely", function()
      local code = ([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", {host = "127.0.0.1", port = %d, prefix = "ch:"})
        s:put(string.rep("abcdefghij", 500), {key = "big"})
        local t = {} for i = 1, 300 do t[i] = "item" .. i end
        s:put(t, {key = "tbl"})
        assert(s:get("big") == string.rep("abcdefghij", 500))
        s:put(string.rep("z", 2500), {key = "over"})
        s:put(string.rep("y", 4000), {key = "over"})   -- replaces its chunks
        io.write("done")
      ]]):format(srv.port)
      local out = run_lua(code, "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      assert.equal("done", out)
      local function nkeys(pat)
        local n = 0
        for _ in srv:cli("KEYS", pat):gmatch("[^\n]+") do n = n + 1 end
        return n
      end
      assert.is_true(nkeys("ch:big:chunk:*") >= 5)
      -- 4000 bytes plus a few of envelope: 5 chunks; the 2500-byte
      -- value's 3 chunks are gone
      assert.equal(5, nkeys("ch:over:chunk:*"))
      local s = new_store { prefix = "ch:" }
      assert.equal(string.rep("abcdefghij", 500), s:get("big"))
      assert.equal(300, #s:get("tbl"))
      assert.equal(string.rep("y", 4000), s:get("over"))
      s:evict("big")
      assert.equal(0, nkeys("ch:big*"))
      assert.is_false(s:exists("big"))
    end)
  end)

  describe("a forged chunk header", function()
    -- Anyone who may write a key may write a header claiming any number of
    -- chunks of any size: a reader checks it, allocates the value before
    -- asking for chunks, and asks for them a window at a time.
    local V = "0123456789abcdef"      -- 16 bytes standing for a version
    local forged = {
      many = "C" .. V .. "10000000 10000000 1",         -- 1e7 chunks
      huge_n = "C" .. V .. "1000000000 1000000000 1",   -- 1e9 chunks
      negative = "C" .. V .. "-1 1 1",
      big_chunk = "C" .. V .. "2000000000 2 1000000000", -- over Redis' limit
      wrong_n = "C" .. V .. "3000 5 1000",
      junk = "C" .. V .. "3000 3 1000x",
      -- consistent, but 32 TiB: the allocation fails (or the first chunk
      -- is missing), not the machine
      tebibytes = "C" .. V .. (65536 * 536866816) .. " 65536 536866816",
      missing = "C" .. V .. "3000 3 1000",              -- chunks absent
    }

    it("raises a clear store error at once, and evict and put over it work", function()
      for name, v in pairs(forged) do srv:cli("SET", "forged:" .. name, v) end
      local names = {}
      for name in pairs(forged) do names[#names + 1] = name end
      table.sort(names)
      local out = run_lua(([[
        local ps = require "proxystore"
        local now = require("proxystore.core").monotonic
        local s = ps.init_store("redis", { host = "127.0.0.1", port = %d,
          prefix = "forged:", cache_size = 0, timeout = 5 })
        local slowest = 0
        for _, name in ipairs { %s } do
          local t0 = now()
          local ok, err = pcall(s.get, s, name)
          slowest = math.max(slowest, now() - t0)
          if name == "missing" then
            -- a header whose chunks are not there, read again the same:
            -- an object whose chunks went (evicted, a lease ending)
            assert(ok and err == nil, "missing: " .. tostring(err))
          else
            assert(not ok, name .. ": no error")
            assert(err.kind == "store", name .. ": " .. tostring(err))
            assert(tostring(err):find("forged:" .. name, 1, true), tostring(err))
            assert(tostring(err):find("^proxystore: [^\n]*$"), tostring(err))
          end
        end
        for i, name in ipairs { %s } do
          local t0 = now()
          if i %% 2 == 0 then
            s:evict(name)
            assert(not s:exists(name), name .. " still there")
          else
            s:put("fine", { key = name })
            assert(s:get(name) == "fine")
          end
          slowest = math.max(slowest, now() - t0)
        end
        local f = io.open("/proc/self/status")
        local hwm = f:read("a"):match("VmHWM:%%s*(%%d+) kB")
        f:close()
        io.write(string.format("%%.3f %%d", slowest, hwm))
      ]]):format(srv.port, ("%q, "):rep(#names):format(table.unpack(names)),
                 ("%q, "):rep(#names):format(table.unpack(names))), "timeout 60")
      local slowest, hwm = out:match("^(%S+) (%d+)$")
      assert(slowest, out)
      -- at once: well below the store's 5 s timeout a wait would end in
      assert.is_true(tonumber(slowest) < 4, "a call took " .. slowest .. " s")
      -- peak RSS of the whole process, in kB: far below what 1e7 queued
      -- GETs cost (about 700 MB)
      assert.is_true(tonumber(hwm) < 300 * 1024, "peak RSS " .. hwm .. " kB")
    end)
  end)

  describe("in another process", function()
    it("proxies resolve where the store was never initialised", function()
      local s = new_store { name = "xproc", prefix = "xp:" }
      local p1 = s:proxy(string.rep("bytes", 1000))
      local p2 = s:proxy({ answer = 42 })
      local file = os.tmpname()
      finally(function() os.remove(file) end)
      local f = assert(io.open(file, "wb"))
      local blob = ps.serialize({ p1, p2 })
      assert.is_true(#blob < 2000)
      f:write(blob)
      f:close()
      local out, status = run_lua(([[
        local ps = require "proxystore"
        assert(ps.get_store("xproc") == nil)
        local f = assert(io.open(%s, "rb"))
        local t = ps.deserialize(f:read("a"))
        f:close()
        assert(ps.is_proxy(t[1]) and not ps.is_resolved(t[1]))
        io.write(#t[1], " ", t[2].answer, " ", tostring(ps.get_store("xproc") ~= nil))
      ]]):format(lua_literal(file)))
      assert.equal("5000 42 true", out)
      assert.equal(0, status)
    end)

    it("re-create the store with the carried db, serializer and cache size", function()
      local s = new_store { name = "xproc-cfg", prefix = "xc:", db = 5,
                            serializer = "json", cache_size = 7 }
      local p = s:proxy({ answer = 42, list = { 1, 2, 3 } })
      assert.equal("1", srv:cli("-n", "5", "EXISTS", "xc:" .. ps.key(p)):match("%d+"))
      assert.equal("0", srv:cli("-n", "0", "EXISTS", "xc:" .. ps.key(p)):match("%d+"))
      local out, status = run_lua(([[
        local ps = require "proxystore"
        assert(ps.get_store("xproc-cfg") == nil)
        local p = ps.deserialize(%s)
        io.write(p.answer, " ", #p.list)
        local cfg = ps.get_store("xproc-cfg"):config()
        io.write(" db=", cfg.db, " serializer=", cfg.serializer,
                 " cache_size=", cfg.cache_size, " prefix=", cfg.prefix)
      ]]):format(lua_literal(ps.serialize(p))))
      assert.equal(0, status, out)
      assert.equal("42 3 db=5 serializer=json cache_size=7 prefix=xc:", out)
    end)
  end)

  describe("resolve_async", function()
    it("fetches in the background; first use gets the object", function()
      local s = new_store()
      local big = string.rep("0123456789abcdef", 1024 * 1024)   -- 16 MiB
      local k = s:put(big)
      local p = s:proxy_from_key(k)
      ps.resolve_async(p)
      assert.equal(#big, #p)
      assert.is_true(p == big or ps.extract(p) == big)
      -- resolved and local proxies: no-ops
      ps.resolve_async(p)
      ps.resolve_async(ps.proxy(function() return 1 end))
    end)

    it("keeps no connection open once its store is closed", function()
      -- A server of its own: its client list then holds only this store's
      -- connections (and redis-cli's own).
      local own = redis.start()
      finally(function() own:stop() end)
      local function clients()
        local n = 0
        for _ in own:cli("CLIENT", "LIST"):gmatch("id=%d+") do n = n + 1 end
        return n
      end
      local base = clients()
      local s = ps.init_store("redis", { name = "async-close", host = own.host,
                                         port = own.port, timeout = 2 })
      local k = s:put("v")
      local p = ps.resolve_async(s:proxy_from_key(k))
      assert.equal("v", ps.extract(p))
      assert.equal(base + 2, clients())   -- the store's and its prefetch's
      s:close()
      assert.equal(base, clients())
    end)

    it("really fetches in the background: first use needs no server", function()
      local s = new_store {}
      local big = string.rep("b", 1024 * 1024)
      local k = s:put(big)
      local function gets()   -- a read is a GETRANGE of its first piece
        return tonumber(srv:cli("INFO", "commandstats"):match("cmdstat_getrange:calls=(%d+)")) or 0
      end
      local g0 = gets()
      local p = s:proxy_from_key(k)
      ps.resolve_async(p)
      assert.is_false(ps.is_resolved(p))
      local t1 = now()                 -- the worker's GET reached the server
      while gets() <= g0 and now() - t1 < 30 do redis.sleep(0.02) end
      assert.is_true(gets() > g0, "the prefetch never asked the server")
      local t0 = now()                 -- and its reply reached the worker
      while not ps.repr(p):find("fetched", 1, true) and now() - t0 < 30 do
        redis.sleep(0.01)
      end
      assert.matches("unresolved, fetched", ps.repr(p), 1, true)
      srv:pause()
      finally(function() srv:resume() end)
      assert.equal(#big, #p)           -- a stopped server: a fetch would time out
      assert.is_true(ps.extract(p) == big)
      srv:resume()
    end)

    it("reports a missing key at first use and leaves the proxy unresolved", function()
      local s = new_store()
      local p = s:proxy_from_key("absent-async")
      ps.resolve_async(p)
      local err = error_of(ps.resolve, p)
      assert.equal("missing_key", err.kind)
      assert.is_false(ps.is_resolved(p))
    end)

    it("frees everything when the proxy is collected while the fetch runs", function()
      local s = new_store()
      local k = s:put(string.rep("x", 8 * 1024 * 1024))
      for _ = 1, 10 do
        local p = s:proxy_from_key(k)
        ps.resolve_async(p)
      end
      collectgarbage()
      collectgarbage()
      redis.sleep(0.5)       -- let the worker finish and free (ASan checks)
      assert.equal(8 * 1024 * 1024, #s:get(k))
    end)

    it("times out like a synchronous resolve when the server hangs", function()
      local direct = new_store {}
      local s = hang_store(direct, { timeout = 0.5 })
      local k = direct:put("v")
      srv:pause()
      finally(function() srv:resume() end)
      local p = s:proxy_from_key(k)
      ps.resolve_async(p)
      local err = error_of(ps.resolve, p)
      assert.equal("timeout", err.kind)
      srv:resume()
      assert.equal("v", eventually(ps.extract, p))
    end)
  end)

  describe("after fork", function()
    it("pool workers use connections of their own, never the parent's", function()
      local s = new_store { name = "forked", prefix = "fk:" }
      local k = s:put("from parent")            -- the parent's connection is open
      local function clients()
        local n = 0
        for _ in srv:cli("CLIENT", "LIST"):gmatch("[^\n]+") do n = n + 1 end
        return n
      end
      local before = clients()
      local pool = ps.pool { workers = 2 }
      finally(function() pool:close() end)
      local futures = {}
      for i = 1, 6 do
        futures[i] = pool:submit(function(key, n)
          local st = require("proxystore").get_store("forked")
          local v = st:get(key)
          local k2 = st:put("from child " .. n)
          return v .. "|" .. st:get(k2)
        end, k, i)
      end
      for i = 1, 6 do
        assert.equal("from parent|from child " .. i, futures[i]:result(30))
      end
      -- each worker opened its own connection; the parent's still works,
      -- and its replies were never read by anyone else
      assert.is_true(clients() > before)
      for i = 1, 50 do
        assert.equal(i, s:get(s:put(i)))
      end
      assert.equal("from parent", s:get(k))
    end)
  end)

  describe("the C backend alone", function()
    -- fork safety, prefetch in a forked child and the byte-level contract,
    -- from the plain-C test program spec/c/backend_redis_test.c
    it("passes its C test, fork and prefetch included", function()
      local exe = shell.build_c_test("backend_redis_test", srv.dir)
      local p = io.popen("env -u LD_PRELOAD PORT=" .. srv.port .. " " .. exe .. " " ..
                   srv.port .. " " .. srv.path .. " 2>&1")
      local out = p:read("a")
      local ok = p:close()
      assert.is_true(ok, out)
      assert.matches("0 failures", out, 1, true)
      assert.is_nil(out:match("not ok"))
    end)

    -- replies of any shape (nested arrays, nils, errors), the limits on
    -- what a reply may allocate, and waits the server holds on purpose,
    -- from spec/c/redis_value_test.c
    it("reads whole replies of any shape within limits", function()
      local exe = shell.build_c_test("redis_value_test", srv.dir)
      local rc, out = shell.sh(shell.quote(exe) .. " " .. srv.port)
      assert.equal(0, rc, out)
      assert.matches(" 0 failures", out, 1, true)
      assert.is_nil(out:match("not ok"))
    end)
  end)
end)
