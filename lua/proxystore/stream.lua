-- proxystore.stream: streams of proxies. A producer sends objects on a
-- topic: small ones travel inside the event, large ones go to a store and
-- the event carries a proxy (a reference of a few hundred bytes). Consumers
-- read the events in order and fetch only what they use; metadata travels
-- with the event, readable without resolving anything.
--
--   local p = ps.stream.producer { broker = "redis://host:6379" }
--   p:send("topic", obj, { metadata = { kind = "image" }, evict = true })
--   p:flush()  p:close_topic("topic")  p:close()
--
--   local c = ps.stream.consumer("topic", { broker = "redis://host:6379",
--                                           group = "workers", name = "w1" })
--   for obj, meta in c:iter() do ... end   -- or c:next([timeout])
--   c:close()
--
-- Brokers: proxystore.stream_redis (a topic is a Redis stream, read with
-- XREAD alone or XREADGROUP in a group) and proxystore.stream_local
-- ("local:", one process). Both speak the same small interface, so the
-- producer and consumer below do not know which one they talk to.
--
-- An event is one stream entry whose fields are (docs/streams.md):
--   s    a string value, its bytes as they are (inline)
--   v    any other value, or a proxy, encoded by the native codec
--   m    the metadata table, encoded by the native codec (absent: none)
--   end  "1": the end of the topic (close_topic)

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller

local M = {}

local now = core.monotonic
local serialize, deserialize = core.serialize, core.deserialize
local is_proxy = core.is_proxy

local DEFAULT_INLINE = 4096        -- bytes: smaller objects travel inline
local DEFAULT_BATCH = 256          -- events held before they are sent
local DEFAULT_BATCH_BYTES = 1 << 20
local DEFAULT_DELAY = 0.005        -- s the oldest held event waits for more
local DEFAULT_VISIBILITY = 10      -- s before another consumer takes an item
local DEFAULT_READ = 256           -- events read at once without a group
local LOCAL_STORE = "proxystore.stream.local"

local function ps() return require "proxystore" end

---------------------------------------------------------------------------
-- Errors carry the position of the user's call (lua5.4 prints a table
-- error without a traceback).

