-- ps.stream under faults, with a real redis-server and real processes: a
-- server restarted, killed or hung mid-stream, a producer killed
-- mid-stream, a consumer of a group killed while it held an item.
-- Handshakes go through the streams themselves (held reads), so nothing
-- here depends on timing: time bounds are hang guards only.

local ps = require "proxystore"
local core = require "proxystore.core"
local redis = require "helpers.redis"
local shell = require "helpers.shell"
local alive = shell.alive

local q = shell.quote

-- How long a consumer waits for an item that is there or on its way: a
-- hang guard, never waited out unless something is wrong.
local WAIT = 60

-- fn(...), tried again (up to 20 times in all) while it fails with a
-- timeout: for calls to a running server through a producer or consumer
-- with a short timeout, which a loaded machine can make late (what such
-- specs test is the hang, not this).
local function eventually(fn, ...)
  for _ = 1, 19 do
    local res = table.pack(pcall(fn, ...))
    if res[1] then return table.unpack(res, 2, res.n) end
    if not (core.is_error(res[2]) and res[2].kind == "timeout") then error(res[2], 0) end
  end
  return fn(...)
end

local function raises(kind, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error of kind " .. kind)
  assert.is_true(core.is_error(err), "not a proxystore error: " .. tostring(err))
  assert.equal(kind, err.kind, tostring(err))
  return err
end


describe("streams under faults", function()
  local srv, url
  local open, children, files = {}, {}, {}

  -- A Lua process running code (with url and the module paths of this
  -- one); its output goes to a file. Returns its pid.
  local function spawn(code)
    local script = os.tmpname()
    files[#files + 1] = script
    files[#files + 1] = script .. ".out"
    local f = assert(io.open(script, "w"))
    f:write(("local url = %q\n"):format(url), code)
    f:close()
    local p = assert(io.popen(("LUA_PATH=%s LUA_CPATH=%s lua5.4 %s >%s 2>&1 </dev/null & echo $!")
      :format(q(package.path), q(package.cpath), q(script), q(script .. ".out"))))
    local pid = tonumber(p:read("l"))
    p:close()
    assert(pid, "could not start a child process")
    children[#children + 1] = pid
    return pid, script .. ".out"
  end

  local function kill(pid)
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    local deadline = core.monotonic() + 30   -- a hang guard
    repeat
      if not alive(pid) then return end
      redis.sleep(0.025)
    until core.monotonic() > deadline
    error("process " .. pid .. " survived kill -9")
  end

  local function output(file)
    local f = io.open(file)
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
  end

  local function track(x)
    open[#open + 1] = x
    return x
  end

  setup(function()
    srv = redis.start()
    url = ("redis://%s:%d"):format(srv.host, srv.port)
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  before_each(function()
    if not srv.pid then srv:restart() end
    srv:resume()
    local g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
    g:call("FLUSHALL")
    g:close()
  end)

  after_each(function()
    for _, pid in ipairs(children) do
      if alive(pid) then kill(pid) end
    end
    children = {}
    for _, x in ipairs(open) do pcall(x.close, x) end
    open = {}
    for _, f in ipairs(files) do os.remove(f) end
    files = {}
  end)

  -- (a refused connection fails at once: the timeouts are hang guards)
  it("raises clear connection errors while the server is down, and recovers after a restart", function()
    local p = track(ps.stream.producer { broker = url, inline_below = 100, timeout = 30 })
    local c = track(ps.stream.consumer("t", { broker = url, timeout = 30 }))
    local gc = track(ps.stream.consumer("t", { broker = url, group = "g", timeout = 30 }))
    p:send("t", 1)
    p:send("t", ("big"):rep(100))
    p:flush()
    assert.equal(1, c:next(WAIT))
    assert.equal(1, gc:next(WAIT))
    assert.equal(("big"):rep(100), ps.extract(c:next(WAIT)))
    assert.is_true(ps.is_proxy(gc:next(WAIT)))
    srv:kill()
    local address = srv.host .. ":" .. srv.port
    -- a large item cannot be stored: the send fails, nothing is held
    local err = raises("connection", p.send, p, "t", ("lost"):rep(100))
    assert.matches(address, tostring(err), 1, true)
    -- a small one is held, and the flush says so
    assert.is_true(p:send("t", 3))
    err = raises("connection", p.flush, p)
    assert.matches(address, tostring(err), 1, true)
    assert.matches("1 event(s) are held", tostring(err), 1, true)
    err = raises("connection", c.next, c, WAIT)
    assert.matches(address, tostring(err), 1, true)
    raises("connection", gc.next, gc, WAIT)
    srv:restart()
    -- the held event goes now; the group, lost with the old server, is
    -- made again; every consumer goes on
    p:flush()
    p:send("t", 4)
    p:close_topic("t")
    assert.equal(3, c:next(WAIT))
    assert.equal(4, c:next(WAIT))
    assert.is_nil(c:next(WAIT))
    assert.equal(3, gc:next(WAIT))
    assert.equal(4, gc:next(WAIT))
    assert.is_nil(gc:next(WAIT))
  end)

  it("fails a held read with a connection error when the server dies during it", function()
    local c = track(ps.stream.consumer("t", { broker = url, timeout = 30 }))
    local gc = track(ps.stream.consumer("t", { broker = url, group = "g", timeout = 30 }))
    -- the kill comes while next() waits, or before: a connection error either way
    os.execute(("(sleep 0.3; kill -9 %d) >/dev/null 2>&1 &"):format(srv.pid))
    raises("connection", c.next, c, 30)
    srv:kill()   -- reaps it, so restart works
    raises("connection", gc.next, gc, 30)
    srv:restart()
    raises("timeout", c.next, c, 0.1)
  end)

  it("raises timeout on a hung server, and goes on once it answers", function()
    -- p and c, which meet the hang, have a short timeout: their calls to
    -- the running server are tried again while a loaded machine makes them
    -- late; the first item goes through a producer with a generous one (a
    -- flush tried again after a late reply would send it twice)
    local direct = track(ps.stream.producer { broker = url, timeout = 30 })
    local p = track(ps.stream.producer { broker = url, timeout = 0.5 })
    local c = track(eventually(ps.stream.consumer, "t", { broker = url, timeout = 0.5 }))
    direct:send("t", 1)
    direct:flush()
    assert.equal(1, eventually(c.next, c, WAIT))
    srv:pause()
    p:send("t", 2)
    local ok, err = pcall(p.flush, p)
    local ok2, err2 = pcall(c.next, c, 0)
    srv:resume()
    assert.is_false(ok)
    assert.equal("timeout", err.kind)
    assert.is_false(ok2)
    assert.equal("timeout", err2.kind)
    eventually(p.flush, p)
    assert.equal(2, eventually(c.next, c, WAIT))
  end)

  it("keeps what a killed producer sent; consumers then wait or time out", function()
    local c = track(ps.stream.consumer("t", { broker = url, from = "start" }))
    local gc = track(ps.stream.consumer("t", { broker = url, group = "g", from = "start" }))
    local pid = spawn [[
      local ps = require "proxystore"
      local p = ps.stream.producer { broker = url, inline_below = 100 }
      p:send("t", "one", { metadata = { n = 1 } })
      p:send("t", ("two"):rep(100), { metadata = { n = 2 } })
      p:send("t", "three", { metadata = { n = 3 } })
      p:flush()
      p:send("t", "never sent")   -- held: the producer dies before a flush
      -- then wait for ever (a held read), until killed
      ps.stream.consumer("never", { broker = url }):next()
    ]]
    local got = {}
    for i = 1, 3 do
      local v, m = c:next(WAIT)
      assert.equal(i, m.n)
      got[i] = ps.extract(v)
    end
    kill(pid)
    assert.same({ "one", ("two"):rep(100), "three" }, got)
    raises("timeout", c.next, c, 0.2)
    -- a group consumer gets the same three, the proxy resolving after the
    -- producer's death (the bytes are in the store, not the producer)
    assert.equal("one", gc:next(WAIT))
    assert.equal(("two"):rep(100), ps.extract(gc:next(WAIT)))
    assert.equal("three", gc:next(WAIT))
    raises("timeout", gc.next, gc, 0.2)
  end)

  it("hands the items of a killed group consumer to the others after the visibility", function()
    local p = track(ps.stream.producer { broker = url })
    local status = track(ps.stream.consumer("status", { broker = url, from = "start" }))
    for i = 1, 4 do p:send("t", i) end
    p:close_topic("t")
    local pid, out = spawn [[
      local ps = require "proxystore"
      local c = ps.stream.consumer("t", { broker = url, group = "g", name = "doomed",
                                          from = "start" })
      local v = c:next(30)
      local s = ps.stream.producer { broker = url }
      s:send("status", "took " .. v)
      s:flush()
      ps.stream.consumer("never", { broker = url }):next()
    ]]
    local took = status:next(WAIT)
    assert.equal("took 1", took, output(out))
    kill(pid)
    -- the survivor takes the new items and, once item 1 has been idle for
    -- the visibility (before, between or after them), item 1; the topic
    -- ends for it only then
    local survivor = track(ps.stream.consumer("t", { broker = url, group = "g",
      name = "survivor", visibility = 0.3 }))
    local got = {}
    for v in survivor:iter(WAIT) do got[#got + 1] = v end
    table.sort(got)
    assert.same({ 1, 2, 3, 4 }, got)
    -- every item acknowledged
    local g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
    assert.equal(0, (g:pending_summary("t", "g")))
    g:close()
  end)

  it("gives a group consumer restarted under its name its unacknowledged item first", function()
    local p = track(ps.stream.producer { broker = url })
    local status = track(ps.stream.consumer("status", { broker = url, from = "start" }))
    for i = 1, 3 do p:send("t", i) end
    p:flush()
    local pid = spawn [[
      local ps = require "proxystore"
      local c = ps.stream.consumer("t", { broker = url, group = "g", name = "w",
                                          from = "start" })
      local v = c:next(30)
      local s = ps.stream.producer { broker = url }
      s:send("status", v)
      s:flush()
      ps.stream.consumer("never", { broker = url }):next()
    ]]
    assert.equal(1, status:next(WAIT))
    kill(pid)
    local again = track(ps.stream.consumer("t", { broker = url, group = "g", name = "w" }))
    assert.equal(1, again:next(WAIT))
    assert.equal(2, again:next(WAIT))
  end)
end)
