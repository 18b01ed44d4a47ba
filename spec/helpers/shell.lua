-- Shell commands for specs, run outside the sanitizer preload of
-- spec/run.sh's second pass (compilers and system tools are not ours, and
-- their own leaks must not count).
--
--   local shell = require "helpers.shell"
--   local rc, out = shell.sh("cc ...")     -- exit code, stdout+stderr
--   local dir = shell.tempdir("what")      -- a fresh /tmp/ps-what.XXXXXX
--   shell.rmtree(dir)
--   shell.my_pid()                         -- this Lua process's pid
--   shell.core_c(root)                     -- include flags and sources of
--                                          -- the C core, for C test programs
--   shell.core_libs()                      -- the libraries they link with
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

function M.my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end

return M
