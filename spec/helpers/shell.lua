-- Shell commands for specs, run outside the sanitizer preload of
-- spec/run.sh's second pass (compilers and system tools are not ours, and
-- their own leaks must not count).
--
--   local shell = require "helpers.shell"
--   local rc, out = shell.sh("cc ...")     -- exit code, stdout+stderr
--   local dir = shell.tempdir("what")      -- a fresh /tmp/ps-what.XXXXXX
--   shell.rmtree(dir)
--   shell.my_pid()                         -- this Lua process's pid
--   shell.run(cmd)                         -- true when cmd exits 0
--   shell.read(cmd)                        -- cmd's stdout
--   shell.sleep(s)
--   shell.alive(pid)                       -- running, not a zombie
--   shell.core_c(root)                     -- include flags and sources of
--                                          -- the C core, for C test programs
--   shell.core_libs()                      -- the libraries they link with
--   shell.build_c_test(name, dir)          -- spec/c/<name>.c linked with
--                                          -- the core, built in dir: its path
local M = {}

M.CLEAN = "unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; "

function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function M.sh(cmd)
  local f = assert(io.popen(M.CLEAN .. cmd .. " 2>&1; echo \"rc=$?\""))
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, (out:gsub("rc=%d+\n?$", ""))
end

function M.tempdir(what)
  local rc, out = M.sh("mktemp -d /tmp/ps-" .. (what or "spec") .. ".XXXXXX")
  assert(rc == 0, out)
  return (out:gsub("\n$", ""))
end

function M.rmtree(dir)
  if dir then os.execute(M.CLEAN .. "rm -rf " .. M.quote(dir)) end
end

-- "-I... src/<layer>/<file>.c ...": every folder of src on the include
-- path and every C file of the core but the host binary's own (main, the
-- worker command), as shell words, for specs that link the core into a
-- plain-C test program.
function M.core_c(root)
  local r = M.quote(root)
  return "-I" .. r .. "/src $(for d in " .. r .. "/src/*/; do printf -- '-I%s ' \"$d\"; done) "
    .. "$(ls " .. r .. "/src/*/*.c | grep -v '/host/\\(main\\|worker_cmd\\)\\.c$') "
end

-- The libraries a program linking the core needs (after its objects).
function M.core_libs()
  return " $(pkg-config --libs lua5.4 hiredis libcrypto) -lpthread -lm -ldl "
end

-- os.execute outside the preload: true when cmd exits 0.
-- Builds the plain-C test program spec/c/<name>.c, linked with the core,
-- into dir (warnings are errors, as for the core); returns its path, or
-- raises with the compiler's output.
function M.build_c_test(name, dir)
  local root = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
  local exe = dir .. "/" .. name
  local rc, out = M.sh("${CC:-cc} -std=c11 -Wall -Wextra -Werror -O1 -g -D_GNU_SOURCE " ..
    "$(pkg-config --cflags lua5.4 hiredis) -o " .. M.quote(exe) .. " " ..
    M.quote(root .. "/spec/c/" .. name .. ".c") .. " " .. M.core_c(root) .. M.core_libs())
  if rc ~= 0 then error("building spec/c/" .. name .. ".c failed:\n" .. out, 2) end
  return exe
end

function M.run(cmd)
  local ok = os.execute(M.CLEAN .. cmd)
  return ok == true or ok == 0
end

-- cmd's stdout (its stderr too if cmd says 2>&1), outside the preload.
function M.read(cmd)
  local f = assert(io.popen(M.CLEAN .. cmd, "r"))
  local out = f:read("a")
  f:close()
  return out
end

function M.sleep(s)
  M.run("sleep " .. s)
end

-- Running (a zombie, which kill -0 still finds, counts as gone). A
-- process reaped between the open and the read makes the read fail: gone.
function M.alive(pid)
  if not pid then return false end
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local st = f:read("a")
  f:close()
  local state = st and st:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function M.my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end

return M
