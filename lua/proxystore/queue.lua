-- proxystore.queue: a pool whose tasks go through a Redis stream, to
-- workers on any machine that reaches the server (`proxystore worker`).
--
--   local pool = ps.pool { queue = "redis://host:6379", name = "jobs",
--                          secret = "...", visibility = 10, max_attempts = 3,
--                          workers = 0, store = nil, proxy_threshold = 64 KiB,
--                          progress = true }
--   pool:submit(fn, ...), pool:map(fn, list [, opts]), futures as the
--   local pool's (result([timeout]), done()), pool:metrics(), pool:close()
--
-- Redis is the engine: a task is an XADD to the queue's stream; workers
-- read it with XREADGROUP in the group "workers" and store the result with
-- a server-side script (first result wins) that pushes it to this pool's
-- reply list, which the pool waits on with BLPOP. Nothing here schedules
-- or polls. Messages are signed (proxystore.queue_wire); arguments and
-- results larger than proxy_threshold travel as proxies through `store`
-- (default: a Redis store on the queue's server, see
-- queue_wire.store_name), evicted by this pool once the task is done.
--
-- Delivery is at least once: a worker that dies or goes silent has its
-- task claimed by another after `visibility` seconds (a property of the
-- queue: the pool started last sets it), and a task delivered more than
-- max_attempts times fails with kind "worker". Tasks must be idempotent.
--
-- workers = N also forks N local workers on this queue (from a zygote, as
-- the local pool does, so they see the globals as they were at start);
-- they stop when the pool closes.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller
local wire = require "proxystore.queue_wire"
local poolmod = require "proxystore.pool"

local Future = poolmod.Future
local pack_fn, proxy_large = poolmod._pack_fn, poolmod._proxy_large
local evict_px = poolmod._evict_px
local map_args, map_results = poolmod._map_args, poolmod._map_results
local tname = poolmod._task_name

local pack = table.pack
local now = core.monotonic

local M = {}

local DEFAULT_THRESHOLD = 64 * 1024
local OUTBOX = 512          -- tasks XADDed per round trip by map
local WAIT_SLICE = 2        -- s a BLPOP holds before the pool looks around
local ALIVE_TTL = 86400     -- s the pool's "alive" key lives unrefreshed
local REAP_EVERY = 0.05     -- s between looks for local workers that died

local QueuePool = {}
QueuePool.__index = QueuePool
QueuePool.__name = "proxystore.QueuePool"

local function perror(kind, message, fields)
  return core.error(kind, message, fields)
end

local function ps() return require "proxystore" end

local OPTIONS = {
  queue = "string", name = "string", secret = "string", visibility = "number",
  max_attempts = "number", workers = "number", store = "string|userdata",
  proxy_threshold = "number", progress = "boolean",
}

local function config_error(fmt, ...)
  error(perror("config", "queue pool: " .. fmt:format(...)), 3)
end

local function check_options(opts)
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then
      config_error("unknown option '%s'", tostring(k))
    end
    local ok = false
    for t in want:gmatch("[^|]+") do ok = ok or type(v) == t end
    if not ok then
      config_error("option '%s' must be a %s, got %s", k, want:gsub("|", " or "),
        type(v))
    end
  end
end

local function integer_in(opts, k, lo, hi, default)
  local v = opts[k]
  if v == nil then return default end
  local n = math.tointeger(v)
  if n == nil or n < lo or n > hi then
    config_error("%s must be an integer in [%d, %d], got %s", k, lo, hi,
      tostring(v))
  end
  return n
end

-- The function a local worker runs in its forked process: a queue worker
-- that stops when the pool closes its channel.
local function local_worker(cfg, name, secret)
  return function(chan)
    os.exit = core.pool_exit   -- a worker's exit skips the parent's atexit
    local w = require("proxystore.worker").new {
      redis = cfg, queue = name, secret = secret, wake_fd = chan:fileno(),
    }
    w:run()
  end
end

