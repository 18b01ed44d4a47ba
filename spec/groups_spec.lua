-- Redis streams and consumer groups (src/redis/groups.c, through its Lua
-- binding core.redis_groups), against a real redis-server.

local core = require "proxystore.core"
local redis = require "helpers.redis"
local shell = require "helpers.shell"

local function ids_of(entries)
  local t = {}
  for i, e in ipairs(entries) do t[i] = e.id end
  return t
end

-- fn(...), tried again (up to 3 times in all) while it fails with a
-- timeout: for calls to a running server through a handle with a short
-- timeout, which a loaded machine can make late. What such specs test
-- fails every try.
local function eventually(fn, ...)
  for _ = 1, 2 do
    local res = table.pack(pcall(fn, ...))
    if res[1] then return table.unpack(res, 2, res.n) end
    if not (core.is_error(res[2]) and res[2].kind == "timeout") then error(res[2], 0) end
  end
  return fn(...)
end

describe("redis groups", function()
  local srv, g

  setup(function()
    srv = redis.start()
  end)

  teardown(function()
    if g then g:close() end
    if srv then srv:stop() end
  end)

  before_each(function()
    if not srv.pid then srv:restart() end
    if g then g:close() end
    -- a generous timeout: on a loaded machine a call may take seconds;
    -- the specs about timeouts open handles of their own
    g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
    g:call("FLUSHALL")
  end)

  -- A handle with a short timeout, closed after the spec.
  local function short(timeout)
    local h = core.redis_groups { host = srv.host, port = srv.port, timeout = timeout }
    finally(function() h:close() end)
    return h
  end

  it("creates a group and its stream, and creating it again is no error", function()
    g:create_group("s", "workers", "0")
    g:create_group("s", "workers", "0")
    assert.equal(0, g:length("s"))
    local info = g:group_info("s", "workers")
    assert.equal(0, info.consumers)
    assert.equal(0, info.pending)
    assert.equal("0-0", info.last_delivered)
  end)

  it("adds a batch in one call, ids in order, and trims with MAXLEN", function()
    local entries = {}
    for i = 1, 50 do entries[i] = { n = tostring(i), body = ("x"):rep(i) } end
    local ids = g:add("s", entries)
    assert.equal(50, #ids)
    for i = 2, 50 do assert.is_true(ids[i - 1] < ids[i] or #ids[i - 1] < #ids[i]) end
    local back = g:range("s", "-", "+", 100)
    assert.same(ids, ids_of(back))
    assert.equal("7", back[7].fields.n)
    assert.equal(("x"):rep(7), back[7].fields.body)
    -- exact trimming keeps the newest
    g:add("s", { { n = "51" } }, { maxlen = 10 })
    assert.equal(10, g:length("s"))
    assert.equal("51", g:range("s", "-", "+", 100)[10].fields.n)
    -- approximate trimming keeps at least that many
    g:add("s", { { n = "52" } }, { maxlen = 5, approx = true })
    assert.is_true(g:length("s") >= 5)
    -- list form of the fields, numbers written as Lua writes them
    local id = g:add("s", { { "a", 1, "b", 2.5 } })[1]
    local e = g:range("s", id, id, 1)[1]
    assert.same({ a = "1", b = "2.5" }, e.fields)
  end)

  it("sends a command in the same write as a read and gives its reply", function()
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "1" } })
    local got, woken, n = g:read_group("s", "grp", "w", ">", 10, 1,
      { "RPUSH", "l", "a", 2 })
    assert.equal(1, #got)
    assert.equal("1", got[1].fields.k)
    assert.is_false(woken)
    assert.equal(2, n)
    assert.same({ "a", "2" }, g:call("LRANGE", "l", 0, -1))
    -- an error reply is given, not raised, and the read still happens
    g:add("s", { { k = "2" } })
    local e
    got, woken, e = g:read_group("s", "grp", "w", ">", 10, 1, { "INCR", "l" })
    assert.equal("2", got[1].fields.k)
    assert.is_true(core.is_error(e))
    assert.matches("^WRONGTYPE", e.redis)
    -- without pre: two results, as before
    assert.equal(2, select("#", g:read_group("s", "grp", "w", ">", 10)))
    assert.has_error(function() g:read_group("s", "grp", "w", ">", 1, 1, "RPUSH") end)
  end)

  it("reads new entries per consumer and re-reads a consumer's pending ones", function()
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "1" }, { k = "2" }, { k = "3" } })
    local a = g:read_group("s", "grp", "alice", ">", 2)
    assert.equal(2, #a)
    assert.same({ "1", "2" }, { a[1].fields.k, a[2].fields.k })
    local b = g:read_group("s", "grp", "bob", ">", 10)
    assert.equal(1, #b)
    assert.equal("3", b[1].fields.k)
    assert.equal(0, #g:read_group("s", "grp", "carol", ">", 10))
    -- alice restarts under her name: she gets back what she had not acked
    local again = g:read_group("s", "grp", "alice", "0", 10)
    assert.same(ids_of(a), ids_of(again))
    assert.equal(1, g:ack("s", "grp", { a[1].id }))
    again = g:read_group("s", "grp", "alice", "0", 10)
    assert.same({ a[2].id }, ids_of(again))
    -- an entry deleted while pending comes back with no fields
    g:delete("s", { a[2].id })
    again = g:read_group("s", "grp", "alice", "0", 10)
    assert.equal(1, #again)
    assert.is_true(again[1].deleted)
    assert.is_nil(again[1].fields)
    local count, lowest = g:pending_summary("s", "grp")
    assert.equal(2, count)
    assert.equal(a[2].id, lowest)
  end)

  it("acknowledges a batch in one command", function()
    g:create_group("s", "grp", "0")
    local entries = {}
    for i = 1, 20 do entries[i] = { i = tostring(i) } end
    g:add("s", entries)
    local got = g:read_group("s", "grp", "c", ">", 100)
    assert.equal(20, #got)
    assert.equal(20, g:ack("s", "grp", ids_of(got)))
    assert.equal(0, (g:pending_summary("s", "grp")))
    assert.equal(0, g:ack("s", "grp", ids_of(got)))
  end)

  it("reads without a group from the start, after an id, and from now on", function()
    g:add("s", { { v = "a" }, { v = "b" } })
    local all = g:read("s", "0", 10)
    assert.equal(2, #all)
    local after = g:read("s", all[1].id, 10)
    assert.same({ all[2].id }, ids_of(after))
    -- "$": only what is added after the call
    local t0 = core.monotonic()
    local none, woken = g:read("s", "$", 10, 0.2)
    assert.same({}, none)
    assert.is_false(woken)
    assert.is_true(core.monotonic() - t0 >= 0.15)
    -- a held read returns as soon as an entry arrives (added by another
    -- client while the read waits, or before: from the last id it is
    -- there either way)
    local last = all[2].id
    os.execute(shell.CLEAN .. "(sleep 0.3; redis-cli -p " .. srv.port ..
      " XADD s '*' v c >/dev/null) &")
    local got = g:read("s", last, 10, 60)   -- held 60 s at most: a hang guard
    assert.equal(1, #got)
    assert.equal("c", got[1].fields.v)
  end)

  it("holds a read past the connection timeout without timing out", function()
    g:create_group("s", "grp", "$")
    -- timeout is 2 s; the read is held 3 s and ends empty, not in error (a
    -- read whose hold counted against the timeout fails every try)
    local h = short(2)
    local got = eventually(h.read_group, h, "s", "grp", "c", ">", 1, 3)
    assert.same({}, got)
  end)

  it("claims entries idle past a visibility, with their delivery counts", function()
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "1" }, { k = "2" } })
    local mine = g:read_group("s", "grp", "dead", ">", 10)
    assert.equal(2, #mine)
    -- not idle long enough: nothing moves
    local claimed, next_start = g:autoclaim("s", "grp", "alive", 3600, "0-0", 10, true)
    assert.same({}, claimed)
    assert.equal("0-0", next_start)
    -- idle at least 0 s: both move, each delivered twice now
    claimed, next_start = g:autoclaim("s", "grp", "alive", 0, "0-0", 10, true)
    assert.same(ids_of(mine), ids_of(claimed))
    assert.equal(2, claimed[1].deliveries)
    assert.equal("1", claimed[1].fields.k)
    assert.equal("0-0", next_start)
    local p = g:pending("s", "grp")
    assert.equal(2, #p)
    assert.equal("alive", p[1].consumer)
    assert.equal(2, p[1].deliveries)
    assert.is_true(p[1].idle >= 0)
    -- a claim scan in pieces: count 1 hands back where to go on
    claimed, next_start = g:autoclaim("s", "grp", "third", 0, "0-0", 1)
    assert.equal(1, #claimed)
    assert.equal(mine[2].id, next_start)
    -- an entry deleted while pending is reported and leaves the list
    g:delete("s", { mine[2].id })
    local _, _, deleted = g:autoclaim("s", "grp", "third", 0, "0-0", 10)
    assert.same({ mine[2].id }, deleted)
    assert.equal(1, (g:pending_summary("s", "grp")))
    -- filters of the pending list
    assert.equal(1, #g:pending("s", "grp", { consumer = "third" }))
    assert.equal(0, #g:pending("s", "grp", { consumer = "dead" }))
    assert.equal(0, #g:pending("s", "grp", { min_idle = 3600 }))
  end)

  it("touches only the entries a consumer still owns", function()
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "1" }, { k = "2" } })
    local mine = g:read_group("s", "grp", "w1", ">", 10)
    assert.same({ true, true }, g:touch("s", "grp", "w1", ids_of(mine)))
    -- another consumer claims the second: a touch must not take it back
    g:autoclaim("s", "grp", "w2", 0, mine[2].id, 1)
    assert.same({ true, false }, g:touch("s", "grp", "w1", ids_of(mine)))
    local p = g:pending("s", "grp")
    assert.equal("w1", p[1].consumer)
    assert.equal("w2", p[2].consumer)
    -- a touch is not a delivery
    assert.equal(1, p[1].deliveries)
    -- acknowledged entries are no one's
    g:ack("s", "grp", { mine[1].id })
    assert.same({ false }, g:touch("s", "grp", "w1", { mine[1].id }))
  end)

  it("tells the group's lag and last delivered id, and trims by MINID", function()
    g:create_group("s", "grp", "0")
    local ids = g:add("s", { { a = "1" }, { a = "2" }, { a = "3" } })
    g:read_group("s", "grp", "c", ">", 2)
    local info = g:group_info("s", "grp")
    assert.equal(1, info.consumers)
    assert.equal(2, info.pending)
    assert.equal(ids[2], info.last_delivered)
    assert.equal(1, info.lag)
    assert.equal(2, g:trim("s", { minid = ids[3] }))
    assert.same({ ids[3] }, ids_of(g:range("s", "-", "+", 10)))
    assert.equal(1, g:delete_consumer("s", "grp", "c") >= 0 and 1 or 0)
    assert.is_true(g:destroy_group("s", "grp"))
    assert.is_false(g:destroy_group("s", "grp"))
  end)

  it("runs any command, pipelines, and held list pops", function()
    assert.equal("OK", g:call("SET", "k", 42))
    assert.equal("42", g:call("GET", "k"))
    assert.is_nil(g:call("GET", "absent"))
    local r = g:pipeline({ "RPUSH", "l", "a", "b" }, { "LRANGE", "l", 0, -1 },
                         { "GET", "absent" }, { "LPUSH", "k", "x" })
    assert.equal(2, r[1])
    assert.same({ "a", "b" }, r[2])
    assert.is_false(r[3])
    assert.is_true(core.is_error(r[4]))
    assert.matches("WRONGTYPE", r[4].redis)
    -- an error reply raised by call
    local ok, err = pcall(g.call, g, "LPUSH", "k", "x")
    assert.is_false(ok)
    assert.equal("store", err.kind)
    assert.matches("WRONGTYPE", tostring(err))
    -- BLPOP and what follows it in one round trip
    local rs, woken = g:call_blocking(1, { "BLPOP", "l", 1 }, { "LPOP", "l", 10 })
    assert.is_false(woken)
    assert.same({ "l", "a" }, rs[1])
    assert.same({ "b" }, rs[2])
    rs = g:call_blocking(0.2, { "BLPOP", "l", 0.1 })
    assert.is_false(rs[1])
  end)

  it("raises missing_key for a group or stream that does not exist", function()
    local ok, err = pcall(g.read_group, g, "nostream", "nogroup", "c", ">", 1)
    assert.is_false(ok)
    assert.equal("missing_key", err.kind)
    assert.matches("NOGROUP", tostring(err))
    ok, err = pcall(g.group_info, g, "nostream", "grp")
    assert.equal("missing_key", err.kind)
    g:create_group("s", "grp", "0")
    ok, err = pcall(g.group_info, g, "s", "other")
    assert.equal("missing_key", err.kind)
  end)

  it("refuses bad arguments with clear errors", function()
    assert.has_error(function() g:add("s", { {} }) end)
    assert.has_error(function() g:add("s", { { "odd" } }) end)
    assert.has_error(function() g:add("s", { { k = {} } }) end)
    assert.has_error(function() g:read_group("s", "g", "c", ">", 0) end)
    assert.has_error(function() g:read("s", "0", 1, -1) end)
    assert.has_error(function() g:call() end)
    assert.has_error(function() g:pipeline({}) end)
    g:close()
    local ok, err = pcall(g.length, g, "s")
    assert.is_false(ok)
    assert.equal("closed", err.kind)
    g:close()   -- idempotent
    assert.matches("closed", tostring(g))
  end)

  it("fails to open with a connection error naming the address", function()
    local port = redis.dead_port()
    local ok, err = pcall(core.redis_groups, { host = "127.0.0.1", port = port,
                                               timeout = 1 })
    assert.is_false(ok)
    assert.equal("connection", err.kind)
    assert.matches("127.0.0.1:" .. port, tostring(err), 1, true)
  end)

  it("goes on after a server restart, and says so when the server is gone", function()
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "1" } })
    srv:restart()
    -- both connections had served: each call reconnects by itself; the
    -- data went with the old server (no persistence), so NOGROUP
    assert.equal(0, g:length("s"))
    local ok, err = pcall(g.read_group, g, "s", "grp", "c", ">", 1, 0.1)
    assert.equal("missing_key", err.kind)
    g:create_group("s", "grp", "0")
    g:add("s", { { k = "2" } })
    assert.equal("2", g:read_group("s", "grp", "c", ">", 1, 1)[1].fields.k)
    srv:kill()
    ok, err = pcall(g.length, g, "s")
    assert.is_false(ok)
    assert.equal("connection", err.kind)
    assert.matches(srv.host .. ":" .. srv.port, tostring(err), 1, true)
    ok, err = pcall(g.read_group, g, "s", "grp", "c", ">", 1, 1)
    assert.equal("connection", err.kind)
    srv:restart()
    assert.equal(0, g:length("s"))
  end)

  it("sends a held call and reads its replies later", function()
    assert.is_false(g:held())
    assert.has_error(function() g:recv_held(0) end)
    g:send_held(5, { "BLPOP", "hl", 5 }, { "LPOP", "hl", 10 })
    assert.is_true(g:held())
    -- nothing yet: it stays held
    assert.is_nil(g:recv_held(0))
    assert.is_nil(g:recv_held(0.05))
    -- one at a time, and the blocking connection serves nothing else
    local ok, err = pcall(g.send_held, g, 1, { "BLPOP", "hl", 1 })
    assert.equal("config", err.kind)
    ok, err = pcall(g.call_blocking, g, 1, { "BLPOP", "hl", 1 })
    assert.is_false(ok)
    assert.equal("config", err.kind)
    -- the other connection does, and a push is answered to the held call
    g:call("RPUSH", "hl", "a", "b", "c")
    local rs = g:recv_held(10)
    assert.same({ { "hl", "a" }, { "b", "c" } }, rs)
    assert.is_false(g:held())
    -- a held call the server ends by its own timeout: its nil
    g:send_held(0.05, { "BLPOP", "hl", "0.05" })
    assert.same({ false }, g:recv_held())
    -- queued: not sent until the next ordinary command is
    local other = short(30)
    g:queue_held(5, { "RPUSH", "hq", "1" })
    assert.is_true(g:held())
    assert.equal(0, other:call("LLEN", "hq"))
    assert.equal("PONG", g:call("PING"))
    assert.same({ 1 }, g:recv_held(10))
    assert.equal(1, other:call("LLEN", "hq"))
    -- or by recv_held, when no ordinary command came first
    g:queue_held(0.05, { "BLPOP", "hl", "0.05" })
    assert.is_nil(g:recv_held(0))
    assert.same({ false }, g:recv_held())
    assert.same({ 1 }, (g:call_blocking(1, { "RPUSH", "hl", "x" })))
  end)

  it("fails a held call on a server that stops answering, and goes on", function()
    local h = short(1)
    -- the blocking connection open: the send below needs no server
    assert.same({ "PONG" }, eventually(function()
      h:send_held(0.1, { "PING" })
      return h:recv_held()
    end))
    srv:pause()   -- before the send: the server cannot answer it in time
    h:send_held(0.1, { "BLPOP", "hl2", "0.1" })
    local ok, err = pcall(h.recv_held, h, 5)
    srv:resume()
    assert.is_false(ok)
    assert.equal("timeout", err.kind)
    assert.is_false(h:held())
    eventually(h.call, h, "PING")
    assert.same({ false }, eventually(function()
      h:send_held(0.1, { "BLPOP", "hl2", "0.1" })
      return h:recv_held()
    end))
  end)

  it("times out on a server that stops answering", function()
    local h = short(1)
    eventually(h.call, h, "PING")
    srv:pause()
    local ok, err = pcall(h.length, h, "s")
    srv:resume()
    assert.is_false(ok)
    assert.equal("timeout", err.kind)
    assert.equal(0, eventually(h.length, h, "s"))
  end)

  -- the C API alone, the wake fd (a pipe a signal handler would write to)
  -- included, from spec/c/groups_test.c
  it("passes its C test", function()
    local exe = shell.build_c_test("groups_test", srv.dir)
    local rc, out = shell.sh(shell.quote(exe) .. " " .. srv.port)
    assert.equal(0, rc, out)
    assert.matches(" 0 failures", out, 1, true)
    assert.is_nil(out:match("not ok"))
  end)
end)
