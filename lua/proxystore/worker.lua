-- proxystore.worker: a queue worker's loop, for `proxystore worker` and for
-- the local workers a queue pool starts (proxystore.queue).
--
--   local w = require("proxystore.worker").new {
--     redis = cfg,          -- connection config (proxystore.queue_wire.redis_config)
--     queue = "jobs",       -- queue name
--     secret = "...",       -- the shared secret (or PROXYSTORE_SECRET)
--     name = nil,           -- consumer name (default host:pid:random)
--     log = nil,            -- function(line): start, refusals, reclaims...
--     wake_fd = nil,        -- readable: stop (see below)
--     stop_reason = nil,    -- function() -> nil | "SIGTERM" | "SIGINT"
--   }
--   w:run()                 -- until told to stop; returns "stopped" or
--                           -- "interrupted"
--
-- The loop reads tasks with XREADGROUP (held, so an idle worker costs the
-- server nothing), runs them, and stores each result with the "finish"
-- script (first stored result wins, pushed to the submitter's reply list,
-- entry acknowledged) once per batch, sent in one write with the next
-- read (its reply read before that read is waited for). A thread touches the
-- entries being run (proxystore.core.queue_heartbeat). Between reads it
-- claims entries idle past the queue's visibility (XAUTOCLAIM): their
-- worker died or went silent. A task delivered more than its max_attempts
-- times fails with kind "worker" instead of running again.
--
-- Stopping: once wake_fd is readable, a held read ends at once; the task
-- running finishes and its result is stored, tasks taken but not started
-- are handed back to the queue, and run returns. stop_reason "SIGINT"
-- (the host binary's interrupt, which also stops the running task) hands
-- back the running task too.
--
-- A task sees this process's globals (_G), not its submitter's: its _ENV
-- upvalue becomes this _G, modules its upvalues name are required here.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller
local wire = require "proxystore.queue_wire"
local poolmod = require "proxystore.pool"

local unpack_fn, proxy_large = poolmod._unpack_fn, poolmod._proxy_large
local evict_px, task_traceback = poolmod._evict_px, poolmod._task_traceback

local pack, unpack = table.pack, table.unpack
local now = core.monotonic

local M = {}

local DEFAULT_VISIBILITY = 10   -- seconds, until a pool says otherwise
local MAX_BATCH = 128           -- entries read at once, for short tasks
local BATCH_BUDGET = 0.002      -- s of work a batch may be expected to take
local FLUSH_AFTER = 0.002       -- s a finished result may wait for others
local HOLD_LIMIT = 1            -- s tasks taken but not started may wait:
                                -- then they go back for other workers

local Worker = {}
Worker.__index = Worker

local function ps() return require "proxystore" end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l")
  if f then f:close() end
  return (h and h ~= "") and h or (os.getenv("HOSTNAME") or "host")
end

-- Printable and short: fields of a message that failed its signature.
local function shown(s)
  if type(s) ~= "string" then return "(none)" end
  s = s:sub(1, 60):gsub("[^%w%p ]", "?")
  return s
end

function M.new(opts)
  local cfg = opts.redis
  local self = setmetatable({
    cfg = cfg, name = wire.check_name(opts.queue or "default"),
    secret = type(opts.secret) == "userdata" and opts.secret
      or wire.secret(opts.secret, "a worker"),
    log = opts.log or function() end,
    stop_reason = opts.stop_reason or function() return nil end,
    envs = { _G }, stores = {}, count = 1, vis = DEFAULT_VISIBILITY, ran_for = 0,
    stats = { tasks = 0, failed = 0, reclaimed = 0, refused = 0 },
  }, Worker)
  self.keys = wire.keys(self.name)
  self.me = opts.name or ("%s:%d:%s"):format(hostname(), core.pool_getpid(),
    core.random_key():sub(1, 6))
  self.g = core.redis_groups(cfg)
  if opts.wake_fd then self.g:set_wake_fd(opts.wake_fd) end
  self.g:create_group(self.keys.stream, wire.GROUP, "0")
  self:read_conf()
  self.hb_every = math.max(self.vis / 3, 0.05)
  self.hb = core.queue_heartbeat(cfg, self.keys.stream, wire.GROUP, self.me,
    self.hb_every)
  -- The queue's default store, through this worker's route to the server
  -- (proxies name the store; see queue_wire.store_name).
  local sname = wire.store_name(self.name)
  if not ps().get_store(sname) then
    local scfg = {}
    for k, v in pairs(cfg) do scfg[k] = v end
    scfg.kind, scfg.name = nil, sname
    ps().init_store("redis", scfg)
  end
  self.next_tick = 0
  return self
end

-- Touches held entries every s seconds (a third of the visibility).
function Worker:beat_every(s)
  s = math.max(s, 0.05)
  if s ~= self.hb_every then
    self.hb:set_interval(s)
    self.hb_every = s
  end
end

function Worker:read_conf()
  local ms = self.g:call("HGET", self.keys.conf, "visibility")
  local v = tonumber(ms)
  self.vis = v and v > 0 and v / 1000 or DEFAULT_VISIBILITY
end

---------------------------------------------------------------------------
-- One task

-- The store a task's large results go to: the one of that name here, or
-- one made from the config the task carries.
function Worker:store_for(cfg)
  if type(cfg) ~= "table" or type(cfg.name) ~= "string" then return nil end
  local P = ps()
  local s = P.get_store(cfg.name)
  if s then return s end
  local copy = {}
  for k, v in pairs(cfg) do copy[k] = v end
  copy.clear = nil
  if copy.serializer == "custom" then copy.serializer = nil end
  return P.init_store(copy.kind, copy)
end

local function run_task(m, envs)
  local fn = unpack_fn(m.fn, {}, envs)
  local args = m.args
  for _, i in ipairs(m.px or {}) do args[i] = ps().extract(args[i]) end
  return pack(fn(unpack(args, 1, args.n)))
end

-- The signed reply for task t. Results too large to go inline go as
-- proxies (not single use: the submitter evicts them once read); a result
-- the codec refuses becomes an error saying so.
function Worker:reply(m, t, ok, res, attempt)
  local r = { t = t, ok = ok, a = attempt, w = self.me }
  if ok then r.v = res else r.e = res end
  local enc, blob = pcall(core.serialize, r)
  local threshold = type(m) == "table" and math.tointeger(m.th)
  if enc and ok and threshold and #blob > threshold then
    local store = self:store_for(m.store)
    if store then
      local made, px = pcall(proxy_large, store, res, threshold, {})
      if made and px then
        r.px = px
        enc, blob = pcall(core.serialize, r)
        if enc then return blob, store, res, px end
        evict_px(store, res, px)
      elseif not made then
        enc, blob = false, px
      end
    end
  end
  if enc then return blob end
  if ok then
    r.ok, r.v = false, nil
    r.e = { kind = "task", traceback = "", ran = true,
            message = "result cannot be sent back: " .. tostring(blob) }
  else   -- an error whose cause cannot travel: its text
    r.e = { kind = res.kind, message = res.message, traceback = res.traceback,
            ran = res.ran, attempts = res.attempts }
  end
  return core.serialize(r)
end

-- A finish item for a task that fails without running (message: what
-- follows "task N " on the submitter's side).
function Worker:failure(e, f, kind, message, extra)
  local err = { kind = kind, message = message }
  for k, v in pairs(extra or {}) do err[k] = v end
  return { id = e.id, t = f.t, r = f.r,
           blob = self:reply(nil, f.t, false, err, e.deliveries or 1) }
end

-- Runs entry e (already verified); returns its finish item, or nil and
-- "interrupted" when SIGINT stopped it, or "malformed" for a task id no
-- pool makes.
function Worker:process(e)
  local f = e.fields
  local t = f.t
  if not wire.done_key(self.keys, t) then   -- no pool's: no way to answer
    return nil, "malformed"
  end
  if f.v ~= wire.VERSION then
    return self:failure(e, f, "task", ("cannot run on worker %s: its " ..
      "message format is %s, this worker (proxystore %s) reads format %s")
      :format(self.me, shown(f.v), core._VERSION, wire.VERSION))
  end
  local dec, m = pcall(core.deserialize, f.m)
  if not dec or type(m) ~= "table" or type(m.args) ~= "table" then
    return self:failure(e, f, "task", ("cannot run on worker %s: " ..
      "its message does not decode (%s)"):format(self.me,
      dec and "not a task" or tostring(m)))
  end
  local why = wire.check_code(m.fn)
  if why then
    return self:failure(e, f, "task", ("cannot run on worker %s: %s")
      :format(self.me, why))
  end
  local max = math.tointeger(m.max) or 3
  local deliveries = e.deliveries or 1
  -- the pool that sent it may have lowered the visibility since this
  -- worker last read it: beat fast enough for the task's own
  if type(m.vis) == "number" and m.vis > 0 and m.vis / 3 < self.hb_every then
    self:beat_every(m.vis / 3)
  end
  if deliveries > max then
    self.stats.failed = self.stats.failed + 1
    return self:failure(e, f, "worker", ("failed after %d attempts " ..
      "(max_attempts %d): each time its worker died or went silent for " ..
      "longer than the queue's visibility (%g s)"):format(deliveries - 1,
      max, self.vis), { attempts = deliveries - 1 })
  end
  local t0 = now()
  local ok, res = xpcall(run_task, task_traceback, m, self.envs)
  self.ran_for = self.ran_for + (now() - t0)
  if self.stop_reason() == "SIGINT" then return nil, "interrupted" end
  self.stats.tasks = self.stats.tasks + 1
  if not ok then
    self.stats.failed = self.stats.failed + 1
    res.kind, res.ran = "task", true
    -- the worker's own frames below the task are noise to the user
    local cut = res.traceback:find("\n[^\n]*proxystore/worker%.lua:%d+:")
    if cut then res.traceback = res.traceback:sub(1, cut - 1) end
  end
  local blob, store, list, px = self:reply(m, t, ok, res, deliveries)
  return { id = e.id, t = t, r = f.r, blob = blob, store = store, list = list,
           px = px }
end

---------------------------------------------------------------------------
-- Batches

-- The finish script that stores the results of items: its name, keys
-- and arguments.
function Worker:finish_script(items)
  local keys, args = { self.keys.stream }, { wire.GROUP, wire.DONE_TTL_MS }
  for _, it in ipairs(items) do
    local done, field = wire.done_key(self.keys, it.t)
    keys[#keys + 1] = done
    keys[#keys + 1] = it.r
    args[#args + 1] = field
    args[#args + 1] = it.id
    args[#args + 1] = wire.seal_reply(self.secret, it.blob)
  end
  return #items == 1 and "finish1" or "finish", keys, args
end

-- Stores the results of items (one round trip), first result winning.
function Worker:flush(items)
  if not items or #items == 0 then return end
  local name, keys, args = self:finish_script(items)
  self:settle(items, wire.eval(self.g, name, keys, args))
end

-- The results of the last batch, when they wait to go with the next read.
function Worker:flush_held()
  local items = self.unflushed
  self.unflushed = nil
  self:flush(items)
end

-- After the finish script: first[i] is 1 where item i's result was the
-- task's first.
function Worker:settle(items, first)
  for i, it in ipairs(items) do
    if first[i] == -1 then
      self.log(("task '%s' (entry %s): its result cannot be stored, a key " ..
        "of its pool holds another type of value (written by something " ..
        "else); dropped"):format(it.t, it.id))
      if it.px then evict_px(it.store, it.list, it.px) end
    elseif first[i] ~= 1 then
      -- a late duplicate: its result is not the task's; drop its proxies
      self.log(("task '%s' (entry %s) had a result already (another " ..
        "worker ran it while this one was silent); this one is dropped")
        :format(it.t, it.id))
      if it.px then evict_px(it.store, it.list, it.px) end
    end
    items[i] = nil
  end
end

function Worker:handback(ids)
  if #ids == 0 then return end
  local args = { wire.GROUP, self.me }
  for _, id in ipairs(ids) do args[#args + 1] = id end
  local ok, err = pcall(wire.eval, self.g, "handback", { self.keys.stream }, args)
  if not ok then
    self.log(("could not hand back %d task(s), they return after the " ..
      "visibility: %s"):format(#ids, tostring(err)))
  end
end

-- Entries that fail their signature stay pending for a worker with the
-- right secret (the heartbeat leaves them alone, so they are claimed after
-- the visibility); after MAX_REFUSALS deliveries they are dropped.
function Worker:refuse(e, why, drop)
  self.stats.refused = self.stats.refused + 1
  local f = e.fields or {}
  local d = e.deliveries or 1
  drop = drop or d >= wire.MAX_REFUSALS
  self.log(("refused entry %s (task '%s'): %s; this worker's secret has " ..
    "fingerprint %s%s"):format(e.id, shown(f.t), why, self.secret:fingerprint(),
    drop and ("; dropped after %d deliveries"):format(d) or ""))
  if drop then
    self.g:pipeline({ "XACK", self.keys.stream, wire.GROUP, e.id },
                    { "XDEL", self.keys.stream, e.id })
  end
end

-- Runs a batch of entries (deliveries known for claimed ones).
function Worker:run_batch(entries)
  local held = {}
  local ok_entries = {}
  for _, e in ipairs(entries) do
    if e.deleted then
      self.g:ack(self.keys.stream, wire.GROUP, { e.id })
    elseif wire.verify_task(self.secret, e.fields) then
      held[#held + 1] = e.id
      ok_entries[#ok_entries + 1] = e
    else
      self:refuse(e, "its signature does not verify")
    end
  end
  if #held == 0 then return end
  self.hb:hold(held)
  local items, last = {}, now()
  local bytes = 0
  self.ran_for = 0
  local t0 = last
  for i, e in ipairs(ok_entries) do
    local stop = i > 1 and (self.stop_reason() or self.g:woken())
    -- a batch of short tasks met a long one: the rest go back to the
    -- queue rather than wait behind it
    if stop or (i > 1 and now() - t0 > HOLD_LIMIT) then
      if stop then self.stopping = true end
      local rest = {}
      for j = i, #ok_entries do rest[#rest + 1] = ok_entries[j].id end
      self:flush(items)
      self:handback(rest)
      break
    end
    bytes = bytes + #e.fields.m
    local item, why = self:process(e)
    if why == "malformed" then   -- signed, yet no pool's task: no reply
      self:refuse(e, "its task id is not one a pool makes", true)
    elseif why == "interrupted" then
      local rest = {}
      for j = i, #ok_entries do rest[#rest + 1] = ok_entries[j].id end
      self:flush(items)
      self:handback(rest)
      self.interrupted = true
      break
    end
    items[#items + 1] = item
    if item and now() - last > FLUSH_AFTER then
      self:flush(items)
      last = now()
    end
  end
  if self.stopping or self.interrupted then
    self:flush(items)
  else
    -- stored by the script sent in one write with the next read (cycle):
    -- a task's round trip then waits for no second write and no second
    -- wake-up of the server, and the read is there before the next task
    self.unflushed = items
  end
  for _, id in ipairs(self.hb:release() or {}) do
    self.log(("entry %s was claimed by another worker while this one ran " ..
      "it (silent for longer than the visibility?); the first result " ..
      "stored wins"):format(id))
  end
  -- Large entries done: trim now rather than at the next trimming tick,
  -- so the server does not hold many of them.
  if bytes >= 1024 * 1024 then pcall(self.trim, self) end
  -- Read more at once while tasks run briefly and are small; one at a
  -- time otherwise, so that other workers get the rest. (Their own run
  -- time: the round trips of a batch are shared by all its tasks.)
  local per = self.ran_for / #ok_entries
  if per * self.count * 2 <= BATCH_BUDGET and bytes < 1024 * 1024 then
    self.count = math.min(self.count * 2, MAX_BATCH)
  elseif per * self.count > BATCH_BUDGET * 4 or bytes >= 1024 * 1024 then
    self.count = 1
  end
end

---------------------------------------------------------------------------
-- Between reads: claims, visibility, trimming

function Worker:tick()
  local t = now()
  self.next_tick = t + math.min(self.vis / 4, 0.5)
  self:read_conf()
  self:beat_every(self.vis / 3)   -- a pool may have set another visibility
  -- the groups module's reclaim, as streams' consumers use it: entries
  -- trimmed while pending are acknowledged and left out
  local claimed = self.g:reclaim(self.keys.stream, wire.GROUP, self.me,
    self.vis, 16)
  if #claimed > 0 then
    for _, e in ipairs(claimed) do
      self.stats.reclaimed = self.stats.reclaimed + 1
      self.log(("reclaimed entry %s (task '%s'): idle for more than %g s, " ..
        "its worker died or went silent; delivery %d"):format(e.id,
        shown(e.fields and e.fields.t), self.vis, e.deliveries))
    end
    self:run_batch(claimed)
  end
  -- Every few seconds: remove the entries every worker is done with
  -- (below the lowest pending id and the group's last delivered one).
  if not self.next_trim or t >= self.next_trim then
    self.next_trim = t + 5
    self:trim()
  end
end

local function id_parts(id)
  local ms, seq = id:match("^(%d+)%-(%d+)$")
  return tonumber(ms), tonumber(seq)
end

function Worker:trim()
  local info = self.g:group_info(self.keys.stream, wire.GROUP)
  local ms, seq = id_parts(info.last_delivered)
  if not ms or (ms == 0 and seq == 0) then return end
  local limit = ("%d-%d"):format(ms, seq + 1)
  local _, lowest = self.g:pending_summary(self.keys.stream, wire.GROUP)
  if lowest then
    local lms, lseq = id_parts(lowest)
    if lms and (lms < ms or (lms == ms and lseq <= seq)) then limit = lowest end
  end
  self.g:trim(self.keys.stream, { minid = limit, approx = true })
end

---------------------------------------------------------------------------
-- The loop

function Worker:cycle()
  if now() >= self.next_tick then
    self:flush_held()
    self:tick()
  end
  if self.stopping or self.interrupted then return self:flush_held() end
  local block = math.max(0.001, self.next_tick - now())
  -- the last batch's results go in the same write as the read
  local items, pre, name, keys, args = self.unflushed, nil, nil, nil, nil
  self.unflushed = nil
  if items and #items > 0 then
    name, keys, args = self:finish_script(items)
    pre = wire.evalsha(name, keys, args)
    if not pre then   -- the first time: the script is loaded
      self:settle(items, wire.eval(self.g, name, keys, args))
    end
  end
  local entries, woken, first = self.g:read_group(self.keys.stream, wire.GROUP,
    self.me, ">", self.count, block, pre)
  if pre then
    -- an error other than NOSCRIPT (the server forgot its scripts) leaves
    -- these results unstored and the entries just read pending: they run
    -- again on a worker that claims them after the visibility
    if wire.noscript(first) then first = wire.eval(self.g, name, keys, args) end
    if core.is_error(first) then error(first, 0) end
    self:settle(items, first)
  end
  if woken then
    self.stopping = true
  elseif #entries > 0 then
    self:run_batch(entries)
  end
end

local function kind_of(err)
  return type(err) == "table" and err.kind or nil
end

function Worker:run()
  self.log(("worker %s started on queue '%s' at %s (visibility %g s, " ..
    "secret fingerprint %s)"):format(self.me, self.name, self.g:address(),
    self.vis, self.secret:fingerprint()))
  local down_since
  while not (self.stopping or self.interrupted) do
    -- (a wake is seen by the read itself, which waits on the wake fd
    -- too: no look at it here, one system call a task fewer)
    if self.stop_reason() then break end
    local ok, err = pcall(self.cycle, self)
    if ok then
      if down_since then
        self.log(("reconnected to %s"):format(self.g:address()))
        down_since = nil
      end
    elseif self.stop_reason() == "SIGINT" then
      self.interrupted = true
    else
      local kind = kind_of(err)
      self.hb:release()
      if kind == "missing_key" then
        -- the server lost the stream (restarted without persistence)
        pcall(self.g.create_group, self.g, self.keys.stream, wire.GROUP, "0")
      elseif kind == "connection" or kind == "timeout" then
        if not down_since then
          down_since = now()
          self.log(("lost %s (%s); retrying"):format(self.g:address(),
            tostring(err)))
        end
        if self.g:sleep(0.2) then break end
      else
        self.log("error: " .. tostring(err))
        if self.g:sleep(1) then break end
      end
    end
  end
  return self:close()
end

-- Leaves the group: hands back whatever this worker still holds, forgets
-- its consumer when nothing is left pending for it.
function Worker:close()
  if self.closed then return self.closed end
  self.closed = self.interrupted and "interrupted" or "stopped"
  pcall(function()
    self:flush_held()   -- finished tasks are stored, not handed back
    local mine = self.g:pending(self.keys.stream, wire.GROUP,
      { consumer = self.me, count = 1000 })
    local ids = {}
    for _, p in ipairs(mine) do ids[#ids + 1] = p.id end
    self:handback(ids)
    if #self.g:pending(self.keys.stream, wire.GROUP,
                       { consumer = self.me, count = 1 }) == 0 then
      self.g:delete_consumer(self.keys.stream, wire.GROUP, self.me)
    end
    self:trim()
  end)
  self.log(("worker %s %s after %d task(s) (%d failed, %d reclaimed, " ..
    "%d refused)"):format(self.me, self.closed, self.stats.tasks,
    self.stats.failed, self.stats.reclaimed, self.stats.refused))
  self.hb:close()
  self.g:close()
  return self.closed
end

---------------------------------------------------------------------------
-- `proxystore worker` (src/host/worker_cmd.c calls these)

local function options(o)
  local cfg = wire.redis_config(o.url)
  wire.check_name(o.queue or "default")
  local secret = wire.secret(o.secret, "a worker")
  return cfg, secret
end

-- Checks options, secret and server once, before a supervisor forks.
function M.check(o)
  local cfg = options(o)
  local g = core.redis_groups(cfg)
  g:create_group(wire.keys(o.queue or "default").stream, wire.GROUP, "0")
  g:close()
  return "checked"
end

-- One worker process: logs to stderr, one line per event that matters.
function M.main(o)
  local cfg, secret = options(o)
  local pid = core.pool_getpid()
  local w = M.new {
    redis = cfg, queue = o.queue, secret = secret, wake_fd = o.wake_fd,
    stop_reason = o.stop_reason,
    log = function(line)
      io.stderr:write(("proxystore worker[%d]: %s\n"):format(pid, line))
      io.stderr:flush()
    end,
  }
  return w:run()
end

M.Worker = Worker
return M