function M.new(opts)
  check_options(opts)
  local cfg = wire.redis_config(opts.queue)
  local name = wire.check_name(opts.name or "default")
  local secret = wire.secret(opts.secret, "a queue pool")
  local vis = opts.visibility or 10
  if vis ~= vis or vis <= 0 or vis > 86400 then
    config_error("visibility must be a number of seconds in (0, 86400], got %s",
      tostring(vis))
  end
  local max_attempts = integer_in(opts, "max_attempts", 1, 1000, 3)
  local workers = integer_in(opts, "workers", 0, 4096, 0)
  local threshold = opts.proxy_threshold or DEFAULT_THRESHOLD
  if threshold ~= threshold or threshold < 0 then
    config_error("proxy_threshold must be a non-negative number")
  end
  threshold = (threshold == math.huge or threshold > math.maxinteger)
    and math.maxinteger or math.floor(threshold)

  local keys = wire.keys(name)
  local id = core.random_key():sub(1, 16)
  local self = setmetatable({
    cfg = cfg, name = name, secret = secret, visibility = vis,
    max_attempts = max_attempts, workers = workers, threshold = threshold,
    progress = opts.progress ~= false, keys = keys, id = id,
    reply_key = wire.reply_key(keys, id), alive_key = wire.alive_key(keys, id),
    tasks = {}, nextid = 0, owner = core.pool_getpid(), closed = false,
    next_reap = 0,
    envindex = { [_G] = 1 },   -- any _ENV becomes the worker's _G
    stats = { submitted = 0, done = 0, failed = 0, reclaimed = 0,
              proxied_args = 0, proxied_results = 0, refused = 0,
              worker_deaths = 0 },
  }, QueuePool)
  self.g = core.redis_groups(cfg)
  self:_setup()
  self.connects = self.g:connects()

  local P = ps()
  local store = opts.store
  if type(store) == "string" then
    store = P.init_store(store, { name = ("queue-pool-%s"):format(id) })
    self.own_store = true
  elseif store == nil then
    local sname = wire.store_name(name)
    store = P.get_store(sname)
    if not store then
      local scfg = {}
      for k, v in pairs(cfg) do scfg[k] = v end
      scfg.kind, scfg.name = nil, sname
      store = P.init_store("redis", scfg)
      self.own_store = true
    end
  end
  if store.kind == "local" then
    if self.own_store then pcall(store.close, store) end
    self.g:close()
    setmetatable(self, nil)
    config_error("a local store lives in one process; workers need a " ..
      "redis or shared file store")
  end
  self.store = store
  self.store_cfg = store:config()
  if workers > 0 then
    -- the secret string goes to the forked workers' memory, nowhere else
    self.h = core.pool_start(workers, local_worker(cfg, name, opts.secret or
      os.getenv("PROXYSTORE_SECRET")))
  end
  return self
end

-- The queue's group, its visibility and this pool's "alive" key: made at
-- start and again when the server lost them.
function QueuePool:_setup()
  self.g:create_group(self.keys.stream, wire.GROUP, "0")
  self.g:pipeline(
    { "HSET", self.keys.conf, "visibility", math.floor(self.visibility * 1000 + 0.5) },
    { "SET", self.alive_key, "1", "EX", ALIVE_TTL })
  self.alive_until = now() + ALIVE_TTL / 24
  self.need_setup = false
end

function QueuePool:__tostring()
  local n = 0
  for _ in pairs(self.tasks) do n = n + 1 end
  return ("proxystore.QueuePool: queue '%s' at %s, %s"):format(self.name,
    self.g and not self.closed and self.g:address() or "-",
    self.closed and "closed" or (n .. " unfinished"))
end

local function check_open(self, what)
  if getmetatable(self) ~= QueuePool then
    error("bad self to '" .. what .. "' (proxystore.QueuePool expected)", 3)
  end
  if self.closed or self.stopping then
    error(perror("closed", "pool is closed: " .. what .. " refused"), 3)
  end
end

---------------------------------------------------------------------------
-- Tasks out

function QueuePool:_finish(task, ok, values, err)
  self.tasks[task.t] = nil
  task.state = "done"
  task.ok, task.values, task.err = ok, values, err
  if ok then
    self.stats.done = self.stats.done + 1
  else
    self.stats.failed = self.stats.failed + 1
  end
  -- arguments the pool made proxies: the task will not need them again
  if task.px then evict_px(self.store, task.args, task.px) end
  task.args, task.px = nil, nil
end

-- The signed entry of a task.
function QueuePool:_message(task, packed, args)
  local m = { fn = packed, args = args, max = self.max_attempts,
              vis = self.visibility, th = self.threshold, store = self.store_cfg }
  local blob = core.serialize(m)
  if #blob > self.threshold then
    -- not single use: a task may run twice; evicted when it is done
    local px = proxy_large(self.store, args, self.threshold, {})
    if px then
      task.px, task.args = px, args
      self.stats.proxied_args = self.stats.proxied_args + #px
      m.px = px
      blob = core.serialize(m)
    end
  end
  return wire.task_fields(self.secret, task.t, self.reply_key, blob)
