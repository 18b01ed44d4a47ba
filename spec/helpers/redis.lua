-- spec/helpers/redis.lua: a real redis-server for the specs.
--
--   local redis = require "helpers.redis"
--   local srv = redis.start()          -- free loopback port + Unix socket
--   srv.host, srv.port, srv.path, srv.dir
--   srv:cli("SET", "k", "v")           -- redis-cli output (string)
--   srv:pause() / srv:resume()         -- SIGSTOP / SIGCONT (a server that
--                                      -- hangs; slow servers are
--                                      -- spec/c/trickle_relay.c's, on a
--                                      -- fixed schedule)
--   srv:kill()                         -- SIGKILL
--   srv:restart()                      -- start again, same port and socket
--   srv:stop()                         -- SIGTERM, wait, remove the temp dir
--
-- Persistence is off. Every server also gets a watchdog shell that
-- SIGKILLs it and removes its temp dir when the Lua process that started
-- it is gone, so even a crashed spec run leaves no stray behind. Child processes
-- run without LD_PRELOAD/ASAN_OPTIONS (spec/run.sh's sanitizer pass must
-- not instrument redis-server).

local shell = require "helpers.shell"

local M = {}

local sh, read_cmd, q, alive = shell.run, shell.read, shell.quote, shell.alive
M.sleep = shell.sleep

local Server = {}
Server.__index = Server

function Server:cli(...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = q(select(i, ...)) end
  local auth = self.password and ("-a " .. q(self.password) .. " --no-auth-warning ") or ""
  return read_cmd("redis-cli -h 127.0.0.1 -p " .. self.port .. " " ..
                  auth .. table.concat(args, " ") .. " 2>&1")
end

function Server:ping()
  return self:cli("PING"):match("PONG") ~= nil
end

-- Starts redis-server on self.port; true when it answers PING.
function Server:_launch()
  local pidfile = self.dir .. "/redis.pid"
  os.remove(pidfile)
  local cmd = "redis-server --bind 127.0.0.1 --port " .. self.port ..
    " --unixsocket " .. q(self.path) .. " --unixsocketperm 700" ..
    " --save '' --appendonly no --dir " .. q(self.dir) ..
    " --daemonize yes --pidfile " .. q(pidfile) ..
    " --logfile " .. q(self.dir .. "/redis.log") .. " " .. (self.args or "") ..
    " >/dev/null 2>&1"
  if not sh(cmd) then return false end
  for _ = 1, 400 do      -- up to 20 s: a hang guard on a loaded machine
    local f = io.open(pidfile)
    if f then
      self.pid = f:read("n")
      f:close()
    end
    if self.pid and self:ping() then
      -- Watchdog: once the process that started the server is gone (a
      -- crashed or killed spec run), kill the server and remove its dir.
      -- While the owner lives, the server's end (stop, kill, restart) is
      -- the owner's business. The watchdog has a session of its own: a
      -- kill of the spec run's process group (^C, a CI timeout) must not
      -- take it along, since the daemonized server is not in that group.
      sh("setsid -f sh -c " .. q(
        "while kill -0 " .. self.owner .. " 2>/dev/null && kill -0 " ..
        self.pid .. " 2>/dev/null; do sleep 0.5; done; " ..
        "kill -0 " .. self.owner .. " 2>/dev/null || { kill -9 " .. self.pid ..
        " 2>/dev/null; sleep 0.2; rm -rf " .. q(self.dir) .. "; }") ..
        " >/dev/null 2>&1 </dev/null &")
      return true
    end
    if self.pid and not alive(self.pid) then break end
    M.sleep(0.05)
  end
  if self.pid then sh("kill -9 " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
  return false
end

-- opts.args: extra redis-server arguments; opts.password: for srv:cli.
function M.start(opts)
  opts = opts or {}
  local dir = read_cmd("mktemp -d \"${TMPDIR:-/tmp}/proxystore-redis.XXXXXX\""):gsub("%s+$", "")
  assert(dir ~= "", "mktemp failed")
  local self = setmetatable({
    host = "127.0.0.1", dir = dir, path = dir .. "/redis.sock",
    args = opts.args, password = opts.password, owner = shell.my_pid(),
  }, Server)
  math.randomseed(os.time() + self.owner)
  for _ = 1, 20 do
    self.port = math.random(20000, 60000)
    if self:_launch() then return self end
  end
  sh("rm -rf " .. q(dir))
  error("could not start redis-server (see redis-server in PATH)")
end

function Server:signal(sig)
  if self.pid then sh("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") end
end

function Server:pause() self:signal("STOP") end
function Server:resume() self:signal("CONT") end

local function wait_gone(pid)
  for _ = 1, 800 do      -- up to 20 s
    if not alive(pid) then return true end
    M.sleep(0.025)
  end
  return false
end

function Server:kill()
  if not self.pid then return end
  self:signal("CONT")
  self:signal("KILL")
  wait_gone(self.pid)
  self.pid = nil
end

function Server:restart()
  if self.pid then self:kill() end
  for _ = 1, 40 do            -- the port may linger a moment
    if self:_launch() then return self end
    M.sleep(0.1)
  end
  error("could not restart redis-server on port " .. self.port)
end

function Server:stop()
  if self.pid then
    self:signal("CONT")
    self:signal("TERM")
    if not wait_gone(self.pid) then self:kill() end
    self.pid = nil
  end
  if self.dir then
    sh("rm -rf " .. q(self.dir))
    self.dir = nil
  end
end

-- A port nothing listens on (for "unreachable" specs).
function M.dead_port()
  local srv = M.start()
  local port = srv.port
  srv:stop()
  return port
end

return M
