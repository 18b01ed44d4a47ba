-- What a broken or hostile "Redis" sends can never crash the process nor
-- make it allocate what the reply claims: every reply below ends in a
-- one-line proxystore error, in a child whose peak memory stays small.
-- The server is spec/c/fake_redis.c, answering every read with fixed bytes.
local shell = require "helpers.shell"

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."

describe("the redis store against a hostile server", function()
  local tmp, bin

  setup(function()
    tmp = shell.tempdir("hostile")
    bin = tmp .. "/fake_redis"
    local rc, out = shell.sh(("cd %s && ${CC:-cc} -std=c11 -Wall -Wextra -Werror "
      .. "-D_GNU_SOURCE -O1 -o %s spec/c/fake_redis.c"):format(shell.quote(ROOT),
      shell.quote(bin)))
    assert(rc == 0, out)
  end)

  teardown(function() shell.rmtree(tmp) end)

  -- Starts the fake server answering first, then rest; runs op against it
  -- in a child lua5.4; stops the server; returns the child's output. (The
  -- server also leaves by itself once this process is gone.) With cluster,
  -- the store is a cluster store whose one seed is the fake server.
  local function against(first, rest, op, cluster)
    local portfile = tmp .. "/port"
    os.remove(portfile)
    local pidfile = tmp .. "/pid"
    os.execute(("%s%s %d %s %s %s >/dev/null 2>&1 & echo $! > %s"):format(shell.CLEAN,
      shell.quote(bin), shell.my_pid(), shell.quote(portfile), shell.quote(first),
      shell.quote(rest), shell.quote(pidfile)))
    local port
    for _ = 1, 3000 do   -- up to 30 s: a hang guard on a loaded machine
      local f = io.open(portfile)
      port = f and tonumber(f:read("a"))
      if f then f:close() end
      if port then break end
      os.execute("sleep 0.01")
    end
    local pf = io.open(pidfile)
    local pid = pf and pf:read("n")
    if pf then pf:close() end
    if not port and pid then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    assert(port, "the fake server did not start")
    local script = tmp .. "/child.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
      local ps = require "proxystore"
      local function hwm()
        for l in io.lines("/proc/self/status") do
          local v = l:match("^VmHWM:%%s+(%%d+)")
          if v then return tonumber(v) end
        end
      end
      local ok, err = pcall(function()
        -- timeout: generous, the fake server answers at once (a loaded
        -- machine may still be slow to run it)
        local s = ps.init_store("redis", { %s = %s, timeout = 2, cache_size = 0 })
        %s
      end)
      io.write(tostring(ok), "|", type(err) == "table" and tostring(err.kind) or type(err),
               "|", tostring(err), "|", hwm())
    ]]):format(cluster and "cluster" or "port", cluster and ('{ "127.0.0.1:' .. port .. '" }')
      or port, op or ""))
    f:close()
    local p = io.popen("lua5.4 " .. shell.quote(script) .. " 2>&1")
    local out = p:read("a")
    p:close()
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    return out
  end

  local function refused(out)
    local ok, kind, msg, hwm = out:match("^(%a+)|([%a_]+)|(.-)|(%d+)$")
    assert.truthy(ok, "the child did not finish cleanly: " .. out)
    assert.equal("false", ok, out)
    -- the server was there and answered: never "cannot connect"
    assert.is_nil(out:find("cannot connect", 1, true), out)
    assert.truthy(kind == "store" or kind == "connection" or kind == "timeout", out)
    assert.matches("^proxystore: [^\n]+$", msg)
    assert.is_true(tonumber(hwm) < 100 * 1024, "peak RSS " .. hwm .. " kB: " .. out)
    return kind, msg
  end

  it("refuses a 4 GB answer to PING without allocating it", function()
    local kind, msg = refused(against("$4000000000\\r\\n", ""))
    assert.equal("store", kind)
    assert.matches("4000000000-byte reply", msg, 1, true)
  end)

  it("refuses arrays, bad numbers and unknown types where a small reply belongs", function()
    for _, reply in ipairs { "*2\\r\\n$1\\r\\na\\r\\n$1\\r\\nb\\r\\n", ":x\\r\\n",
                             "$99999999999999999999999\\r\\n", "?what\\r\\n", "\\r\\n" } do
      refused(against(reply, ""))
    end
  end)

  it("turns every hostile answer to a GET into a clear error", function()
    for _, reply in ipairs {
      "$4000000000\\r\\n",            -- promises 4 GB, sends nothing
      "$12\\r\\nshort",                -- fewer bytes than promised
      "$-7\\r\\n", ":12\\r\\n", "+OK\\r\\n", "-ERR boom\\r\\n",
      "*1\\r\\n$1\\r\\nx\\r\\n",
      "$3\\r\\nabcXY",               -- no CRLF after the body
      "$5\\r\\n\\250\\1\\0\\0\\0\\r\\n",  -- bytes that are no proxystore object
    } do
      refused(against("+PONG\\r\\n", reply, "return s:get('k')"))
      refused(against("+PONG\\r\\n", reply, "return ps.extract(s:proxy_from_key('k'))"))
    end
  end)
  -- A cluster store reads the slot map (CLUSTER SHARDS) from its seed at
  -- init_store: whatever comes back instead of a topology is refused.
  local function shard(fields)
    return "*" .. (#fields) .. "\\r\\n" .. table.concat(fields)
  end
  local function bulk(s) return "$" .. #s .. "\\r\\n" .. s .. "\\r\\n" end
  local function int(n) return ":" .. n .. "\\r\\n" end
  local function master(port, host)
    return shard { bulk "port", port, bulk "ip", bulk(host or "127.0.0.1"),
                   bulk "role", bulk "master" }
  end
  local function shards(from, to, node)
    return "*1\\r\\n" .. shard { bulk "slots", "*2\\r\\n" .. int(from) .. int(to),
                                bulk "nodes", "*1\\r\\n" .. node }
  end

  it("refuses a garbled or hostile topology with a clear error", function()
    for _, case in ipairs {
      { "+OK\\r\\n", "not an array" },
      { "*1\\r\\n:5\\r\\n", "a shard is not a field list" },
      { "*1\\r\\n" .. shard { bulk "nodes", "*0\\r\\n" }, "without its slot ranges" },
      { shards(0, 20000, master(int(7000))), "slot range out of 0..16383" },
      { shards(100, 5, master(int(7000))), "slot range out of 0..16383" },
      { shards(0, 16383, master(int(0))), "port out of range" },
      { shards(0, 16383, master(bulk "x")), "a master without a port" },
      { shards(0, 16383, master(int(7000), "bad host")), "a bad host name" },
      { shards(0, 16383, master(int(7000), "a,b")), "a bad host name" },
      { "*99999999\\r\\n", "more than 65536 elements" },
      { ("*1\\r\\n"):rep(20), "nested deeper than 8" },
      { "*1\\r\\n$4000000000\\r\\n", "reply larger than" },
    } do
      local kind, msg = refused(against(case[1], "", nil, true))
      assert.equal("store", kind, msg)
      assert.matches(case[2], msg, 1, true)
    end
    -- no slot served at all: a cluster not created yet
    local kind, msg = refused(against("*0\\r\\n", "", nil, true))
    assert.equal("connection", kind)
    assert.matches("serves no slot", msg, 1, true)
    -- before Redis 7 (no SHARDS), the same checks on CLUSTER SLOTS
    kind, msg = refused(against("-ERR unknown subcommand 'SHARDS'\\r\\n",
      "*1\\r\\n*3\\r\\n" .. int(0) .. int(16383) .. "*2\\r\\n" .. bulk "127.0.0.1" .. int(0),
      nil, true))
    assert.equal("store", kind)
    assert.matches("malformed CLUSTER SLOTS reply: port out of range", msg, 1, true)
    -- not a cluster node
    local out = against("-ERR This instance has cluster support disabled\\r\\n", "", nil, true)
    assert.matches("^false|config|proxystore: [^\n]*not a cluster node", out)
  end)

  it("turns hostile redirections into clear errors, within the timeout", function()
    local map = shards(0, 16383, master(":\\p\\r\\n"))
    for _, case in ipairs {
      { "-MOVED 99999 127.0.0.1:1\\r\\n", "store", "malformed redirection" },
      { "-MOVED 5 nohost\\r\\n", "store", "malformed redirection" },
      { "-ASK 5 127.0.0.1:70000\\r\\n", "store", "malformed redirection" },
      { "-ASK 7629 127.0.0.1:\\p\\r\\n", "store", "ASKING refused" },   -- 'k' hashes to 7629
      { "-MOVED 7629 127.0.0.1:\\p\\r\\n", "connection", "still so after" },
      { "-ASK 5 127.0.0.1:\\p\\r\\n", "connection", "still so after" },
      { "-TRYAGAIN Multiple keys request during rehashing of slot\\r\\n", "connection",
        "still so after" },
      { "-CLUSTERDOWN The cluster is down\\r\\n", "connection", "still so after" },
    } do
      local t0 = os.time()
      local kind, msg = refused(against(map, case[1], "return s:get('k')", true))
      assert.equal(case[2], kind, msg)
      assert.matches(case[3], msg, 1, true)
      assert.is_true(os.time() - t0 < 10, "took " .. os.time() - t0 .. " s")
    end
  end)
end)