end

-- XADDs the entries of tasks (one round trip). A failure (the server is
-- away) fails them and raises.
function QueuePool:_send(tasks, entries)
  if #tasks == 0 then return end
  if self.need_setup then pcall(self._setup, self) end
  local c0 = self.g:connects()
  local ok, ids = pcall(self.g.add, self.g, self.keys.stream, entries)
  if not ok then
    for _, task in ipairs(tasks) do
      self:_finish(task, false, nil, ids)
    end
    error(ids, 3)
  end
  for i, task in ipairs(tasks) do task.eid = ids[i] end
  if self.g:connects() ~= c0 then
    local fresh = {}
    for _, task in ipairs(tasks) do fresh[task] = true end
    self:_check_alive(fresh)
  end
end

function QueuePool:_submit_packed(packed, args, outbox, index)
  self.nextid = self.nextid + 1
  local task = setmetatable({ id = self.nextid, pool = self, state = "queued",
    index = index }, Future)
  task.t = self.id .. ":" .. task.id
  self.tasks[task.t] = task
  self.stats.submitted = self.stats.submitted + 1
  local ok, entry = pcall(self._message, self, task, packed, args)
  if not ok then
    if not (type(entry) == "table" and entry.kind) then
      entry = perror("pool", tname(task) .. " could not be sent: " ..
        tostring(entry))
    end
    self:_finish(task, false, nil, entry)
    return task
  end
  if outbox then
    outbox.tasks[#outbox.tasks + 1] = task
    outbox.entries[#outbox.entries + 1] = entry
  else
    self:_send({ task }, { entry })
  end
  return task
end

function QueuePool:submit(fn, ...)
  check_open(self, "submit")
  if type(fn) ~= "function" then
    error("bad argument #1 to 'submit' (function expected, got " .. type(fn) .. ")", 2)
  end
  local packed = pack_fn(fn, {}, self.envindex)
  -- a failure here is the server's: _send or the next wait reports it
  if not self.g:held() then pcall(self._hold_receive, self, nil, true) end
  return self:_submit_packed(packed, pack(...))
end

---------------------------------------------------------------------------
-- Replies in

function QueuePool:_on_reply(s)
  local r = wire.open_reply(self.secret, s)
  if not r then   -- forged, or signed under another secret
    self.stats.refused = self.stats.refused + 1
    return
  end
  local task = self.tasks[r.t]
  if not task then return end   -- a late duplicate: the first one won
  if (math.tointeger(r.a) or 1) > 1 then
    self.stats.reclaimed = self.stats.reclaimed + 1
  end
  if r.ok then
    local values = r.v
    if type(values) ~= "table" then
      return self:_finish(task, false, nil, perror("pool",
        "task " .. task.id .. ": a reply without results"))
    end
    if r.px then
      self.stats.proxied_results = self.stats.proxied_results + #r.px
      local P = ps()
      local keys = {}
      for j, i in ipairs(r.px) do keys[j] = P.key(values[i]) end
      local ok, e = pcall(function()
        for _, i in ipairs(r.px) do values[i] = P.extract(values[i]) end
      end)
      for _, k in ipairs(keys) do pcall(self.store.evict, self.store, k) end
      if not ok then
        return self:_finish(task, false, nil, perror("pool",
          tname(task) .. ": fetching its result: " .. tostring(e),
          { cause = e, task = task.id }))
      end
    end
    self:_finish(task, true, values)
  else
    local e = type(r.e) == "table" and r.e or {}
    local kind = e.kind == "worker" and "worker" or "task"
    local msg = e.ran and ("%s failed: %s"):format(tname(task), tostring(e.message))
      or ("%s %s"):format(tname(task), tostring(e.message))
    self:_finish(task, false, nil, perror(kind, msg, {
      traceback = e.traceback, cause = e.cause, task = task.id,
      attempts = e.attempts, worker = r.w }))
  end
end

-- The server came back (or a connection was opened again): when this
-- pool's alive key is gone, so is everything the queue held (a restart
-- without persistence), and no result of an unfinished task can come.
function QueuePool:_check_alive(except)
  self.connects = self.g:connects()
  local ok, n = pcall(self.g.call, self.g, "EXISTS", self.alive_key)
  if not ok or n == 1 then return end
  self:_fail_all(("redis %s restarted and lost the queue's data"):format(
    self.g:address()), nil, except)
  pcall(self._setup, self)
end

function QueuePool:_fail_all(why, cause, except)
  local lost = {}
  for _, task in pairs(self.tasks) do
    if not (except and except[task]) then lost[#lost + 1] = task end
  end
  table.sort(lost, function(a, b) return a.id < b.id end)
  for _, task in ipairs(lost) do
    self:_finish(task, false, nil, perror("connection",
      ("%s lost: %s; submit it again"):format(tname(task), why),
      { address = self.g:address(), cause = cause, task = task.id }))
  end
end

-- A call to the server failed: wait up to its timeout for it to answer
-- again, then either go on (it kept the queue's data) or fail every
-- unfinished task with a connection error.
function QueuePool:_lost(err)
  local deadline = now() + math.max(self.cfg.timeout or 5, 1)
  local alive
  repeat
    local ok, n = pcall(self.g.call, self.g, "EXISTS", self.alive_key)
    if ok then
      alive = n == 1
      break
    end
    self.g:sleep(0.1)
  until now() >= deadline
  self.connects = self.g:connects()
  if alive then return end
  if alive == nil then
    self:_fail_all(("cannot reach redis %s (%s)"):format(self.g:address(),
      tostring(err)), err)
    self.need_setup = true
  else
    self:_fail_all(("redis %s restarted and lost the queue's data"):format(
      self.g:address()), err)
    pcall(self._setup, self)
  end
end

-- An error reply to a pop (the reply list holds another type of value,
-- written by something else) raises: it answers at once, every time, and
-- a wait for results would spin on it for ever.
function QueuePool:_popped(r)
  if core.is_error(r) then
    error(perror("store", ("queue pool: cannot read its replies from '%s'")
      :format(self.reply_key), { cause = r, address = self.g:address() }), 0)
  end
  return r
end

-- Sends the wait for replies (BLPOP, held by the server up to wait s,
-- and an LPOP of the rest in the same write) without reading its answer:
-- _receive reads it. submit has it sent right after its XADD, before it
-- waits for the XADD's reply (later = true), so that a result pushed in
-- the meantime is answered at once and waits for this process in its
-- socket, not for a BLPOP this process would send only once it has read
-- the XADD's reply.
function QueuePool:_hold_receive(wait, later)
  wait = wait or WAIT_SLICE
  -- Redis reads a BLPOP timeout that rounds to 0 ms as "for ever"
  local g = self.g
  local send = later and g.queue_held or g.send_held
  send(g, wait, { "BLPOP", self.reply_key, ("%.3f"):format(wait) },
    { "LPOP", self.reply_key, 1000 })
end

-- The replies of a BLPOP and an LPOP (rs), added to replies; an error
-- reply raises (pool:_popped).
function QueuePool:_add_replies(replies, rs)
  local b, l = self:_popped(rs[1]), self:_popped(rs[2])
  if b then replies[#replies + 1] = b[2] end
  for _, v in ipairs(l or {}) do replies[#replies + 1] = v end
end

function QueuePool:_receive(timeout)
  local replies = {}
  local g = self.g
  if timeout == 0 then
    if g:held() then
      local rs = g:recv_held(0)
      if rs then self:_add_replies(replies, rs) end
    end
    for _, v in ipairs(self:_popped(g:pipeline({ "LPOP", self.reply_key, 1000 })[1]) or {}) do
      replies[#replies + 1] = v
    end
  else
    local wait = math.max(math.min(timeout or WAIT_SLICE, WAIT_SLICE), 0.002)
    if not g:held() then self:_hold_receive(wait) end
    -- nothing within wait: the wait stays held, read by a later step
    local rs = g:recv_held(wait)
    if rs then self:_add_replies(replies, rs) end
  end
  for _, s in ipairs(replies) do self:_on_reply(s) end
end

-- Local workers that died are replaced (their task is claimed by another
-- worker after the visibility).
function QueuePool:_reap()
  local evs = self.h:poll(0)
  for _, ev in ipairs(evs) do
    if ev[2] == "exit" then
      self.stats.worker_deaths = self.stats.worker_deaths + 1
      if not self.stopping then pcall(self.h.spawn, self.h, ev[1]) end
    elseif ev[2] == "zygote_died" then
      self.h = nil   -- remote workers may still serve the queue
      return
    end
  end
end

-- Waits up to timeout seconds (nil: one wait slice) for replies and
-- handles them.
function QueuePool:_step(timeout)
  if self.closed then return end
  -- looking for dead local workers costs a system call: not once per
  -- reply (a task's round trip is a few of them), a few times a second
  if self.h and now() >= self.next_reap then
    self.next_reap = now() + REAP_EVERY
    self:_reap()
  end
  local ok, err = pcall(self._receive, self, timeout)
  if not ok then
    local kind = type(err) == "table" and err.kind
    if kind ~= "connection" and kind ~= "timeout" then error(err, 0) end
    self:_lost(err)
  elseif self.g:connects() ~= self.connects then
    self:_check_alive()
  elseif now() > self.alive_until then
    pcall(self._setup, self)
  end
end

---------------------------------------------------------------------------
-- map, metrics, close

function QueuePool:map(fn, list, opts)
  check_open(self, "map")
  local n, show = map_args(self, fn, list, opts)
  local packed = pack_fn(fn, {}, self.envindex)
  local futures = {}
  local box = { tasks = {}, entries = {} }
  for i = 1, n do
    futures[i] = self:_submit_packed(packed, pack(list[i]), box, i)
    if #box.tasks >= OUTBOX or i == n then
      local tasks, entries = box.tasks, box.entries
      box.tasks, box.entries = {}, {}
      local ok, err = pcall(self._send, self, tasks, entries)
      if not ok then core.raise(err) end
    end
  end
  return map_results(self, futures, n, show)
end

local function id_less(a, b)
  local am, as = a:match("^(%d+)%-(%d+)$")
  local bm, bs = b:match("^(%d+)%-(%d+)$")
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

-- This pool's counts (submitted, done, failed, reclaimed: results that
-- came from a second or later delivery, refused: replies whose signature
-- failed, proxied_args, proxied_results; workers and worker_deaths of its
-- local workers) and where its unfinished tasks are: running (delivered to
-- a worker, not done) and queued (not delivered yet).
function QueuePool:metrics()
  local t = {}
  for k, v in pairs(self.stats) do t[k] = v end
  t.workers = self.workers
  local mine, n, lo, hi = {}, 0, nil, nil
  for _, task in pairs(self.tasks) do
    n = n + 1
    if task.eid then
      mine[task.eid] = true
      if not lo or id_less(task.eid, lo) then lo = task.eid end
      if not hi or id_less(hi, task.eid) then hi = task.eid end
    end
  end
  t.running = 0
  if lo and not self.closed then
    local ok, pending = pcall(self.g.pending, self.g, self.keys.stream,
      wire.GROUP, { start = lo, stop = hi, count = n })
    if ok then
      for _, p in ipairs(pending) do
        if mine[p.id] then t.running = t.running + 1 end
      end
    end
  end
  t.queued = n - t.running
  return t
end

function QueuePool:pids()
  if self.closed or not self.h then return {}, nil end
  return self.h:pids()
end

-- Waits for unfinished tasks, stops the local workers, removes this pool's
-- keys. Idempotent. opts.timeout (seconds): wait no longer; tasks still
-- unfinished then fail with kind "closed" (they may still run on a worker:
-- their results go nowhere).
function QueuePool:close(opts)
  if getmetatable(self) ~= QueuePool then
    error("bad self to 'close' (proxystore.QueuePool expected)", 2)
  end
  local timeout = type(opts) == "table" and opts.timeout or nil
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error(perror("config", "close: timeout must be a non-negative number"), 2)
  end
  if self.closed then return end
  if self.owner ~= core.pool_getpid() then self.closed = true; return end
  self.stopping = true
  local deadline = timeout and now() + timeout
  -- a wait that fails for good (no connection error: those _step rides
  -- out) still shuts the pool down, and the error says why
  local ok, err = pcall(function()
    while next(self.tasks) do
      local left = deadline and deadline - now()
      if left and left <= 0 then break end
      self:_step(left)
    end
  end)
  self:_shutdown(false)
  if not ok then error(err, 2) end
end

function QueuePool:_shutdown(kill)
  self.closed = true
  self.stopping = true
  if self.owner ~= core.pool_getpid() then return end
  if self.h then
    self.h:close(kill)   -- local workers see their channel close and stop
    self.h = nil
  end
  for _, task in pairs(self.tasks) do
    self:_finish(task, false, nil, perror("closed",
      "pool closed before task " .. task.id .. " finished"))
  end
  pcall(self.g.call, self.g, "DEL", self.reply_key, self.alive_key,
        (wire.done_key(self.keys, self.id .. ":0")))
  self.g:close()
  if self.own_store then pcall(self.store.close, self.store) end
end

function QueuePool:__gc()
  if not self.closed then pcall(self._shutdown, self, true) end
end

QueuePool.__close = QueuePool.close

M.QueuePool = QueuePool
return M
