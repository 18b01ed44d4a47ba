-- The spec side of the queue pool specs (queue_spec, queue_faults_spec):
-- a redis-server, a handle to it, pools with the spec's secret, and the
-- spec's half of a task's handshake (the task pushes its pid to
-- started:<tag> and waits for go:<tag>:<pid>; the task's half stays in
-- each spec file, since a task's upvalues travel to the worker).
--
--   local fx = require("helpers.queue").new(secret)
--   setup(function() fx:start() end)       -- fx.srv, fx.g
--   teardown(function() fx:stop() end)
--   after_each(function() fx:reset() end)  -- workers stopped, server up
--   fx:url([extra]), fx:pool(opts), fx:started(tag), fx:go(tag, pid)
--   fx:reconnect()                        -- a new fx.g, after a restart
--   pool:submit(M.handshake, port, tag)   -- the task's half
local ps = require "proxystore"
local core = require "proxystore.core"
local redis = require "helpers.redis"
local workers = require "helpers.workers"

local M = {}

-- In a task: tells the spec it started (pushing its pid to started:<tag>)
-- and waits for go:<tag>:<pid>; returns the pid. It travels to the
-- worker as bytecode; its one upvalue, proxystore.core, by name. (A
-- generous timeout: on a loaded machine a call may take seconds; a server
-- that is gone fails the calls at once.)
function M.handshake(port, tag)
  local g = core.redis_groups { host = "127.0.0.1", port = port, timeout = 30 }
  local pid = core.pool_getpid()
  g:call("RPUSH", "started:" .. tag, pid)
  g:call_blocking(60, { "BLPOP", "go:" .. tag .. ":" .. pid, 60 })
  g:close()
  return pid
end

local Fixture = {}
Fixture.__index = Fixture

function M.new(secret)
  return setmetatable({ secret = secret }, Fixture)
end

-- A fresh handle, the old one closed (after a restart of the server); it
-- is also fx.g.
function Fixture:reconnect()
  if self.g then self.g:close() end
  -- a generous timeout: on a loaded machine a call may take seconds
  self.g = core.redis_groups { host = "127.0.0.1", port = self.srv.port, timeout = 30 }
  return self.g
end

function Fixture:start()
  self.srv = redis.start()
  self:reconnect()
end

function Fixture:stop()
  workers.stop_all()
  if self.g then self.g:close() end
  if self.srv then self.srv:stop() end
end

-- After each spec: no worker left, and the server up (a spec may have
-- stopped or killed it).
function Fixture:reset()
  workers.stop_all()
  if self.srv and not self.srv.pid then self.srv:restart() end
end

function Fixture:url(extra)
  return "redis://127.0.0.1:" .. self.srv.port .. (extra or "")
end

-- A queue pool on the server, with the spec's secret unless opts has one.
function Fixture:pool(opts)
  opts = opts or {}
  opts.queue = opts.queue or self:url()
  opts.secret = opts.secret or self.secret
  opts.progress = false
  return ps.pool(opts)
end

-- The pid a task pushed to started:<tag> (hang guard: 60 s).
function Fixture:started(tag)
  local r = self.g:call_blocking(61, { "BLPOP", "started:" .. tag, 60 })[1]
  assert(r, "no task started for " .. tag)
  return tonumber(r[2])
end

function Fixture:go(tag, pid)
  self.g:call("RPUSH", "go:" .. tag .. ":" .. pid, "go")
end

return M
