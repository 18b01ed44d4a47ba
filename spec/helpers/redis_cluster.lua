-- spec/helpers/redis_cluster.lua: a real Redis Cluster for the specs and
-- the benchmarks: masters and replicas, each a redis-server with
-- --cluster-enabled on a free loopback port, joined by
-- `redis-cli --cluster create`.
--
--   local rc = require "helpers.redis_cluster"
--   local c = rc.start { masters = 3, replicas = 1, node_timeout = 1000,
--                        password = nil }
--   c.seeds                      -- { "127.0.0.1:port", ... } every node
--   c.nodes[i]                   -- { port =, pid =, dir = }
--   c:cli(i, "GET", "k")         -- redis-cli -p <node i> (output string)
--   c:topology()                 -- CLUSTER NODES of a live node, parsed
--   c:slot(key)                  -- CLUSTER KEYSLOT, asked of the server
--   c:slots(keys)                -- the same for many keys, one redis-cli
--   c:pipe(i, {{"GET", "k"}, ...}) -- many commands, one redis-cli: lines
--   c:owner(slot)                -- the node index serving slot
--   c:id(i)                      -- node i's cluster id
--   c:wait_replicas()            -- every replica's master link up
--   c:wait_ok()                  -- cluster_state:ok on every live node
--   c:kill(i)                    -- SIGKILL of node i
--   c:stop()                     -- kill every node, remove the temp dir
--
-- Persistence is off; a master's first sync to its replica starts at once
-- (--repl-diskless-sync-delay 0), else a replica cannot take over in the
-- first seconds. One watchdog shell per cluster kills every node and
-- removes the temp dir once the Lua process that started it is gone, so
-- even a crashed run leaves nothing behind. Child processes run without
-- LD_PRELOAD/ASAN_OPTIONS (spec/run.sh's sanitizer pass must not
-- instrument redis-server).

local shell = require "helpers.shell"

local M = {}

M.CLEAN_ENV = shell.CLEAN
local sh, read_cmd, q, alive = shell.run, shell.read, shell.quote, shell.alive
M.sleep = shell.sleep

-- Waits until cond() is true, polling every `step` seconds for at most
-- `limit` seconds (a hang guard, not a timing assumption); cond's result.
local function wait_for(cond, limit, step)
  local deadline = os.time() + limit
  repeat
    local v = cond()
    if v then return v end
    M.sleep(step or 0.05)
  until os.time() > deadline
  return cond()
end
M.wait_for = wait_for

local Cluster = {}
Cluster.__index = Cluster

-- "-a pass --no-auth-warning " when the cluster has a password.
function Cluster:auth()
  return self.password and ("-a " .. q(self.password) .. " --no-auth-warning ") or ""
end

