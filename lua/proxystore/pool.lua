-- proxystore.pool: worker processes for Lua functions, with large
-- arguments and results travelling as store proxies.
--
--   local pool = ps.pool { workers = 4, store = "redis://...",
--                          proxy_threshold = 64 * 1024, progress = true }
--   local f = pool:submit(fn, ...)    -- a Future
--   f:result([timeout]), f:done(), f:cancel()
--   pool:map(fn, list [, {progress = false}])
--   pool:metrics()  -> submitted, completed, failed, cancelled,
--                      worker_deaths, proxied_args, proxied_results,
--                      shm_args, shm_results, shared_puts, shared_args,
--                      running, queued
--   pool:pids()     -> {slot = worker pid}, zygote pid
--   pool.store, pool.dir (the private store's directory, if any)
--   pool:close([{timeout = s}])   (also <close>; a collected pool kills
--                   its workers; past timeout s, tasks are cancelled)
--
-- With no options, `workers` and `store` come from the host binary's
-- --workers and --store (package.loaded["proxystore.host"]), then default
-- to the number of cores and a private file store on /dev/shm (or $TMPDIR)
-- that the pool removes at close, or its zygote when the parent dies.
--
-- Errors are proxystore error objects: kind "task" (the worker's message;
-- fields traceback, cause), "worker" (the worker died: pid, code or
-- signal), "cancelled", "timeout", "closed", "config", "serialization".
--
-- Inside a worker, os.exit flushes stdio and ends the worker at once.
--
-- When stderr is a terminal (and progress is not off), workers' stdout and
-- stderr come through the pool, which prints them line by line during its
-- waits, so a worker's print never splits the progress bar's line.
--
-- The C side (src/pool/) forks a zygote at pool start and the workers
-- from it, and moves codec-encoded frames over one socket per worker, or,
-- for a pool on its private store, frames over the threshold through the
-- slot's shared memory (pool_shm.c). This file keeps the queue, the
-- futures, function packing, automatic proxying and the progress bar.
--
-- A task message is {id, fn, args, px, sx}: fn a packed function (bytecode
-- and upvalues), args a packed argument list ({n=...}), px the indices of
-- the arguments the pool itself turned into single-use proxies (resolved
-- in the worker before the call, evicted by the parent when the task
-- ends), sx those that are proxies to values shared by tasks (negative
-- for tables; see "Values shared by tasks"). A reply is {id, true,
-- results, px} or {id, false, {message=, traceback=, cause=}}.

local core = require "proxystore.core"
-- Errors name the user's line, never one of this file's.
core.internal_source(debug.getinfo(1, "S").source)

local M = {}

local DEFAULT_THRESHOLD = 64 * 1024

local pack = table.pack
local unpack = table.unpack
local getupvalue, setupvalue = debug.getupvalue, debug.setupvalue

local function perror(kind, message, fields)
  return core.error(kind, message, fields)
end

-- An argument error worded as Lua's own, as an error object of kind config.
local function argerror(n, fname, msg)
  error(perror("config", ("bad argument #%d to '%s' (%s)"):format(n, fname, msg)))
end

-- Options: name -> the types it may have.
local function check_options(opts, allowed, what)
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      local names = {}
      for name in pairs(allowed) do names[#names + 1] = name end
      table.sort(names)
      error(perror("config", ("unknown option '%s' for %s (%s)"):format(
        tostring(k), what, table.concat(names, ", "))))
    end
    if not want:find(type(v), 1, true) then
      error(perror("config", ("option '%s' of %s must be a %s, got %s"):format(
        k, what, want:gsub("|", " or "), type(v))))
    end
  end
end

-- How messages name a task: a map's by its index in the list.
local function tname(task)
  if task.index then return ("item %d of the map"):format(task.index) end
  return "task " .. task.id
end

local function ps()
  return require "proxystore"
end

---------------------------------------------------------------------------
-- Functions across processes: bytecode plus upvalues; local functions a
-- task calls travel the same way. An _ENV upvalue is never serialized: it
-- names one of the environments known at pool start (_G, and the _ENV of
-- every Lua function then on the call stack, e.g. a busted spec's sandbox),
-- which the worker has as they were at the fork; any other _ENV becomes
-- the worker's _G.

local dumps = setmetatable({}, { __mode = "k" })

-- The environments of the functions on the stack, _G first.
local function stack_envs()
  local envs, seen = { _G }, { [_G] = true }
  for level = 2, 200 do
    local info = debug.getinfo(level, "f")
    if not info then break end
    local i = 1
    while true do
      local name, v = getupvalue(info.func, i)
      if name == nil then break end
      if name == "_ENV" and type(v) == "table" and not seen[v] then
        seen[v] = true
        envs[#envs + 1] = v
      end
      i = i + 1
    end
  end
  return envs
end

-- Loaded modules and their functions travel by name (`local ps =
-- require "proxystore"`, `local insert = table.insert` as upvalues): the
-- worker requires them. name_of[v] = {module, field or nil}.
local name_of = setmetatable({}, { __mode = "k" })
local indexed = setmetatable({}, { __mode = "k" })

local function module_ref(v)
  local r = name_of[v]
  if r or type(v) ~= "table" and type(v) ~= "function" then return r end
  for name, mod in pairs(package.loaded) do
    if type(name) == "string" and not indexed[mod] then
      if type(mod) == "table" or type(mod) == "function" then
        name_of[mod] = name_of[mod] or { name }
        indexed[mod] = true
      end
      if type(mod) == "table" then
        for k, f in pairs(mod) do
          if type(k) == "string" and (type(f) == "function" or type(f) == "table")
              and not name_of[f] then
            name_of[f] = { name, k }
          end
        end
      end
    end
  end
  return name_of[v]
end

local function pack_fn(fn, memo, envindex)
  local p = memo[fn]
  if p then return p end
  local code = dumps[fn]
  if not code then
    local ok, c = pcall(string.dump, fn)
    if not ok then
      error(perror("serialization",
        "pool: cannot send " .. tostring(fn) ..
        " to a worker (a C function that no loaded module holds)"), 3)
    end
    code, dumps[fn] = c, c
  end
  p = { code = code }
  memo[fn] = p
  local i = 1
  while true do
    local name, v = getupvalue(fn, i)
    if name == nil then break end
    local ref = (type(v) == "table" or type(v) == "function")
      and name ~= "_ENV" and module_ref(v)
    if name == "_ENV" then
      p[i] = { e = envindex[v] or 1 }
    elseif ref then
      p[i] = { m = ref[1], k = ref[2] }
    elseif type(v) == "function" then
      p[i] = { f = pack_fn(v, memo, envindex) }
    else
      p[i] = { v = v }
    end
    i = i + 1
  end
  p.n = i - 1
  return p
end

local loaded = {}   -- worker side: code -> closure (reused, upvalues reset)

local shared_value   -- below

local function unpack_fn(p, memo, envs, store)
  local f = memo[p]
  if f then return f end
  f = loaded[p.code]
  if not f then
    f = assert(load(p.code, "=task", "b"))
    loaded[p.code] = f
  end
  memo[p] = f
  for i = 1, p.n do
    local u = p[i]
    if u.e then
      setupvalue(f, i, envs[u.e] or _G)
    elseif u.m then
      local mod = require(u.m)
      setupvalue(f, i, u.k and mod[u.k] or mod)
    elseif u.f then
      setupvalue(f, i, unpack_fn(u.f, memo, envs, store))
    elseif u.s then
      setupvalue(f, i, shared_value(u.v, u.s, store))
    else
      setupvalue(f, i, u.v)
    end
  end
  return f
end

---------------------------------------------------------------------------
-- Automatic proxying: values larger than the threshold go through the
-- store; the receiving side extracts them and they are evicted after use.

-- Evicts the proxies proxy_large made in list (a message that then could
-- not be sent, a put that failed half way, a task that failed before it
-- resolved them).
local function evict_px(store, list, px)
  local P = ps()
  for _, i in ipairs(px or {}) do pcall(store.evict, store, P.key(list[i])) end
end

local function put_box(store, box, opts)
  return store:proxy_from_key(store:_put_encoded(box), opts)
end

local SINGLE_USE = { evict = true }

-- Replaces the large values of list (1..list.n) by proxies; returns the
-- indices replaced, or nil. A table is encoded once: the bytes that tell
-- its size are the bytes put. All or nothing: when a put fails, the
-- proxies already made are evicted, list is as it was, and the error goes
-- up. popts: the proxies' options (default single use; a queue's tasks
-- may run twice, so theirs are evicted by the submitter instead).
local function proxy_large(store, list, threshold, popts)
  popts = popts or SINGLE_USE
  local px, orig
  for i = 1, list.n do
    local v = list[i]
    local ok, p = true, nil
    -- single use: deleted by whoever resolves it, off the parent's path
    if type(v) == "string" and #v > threshold then
      ok, p = pcall(store.proxy, store, v, popts)
    elseif type(v) == "table" then
      local box, size
      ok, box, size = pcall(store._encode, store, v)
      if not ok then
        p = box
      elseif size > threshold then
        ok, p = pcall(put_box, store, box, popts)
      end
    end
    if not ok then
      evict_px(store, list, px)
      for j, i2 in ipairs(px or {}) do list[i2] = orig[j] end
      error(p, 0)
    end
    if p then
      list[i] = p
      px, orig = px or {}, orig or {}
      orig[#px + 1] = v
      px[#px + 1] = i
    end
  end
  return px
end

-- Replaces the pool-made proxies of list by their targets (which deletes
-- them from the store: they are made single-use).
local function extract_px(list, px)
  if not px then return end
  local P = ps()
  for _, i in ipairs(px) do list[i] = P.extract(list[i]) end
end

---------------------------------------------------------------------------
-- Values shared by tasks. A large string or table that a second task takes
-- (as an argument, or as an upvalue of its function) is put in the pool's
-- store once, and from then on tasks get a proxy to it, which a worker
-- resolves once and then finds in its store cache. The first task takes
-- the value in its own frame, so a value each task has for itself never
-- goes through the store.
--
-- Lifetime: an entry is pinned from when a task that takes it is sent to
-- a worker until the task ends. A table's entry lives as long as the table (weak keys) and its
-- finalizer evicts the stored copy. Lua cannot hold a string weakly, so a
-- string's entry that no task pins waits in a list of idle entries that
-- keeps at most _shared_idle bytes, the oldest evicted first. Closing the
-- pool evicts every entry.
--
-- Seen once: tables in a weak set. A string is known by its address, which
-- names it only while it is alive (a new string often gets the address of
-- one just freed), so the last large strings seen are held, up to
-- _seen_bytes (and always the last one).
--
-- A worker takes a shared table as a fresh copy (never the one in its
-- cache), so a task that changes its argument changes no other task's. A
-- table is read when it is first shared: tasks sent later get that copy.

-- Module fields, so that a spec can make them small.
M._shared_idle = 64 * 1024 * 1024
M._seen_bytes = 64 * 1024 * 1024

local function new_shared(store, private)
  return {
    store = store, private = private, owner = core.pool_getpid(),
    str = {},                                     -- "%p" -> entry
    seen = {},        -- "%p" -> {v = s}: strings seen once, and in order:
    seen_q = {}, seen_head = 1, seen_tail = 0, seen_bytes = 0,
    tbl = setmetatable({}, { __mode = "k" }),     -- table -> entry
    seen_t = setmetatable({}, { __mode = "k" }),  -- table -> true: seen once,
                                                  -- false: small
    idle_bytes = 0,   -- idle string entries: a list from sh.oldest
    gone = {},        -- table entries whose table was collected
  }
end

local function evict_entry(sh, e)
  if e.dead then return end
  e.dead = true
  -- the private store's directory goes as a whole at close
  if not (sh.private and sh.closing) then
    pcall(sh.store.evict, sh.store, e.key)
  end
end

-- A table's entry evicts its stored copy once the table is gone: queued
-- (no store calls inside the collector) for the pool's next step, in the
-- process that made it only (a forked worker has a copy of the state).
local TableEntry = { __gc = function(e)
  local sh = e.sh
  if sh.owner ~= core.pool_getpid() then return end
  if sh.closing then
    evict_entry(sh, e)
  else
    sh.gone[#sh.gone + 1] = e
  end
end }

local function evict_gone(sh)
  local gone = sh.gone
  if not gone[1] then return end
  sh.gone = {}
  for _, e in ipairs(gone) do evict_entry(sh, e) end
end

local function idle_unlink(sh, e)
  if e.newer then e.newer.older = e.older else sh.newest = e.older end
  if e.older then e.older.newer = e.newer else sh.oldest = e.newer end
  e.newer, e.older, e.idle = nil, nil, false
  sh.idle_bytes = sh.idle_bytes - e.size
end

local function pin(sh, e)
  if e.idle then idle_unlink(sh, e) end
  e.pins = e.pins + 1
end

local function unpin(sh, e)
  e.pins = e.pins - 1
  if e.pins > 0 or e.kind ~= "s" or e.dead then return end
  e.idle, e.older = true, sh.newest
  if sh.newest then sh.newest.newer = e else sh.oldest = e end
  sh.newest = e
  sh.idle_bytes = sh.idle_bytes + e.size
  while sh.idle_bytes > M._shared_idle do
    local old = sh.oldest
    idle_unlink(sh, old)
    sh.str[old.id] = nil
    evict_entry(sh, old)
  end
end

local function unsee(sh, id, node)
  sh.seen[id] = nil
  node.v = nil
  sh.seen_bytes = sh.seen_bytes - node.n
end

local function see(sh, id, v)
  local node = { id = id, v = v, n = #v }
  sh.seen[id] = node
  sh.seen_tail = sh.seen_tail + 1
  sh.seen_q[sh.seen_tail] = node
  sh.seen_bytes = sh.seen_bytes + node.n
  local q = sh.seen_q
  while sh.seen_head < sh.seen_tail and
      (sh.seen_bytes > M._seen_bytes or not q[sh.seen_head].v) do
    local old = q[sh.seen_head]
    q[sh.seen_head] = nil
    sh.seen_head = sh.seen_head + 1
    if old.v then unsee(sh, old.id, old) end
  end
end

-- The entry for v, a value a task takes, when v is large and shared: made
-- when v is seen a second time (the store's error, if any, leaves v to go
-- by value). decided keeps this task's answers, so that a value a task
-- takes twice travels one way.
local function share(self, v, decided)
  local sh, threshold = self.shared, self.threshold
  local tv = type(v)
  if tv == "string" then
    if #v <= threshold then return nil end
    local id = ("%p"):format(v)
    local e = decided[id]
    if e ~= nil then return e or nil end
    -- e.v (a seen node's v) keeps v alive: the same address is the same
    -- string
    e = sh.str[id]
    if not e then
      local node = sh.seen[id]
      if not node then
        see(sh, id, v)
      else
        unsee(sh, id, node)
        local ok, p = pcall(sh.store.proxy, sh.store, v)
        if ok then
          e = { kind = "s", v = v, p = p, key = ps().key(p), size = #v,
                pins = 0, id = id }
          sh.str[id] = e
          self.stats.shared_puts = self.stats.shared_puts + 1
        end
      end
    end
    decided[id] = e or false
    return e
  elseif tv == "table" then
    local e = decided[v]
    if e ~= nil then return e or nil end
    e = sh.tbl[v]
    if not e then
      local seen = sh.seen_t[v]
      if seen == nil then
        sh.seen_t[v] = true
      elseif seen then
        local ok, box, size = pcall(sh.store._encode, sh.store, v)
        if not ok or size <= threshold then
          sh.seen_t[v] = false   -- small (or not encodable: the send says why)
        else
          local made, p = pcall(put_box, sh.store, box)
          if made then
            e = setmetatable({ kind = "t", p = p, key = ps().key(p),
                               size = size, pins = 0, sh = sh }, TableEntry)
            sh.tbl[v] = e
            sh.seen_t[v] = nil
            self.stats.shared_puts = self.stats.shared_puts + 1
          end
        end
      end
    end
    decided[v] = e or false
    return e
  end
end

-- Whether the packed function p (or one it calls) captures a value that
-- may be shared: a string over the threshold or a table.
local function captures_large(p, threshold, seen)
  for i = 1, p.n do
    local u = p[i]
    local v, f = u.v, u.f
    if type(v) == "table" or type(v) == "string" and #v > threshold then
      return true
    end
    if f then   -- functions may call each other: visit each once
      seen = seen or { [p] = true }
      if not seen[f] then
        seen[f] = true
        if captures_large(f, threshold, seen) then return true end
      end
    end
  end
  return false
end

-- A copy of the packed function p whose shared upvalues are proxies.
local function share_upvalues(self, p, memo, decided, pinned)
  local c = memo[p]
  if c then return c end
  c = { code = p.code, n = p.n }
  memo[p] = c
  for i = 1, p.n do
    local u = p[i]
    local e = u.v ~= nil and share(self, u.v, decided)
    if e then
      c[i] = { v = e.p, s = e.kind }
      pinned[#pinned + 1] = e
    elseif u.f then
      c[i] = { f = share_upvalues(self, u.f, memo, decided, pinned) }
    else
      c[i] = u
    end
  end
  return c
end

-- Replaces the shared values among task's arguments and upvalues by
-- proxies (msg[5]: the arguments' indices, negative for tables) and pins
-- their entries until the task ends.
local function substitute_shared(self, task)
  local msg, sh, threshold = task.msg, self.shared, self.threshold
  local decided, pinned, sx
  local args = msg[3]
  for i = 1, args.n do
    local v = args[i]
    -- most arguments are small: no tables made for them
    if type(v) == "table" or type(v) == "string" and #v > threshold then
      decided, pinned = decided or {}, pinned or {}
      local e = share(self, v, decided)
      if e then
        args[i] = e.p
        sx = sx or {}
        sx[#sx + 1] = e.kind == "s" and i or -i
        pinned[#pinned + 1] = e
      end
    end
  end
  msg[5] = sx
  if captures_large(msg[2], threshold) then
    decided, pinned = decided or {}, pinned or {}
    msg[2] = share_upvalues(self, msg[2], {}, decided, pinned)
  end
  if not pinned then return end
  for _, e in ipairs(pinned) do pin(sh, e) end
  if pinned[1] then
    task.shared = pinned
    self.stats.shared_args = self.stats.shared_args + #pinned
  end
end

local function release_shared(self, task)
  if not task.shared then return end
  for _, e in ipairs(task.shared) do unpin(self.shared, e) end
  task.shared = nil
end

-- At close: every stored copy goes.
local function drop_shared(self)
  local sh = self.shared
  sh.closing = true
  evict_gone(sh)
  for _, e in pairs(sh.str) do evict_entry(sh, e) end
  for _, e in pairs(sh.tbl) do evict_entry(sh, e) end
  sh.str, sh.oldest, sh.newest, sh.idle_bytes = {}, nil, nil, 0
  sh.seen, sh.seen_q, sh.seen_bytes = {}, {}, 0
  sh.seen_head, sh.seen_tail = 1, 0
end

-- Worker side: the value behind a shared proxy, once per task and key
-- (got, made for the task at its first shared value): a string from the
-- store's cache, a table as a fresh copy.
local got
shared_value = function(p, kind, store)
  local key = ps().key(p)
  got = got or {}
  local v = got[key]
  if v == nil then
    if kind == "s" then v = ps().extract(p) else v = store:_get_copy(key) end
    got[key] = v
  end
  return v
end

local function take_shared(list, sx, store)
  for _, k in ipairs(sx) do
    local i = k < 0 and -k or k
    list[i] = shared_value(list[i], k < 0 and "t" or "s", store)
  end
end

---------------------------------------------------------------------------
-- The worker: runs in a forked process until the parent closes its socket.

local function task_traceback(e)
  local msg
  if type(e) == "string" then
    msg = e
  elseif core.is_error(e) then   -- "where: message", the parent adds its prefix
    msg = tostring(e):gsub("^proxystore: ", "")
  else
    local mt = getmetatable(e)
    if mt and mt.__tostring then
      msg = tostring(e)
    elseif type(e) == "table" then
      msg = core.describe(e)   -- error({code = 42}) reads {code = 42}
    else
      msg = "(error object is a " .. type(e) .. " value)"
    end
  end
  -- the worker's own frames below the task are noise to the user
  local tb = debug.traceback(nil, 2)
  local cut = tb:find("\n[^\n]*proxystore/pool%.lua:%d+:")
  if cut then tb = tb:sub(1, cut - 1) end
  return { message = msg, traceback = tb,
           cause = type(e) ~= "string" and e or nil,
           is_error = core.is_error(e) or nil }
end

local function run_task(msg, envs, store)
  got = nil   -- the task's shared values by key: one copy each
  local fn = unpack_fn(msg[2], {}, envs, store)
  local args = msg[3]
  extract_px(args, msg[4])
  if msg[5] then take_shared(args, msg[5], store) end
  got = nil
  return pack(fn(unpack(args, 1, args.n)))
end

-- Sends the reply to task id. What the task returned or raised never
-- ends the worker: a reply too large to go inline goes with proxies, one
-- the codec refuses (a function, a coroutine...) becomes an error reply
-- saying so. Only a broken socket (the parent is gone) raises.
local function send_reply(chan, store, threshold, shm, id, ok, res)
  local reply = { id, ok, res }
  -- Over the threshold, a reply goes through shared memory as it is when
  -- there is some; else its large values go to the store first.
  local sent, why = true, nil
  if shm or not ok then
    local fits
    sent, fits = pcall(chan.send, chan, reply, threshold, shm)
    if sent and fits then return end
    why = fits
  end
  if sent then   -- larger than the threshold
    if ok then
      local made, px = pcall(proxy_large, store, res, threshold)
      if made then
        reply[4] = px
        sent, why = pcall(chan.send, chan, reply)
        if sent then return end
        evict_px(store, res, px)
      else
        why = px
      end
    else
      res.cause = nil   -- an error too large to send: keep its text only
      sent, why = pcall(chan.send, chan, reply)
      if sent then return end
    end
  end
  local info
  if ok then
    info = { message = "task result cannot be sent back: " .. tostring(why),
             traceback = "" }
  else   -- the error's cause cannot travel: send its text
    info = { message = res.message, traceback = res.traceback }
  end
  if not ok and info.message == nil then
    info.message = "(an error the worker could not describe)"
  end
  chan:send({ id, false, info })
end

-- Runs the next task and sends its reply; false once the parent is done,
-- else when the task started (core.monotonic).
local function serve_one(chan, store, threshold, envs, shm)
  local msg = chan:recv()
  if msg == nil then return false end
  local t0 = core.monotonic()
  local ok, res = xpcall(run_task, task_traceback, msg, envs, store)
  if not ok and type(res) ~= "table" then
    -- xpcall calls no handler for a memory error: res is its message
    res = { message = tostring(res), traceback = "" }
  end
  io.stdout:flush()   -- what the task printed goes out before its result
  send_reply(chan, store, threshold, shm, msg[1], ok, res)
  return t0
end

-- A task that grew the worker's heap by at least this many KiB has its
-- garbage collected once its reply is sent, while the worker waits for
-- work: the memory of its large values (an argument, a resolved proxy, the
-- copy a result was sent from) is then free, and paged in, for the next
-- task's. Left to the collector's pace it is often still held when the
-- next task allocates, which then takes fresh pages, each faulted in
-- (10 MiB: 25-45 ms on these VMs, a copy into warm memory 1-3 ms;
-- docs/performance.md). What a collection costs follows the number of
-- objects, not their bytes, so the worker times it: while the last one
-- took more than a quarter of the task's own time (a large heap of small
-- objects inherited from the parent), it leaves the collector to its pace.
-- That cost is halved at each task it skips, so that one slow collection
-- (a busy machine) does not end them for good.
local COLLECT_MIN_KB = 1024

local function make_worker(store, threshold, envs, shm)
  return function(chan)
    os.exit = core.pool_exit   -- a worker's exit skips the parent's atexit
    local now, gc_took = core.monotonic, 0
    while true do
      local before = collectgarbage("count")
      local t0 = serve_one(chan, store, threshold, envs, shm)
      if not t0 then break end
      local t1 = now()
      if collectgarbage("count") - before >= COLLECT_MIN_KB then
        if gc_took <= (t1 - t0) / 4 then
          collectgarbage()
          gc_took = now() - t1
        else
          gc_took = gc_took / 2
        end
      end
    end
  end
end

---------------------------------------------------------------------------
-- Futures

local Future = {}
Future.__index = Future
Future.__name = "proxystore.Future"

function Future:__tostring()
  return ("proxystore.Future: task %d, %s"):format(self.id, self.state)
end

function Future:done()
  if self.state ~= "done" then self.pool:_step(0) end
  return self.state == "done"
end

-- Cancels the task: a queued one is dropped; a running one has its worker
-- killed (a replacement starts). Its future then fails with kind
-- "cancelled". True, or false when the task had already finished
-- (replies that already arrived are read first).
function Future:cancel()
  if getmetatable(self) ~= Future then
    error("bad self to 'cancel' (proxystore.Future expected)", 2)
  end
  if self.state ~= "done" then self.pool:_step(0) end
  if self.state == "done" then return false end
  self.pool:_cancel(self, "cancelled")
  return true
end

local now = core.monotonic

function Future:result(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    argerror(1, "result", "non-negative number expected")
  end
  if self.state ~= "done" then
    local pool = self.pool
    local deadline = timeout and now() + timeout
    while self.state ~= "done" do
      local left
      if deadline then
        left = deadline - now()
        if left <= 0 then
          pool:_step(0)   -- a reply already waiting counts as in time
          if self.state == "done" then break end
          error(perror("timeout", ("%s not done after %g s")
            :format(tname(self), timeout), { task = self.id, index = self.index }))
        end
      end
      pool:_step(left)
    end
  end
  if self.ok then
    local v = self.values
    return unpack(v, 1, v.n)
  end
  core.raise(self.err)   -- a copy naming this call's line
end

---------------------------------------------------------------------------
-- Pools

local Pool = {}
Pool.__index = Pool
Pool.__name = "proxystore.Pool"

local function host_defaults()
  return package.loaded["proxystore.host"] or {}
end

local function private_dir()
  local base = "/dev/shm"
  local f = io.open(base .. "/.", "r")
  if f then f:close() else base = os.getenv("TMPDIR") or "/tmp" end
  return core.pool_mkdtemp(base .. "/proxystore-pool-XXXXXX")
end

local npools = 0

local POOL_OPTIONS = { workers = "number", store = "string|userdata",
  proxy_threshold = "number", progress = "boolean" }

function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror(1, "pool", "table expected, got " .. type(opts))
  end
  opts = opts or {}
  check_options(opts, POOL_OPTIONS, "ps.pool")
  local host = host_defaults()
  local P = ps()
  local workers = opts.workers or host.workers or core.pool_ncpu()
  if math.type(workers) ~= "integer" or workers < 1 then
    error(perror("config", "pool: workers must be a positive integer, got "
      .. tostring(workers)), 2)
  end
  local threshold = opts.proxy_threshold or DEFAULT_THRESHOLD
  if type(threshold) ~= "number" or threshold < 0 then
    error(perror("config", "pool: proxy_threshold must be a non-negative number"), 2)
  end
  if threshold == math.huge or threshold > math.maxinteger then
    threshold = math.maxinteger
  end
  threshold = math.floor(threshold)

  local self = setmetatable({
    workers = workers, threshold = threshold, progress = opts.progress ~= false,
    queue = {}, qhead = 1, qtail = 0, running = {}, idle = {}, nextid = 0,
    tasks = {}, closed = false, owner = core.pool_getpid(),
    cancelling = {},   -- slot -> true: its worker is being killed
    stats = { submitted = 0, completed = 0, failed = 0, cancelled = 0,
              worker_deaths = 0, proxied_args = 0, proxied_results = 0,
              shm_args = 0, shm_results = 0, shared_puts = 0, shared_args = 0 },
  }, Pool)

  local store = opts.store or host.store
  if type(store) == "string" then
    npools = npools + 1
    local name = ("pool-%d-%d"):format(core.pool_getpid(), npools)
    local sopts = { name = name }
    if opts.store == nil and host.password then
      -- the binary's --password-file or PROXYSTORE_PASSWORD, for Redis
      local cfg = require("proxystore.url").parse(store)
      if cfg.password then
        error(perror("config", "pool: the --store URL has a password and " ..
          "--password-file or PROXYSTORE_PASSWORD gives one too: give it once"), 2)
      end
      if cfg.kind == "redis" then sopts.password = host.password end
    end
    store = P.init_store(store, sopts)
    self.own_store = true
  elseif store == nil then
    self.dir = private_dir()
    local name = "pool-" .. self.dir:match("[^/]+$")
    -- Its proxies are single use, resolved by one worker: evicted files
    -- can be recycled (no fresh tmpfs pages, no unlink per task).
    store = P.init_store("file", { name = name, dir = self.dir,
                                   recycle = math.min(workers + 2, 64) })
    self.own_store = true
    -- The store is the pool's own: large frames may travel through the
    -- slots' shared memory instead (src/pool/pool_shm.c).
    self.shm = true
  end
  if store.kind == "local" then
    if self.own_store then pcall(store.close, store) end
    setmetatable(self, nil)
    error(perror("config", "pool: a local store lives in one process; " ..
      "workers need a file or redis store"), 2)
  end
  self.store = store
  self.shared = new_shared(store, self.dir ~= nil)

  -- From here on, forked processes see the globals as they are now.
  local envs = stack_envs()
  self.envindex = setmetatable({}, { __mode = "k" })
  for i, e in ipairs(envs) do self.envindex[e] = i end
  -- On a terminal, workers' output comes through the pool (see the top).
  self.relay = self.progress and core.pool_isatty(2)
  self.h = core.pool_start(workers,
    make_worker(store, threshold, envs, self.shm), self.dir, self.relay)
  for s = workers, 1, -1 do self.idle[#self.idle + 1] = s end
  return self
end

function Pool:__tostring()
  return ("proxystore.Pool: %d workers, %s"):format(self.workers,
    self.closed and "closed" or
    ("%d running, %d queued"):format(self:_nrunning(), self.qtail - self.qhead + 1))
end

function Pool:_nrunning()
  local n = 0
  for _ in pairs(self.running) do n = n + 1 end
  return n
end

-- Sends task to the worker in slot: inline when small, else with its large
-- arguments as proxies.
local function send_task(self, slot, task)
  local h, msg = self.h, task.msg
  substitute_shared(self, task)
  if self.shm then
    -- over the threshold, the frame goes through shared memory as it is
    local ok, via = h:send(slot, msg, self.threshold, true)
    if via then self.stats.shm_args = self.stats.shm_args + 1 end
    if ok ~= false then return ok == nil end
    -- this slot has no shared memory: the store it is
  end
  local px = proxy_large(self.store, msg[3], self.threshold)
  msg[4] = px
  if px then
    task.px = px
    self.stats.proxied_args = self.stats.proxied_args + #px
  end
  -- nil: the worker is gone (died idle; its exit is not read yet), so it
  -- never got the task.
  return h:send(slot, msg) == nil
end

-- "sent" when task went out; "failed" when it cannot be sent (an argument
-- the codec refuses...) and its future fails; "gone" when the worker in
-- slot died before taking it: the task goes back to the head of the queue
-- as it was, and the slot waits for its replacement (_on_exit).
function Pool:_dispatch(slot, task)
  local ok, err = pcall(send_task, self, slot, task)
  if ok and err then
    self.qhead = self.qhead - 1
    self.queue[self.qhead] = task
    return "gone"
  end
  task.msg = nil
  if ok then
    self.running[slot] = task
    task.slot = slot
    task.state = "running"
    return "sent"
  end
  if not (type(err) == "table" and err.kind) then
    err = perror("pool", tname(task) .. " could not be sent: " .. tostring(err))
  end
  self:_finish(task, false, nil, err)
  return "failed"
end

function Pool:_finish(task, ok, values, err)
  self.tasks[task.id] = nil
  release_shared(self, task)
  task.state = "done"
  task.ok = ok
  task.values = values
  task.err = err
  if ok then
    self.stats.completed = self.stats.completed + 1
  elseif type(err) == "table" and err.kind == "cancelled" then
    self.stats.cancelled = self.stats.cancelled + 1
  else
    self.stats.failed = self.stats.failed + 1
  end
  if task.px and not ok then
    -- resolving evicts them; a task that failed may not have resolved them
    evict_px(self.store, task.args_px, task.px)
  end
  task.args_px = nil
end

function Pool:_free_slot(slot)
  local q = self.queue
  while self.qhead <= self.qtail do
    local task = q[self.qhead]
    q[self.qhead] = nil
    self.qhead = self.qhead + 1
    local sent = self:_dispatch(slot, task)
    if sent == "sent" then return end
    if sent == "gone" then
      -- another idle worker may take it now; this slot waits for its
      -- replacement
      local other = table.remove(self.idle)
      if other then return self:_free_slot(other) end
      return
    end
  end
  self.idle[#self.idle + 1] = slot
end

local function signame(n)
  local names = { [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [4] = "SIGILL",
    [6] = "SIGABRT", [7] = "SIGBUS", [8] = "SIGFPE", [9] = "SIGKILL",
    [11] = "SIGSEGV", [13] = "SIGPIPE", [14] = "SIGALRM", [15] = "SIGTERM" }
  return names[n] or ("signal " .. n)
end

-- The task running in slot, which is no longer running there.
function Pool:_take(slot)
  local task = self.running[slot]
  self.running[slot] = nil
  return task
end

-- Fails task with kind "cancelled": dropped from the queue, or its
-- worker killed (the slot is taken again once the exit is reported).
function Pool:_cancel(task, why)
  if task.state == "running" then
    local slot = task.slot
    self.running[slot] = nil
    self.cancelling[slot] = true
    self.h:kill(slot)
  else
    local q = self.queue
    for i = self.qhead, self.qtail do
      if q[i] == task then
        table.move(q, i + 1, self.qtail, i)
        q[self.qtail] = nil
        self.qtail = self.qtail - 1
        break
      end
    end
  end
  self:_finish(task, false, nil, perror("cancelled",
    ("task %d %s"):format(task.id, why), { task = task.id }))
end

function Pool:_on_result(slot, reply, via_shm)
  if self.cancelling[slot] then
    -- the cancelled task's reply, sent before its worker was killed: its
    -- proxies are nobody's now; the slot waits for the exit
    if reply[2] and reply[4] then evict_px(self.store, reply[3], reply[4]) end
    return
  end
  if via_shm then self.stats.shm_results = self.stats.shm_results + 1 end
  local task = self:_take(slot)
  if task and task.id == reply[1] then
    if reply[2] then
      local values = reply[3]
      local ok, e = true, nil
      if reply[4] then
        self.stats.proxied_results = self.stats.proxied_results + #reply[4]
        ok, e = pcall(extract_px, values, reply[4])
      end
      if ok then
        self:_finish(task, true, values)
      else
        self:_finish(task, false, nil, perror("pool",
          tname(task) .. ": fetching its result", { cause = e }))
      end
    else
      local info = reply[3]
      local cause = info.cause
      if info.is_error and type(cause) == "table" then   -- an error object again
        cause = perror(tostring(cause.kind), tostring(cause.message), cause)
      end
      self:_finish(task, false, nil, perror("task",
        tname(task) .. " failed: " .. tostring(info.message),
        { traceback = info.traceback, cause = cause, task = task.id,
          index = task.index }))
    end
  end
  self:_free_slot(slot)
end

function Pool:_on_exit(slot, pid, how, n)
  if self.cancelling[slot] then
    self.cancelling[slot] = nil   -- killed on purpose: not a death
  else
    self.stats.worker_deaths = self.stats.worker_deaths + 1
  end
  local task = self:_take(slot)
  if task then
    local what = how == "signal"
      and ("was killed by %s (signal %d)"):format(signame(n), n)
      or ("exited with code %d"):format(n)
    self:_finish(task, false, nil, perror("worker",
      ("worker %d %s while running %s"):format(pid, what, tname(task)),
      { pid = pid, signal = how == "signal" and n or nil,
        code = how == "code" and n or nil, task = task.id, index = task.index }))
  end
  if not self.closed then
    local ok, err = pcall(self.h.spawn, self.h, slot)
    if ok then
      self:_free_slot(slot)
    else
      self:_slot_lost(slot, err)
    end
  end
end

-- A slot whose replacement worker could not start stays empty; the other
-- workers take the queue. With no worker left the pool cannot go on.
function Pool:_slot_lost(slot, why)
  self.lost = self.lost or {}
  self.lost[slot] = true
  local n = 0
  for _ in pairs(self.lost) do n = n + 1 end
  if n >= self.workers then
    self:_broken("no worker could be started: " .. tostring(why))
  end
end

-- Waits up to timeout seconds (nil: until something happens) and handles
-- every event that arrived.
function Pool:_step(timeout)
  if self.closed then return end
  evict_gone(self.shared)
  local evs = self.h:poll(timeout)
  for i = 1, #evs do
    local ev = evs[i]
    local kind = ev[2]
    if kind == "result" then
      self:_on_result(ev[1], ev[3], ev[4])
    elseif kind == "exit" then
      self:_on_exit(ev[1], ev[3], ev[4], ev[5])
    elseif kind == "bad_result" and self.cancelling[ev[1]] then
      -- the cancelled task's: ignored, the slot waits for the exit
    elseif kind == "bad_result" then   -- a reply that did not decode
      local task = self:_take(ev[1])
      if task then
        self:_finish(task, false, nil, perror("pool",
          tname(task) .. ": its result could not be read",
          { cause = ev[3], task = task.id, index = task.index }))
      end
      self:_free_slot(ev[1])
    elseif kind == "output" then
      self:_output(ev[3], ev[4])
    elseif kind == "zygote_died" then
      self:_broken("the pool's zygote process died (killed from outside?); " ..
        "its workers are gone")
      return
    else -- spawn_failed: the slot stays empty
      local task = self:_take(ev[1])
      if task then
        self:_finish(task, false, nil, perror("pool",
          "cannot start a worker: " .. tostring(ev[3])))
      end
      self:_slot_lost(ev[1], ev[3])
    end
    if self.closed then return end
  end
end

-- Fails every unfinished task and closes the pool.
function Pool:_broken(why)
  for _, task in pairs(self.tasks) do
    if task.state ~= "done" then
      self:_finish(task, false, nil, perror("pool", why .. " (" .. tname(task) .. ")"))
    end
  end
  self.running, self.queue, self.qhead, self.qtail = {}, {}, 1, 0
  self:_shutdown(true)
end

local function check_open(self, what)
  if getmetatable(self) ~= Pool then
    error(perror("config", ("calling '%s' on bad self (proxystore.Pool expected, got %s)")
      :format(what, type(self))))
  end
  if self.closed or self.stopping then
    error(perror("closed", "pool is closed: " .. what .. " refused"))
  end
end

function Pool:_submit_packed(packed, args, index)
  self.nextid = self.nextid + 1
  local task = setmetatable({ id = self.nextid, pool = self, state = "queued",
    index = index }, Future)
  task.msg = { task.id, packed, args }
  task.args_px = args
  self.tasks[task.id] = task
  self.stats.submitted = self.stats.submitted + 1
  local slot = table.remove(self.idle)
  if slot then
    local sent = self:_dispatch(slot, task)
    if sent == "failed" then
      self:_free_slot(slot)
    elseif sent == "gone" then   -- queued again: the next idle worker
      local other = table.remove(self.idle)
      if other then self:_free_slot(other) end
    end
  else
    self.qtail = self.qtail + 1
    self.queue[self.qtail] = task
  end
  return task
end

function Pool:submit(fn, ...)
  check_open(self, "submit")
  if type(fn) ~= "function" then
    argerror(1, "submit", "function expected, got " .. type(fn))
  end
  return self:_submit_packed(pack_fn(fn, {}, self.envindex), pack(...))
end

-- Lines a worker wrote (fd 1 or 2), relayed: the bar's line is cleared
-- first and drawn again after, so the lines appear whole above it.
function Pool:_output(fd, text)
  if self.bar_shown then
    io.stderr:write("\r\27[K")
    io.stderr:flush()
    self.bar_shown = false
  end
  local f = fd == 1 and io.stdout or io.stderr
  f:write(text)
  f:flush()
end

-- The progress bar: done/total, rate, elapsed; on stderr, only a terminal.
local function bar(pool, done, total, t0, final)
  local el = now() - t0
  local rate = el > 0 and done / el or 0
  local width = 30
  local fill = total > 0 and math.floor(width * done / total) or width
  io.stderr:write(("\r[%s%s] %d/%d  %.1f/s  %.1fs%s"):format(
    ("#"):rep(fill), ("."):rep(width - fill), done, total, rate, el,
    final and "\n" or ""))
  io.stderr:flush()
  pool.bar_shown = not final
end

-- The number of items of a map's list: a sequence (every key 1..#list),
-- or a list with field n (keys 1..n, nil holes allowed, as table.pack and
-- get_batch make them); anything else is a config error.
local function list_length(list)
  local n = list.n
  if n ~= nil then
    if math.type(n) ~= "integer" or n < 0 then
      error(perror("config", "pool:map: the list's field n must be a " ..
        "non-negative integer, got " .. tostring(n)))
    end
  else
    n = #list
  end
  local count = 0
  for k in pairs(list) do
    if k ~= "n" or list.n == nil then
      if math.type(k) ~= "integer" or k < 1 or k > n then
        error(perror("config", ("pool:map needs a sequence (keys 1..%d), " ..
          "but the list has key %s"):format(n, type(k) == "string" and
          ("'" .. k .. "'") or tostring(k))))
      end
      count = count + 1
    end
  end
  if list.n == nil and count ~= n then
    error(perror("config", "pool:map needs a sequence, but the list has holes " ..
      "(give it a field n to map over nil items)"))
  end
  return n
end

local MAP_OPTIONS = { progress = "boolean" }

-- map's arguments checked (for the local and the queue pool alike): the
-- number of items, and whether to draw the progress bar.
local function map_args(pool, fn, list, opts)
  if type(fn) ~= "function" then
    argerror(1, "map", "function expected, got " .. type(fn))
  end
  if type(list) ~= "table" then
    argerror(2, "map", "table expected, got " .. type(list))
  end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(3, "map", "table expected, got " .. type(opts))
  end
  check_options(opts or {}, MAP_OPTIONS, "pool:map")
  local n = list_length(list)
  local show = pool.progress
  if opts and opts.progress ~= nil then show = opts.progress end
  return n, show and core.pool_isatty(2)
end

-- map's results in order, waiting on the pool (pool:_step) and drawing
-- the bar when show; the first failure is raised, naming the caller.
local function map_results(pool, futures, n, show)
  local results = {}
  local t0, last, done = now(), -1, 0
  for i = 1, n do
    local f = futures[i]
    while f.state ~= "done" do
      pool:_step(show and 0.1 or nil)
      if show then
        local d = i - 1
        for j = i, n do if futures[j].state == "done" then d = d + 1 end end
        local t = now()
        if d ~= done or t - last > 0.2 or not pool.bar_shown then
          done, last = d, t
          bar(pool, done, n, t0)
        end
      end
    end
    if not f.ok then
      if show and pool.bar_shown then io.stderr:write("\n") end
      pool.bar_shown = false
      core.raise(f.err)
    end
    results[i] = f.values[1]
  end
  if show then bar(pool, n, n, t0, true) end
  results.n = n
  return results
end

function Pool:map(fn, list, opts)
  check_open(self, "map")
  local n, show = map_args(self, fn, list, opts)
  local packed = pack_fn(fn, {}, self.envindex)
  local futures = {}
  for i = 1, n do
    futures[i] = self:_submit_packed(packed, pack(list[i]), i)
  end
  return map_results(self, futures, n, show)
end

-- Counts of tasks, worker deaths and values that travelled as proxies.
function Pool:metrics()
  local t = {}
  for k, v in pairs(self.stats) do t[k] = v end
  t.workers = self.workers
  t.running = self:_nrunning()
  t.queued = self.qtail - self.qhead + 1
  return t
end

-- The workers' pids by slot and the zygote's; events that arrived are
-- handled first, so a worker that died shows its replacement.
function Pool:pids()
  if self.closed then return {}, nil end
  self:_step(0)
  if self.closed then return {}, nil end
  return self.h:pids()
end

-- Waits for running and queued tasks, stops the workers, removes the
-- private store. Idempotent. opts: timeout (seconds): tasks still queued
-- or running after that long are cancelled (kind "cancelled").
function Pool:close(opts)
  if getmetatable(self) ~= Pool then
    error(perror("config", "calling 'close' on bad self (proxystore.Pool expected, got "
      .. type(self) .. ")"))
  end
  local timeout
  if opts ~= nil then
    if type(opts) ~= "table" then
      error(perror("config", "pool:close: options must be a table, got " .. type(opts)), 2)
    end
    for k in pairs(opts) do
      if k ~= "timeout" then
        error(perror("config", "pool:close: unknown option '" .. tostring(k) ..
          "' (timeout)"), 2)
      end
    end
    timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
      error(perror("config", "pool:close: timeout must be a non-negative " ..
        "number of seconds, got " .. tostring(timeout)), 2)
    end
  end
  if self.closed then return end
  if self.owner ~= core.pool_getpid() then self.closed = true; return end
  self.stopping = true
  local deadline = timeout and now() + timeout
  while next(self.running) or self.qhead <= self.qtail do
    local left
    if deadline then
      left = deadline - now()
      if left <= 0 then
        self:_step(0)   -- a reply already waiting counts as in time
        self:_cancel_all(("cancelled: the pool closed after %g s"):format(timeout))
        break
      end
    end
    self:_step(left)
  end
  self:_shutdown(false)
end

-- Cancels every task still queued or running.
function Pool:_cancel_all(why)
  while self.qhead <= self.qtail do
    self:_cancel(self.queue[self.qhead], why)
  end
  for _, task in pairs(self.running) do self:_cancel(task, why) end
end

function Pool:_shutdown(kill)
  self.closed = true
  self.stopping = true
  if self.owner ~= core.pool_getpid() then return end
  self.h:close(kill)
  for _, task in pairs(self.tasks) do
    if task.state ~= "done" then
      self:_finish(task, false, nil, perror("closed",
        "pool closed before " .. tname(task) .. " finished"))
    end
  end
  drop_shared(self)
  if self.own_store and self.store.close then pcall(self.store.close, self.store) end
  if self.dir then core.pool_rmtree(self.dir) end
end

-- A pool collected or left open at exit kills its workers at once.
function Pool:__gc()
  if not self.closed then pcall(self._shutdown, self, true) end
end

-- A <close> variable passes the error that ends its scope: not options.
function Pool:__close()
  return self:close()
end

M.Pool = Pool
M.Future = Future
M._pack_fn = pack_fn
-- for the queue pool (proxystore.queue, proxystore.worker)
M._unpack_fn = unpack_fn
M._proxy_large = proxy_large
M._evict_px = evict_px
M._task_traceback = task_traceback
M._map_args = map_args
M._map_results = map_results
M._task_name = tname
return M
