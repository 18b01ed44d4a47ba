-- The proxystore host binary: runs scripts as lua(1) does, with proxystore
-- preloaded and --workers/--store handed to pools.

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local BIN = BUILD .. "/bin/proxystore"

local q = require("helpers.shell").quote

local tmp = os.tmpname()
os.remove(tmp)
local TMP = tmp .. ".d"
os.execute("mkdir -p " .. q(TMP))

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

-- run(args [, stdin]) -> status, stdout, stderr; args already quoted.
-- Runs with no LUA_PATH so the binary's own path set-up is what is tested,
-- unless env says otherwise.
local function run(args, stdin, env)
  local inpath = write(TMP .. "/stdin", stdin or "")
  local cmd = ("cd %s && %s %s %s <%s >%s/out 2>%s/err"):format(
    q(ROOT), env or "env -u LUA_PATH -u LUA_PATH_5_4", q(BIN), args,
    q(inpath), q(TMP), q(TMP))
  local _, _, code = os.execute(cmd)
  return code, slurp(TMP .. "/out"), slurp(TMP .. "/err")
end

describe("proxystore host binary", function()
  teardown(function()
    os.execute("rm -rf " .. q(TMP))
  end)

  it("exists in the build directory", function()
    assert.is_truthy(io.open(BIN, "rb"), "missing " .. BIN)
  end)

  it("prints proxystore's and Lua's versions with --version", function()
    local code, out = run("--version")
    assert.equal(0, code)
    local ps_version = out:match("^proxystore (%S+)\n")
    assert.is_truthy(ps_version, out)
    assert.matches("Lua 5%.4", out)
    local _, v = run("-e " .. q('io.write(require("proxystore")._VERSION)'))
    assert.equal(ps_version, v)
  end)

  it("prints usage with examples on --help and exits 0", function()
    local code, out = run("--help")
    assert.equal(0, code)
    assert.matches("usage: proxystore", out, 1, true)
    for _, opt in ipairs { "--workers", "--store", "--version", "-e", "-l", "run" } do
      assert.matches(opt, out, 1, true)
    end
    assert.matches("Examples:", out, 1, true)
  end)

  it("rejects an unknown option with status 1 and a hint", function()
    local code, out, err = run("--frobnicate")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("'--frobnicate' is not a known option", err, 1, true)
    assert.matches("--help", err, 1, true)
  end)

  it("refuses 'run' without a script right after it", function()
    for _, args in ipairs { "run", "run -e 1", "--workers 2 run" } do
      local code, out, err = run(args)
      assert.equal(1, code, args)
      assert.equal("", out)
      assert.matches("'run' needs a script", err, 1, true)
    end
    local code, out = run("run -", "io.write('from stdin')")
    assert.equal(0, code)
    assert.equal("from stdin", out)
  end)

  it("rejects a bad --workers value and a missing --store URL", function()
    local code, _, err = run("--workers zero -e 1")
    assert.equal(1, code)
    assert.matches("--workers", err, 1, true)
    code, _, err = run("--workers 0 -e 1")
    assert.equal(1, code)
    code, _, err = run("--store")
    assert.equal(1, code)
    assert.matches("needs a store URL", err, 1, true)
  end)

  it("runs a script with its arguments in arg and ... as lua does", function()
    local script = write(TMP .. "/args.lua", [[
      local t = {}
      for i = -4, #arg do t[#t + 1] = i .. "=" .. tostring(arg[i]) end
      print(table.concat(t, " "))
      print(select("#", ...), ...)
    ]])
    local code, out = run(q(script) .. " a 'b c'")
    assert.equal(0, code)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(("-4=nil -3=nil -2=nil -1=%s 0=%s 1=a 2=b c"):format(BIN, script),
      lines[1])
    assert.equal("2\ta\tb c", lines[2])
  end)

  it("puts options and 'run' at negative indices of arg", function()
    local script = write(TMP .. "/neg.lua", [[
      io.write(arg[-6], "|", arg[-5], "|", arg[-4], "|", arg[-3], "|",
        arg[-2], "|", arg[-1], "|", arg[0], "|", arg[1])
    ]])
    local code, out = run("--workers 3 --store local: run " .. q(script) .. " x")
    assert.equal(0, code)
    assert.equal(BIN .. "|--workers|3|--store|local:|run|" .. script .. "|x", out)
  end)

  it("hands --workers and --store to package.loaded['proxystore.host']", function()
    local code, out = run("--workers 3 --store=redis://127.0.0.1:1/2 -e " ..
      q([[local h = package.loaded["proxystore.host"]
          io.write(math.type(h.workers), " ", h.workers, " ", h.store)]]))
    assert.equal(0, code)
    assert.equal("integer 3 redis://127.0.0.1:1/2", out)
  end)

  it("preloads the core and finds the Lua face without LUA_PATH", function()
    local code, out, err = run("-e " .. q([[
      io.write(type(package.preload["proxystore.core"]), " ",
               type(require("proxystore").proxy))]]))
    assert.equal(0, code, err)
    assert.equal("function function", out)
  end)

  it("honours LUA_PATH", function()
    write(TMP .. "/mymod.lua", "return 'from LUA_PATH'")
    local code, out = run("-l mymod -e " .. q("io.write(mymod)"), nil,
      "env LUA_PATH=" .. q(TMP .. "/?.lua;;"))
    assert.equal(0, code)
    assert.equal("from LUA_PATH", out)
  end)

  describe("reads LUA_PATH and LUA_CPATH as lua5.4 does", function()
    -- The peer is lua5.4 itself: both print package.path, package.cpath
    -- and what require made of a module in M (a file, a directory with
    -- init.lua) and of lua-cjson (a C module on Lua's default cpath).
    local M = TMP .. "/m"
    local PROBE = [[
      local function try(name)
        local ok, e = pcall(require, name)
        return ok and "ok" or (e:gsub("\n", "|"))
      end
      io.write(package.path, "\n", package.cpath, "\n", try("foo"), "\n",
        try("bar"), "\n", try("cjson"), "\n")]]

    setup(function()
      os.execute("mkdir -p " .. q(M .. "/bar"))
      write(M .. "/foo.lua", "return 'foo'")
      write(M .. "/bar/init.lua", "return 'bar'")
    end)

    local function both(vars, flags)
      local env = "env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4"
      for k, v in pairs(vars) do env = env .. " " .. k .. "=" .. q(v) end
      local cmd = ("cd %s && %s %%s %s -e %s 2>&1"):format(q(TMP), env,
        flags or "", q(PROBE))
      local function out(bin)
        local f = assert(io.popen(cmd:format(q(bin))))
        local s = f:read("a")
        f:close()
        return s
      end
      return out("lua5.4"), out(BIN)
    end

    local cases = {
      { LUA_PATH = M .. "/?.lua" },
      { LUA_PATH = "/nowhere/?.lua;" .. M .. "/?.lua;/else/?.lua" },
      { LUA_PATH = ";;" .. M .. "/?.lua" },
      { LUA_PATH = M .. "/?.lua;;" },
      { LUA_PATH = "/nowhere/?.lua;;" .. M .. "/?/init.lua" },
      { LUA_PATH = M .. "/?.lua;" .. M .. "/?/init.lua" },
      { LUA_PATH = "/nowhere/?.lua" },
      { LUA_PATH = "" },
      { LUA_PATH = ";;" },
      { LUA_PATH_5_4 = M .. "/?.lua", LUA_PATH = "/nowhere/?.lua" },
      { LUA_PATH = M .. "/?.lua;;", LUA_CPATH = "/nowhere/?.so" },
      { LUA_CPATH = "/nowhere/?.so;;" },
      { LUA_CPATH_5_4 = ";;/x/?.so", LUA_CPATH = "/nowhere/?.so" },
      {},
    }
    for i, vars in ipairs(cases) do
      local names = {}
      for k, v in pairs(vars) do names[#names + 1] = k .. "='" .. v .. "'" end
      table.sort(names)
      it(("case %d: %s"):format(i, #names > 0 and table.concat(names, " ") or "(unset)"), function()
        local peer, ours = both(vars)
        assert.equal(peer, ours)
      end)
    end

    it("ignores them with -E, as lua5.4 -E does", function()
      local peer, ours = both({ LUA_PATH = M .. "/?.lua", LUA_CPATH = "/nowhere/?.so" }, "-E")
      assert.equal(peer, ours)
    end)

    it("still finds its own Lua face whatever LUA_PATH says", function()
      local code, out, err = run("-e " .. q("io.write(require('proxystore')._VERSION)"),
        nil, "env LUA_PATH=" .. q(M .. "/?.lua"))
      assert.equal(0, code, err)
      assert.equal(require("proxystore")._VERSION, out)
    end)
  end)

  it("runs -e chunks and -l modules in order, before the script", function()
    local script = write(TMP .. "/after.lua", "io.write(' script ', X)")
    local code, out = run("-e " .. q("X = 1 io.write('e1')") ..
      " -l string -e " .. q("X = X + 1 io.write(' e2 ', type(string.rep))") ..
      " " .. q(script))
    assert.equal(0, code)
    assert.equal("e1 e2 function script 2", out)
  end)

  it("binds -l g=mod to a global of another name", function()
    local code, out = run("-l S=string -e " .. q("io.write(S.upper('x'))"))
    assert.equal(0, code)
    assert.equal("X", out)
  end)

  it("reads the script from stdin with '-', and with no arguments off a terminal", function()
    local code, out = run("- one two", "io.write(arg[0], ' ', ..., '|', #arg)")
    assert.equal(0, code)
    assert.equal("- one|2", out)
    code, out = run("", "io.write('piped')")
    assert.equal(0, code)
    assert.equal("piped", out)
  end)

  it("evaluates lines at the interactive prompt with -i", function()
    local code, out = run("-i", "x = 6 *\n7\n= x\nx + 1\nerror('oops')\nprint('still here')\n")
    assert.equal(0, code)
    assert.matches("42", out, 1, true)
    assert.matches("43", out, 1, true)
    assert.matches("still here", out, 1, true)
    assert.matches("> ", out, 1, true)
  end)

  it("starts an interactive prompt when run alone on a terminal", function()
    -- script(1) gives the binary a pseudo-terminal and types our lines in
    local cmd = ("printf 'print(6 * 7)\\nos.exit(0)\\n' | env -u LD_PRELOAD " ..
      "timeout 20 script -qec %s /dev/null >%s/repl 2>&1"):format(q(BIN), q(TMP))
    local _, _, status = os.execute(cmd)
    local out = slurp(TMP .. "/repl")
    assert.equal(0, status, out)
    assert.matches("proxystore " .. require("proxystore")._VERSION, out, 1, true)
    assert.matches("Lua 5.4", out, 1, true)
    assert.matches("> print%(6 %* 7%)\r*\n42\r*\n", out)
  end)

  it("edits lines and recalls history at the prompt, as lua5.4 does", function()
    -- "print(4)", cursor left, "2": print(42); then print(6 * 7); then the
    -- up arrow and Enter run print(6 * 7) again. Without line editing the
    -- escape sequences are Lua syntax errors.
    local keys = "print(4)\27[D2\nprint(6 * 7)\n\27[A\nos.exit(0)\n"
    local function on_tty(bin)
      write(TMP .. "/keys", keys)
      local cmd = ("cd %s && env -u LD_PRELOAD timeout 20 script -qec %s /dev/null " ..
        "<%s >%s/repl 2>&1"):format(q(TMP), q(bin), q(TMP .. "/keys"), q(TMP))
      local _, _, status = os.execute(cmd)
      local out = slurp(TMP .. "/repl")
      local n = 0   -- result lines (lua5.4's readline puts escapes before them)
      for _ in out:gmatch("%f[%d]42\r*\n") do n = n + 1 end
      return status, n, out
    end
    local status, n, out = on_tty("lua5.4")
    assert.equal(0, status, out)
    assert.equal(3, n, out)
    status, n, out = on_tty(BIN)
    assert.equal(0, status, out)
    assert.equal(3, n, out)
    assert.not_matches("unexpected symbol", out, 1, true)
  end)

  it("exits 1 with the message and a traceback on stderr when the script fails", function()
    local script = write(TMP .. "/fail.lua", [[
      local function inner() error("it broke") end
      local function outer() inner() end
      outer()
    ]])
    local code, out, err = run(q(script))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("fail.lua:1: it broke", err, 1, true)
    assert.matches("stack traceback:", err, 1, true)
    assert.matches("'inner'", err, 1, true)
    assert.matches("in local 'outer'", err, 1, true)
  end)

  it("shows proxystore error objects with their one-line text and a traceback", function()
    local code, _, err = run("-e " .. q([[
      local ps = require "proxystore"
      ps.deserialize("\255garbage")]]))
    assert.equal(1, code)
    assert.matches("^proxystore: [^\n]*cannot deserialize", err)
    assert.not_matches("proxystore: proxystore:", err, 1, true)
    assert.not_matches("error object is a table", err, 1, true)
    assert.matches("stack traceback:", err, 1, true)
  end)

  it("exits 1 on a syntax error and when a script cannot be opened", function()
    local code, _, err = run("-e " .. q("x = = 1"))
    assert.equal(1, code)
    assert.matches("unexpected symbol", err, 1, true)
    code, _, err = run(q(TMP .. "/no-such-script.lua"))
    assert.equal(1, code)
    assert.matches("cannot open", err, 1, true)
  end)

  it("passes os.exit's status through", function()
    local code = run("-e " .. q("os.exit(7)"))
    assert.equal(7, code)
  end)

  it("gives a pool made with no options the --workers count", function()
    local code, out, err = run("--workers 3 -e " .. q([[
      local ps = require "proxystore"
      local pool = ps.pool()
      local n = 0
      for _ in pairs(pool:pids()) do n = n + 1 end
      io.write(n, " ", pool:submit(function(a) return a * 2 end, 21):result())
      pool:close()]]))
    assert.equal(0, code, err)
    assert.equal("3 42", out)
  end)

  it("gives a pool made with no options the --store URL", function()
    local dir = TMP .. "/store-dir"
    os.execute("mkdir -p " .. q(dir))
    local code, out, err = run("--workers 1 --store file://" .. dir .. " -e " .. q([[
      local ps = require "proxystore"
      local pool = ps.pool { proxy_threshold = 10 }
      local r = pool:submit(function(s) return #s end, ("x"):rep(100)):result()
      local m = pool.store:metrics()
      io.write(r, " ", pool.store.kind, " ", pool:metrics().proxied_args)
      pool:close()]]))
    assert.equal(0, code, err)
    assert.equal("100 file 1", out)
  end)

  it("leaves no process behind when a script exits with a pool open", function()
    local code, out, err = run("--workers 2 -e " .. q([[
      local ps = require "proxystore"
      P = ps.pool()
      local pids, z = P:pids()
      local t = { z }
      for _, p in pairs(pids) do t[#t + 1] = p end
      io.write(table.concat(t, " "))]]))
    assert.equal(0, code, err)
    local pids = {}
    for p in out:gmatch("%d+") do pids[#pids + 1] = p end
    assert.equal(3, #pids)
    -- the zygote may need a moment to reap and leave (30 s: a hang guard)
    local alive
    for _ = 1, 300 do
      alive = {}
      for _, p in ipairs(pids) do
        if io.open("/proc/" .. p .. "/stat") then alive[#alive + 1] = p end
      end
      if #alive == 0 then break end
      os.execute("sleep 0.1")
    end
    assert.same({}, alive)
  end)

  describe("signals", function()
    local core = require "proxystore.core"

    -- Starts the binary in the background (as its own process group with
    -- setsid when group is true) on a script; returns its pid. Its output
    -- goes to TMP/bg.out and TMP/bg.err.
    local function spawn(args, group)
      local f = assert(io.popen(("cd %s && env -u LUA_PATH -u LUA_PATH_5_4 %s %s %s " ..
        "</dev/null >%s/bg.out 2>%s/bg.err & echo $!"):format(q(ROOT),
        group and "setsid" or "", q(BIN), args, q(TMP), q(TMP))))
      local pid = tonumber(f:read("a"):match("%d+"))
      f:close()
      return pid
    end

    -- "R", "S", "Z", ... and the process group of pid; nil once it is gone.
    local function stat(pid)
      local f = io.open("/proc/" .. pid .. "/stat")
      if not f then return nil end
      local s = f:read("a") or ""
      f:close()
      local state, pgrp = s:match("^%d+ %b() (%a) %d+ (%d+)")
      return state, tonumber(pgrp)
    end

    local function alive(pid)
      local state = stat(pid)
      return state ~= nil and state ~= "Z" and state ~= "X"
    end

    -- Live processes of process group pgid.
    local function group(pgid)
      local found = {}
      local ls = io.popen("ls /proc")
      for d in ls:lines() do
        if d:match("^%d+$") then
          local state, pg = stat(d)
          if pg == pgid and state ~= "Z" and state ~= "X" then found[#found + 1] = d end
        end
      end
      ls:close()
      return found
    end

    -- Waits until cond() is true; the bound only guards against a hang.
    local function wait_until(cond, what)
      local t0 = core.monotonic()
      while not cond() do
        assert(core.monotonic() - t0 < 60, "still waiting: " .. what)
        os.execute("sleep 0.02")
      end
    end

    local function read_or_empty(path)
      local f = io.open(path, "rb")
      if not f then return "" end
      local s = f:read("a")
      f:close()
      return s
    end

    -- The script writes "<private dir> <zygote> <workers...>" to arg[1]
    -- once its pool is up and busy, then waits on it (arg[2]: "result" or
    -- "map") with tasks that never end.
    local POOL_SCRIPT = [[
      local ps = require "proxystore"
      local pool = ps.pool { workers = 2 }
      local pids, z = pool:pids()
      local t = { pool.dir, z }
      for _, p in pairs(pids) do t[#t + 1] = p end
      local forever = function() while true do end end
      local fut = arg[2] == "result" and pool:submit(forever)
      local f = io.open(arg[1] .. ".tmp", "w")
      f:write(table.concat(t, " "), "\n")
      f:close()
      os.rename(arg[1] .. ".tmp", arg[1])
      if fut then fut:result() else pool:map(forever, { 1, 2, 3 }) end
    ]]

    local function pool_info(info)
      wait_until(function() return io.open(info) ~= nil end, "the pool to start")
      local words = {}
      for w in read_or_empty(info):gmatch("%S+") do words[#words + 1] = w end
      local dir = table.remove(words, 1)
      return dir, words
    end

    local function kill_all(pid, pids, dir)
      os.execute("kill -9 " .. pid .. " " .. table.concat(pids or {}, " ") .. " 2>/dev/null")
      if dir then os.execute("rm -rf " .. q(dir)) end
    end

    for _, how in ipairs { "result", "map" } do
      it(("SIGINT interrupts a wait in %s, as lua5.4 stops a loop, and stops the pool"):format(
          how == "result" and "future:result()" or "pool:map"), function()
        local script = write(TMP .. "/sigint.lua", POOL_SCRIPT)
        local info = TMP .. "/sigint-" .. how .. ".info"
        os.remove(info)
        local pid = spawn(q(script) .. " " .. q(info) .. " " .. how)
        local dir, pids
        finally(function() kill_all(pid, pids, dir) end)
        dir, pids = pool_info(info)
        os.execute("kill -INT " .. pid)
        wait_until(function() return not alive(pid) end, "the binary to stop")
        for _, p in ipairs(pids) do
          wait_until(function() return not alive(p) end, "pool process " .. p .. " to end")
        end
        assert.is_nil(io.open(dir), "the private store is left: " .. dir)
        local err = read_or_empty(TMP .. "/bg.err")
        local _, n = err:gsub("interrupted!", "")
        assert.equal(1, n, err)
        assert.not_matches("proxystore: proxystore:", err, 1, true)
        assert.matches("^proxystore: [^\n]*interrupted!\nstack traceback:", err)

        -- the peer: lua5.4 on a loop that never ends
        local loop = write(TMP .. "/loop.lua", [[
          local f = io.open(arg[1], "w") f:close()
          while true do end]])
        local ready = TMP .. "/loop.ready"
        os.remove(ready)
        local f = assert(io.popen(("lua5.4 %s %s </dev/null >/dev/null 2>%s/peer.err & echo $!")
          :format(q(loop), q(ready), q(TMP))))
        local lpid = tonumber(f:read("a"):match("%d+"))
        f:close()
        finally(function() os.execute("kill -9 " .. lpid .. " 2>/dev/null") end)
        wait_until(function() return io.open(ready) ~= nil end, "lua5.4 to start")
        os.execute("kill -INT " .. lpid)
        wait_until(function() return not alive(lpid) end, "lua5.4 to stop")
        assert.matches("^lua5.4: [^\n]*interrupted!\nstack traceback:",
          read_or_empty(TMP .. "/peer.err"))
      end)
    end

    for _, sig in ipairs { "TERM", "HUP" } do
      it(("SIG%s to the process group leaves no process and no private store"):format(sig), function()
        local script = write(TMP .. "/group.lua", POOL_SCRIPT)
        local info = TMP .. "/group-" .. sig .. ".info"
        os.remove(info)
        local pid = spawn(q(script) .. " " .. q(info) .. " result", true)
        local dir, pids
        finally(function() kill_all(pid, pids, dir) end)
        dir, pids = pool_info(info)
        assert.equal(pid, select(2, stat(pid)))   -- its own group
        os.execute(("kill -%s -%d"):format(sig, pid))
        wait_until(function() return #group(pid) == 0 end, "the group to end")
        assert.is_nil(io.open(dir), "the private store is left: " .. dir)
        assert.not_matches("Broken pipe", read_or_empty(TMP .. "/bg.err"), 1, true)
      end)
    end

    it("orphaned workers end without a word (no 'Broken pipe')", function()
      -- The task returns once the spec says so, after the parent died;
      -- the zygote is stopped meanwhile so it cannot kill the worker first.
      local go = TMP .. "/orphan.go"
      os.remove(go)
      local script = write(TMP .. "/orphan.lua", [[
        local ps = require "proxystore"
        local pool = ps.pool { workers = 1 }
        local pids, z = pool:pids()
        local fut = pool:submit(function(path)
          while not io.open(path) do os.execute("sleep 0.02") end
          io.write("task done\n")
          return ("x"):rep(100)
        end, arg[2])
        local f = io.open(arg[1] .. ".tmp", "w")
        f:write(pool.dir, " ", z, " ", pids[1], "\n")
        f:close()
        os.rename(arg[1] .. ".tmp", arg[1])
        fut:result()]])
      local info = TMP .. "/orphan.info"
      os.remove(info)
      local pid = spawn(q(script) .. " " .. q(info) .. " " .. q(go))
      local dir, pids
      finally(function()
        if pids then os.execute("kill -CONT " .. pids[1] .. " 2>/dev/null") end
        kill_all(pid, pids, dir)
      end)
      dir, pids = pool_info(info)
      local zygote, worker = pids[1], pids[2]
      os.execute("kill -STOP " .. zygote)
      wait_until(function() return stat(zygote) == "T" end, "the zygote to stop")
      os.execute("kill -KILL " .. pid)
      wait_until(function() return not alive(pid) end, "the parent to die")
      write(go, "")
      wait_until(function() return not alive(worker) end, "the worker to end")
      os.execute("kill -CONT " .. zygote)
      wait_until(function() return not alive(zygote) end, "the zygote to end")
      assert.is_nil(io.open(dir), "the private store is left: " .. dir)
      local out, err = read_or_empty(TMP .. "/bg.out"), read_or_empty(TMP .. "/bg.err")
      assert.matches("task done", out, 1, true)   -- it did try to reply
      assert.equal("", err)
    end)
  end)

  describe("examples/mapreduce.lua", function()
    local function check(out)
      assert.matches("generated 6 documents", out, 1, true)
      assert.matches("counted 12000 words on 2 workers", out, 1, true)
      assert.matches("1%. the%s+%d+", out)
      assert.matches("3%. and%s+%d+", out)
    end

    it("runs with no arguments, as make demo runs it", function()
      local code, out, err = run("--workers 2 examples/mapreduce.lua")
      assert.equal(0, code, err)
      assert.matches("generated 16 documents", out, 1, true)
      assert.matches("10%. %a+%s+%d+", out)
    end)

    it("runs with the default private store", function()
      local code, out, err = run("--workers 2 examples/mapreduce.lua 6 2000 3")
      assert.equal(0, code, err)
      check(out)
    end)

    it("runs with --store redis://", function()
      local redis = require "helpers.redis"
      local srv = redis.start()
      local ok, code, out, err = pcall(run, ("--workers 2 --store redis://%s:%d " ..
        "examples/mapreduce.lua 6 2000 3"):format(srv.host, srv.port))
      local left = srv:cli("DBSIZE")
      srv:stop()
      assert.is_true(ok, code)
      assert.equal(0, code, err)
      check(out)
      assert.matches("(redis)", out, 1, true)
      assert.equal("0", left:match("%d+"))   -- documents were single-use
    end)
  end)

  describe("a --store Redis password", function()
    local redis = require "helpers.redis"
    local PW = "pw-Q7/x#y@z"          -- '/', '#', '@': percent-encoded in URLs
    local PW_URL = "pw-Q7%2Fx%23y%40z"
    local srv

    setup(function()
      srv = redis.start { args = "--requirepass " .. q(PW), password = PW }
    end)
    teardown(function() if srv then srv:stop() end end)

    -- A script that starts a pool on the --store store, reads the command
    -- line of itself, its zygote and its workers, and moves a proxied
    -- argument through the store (which needs the password).
    local SCRIPT = write(TMP .. "/pw.lua", [[
      local ps = require "proxystore"
      local core = require "proxystore.core"
      local pw = package.loaded["proxystore.host"].password or
                 require("proxystore.url").parse(package.loaded["proxystore.host"].store).password
      local pool = ps.pool { workers = 2, progress = false, proxy_threshold = 10 }
      local pids, z = pool:pids()
      local all = { core.pool_getpid(), z }
      for _, p in pairs(pids) do all[#all + 1] = p end
      local n = pool:submit(function(s) return #s end, ("x"):rep(1000)):result()
      local leaks = {}
      for _, p in ipairs(all) do
        local f = assert(io.open("/proc/" .. p .. "/cmdline", "rb"))
        local line = f:read("a")
        f:close()
        if line:find(pw, 1, true) or line:find("pw-Q7", 1, true) then
          leaks[#leaks + 1] = p
        end
      end
      io.write(#all, " processes, ", #leaks, " leak(s), ", n, " bytes, ",
               pool:metrics().proxied_args, " proxied, ", pool.store.kind)
      pool:close()]])

    local function store_arg()
      return ("--store redis://%s:%d"):format(srv.host, srv.port)
    end

    it("comes from PROXYSTORE_PASSWORD, never in argv of the parent or a worker", function()
      local code, out, err = run("--workers 2 " .. store_arg() .. " " .. q(SCRIPT), nil,
        "env -u LUA_PATH -u LUA_PATH_5_4 PROXYSTORE_PASSWORD=" .. q(PW))
      assert.equal(0, code, err)
      assert.equal("4 processes, 0 leak(s), 1000 bytes, 1 proxied, redis", out)
      assert.equal("", err)
    end)

    it("comes from --password-file, first line, line end dropped", function()
      local file = write(TMP .. "/pw.txt", PW .. "\r\nsecond line\n")
      local code, out, err = run("--password-file " .. q(file) .. " " .. store_arg() ..
        " " .. q(SCRIPT))
      assert.equal(0, code, err)
      assert.equal("4 processes, 0 leak(s), 1000 bytes, 1 proxied, redis", out)
      -- the file wins over the environment
      code, out, err = run("--password-file=" .. q(file) .. " " .. store_arg() .. " " ..
        q(SCRIPT), nil, "env -u LUA_PATH -u LUA_PATH_5_4 PROXYSTORE_PASSWORD=wrong")
      assert.equal(0, code, err)
    end)

    it("written into the --store URL is hidden from the process list, with a warning", function()
      local code, out, err = run(("--workers 2 --store redis://:%s@%s:%d %s"):format(
        PW_URL, srv.host, srv.port, q(SCRIPT)))
      assert.equal(0, code, err)
      assert.equal("4 processes, 0 leak(s), 1000 bytes, 1 proxied, redis", out)
      assert.matches("warning: the --store URL holds a password", err, 1, true)
      assert.is_nil(err:find(PW_URL, 1, true))
    end)

    it("in any form of the --store URL is overwritten in argv", function()
      local show = q('io.write((io.open("/proc/self/cmdline"):read("a"):gsub("%z", " ")))')
      for _, url in ipairs { "unix:///s?db=1&%70assword=QXKZsecret",
                             "unix:///s?PASSWORD=QXKZsecret&db=1",
                             "redis://user:QXKZ/se#cret@h:1/2",
                             "redis://QXKZsecret@h" } do
        local code, out, err = run("--store " .. q(url) .. " -e " .. show)
        assert.equal(0, code, err)
        assert.is_nil(out:find("QXKZ", 1, true), out)
        assert.matches("--store ", out, 1, true)
      end
      local code, out = run("--store " .. q("file:///a@b/c") .. " -e " .. show)
      assert.equal(0, code)
      assert.matches("file:///a@b/c", out, 1, true)   -- no password there
    end)

    it("is refused when given twice, and its errors never show it", function()
      local code, _, err = run(("--store redis://:%s@%s:%d %s"):format(
        PW_URL, srv.host, srv.port, q(SCRIPT)), nil,
        "env -u LUA_PATH -u LUA_PATH_5_4 PROXYSTORE_PASSWORD=" .. q(PW))
      assert.equal(1, code)
      assert.matches("give it once", err, 1, true)
      code, _, err = run(store_arg() .. " " .. q(SCRIPT), nil,
        "env -u LUA_PATH -u LUA_PATH_5_4 PROXYSTORE_PASSWORD=not-" .. q(PW))
      assert.equal(1, code)
      assert.matches("proxystore: ", err, 1, true)
      assert.is_nil(err:find("pw-Q7", 1, true))
    end)

    it("from a missing or empty --password-file is a usage error", function()
      local code, _, err = run("--password-file " .. q(TMP .. "/none") .. " -e 'print(1)'")
      assert.equal(1, code)
      assert.matches("cannot read password file", err, 1, true)
      local empty = write(TMP .. "/empty.txt", "\nx\n")
      code, _, err = run("--password-file " .. q(empty) .. " -e 'print(1)'")
      assert.equal(1, code)
      assert.matches("empty first line", err, 1, true)
      code, _, err = run("--password-file")
      assert.equal(1, code)
      assert.matches("needs a file name", err, 1, true)
    end)
  end)

  describe("pool:map's progress bar", function()
    local MAP = [[
      local ps = require "proxystore"
      local pool = ps.pool { workers = 2 %s }
      local t = {}
      for i = 1, 20 do t[i] = i end
      local r = pool:map(function(x)
        local e = os.clock() + 0.01
        while os.clock() < e do end
        return x
      end, t)
      pool:close()
      io.stdout:write("sum ", #r, "\n")]]

    -- Runs the binary on a pseudo-terminal (script(1)); its output is
    -- stdout and stderr together.
    local function on_tty(code)
      local inner = ("%s --workers 2 -e %s"):format(q(BIN), q(code))
      local cmd = ("cd %s && env -u LD_PRELOAD -u LUA_PATH script -qec %s /dev/null " ..
        "</dev/null >%s/tty 2>&1"):format(q(ROOT), q(inner), q(TMP))
      local _, _, status = os.execute(cmd)
      return status, slurp(TMP .. "/tty")
    end

    it("shows done/total, rate and elapsed time on a terminal", function()
      local status, out = on_tty(MAP:format(""))
      assert.equal(0, status, out)
      assert.matches("20/20", out, 1, true)
      assert.matches("%d+%.%d/s", out)
      assert.matches("%d+%.%ds", out)
      assert.matches("[#", out, 1, true)
      assert.matches("sum 20", out, 1, true)
    end)

    it("shows workers' output whole, above the bar, never inside its line", function()
      local status, out = on_tty([[
        local ps = require "proxystore"
        local pool = ps.pool { workers = 2 }
        local t = {}
        for i = 1, 8 do t[i] = i end
        local r = pool:map(function(x)
          local e = os.clock() + 0.15   -- the bar is up before the first line
          while os.clock() < e do end
          print("line from task " .. x)
          io.stderr:write("err from task " .. x .. "\n")
          return x
        end, t)
        pool:close()
        io.stdout:write("sum ", #r, "\n")]])
      assert.equal(0, status, out)
      assert.matches("8/8", out, 1, true)
      assert.matches("sum 8", out, 1, true)
      for _, what in ipairs { "line", "err" } do
        for i = 1, 8 do
          local text = what .. " from task " .. i
          local at = out:find(text, 1, true)
          assert.is_truthy(at, text .. " is missing:\n" .. out)
          assert.is_nil(out:find(text, at + 1, true), text .. " twice")
          -- its line starts with it: after a newline or the bar cleared
          local before = out:sub(1, at - 1)
          assert.is_truthy(before == "" or before:match("\n$") or before:match("\27%[K$"),
            text .. " split the bar's line:\n" .. out)
          assert.matches("^" .. text .. "\r?\n", out:sub(at))
        end
      end
    end)

    it("is silent with progress = false", function()
      local status, out = on_tty(MAP:format(", progress = false"))
      assert.equal(0, status, out)
      assert.not_matches("20/20", out, 1, true)
      assert.matches("sum 20", out, 1, true)
    end)

    it("is silent when stderr is not a terminal", function()
      local code, out, err = run("-e " .. q(MAP:format("")))
      assert.equal(0, code, err)
      assert.equal("sum 20\n", out)
      assert.equal("", err)
    end)
  end)
end)
