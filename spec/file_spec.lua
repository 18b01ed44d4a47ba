-- The file store through the public API: one file per object in a real
-- directory (on the disk and on /dev/shm), shared between processes.
local ps = require "proxystore"

local LUA = "lua5.4"

-- ---- helpers ------------------------------------------------------------

-- Shell tools run without the sanitizer preload of spec/run.sh's second
-- pass (their own leaks are not ours); lua5.4 children keep it.
local CLEAN = "unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; "

local function sh(cmd, keep_env)
  local f = assert(io.popen((keep_env and "" or CLEAN) .. "(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, (out:gsub("rc=%d+\n?$", ""))
end

local function shell(cmd) return os.execute(CLEAN .. cmd) end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function mktemp(base)
  local rc, out = sh("mktemp -d " .. quote(base .. "/ps-file-spec.XXXXXX"))
  assert(rc == 0, out)
  return (out:gsub("\n$", ""))
end

local function exists(path) return os.rename(path, path) ~= nil end

local function mode(path)
  local rc, out = sh("stat -c %a " .. quote(path))
  assert(rc == 0, out)
  return (out:gsub("%s+$", ""))
end

local function listing(dir)
  local rc, out = sh("ls -A " .. quote(dir))
  assert(rc == 0, out)
  local names = {}
  for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local counter = 0
local function unique(what)
  counter = counter + 1
  return string.format("file-spec-%s-%d", what, counter)
end

-- Runs a Lua script in a child lua5.4 (LUA_PATH/LUA_CPATH come from the
-- environment spec/run.sh sets up). Returns rc, output.
local function run_child(dir, code, prefix)
  local path = dir .. "/" .. unique("child") .. ".lua"
  write_file(path, code)
  local rc, out = sh((prefix or "") .. LUA .. " " .. quote(path), true)
  os.remove(path)
  return rc, out
end

-- A child's error (an error object or a string) as "kind: message".
local CHILD_PRELUDE = [[
local ps = require "proxystore"
local CLEAN = "unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; "
local function try(f, ...)
  local ok, e = pcall(f, ...)
  if ok then return "ok" end
  if type(e) == "table" then return tostring(e.kind) .. ": " .. tostring(e) end
  return "raw: " .. tostring(e)
end
]]

local function raises(kind, f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected a " .. kind .. " error")
  assert.are.equal("table", type(err), tostring(err))
  assert.are.equal(kind, err.kind, tostring(err))
  local s = tostring(err)
  assert.truthy(s:match("^proxystore: "), s)
  assert.is_nil(s:find("\n"), s)
  return err
end

local ROOTS = { { "a disk directory", "/var/tmp" }, { "/dev/shm", "/dev/shm" } }

-- ---- behaviour on each kind of directory -------------------------------

for _, root in ipairs(ROOTS) do
  local where, base = root[1], root[2]

  describe("a file store on " .. where, function()
    local tmp, store

    before_each(function()
      tmp = mktemp(base)
      store = ps.init_store("file", { name = unique("s"), dir = tmp .. "/objects" })
    end)

    after_each(function()
      if store then store:close() end
      store = nil
      shell("rm -rf " .. quote(tmp))
    end)

    it("creates its directory 0700 and its files 0600", function()
      assert.are.equal("700", mode(tmp .. "/objects"))
      local key = store:put("bytes")
      assert.are.equal("600", mode(tmp .. "/objects/" .. key))
    end)

    it("puts, gets, tests and evicts objects", function()
      local value = { 1, 2.5, "three", nested = { flag = true }, [false] = "f" }
      local key = store:put(value)
      assert.are.equal("string", type(key))
      assert.truthy(key:match("^%x+$"))
      assert.is_true(store:exists(key))
      assert.are.same(value, store:get(key))
      store:evict(key)
      assert.is_false(store:exists(key))
      assert.is_nil(store:get(key))
      assert.are.equal("fallback", store:get(key, "fallback"))
      store:evict(key)   -- absent: not an error
    end)

    it("stores one file per object, named by its key", function()
      store:put("a", { key = "alpha" })
      store:put("b", { key = "beta" })
      assert.are.same({ "alpha", "beta" }, listing(tmp .. "/objects"))
    end)

    it("keeps binary strings, empty strings, nil and false", function()
      local bin = {}
      for i = 0, 255 do bin[#bin + 1] = string.char(i) end
      bin = table.concat(bin):rep(17)
      assert.are.equal(bin, store:get(store:put(bin)))
      assert.are.equal("", store:get(store:put("")))
      assert.is_false(store:get(store:put(false), "default"))
      local k = store:put(nil)
      assert.is_true(store:exists(k))
      assert.is_nil(store:get(k, nil))
    end)

    it("round trips objects larger than the mapping threshold", function()
      local big = string.rep("0123456789abcdef", 640 * 1024)   -- 10 MiB
      local key = store:put(big)
      assert.are.equal(big, store:get(key))
      assert.are.equal(big, ps.extract(store:proxy_from_key(key)))
    end)

    it("overwrites a key with a new object", function()
      store:put("first", { key = "k" })
      store:put("second", { key = "k" })
      assert.are.equal("second", store:get("k"))
      assert.are.same({ "k" }, listing(tmp .. "/objects"))
    end)

    it("resolves proxies, evicting single-use ones", function()
      local p = store:proxy({ x = 42 })
      assert.is_false(ps.is_resolved(p))
      assert.are.equal(42, p.x)
      local key = ps.key(p)
      assert.is_true(store:exists(key))

      local q = store:proxy("once", { evict = true })
      local qkey = ps.key(q)
      assert.are.equal("ONCE", q:upper())
      assert.is_false(store:exists(qkey))
      assert.is_false(exists(tmp .. "/objects/" .. qkey))
    end)

    it("prefetches with resolve_async", function()
      local big = string.rep("prefetch", 300000)
      local key = store:put({ big })
      local p = store:proxy_from_key(key)
      ps.resolve_async(p)
      assert.are.equal(big, p[1])
      local q = store:proxy_from_key("absent-key")
      ps.resolve_async(q)
      local err = raises("missing_key", ps.resolve, q)
      assert.are.equal("absent-key", err.key)
    end)

    it("holds no fd on its directory once closed, resolve_async's included", function()
      local dir = tmp .. "/objects"
      -- This process's fds that point at dir, from /proc/self/fd's links.
      local function fds_on_dir()
        local rc, out = sh("ls -l /proc/" .. require("helpers.shell").my_pid() .. "/fd")
        assert(rc == 0, out)
        local n = 0
        for line in out:gmatch("[^\n]+") do
          if line:sub(-#dir - 4) == " -> " .. dir then n = n + 1 end
        end
        return n
      end
      local key = store:put("bytes")
      local p = ps.resolve_async(store:proxy_from_key(key))
      assert.are.equal("bytes", ps.extract(p))
      assert.is_true(fds_on_dir() >= 2)   -- the store's and its prefetch's
      store:close()
      store = nil
      assert.are.equal(0, fds_on_dir())
    end)

    it("does not bring back a removed directory from resolve_async", function()
      local key = store:put(string.rep("z", 1000))
      shell("rm -rf " .. quote(tmp .. "/objects"))
      -- the background fetch opens its own context for this store now
      local q = store:proxy_from_key(key)
      ps.resolve_async(q)
      raises("missing_key", ps.resolve, q)
      assert.is_false(exists(tmp .. "/objects"))
    end)

    it("refuses a FIFO under a key's name instead of hanging", function()
      shell("mkfifo " .. quote(tmp .. "/objects/fifo"))
      local err = raises("io", store.get, store, "fifo")
      assert.truthy(tostring(err):find("not a regular file", 1, true), tostring(err))
    end)

    it("refuses a symlink under a key's name: get, exists, proxies, resolve_async", function()
      -- Another store's object, and a symlink to it where a key would be.
      local other = ps.init_store("file", { name = unique("other"), dir = tmp .. "/other" })
      other:put("another store's object", { key = "theirs" })
      local link = tmp .. "/objects/linked"
      assert(shell("ln -s " .. quote(tmp .. "/other/theirs") .. " " .. quote(link)))
      local function check(err)
        assert.are.equal("linked", err.key)
        local s = tostring(err)
        assert.truthy(s:find("linked", 1, true), s)
        assert.truthy(s:find("symbolic link", 1, true), s)
      end
      check(raises("io", store.get, store, "linked"))
      check(raises("io", store.exists, store, "linked"))
      check(raises("io", ps.resolve, store:proxy_from_key("linked")))
      local p = ps.resolve_async(store:proxy_from_key("linked"))
      check(raises("io", ps.resolve, p))
      -- a dangling symlink is refused as well, not taken for an absent key
      assert(shell("ln -s /nonexistent/file " .. quote(tmp .. "/objects/dangling")))
      raises("io", store.exists, store, "dangling")
      raises("io", store.get, store, "dangling")
      -- evict removes the link, never its target
      store:evict("linked")
      assert.are.equal("another store's object", other:get("theirs"))
      other:close()
    end)

    it("refuses keys that could leave the directory", function()
      -- The store layer refuses an empty key for every kind.
      local empty = raises("config", store.put, store, "x", { key = "" })
      assert.truthy(tostring(empty):find("must not be empty", 1, true), tostring(empty))
      for _, key in ipairs({ ".", "..", "../escape", "a/b", "/abs", ".hidden",
                             "a..b", "nul\0byte" }) do
        local err = raises("config", store.put, store, "x", { key = key })
        assert.truthy(tostring(err):find("key", 1, true))
        raises("config", store.get, store, key)
        raises("config", store.exists, store, key)
        raises("config", store.evict, store, key)
      end
      assert.is_false(exists(tmp .. "/escape"))
      assert.are.same({}, listing(tmp .. "/objects"))
    end)

    it("raises missing_key naming key and store for a proxy of an absent key", function()
      local p = store:proxy_from_key("nothing-here")
      local err = raises("missing_key", ps.resolve, p)
      assert.are.equal("nothing-here", err.key)
      assert.are.equal(store.name, err.store)
      assert.is_false(ps.is_resolved(p))
    end)

    it("raises a serialization error for corrupt bytes and leaves them alone", function()
      local key = store:put({ "a", "table" })
      local path = tmp .. "/objects/" .. key
      local garbage = "\255\0garbage that is no encoding\1\2\3"
      write_file(path, garbage)
      raises("serialization", store.get, store, key)
      raises("serialization", ps.resolve, store:proxy_from_key(key))
      assert.are.equal(garbage, read_file(path))
      write_file(path, "")
      raises("serialization", store.get, store, key)
    end)

    it("gives an io error, and leaves nothing behind, when a put fails", function()
      -- A directory where the object's file should be: rename(2) fails
      -- after the bytes were written to the temporary file.
      assert(shell("mkdir " .. quote(tmp .. "/objects/taken") .. " && touch "
        .. quote(tmp .. "/objects/taken/inner")))
      local err = raises("io", store.put, store, string.rep("x", 1000), { key = "taken" })
      assert.truthy(tostring(err):find("taken", 1, true))
      assert.are.same({ "taken" }, listing(tmp .. "/objects"))
    end)

    it("keeps stores with different prefixes apart in one directory", function()
      local a = ps.init_store("file", { name = unique("pa"), dir = tmp .. "/objects", prefix = "a-" })
      local b = ps.init_store("file", { name = unique("pb"), dir = tmp .. "/objects", prefix = "b-" })
      a:put("from a", { key = "k" })
      b:put("from b", { key = "k" })
      assert.are.equal("from a", a:get("k"))
      assert.are.equal("from b", b:get("k"))
      assert.is_false(store:exists("k"))
      assert.are.same({ "a-k", "b-k" }, listing(tmp .. "/objects"))
      a:evict("k")
      assert.are.equal("from b", b:get("k"))
      a:close()
      b:close()
      raises("config", ps.init_store, "file", { name = unique("bad"), dir = tmp, prefix = "x/y" })
      raises("config", ps.init_store, "file", { name = unique("bad"), dir = tmp, prefix = ".hidden" })
    end)

    it("reports a directory that cannot be created", function()
      write_file(tmp .. "/plainfile", "not a directory")
      raises("io", ps.init_store, "file", { name = unique("bad"), dir = tmp .. "/plainfile" })
      raises("io", ps.init_store, "file", { name = unique("bad"), dir = tmp .. "/plainfile/sub" })
      assert.is_nil(ps.get_store("bad"))
    end)
  end)
end

-- ---- lifetime: what close removes ----------------------------------------

describe("closing a file store", function()
  local tmp

  before_each(function() tmp = mktemp("/var/tmp") end)
  after_each(function() shell("rm -rf " .. quote(tmp)) end)

  it("never deletes a directory or objects it did not create", function()
    local dir = tmp .. "/shared"
    assert(shell("mkdir " .. quote(dir)))
    write_file(dir .. "/foreign", "someone else's")
    local s = ps.init_store("file", { name = unique("c"), dir = dir })
    s:put("mine", { key = "mine" })
    s:close()
    assert.are.same({ "foreign", "mine" }, listing(dir))
    assert.is_nil(ps.get_store(s.name))
  end)

  it("keeps the objects of a directory it created unless asked to clear", function()
    local dir = tmp .. "/made/here"
    local s = ps.init_store("file", { name = unique("c"), dir = dir })
    s:put("kept", { key = "kept" })
    s:close()
    assert.are.same({ "kept" }, listing(dir))
  end)

  it("with clear, removes what it wrote and the directory it created", function()
    local dir = tmp .. "/made"
    local s = ps.init_store("file", { name = unique("c"), dir = dir, clear = true })
    s:put("x", { key = "one" })
    s:put("y", { key = "two" })
    s:close()
    assert.is_false(exists(dir))
  end)

  it("with clear, removes only its own objects from a directory it found", function()
    local dir = tmp .. "/found"
    assert(shell("mkdir " .. quote(dir)))
    write_file(dir .. "/foreign", "keep me")
    local s = ps.init_store("file", { name = unique("c"), dir = dir, clear = true })
    s:put("x", { key = "one" })
    s:close()
    assert.are.same({ "foreign" }, listing(dir))
  end)

  it("with clear and a prefix, removes only that prefix from a directory it created", function()
    local dir = tmp .. "/prefixed"
    local a = ps.init_store("file", { name = unique("c"), dir = dir, prefix = "a-", clear = true })
    local b = ps.init_store("file", { name = unique("c"), dir = dir, prefix = "b-" })
    a:put(1, { key = "x" })
    b:put(2, { key = "y" })
    a:close()
    assert.are.same({ "b-y" }, listing(dir))
    assert.are.equal(2, b:get("y"))
    b:close()
  end)

  -- A second process writes into the directory the clearing store made.
  local function put_from_child(dir, key, value)
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local s = ps.init_store("file", { name = "b", dir = %q })
      s:put(%q, { key = %q })
      s:close()
    ]], dir, value, key))
    assert.are.equal(0, rc, out)
  end

  it("with clear, keeps what another process wrote into the directory it created", function()
    local dir = tmp .. "/made"
    local a = ps.init_store("file", { name = unique("c"), dir = dir, clear = true })
    a:put("mine", { key = "a-result" })
    put_from_child(dir, "b-result", "theirs")
    a:close()
    assert.are.same({ "b-result" }, listing(dir))
    local b = ps.init_store("file", { name = unique("c"), dir = dir })
    assert.are.equal("theirs", b:get("b-result"))
    b:close()
  end)

  it("with clear, keeps an object another process put over one of its own", function()
    local dir = tmp .. "/made"
    local a = ps.init_store("file", { name = unique("c"), dir = dir, clear = true })
    a:put("mine", { key = "shared" })
    put_from_child(dir, "shared", "theirs")
    a:close()
    local b = ps.init_store("file", { name = unique("c"), dir = dir })
    assert.are.equal("theirs", b:get("shared"))
    b:close()
  end)

  it("with clear, leaves another process's temporary and spare files", function()
    local dir = tmp .. "/made"
    local a = ps.init_store("file", { name = unique("c"), dir = dir, clear = true })
    a:put("mine", { key = "x" })
    write_file(dir .. "/.ps-tmp-0123456789abcdef0123456789abcdef", "a put under way")
    a:close()
    assert.are.same({ ".ps-tmp-0123456789abcdef0123456789abcdef" }, listing(dir))
  end)

  it("does not carry clear in its config", function()
    local s = ps.init_store("file", { name = unique("c"), dir = tmp .. "/d", clear = true })
    local cfg = s:config()
    s:close()
    assert.is_nil(cfg.clear)
  end)
end)

-- ---- configs and URLs ------------------------------------------------------

describe("file store configs", function()
  local tmp

  before_each(function() tmp = mktemp("/var/tmp") end)
  after_each(function() shell("rm -rf " .. quote(tmp)) end)

  it("round trip: init_store(cfg.kind, cfg) reaches the same objects", function()
    local name = unique("cfg")
    local s = ps.init_store("file", { name = name, dir = tmp, cache_size = 3 })
    local key = s:put({ "payload" })
    local cfg = s:config()
    assert.are.equal("file", cfg.kind)
    assert.are.equal(name, cfg.name)
    assert.are.equal(tmp, cfg.dir)
    s:close()
    local again = ps.init_store(cfg.kind, cfg)
    assert.are.same(cfg, again:config())
    assert.are.same({ "payload" }, again:get(key))
    again:close()
  end)

  it("config() is a copy the caller may change", function()
    local s = ps.init_store("file", { name = unique("cfg"), dir = tmp })
    local cfg = s:config()
    cfg.dir = "/elsewhere"
    assert.are.equal(tmp, s:config().dir)
    s:close()
  end)

  it("accepts file:// URLs wherever a kind is accepted", function()
    local s = ps.init_store("file://" .. tmp .. "/via-url", { name = unique("url") })
    assert.are.equal("file", s.kind)
    assert.are.equal(tmp .. "/via-url", s:config().dir)
    local key = s:put(7)
    assert.are.equal(7, s:get(key))
    s:close()
    assert.truthy(exists(tmp .. "/via-url/" .. key))
  end)

  it("refuses relative file:// URLs with a config error", function()
    raises("config", ps.init_store, "file://relative/dir")
    raises("config", ps.init_store, "file://")
  end)

  it("takes a relative dir from the real working directory, not $PWD", function()
    -- a child whose $PWD is stale: it changed directory without a shell
    write_file(tmp .. "/child.lua", [[
      local ps = require "proxystore"
      local s = ps.init_store("file", { name = "rel", dir = "objs" })
      io.write(s:config().dir)
      s:put("x", { key = "k" })
      s:close()
    ]])
    shell("mkdir " .. quote(tmp .. "/real") .. " " .. quote(tmp .. "/stale"))
    local rc, out = sh("cd " .. quote(tmp .. "/real") .. " && PWD=" ..
      quote(tmp .. "/stale") .. " " .. LUA .. " " .. quote(tmp .. "/child.lua"), true)
    assert.are.equal(0, rc, out)
    assert.are.equal(tmp .. "/real/objs", out)
    assert.truthy(exists(tmp .. "/real/objs/k"))
    assert.is_false(exists(tmp .. "/stale/objs"))
    -- and with no $PWD at all
    rc, out = sh("cd " .. quote(tmp .. "/real") .. " && env -u PWD " .. LUA ..
      " " .. quote(tmp .. "/child.lua"), true)
    assert.are.equal(0, rc, out)
    assert.are.equal(tmp .. "/real/objs", out)
  end)

  it("refuses a dir or prefix holding a NUL byte", function()
    local in_dir, in_prefix = unique("nul"), unique("nul")
    local e = raises("config", ps.init_store, "file", { name = in_dir, dir = tmp .. "\0/etc" })
    assert.truthy(tostring(e):find("NUL", 1, true), tostring(e))
    raises("config", ps.init_store, "file", { name = in_prefix, dir = tmp, prefix = "a\0b" })
    assert.is_nil(ps.get_store(in_dir))
    assert.is_nil(ps.get_store(in_prefix))
  end)

  it("round trips the config of a local store", function()
    local s = ps.init_store("local", { name = unique("loc"), cache_size = 0 })
    local cfg = s:config()
    assert.are.equal("local", cfg.kind)
    s:close()
    local again = ps.init_store(cfg.kind, cfg)
    local got = again:config()
    -- a re-created local store is a new instance: old proxies never see it
    assert.are_not.equal(cfg.instance, got.instance)
    cfg.instance, got.instance = nil, nil
    assert.are.same(cfg, got)
    again:close()
    local u = ps.init_store("local:", { name = unique("loc") })
    assert.are.equal("local", u.kind)
    u:close()
  end)
end)

-- ---- several processes -----------------------------------------------------

describe("file stores shared between processes", function()
  local tmp

  before_each(function() tmp = mktemp("/dev/shm") end)
  after_each(function() shell("rm -rf " .. quote(tmp)) end)

  it("let two processes read each other's objects in one directory", function()
    local dir = tmp .. "/shared"
    local s = ps.init_store("file", { name = unique("share"), dir = dir })
    s:put({ from = "parent", n = 1 }, { key = "from-parent" })
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local s = ps.init_store("file", { name = "child", dir = %q })
      local v = s:get("from-parent")
      assert(v.from == "parent" and v.n == 1, "child read a wrong value")
      s:put({ from = "child", list = { 1, 2, 3 } }, { key = "from-child" })
      s:close()
      print("child done")
    ]], dir))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("child done", 1, true), out)
    assert.are.same({ from = "child", list = { 1, 2, 3 } }, s:get("from-child"))
    s:close()
  end)

  it("keep at most cache_bytes of objects cached, the least recent dropped first, the last always", function()
    local s = ps.init_store("file", { name = unique("bytes"), dir = tmp .. "/bytes",
                                      cache_bytes = 250 * 1024 })
    local d, k16 = nil, {}
    finally(function()   -- (busted keeps one finally per test: the last)
      s:close()
      if d then
        for _, k in ipairs(k16) do d:evict(k) end
        d:close()
      end
    end)
    assert.are.equal(250 * 1024, s:config().cache_bytes)
    local k = {}
    for i = 1, 3 do k[i] = s:put(("x"):rep(100 * 1024) .. i) end
    for i = 1, 3 do s:get(k[i]) end
    local c = s:metrics().cache
    assert.are.equal(2, c.size)                 -- three of ~100 KiB do not fit
    assert.is_true(c.bytes > 200 * 1024 and c.bytes <= 250 * 1024, tostring(c.bytes))
    local hits = c.hits
    assert.are.equal(("x"):rep(100 * 1024) .. "3", s:get(k[3]))
    assert.are.equal(hits + 1, s:metrics().cache.hits)
    assert.are.equal(("x"):rep(100 * 1024) .. "1", s:get(k[1]))   -- dropped: read again
    assert.are.equal(hits + 1, s:metrics().cache.hits)
    -- one object larger than the bound is kept while it is the last one
    local big = s:put(("y"):rep(400 * 1024))
    s:get(big)
    c = s:metrics().cache
    assert.are.equal(1, c.size)
    assert.is_true(c.bytes > 400 * 1024, tostring(c.bytes))
    s:get(big)
    assert.are.equal(c.hits + 1, s:metrics().cache.hits)
    s:evict(big)
    assert.are.same({ 0, 0 }, { s:metrics().cache.size, s:metrics().cache.bytes })
    -- without the option the bound is 32 MiB, and not part of the config
    d = ps.init_store("file", { name = unique("bytes-default"), dir = tmp .. "/bytes",
                                cache_size = 16 })
    assert.is_nil(d:config().cache_bytes)
    for i = 1, 3 do k16[i] = d:put(("z"):rep(12 * 1024 * 1024) .. i) end
    for i = 1, 3 do d:get(k16[i]) end
    assert.are.equal(2, d:metrics().cache.size)  -- 3 x 12 MiB > 32 MiB
  end)

  it("serve strict proxies the bytes another process rewrote, even at the same size", function()
    local dir = tmp .. "/strict"
    local s = ps.init_store("file", { name = unique("strict"), dir = dir, cache_size = 8 })
    local key = s:put("aaaa")
    assert.are.equal("aaaa", s:get(key))            -- now cached, with its version
    -- Unchanged: a strict resolve checks the version and skips the read.
    local before = s:metrics()
    assert.are.equal("aaaa", ps.extract(s:proxy_from_key(key, { strict = true })))
    local after = s:metrics()
    assert.are.equal(before.cache.hits + 1, after.cache.hits)
    assert.are.equal(before.get.bytes, after.get.bytes)   -- no bytes were read
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local s = ps.init_store("file", { name = "writer", dir = %q })
      s:put("bbbb", { key = %q })
      s:close()
    ]], dir, key))
    assert.are.equal(0, rc, out)
    -- A plain proxy may use the cached copy; a strict one must not.
    assert.are.equal("aaaa", ps.extract(s:proxy_from_key(key)))
    assert.are.equal("bbbb", ps.extract(s:proxy_from_key(key, { strict = true })))
    assert.are.equal("bbbb", s:get(key))             -- the cache now holds the new bytes
    s:close()
  end)

  it("never lets a reader see part of an object while another process writes", function()
    local dir = tmp .. "/race"
    local stop = tmp .. "/stop"
    local s = ps.init_store("file", { name = unique("race"), dir = dir, cache_size = 0 })
    local a = string.rep("a", 9 * 1024 * 1024 + 7)    -- mapped reads
    local b = string.rep("b", 700 * 1024)             -- read(2) reads
    local c = string.rep("c", 100)
    s:put(a, { key = "hot" })
    -- The writer overwrites the key as fast as it can until told to stop.
    local script = tmp .. "/writer.lua"
    write_file(script, string.format([[
      local ps = require "proxystore"
      local s = ps.init_store("file", { name = "writer", dir = %q })
      local values = { string.rep("a", 9 * 1024 * 1024 + 7), string.rep("b", 700 * 1024),
                       string.rep("c", 100) }
      local i, stop = 0, %q
      while not io.open(stop) do
        i = i + 1
        s:put(values[i %% 3 + 1], { key = "hot" })
      end
      s:close()
      print("writer wrote " .. i)
    ]], dir, stop))
    local writer = assert(io.popen(LUA .. " " .. quote(script) .. " 2>&1", "r"))
    -- Reads until it has seen two of the values (the writer really raced
    -- it) and read at least 50 times; 60 s is only a hang guard.
    local seen, reads = {}, 0
    local t0 = os.time()
    local function distinct()
      return (seen.a and 1 or 0) + (seen.b and 1 or 0) + (seen.c and 1 or 0)
    end
    while (distinct() < 2 or reads < 50) and os.time() - t0 < 60 do
      local v = s:get("hot")
      reads = reads + 1
      local ok = v == a or v == b or v == c
      if not ok then
        write_file(stop, "")
        writer:read("a")
        writer:close()
        error(string.format("read %d bytes that are no whole object (read %d)", #v, reads))
      end
      seen[v:sub(1, 1)] = true
    end
    write_file(stop, "")
    local wout = writer:read("a")
    local ok = writer:close()
    assert.is_true(ok, wout)
    assert.truthy(wout:find("writer wrote %d+"), wout)
    s:close()
    -- The reader really raced: it saw more than one of the values.
    assert.truthy(distinct() >= 2)
    -- No temporary file survives the writer.
    assert.are.same({ "hot" }, listing(dir))
  end)

  it("resolve proxies serialized in one process in another process", function()
    local dir = tmp .. "/xproc"
    local s = ps.init_store("file", { name = unique("xp"), dir = dir })
    local big = string.rep("xyz", 400000)
    local p = s:proxy({ text = big, n = 99 })
    local wire = ps.serialize(p)
    assert.is_true(#wire < 512, "a proxy travels as a reference, not its target")
    write_file(tmp .. "/wire", wire)
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local f = assert(io.open(%q, "rb"))
      local p = ps.deserialize(f:read("a"))
      f:close()
      assert(ps.is_proxy(p) and not ps.is_resolved(p))
      assert(p.n == 99 and p.text == string.rep("xyz", 400000), "wrong target")
      -- and back: a proxy made here resolves in the parent
      local s = ps.get_store(%q)
      assert(s, "the store was re-created from the proxy's config")
      local q = s:proxy("made in the child")
      local out = assert(io.open(%q, "wb"))
      out:write(ps.serialize(q))
      out:close()
      s:close()
      print("resolved in child")
    ]], tmp .. "/wire", s.name, tmp .. "/wire2"))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("resolved in child", 1, true), out)
    local q = ps.deserialize(read_file(tmp .. "/wire2"))
    assert.are.equal("made in the child", ps.extract(q))
    s:close()
  end)

  it("a store re-created from a proxy's config deletes nothing at close", function()
    local dir = tmp .. "/owned"
    local s = ps.init_store("file", { name = unique("own"), dir = dir, clear = true })
    local key = s:put("keep")
    write_file(tmp .. "/wire", ps.serialize(s:proxy_from_key(key)))
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local f = assert(io.open(%q, "rb"))
      local p = ps.deserialize(f:read("a"))
      f:close()
      assert(ps.extract(p) == "keep")
      local s = ps.get_store(%q)
      s:put("from child", { key = "child-object" })
      s:close()
      print("closed")
    ]], tmp .. "/wire", s.name))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("closed", 1, true), out)
    local expected = { "child-object", key }
    table.sort(expected)
    assert.are.same(expected, listing(dir))
    s:close()
    -- the clearing store removes only what it wrote
    assert.are.same({ "child-object" }, listing(dir))
  end)
