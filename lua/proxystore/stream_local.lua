-- proxystore.stream_local: the "local:" broker of proxystore.stream, for
-- tests and pipelines inside one process. Topics live in this Lua state,
-- with the Redis broker's semantics (proxystore.stream_redis describes the
-- interface): entries in order with increasing integer ids, readers that
-- each see every entry, groups that split them, pending entries per
-- consumer, acknowledgements, reclaiming after an idle time, trimming by
-- maxlen only.
--
-- Nothing else in the process can add an entry while a consumer waits, so
-- the broker never waits (can_wait = false). A consumer that closes, or
-- is collected, releases the entries it took and never returned: the
-- group's next reclaim hands them to another consumer at once.

local core = require "proxystore.core"
core.internal_source(debug.getinfo(1, "S").source)   -- errors name the caller

local now = core.monotonic

local M = {}

local Broker = {}
Broker.__index = Broker

local topics = {}   -- name -> {ent = {[id] = fields}, first, seq, groups}

local function topic_of(name)
  local t = topics[name]
  if not t then
    t = { ent = {}, first = 1, seq = 0, groups = {} }
    topics[name] = t
  end
  return t
end

function M.new()
  return setmetatable({ can_wait = false, first_id = 0, address = "local:" },
    Broker)
end

function Broker.close() end

function Broker.add(_, topic, events, maxlen)
  local t = topic_of(topic)
  for _, fields in ipairs(events) do
    t.seq = t.seq + 1
    t.ent[t.seq] = fields
  end
  if maxlen then
    while t.seq - t.first + 1 > maxlen do
      t.ent[t.first] = nil
      t.first = t.first + 1
    end
  end
end

function Broker.last(_, topic)
  local t = topics[topic]
  if not t or t.seq < t.first then return nil end
  return { id = t.seq, fields = t.ent[t.seq] }
end

function Broker.read(_, topic, after, count)
  local t = topics[topic]
  local out = {}
  if not t then return out end
  local i = math.max(after + 1, t.first)
  while i <= t.seq and #out < count do
    out[#out + 1] = { id = i, fields = t.ent[i] }
    i = i + 1
  end
  return out
end

local function group_of(t, name)
  local gr = t.groups[name]
  if not gr then
    gr = { last = 0, pending = {} }   -- pending: id -> {name, at, deliveries}
    t.groups[name] = gr
  end
  return gr
end

function Broker.create_group(_, topic, group, from_start)
  local t = topic_of(topic)
  if not t.groups[group] then
    group_of(t, group).last = from_start and 0 or t.seq
  end
end

local function entry(t, id)
  local f = t.ent[id]
  if f == nil then return { id = id, deleted = true } end
  return { id = id, fields = f }
end

function Broker:ack(topic, group, ids)
  local gr = group_of(topic_of(topic), group)
  for _, id in ipairs(ids) do gr.pending[id] = nil end
end

-- The pending ids of gr that pass keep(p), in order.
local function pending_ids(gr, keep)
  local ids = {}
  for id, p in pairs(gr.pending) do
    if keep(p) then ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

function Broker:read_group(topic, group, name, acks, from, count)
  self:ack(topic, group, acks)
  local t = topic_of(topic)
  local gr = group_of(t, group)
  local out = {}
  if from == ">" then
    local i = math.max(gr.last + 1, t.first)
    while i <= t.seq and #out < count do
      gr.pending[i] = { name = name, at = now(), deliveries = 1 }
      out[#out + 1] = entry(t, i)
      gr.last = i
      i = i + 1
    end
    return out
  end
  for _, id in ipairs(pending_ids(gr, function(p) return p.name == name end)) do
    if id > from and #out < count then out[#out + 1] = entry(t, id) end
  end
  return out
end

function Broker:reclaim(topic, group, name, idle, count)
  local t = topic_of(topic)
  local gr = group_of(t, group)
  local limit = now() - idle
  local out = {}
  for _, id in ipairs(pending_ids(gr, function(p) return p.at <= limit end)) do
    if #out >= count then break end
    local p = gr.pending[id]
    if t.ent[id] == nil then
      gr.pending[id] = nil   -- trimmed while pending: nobody can read it
    else
      p.name, p.at, p.deliveries = name, now(), p.deliveries + 1
      local e = entry(t, id)
      e.deliveries = p.deliveries
      out[#out + 1] = e
    end
  end
  return out, 0
end

function Broker.end_delivered(_, topic, group, is_end)
  local t = topics[topic]
  if not t or t.seq < t.first then return false end
  local last = { id = t.seq, fields = t.ent[t.seq] }
  return is_end(last) and group_of(t, group).last >= t.seq
end

function Broker.pending_count(_, topic, group)
  local n = 0
  for _ in pairs(group_of(topic_of(topic), group).pending) do n = n + 1 end
  return n
end

function Broker.touch(_, topic, group, name, id)
  local p = group_of(topic_of(topic), group).pending[id]
  if not p or p.name ~= name then return false end
  p.at = now()
  return true
end

function Broker.release(_, topic, group, name, ids)
  local gr = group_of(topic_of(topic), group)
  for _, id in ipairs(ids) do
    local p = gr.pending[id]
    if p and p.name == name then p.at = -math.huge end
  end
end

return M
