-- The Redis store over a real Redis Cluster (3 masters, 3 replicas,
-- cluster-node-timeout 1000 ms), started once for this file by
-- helpers.redis_cluster. The specs that move slots and kill a master come
-- last, in that order.
local ps = require "proxystore"
local core = require "proxystore.core"
local rc = require "helpers.redis_cluster"
local redis = require "helpers.redis"
local shell = require "helpers.shell"
local child = require "helpers.child"

local now = core.monotonic

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

-- Runs a Lua chunk in a fresh lua5.4 process (same paths and sanitizer
-- settings as this run); its output.
local function run_lua(code, env)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local p = assert(io.popen((env or "") .. " lua5.4 " .. shell.quote(file) .. " 2>&1"))
  local out = p:read("a")
  p:close()
  os.remove(file)
  return out
end

-- fn(...), tried again (up to 20 times in all) while it fails with kind
-- timeout or connection: for calls to a running cluster through a store
-- with a short timeout, which a loaded machine can make late (what such
-- specs test is the failure, not this).
local function eventually(fn, ...)
  for _ = 1, 19 do
    local res = table.pack(pcall(fn, ...))
    if res[1] then return table.unpack(res, 2, res.n) end
    local kind = ps.is_error(res[2]) and res[2].kind
    if kind ~= "timeout" and kind ~= "connection" then error(res[2], 0) end
  end
  return fn(...)
end

