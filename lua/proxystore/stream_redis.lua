-- proxystore.stream_redis: the Redis broker of proxystore.stream. A topic
-- is a Redis stream (key: the broker URL's prefix, then the topic name);
-- every command goes through the groups module (core.redis_groups, C), the
-- one client of Redis streams and consumer groups in proxystore.
--
-- The broker interface (proxystore.stream_local has the same):
--   b:add(topic, events, maxlen)         events: field tables; one round trip
--   b:last(topic) -> entry | nil         the newest entry
--   b:read(topic, after, count, block)   entries after an id, every reader
--   b:create_group(topic, group, from_start)
--   b:read_group(topic, group, name, acks, from, count, block)
--                                        acks first, then the group's new
--                                        entries (from ">") or the name's
--                                        pending ones after the id from
--   b:ack(topic, group, ids)
--   b:reclaim(topic, group, name, idle, count, cursor) -> entries, cursor
--   b:end_delivered(topic, group, is_end) -> bool: the topic's last entry
--                                        is an end event the group has had
--   b:pending_count(topic, group) -> n
--   b:release(topic, group, name, ids)   a closing consumer's unread entries
--   b:touch(topic, group, name, id) -> bool   restarts an entry's idle time
--                                        if it is still name's
--   b.can_wait, b.first_id, b.address, b:close()
-- Entries are {id = ..., fields = {...}} or {id = ..., deleted = true}.
--
-- A server restarted without persistence has lost the stream and its
-- groups: a group call that meets NOGROUP (kind "missing_key") makes the
-- group again, from the start of the (new) stream, and tries once more.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller

local M = {}

local Broker = {}
Broker.__index = Broker

-- How long one held read may be (the groups module's bound is a day).
local MAX_BLOCK = 3600

function M.new(cfg)
  local g = core.redis_groups {
    host = cfg.host, port = cfg.port, path = cfg.path, db = cfg.db,
    username = cfg.username, password = cfg.password, timeout = cfg.timeout,
  }
  return setmetatable({
    g = g, prefix = cfg.prefix or "", can_wait = true, first_id = "0-0",
    address = g:address(),
  }, Broker)
end

function Broker:key(topic)
  return self.prefix .. topic
end

function Broker:close()
  self.g:close()
end

function Broker:add(topic, events, maxlen)
  self.g:add(self:key(topic), events, maxlen and { maxlen = maxlen })
end

function Broker:last(topic)
  return self.g:revrange(self:key(topic), "+", "-", 1)[1]
end

local function block_arg(block)
  if block == nil or block <= 0.0005 then return nil end
  return block > MAX_BLOCK and MAX_BLOCK or block
end

function Broker:read(topic, after, count, block)
  return (self.g:read(self:key(topic), after, count, block_arg(block)))
end

function Broker:create_group(topic, group, from_start)
  self.g:create_group(self:key(topic), group, from_start and "0" or "$")
end

-- fn(), and once more after making the group again when the server says
-- it has no such group (or stream).
function Broker:regroup(topic, group, fn)
  local ok, res, res2 = pcall(fn)
  if ok then return res, res2 end
  if type(res) ~= "table" or res.kind ~= "missing_key" then error(res, 0) end
  self.g:create_group(self:key(topic), group, "0")
  return fn()
end

function Broker:read_group(topic, group, name, acks, from, count, block)
  local key, g = self:key(topic), self.g
  return (self:regroup(topic, group, function()
    return g:ack_read_group(key, group, name, acks, from, count, block_arg(block))
  end))
end

function Broker:ack(topic, group, ids)
  if #ids > 0 then self.g:ack(self:key(topic), group, ids) end
end

function Broker:reclaim(topic, group, name, idle, count, cursor)
  local key, g = self:key(topic), self.g
  return self:regroup(topic, group, function()
    return g:reclaim(key, group, name, idle, count, cursor)
  end)
end

-- "ms-seq" ids compared as the pairs of integers they are (decimal strings
-- without leading zeros: the longer is the larger).
local function id_le(a, b)
  local am, as = a:match("^(%d+)%-(%d+)$")
  local bm, bs = b:match("^(%d+)%-(%d+)$")
  if not am or not bm then return false end
  if am ~= bm then
    if #am ~= #bm then return #am < #bm end
    return am < bm
  end
  if #as ~= #bs then return #as < #bs end
  return as <= bs
end
M.id_le = id_le

function Broker:end_delivered(topic, group, is_end)
  local last = self:last(topic)
  if not last or not is_end(last) then return false end
  local key, g = self:key(topic), self.g
  local info = self:regroup(topic, group, function()
    return g:group_info(key, group)
  end)
  return id_le(last.id, info.last_delivered)
end

function Broker:pending_count(topic, group)
  local key, g = self:key(topic), self.g
  return (self:regroup(topic, group, function()
    return g:pending_summary(key, group)
  end))
end

function Broker:touch(topic, group, name, id)
  return self.g:touch(self:key(topic), group, name, { id })[1]
end

-- Entries a closing consumer took but never returned stay pending under
-- its name: the same name gets them first when it comes back, any other
-- consumer of the group after the visibility.
function Broker.release() end

return M