local function where(level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return info.short_src .. ":" .. info.currentline .. ": "
  end
  return ""
end

-- level: 1 = the function calling fail, 2 = its caller...
local function fail(level, kind, fmt, ...)
  error(core.error(kind, where(level + 1) .. fmt:format(...)), level + 1)
end

local function check_options(opts, allowed, what, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    fail(level + 1, "config", "%s: options must be a table, got %s", what, type(opts))
  end
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      fail(level + 1, "config", "%s: unknown option '%s'", what, tostring(k))
    end
    local t = type(v)
    if not want:find(t, 1, true) then
      fail(level + 1, "config", "%s: option '%s' must be a %s, got %s", what, k,
        want:gsub("|", " or "), t)
    end
  end
  return opts
end

local function check_number(v, name, what, lo, hi, integer, level)
  if v == nil then return nil end
  local n = integer and math.tointeger(v) or v
  if n == nil or n ~= n or n < lo or n > hi then
    fail(level + 1, "config", "%s: option '%s' must be %s in [%s, %s], got %s",
      what, name, integer and "an integer" or "a number", tostring(lo),
      tostring(hi), tostring(v))
  end
  return n
end

---------------------------------------------------------------------------
-- Brokers

-- The broker's config from its URL ("local:" or a Redis URL).
local function broker_config(broker, what, level)
  if broker == nil then
    fail(level + 1, "config", "%s: option 'broker' is required (a Redis URL, " ..
      "or \"local:\" for one process)", what)
  end
  if broker == "local:" then return { kind = "local" } end
  local ok, cfg = pcall(require("proxystore.url").parse, broker)
  if not ok then
    fail(level + 1, "config", "%s: bad broker: %s", what,
      type(cfg) == "table" and cfg.message or tostring(cfg))
  end
  if cfg.kind ~= "redis" then
    fail(level + 1, "config", "%s: the broker must be a Redis URL or \"local:\", " ..
      "not a %s URL", what, cfg.kind)
  end
  return cfg
end

local function open_broker(cfg, timeout)
  if cfg.kind == "local" then
    return require("proxystore.stream_local").new()
  end
  local c = {}
  for k, v in pairs(cfg) do c[k] = v end
  c.timeout = timeout or c.timeout or 5
  if c.host == nil and c.path == nil then c.host = "127.0.0.1" end
  if c.host and not c.port then c.port = 6379 end
  return require("proxystore.stream_redis").new(c)
end

-- The default store of a producer: a Redis store on the broker's server
-- (one per server, db and prefix, shared by the producers of the process
-- and found by name by the consumers' proxies), or for "local:" one local
-- store.
local function default_store(cfg, timeout)
  local P = ps()
  if cfg.kind == "local" then
    return P.get_store(LOCAL_STORE) or P.init_store("local", { name = LOCAL_STORE })
  end
  local at = cfg.path or ((cfg.host or "127.0.0.1") .. ":" .. (cfg.port or 6379))
  local name = ("proxystore.stream@%s/%d%s"):format(at, cfg.db or 0,
    cfg.prefix and cfg.prefix ~= "" and ("/" .. cfg.prefix) or "")
  local s = P.get_store(name)
  if s then return s end
  local opts = { name = name }
  for _, k in ipairs { "host", "port", "path", "db", "username", "password",
                       "prefix" } do
    opts[k] = cfg[k]
  end
  opts.timeout = timeout or cfg.timeout
  return P.init_store("redis", opts)
end

-- The store a URL names, registered under a name made from the URL
-- (without its password), so that producers given the same URL share it.
local function url_store(u, timeout)
  local P, url = ps(), require "proxystore.url"
  local name = "proxystore.stream:" .. url.without_password(u)
  local s = P.get_store(name)
  if s then return s end
  local cfg = url.parse(u)
  return P.init_store(u, { name = name,
    timeout = cfg.kind == "redis" and (timeout or cfg.timeout) or nil })
end

---------------------------------------------------------------------------
-- Producer

local Producer = {}
Producer.__index = Producer
Producer.__name = "proxystore.StreamProducer"

local PRODUCER_OPTIONS = {
  broker = "string", store = "userdata|string", inline_below = "number",
  filter = "function|table", maxlen = "number", batch_size = "number",
  batch_bytes = "number", batch_delay = "number", timeout = "number",
}

--- A producer (see the top of this file and docs/streams.md).
function M.producer(opts)
  local what = "stream producer"
  opts = check_options(opts, PRODUCER_OPTIONS, what, 2)
  local cfg = broker_config(opts.broker, what, 2)
  local timeout = check_number(opts.timeout, "timeout", what, 0, 1e9, false, 2)
  local self = {
    cfg = cfg, timeout = timeout,
    inline_below = check_number(opts.inline_below, "inline_below", what, 0,
      math.maxinteger, true, 2) or DEFAULT_INLINE,
    filter = opts.filter,
    maxlen = check_number(opts.maxlen, "maxlen", what, 1, math.maxinteger, true, 2),
    batch_size = check_number(opts.batch_size, "batch_size", what, 1, 1000000,
      true, 2) or DEFAULT_BATCH,
    batch_bytes = check_number(opts.batch_bytes, "batch_bytes", what, 1,
      math.maxinteger, true, 2) or DEFAULT_BATCH_BYTES,
    delay = check_number(opts.batch_delay, "batch_delay", what, 0, 3600, false, 2)
      or DEFAULT_DELAY,
    held = {}, order = {}, nheld = 0, bytes = 0, since = 0,
    stats = { sent = 0, filtered = 0, inline = 0, proxied = 0 },
  }
  local store = opts.store
  if type(store) == "string" then
    store = url_store(store, timeout)
  elseif store ~= nil then
    local ok, kind = pcall(function() return not is_proxy(store) and store.kind end)
    if not ok or type(kind) ~= "string" then
      fail(2, "config", "%s: option 'store' must be a store or a URL", what)
    end
  end
  self.store = store
  self.broker = open_broker(cfg, timeout)
  -- The metatable (and its __gc) last: finalizers run in the reverse order
  -- of their marking, so a collected producer still has its connection
  -- when it sends what it held.
  return setmetatable(self, Producer)
end

local function check_producer(self, what)
  if getmetatable(self) ~= Producer then
    error(("bad self to '%s' (proxystore.StreamProducer expected)"):format(what), 3)
  end
  if self.closed then fail(3, "closed", "stream producer is closed: %s refused", what) end
end

local function check_topic(topic, what)
  if type(topic) ~= "string" or topic == "" then
    fail(3, "config", "%s: the topic must be a non-empty string, got %s", what,
      topic == "" and "''" or type(topic))
  end
end

local SEND_OPTIONS = { metadata = "table", evict = "boolean" }
local NO_META = setmetatable({}, { __newindex = function()
  error("the metadata of an item sent without any is read-only", 2)
end })

-- The event for obj: inline below inline_below bytes, else a proxy to the
-- producer's store. A string's size is its length; a table's is that of
-- its encoding, which then is the event when it is small enough.
function Producer:event(obj, meta, evict)
  -- the metadata first: when the codec refuses it, nothing is stored
  local m = meta ~= nil and serialize(meta) or nil
  local t = type(obj)
  local ev
  if t == "string" then
    if #obj < self.inline_below then
      ev = { s = obj }
    end
  elseif t == "table" then
    local blob = serialize(obj)
    if #blob < self.inline_below then ev = { v = blob } end
  elseif t ~= "userdata" or is_proxy(obj) then
    ev = { v = serialize(obj) }   -- numbers, booleans, proxies (references)
  end
  if ev then
    self.stats.inline = self.stats.inline + 1
  else
    if t == "userdata" then serialize(obj) end   -- refuses it, clearly
    local store = self.store
    if not store then
      store = default_store(self.cfg, self.timeout)
      self.store = store
    end
    ev = { v = serialize(store:proxy(obj, evict and { evict = true } or nil)) }
    self.stats.proxied = self.stats.proxied + 1
  end
  ev.m = m
  return ev
end

-- Adds ev to the topic's batch; sends the batches when they are full or
-- the oldest event has waited batch_delay.
function Producer:hold(topic, ev, size)
  local list = self.held[topic]
  if not list then
    list = {}
    self.held[topic] = list
    self.order[#self.order + 1] = topic
  end
  list[#list + 1] = ev
  self.nheld = self.nheld + 1
  self.bytes = self.bytes + size
  local t = now()
  if self.nheld == 1 then self.since = t end
  if self.nheld >= self.batch_size or self.bytes >= self.batch_bytes or
     t - self.since >= self.delay then
    self:_flush(4)
  end
end

--- Sends obj on topic (opts: metadata, evict). Returns false when the
--- filter dropped it, true otherwise (the event may wait in a batch).
function Producer:send(topic, obj, opts)
  check_producer(self, "send")
  check_topic(topic, "send")
  local meta, evict
  if opts ~= nil then
    opts = check_options(opts, SEND_OPTIONS, "send", 2)
    meta, evict = opts.metadata, opts.evict
  end
  if obj == nil then
    fail(2, "config", "send: a stream item cannot be nil (next() returns nil " ..
      "at the end of a topic)")
  end
  if self.filter and not self.filter(obj, meta or NO_META) then
    self.stats.filtered = self.stats.filtered + 1
    return false
  end
  local ev = self:event(obj, meta, evict)
  self:hold(topic, ev, #(ev.s or ev.v) + (ev.m and #ev.m or 0))
  return true
end

-- Sends the held batches, one round trip per topic. A failure keeps the
-- events of the topic that failed and of those after it: the next flush
-- sends them (after a connection failure some may have arrived already,
-- and arrive twice).
function Producer:_flush(level)
  local order, held = self.order, self.held
  while #order > 0 do
    local topic = order[1]
    local list = held[topic]
    local ok, err = pcall(self.broker.add, self.broker, topic, list, self.maxlen)
    if not ok then
      local kind = type(err) == "table" and err.kind or "store"
      error(core.error(kind, ("%scould not send %d event(s) to topic '%s' at %s; " ..
        "%d event(s) are held and go with the next flush"):format(where(level),
        #list, topic, self.broker.address, self.nheld),
        { cause = err, address = self.broker.address }), level)
    end
    table.remove(order, 1)
    held[topic] = nil
    self.nheld = self.nheld - #list
    self.stats.sent = self.stats.sent + #list
  end
  self.nheld, self.bytes = 0, 0
end

--- Sends every held event now.
function Producer:flush()
  check_producer(self, "flush")
  self:_flush(3)
end

--- Ends topic: after the events sent so far, every consumer's iteration
--- ends (also consumers that start later).
function Producer:close_topic(topic)
  check_producer(self, "close_topic")
  check_topic(topic, "close_topic")
  self:hold(topic, { ["end"] = "1" }, 8)
  self:_flush(3)
end

--- Sends what is held and closes the connection; topics stay open. A
--- send that fails here still closes the producer, and raises.
function Producer:close()
  if self.closed then return end
  local ok, err = pcall(self._flush, self, 4)
  self.closed = true
  self.broker:close()
  if not ok then error(err, 2) end
end

function Producer:__close()
  self:close()
end

-- Collected with events held: they are sent, if the broker answers.
function Producer:__gc()
  if not self.closed then
    pcall(self._flush, self, 3)
    self.closed = true
    pcall(self.broker.close, self.broker)
  end
end

function Producer:__tostring()
  return ("proxystore.StreamProducer: %s%s"):format(self.broker.address,
    self.closed and " (closed)" or "")
end

---------------------------------------------------------------------------
-- Consumer

local Consumer = {}
Consumer.__index = Consumer
Consumer.__name = "proxystore.StreamConsumer"

local CONSUMER_OPTIONS = {
  broker = "string", group = "string", name = "string", from = "string",
  batch = "number", visibility = "number", timeout = "number", untrusted = "boolean",
}

local function is_end(e)
  return e.fields ~= nil and e.fields["end"] ~= nil
end

local function unique_name()
  local f = io.open("/proc/sys/kernel/hostname")
  local host = f and f:read("l") or "host"
  if f then f:close() end
  return ("%s:%d:%s"):format(host, core.pool_getpid(), core.random_key():sub(1, 8))
end

--- A consumer of topic (see the top of this file and docs/streams.md).
function M.consumer(topic, opts)
  local what = "stream consumer"
  if type(topic) ~= "string" or topic == "" then
    fail(2, "config", "%s: the topic must be a non-empty string, got %s", what,
      topic == "" and "''" or type(topic))
  end
  opts = check_options(opts, CONSUMER_OPTIONS, what, 2)
  local cfg = broker_config(opts.broker, what, 2)
  local from = opts.from or "new"
  if from ~= "new" and from ~= "start" then
    fail(2, "config", "%s: option 'from' must be \"new\" or \"start\", got '%s'",
      what, from)
  end
  if opts.name and not opts.group then
    fail(2, "config", "%s: option 'name' names a consumer within a group: give " ..
      "'group' too", what)
  end
  if opts.group == "" or opts.name == "" then
    fail(2, "config", "%s: group and name must not be empty", what)
  end
  local vis = check_number(opts.visibility, "visibility", what, 0.001, 86400,
    false, 2) or DEFAULT_VISIBILITY
  local self = {
    topic = topic, group = opts.group, name = opts.group and (opts.name or unique_name()),
    batch = check_number(opts.batch, "batch", what, 1, 100000, true, 2)
      or (opts.group and 1 or DEFAULT_READ),
    visibility = vis, tick = math.min(vis / 4, 0.5),
    buf = {}, bi = 1, bn = 0, acks = {}, next_tick = 0, cursor = nil,
    -- decoding options: an untrusted topic's proxies resolve only through
    -- stores this process registered (README, Security)
    codec = opts.untrusted and { untrusted = true } or nil,
  }
  local timeout = check_number(opts.timeout, "timeout", what, 0, 1e9, false, 2)
  self.broker = open_broker(cfg, timeout)
  local b = self.broker
  self.cursor = b.first_id
  if self.group then
    b:create_group(topic, self.group, from == "start")
    self.phase, self.pos = "pending", b.first_id   -- own pending entries first
  elseif from == "start" then
    self.pos = b.first_id
  else
    -- From the last entry on; a topic that has ended ends this consumer
    -- too, whenever it joins.
    local last = b:last(topic)
    self.pos = last and last.id or b.first_id
    if last and is_end(last) then self.ended = true end
  end
  return setmetatable(self, Consumer)   -- last, as for producers
end

local function check_consumer(self, what)
  if getmetatable(self) ~= Consumer then
    error(("bad self to '%s' (proxystore.StreamConsumer expected)"):format(what), 3)
  end
  if self.closed then fail(3, "closed", "stream consumer is closed: %s refused", what) end
end

-- The value and metadata of an entry's fields (codec: deserialize's
-- options).
local function decode(fields, codec)
  local v = fields.s
  if v == nil then
    local blob = fields.v
    if blob == nil then error("it is not a proxystore stream event", 0) end
    v = deserialize(blob, codec)
  end
  local m = fields.m
  return v, m and deserialize(m, codec) or {}
end

-- The buffer: entries read, buf[bi..bn] not returned yet.
function Consumer:push(entries)
  if self.bi > self.bn then
    self.buf, self.bi, self.bn = entries, 1, #entries
  else
    local buf, n = self.buf, self.bn
    for i, e in ipairs(entries) do buf[n + i] = e end
    self.bn = n + #entries
  end
end

function Consumer:pop()
  local i = self.bi
  if i > self.bn then return nil end
  local e = self.buf[i]
  self.buf[i] = nil
  self.bi = i + 1
  return e
end

-- How long the next read may be held: the time left before the deadline,
-- and in a group before the next reclaim.
function Consumer:block_for(deadline)
  local t = now()
  local left = deadline - t
  if self.group then
    local to_tick = self.next_tick - t
    if to_tick < left then left = to_tick end
  end
  return left > 0 and left or nil
end

-- One read (held up to the deadline): entries go to the buffer. Returns
-- "ended" once the topic has ended for this consumer, "again" when a read
-- should follow at once.
function Consumer:fill(deadline)
  local b, topic = self.broker, self.topic
  if not self.group then
    local got = b:read(topic, self.pos, self.batch, b.can_wait and self:block_for(deadline))
    if #got > 0 then
      self.pos = got[#got].id
      self:push(got)
    end
    return false
  end
  local group, name = self.group, self.name
  local t = now()
  if t >= self.next_tick then
    self.next_tick = t + self.tick
    local got
    got, self.cursor = b:reclaim(topic, group, name, self.visibility, self.batch,
      self.cursor)
    if #got > 0 then
      self:push(got)
      return false
    end
  end
  local pending = self.phase == "pending"
  local block = not pending and b.can_wait and self:block_for(deadline) or nil
  local got = b:read_group(topic, group, name, self.acks, pending and self.pos or ">",
    self.batch, block)
  self.acks = {}
  if pending then
    if #got == 0 then
      self.phase = "new"
      return "again"
    end
    self.pos = got[#got].id
  end
  if #got > 0 then
    self:push(got)
    return false
  end
  -- Nothing new: the topic has ended for the group once its end event was
  -- delivered (to any consumer) and nothing is pending any more, so that
  -- an item held by a consumer that dies now still reaches another one.
  if not self.end_seen and b:end_delivered(topic, group, is_end) then
    self.end_seen = true
  end
  return self.end_seen and b:pending_count(topic, group) == 0 and "ended"
end

--- The next item (a proxy, or the value itself when it travelled inline)
--- and its metadata; nil once the topic has ended. timeout: seconds
--- (default: wait as long as it takes); past it raises kind "timeout".
function Consumer:next(timeout)
  check_consumer(self, "next")
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("bad argument #1 to 'next' (non-negative number expected, got " ..
      (type(timeout) == "number" and tostring(timeout) or type(timeout)) .. ")", 2)
  end
  if self.ended then return nil end
  if self.held_id then   -- asking for the next item acknowledges this one
    self.acks[#self.acks + 1] = self.held_id
    self.held_id = nil
  end
  local deadline = timeout and now() + timeout or math.huge
  while true do
    if self.group and self.bi <= self.bn and #self.acks > 0 then
      -- reading on from the buffer: the acknowledgements cannot wait for
      -- the next read
      self.broker:ack(self.topic, self.group, self.acks)
      self.acks = {}
    end
    local e = self:pop()
    if e then
      if e.deleted then   -- trimmed while pending: nothing to read
        self.acks[#self.acks + 1] = e.id
      elseif is_end(e) then
        if not self.group then
          self.ended = true
          return nil
        end
        self.end_seen = true
        self.acks[#self.acks + 1] = e.id
      else
        if self.group then self.held_id = e.id end
        local ok, v, meta = pcall(decode, e.fields, self.codec)
        if not ok then
          error(core.error("serialization", ("%sentry %s of topic '%s' cannot be " ..
            "read: %s"):format(where(2), tostring(e.id), self.topic,
            type(v) == "table" and v.message or tostring(v)), { cause = v }), 2)
        end
        return v, meta
      end
    else
      local state = self:fill(deadline)
      if state == "ended" then
        self.ended = true
        pcall(self.broker.ack, self.broker, self.topic, self.group, self.acks)
        self.acks = {}
        return nil
      end
      if state ~= "again" and self.bi > self.bn then
        local t = now()
        if not self.broker.can_wait and t < deadline then
          fail(2, "timeout", "no item on local topic '%s', and nothing else in " ..
            "this process can send one while next() waits", self.topic)
        elseif t >= deadline then
          fail(2, "timeout", "no item on topic '%s' within %g s", self.topic, timeout)
        end
      end
    end
  end
end

--- In a group: tells the broker the item returned last is still being
--- worked on, so that its visibility starts again (for work that takes
--- longer than the visibility). True while the item is still this
--- consumer's, false once another consumer has taken it over (or without
--- an item, or a group).
function Consumer:touch()
  check_consumer(self, "touch")
  if not self.group or not self.held_id then return false end
  return self.broker:touch(self.topic, self.group, self.name, self.held_id)
end

--- for obj, meta in consumer:iter([timeout]) do ... end
function Consumer:iter(timeout)
  check_consumer(self, "iter")
  return function() return self:next(timeout) end
end

-- The entries taken and not returned (and, when collected, the one being
-- worked on): released to the group where the broker can.
function Consumer:_release(with_held)
  if not self.group then return end
  local ids = {}
  for i = self.bi, self.bn do ids[#ids + 1] = self.buf[i].id end
  if with_held and self.held_id then ids[#ids + 1] = self.held_id end
  if #ids > 0 then
    pcall(self.broker.release, self.broker, self.topic, self.group, self.name, ids)
  end
end

--- Closes the consumer. In a group the item it returned last is
--- acknowledged (asking for no more means it is done); if the broker
--- cannot be reached it comes again later, to this name or another.
function Consumer:close()
  if self.closed then return end
  self.closed = true
  if self.group then
    if self.held_id then self.acks[#self.acks + 1] = self.held_id end
    self.held_id = nil
    pcall(self.broker.ack, self.broker, self.topic, self.group, self.acks)
    self.acks = {}
    self:_release(false)
  end
  self.broker:close()
end

function Consumer:__close()
  self:close()
end

-- Collected without close: like a consumer that died, it acknowledges
-- nothing more.
function Consumer:__gc()
  if not self.closed then
    self.closed = true
    self:_release(true)
    pcall(self.broker.close, self.broker)
  end
end

function Consumer:__tostring()
  return ("proxystore.StreamConsumer: topic '%s'%s at %s%s"):format(self.topic,
    self.group and (" group '%s' as '%s'"):format(self.group, self.name) or "",
    self.broker.address, self.closed and " (closed)" or "")
end

M.Producer, M.Consumer = Producer, Consumer
return M