function Cluster:cli(i, ...)
  local args = {}
  for k = 1, select("#", ...) do args[#args + 1] = q(select(k, ...)) end
  return read_cmd("redis-cli -h 127.0.0.1 -p " .. self.nodes[i].port .. " " ..
                  self:auth() .. table.concat(args, " ") .. " 2>&1")
end

-- Many commands in one redis-cli run (each a list of words without
-- spaces or quotes): its output lines, one per reply.
function Cluster:pipe(i, commands)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  for _, cmd in ipairs(commands) do
    local words = {}
    for k, w in ipairs(cmd) do words[k] = '"' .. tostring(w) .. '"' end
    f:write(table.concat(words, " "), "\n")
  end
  f:close()
  local out = read_cmd("redis-cli -h 127.0.0.1 -p " .. self.nodes[i].port .. " " ..
                       self:auth() .. "< " .. q(file) .. " 2>&1")
  os.remove(file)
  local lines = {}
  for line in out:gmatch("[^\n]*") do
    if #lines < #commands then lines[#lines + 1] = line end
  end
  return lines
end

function Cluster:alive(i)
  return alive(self.nodes[i].pid)
end

-- A node that is alive, to ask about the cluster.
function Cluster:any()
  for i = 1, #self.nodes do
    if self:alive(i) then return i end
  end
  error("no node of the cluster is alive")
end

-- CLUSTER NODES, parsed: by node index { id, master (bool), fail (bool),
-- master_id, slots = { {from, to}, ... } }.
function Cluster:topology(asked)
  local out = self:cli(asked or self:any(), "CLUSTER", "NODES")
  local byport = {}
  for i, n in ipairs(self.nodes) do byport[n.port] = i end
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local words = {}
    for w in line:gmatch("%S+") do words[#words + 1] = w end
    local port = tonumber(words[2] and words[2]:match(":(%d+)@"))
    local i = port and byport[port]
    if i then
      local flags = words[3]
      local node = { id = words[1], master = flags:find("master") ~= nil,
                     fail = flags:find("fail") ~= nil, master_id = words[4],
                     slots = {} }
      for k = 9, #words do
        local a, b = words[k]:match("^(%d+)%-(%d+)$")
        if a then node.slots[#node.slots + 1] = { tonumber(a), tonumber(b) }
        elseif words[k]:match("^%d+$") then
          node.slots[#node.slots + 1] = { tonumber(words[k]), tonumber(words[k]) }
        end
      end
      t[i] = node
    end
  end
  return t
end

function Cluster:id(i)
  return self:topology()[i].id
end

function Cluster:slot(key)
  return tonumber(self:cli(self:any(), "CLUSTER", "KEYSLOT", key):match("%d+"))
end

-- The slots of many keys, in one redis-cli run.
function Cluster:slots(keys)
  local cmds = {}
  for i, k in ipairs(keys) do cmds[i] = { "CLUSTER", "KEYSLOT", k } end
  local out = {}
  for i, line in ipairs(self:pipe(self:any(), cmds)) do out[i] = tonumber(line) end
  return out
end

function Cluster:owner(slot, topo)
  for i, n in pairs(topo or self:topology()) do
    for _, r in ipairs(n.slots) do
      if slot >= r[1] and slot <= r[2] then return i end
    end
  end
end

-- Node indices of the masters that serve slots.
function Cluster:masters(topo)
  local list = {}
  for i, n in pairs(topo or self:topology()) do
    if n.master and #n.slots > 0 then list[#list + 1] = i end
  end
  table.sort(list)
  return list
end

function Cluster:wait_ok(limit)
  return wait_for(function()
    for i = 1, #self.nodes do
      if self:alive(i) and not self:cli(i, "CLUSTER", "INFO"):find("cluster_state:ok", 1, true) then
        return false
      end
    end
    -- every live node agrees on who serves what
    local ref
    for i = 1, #self.nodes do
      if self:alive(i) then
        local owners = {}
        for j, n in pairs(self:topology(i)) do
          if n.master and #n.slots > 0 and not n.fail then owners[#owners + 1] = j end
        end
        table.sort(owners)
        local s = table.concat(owners, ",")
        if ref and s ~= ref then return false end
        ref = s
      end
    end
    return true
  end, limit or 60, 0.1)
end

-- Waits until redis-cli's own check of the cluster passes: every node
-- agrees on the slots, no slot is open (importing or migrating), all are
-- covered. `redis-cli --cluster reshard` checks this first and, when it
-- fails, moves nothing (its message has no "ERR" when only a slot is
-- open); after slots move, it is when any node answers for the new
-- owners. Returns whether it passed, and the check's last output.
function Cluster:wait_agreed(limit)
  local out
  local ok = wait_for(function()
    out = read_cmd("redis-cli " .. self:auth() .. "--cluster check " ..
                   self.seeds[self:any()] .. " 2>&1")
    return out:find("All nodes agree about slots configuration", 1, true) and
           out:find("All 16384 slots covered", 1, true) and
           not out:find("[WARNING]", 1, true) and not out:find("[ERR]", 1, true)
  end, limit or 60, 0.1)
  return ok and true or false, out
end

function Cluster:wait_replicas(limit)
  return wait_for(function()
    for i, n in pairs(self:topology()) do
      if not n.master and self:alive(i) and
         not self:cli(i, "INFO", "replication"):find("master_link_status:up", 1, true) then
        return false
      end
    end
    return true
  end, limit or 60, 0.1)
end

function Cluster:kill(i)
  local n = self.nodes[i]
  sh("kill -9 " .. n.pid .. " 2>/dev/null")
  wait_for(function() return not alive(n.pid) end, 10, 0.02)
end

function Cluster:stop()
  for _, n in ipairs(self.nodes) do
    if alive(n.pid) then sh("kill -9 " .. n.pid .. " 2>/dev/null") end
  end
  for _, n in ipairs(self.nodes) do
    wait_for(function() return not alive(n.pid) end, 10, 0.02)
  end
  if self.dir then
    sh("rm -rf " .. q(self.dir))
    self.dir = nil
  end
end

local function launch(self, n, timeout)
  local pidfile = n.dir .. "/redis.pid"
  local ok = sh("redis-server --bind 127.0.0.1 --port " .. n.port ..
    " --cluster-enabled yes --cluster-config-file " .. q(n.dir .. "/nodes.conf") ..
    " --cluster-node-timeout " .. timeout ..
    " --save '' --appendonly no --repl-diskless-sync-delay 0" ..
    " --dir " .. q(n.dir) .. " --daemonize yes --pidfile " .. q(pidfile) ..
    (self.password and (" --requirepass " .. q(self.password) .. " --masterauth " ..
                        q(self.password)) or "") ..
    " --logfile " .. q(n.dir .. "/redis.log") .. " " .. (self.args or "") ..
    " >/dev/null 2>&1")
  if not ok then return false end
  -- Ours once the server on that port has our pid file's pid (a port
  -- taken by another server answers PING too); gone: the port was taken.
  return wait_for(function()
    local f = io.open(pidfile)
    if f then
      n.pid = f:read("n")
      f:close()
    end
    if n.pid and not alive(n.pid) then return "gone" end
    local info = read_cmd("redis-cli -p " .. n.port .. " " .. self:auth() .. "INFO server 2>&1")
    return n.pid and tonumber(info:match("process_id:(%d+)")) == n.pid
  end, 10, 0.05) == true
end

-- opts: masters (3), replicas per master (1), node_timeout (ms, 1000),
-- password (every node's, for clients and replication), args (more
-- redis-server arguments).
function M.start(opts)
  opts = opts or {}
  local masters, replicas = opts.masters or 3, opts.replicas or 1
  local count = masters * (1 + replicas)
  local dir = read_cmd("mktemp -d \"${TMPDIR:-/tmp}/proxystore-cluster.XXXXXX\""):gsub("%s+$", "")
  assert(dir ~= "", "mktemp failed")
  local self = setmetatable({ dir = dir, nodes = {}, seeds = {}, args = opts.args,
                              password = opts.password,
                              owner_pid = shell.my_pid() }, Cluster)
  -- Watchdog: once the process that started the cluster is gone, kill
  -- every node (their pids are in the pid files) and remove the dir. Its
  -- own session keeps it alive through a kill of the run's process group.
  sh("setsid -f sh -c " .. q(
    "while kill -0 " .. self.owner_pid .. " 2>/dev/null && [ -d " .. q(dir) .. " ]; do sleep 0.5; done; " ..
    "kill -0 " .. self.owner_pid .. " 2>/dev/null || { for f in " .. q(dir) .. "/*/redis.pid; do " ..
    "[ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; sleep 0.2; rm -rf " .. q(dir) .. "; }") ..
    " >/dev/null 2>&1 </dev/null &")
  math.randomseed(os.time() + self.owner_pid)
  local ok, err = pcall(function()
    -- Node i listens on base+i-1 and its cluster bus on that +10000.
    for _ = 1, 20 do
      local base = math.random(20000, 55000 - count)
      local all = true
      for i = 1, count do
        -- a directory per port: a node of a failed try may still hold its
        -- nodes.conf lock a moment after kill -9
        local n = { port = base + i - 1, dir = dir .. "/" .. (base + i - 1) }
        self.nodes[i] = n
        sh("mkdir -p " .. q(n.dir))
        if not launch(self, n, opts.node_timeout or 1000) then all = false break end
      end
      if all then break end
      for _, n in ipairs(self.nodes) do
        if n.pid then
          sh("kill -9 " .. n.pid .. " 2>/dev/null")
          wait_for(function() return not alive(n.pid) end, 10, 0.02)
        end
      end
      self.nodes = {}
    end
    assert(#self.nodes == count, "could not start the cluster's redis-servers")
    for i, n in ipairs(self.nodes) do self.seeds[i] = "127.0.0.1:" .. n.port end
    local out = read_cmd("redis-cli " .. self:auth() .. "--cluster create " ..
      table.concat(self.seeds, " ") ..
      " --cluster-replicas " .. replicas .. " --cluster-yes 2>&1")
    assert(out:find("All 16384 slots covered", 1, true), "cluster create failed: " .. out)
    assert(self:wait_ok(), "the cluster did not reach cluster_state:ok")
  end)
  if not ok then
    self:stop()
    error(err, 0)
  end
  return self
end

return M
