-- spec/helpers/workers.lua: `proxystore worker` processes for the specs,
-- started from the shell as they would be on another machine.
--
--   local workers = require "helpers.workers"
--   local w = workers.start(srv, { queue = "jobs", workers = 1,
--                                  secret = "..." })   -- via a 0600 file
--   w.pid                        the worker (or supervisor) process
--   w:log()                      what it wrote to stdout and stderr
--   w:wait_log(pattern [, s [, regex]])  waits until the log matches (a
--                                hang guard, 60 s unless s)
--   w:signal("TERM")             kill -TERM w.pid
--   w:wait([s]) -> status | nil  its exit status once it exited
--   w:kill()                     SIGKILL to it and its worker processes
--   workers.stop_all()           SIGKILL to every worker still running
--
-- A watchdog kills a worker (and its children) once the Lua process that
-- started it is gone, so a crashed spec run leaves none behind. Workers
-- run without LD_PRELOAD (the sanitized binary carries its runtime) but
-- keep the sanitizer options, so their leaks and errors are reported.

local shell = require "helpers.shell"

local M = {}

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
M.BIN = BUILD .. "/bin/proxystore"

local q = shell.quote
local started = {}

-- Shell commands run outside the sanitizer preload (pgrep hangs under it).
local sh, sleep, alive = shell.run, shell.sleep, shell.alive
M.alive = alive

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function now()
  return require("proxystore.core").monotonic()
end

local Worker = {}
Worker.__index = Worker

-- opts: queue, workers, secret (written to a 0600 file), secret_env (put
-- in PROXYSTORE_SECRET instead), args (more shell words), url (default:
-- srv's, with a 30 s timeout).
function M.start(srv, opts)
  opts = opts or {}
  local dir = shell.tempdir("worker")
  local self = setmetatable({ dir = dir, logfile = dir .. "/log" }, Worker)
  -- a generous timeout: on a loaded machine a call may take seconds, and
  -- a worker logs each call that timed out ("lost ...; retrying")
  local args = { q(opts.url or ("redis://127.0.0.1:" .. srv.port .. "?timeout=30")) }
  if opts.queue then args[#args + 1] = "--queue " .. q(opts.queue) end
  if opts.workers then args[#args + 1] = "--workers " .. opts.workers end
  local env = "env -u LD_PRELOAD -u PROXYSTORE_SECRET"
  if opts.secret then
    local f = assert(io.open(dir .. "/secret", "wb"))
    f:write(opts.secret, "\n")
    f:close()
    sh("chmod 600 " .. q(dir .. "/secret"))
    args[#args + 1] = "--secret-file " .. q(dir .. "/secret")
  end
  if opts.secret_env then
    env = env .. " PROXYSTORE_SECRET=" .. q(opts.secret_env)
  end
  if opts.args then args[#args + 1] = opts.args end
  -- sh runs the worker in the background, records its pid, waits for it
  -- and records its exit status
  local cmd = ("%s %s worker %s >%s 2>&1 </dev/null & echo $! >%s; wait $!; echo $? >%s")
    :format(env, q(M.BIN), table.concat(args, " "), q(self.logfile),
            q(dir .. "/pid"), q(dir .. "/rc"))
  sh("sh -c " .. q(cmd) .. " >/dev/null 2>&1 </dev/null &")
  local deadline = now() + 30   -- a hang guard
  repeat
    local p = slurp(dir .. "/pid")
    self.pid = p and tonumber(p:match("^(%d+)\n"))   -- whole lines only
    if not self.pid then sleep(0.01) end
  until self.pid or now() > deadline
  assert(self.pid, "the worker did not start")
  -- the watchdog: once the spec's process is gone, the worker goes too
  local me = shell.my_pid()
  sh("sh -c " .. q(("while kill -0 %d 2>/dev/null && kill -0 %d 2>/dev/null; " ..
    "do sleep 0.5; done; kill -0 %d 2>/dev/null || { for c in $(pgrep -P %d); " ..
    "do kill -9 $c; done; kill -9 %d; }"):format(me, self.pid, me, self.pid, self.pid)) ..
    " >/dev/null 2>&1 </dev/null &")
  started[#started + 1] = self
  return self
end

function Worker:log()
  return slurp(self.logfile) or ""
end

-- Waits until the log matches pattern (plain text unless regex); a hang
-- guard, never a measurement.
function Worker:wait_log(pattern, seconds, regex)
  local deadline = now() + (seconds or 60)
  repeat
    local log = self:log()
    if log:find(pattern, 1, not regex) then return log end
    sleep(0.05)
  until now() > deadline
  error(("worker log never showed %q:\n%s"):format(pattern, self:log()), 2)
end

function Worker:signal(sig)
  sh(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

-- The exit status once the worker (and the sh waiting for it) is done,
-- or nil after seconds.
function Worker:wait(seconds)
  local deadline = now() + (seconds or 30)
  repeat
    local rc = slurp(self.dir .. "/rc")
    rc = rc and rc:match("^(%d+)\n")   -- whole lines only
    if rc then return tonumber(rc) end
    sleep(0.05)
  until now() > deadline
  return nil
end

-- The worker processes of a supervisor.
function Worker:children()
  local f = io.popen(shell.CLEAN .. "pgrep -P " .. self.pid)
  local out = f:read("a")
  f:close()
  local t = {}
  for pid in out:gmatch("%d+") do t[#t + 1] = tonumber(pid) end
  return t
end

function Worker:kill()
  if self.pid and alive(self.pid) then
    for _, c in ipairs(self:children()) do sh("kill -9 " .. c .. " 2>/dev/null") end
    sh("kill -9 " .. self.pid .. " 2>/dev/null")
    self:wait(10)
  end
end

function Worker:cleanup()
  self:kill()
  if self.dir then shell.rmtree(self.dir) end
  self.dir = nil
end

function M.stop_all()
  for i = #started, 1, -1 do
    pcall(started[i].cleanup, started[i])
    started[i] = nil
  end
end

return M
