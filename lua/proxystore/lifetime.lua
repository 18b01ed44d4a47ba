-- proxystore.lifetime: ps.lifetime(opts), a set of objects that end
-- together.
--
--   local lt <close> = ps.lifetime { lease = 60 }   -- lease: optional, s
--   store:put(obj, { lifetime = lt })                -- also proxy, future
--   lt:extend(30)   lt:done()   lt:close()
--
-- Every object attached to a lifetime is evicted when it ends: by
-- lt:close() (idempotent; also at the end of a <close> variable's scope).
-- A lease also ends it by itself, and that end is kept by the store, not
-- by this object: objects are put with the lease (Redis PEXPIRE on every
-- key, the file store's expiry mark), so they go when the lease ends even
-- if every process that made them has died. lt:extend pushes the lease's
-- end back on every object. A lifetime that is collected unclosed does not
-- end: other processes may be using its objects; close it, or give it a
-- lease. The local store honours leases at read, and a lifetime that finds
-- its lease over evicts its local objects.
--
-- The C side (src/store/lifetime.c) calls _lease_ms before a put (raising
-- "closed" once the lifetime has ended) and _attach after it.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller

local M = {}

local now = core.monotonic

local Lifetime = {}
Lifetime.__index = Lifetime
Lifetime.__name = "proxystore.Lifetime"

local function config_error(msg, level)
  error(core.error("config", msg), level + 1)
end

-- The longest lease (about 317 years). A lease is kept by the store in
-- milliseconds: past 2^63 ms it had no integer to be written as, and the
-- object was put with no lease at all (and extend raised a Lua error).
local MAX_LEASE = 1e10

local function check_seconds(what, v, level)
  if type(v) ~= "number" or not (v > 0) or v > MAX_LEASE then
    config_error(("%s must be a positive number of seconds, at most %g, got %s")
      :format(what, MAX_LEASE, tostring(v)), level + 1)
  end
end

--- ps.lifetime(opts): opts.lease (seconds) or nothing.
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    config_error("lifetime options must be a table, got " .. type(opts), 2)
  end
  for k in pairs(opts or {}) do
    if k ~= "lease" then
      config_error(("unknown option '%s' for ps.lifetime (lease)"):format(tostring(k)), 2)
    end
  end
  local lease = opts and opts.lease
  if lease ~= nil then check_seconds("lease", lease, 2) end
  return setmetatable({
    _stores = {}, _keys = {}, _n = 0,
    _ends = lease and now() + lease,   -- monotonic time the lease ends
    _closed = false,
  }, Lifetime)
end

-- The store to evict from: the one the object went to, or a store
-- registered under its name since (a store closed and made again).
local function live_store(store)
  if core.store_is_open(store) then return store end
  local again = core.get_store(store.name)
  if again and again.kind == store.kind then return again end
end

-- Forgets every object; with only_local, evicts those of local stores
-- first (a lease that ran out: the other stores dropped them already).
local function finish(self, only_local)
  local first_err
  for i = 1, self._n do
    local store = live_store(self._stores[i])
    if store and (not only_local or store.kind == "local") then
      local ok, err = pcall(store.evict, store, self._keys[i])
      if not ok and first_err == nil then first_err = err end
    end
  end
  self._stores, self._keys, self._n, self._closed = {}, {}, 0, true
  return first_err
end

local function ended(self)
  if self._closed then return true end
  if self._ends and now() >= self._ends then
    finish(self, true)
    return true
  end
  return false
end

local function closed_error(self)
  return core.error("closed", "the lifetime has ended" ..
    (self._ends and now() >= self._ends and " (its lease ran out)" or " (closed)"))
end

function Lifetime:_lease_ms()
  if ended(self) then error(closed_error(self), 0) end
  if not self._ends then return 0 end
  return math.max(1, math.ceil((self._ends - now()) * 1000))
end

function Lifetime:_attach(store, key)
  local n = self._n + 1
  self._n, self._stores[n], self._keys[n] = n, store, key
end

--- True once the lifetime has ended (closed, or its lease ran out).
function Lifetime:done()
  return ended(self)
end

--- Pushes the lease's end back by seconds, on every object.
function Lifetime:extend(seconds)
  check_seconds("extend's argument", seconds, 2)
  if ended(self) then error(closed_error(self), 2) end
  if not self._ends then
    config_error("this lifetime has no lease to extend (ps.lifetime{lease = s})", 2)
  end
  if self._ends + seconds - now() > MAX_LEASE then
    config_error(("extend: a lease may end at most %g s from now"):format(MAX_LEASE), 2)
  end
  self._ends = self._ends + seconds
  local ms = math.max(1, math.ceil((self._ends - now()) * 1000))
  for i = 1, self._n do
    local store = live_store(self._stores[i])
    -- false: not there (a future not set yet, or evicted)
    if store then core.store_expire(store, self._keys[i], ms) end
  end
end

--- Ends the lifetime now: evicts every object attached (idempotent).
function Lifetime:close()
  if self._closed then return end
  local err = finish(self, false)
  if err ~= nil then error(err, 2) end
end

Lifetime.__close = Lifetime.close

function Lifetime:__tostring()
  local state
  if ended(self) then
    state = "ended"
  elseif self._ends then
    state = ("%d objects, lease ends in %.3gs"):format(self._n, self._ends - now())
  else
    state = ("%d objects, no lease"):format(self._n)
  end
  return "proxystore.Lifetime: " .. state
end

return M
