-- proxystore.queue_wire: what a queue pool and its workers agree on: the
-- Redis keys of a queue, the signed task and reply messages, and the
-- server-side scripts that finish and hand back tasks.
--
-- Keys of queue NAME (the braces keep them in one Redis Cluster slot):
--   proxystore:queue:{NAME}:tasks         the stream; group "workers"
--   proxystore:queue:{NAME}:conf          hash: visibility (ms)
--   proxystore:queue:{NAME}:done:<pool>   bitmap: bit n set once task n's
--                                         result is stored (first wins)
--   proxystore:queue:{NAME}:reply:<pool>  list of a pool's replies
--   proxystore:queue:{NAME}:pool:<pool>   exists while the pool lives
--
-- A task is a stream entry with fields
--   v  the message format (VERSION)      t  task id "<pool>:<n>"
--   r  the reply list's key              m  the message (native codec):
--      {fn = packed function, args = packed arguments, px = indices of
--       arguments the pool made proxies, max = max_attempts, vis = the
--       pool's visibility (s), th = proxy_threshold, store = config of the
--       store for large results}
--   s  HMAC-SHA256 of ("task", v, t, r, m) under the shared secret
-- A reply is the 32-byte HMAC of ("reply", blob) followed by blob, the
-- codec encoding of {t =, ok =, v = results | e = {kind =, message =,
-- traceback =, cause =}, px = indices of results sent as proxies,
-- a = the delivery that ran it, w = the worker's name}.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller

local M = {}

M.VERSION = "1"
M.GROUP = "workers"
-- A message that fails its signature is left pending for a worker that
-- holds the right secret; after this many deliveries it is dropped.
M.MAX_REFUSALS = 10
-- How long done hashes and unread replies are kept after their last use.
M.DONE_TTL_MS = 3600 * 1000

local function config_error(fmt, ...)
  error(core.error("config", fmt:format(...)), 3)
end

function M.check_name(name)
  if type(name) ~= "string" or not name:match("^[%w_.:%-]+$") or #name > 200 then
    config_error("queue name must be 1 to 200 letters, digits or _ . : -, got %s",
      type(name) == "string" and ("'" .. name:sub(1, 40) .. "'") or type(name))
  end
  return name
end

function M.keys(name)
  local base = "proxystore:queue:{" .. name .. "}:"
  return { base = base, stream = base .. "tasks", conf = base .. "conf" }
end

-- The done bitmap of task t ("<pool>:<n>") and the task's bit, or nil
-- for a task id that is not one.
function M.done_key(keys, t)
  local pool, n = t:match("^(.+):(%d+)$")
  n = tonumber(n)
  if not n or n >= 2 ^ 32 then return nil end
  return keys.base .. "done:" .. pool, math.tointeger(n)
end
function M.reply_key(keys, pool) return keys.base .. "reply:" .. pool end
function M.alive_key(keys, pool) return keys.base .. "pool:" .. pool end

-- The name of the default store of a queue: pools and workers register a
-- Redis store of this name, each through its own route to the server, so
-- proxies made on one machine resolve on another.
function M.store_name(name) return "queue:" .. name end

-- The connection config of a queue URL (redis://, unix://).
function M.redis_config(url)
  if type(url) ~= "string" then
    config_error("queue must be a Redis URL (redis://host:port[/db] or " ..
      "unix:///path.sock), got %s", type(url))
  end
  local cfg = require("proxystore.url").parse(url)
  if cfg.kind ~= "redis" then
    config_error("queue must be a Redis URL (redis://host:port[/db] or " ..
      "unix:///path.sock), got a %s URL", cfg.kind)
  end
  if cfg.timeout == nil then cfg.timeout = 5 end
  if not cfg.path then cfg.host = cfg.host or "127.0.0.1" end
  return cfg
end

-- The secret from an option, else PROXYSTORE_SECRET; never in a message.
function M.secret(given, who)
  local s = given
  if s == nil then s = os.getenv("PROXYSTORE_SECRET") end
  if s == nil or s == "" then
    config_error("%s needs a shared secret that signs tasks (%s): tasks " ..
      "carry code, and a worker must know who sent it", who,
      who == "a worker" and "--secret-file or PROXYSTORE_SECRET"
        or "option 'secret' or PROXYSTORE_SECRET")
  end
  if type(s) ~= "string" then
    config_error("secret must be a string, got %s", type(s))
  end
  if #s < 16 then
    config_error("secret must be at least 16 bytes (got %d)", #s)
  end
  return core.secret(s)
end

---------------------------------------------------------------------------
-- Bytecode: a task's code must come from a Lua this worker can load. The
-- header of string.dump's output says which (version, format, sizes of
-- instructions, integers and floats, byte order); load() refuses another,
-- and a signed message never carries malformed code, but a worker says
-- which Lua the code is for rather than load's "version mismatch".

local HEADER_LEN = 31   -- Lua 5.4: signature, version, format, data, sizes, int, float
M.HEADER = string.dump(function() end):sub(1, HEADER_LEN)

local function lua_of(code)
  if type(code) ~= "string" or code:sub(1, 4) ~= "\27Lua" then
    return "something that is not Lua bytecode"
  end
  local v = code:byte(5) or 0
  local what = ("Lua %d.%d bytecode"):format(v >> 4, v & 15)
  if v == M.HEADER:byte(5) then
    what = what .. " for another build (format, integer or float sizes, " ..
      "or byte order differ)"
  end
  return what
end

-- nil when every function of packed can be loaded here, else why not.
function M.check_code(packed, seen)
  seen = seen or {}
  if seen[packed] then return nil end
  seen[packed] = true
  if type(packed) ~= "table" or type(packed.code) ~= "string" then
    return "its code is missing"
  end
  if packed.code:sub(1, HEADER_LEN) ~= M.HEADER then
    return ("its code is %s, and this worker runs %s"):format(lua_of(packed.code),
      _VERSION)
  end
  for i = 1, packed.n or 0 do
    local u = packed[i]
    if type(u) == "table" and u.f then
      local why = M.check_code(u.f, seen)
      if why then return why end
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- Messages

function M.task_fields(secret, t, r, m)
  return { v = M.VERSION, t = t, r = r, m = m,
           s = secret:sign("task", M.VERSION, t, r, m) }
end

-- True when the entry's fields are a task signed under secret (any v).
function M.verify_task(secret, f)
  if type(f) ~= "table" then return false end
  local v, t, r, m, s = f.v, f.t, f.r, f.m, f.s
  if type(v) ~= "string" or type(t) ~= "string" or type(r) ~= "string" or
     type(m) ~= "string" or type(s) ~= "string" then
    return false
  end
  return secret:verify(s, "task", v, t, r, m)
end

function M.seal_reply(secret, blob)
  return secret:sign("reply", blob) .. blob
end

-- The reply table of a signed reply, or nil and why not.
function M.open_reply(secret, s)
  if type(s) ~= "string" or #s < 33 then return nil, "too short" end
  local blob = s:sub(33)
  if not secret:verify(s:sub(1, 32), "reply", blob) then
    return nil, "bad signature"
  end
  local ok, r = pcall(core.deserialize, blob)
  if not ok or type(r) ~= "table" or type(r.t) ~= "string" then
    return nil, "not a reply"
  end
  return r
end

---------------------------------------------------------------------------
-- Server-side scripts

local SCRIPTS = {
  -- Stores each result unless one is stored already (first wins: the
  -- task's bit in its pool's done bitmap, all of a batch set by one
  -- BITFIELD that returns their old values), pushes the first ones to
  -- their reply lists (one RPUSH per list) and acknowledges every entry
  -- (one XACK). Returns per result 1 (stored), 0 (one was already) or -1:
  -- its done bitmap or reply list holds another type of value (written by
  -- something else), so its result cannot be stored; checked before any
  -- write, since a script's error keeps the writes made before it: the
  -- bits of the batch's other results would be set, their pushes never
  -- made, and those results lost for good.
  -- KEYS: stream, then per result its done bitmap and reply key;
  -- ARGV: group, ttl (ms), then per result its task number, entry id and
  -- reply.
  finish = [==[
local stream, group, ttl = KEYS[1], ARGV[1], ARGV[2]
local n = (#KEYS - 1) / 2
local usable = {}
local function fits(key, want)
  local u = usable[key]
  if u == nil then
    local t = redis.call('TYPE', key).ok
    u = t == 'none' or t == want
    usable[key] = u
  end
  return u
end
local ops, donekeys, slot = {}, {}, {}
for k = 1, n do
  local done = KEYS[2 * k]
  if fits(done, 'string') and fits(KEYS[2 * k + 1], 'list') then
    local o = ops[done]
    if not o then
      o = {}
      ops[done] = o
      donekeys[#donekeys + 1] = done
    end
    o[#o + 1] = 'SET'
    o[#o + 1] = 'u1'
    o[#o + 1] = ARGV[3 * k]
    o[#o + 1] = 1
    slot[k] = #o / 4
  else
    slot[k] = false
  end
end
local old = {}
for _, done in ipairs(donekeys) do
  old[done] = redis.call('BITFIELD', done, unpack(ops[done]))
  redis.call('PEXPIRE', done, ttl)
end
local first, ids, pushes, lists = {}, {}, {}, {}
for k = 1, n do
  local rkey, id, reply = KEYS[2 * k + 1], ARGV[3 * k + 1], ARGV[3 * k + 2]
  if not slot[k] then
    first[k] = -1
  elseif old[KEYS[2 * k]][slot[k]] == 0 then
    local p = pushes[rkey]
    if not p then
      p = {}
      pushes[rkey] = p
      lists[#lists + 1] = rkey
    end
    p[#p + 1] = reply
    first[k] = 1
  else
    first[k] = 0
  end
  if id ~= '' then ids[#ids + 1] = id end
end
for _, rkey in ipairs(lists) do
  redis.call('RPUSH', rkey, unpack(pushes[rkey]))
  redis.call('PEXPIRE', rkey, ttl)
end
if #ids > 0 then redis.call('XACK', stream, group, unpack(ids)) end
return first
]==],
  -- finish for one result, the common case of tasks read one at a time:
  -- the same effect (keys of another type checked first, -1), without
  -- the batch's tables and loops (server time
  -- measured on one loaded VM: 13 us a call against the batch script's
  -- 17 for one result).
  -- KEYS: stream, done bitmap, reply key; ARGV: group, ttl (ms), task
  -- number, entry id, reply.
  finish1 = [==[
local function fits(key, want)
  local t = redis.call('TYPE', key).ok
  return t == 'none' or t == want
end
if not (fits(KEYS[2], 'string') and fits(KEYS[3], 'list')) then
  if ARGV[4] ~= '' then redis.call('XACK', KEYS[1], ARGV[1], ARGV[4]) end
  return {-1}
end
local old = redis.call('BITFIELD', KEYS[2], 'SET', 'u1', ARGV[3], 1)[1]
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if old == 0 then
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
if ARGV[4] ~= '' then redis.call('XACK', KEYS[1], ARGV[1], ARGV[4]) end
return {1 - old}
]==],
  -- Gives back entries a stopping worker took but will not run: each one
  -- still this consumer's goes to the end of the stream as a new entry
  -- (not a delivery), the old one acknowledged and deleted.
  -- KEYS: stream; ARGV: group, consumer, ids...
  handback = [==[
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if e[1] then redis.call('XADD', KEYS[1], '*', unpack(e[1][2])) end
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
]==],
}

local shas = {}   -- per process; a restarted server forgets them

-- The EVALSHA command of script name with keys and args, to send with
-- another command in one write; nil until this process has loaded the
-- script (then M.eval). A NOSCRIPT reply to it (M.noscript) means: M.eval.
function M.evalsha(name, keys, args)
  if not shas[name] then return nil end
  local cmd = { "EVALSHA", shas[name], #keys }
  for i = 1, #keys do cmd[#cmd + 1] = keys[i] end
  for i = 1, #args do cmd[#cmd + 1] = args[i] end
  return cmd
end

function M.noscript(r)
  return core.is_error(r) and tostring(r.redis):match("^NOSCRIPT") ~= nil
end

-- Runs script name with keys and args (lists) through g; returns its
-- reply. EVALSHA, loading the script when the server does not have it.
function M.eval(g, name, keys, args)
  local cmd = { "EVALSHA", shas[name] or "0", #keys }
  for i = 1, #keys do cmd[#cmd + 1] = keys[i] end
  for i = 1, #args do cmd[#cmd + 1] = args[i] end
  if shas[name] then
    local r = g:pipeline(cmd)[1]
    if not (core.is_error(r) and tostring(r.redis):match("^NOSCRIPT")) then
      if core.is_error(r) then error(r, 2) end
      return r
    end
  end
  shas[name] = g:call("SCRIPT", "LOAD", SCRIPTS[name])
  cmd[2] = shas[name]
  local r = g:pipeline(cmd)[1]
  if core.is_error(r) then error(r, 2) end
  return r
end

return M
