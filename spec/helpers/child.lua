-- Lua child processes for specs: real processes with this run's LUA_PATH,
-- LUA_CPATH and sanitizer settings (a child of the sanitized pass loads
-- the sanitized core too).
--
--   local child = require "helpers.child"
--   local out, status = child.run(code)     -- waits; stdout+stderr
--   local c = child.spawn(code)             -- runs alongside this process
--   c.pid, c:line() (the next line it prints), c:finish() -> out, status
--   c:kill(sig)                             -- default KILL
--
-- The code runs with stdout line-buffered, so c:line() sees each line as
-- it is printed. Every spawned child gets a watchdog that kills it when
-- this Lua process is gone, so a failed spec leaves nothing running.
local shell = require "helpers.shell"

local M = {}

local function write_script(code)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write('io.stdout:setvbuf("line")\n', code)
  f:close()
  return file
end

function M.run(code, env)
  local file = write_script(code)
  local p = assert(io.popen((env or "") .. " lua5.4 " .. shell.quote(file) .. " 2>&1"))
  local out = p:read("a")
  local ok, _, status = p:close()
  os.remove(file)
  return out, ok and 0 or status
end

local Child = {}
Child.__index = Child

function Child:line()
  return self.p:read("l")
end

function Child:finish()
  local out = self.p:read("a")
  local ok, _, status = self.p:close()
  os.remove(self.file)
  return out, ok and 0 or status
end

function Child:kill(sig)
  os.execute(shell.CLEAN .. "kill -" .. (sig or "KILL") .. " " .. self.pid .. " 2>/dev/null")
end

-- The child prints its pid first (the line c.pid is read from).
function M.spawn(code, env)
  local file = write_script([[
local f = io.open("/proc/self/stat"); local pid = f:read("n"); f:close()
print(pid)
]] .. code)
  local p = assert(io.popen((env or "") .. " exec lua5.4 " .. shell.quote(file) .. " 2>&1"))
  local c = setmetatable({ p = p, file = file }, Child)
  c.pid = tonumber(p:read("l"))
  assert(c.pid, "the child did not start")
  os.execute(shell.CLEAN .. "sh -c " .. shell.quote(
    "while kill -0 " .. shell.my_pid() .. " 2>/dev/null && kill -0 " .. c.pid ..
    " 2>/dev/null; do sleep 0.5; done; kill -9 " .. c.pid .. " 2>/dev/null") ..
    " >/dev/null 2>&1 </dev/null &")
  return c
end

-- Calls fn until it returns a true value (then returns it), at most
-- `guard` seconds: a hang guard, not a timing assertion.
function M.until_true(fn, guard, what)
  local t0 = os.time()
  while true do
    local v = fn()
    if v then return v end
    assert(os.time() - t0 <= (guard or 30), "gave up waiting for " .. (what or "a condition"))
    os.execute("sleep 0.02")
  end
end

return M