end)

-- ---- spares on a directory others can write ---------------------------------

describe("a recycling file store's spares", function()
  local tmp

  before_each(function() tmp = mktemp("/var/tmp") end)
  after_each(function() shell("rm -rf " .. quote(tmp)) end)

  local function spare_names(dir)
    local t = {}
    for _, n in ipairs(listing(dir)) do
      if n:find("^%.ps%-spare%-") then t[#t + 1] = n end
    end
    return t
  end

  it("carry a random tag that another store on the directory does not share", function()
    local dir = tmp .. "/d"
    local a = ps.init_store("file", { name = unique("sp"), dir = dir, recycle = 2 })
    local b = ps.init_store("file", { name = unique("sp"), dir = dir, recycle = 2 })
    a:evict(a:put("x"))
    b:evict(b:put("y"))
    local names = spare_names(dir)
    assert.are.equal(2, #names)
    for _, n in ipairs(names) do
      assert.truthy(n:match("^%.ps%-spare%-%x+%-%d+$"), n)
      assert.truthy(#n:match("^%.ps%-spare%-(%x+)") >= 16, n)
    end
    local tag = "^%.ps%-spare%-(%x+)%-"
    assert.are_not.equal(names[1]:match(tag), names[2]:match(tag))
    a:close()
    b:close()
  end)

  -- Another user who can write the directory and has listed it plants
  -- files under the names the next spares will have. put must neither
  -- block on a FIFO nor write into a file that is not its own 0600 file.
  -- In a child, under timeout(1): a put that blocks fails the spec.
  it("never write into a FIFO, a 0666 file or another user's file planted under their names", function()
    local dir = tmp .. "/d"
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local dir, as_root = %q, %s
      local s = ps.init_store("file", { name = "sp", dir = dir, recycle = 4, cache_size = 0 })
      s:evict(s:put("first"))
      local spare
      for n in io.popen("ls -A " .. dir):lines() do
        if n:find("^%%.ps%%-spare%%-") then spare = n end
      end
      local base = dir .. "/" .. spare:gsub("%%d+$", "")
      assert(os.execute(CLEAN .. "mkfifo " .. base .. "1"))
      local f = assert(io.open(base .. "2", "w"))
      f:write("planted")
      f:close()
      assert(os.execute(CLEAN .. "chmod 666 " .. base .. "2"))
      local planted = assert(io.open(base .. "2", "rb"))   -- keeps the inode
      local foreign
      if as_root then
        f = assert(io.open(base .. "3", "w"))
        f:write("foreign")
        f:close()
        assert(os.execute(CLEAN .. "chmod 600 " .. base .. "3 && chown nobody " .. base .. "3"))
        foreign = assert(io.open(base .. "3", "rb"))
      end
      for i = 1, 4 do
        local v = ("value %%d "):format(i) .. ("x"):rep(i * 1000)
        local k = s:put(v)
        assert(s:get(k) == v, "read back " .. i)
      end
      print("planted:", planted:read("a"))
      if foreign then print("foreign:", foreign:read("a")) end
      s:close()
      print("done")
    ]], dir, tostring(select(2, sh("id -u")):match("^0\n") ~= nil)), "timeout 60 ")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("planted:\tplanted\n", 1, true), out)
    if out:find("foreign:", 1, true) then
      assert.truthy(out:find("foreign:\tforeign\n", 1, true), out)
    end
    assert.truthy(out:find("done", 1, true), out)
  end)

  it("never write through a hard link to another object planted under their names", function()
    local dir = tmp .. "/d"
    local s = ps.init_store("file", { name = unique("sp"), dir = dir, recycle = 2, cache_size = 0 })
    s:put("precious", { key = "victim" })
    s:evict(s:put("dummy"))
    local base = dir .. "/" .. spare_names(dir)[1]:gsub("%d+$", "")
    assert(shell("ln " .. quote(dir .. "/victim") .. " " .. quote(base .. "1")))
    for i = 1, 3 do s:put(("overwrite %d"):format(i)) end
    assert.are.equal("precious", s:get("victim"))
    s:close()
  end)