local function lua_list(t)
  local parts = {}
  for i, v in ipairs(t) do parts[i] = string.format("%q", v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

describe("the redis store on a Redis Cluster", function()
  local c
  local stores = {}
  local serial = 0

  setup(function() c = rc.start { masters = 3, replicas = 1, node_timeout = 1000 } end)
  teardown(function()
    for _, s in ipairs(stores) do pcall(s.close, s) end
    if c then c:stop() end
  end)

  -- A store on the cluster. Its timeout is generous: on a loaded machine
  -- an ordinary call may take seconds, and only specs about failures want
  -- a short one.
  local function open(opts)
    serial = serial + 1
    local o = { name = "cluster-spec-" .. serial, cluster = c.seeds, cache_size = 0,
                timeout = 30 }
    for k, v in pairs(opts or {}) do o[k] = v end
    local s = ps.init_store("redis", o)
    stores[#stores + 1] = s
    return s
  end

  -- The node holding object key k (no prefix): the owner of its Redis
  -- key's slot, as the cluster itself computes it.
  local function node_of(k, topo)
    return c:owner(c:slot("{" .. k .. "}"), topo)
  end

  -- The same for many keys, asking the cluster once.
  local function nodes_of(keys, topo)
    topo = topo or c:topology()
    local names = {}
    for i, k in ipairs(keys) do names[i] = "{" .. k .. "}" end
    local out = {}
    for i, slot in ipairs(c:slots(names)) do out[i] = c:owner(slot, topo) end
    return out
  end

  -- Clients blocked on node i (a waiter of a future): the handshake that
  -- says a child is waiting, never a sleep.
  local function blocked(i)
    return tonumber(c:cli(i, "INFO", "clients"):match("blocked_clients:(%d+)")) or 0
  end

  -- Kills a spawned child and reaps it (a popen left open would wait for
  -- it when collected). busted keeps one finally per spec: specs gather
  -- their cleanups in one.
  local function stop(w)
    if w then
      w:kill()
      pcall(w.finish, w)
    end
  end

  -- Moves every key still in slot from node `from` to node `to`, then
  -- hands the slot over on every master: the end of a hand-made move.
  -- Every key, not only the spec's own: an earlier spec's object under a
  -- random key may hash to the same slot, and a node that still holds a
  -- key of a slot refuses to give it up (the slot would stay open and
  -- every later move of the cluster refuse to start). Returns what each
  -- SETSLOT answered, for the caller to check or not.
  local function hand_over(slot, from, to, topo)
    local rest = { "MIGRATE", "127.0.0.1", c.nodes[to].port, "", "0", "5000", "KEYS" }
    for k in c:cli(from, "CLUSTER", "GETKEYSINSLOT", slot, "100000"):gmatch("[^\n]+") do
      rest[#rest + 1] = k
    end
    if #rest > 7 then assert.matches("OK", c:cli(from, table.unpack(rest))) end
    local answers = {}
    for _, m in ipairs(c:masters(topo)) do
      answers[#answers + 1] = c:cli(m, "CLUSTER", "SETSLOT", slot, "NODE", topo[to].id)
    end
    return answers
  end

  -- The keys of node i matching pattern, sorted.
  local function keys_on(i, pattern)
    local keys = {}
    for k in c:cli(i, "KEYS", pattern):gmatch("[^\n]+") do keys[#keys + 1] = k end
    table.sort(keys)
    return keys
  end

  describe("topology", function()
    it("spreads objects over every master, each on the node serving its slot", function()
      local s = open()
      local keys = {}
      for i = 1, 40 do
        keys[i] = s:put({ i = i, pad = ("p"):rep(i) })
        assert.same({ i = i, pad = ("p"):rep(i) }, s:get(keys[i]))
      end
      local topo = c:topology()
      local per = {}
      for i, n in ipairs(nodes_of(keys, topo)) do
        per[n] = per[n] or {}
        table.insert(per[n], { "EXISTS", "{" .. keys[i] .. "}" })
      end
      for _, m in ipairs(c:masters(topo)) do
        assert.is_true(per[m] ~= nil, "no object on master " .. m)
        for _, line in ipairs(c:pipe(m, per[m])) do assert.equal("1", line) end
      end
    end)

    it("puts, gets, tests and evicts as on one server, under a prefix", function()
      local s = open { prefix = "pfx:" }
      local bin = "a\0b\255" .. ("x"):rep(5000)
      local k = s:put(bin, { key = "mine" })
      assert.equal("mine", k)
      assert.equal("1", c:cli(node_of("mine"), "EXISTS", "pfx:{mine}"):match("%d+"))
      assert.equal(bin, s:get("mine"))
      assert.is_true(s:exists("mine"))
      s:evict("mine")
      assert.is_false(s:exists("mine"))
      assert.equal("dflt", s:get("mine", "dflt"))
      s:evict("mine")
      local m = s:metrics()
      assert.equal(1, m.put.count)
      assert.equal(2, m.get.count)
      assert.equal(2, m.evict.count)
    end)

    it("keeps every chunk of an object larger than the chunk size in its slot", function()
      local out = run_lua(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { cluster = %s, cache_size = 0, timeout = 30 })
        local big = ("0123456789"):rep(2000)
        s:put(big, { key = "big" })
        assert(s:get("big") == big)
        assert(s:get_batch({ "big", "nothing" })[1] == big)
        io.write("written")
      ]]):format(lua_list(c.seeds)), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      assert.equal("written", out)
      local n = node_of("big")
      local keys = {}
      for k in c:cli(n, "KEYS", "{big}*"):gmatch("[^\n]+") do keys[#keys + 1] = k end
      -- the header and 21 chunks (the serialized value is a few bytes
      -- over 20000)
      assert.equal(22, #keys, table.concat(keys, "\n"))
      local slot = c:slot("{big}")
      for _, sl in ipairs(c:slots(keys)) do assert.equal(slot, sl) end
      -- replaced by another process: the old chunks go, in one DEL
      out = run_lua(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { cluster = %s, cache_size = 0, timeout = 30 })
        s:put(("z"):rep(3500), { key = "big" })
        assert(s:get("big") == ("z"):rep(3500))
        s:evict("big")
        io.write(tostring(s:exists("big")))
      ]]):format(lua_list(c.seeds)), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      assert.equal("false", out)
      assert.equal("", c:cli(n, "KEYS", "{big}*"):gsub("%s+", ""))
    end)

    it("refuses keys and options a cluster cannot take", function()
      local s = open()
      local err = error_of(s.put, s, "x", { key = "}starts" })
      assert.equal("config", err.kind)
      assert.matches("hash each of its keys apart", tostring(err), 1, true)
      -- a '}' further in is fine: Redis hashes the key up to it
      assert.equal("ok", s:get(s:put("ok", { key = "tag}1" })))
      local braces = open { prefix = "a{}" }
      err = error_of(braces.put, braces, 1)
      assert.equal("config", err.kind)
      -- a prefix with a tag of its own puts every object in its slot
      local tagged = open { prefix = "{all}:" }
      local slot = c:slot("all")
      for i = 1, 5 do
        local k = tagged:put(i)
        assert.equal(slot, c:slot("{all}:{" .. k .. "}"))
        assert.equal(i, tagged:get(k))
      end
      for _, bad in ipairs {
        { db = 2 }, { host = "127.0.0.1" }, { port = 7000 }, { path = "/tmp/x.sock" },
        { cluster = {} }, { cluster = { "nohost" } }, { cluster = { "h:0" } },
        { cluster = { "h:1", x = 1 } }, { cluster = "127.0.0.1:7000" },
      } do
        local o = { name = "bad" }
        for k, v in pairs(bad) do o[k] = v end
        if not o.cluster then o.cluster = c.seeds end
        err = error_of(ps.init_store, "redis", o)
        assert.equal("config", err.kind)
      end
    end)

    it("says so when a seed is a Redis that is no cluster node", function()
      local single = redis.start()
      finally(function() single:stop() end)
      local err = error_of(open, { cluster = { "127.0.0.1:" .. single.port } })
      assert.equal("config", err.kind)
      assert.matches("not a cluster node", tostring(err), 1, true)
    end)

    it("authenticates on every node with the store's password", function()
      local locked = rc.start { masters = 3, replicas = 0, password = "s3cret" }
      finally(function() locked:stop() end)
      local s = open { cluster = locked.seeds, password = "s3cret" }
      local keys = s:put_batch({ "a", "b", "c", "d", "e", "f" })
      assert.same({ "a", "b", "c", "d", "e", "f" }, { table.unpack(s:get_batch(keys), 1, 6) })
      local u = ps.init_store("redis+cluster://:s3cret@" .. locked.seeds[2], { name = "auth-url" })
      stores[#stores + 1] = u
      assert.equal("c", u:get(keys[3]))
      local err = error_of(open, { cluster = locked.seeds, password = "wrong" })
      assert.equal("config", err.kind)
      assert.is_nil(tostring(err):find("wrong", 1, true))
      err = error_of(open, { cluster = locked.seeds })
      assert.equal("config", err.kind)
      assert.matches("NOAUTH", tostring(err), 1, true)
    end)

    it("asks the next seed when one does not answer (stopped)", function()
      local topo = c:topology()
      local replica, master
      for i, n in pairs(topo) do
        if n.master and #n.slots > 0 then master = master or i else replica = replica or i end
      end
      local pid = c.nodes[replica].pid
      os.execute("kill -STOP " .. pid)
      finally(function()
        os.execute("kill -CONT " .. pid)
        assert.is_true(c:wait_ok())
      end)
      -- the stopped node would take the whole timeout; it gets a second
      -- (and the master as long, which a loaded machine can make late:
      -- hence eventually; a store that never asked the next seed would
      -- fail every try)
      local s = eventually(open, { cluster = { c.seeds[replica], c.seeds[master] }, timeout = 5 })
      assert.equal("v", s:get(s:put("v")))
    end)

    it("takes any live seed; with none alive it fails naming them", function()
      local dead = redis.dead_port()
      local s = open { cluster = { "127.0.0.1:" .. dead, c.seeds[2] } }
      assert.equal("v", s:get(s:put("v")))
      local err = error_of(open, { cluster = { "127.0.0.1:" .. dead }, timeout = 1 })
      assert.equal("connection", err.kind)
      assert.matches(tostring(dead), tostring(err), 1, true)
    end)
  end)

  describe("the store's calls", function()
    it("batches across nodes come back in the caller's order", function()
      local s = open()
      local list = {}
      for i = 1, 300 do list[i] = i % 3 == 0 and { n = i } or ("v" .. i) end
      local keys = s:put_batch(list)
      local per = {}
      local topo = c:topology()
      for _, n in ipairs(nodes_of(keys, topo)) do per[n] = true end
      assert.equal(3, #c:masters(topo))
      for _, m in ipairs(c:masters(topo)) do assert.is_true(per[m]) end
      local ask = {}
      for i, k in ipairs(keys) do
        ask[#ask + 1] = k
        if i % 50 == 0 then ask[#ask + 1] = "absent-" .. i end
      end
      local got = s:get_batch(ask)
      assert.equal(#ask, got.n)
      local j = 0
      for i, k in ipairs(ask) do
        if k:find("^absent") then
          assert.is_nil(got[i])
        else
          j = j + 1
          assert.same(list[j], got[i])
        end
      end
      local proxies = s:proxy_batch({ "a", "b", "c" })
      assert.equal("abc", ps.extract(proxies[1]) .. ps.extract(proxies[2]) .. ps.extract(proxies[3]))
    end)

    it("a proxy resolves in another process from the config it carries", function()
      local s = open()
      local p = s:proxy({ msg = "from afar", n = 42 })
      local blob = ps.serialize(p)
      local file = os.tmpname()
      local f = assert(io.open(file, "wb"))
      f:write(blob)
      f:close()
      finally(function() os.remove(file) end)
      local url = require("proxystore.url").format(s:config())
      assert.matches("^redis%+cluster://", url)
      local out = run_lua(([[
        local ps = require "proxystore"
        local f = assert(io.open(%q, "rb"))
        local p = ps.deserialize(f:read("a"))
        f:close()
        io.write(p.msg, " ", p.n)
        local s = ps.init_store(%q, { name = "by-url" })
        io.write(" ", s:get(%q).msg)
      ]]):format(file, url, ps.key(p)))
      assert.equal("from afar 42 from afar", out)
    end)

    it("config() recreates the store and hands out a copy of its nodes", function()
      local s = open { prefix = "cfg:", timeout = 40 }
      local cfg = s:config()
      assert.same(c.seeds, cfg.cluster)
      cfg.cluster[1] = "changed:1"
      assert.same(c.seeds, s:config().cluster)
      cfg = s:config()
      cfg.name = cfg.name .. "-again"
      local again = ps.init_store(cfg.kind, cfg)
      stores[#stores + 1] = again
      assert.equal("same", again:get(s:put("same")))
      -- the seed's one-call API reuses a store with the same nodes
      local d = ps.init_redis_backend { name = "seed-cluster", cluster = c.seeds }
      stores[#stores + 1] = d
      assert.equal(d, ps.init_redis_backend { name = "seed-cluster", cluster = c.seeds })
      assert.equal(7, ps.extract(ps.to_proxy(7)))
    end)

    it("a pool's workers pass large arguments and results through the cluster", function()
      local s = open()
      local pool = ps.pool { workers = 2, store = s, proxy_threshold = 100 }
      finally(function() pool:close() end)
      local list = {}
      for i = 1, 6 do list[i] = ("w"):rep(1000 + i) end
      local out = pool:map(function(v) return v:upper() end, list)
      for i = 1, 6 do assert.equal(list[i]:upper(), out[i]) end
    end)

    it("strict proxies, resolve_async and the cache work as on one server", function()
      local s = open { cache_size = 16 }
      local other = open()
      local k = s:put("old")
      local strict = s:proxy_from_key(k, { strict = true })
      assert.equal("old", s:get(k))
      other:put("new", { key = k })
      assert.equal("new", ps.extract(strict))
      local p = s:proxy({ async = true })
      ps.resolve_async(p)
      assert.is_true(p.async)
      local once = s:proxy("single use", { evict = true })
      local key = ps.key(once)
      assert.equal("single use", ps.extract(once))
      assert.is_false(s:exists(key))
      local m = s:metrics()
      assert.is_true(m.cache.hits + m.cache.misses > 0)
    end)
  end)

  describe("futures, leases and owned proxies", function()
    it("sets a future in one process and wakes a waiter in another, on its slot's node", function()
      local s = open { prefix = "fut:" }
      local f = s:future()
      local node = node_of(f.key)
      local base = blocked(node)
      local w = child.spawn(([[
        local ps = require "proxystore"
        local f = ps.deserialize(%q)
        print(f:proxy().greeting)
        print(f:result(0).greeting)
      ]]):format(ps.serialize(f)))
      finally(function() stop(w) end)
      child.until_true(function() return blocked(node) > base end, 60, "the child to wait")
      f:set({ greeting = "hello" })
      local out, status = w:finish()
      assert.equal(0, status, out)
      assert.equal("hello\nhello\n", out)
      -- the value and its wake-up list: two keys of the key's slot, on the
      -- node serving it
      local tagged = "fut:{" .. f.key .. "}"
      assert.same({ tagged, tagged .. ":wake" }, keys_on(node, tagged .. "*"))
      assert.same({ c:slot(tagged), c:slot(tagged) }, c:slots({ tagged, tagged .. ":wake" }))
      assert.equal("already_set", error_of(f.set, f, "again").kind)
      -- evicted, it is unset again: both keys go, and a copy sets it anew
      s:evict(f.key)
      assert.is_false(f:done())
      assert.same({}, keys_on(node, tagged .. "*"))
      ps.deserialize(ps.serialize(f)):set("again")
      assert.equal("again", f:result(0))
    end)

    it("wakes waiters of futures on every master, chunked values included", function()
      local s = open()
      local topo = c:topology()
      local masters = c:masters(topo)
      -- keys are random: futures until there is one on every master
      local list, seen = {}, {}
      for _ = 1, 200 do
        local f = s:future()
        local n = node_of(f.key, topo)
        if not seen[n] then
          seen[n] = true
          list[#list + 1] = { f = f, node = n, base = blocked(n) }
        end
        if #list == #masters then break end
      end
      assert.equal(#masters, #list)
      local blobs = {}
      for i, e in ipairs(list) do blobs[i] = ("%q"):format(ps.serialize(e.f)) end
      -- one process waits for each in turn; each is set, once it waits, by
      -- another process that writes with 1000-byte chunks
      local w = child.spawn(([[
        local ps = require "proxystore"
        for _, blob in ipairs { %s } do
          local v = ps.deserialize(blob):proxy()
          print(#v, v:sub(1, 3))
        end
      ]]):format(table.concat(blobs, ", ")))
      finally(function() stop(w) end)
      for i, e in ipairs(list) do
        child.until_true(function() return blocked(e.node) > e.base end, 60,
                         "the child to wait on master " .. e.node)
        local out, status = child.run(([[
          local ps = require "proxystore"
          ps.deserialize(%s):set(("%d"):rep(3000 + %d))
        ]]):format(blobs[i], i, i), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
        assert.equal(0, status, out)
        assert.equal(("%d\t%s"):format(3000 + i, tostring(i):rep(3)), w:line())
      end
      local out, status = w:finish()
      assert.equal(0, status, out)
      -- each future's value, chunks and wake-up list sit in its own slot
      for _, e in ipairs(list) do
        local keys = keys_on(e.node, "{" .. e.f.key .. "}*")
        assert.is_true(#keys >= 2 + 4, table.concat(keys, "\n"))
        local slot = c:slot("{" .. e.f.key .. "}")
        for _, sl in ipairs(c:slots(keys)) do assert.equal(slot, sl) end
      end
    end)

    it("leases every key of an object on its node, chunks and wake-up list included", function()
      local s = open { prefix = "lease:" }
      local go = os.tmpname()
      os.remove(go)
      local w
      -- small chunks need a store opened with them: a child process, which
      -- extends the lease once this process has looked (go appears)
      finally(function()
        stop(w)
        os.remove(go)
      end)
      w = child.spawn(([[
        local ps = require "proxystore"
        local s = ps.init_store("redis", { cluster = %s, prefix = "lease:" })
        local lt = ps.lifetime { lease = 30 }
        local f = s:future { lifetime = lt }
        f:set(("x"):rep(5000))
        print(f.key)
        print(s:put(("y"):rep(3500), { lifetime = lt }))
        while true do
          local h = io.open(%q)
          if h then h:close() break end
          os.execute("sleep 0.02")
        end
        lt:extend(100)
        print("extended")
      ]]):format(lua_list(c.seeds), go), "PROXYSTORE_REDIS_CHUNK_SIZE=1000")
      local fkey, pkey = w:line(), w:line()
      assert.is_string(pkey)
      local function pttls(k)
        local node = node_of(k)
        local keys = keys_on(node, "lease:{" .. k .. "}*")
        local cmds = {}
        for i, name in ipairs(keys) do cmds[i] = { "PTTL", name } end
        local out = {}
        for i, line in ipairs(c:pipe(node, cmds)) do out[i] = tonumber(line) end
        return out
      end
      -- the future: value, wake-up list and 6 chunks; the put: value and 4
      local before = { pttls(fkey), pttls(pkey) }
      assert.equal(8, #before[1])
      assert.equal(5, #before[2])
      for _, list in ipairs(before) do
        for _, t in ipairs(list) do assert.is_true(t > 0 and t <= 30000, tostring(t)) end
      end
      assert(io.open(go, "w")):close()
      assert.equal("extended", w:line())
      local out, status = w:finish()
      assert.equal(0, status, out)
      for _, k in ipairs { fkey, pkey } do
        local list = pttls(k)
        assert.equal(k == fkey and 8 or 5, #list)
        for _, t in ipairs(list) do assert.is_true(t > 30000 and t <= 130000, tostring(t)) end
      end
      -- a short lease ends by itself: the server drops both keys (its
      -- count of expired keys says they were there; nothing here races it)
      local function expired(i)
        return tonumber(c:cli(i, "INFO", "stats"):match("expired_keys:(%d+)"))
      end
      -- the node and its count first: the redis-cli calls they take may
      -- outlast a short lease on a loaded machine (the set then found its
      -- lifetime ended); the lease starts right before the set
      local key = core.random_key()
      local node = node_of(key)
      local before = expired(node)
      local short = ps.lifetime { lease = 1 }
      local g = s:future { key = key, lifetime = short }
      g:set("brief")
      child.until_true(function()
        return #keys_on(node, "lease:{" .. g.key .. "}*") == 0 and expired(node) >= before + 2
      end, 30, "the lease to end")
      assert.is_false(g:done())
    end)

    it("evicts an owned proxy's object when collected and at close; clones go to their own slot", function()
      local s = open()
      local p = s:proxy({ big = ("b"):rep(2000) }, { owned = true })
      local k = ps.key(p)
      local node = node_of(k)
      assert.same({ "{" .. k .. "}" }, keys_on(node, "{" .. k .. "}*"))
      -- clones until one is on another master than the original
      local clones, other = {}, nil
      for _ = 1, 100 do
        local q = ps.clone(p)
        clones[#clones + 1] = q
        if node_of(ps.key(q)) ~= node then other = q break end
      end
      assert.is_truthy(other, "no clone on another master")
      local qk = ps.key(other)
      local qnode = node_of(qk)
      assert.same({ "{" .. qk .. "}" }, keys_on(qnode, "{" .. qk .. "}*"))
      assert.equal(("b"):rep(2000), other.big)
      -- the original goes when collected; the clones, owned, stay
      p = nil
      collectgarbage()
      collectgarbage()
      assert.same({}, keys_on(node, "{" .. k .. "}*"))
      assert.is_true(s:exists(qk))
      -- the clones go when the store closes
      s:close()
      assert.same({}, keys_on(qnode, "{" .. qk .. "}*"))
      assert.equal(("b"):rep(2000), other.big)   -- resolved before: kept
      clones, other = nil, nil
      collectgarbage()
    end)
  end)

  describe("slots that move", function()
    it("follows ASK while a slot migrates and MOVED once it has", function()
      local s = open()
      local slot = c:slot("mig")        -- the keys below hash as "mig"
      local topo = c:topology()
      local from = c:owner(slot, topo)
      local to
      for _, m in ipairs(c:masters(topo)) do if m ~= from then to = m break end end
      s:put("one", { key = "mig}1" })
      s:put("two", { key = "mig}2" })
      local from_id, to_id = topo[from].id, topo[to].id
      assert.matches("OK", c:cli(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", from_id))
      assert.matches("OK", c:cli(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", to_id))
      assert.matches("OK", c:cli(from, "MIGRATE", "127.0.0.1", c.nodes[to].port, "", "0",
                                 "5000", "KEYS", "{mig}1}"))
      -- mig}1 is on the importing node (the old one answers ASK), mig}2 not yet
      assert.matches("ASK", c:cli(from, "GET", "{mig}1}"))
      assert.equal("one", s:get("mig}1"))
      assert.equal("two", s:get("mig}2"))
      local both = s:get_batch({ "mig}2", "mig}1" })
      assert.same({ "two", "one" }, { both[1], both[2] })
      -- a new key goes where the slot is going
      s:put("three", { key = "mig}3" })
      assert.matches("ASK", c:cli(from, "EXISTS", "{mig}3}"))
      assert.equal("three", s:get("mig}3"))
      s:evict("mig}1")
      assert.is_false(s:exists("mig}1"))
      -- the rest moves and the slot is handed over: the store's map is
      -- now wrong, and the old owner answers MOVED
      assert.matches("OK", c:cli(from, "MIGRATE", "127.0.0.1", c.nodes[to].port, "", "0",
                                 "5000", "KEYS", "{mig}2}"))
      for _, answer in ipairs(hand_over(slot, from, to, topo)) do
        assert.matches("OK", answer)
      end
      assert.matches("MOVED", c:cli(from, "GET", "{mig}2}"))
      assert.equal("two", s:get("mig}2"))
      assert.equal("three", s:get("mig}3"))
      assert.same({ "two", "three" }, { table.unpack(s:get_batch({ "mig}2", "mig}3" }), 1, 2) })
      assert.is_true(c:wait_ok())
    end)

    it("waits while an object's keys are on both nodes of a moving slot", function()
      local env = "PROXYSTORE_REDIS_CHUNK_SIZE=1000"
      local function child(op, timeout)
        return run_lua(([[
          local ps = require "proxystore"
          local s = ps.init_store("redis", { cluster = %s, cache_size = 0, timeout = %s })
          local ok, err = pcall(function() %s end)
          io.write(ok and "ok" or (err.kind .. "|" .. tostring(err)))
        ]]):format(lua_list(c.seeds), timeout, op), env)
      end
      local value = ("m"):rep(3000)
      assert.equal("ok", child(("s:put(%q, { key = 'mix}1' })"):format(value), 30))
      local slot = c:slot("mix")
      local topo = c:topology()
      local from = c:owner(slot, topo)
      local to
      for _, m in ipairs(c:masters(topo)) do if m ~= from then to = m break end end
      local chunks = {}
      for k in c:cli(from, "KEYS", "{mix}1}:chunk:*"):gmatch("[^\n]+") do chunks[#chunks + 1] = k end
      assert.is_true(#chunks > 1)
      -- the move ends, whatever happens below: everything there, the slot
      -- handed over (a slot left half moved would fail every later spec)
      local function finish() hand_over(slot, from, to, topo) end
      finally(function() pcall(finish) end)
      c:cli(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", topo[from].id)
      c:cli(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", topo[to].id)
      assert.matches("OK", c:cli(from, "MIGRATE", "127.0.0.1", c.nodes[to].port, "", "0",
                                 "5000", "KEYS", chunks[1]))
      -- the header and some chunks here, one chunk there: no single node
      -- can serve the object, so the read waits, and ends with its timeout
      -- (kind connection, or timeout when the deadline fell in a connect);
      -- 3 s leave room for the first round trips on a loaded machine
      local out = child(("assert(s:get('mix}1') == %q)"):format(value), 3)
      assert.matches("^%a+|proxystore: [^\n]*ASK [^\n]*", out)
      assert.truthy(out:match("^connection|") or out:match("^timeout|"), out)
      finish()
      assert.equal("ok", child(("assert(s:get('mix}1') == %q); s:evict('mix}1')"):format(value), 30))
      assert.equal("", c:cli(to, "KEYS", "{mix}1}*"):gsub("%s+", ""))
      assert.is_true(c:wait_ok())
    end)

    it("moves a future's waiter with its slot; evict and extend of other objects do not wait", function()
      local s = open()
      local quick = open { timeout = 1 }       -- a refusal shows as an error
      local slot = c:slot("fmv")               -- the keys below hash as "fmv"
      local topo = c:topology()
      local from = c:owner(slot, topo)
      local to
      for _, m in ipairs(c:masters(topo)) do if m ~= from then to = m break end end
      local lt = ps.lifetime { lease = 60 }
      local w, moving = nil, false
      -- the move ends, whatever happens below: every key there, the slot
      -- handed over (a slot left half moved would fail every later spec)
      local function finish() hand_over(slot, from, to, topo) end
      finally(function()
        stop(w)
        if moving then pcall(finish) end
        pcall(lt.close, lt)
      end)
      s:put("plain", { key = "fmv}plain" })
      s:put("leased", { key = "fmv}leased", lifetime = lt })
      local f = s:future { key = "fmv}fut" }
      local base = blocked(from)
      w = child.spawn(([[
        local ps = require "proxystore"
        print(ps.deserialize(%q):proxy().v)
      ]]):format(ps.serialize(f)))
      child.until_true(function() return blocked(from) > base end, 60, "the child to wait")
      moving = true
      assert.matches("OK", c:cli(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", topo[from].id))
      assert.matches("OK", c:cli(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", topo[to].id))
      -- objects still on the old node, which have no wake-up list (on
      -- neither node, so a command naming it with them would be refused
      -- until the move ends): evict and extend go through, well within
      -- the store's timeout (a refusal would be waited out until it ends)
      lt:extend(30)
      assert.is_true(tonumber(c:cli(from, "PTTL", "{fmv}leased}"):match("%-?%d+")) > 60000)
      s:evict("fmv}plain")
      assert.same({}, keys_on(from, "{fmv}plain}*"))
      -- a set waits for the move to end (Redis refuses the transaction of
      -- a key on neither node meanwhile): past its timeout it fails, and
      -- writes nothing on either node
      local qf = quick:future { key = "fmv}fut" }
      local err = error_of(qf.set, qf, "too early")
      assert.truthy(err.kind == "connection" or err.kind == "timeout", tostring(err))
      assert.same({}, keys_on(from, "{fmv}fut}*"))
      assert.same({}, keys_on(to, "{fmv}fut}*"))
      -- the move ends; the waiter, blocked on the old node, is sent on
      -- (MOVED) and wakes at the new one, where the set lands
      finish()
      moving = false
      f:set({ v = "moved" })
      local out, status = w:finish()
      assert.equal(0, status, out)
      assert.equal("moved\n", out)
      assert.same({ "{fmv}fut}", "{fmv}fut}:wake" }, keys_on(to, "{fmv}fut}*"))
      assert.equal("leased", s:get("fmv}leased"))
      lt:close()
      assert.is_false(s:exists("fmv}leased"))
      assert.is_true(c:wait_ok())
    end)

    it("reads stay right through a resharding (redis-cli --cluster reshard)", function()
      local s = open()
      local list = {}
      for i = 1, 1000 do list[i] = "value " .. i end
      local keys = s:put_batch(list)
      -- the slot moves of the specs before may still be spreading by
      -- gossip: the reshard refuses a cluster whose nodes disagree
      assert(c:wait_agreed())
      local topo = c:topology()
      local masters = c:masters(topo)
      local from, to = masters[1], masters[2]
      local log = os.tmpname()
      local p = io.popen(rc.CLEAN_ENV .. "redis-cli --cluster reshard " .. c.seeds[from] ..
        " --cluster-from " .. topo[from].id .. " --cluster-to " .. topo[to].id ..
        " --cluster-slots 600 --cluster-yes --cluster-pipeline 4 >" .. shell.quote(log) ..
        " 2>&1 & echo $!")
      local pid = tonumber(p:read("a"))
      p:close()
      finally(function()
        os.execute("kill " .. pid .. " 2>/dev/null")
        os.remove(log)
      end)
      local rounds, t0 = 0, now()
      repeat
        local got = s:get_batch(keys)
        for i = 1, #keys do assert(got[i] == list[i], "wrong value for key " .. i) end
        for i = rounds % 10 + 1, #keys, 10 do assert.equal(list[i], s:get(keys[i])) end
        rounds = rounds + 1
        local running = os.execute("kill -0 " .. pid .. " 2>/dev/null")
        assert(now() - t0 < 300, "the resharding did not end")
      until not running
      local f = io.open(log)
      local out = f and f:read("a") or ""
      if f then f:close() end
      assert.is_nil(out:find("ERR", 1, true), out)
      assert.truthy(out:find("Moving slot", 1, true), out)
      assert.is_true(c:wait_ok())
      -- every node knows the new owners (the node asked below may learn
      -- them by gossip; wait_ok compares only which masters hold slots)
      assert(c:wait_agreed())
      -- the moved slots are served by the new owner, and read from there
      local before = nodes_of(keys, topo)
      local after = nodes_of(keys)
      local moved = 0
      for i, k in ipairs(keys) do
        if before[i] == from and after[i] == to then moved = moved + 1 end
        if i % 7 == 0 then assert.equal(list[i], s:get(k)) end
      end
      assert.is_true(moved > 0)
    end)
  end)

  describe("failover", function()
    it("after kill -9 of a master its slots fail clearly, then come back through the same store", function()
      assert.is_true(c:wait_replicas(), "replicas did not sync")
      local s = open {}                       -- a hang guard, not a wait
      local quick = eventually(open, { timeout = 0.3 })
      local topo = c:topology()
      local victim = c:masters(topo)[3]
      local mine, others = {}, {}
      local keys = s:put_batch((function()
        local l = {}
        for i = 1, 60 do l[i] = "v" .. i end
        return l
      end)())
      for i, n in ipairs(nodes_of(keys, topo)) do
        if n == victim then mine[#mine + 1] = { keys[i], "v" .. i }
        else others[#others + 1] = { keys[i], "v" .. i } end
      end
      assert.is_true(#mine > 0 and #others > 0)
      local killed = now()
      c:kill(victim)
      -- the slots' master is gone; no replica can take over within the
      -- node timeout (1 s), so a short call fails, with a clear error
      local ok, err = pcall(quick.get, quick, mine[1][1])
      if now() - killed < 1 then
        assert.is_false(ok)
        assert.truthy(err.kind == "connection" or err.kind == "timeout", tostring(err))
        assert.matches("^proxystore: [^\n]+$", tostring(err))
      end
      -- the other slots keep working while the cluster fails over (their
      -- CLUSTERDOWN is waited out); the victim's come back by themselves
      local back = false
      repeat
        for _, o in ipairs(others) do assert.equal(o[2], s:get(o[1])) end
        back = pcall(quick.get, quick, mine[1][1])
        assert(now() - killed < 60, "no replica took over")
      until back
      for _, o in ipairs(mine) do assert.equal(o[2], s:get(o[1])) end
      for _, o in ipairs(mine) do assert.equal(o[2], eventually(quick.get, quick, o[1])) end
      local all = {}
      for _, o in ipairs(mine) do all[#all + 1] = o[1] end
      for _, o in ipairs(others) do all[#all + 1] = o[1] end
      local got = s:get_batch(all)
      for i, o in ipairs(mine) do assert.equal(o[2], got[i]) end
      assert.equal("after", s:get(s:put("after", { key = mine[1][1] })))
      -- a new store whose first seed is the dead master
      local fresh = open { cluster = { c.seeds[victim], c.seeds[c:masters()[1]] } }
      assert.equal("after", fresh:get(mine[1][1]))
    end)
  end)
end)
