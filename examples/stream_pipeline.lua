-- A stream pipeline across processes: a producer, a dispatcher that routes
-- on metadata alone, and two workers, each its own process, talking
-- through topics on a Redis server (ps.stream).
--
--   producer ──"scans"──▶ dispatcher ──"work.photo"──▶ worker photo
--                                     └─"work.text"───▶ worker text
--
-- The producer sends images (256 KiB: they go to the store, the event
-- carries a proxy) and short notes (inline, inside the event), each with
-- metadata saying what it is. The dispatcher reads the metadata and
-- forwards each proxy to the right worker without fetching a byte: it
-- reports its store's GET count, 0. The workers resolve what they get and
-- report back on a "results" topic, which this script reads.
--
--   build/bin/proxystore examples/stream_pipeline.lua [REDIS_URL] [items]
--
-- Without REDIS_URL it starts a private redis-server (on a Unix socket in
-- a temporary directory) and stops it at the end.

local ps = require "proxystore"

-- The interpreter running this script (proxystore or lua5.4), to start
-- the other roles with.
local function interpreter()
  local i = -1
  while arg[i - 1] do i = i - 1 end
  return arg[i] or "lua5.4"
end

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

---------------------------------------------------------------------------
-- The roles, each run as `stream_pipeline.lua --role NAME URL [items]`.

local roles = {}

-- The store the images go to, on the same server; every role makes it
-- under the same name, so that the proxies (which name it) resolve
-- through it and its metrics count what each process fetched.
local function store(url)
  return ps.get_store("pipeline") or ps.init_store(url, { name = "pipeline" })
end

function roles.producer(url, n)
  local p = ps.stream.producer { broker = url, store = store(url) }
  for i = 1, n do
    if i % 4 == 0 then
      p:send("scans", ("note %d: nothing to see"):format(i),
        { metadata = { kind = "text", id = i } })
    else
      local pixel = string.char(i % 256)
      -- single use: the worker that resolves it deletes it from the store
      p:send("scans", pixel:rep(256 * 1024), { evict = true,
        metadata = { kind = "photo", id = i, bytes = 256 * 1024 } })
    end
  end
  p:close_topic("scans")
  p:send("results", ("producer: sent %d items (%d as proxies, %d inline)")
    :format(n, p.stats.proxied, p.stats.inline))
  p:close()
end

function roles.dispatcher(url)
  local s = store(url)
  local c = ps.stream.consumer("scans", { broker = url, group = "dispatch", from = "start" })
  local fwd = ps.stream.producer { broker = url }
  local routed, unresolved = 0, 0
  for item, meta in c:iter() do
    -- the item (a proxy, or a short note) goes on as it is: a proxy
    -- travels as its reference, nothing is fetched
    fwd:send("work." .. meta.kind, item, { metadata = meta })
    routed = routed + 1
    if ps.is_proxy(item) and not ps.is_resolved(item) then
      unresolved = unresolved + 1
    end
  end
  fwd:close_topic("work.photo")
  fwd:close_topic("work.text")
  fwd:send("results", ("dispatcher: routed %d items on metadata alone (%d " ..
    "proxies, none resolved); its store made %d GETs"):format(routed, unresolved,
    s:metrics().get.count))
  fwd:close()
  c:close()
end

function roles.worker(url, _, kind)
  local c = ps.stream.consumer("work." .. kind, { broker = url, group = "workers",
                                                  from = "start" })
  local s = store(url)
  local count, bytes = 0, 0
  for item, meta in c:iter() do
    local data = ps.extract(item)   -- a photo's bytes are fetched here
    assert(type(data) == "string" and (meta.kind == "text" or #data == meta.bytes))
    count, bytes = count + 1, bytes + #data
  end
  local r = ps.stream.producer { broker = url }
  r:send("results", ("worker %s: %d items, %.1f MiB, %d GETs"):format(kind, count,
    bytes / (1024 * 1024), s:metrics().get.count))
  r:close()
  c:close()
end

if arg[1] == "--role" then
  local role, url, n, extra = arg[2], arg[3], tonumber(arg[4]) or 0, arg[5]
  roles[role](url, n, extra)
  return
end

---------------------------------------------------------------------------
-- The main script: a server if none was given, the four processes, and
-- their reports.

local url = arg[1]
local n = math.tointeger(tonumber(arg[2] or "") or 40)
local server_dir, server_pid

if not url then
  server_dir = io.popen("mktemp -d /tmp/ps-pipeline.XXXXXX"):read("l")
  local sock = server_dir .. "/redis.sock"
  assert(os.execute(("redis-server --port 0 --unixsocket %s --save '' " ..
    "--appendonly no --daemonize yes --pidfile %s/pid --dir %s >/dev/null")
    :format(q(sock), q(server_dir), q(server_dir))),
    "could not start redis-server: give a REDIS_URL")
  for _ = 1, 100 do
    local f = io.open(server_dir .. "/pid")
    if f then server_pid = f:read("n"); f:close() end
    if server_pid and os.execute("redis-cli -s " .. q(sock) .. " ping >/dev/null 2>&1") then
      break
    end
    os.execute("sleep 0.05")
  end
  url = "unix://" .. sock
end

local results = ps.stream.consumer("results", { broker = url })
local self = arg[0]
local pids = {}
local function start(...)
  local args = { q(interpreter()), q(self), "--role" }
  for _, a in ipairs { ... } do args[#args + 1] = q(a) end
  local p = io.popen(table.concat(args, " ") .. " & echo $!")
  pids[#pids + 1] = p:read("l")
  p:close()
end

local ok, err = pcall(function()
  start("worker", url, 0, "photo")
  start("worker", url, 0, "text")
  start("dispatcher", url, 0)
  start("producer", url, n)
  for _ = 1, 4 do print((results:next(120))) end
end)
results:close()
for _, pid in ipairs(pids) do os.execute("kill " .. pid .. " 2>/dev/null") end
if server_pid then
  os.execute("kill " .. server_pid)
  os.execute("sleep 0.2; rm -rf " .. q(server_dir))
end
if not ok then error(err, 0) end
