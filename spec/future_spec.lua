-- Store futures: store:future, future:set/proxy/result/done, futures and
-- their proxies across processes (ps.serialize, a pool), waking by the
-- store (Redis wake-up lists, inotify), on a real redis-server and real
-- processes.
local ps = require "proxystore"
local shell = require "helpers.shell"
local child = require "helpers.child"

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

local fixture = require("helpers.stores").new("future", { cache_size = 0 })
local srv, dir

local function blocked_clients()
  return tonumber(srv:cli("INFO", "clients"):match("blocked_clients:(%d+)"))
end

-- inotify instances open in process pid (a file store waiter has one).
local function inotify_fds(pid)
  local n = 0
  local p = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for l in p:lines() do
    if l:find("inotify", 1, true) then n = n + 1 end
  end
  p:close()
  return n
end

local function new_store(kind, opts)
  return fixture:store(kind, opts)
end

setup(function()
  fixture:start()
  srv, dir = fixture.srv, fixture.dir
end)

teardown(function() fixture:stop() end)

after_each(function() fixture:reset() end)

for _, kind in ipairs { "local", "file", "redis" } do
  describe("a future on a " .. kind .. " store", function()
    it("reserves a key, and sets once: a second set raises already_set", function()
      local s = new_store(kind)
      local f = s:future()
      assert.is_string(f.key)
      assert.equal(32, #f.key)
      assert.equal(s, f.store)
      assert.is_false(s:exists(f.key))   -- nothing is written before the set
      assert.is_false(f:done())
      f:set({ answer = 42 })
      assert.is_true(f:done())
      assert.same({ answer = 42 }, f:result())
      local err = error_of(f.set, f, "again")
      assert.equal("already_set", err.kind)
      assert.equal(f.key, err.key)
      -- another copy of the same future: the store refuses it
      local copy = ps.deserialize(ps.serialize(f))
      err = error_of(copy.set, copy, "again")
      assert.equal("already_set", err.kind)
      assert.matches("already set", tostring(err), 1, true)
      assert.same({ answer = 42 }, copy:result())
    end)

    it("stores nil and false, and sets nil when called with no value", function()
      local s = new_store(kind)
      local a, b, c = s:future(), s:future(), s:future()
      local pa, pb = a:proxy(), b:proxy()
      a:set(nil)
      b:set(false)
      c:set()
      assert.is_true(a:done() and b:done() and c:done())
      assert.is_nil(ps.extract(pa))
      assert.is_false(ps.extract(pb))
      assert.is_nil(c:result())
      assert.equal("already_set", error_of(c.set, c, 1).kind)
    end)

    it("gives proxies that resolve to the value once it is set", function()
      local s = new_store(kind)
      local f = s:future { key = "fixed-" .. kind }
      assert.equal("fixed-" .. kind, f.key)
      local p = f:proxy()
      assert.is_true(ps.is_proxy(p))
      assert.equal(f.key, ps.key(p))
      assert.matches("future", ps.repr(p), 1, true)
      f:set("the value")
      assert.equal("THE VALUE", p:upper())
      assert.equal("the value", ps.extract(f:proxy()))
    end)


    it("sets values holding large strings whole, and a second such set fails", function()
      -- Large strings go to the store from where they lie (no copy into
      -- one buffer), in their places among the rest of the value; on
      -- Redis, over 6 MiB in all, in chunks.
      local s = new_store(kind)
      local big1 = string.rep("0123456789abcdef", 64 * 1024)       -- 1 MiB
      local big2 = string.rep("fedcba9876543210", 80 * 1024 + 3)   -- 1.25 MiB
      local big3 = string.rep("x", 4 * 1024 * 1024)                -- 4 MiB
      local v = { a = big1, list = { 1, big2, "small", big1 }, tail = big3 }
      local function chunks()
        if kind ~= "redis" then return 0 end
        local n = 0
        for _ in srv:cli("KEYS", s:config().prefix .. "*:chunk:*"):gmatch("[^\n]+") do
          n = n + 1
        end
        return n
      end
      local f = s:future()
      f:set(v)
      local own = chunks()
      assert.is_true(kind ~= "redis" or own >= 2, own)
      -- another copy of the future: the store refuses the set, and the
      -- chunks it wrote first are gone again
      local copy = s:future { key = f.key }
      local err = error_of(copy.set, copy, { big3, big1, big2 })
      assert.equal("already_set", err.kind)
      assert.equal(own, chunks())
      assert.same(v, f:result())
      assert.same(v, ps.extract(s:future({ key = f.key }):proxy()))
      if kind ~= "local" then
        local lt <close> = ps.lifetime { lease = 60 }
        local k = s:put(v, { lifetime = lt })
        assert.same(v, s:get(k))
      end
    end)
    it("makes single-use proxies with evict; evicted, it is unset again", function()
      local s = new_store(kind)
      local f = s:future { evict = true, timeout = 0.1 }
      local p = f:proxy()
      f:set({ 1, 2, 3 })
      assert.equal(3, #p)
      assert.equal(3, #p)            -- the proxy keeps its target
      assert.is_false(s:exists(f.key))
      assert.is_false(f:done())
      -- another proxy waits for a new set, here past its timeout
      assert.equal("timeout", error_of(ps.resolve, f:proxy()).kind)
      -- a plain proxy of the key says why it may be missing
      local err = error_of(ps.resolve, s:proxy_from_key(f.key, { evict = true }))
      assert.equal("missing_key", err.kind)
      assert.matches("single use", tostring(err), 1, true)
    end)

    it("refuses unknown options and bad timeouts as config errors", function()
      local s = new_store(kind)
      assert.equal("config", error_of(s.future, s, { tiemout = 1 }).kind)
      assert.equal("config", error_of(s.future, s, { timeout = -1 }).kind)
      assert.equal("config", error_of(s.future, s, { timeout = 0 / 0 }).kind)
      assert.equal("config", error_of(s.future, s, { key = "" }).kind)
      local f = s:future()
      assert.equal("config", error_of(f.result, f, "soon").kind)
    end)

    it("serializes as a small reference, and its proxies too", function()
      local s = new_store(kind)
      local f = s:future { timeout = 2.5, evict = true }
      local blob = ps.serialize({ f, f:proxy(), f })
      assert.is_true(#blob < 400, #blob .. " bytes")
      local back = ps.deserialize(blob)
      assert.equal(back[1], back[3])   -- one future, shared
      assert.equal(f.key, back[1].key)
      assert.matches("future", ps.repr(back[2]), 1, true)
      assert.matches("proxystore.StoreFuture", tostring(back[1]), 1, true)
    end)
  end)
end

describe("a future on a local store", function()
  it("raises timeout at once when waited on unset, saying nothing else can set it", function()
    local s = new_store("local")
    local f = s:future { timeout = 3600 }
    local err = error_of(f.result, f)
    assert.equal("timeout", err.kind)
    assert.matches("nothing else can set it", tostring(err), 1, true)
    err = error_of(ps.resolve, f:proxy())
    assert.equal("timeout", err.kind)
    assert.is_false(ps.is_resolved(f:proxy()))
    -- resolve_async on an unset local future starts nothing; first use raises
    local p = ps.resolve_async(f:proxy())
    assert.equal("timeout", error_of(ps.resolve, p).kind)
    f:set(1)
    assert.equal(1, ps.extract(p))
  end)
end)

for _, kind in ipairs { "file", "redis" } do
  describe("a future on a " .. kind .. " store across processes", function()
    -- Blocks until the spawned child waits on the store: a deterministic
    -- handshake (Redis: a blocked client; file store: an inotify fd).
    local function until_waiting(c, n)
      child.until_true(function()
        if kind == "redis" then return blocked_clients() >= (n or 1) end
        return inotify_fds(c.pid) >= 1
      end, 60, "the child to wait")
    end

    it("is set in one process and wakes a waiter in another", function()
      local s = new_store(kind)
      local f = s:future()
      local c = child.spawn(([[
        local ps = require "proxystore"
        local f = ps.deserialize(%q)
        local p = f:proxy()
        print(p.greeting .. " from " .. f.key)
      ]]):format(ps.serialize(f)))
      finally(function() c:kill() end)
      until_waiting(c)
      f:set({ greeting = "hello" })
      local out, status = c:finish()
      assert.equal(0, status, out)
      assert.equal("hello from " .. f.key .. "\n", out)
    end)

    it("is set by another process while this one waits", function()
      local s = new_store(kind)
      local f = s:future { timeout = 120 }
      -- the child sets once this process waits (a blocked client on the
      -- server, or an inotify instance open here)
      local c = child.spawn(([[
        local ps = require "proxystore"
        local f = ps.deserialize(%q)
        local function waiting()
          local p
          if %q == "redis" then
            p = io.popen("redis-cli -p %d INFO clients")
            local n = tonumber(p:read("a"):match("blocked_clients:(%%d+)"))
            p:close()
            return n >= 1
          end
          p = io.popen("ls -l /proc/%d/fd")
          local found = p:read("a"):find("inotify", 1, true)
          p:close()
          return found
        end
        while not waiting() do os.execute("sleep 0.02") end
        f:set({ n = 7 })
        print("set")
      ]]):format(ps.serialize(f), kind, srv.port, shell.my_pid()))
      finally(function() c:kill() end)
      assert.same({ n = 7 }, f:result())
      local out = c:finish()
      assert.equal("set\n", out)
    end)

    it("returns at once to a waiter that arrives after the set (result(0))", function()
      local s = new_store(kind)
      local f = s:future()
      f:set("early")
      local late = ps.deserialize(ps.serialize(f))
      assert.equal("early", late:result(0))
      assert.equal("early", ps.extract(late:proxy()))
    end)

    it("raises timeout past the future's timeout, and result's own", function()
      local s = new_store(kind)
      local f = s:future { timeout = 0.2 }
      local p = f:proxy()
      local err = error_of(ps.resolve, p)
      assert.equal("timeout", err.kind)
      assert.matches("not set within", tostring(err), 1, true)
      assert.is_false(ps.is_resolved(p))
      assert.equal("timeout", error_of(f.result, f, 0).kind)
      assert.equal("timeout", error_of(f.result, f, 0.1).kind)
      f:set("later")
      assert.equal("later", ps.extract(p))   -- the proxy tries again
      -- the store's own connection is fine after waits that timed out
      assert.equal("x", s:get(s:put("x")))
    end)

    it("waits in the background after resolve_async; the store stays usable", function()
      local s = new_store(kind)
      local f = s:future()
      local p = ps.resolve_async(f:proxy())
      -- the background wait holds a connection (or inotify) of its own
      for i = 1, 20 do assert.equal(i, s:get(s:put(i))) end
      local c = child.spawn(([[
        local ps = require "proxystore"
        ps.deserialize(%q):set(string.rep("v", 100000))
      ]]):format(ps.serialize(f)))
      local out, status = c:finish()
      assert.equal(0, status, out)
      assert.equal(100000, #p)
    end)

    it("wakes every waiter: 20 processes through a pool", function()
      local s = new_store(kind)
      local f = s:future { timeout = 120 }
      local pool = ps.pool { workers = 20, progress = false }
      finally(function() pool:close() end)
      local p = f:proxy()
      local fs = {}
      for i = 1, 20 do
        fs[i] = pool:submit(function(px, n) return px.value * n end, p, i)
      end
      if kind == "redis" then
        child.until_true(function() return blocked_clients() >= 20 end, 120, "20 waiters")
      else
        child.until_true(function()
          for _, pid in pairs(pool:pids()) do
            if inotify_fds(pid) < 1 then return false end
          end
          return true
        end, 120, "20 waiters")
      end
      f:set({ value = 3 })
      for i = 1, 20 do assert.equal(3 * i, fs[i]:result(120)) end
    end)

    it("goes through a pool as argument and result: a task sets it, others wait", function()
      local s = new_store(kind)
      local pool = ps.pool { workers = 3, progress = false }
      finally(function() pool:close() end)
      local f = s:future()
      local waiting = {
        pool:submit(function(px) return #px end, f:proxy()),
        pool:submit(function(fut) return fut:result(120) .. "!" end, f),
      }
      local setter = pool:submit(function(fut)
        fut:set("made by a task")
        return fut
      end, f)
      local back = setter:result(120)
      assert.equal(f.key, back.key)
      assert.equal(#"made by a task", waiting[1]:result(120))
      assert.equal("made by a task!", waiting[2]:result(120))
      -- a future made in a task and returned as its result
      local g = pool:submit(function(name)
        return require("proxystore").get_store(name):future()
      end, s.name):result(120)
      assert.is_false(g:done())
      pool:submit(function(fut) fut:set(99) end, g):result(120)
      assert.equal(99, g:result())
    end)

    it("hands values down a chain of tasks as single-use futures in a lifetime", function()
      local s = new_store(kind)
      local pool = ps.pool { workers = 4, progress = false }
      local lt = ps.lifetime()
      finally(function()
        pool:close()
        lt:close()
      end)
      local fut = {}
      for i = 0, 4 do fut[i] = s:future { evict = true, lifetime = lt, timeout = 120 } end
      local fs = {}
      for i = 1, 4 do
        -- every task starts at once and waits for the one before
        fs[i] = pool:submit(function(input, output, n, name)
          local ps_ = require("proxystore")
          local x = ps_.extract(input)
          -- gone as soon as its one consumer holds it
          local left = ps_.get_store(name):exists(ps_.key(input))
          output:set(x .. n)
          return #x, left
        end, fut[i - 1]:proxy(), fut[i], i, s.name)
      end
      local head = ("x"):rep(100000)
      fut[0]:set(head)
      for i = 1, 4 do
        local n, left = fs[i]:result(120)
        assert.equal(100000 + i - 1, n)
        assert.is_false(left, "value " .. (i - 1) .. " still stored once read")
      end
      -- each value left the store once its one consumer held it
      for i = 0, 3 do assert.is_false(s:exists(fut[i].key), "value " .. i) end
      -- the last output, read by no one, stays until the lifetime ends
      assert.is_true(s:exists(fut[4].key))
      assert.equal(head .. "1234", fut[4]:result(0))
      lt:close()
      assert.is_false(s:exists(fut[4].key))
    end)
  end)
end

describe("a future on a redis store", function()
  it("wakes 100 waiting processes with one set", function()
    local s = new_store("redis")
    local f = s:future { timeout = 300 }
    -- (the pool's automatic proxies go to this store: its default private
    -- store allows at most 62 workers)
    local pool = ps.pool { workers = 100, progress = false, store = s }
    finally(function() pool:close() end)
    local p = f:proxy()
    local fs = {}
    for i = 1, 100 do fs[i] = pool:submit(function(px) return px[1] end, p) end
    child.until_true(function() return blocked_clients() >= 100 end, 300,
      "100 blocked waiters")
    f:set({ "woken" })
    for i = 1, 100 do assert.equal("woken", fs[i]:result(300)) end
    assert.equal(0, blocked_clients())
  end)

  it("keeps the value and its wake-up in two keys of the store's prefix", function()
    local s = new_store("redis")
    local f = s:future { key = "k1" }
    f:set("v")
    assert.equal("string", srv:cli("TYPE", s:config().prefix .. "k1"):match("%a+"))
    assert.equal("list", srv:cli("TYPE", s:config().prefix .. "k1:wake"):match("%a+"))
    s:evict("k1")   -- both go
    assert.equal("0", srv:cli("EXISTS", s:config().prefix .. "k1", s:config().prefix .. "k1:wake"):match("%d+"))
  end)

  it("sets large (chunked) values once, in a child with small chunks", function()
    local s = new_store("redis")
    local f = s:future()
    local out, status = child.run(([[
      local ps = require "proxystore"
      local f = ps.deserialize(%q)
      f:set(string.rep("abc", 3000))
      local ok, err = pcall(f.set, f, "again")
      print(err.kind)
      local g = ps.deserialize(%q)
      print(#g:result(5))
    ]]):format(ps.serialize(f), ps.serialize(f)), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
    assert.equal(0, status, out)
    assert.equal("already_set\n9000\n", out)
    assert.equal(string.rep("abc", 3000), f:result())
  end)

  it("raises connection when the server dies during a wait", function()
    local s = new_store("redis")
    local f = s:future { timeout = 60 }
    local c = child.spawn(([[
      local ps = require "proxystore"
      local f = ps.deserialize(%q)
      local ok, err = pcall(f.result, f)
      print(ok, err.kind)
    ]]):format(ps.serialize(f)))
    finally(function() c:kill() end)
    child.until_true(function() return blocked_clients() >= 1 end, 60, "the waiter")
    srv:kill()
    local out = c:finish()
    assert.equal("false\tconnection\n", out)
    srv:restart()
  end)

  it("refuses a forged future reference", function()
    local s = new_store("redis")
    local blob = ps.serialize(s:future { timeout = 1.5 })
    -- 1.5 as a float is 00 00 00 00 00 00 F8 3F; make it -1.5
    local at = assert(blob:find("\0\0\0\0\0\0\248\63", 1, true))
    local forged = blob:sub(1, at + 6) .. "\191" .. blob:sub(at + 8)
    local err = error_of(ps.deserialize, forged)
    assert.equal("serialization", err.kind)
    assert.matches("timeout", tostring(err), 1, true)
  end)
end)
