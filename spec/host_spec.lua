-- The proxystore host binary: runs scripts as lua(1) does, with proxystore
-- preloaded and --workers/--store handed to pools.

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local BIN = BUILD .. "/bin/proxystore"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

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
    assert.matches("> 42", out, 1, true)
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
    assert.matches("proxystore: ", err, 1, true)
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
    -- the zygote may need a moment to reap and leave
    local alive
    for _ = 1, 50 do
      alive = {}
      for _, p in ipairs(pids) do
        if io.open("/proc/" .. p .. "/stat") then alive[#alive + 1] = p end
      end
      if #alive == 0 then break end
      os.execute("sleep 0.1")
    end
    assert.same({}, alive)
  end)

  describe("examples/mapreduce.lua", function()
    local function check(out)
      assert.matches("generated 6 documents", out, 1, true)
      assert.matches("counted 12000 words on 2 workers", out, 1, true)
      assert.matches("1%. the%s+%d+", out)
      assert.matches("3%. and%s+%d+", out)
    end

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
