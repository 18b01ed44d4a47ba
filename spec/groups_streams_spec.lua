-- What streams of proxies added to the groups module (src/redis/groups.c,
-- through core.redis_groups): the newest entries, acknowledging and
-- reading in one round trip, and reclaiming a dead consumer's entries
-- (the piece the queue pool shares). Against a real redis-server.

local core = require "proxystore.core"
local redis = require "helpers.redis"
local shell = require "helpers.shell"

local function ids_of(entries)
  local t = {}
  for i, e in ipairs(entries) do t[i] = e.id end
  return t
end

local function cmdstat(g, name)
  local info = g:call("INFO", "commandstats")
  return tonumber(info:match("cmdstat_" .. name .. ":calls=(%d+)")) or 0
end

describe("redis groups, for streams", function()
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
    -- a generous timeout: on a loaded machine a call may take seconds
    g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
    g:call("FLUSHALL")
  end)

  it("gives the newest entries first, and nothing for an absent stream", function()
    local ids = g:add("s", { { k = "1" }, { k = "2" }, { k = "3" } })
    local last = g:revrange("s", "+", "-", 1)
    assert.same({ ids[3] }, ids_of(last))
    assert.equal("3", last[1].fields.k)
    assert.same({ ids[3], ids[2], ids[1] }, ids_of(g:revrange("s", "+", "-", 10)))
    assert.same({ ids[2], ids[1] }, ids_of(g:revrange("s", ids[2], "-", 10)))
    assert.same({}, g:revrange("absent", "+", "-", 1))
  end)

  it("acknowledges and reads in one round trip", function()
    g:create_group("s", "grp", "0")
    local ids = g:add("s", { { k = "1" }, { k = "2" }, { k = "3" } })
    local got, woken, acked = g:ack_read_group("s", "grp", "c", {}, ">", 1)
    assert.same({ ids[1] }, ids_of(got))
    assert.is_false(woken)
    assert.equal(0, acked)
    g:call("CONFIG", "RESETSTAT")
    got, woken, acked = g:ack_read_group("s", "grp", "c", { ids[1] }, ">", 1, 1)
    assert.same({ ids[2] }, ids_of(got))
    assert.equal(1, acked)
    -- one XACK and one XREADGROUP, and only ids[2] pending now
    assert.equal(1, cmdstat(g, "xack"))
    assert.equal(1, cmdstat(g, "xreadgroup"))
    assert.same({ ids[2] }, ids_of(g:pending("s", "grp")))
    -- a consumer restarting under its name reads its pending entries so
    got = g:ack_read_group("s", "grp", "c", {}, "0", 10)
    assert.same({ ids[2] }, ids_of(got))
    -- acking an id that is not pending counts 0, the read goes on
    got, _, acked = g:ack_read_group("s", "grp", "c", { ids[1] }, ">", 10)
    assert.same({ ids[3] }, ids_of(got))
    assert.equal(0, acked)
    -- a held read that ends empty still acknowledges
    got, woken, acked = g:ack_read_group("s", "grp", "c", { ids[2], ids[3] }, ">", 1, 0.05)
    assert.same({}, got)
    assert.equal(2, acked)
    assert.equal(0, (g:pending_summary("s", "grp")))
  end)

  it("refuses an unknown group, and bad ids, with clear errors", function()
    local ok, err = pcall(g.ack_read_group, g, "none", "grp", "c", { "1-0" }, ">", 1)
    assert.is_false(ok)
    assert.equal("missing_key", err.kind)
    assert.matches("NOGROUP", tostring(err))
    ok, err = pcall(g.ack_read_group, g, "s", "grp", "c", { 1 }, ">", 1)
    assert.is_false(ok)
    g:create_group("s", "grp", "0")
    ok, err = pcall(g.ack_read_group, g, "s", "grp", "c", { "not-an-id" }, ">", 1)
    assert.is_false(ok)
    assert.equal("store", err.kind)
    ok, err = pcall(g.reclaim, g, "s", "grp", "c", -1, 10)
    assert.is_false(ok)
    ok, err = pcall(g.reclaim, g, "s", "grp", "c", 0, 10, ("9"):rep(60))
    assert.is_false(ok)
  end)

  it("reclaims a dead consumer's entries, with delivery counts, in pieces", function()
    g:create_group("s", "grp", "0")
    local ids = g:add("s", { { k = "1" }, { k = "2" }, { k = "3" }, { k = "4" } })
    assert.equal(4, #g:read_group("s", "grp", "dead", ">", 10))
    -- not idle long enough: nothing moves
    local got, cursor = g:reclaim("s", "grp", "live", 3600, 10)
    assert.same({}, got)
    assert.equal("0-0", cursor)
    -- an entry trimmed away while pending is acknowledged and left out
    g:delete("s", { ids[2] })
    got, cursor = g:reclaim("s", "grp", "live", 0, 1)
    assert.same({ ids[1] }, ids_of(got))
    assert.equal(2, got[1].deliveries)
    assert.equal("1", got[1].fields.k)
    assert.are_not.equal("0-0", cursor)
    got, cursor = g:reclaim("s", "grp", "live", 0, 10, cursor)
    assert.same({ ids[3], ids[4] }, ids_of(got))
    assert.equal("0-0", cursor)
    local p = g:pending("s", "grp")
    assert.same({ ids[1], ids[3], ids[4] }, ids_of(p))
    for _, e in ipairs(p) do assert.equal("live", e.consumer) end
  end)

  it("passes its C test", function()
    local exe = shell.build_c_test("groups_streams_test", srv.dir)
    local rc, out = shell.sh(shell.quote(exe) .. " " .. srv.port)
    assert.equal(0, rc, out)
    assert.matches(" 0 failures", out, 1, true)
    assert.is_nil(out:match("not ok"))
  end)
end)
