-- Stores for specs that run the same behaviour on every kind: one
-- redis-server and one temporary directory for the whole file, fresh
-- stores with names and prefixes of their own, all closed after each spec.
--
--   local fixture = require("helpers.stores").new("future", { cache_size = 0 })
--   setup(function() fixture:start() end)          -- fixture.srv, fixture.dir
--   teardown(function() fixture:stop() end)
--   after_each(function() fixture:reset() end)     -- closes the stores
--   local s = fixture:store("redis", { timeout = 1 })
local redis = require "helpers.redis"
local shell = require "helpers.shell"
local ps = require "proxystore"

local M = {}

local Fixture = {}
Fixture.__index = Fixture

-- name: the spec's word for its stores and temp dir; defaults: options
-- every store of this fixture gets unless the spec gives them.
function M.new(name, defaults)
  return setmetatable({ name = name, defaults = defaults or {}, serial = 0,
                        stores = {} }, Fixture)
end

function Fixture:start()
  self.srv = redis.start()
  self.dir = shell.tempdir(self.name)
end

function Fixture:close_stores()
  for _, s in ipairs(self.stores) do pcall(s.close, s) end
  self.stores = {}
end

function Fixture:stop()
  self:close_stores()
  if self.srv then self.srv:stop() end
  if self.dir then shell.rmtree(self.dir) end
end

-- After each spec: its stores closed, and a server a spec stopped (SIGSTOP)
-- or killed running again for the next.
function Fixture:reset()
  self:close_stores()
  if self.srv.pid then self.srv:resume() else self.srv:restart() end
end

function Fixture:store(kind, opts)
  self.serial = self.serial + 1
  local n = self.serial
  local o = { name = self.name .. "-spec-" .. n }
  for k, v in pairs(self.defaults) do o[k] = v end
  if kind == "redis" then
    o.host, o.port, o.timeout = self.srv.host, self.srv.port, 5
    o.prefix = self.name .. n .. ":"
  elseif kind == "file" then
    o.dir = self.dir .. "/s" .. n
  end
  for k, v in pairs(opts or {}) do o[k] = v end
  local s = ps.init_store(kind, o)
  self.stores[#self.stores + 1] = s
  return s
end

return M
