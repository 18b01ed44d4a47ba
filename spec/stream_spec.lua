-- ps.stream: producers and consumers of proxies, on the "local:" broker and
-- on a real redis-server, with the same semantics on both. Faults (a
-- restarted server, killed producers and consumers) are in
-- stream_faults_spec.lua.

local ps = require "proxystore"
local core = require "proxystore.core"
local redis = require "helpers.redis"

-- How long a consumer waits for an item that is there or on its way: a
-- hang guard, never waited out unless something is wrong.
local WAIT = 60

local function new_topic()
  return "topic-" .. core.random_key():sub(1, 12)
end

local function drain(c, timeout)
  local items, metas = {}, {}
  for v, m in c:iter(timeout) do
    items[#items + 1] = ps.extract(v)
    metas[#metas + 1] = m
  end
  return items, metas
end

local function raises(kind, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error of kind " .. kind)
  assert.is_true(core.is_error(err), "not a proxystore error: " .. tostring(err))
  assert.equal(kind, err.kind, tostring(err))
  assert.matches("^proxystore: ", tostring(err))
  return err
end

describe("streams", function()
  local srv

  setup(function()
    srv = redis.start()
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  for _, kind in ipairs { "local", "redis" } do
    describe("on a " .. kind .. " broker", function()
      local broker, g
      local open = {}

      -- (on Redis, a generous timeout: on a loaded machine a call may
      -- take seconds)
      local function producer(opts)
        opts = opts or {}
        opts.broker = broker
        if kind == "redis" then opts.timeout = opts.timeout or 30 end
        local p = ps.stream.producer(opts)
        open[#open + 1] = p
        return p
      end

      local function consumer(topic, opts)
        opts = opts or {}
        opts.broker = broker
        if kind == "redis" then opts.timeout = opts.timeout or 30 end
        local c = ps.stream.consumer(topic, opts)
        open[#open + 1] = c
        return c
      end

      -- Items pending (taken, not acknowledged) in the group of c, as a
      -- consumer of the group that reads nothing sees them.
      local function pending(c)
        local w = consumer(c.topic, { group = c.group, name = "watcher" })
        return w.broker:pending_count(c.topic, c.group)
      end

      before_each(function()
        if kind == "local" then
          broker = "local:"
        else
          if not srv.pid then srv:restart() end
          broker = ("redis://%s:%d"):format(srv.host, srv.port)
          g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
          g:call("FLUSHALL")
        end
      end)

      after_each(function()
        for _, x in ipairs(open) do pcall(x.close, x) end
        open = {}
        if g then g:close() end
        g = nil
      end)

      it("gives every consumer every item, in order, with its metadata", function()
        local t = new_topic()
        local a, b = consumer(t), consumer(t)
        local p = producer()
        for i = 1, 10 do
          assert.is_true(p:send(t, "item " .. i, { metadata = { n = i, tag = "x" } }))
        end
        p:close_topic(t)
        for _, c in ipairs { a, b } do
          local items, metas = drain(c, WAIT)
          assert.equal(10, #items)
          for i = 1, 10 do
            assert.equal("item " .. i, items[i])
            assert.same({ n = i, tag = "x" }, metas[i])
          end
        end
        -- an item sent without metadata has an empty table
        local t2 = new_topic()
        local c = consumer(t2)
        p:send(t2, 1)
        p:flush()
        local v, m = c:next(WAIT)
        assert.equal(1, v)
        assert.same({}, m)
      end)

      it("starts a consumer at new items by default, or at the start", function()
        local t = new_topic()
        local p = producer()
        p:send(t, "old")
        p:flush()
        local new, start = consumer(t), consumer(t, { from = "start" })
        p:send(t, "new")
        p:close_topic(t)
        assert.same({ "new" }, (drain(new, WAIT)))
        assert.same({ "old", "new" }, (drain(start, WAIT)))
      end)

      it("splits the items of a group, each to exactly one consumer", function()
        local t = new_topic()
        local p = producer()
        local a = consumer(t, { group = "g", name = "a" })
        local b = consumer(t, { group = "g", name = "b" })
        for i = 1, 6 do p:send(t, i) end
        p:flush()
        local seen = {}
        for _ = 1, 3 do
          for _, c in ipairs { a, b } do
            local v = c:next(WAIT)
            assert.is_nil(seen[v])
            seen[v] = c.name
          end
        end
        for i = 1, 6 do assert.is_not_nil(seen[i]) end
        -- a second group gets every item again
        local other = consumer(t, { group = "g2", from = "start" })
        local got = {}
        for _ = 1, 6 do got[#got + 1] = other:next(WAIT) end
        assert.same({ 1, 2, 3, 4, 5, 6 }, got)
      end)

      it("acknowledges an item when the consumer asks for the next one", function()
        local t = new_topic()
        local p = producer()
        local c = consumer(t, { group = "g", name = "a" })
        for i = 1, 3 do p:send(t, i) end
        p:flush()
        assert.equal(1, c:next(WAIT))
        assert.equal(1, pending(c))
        assert.equal(2, c:next(WAIT))
        assert.equal(1, pending(c))   -- 1 acknowledged, 2 taken
        assert.equal(3, c:next(WAIT))
        c:close()                     -- done with 3
        assert.equal(0, pending(c))
      end)

      it("gives a consumer restarting under its name what it had not acknowledged, first", function()
        local t = new_topic()
        local p = producer()
        local c = consumer(t, { group = "g", name = "w", batch = 2 })
        for i = 1, 5 do p:send(t, i) end
        p:flush()
        assert.equal(1, c:next(WAIT))
        assert.equal(2, c:next(WAIT))   -- 1 acknowledged; 2 taken, and read with it: none
        -- the consumer dies (no close: nothing more acknowledged) and comes back
        local again = consumer(t, { group = "g", name = "w" })
        assert.equal(2, again:next(WAIT))
        assert.equal(3, again:next(WAIT))
        -- another name never sees 2
        local other = consumer(t, { group = "g", name = "o" })
        assert.equal(4, other:next(WAIT))
      end)

      it("lets a consumer keep the item it works on with touch, until another takes it", function()
        local t = new_topic()
        local p = producer()
        local a = consumer(t, { group = "g", name = "a" })
        p:send(t, 1)
        p:flush()
        assert.is_false(a:touch())   -- no item yet
        assert.equal(1, a:next(WAIT))
        assert.is_true(a:touch())
        -- a consumer for which any item pending 1 ms is idle enough takes it
        redis.sleep(0.01)
        local b = consumer(t, { group = "g", name = "b", visibility = 0.001 })
        assert.equal(1, b:next(WAIT))
        assert.is_false(a:touch())
        assert.is_true(b:touch())
        assert.is_false(consumer(t):touch())   -- no group
      end)

      it("ends every consumer's iteration at close_topic, late ones too", function()
        local t = new_topic()
        local p = producer()
        local early = consumer(t)
        local a = consumer(t, { group = "g", name = "a" })
        local b = consumer(t, { group = "g", name = "b" })
        p:send(t, "x")
        p:close_topic(t)
        assert.same({ "x" }, (drain(early, WAIT)))
        assert.is_nil(early:next(WAIT))   -- and stays ended
        -- in a group: one takes the item; the other ends only once it is
        -- acknowledged (taken over if its consumer dies instead)
        assert.equal("x", a:next(WAIT))
        if kind == "redis" then
          raises("timeout", b.next, b, 0.2)
        else
          raises("timeout", b.next, b)
        end
        assert.is_nil(a:next(WAIT))
        assert.is_nil(b:next(WAIT))
        -- consumers that join after the end
        assert.is_nil(consumer(t):next(WAIT))
        assert.same({ "x" }, (drain(consumer(t, { from = "start" }), WAIT)))
        assert.is_nil(consumer(t, { group = "g", name = "late" }):next(WAIT))
        assert.is_nil(consumer(t, { group = "new" }):next(WAIT))
        assert.same({ "x" }, (drain(consumer(t, { group = "g3", from = "start" }), WAIT)))
      end)

      it("sends small items inline and large ones as proxies to the store", function()
        local t = new_topic()
        local store = kind == "local" and ps.init_store("local", { name = "s-" .. t })
          or ps.init_store("redis", { name = "s-" .. t, port = srv.port })
        local p = producer { store = store, inline_below = 100 }
        local c = consumer(t)
        local small_t = { a = 1, b = "two" }
        local big_t = { data = ("z"):rep(200) }
        local other = ps.init_store("local", { name = "o-" .. t })
        local ref = other:proxy({ "kept" })
        p:send(t, ("s"):rep(99))
        p:send(t, ("b"):rep(100))
        p:send(t, small_t)
        p:send(t, big_t)
        p:send(t, 3.5)
        p:send(t, false)
        p:send(t, ref)
        p:close_topic(t)
        local v = c:next(WAIT)
        assert.is_false(ps.is_proxy(v))
        assert.equal(("s"):rep(99), v)
        v = c:next(WAIT)
        assert.is_true(ps.is_proxy(v))
        assert.matches("s-" .. t, ps.repr(v), 1, true)
        assert.is_false(ps.is_resolved(v))
        assert.equal(("b"):rep(100), ps.extract(v))
        v = c:next(WAIT)
        assert.is_false(ps.is_proxy(v))
        assert.same(small_t, v)
        assert.are_not.equal(small_t, v)   -- a copy, as across processes
        v = c:next(WAIT)
        assert.is_true(ps.is_proxy(v))
        assert.same(big_t, ps.extract(v))
        assert.equal(3.5, c:next(WAIT))
        assert.is_false(c:next(WAIT))
        v = c:next(WAIT)   -- a proxy sent travels as the reference it is
        assert.is_true(ps.is_proxy(v))
        assert.equal(ps.key(ref), ps.key(v))
        assert.same({ "kept" }, ps.extract(v))
        assert.is_nil(c:next(WAIT))
        assert.equal(2, store:metrics().put.count)
        assert.same({ sent = 8, filtered = 0, inline = 5, proxied = 2 }, p.stats)
        if kind == "redis" then
          -- the entries: the small string as it is, the rest encoded
          local es = g:range(t, "-", "+", 10)
          assert.same({ s = ("s"):rep(99) }, es[1].fields)
          assert.is_nil(es[2].fields.s)
          assert.is_true(#es[2].fields.v < 300)
          assert.same({ ["end"] = "1" }, es[8].fields)
        end
        store:close()
        other:close()
      end)

      it("uses a store on the broker's server by default", function()
        local t = new_topic()
        local p = producer { inline_below = 10 }
        local c = consumer(t)
        p:send(t, ("d"):rep(10))
        p:flush()
        local v = c:next(WAIT)
        assert.is_true(ps.is_proxy(v))
        assert.matches(kind == "local" and "store=local:" or ("store=redis:proxystore.stream@127.0.0.1:" .. srv.port .. "/0"),
          ps.repr(v), 1, true)
        assert.equal(("d"):rep(10), ps.extract(v))
        -- or the store a URL names, shared by the producers given that URL
        local u = kind == "local" and "local:" or ("redis://127.0.0.1:%d/1"):format(srv.port)
        local q1, q2 = producer { inline_below = 10, store = u }, producer { store = u }
        assert.equal(q1.store, q2.store)
        q1:send(t, ("u"):rep(10))
        q1:flush()
        v = c:next(WAIT)
        assert.matches("store=" .. (kind == "local" and "local" or "redis") ..
          ":proxystore.stream:" .. u, ps.repr(v), 1, true)
        assert.equal(("u"):rep(10), ps.extract(v))
      end)

      it("makes the consumer's proxy single use with evict", function()
        local t = new_topic()
        local p = producer { inline_below = 10 }
        local c = consumer(t, { group = "g" })
        p:send(t, ("e"):rep(20), { evict = true })
        p:send(t, ("k"):rep(20))
        p:flush()
        local once, kept = c:next(WAIT), c:next(WAIT)
        local store = p.store
        assert.is_true(store:exists(ps.key(once)))
        assert.equal(("e"):rep(20), ps.extract(once))
        assert.is_false(store:exists(ps.key(once)))
        assert.equal(("k"):rep(20), ps.extract(kept))
        assert.is_true(store:exists(ps.key(kept)))
      end)

      it("drops what the filter refuses, at the producer", function()
        local t = new_topic()
        local calls = {}
        local p = producer { inline_below = 10, filter = function(obj, meta)
          calls[#calls + 1] = { obj, meta.keep }
          return meta.keep
        end }
        local c = consumer(t)
        assert.is_true(p:send(t, "a", { metadata = { keep = true } }))
        assert.is_false(p:send(t, ("b"):rep(50), { metadata = { keep = false } }))
        assert.is_false(p:send(t, "c"))   -- no metadata: an empty table, nil: dropped
        p:close_topic(t)
        assert.same({ "a" }, (drain(c, WAIT)))
        assert.same({ { "a", true }, { ("b"):rep(50), false }, { "c", nil } }, calls)
        -- a dropped item never reached the store
        assert.equal(0, p.stats.proxied)
        assert.equal(2, p.stats.filtered)
      end)

      it("holds events until a batch is full, its delay has passed, or flush", function()
        local t = new_topic()
        local p = producer { batch_size = 3, batch_delay = 3600 }
        local c = consumer(t)
        p:send(t, 1)
        p:send(t, 2)
        raises("timeout", c.next, c, 0)    -- held by the producer
        p:send(t, 3)                       -- the batch is full: sent
        assert.same({ 1, 2, 3 }, { (c:next(WAIT)), (c:next(WAIT)), (c:next(WAIT)) })
        p:send(t, 4)
        raises("timeout", c.next, c, 0)
        p:flush()
        assert.equal(4, c:next(WAIT))
        -- no delay: every event goes at once
        local q = producer { batch_delay = 0 }
        q:send(t, 5)
        assert.equal(5, c:next(WAIT))
        -- events held at close go out
        p:send(t, 6)
        p:close()
        assert.equal(6, c:next(WAIT))
        -- and those of a producer collected without close, while its
        -- connection is still open
        local lost = ps.stream.producer { broker = broker, batch_delay = 3600 }
        lost:send(t, 7)
        lost = nil
        collectgarbage()
        collectgarbage()
        assert.equal(7, c:next(WAIT))
      end)

      it("trims a topic only with maxlen, keeping the newest", function()
        local t, u = new_topic(), new_topic()
        local p = producer()
        local trimmed = producer { maxlen = 5 }
        for i = 1, 20 do
          p:send(t, i)
          trimmed:send(u, i)
        end
        p:close_topic(t)
        trimmed:close_topic(u)
        assert.equal(20, #drain(consumer(t, { from = "start" }), WAIT))
        assert.same({ 17, 18, 19, 20 }, (drain(consumer(u, { from = "start" }), WAIT)))
        if kind == "redis" then
          assert.equal(21, g:length(t))
          assert.equal(5, g:length(u))
        end
      end)

      it("raises timeout when no item comes in time", function()
        local t = new_topic()
        local c = consumer(t)
        local err = raises("timeout", c.next, c, 0.1)
        assert.matches(t, tostring(err), 1, true)
        if kind == "local" then   -- nothing can arrive: at once, timeout or not
          err = raises("timeout", c.next, c)
          assert.matches("nothing else in this process", tostring(err))
        end
        local gc = consumer(t, { group = "g" })
        raises("timeout", gc.next, gc, 0)
      end)

      it("refuses bad options, nil items and closed objects with clear errors", function()
        local t = new_topic()
        local err = raises("config", function()
          local x = ps.stream.producer { broker = broker, nope = 1 }
          return x
        end)
        assert.matches("unknown option 'nope'", tostring(err))
        assert.matches("stream_spec.lua:%d+:", tostring(err))   -- the caller's line
        raises("config", ps.stream.producer, {})
        raises("config", ps.stream.producer, { broker = "file:///tmp" })
        raises("config", ps.stream.producer, { broker = "bogus://x" })
        raises("config", ps.stream.producer, { broker = broker, inline_below = -1 })
        raises("config", ps.stream.producer, { broker = broker, maxlen = 0 })
        raises("config", ps.stream.producer, { broker = broker, store = 3 })
        raises("config", ps.stream.producer, { broker = broker, store = ps.proxy(function() end) })
        raises("config", ps.stream.producer, "x")
        raises("config", ps.stream.consumer, t, { broker = broker, from = "middle" })
        raises("config", ps.stream.consumer, t, { broker = broker, name = "n" })
        raises("config", ps.stream.consumer, "", { broker = broker })
        raises("config", ps.stream.consumer, t, { broker = broker, visibility = 0 })
        local p = producer()
        err = raises("config", p.send, p, t, nil)
        assert.matches("cannot be nil", tostring(err))
        raises("config", p.send, p, "", 1)
        raises("config", p.send, p, t, 1, { metadata = "m" })
        raises("config", p.send, p, t, 1, { evict = true, other = 1 })
        raises("serialization", p.send, p, t, { f = print })
        raises("serialization", p.send, p, t, 1, { metadata = { f = print } })
        -- a large item whose metadata cannot travel is not stored either
        local puts = p.store and p.store:metrics().put.count or 0
        raises("serialization", p.send, p, t, ("L"):rep(5000), { metadata = { f = print } })
        assert.equal(puts, p.store and p.store:metrics().put.count or 0)
        assert.equal(0, p.stats.proxied)
        raises("serialization", p.send, p, t, io.stdout)
        local c = consumer(t)
        assert.has_error(function() c:next(-1) end)
        assert.has_error(function() c:next("1") end)
        assert.has_error(function() p.send(c, t, 1) end)
        p:close()
        p:close()   -- idempotent
        raises("closed", p.send, p, t, 1)
        raises("closed", p.flush, p)
        c:close()
        c:close()
        raises("closed", c.next, c)
        assert.matches("^proxystore.StreamProducer: .*closed", tostring(p))
        assert.equal(1, tostring(c):find("proxystore.StreamConsumer: topic '" .. t .. "'", 1, true))
        assert.matches("closed", tostring(c))
      end)
    end)
  end

  describe("on a redis broker only", function()
    local url, g
    local open = {}

    before_each(function()
      if not srv.pid then srv:restart() end
      url = ("redis://%s:%d"):format(srv.host, srv.port)
      g = core.redis_groups { host = srv.host, port = srv.port, timeout = 30 }
      g:call("FLUSHALL")
    end)

    after_each(function()
      for _, x in ipairs(open) do pcall(x.close, x) end
      open = {}
      g:close()
    end)

    local function track(x)
      open[#open + 1] = x
      return x
    end

    local function cmdstat(name)
      local info = g:call("INFO", "commandstats")
      return tonumber(info:match("cmdstat_" .. name .. ":calls=(%d+)")) or 0
    end

    it("routes on metadata alone: the dispatcher makes zero GETs", function()
      local store = ps.init_store("redis", { name = "routing", port = srv.port })
      local p = track(ps.stream.producer { broker = url, store = store })
      local dispatcher = track(ps.stream.consumer("in", { broker = url, group = "d" }))
      local fwd = track(ps.stream.producer { broker = url })
      local workers = {
        even = track(ps.stream.consumer("even", { broker = url, group = "w" })),
        odd = track(ps.stream.consumer("odd", { broker = url, group = "w" })),
      }
      local N = 20
      for i = 1, N do
        p:send("in", (i .. ":"):rep(4000),
          { metadata = { route = i % 2 == 0 and "even" or "odd", i = i } })
      end
      p:close_topic("in")
      local before = store:metrics()
      g:call("CONFIG", "RESETSTAT")
      for obj, meta in dispatcher:iter(WAIT) do
        assert.is_true(ps.is_proxy(obj))
        fwd:send(meta.route, obj, { metadata = meta })
      end
      fwd:close_topic("even")
      fwd:close_topic("odd")
      -- the dispatcher read no object: no GET in this process, none at the server
      local after = store:metrics()
      assert.equal(before.get.count, after.get.count)
      assert.equal(0, after.get.count)
      assert.equal(0, cmdstat("get"))
      assert.equal(0, cmdstat("getrange"))
      -- the workers fetch what they use, one read each (a GETRANGE of the
      -- first piece: the whole of these objects)
      for route, w in pairs(workers) do
        for obj, meta in w:iter(WAIT) do
          assert.equal(route, meta.i % 2 == 0 and "even" or "odd")
          assert.equal((meta.i .. ":"):rep(4000), ps.extract(obj))
        end
      end
      assert.equal(N, store:metrics().get.count)
      assert.equal(N, cmdstat("getrange"))
      store:close()
    end)

    it("resolves an untrusted topic's proxies only through this process's stores", function()
      -- an event anyone who can write the topic could add: a proxy whose
      -- store this process never opened, with its config (address,
      -- credentials) in the reference
      local carried = ps.init_store("redis", { name = "carried", port = srv.port })
      local blob = ps.serialize(carried:proxy("written elsewhere"))
      carried:close()
      g:call("XADD", "hostile", "*", "v", blob, "m", ps.serialize({ from = "outside" }))
      local c = track(ps.stream.consumer("hostile",
        { broker = url, from = "start", untrusted = true }))
      local obj, meta = c:next(WAIT)
      assert.same({ from = "outside" }, meta)
      local err = raises("resolve", ps.extract, obj)
      assert.matches("carried", tostring(err))
      assert.is_nil(ps.get_store("carried"))     -- nothing was opened for it
      -- trusted (the default), the same event opens a store from the config
      local t = track(ps.stream.consumer("hostile", { broker = url, from = "start" }))
      assert.equal("written elsewhere", ps.extract((t:next(WAIT))))
      local opened = ps.get_store("carried")
      if opened then opened:close() end
      -- once registered here, the untrusted proxy resolves through it
      local mine = ps.init_store("redis", { name = "carried", port = srv.port })
      local c2 = track(ps.stream.consumer("hostile",
        { broker = url, from = "start", untrusted = true }))
      assert.equal("written elsewhere", ps.extract((c2:next(WAIT))))
      mine:close()
      raises("config", ps.stream.consumer, "hostile", { broker = url, untrusted = "yes" })
    end)

    it("names the entry that is no event, and goes on after it", function()
      local p = track(ps.stream.producer { broker = url })
      local c = track(ps.stream.consumer("t", { broker = url }))
      p:send("t", 1)
      p:flush()
      g:add("t", { { other = "x" }, { v = "\1\2garbage" } })
      p:send("t", 2)
      p:flush()
      assert.equal(1, c:next(WAIT))
      local err = raises("serialization", c.next, c, WAIT)
      assert.matches("entry %d+%-%d+ of topic 't'", tostring(err))
      assert.matches("not a proxystore stream event", tostring(err))
      raises("serialization", c.next, c, WAIT)
      assert.equal(2, c:next(WAIT))
    end)

    it("keeps a topic under the URL's prefix, as a Redis stream", function()
      local p = track(ps.stream.producer { broker = url .. "?prefix=app:" })
      local c = track(ps.stream.consumer("t", { broker = url .. "?prefix=app:" }))
      p:send("t", "v")
      p:flush()
      assert.equal("v", c:next(WAIT))
      assert.equal("stream", g:call("TYPE", "app:t"))
      assert.equal(0, g:call("EXISTS", "t"))
    end)

    it("runs examples/stream_pipeline.lua: four processes, a dispatcher with zero GETs", function()
      local root = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
      local build = os.getenv("PROXYSTORE_BUILD") or (root .. "/build")
      local out = os.tmpname()
      local q = require("helpers.shell").quote
      local ok = os.execute(("%s %s %s 20 >%s 2>&1"):format(q(build .. "/bin/proxystore"),
        q(root .. "/examples/stream_pipeline.lua"), q(url), q(out)))
      local f = assert(io.open(out))
      local text = f:read("a")
      f:close()
      os.remove(out)
      assert.is_true(ok, text)
      assert.matches("producer: sent 20 items %(15 as proxies, 5 inline%)", text)
      assert.matches("dispatcher: routed 20 items on metadata alone %(15 proxies, " ..
        "none resolved%); its store made 0 GETs", text)
      assert.matches("worker photo: 15 items, 3.8 MiB, 15 GETs", text, 1, true)
      assert.matches("worker text: 5 items, 0.0 MiB, 0 GETs", text, 1, true)
    end)

    it("waits for an item a held read brings, without polling", function()
      local p = track(ps.stream.producer { broker = url })
      local c = track(ps.stream.consumer("t", { broker = url }))
      local gc = track(ps.stream.consumer("t", { broker = url, group = "g" }))
      os.execute(("%s(sleep 0.3; redis-cli -p %d XADD t '*' s late >/dev/null) &")
        :format(require("helpers.shell").CLEAN, srv.port))
      assert.equal("late", c:next(WAIT))
      assert.equal("late", gc:next(WAIT))
      assert.is_not_nil(p)
    end)
  end)
end)