end)

-- ---- directories this process may not write ---------------------------------

describe("a file store on a directory it cannot write", function()
  local tmp

  before_each(function() tmp = mktemp("/var/tmp") end)
  after_each(function() shell("rm -rf " .. quote(tmp)) end)

  local have_setpriv = shell("command -v setpriv >/dev/null 2>&1")
  local as_root = select(2, sh("id -u")):match("^0\n") ~= nil

  it("gives a clear io error as an unprivileged user, and reads still work", function()
    if not (have_setpriv and as_root) then
      pending("needs root and setpriv to run a child as nobody")
      return
    end
    local dir = tmp .. "/readonly"
    local s = ps.init_store("file", { name = unique("ro"), dir = dir })
    local key = s:put("readable")
    s:close()
    assert(shell("chmod 755 " .. quote(tmp) .. " " .. quote(dir) .. " && chmod 644 "
      .. quote(dir .. "/" .. key)))
    -- The sanitizer's log directory (spec/run.sh) is root's: log to stderr.
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      local s = ps.init_store("file", { name = "ro", dir = %q })
      print("get:", s:get(%q))
      print("put:", try(s.put, s, "x", { key = "new" }))
      s:close()
    ]], dir, key), "ASAN_OPTIONS=detect_leaks=0 setpriv --reuid=nobody --regid=nogroup --clear-groups ")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("get:\treadable", 1, true), out)
    assert.truthy(out:find("put:\tio: proxystore: ", 1, true), out)
    assert.truthy(out:find("Permission denied", 1, true), out)
    assert.is_nil(out:find("Sanitizer", 1, true), out)
    assert.are.same({ key }, listing(dir))
  end)

  local unshare = "unshare -m"
  if not as_root then unshare = "unshare -rm" end
  local can_mount = shell(unshare .. " sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt' "
    .. ">/dev/null 2>&1")

  it("gives a clear io error on a full filesystem and leaves no partial file", function()
    if not can_mount then
      pending("needs a private mount namespace (unshare -m) to mount a small tmpfs")
      return
    end
    local dir = tmp .. "/small"
    assert(shell("mkdir " .. quote(dir)))
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      assert(os.execute(CLEAN .. "mount -t tmpfs -o size=256k,mode=0700 tmpfs %s"))
      local s = ps.init_store("file", { name = "small", dir = %q })
      print("small:", try(s.put, s, "fits", { key = "small" }))
      print("big:", try(s.put, s, string.rep("x", 1024 * 1024), { key = "big" }))
      print("exists:", s:exists("big"), s:get("small"))
      local ls = io.popen(CLEAN .. "ls -A %s"):read("a")
      print("listing:", (ls:gsub("\n", " ")))
      s:close()
    ]], quote(dir), dir, quote(dir)), unshare .. " ")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("small:\tok", 1, true), out)
    assert.truthy(out:find("big:\tio: proxystore: ", 1, true), out)
    assert.truthy(out:find("No space left on device", 1, true), out)
    assert.truthy(out:find("exists:\tfalse\tfits", 1, true), out)
    assert.truthy(out:find("listing:\tsmall \n", 1, true), out)
  end)

  it("gives a clear io error on a read-only filesystem", function()
    if not can_mount then
      pending("needs a private mount namespace (unshare -m) to mount a read-only tmpfs")
      return
    end
    local dir = tmp .. "/rofs"
    assert(shell("mkdir " .. quote(dir)))
    local rc, out = run_child(tmp, CHILD_PRELUDE .. string.format([[
      assert(os.execute(CLEAN .. "mount -t tmpfs -o ro tmpfs %s"))
      print("open:", try(ps.init_store, "file", { name = "rofs", dir = %q }))
      local s = ps.get_store("rofs")
      print("put:", try(s.put, s, "x", { key = "k" }))
      print("sub:", try(ps.init_store, "file", { name = "rofs2", dir = %q }))
      s:close()
    ]], quote(dir), dir, dir .. "/sub"), unshare .. " ")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("open:\tok", 1, true), out)
    assert.truthy(out:find("put:\tio: proxystore: ", 1, true), out)
    assert.truthy(out:find("Read-only file system", 1, true), out)
    assert.truthy(out:find("sub:\tio: proxystore: ", 1, true), out)
  end)
end)
