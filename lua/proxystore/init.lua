-- proxystore: lazy object proxies that resolve themselves from a store.
--
-- The public face over the C core (proxystore.core): options, defaults,
-- URLs and ProxyStore's one-call init_*_backend API. Hot paths live in C.

local core = require "proxystore.core"
-- Errors name the user's line, never one of this file's.
core.internal_source(debug.getinfo(1, "S").source)

local M = { _VERSION = core._VERSION }

for _, name in ipairs {
  "proxy", "is_proxy", "is_resolved", "resolve", "resolve_async", "extract",
  "type", "key", "repr", "serialize", "deserialize", "is_error", "clone",
} do
  M[name] = core[name]
end

--- ps.lifetime(opts): objects evicted together (see proxystore.lifetime).
M.lifetime = require("proxystore.lifetime").new

local function config_error(fmt, ...)
  error(core.error("config", fmt:format(...)), 3)
end

-- Options each kind accepts (besides the common ones), with their types.
local COMMON = {
  name = "string", kind = "string", cache_size = "number", cache_bytes = "number",
  serializer = "string|function", deserializer = "function",
  instance = "string",
}
local KIND_OPTIONS = {
  ["local"] = {},
  redis = {
    host = "string", hostname = "string", port = "number", path = "string",
    db = "number", username = "string", password = "string",
    timeout = "number", prefix = "string", cluster = "table",
  },
  file = { dir = "string", prefix = "string", clear = "boolean", recycle = "number" },
}

local function check_type(name, value, expected)
  local t = type(value)
  for want in expected:gmatch("[^|]+") do
    if t == want then return end
  end
  config_error("option '%s' must be a %s, got %s", name,
    expected:gsub("|", " or "), t)
end

local function cache_size_default()
  local env = os.getenv("PROXYSTORE_CACHE_SIZE")
  if env == nil or env == "" then return 16 end
  local n = math.tointeger(tonumber(env))
  if n == nil or n < 0 then
    config_error("PROXYSTORE_CACHE_SIZE must be a non-negative integer, got '%s'", env)
  end
  return n
end

-- A Redis Cluster's seed nodes: a list of "host:port" ("[v6]:port"),
-- copied, so the caller's table can change without changing the store.
local function cluster_option(cfg)
  local list, n = cfg.cluster, 0
  for _ in pairs(list) do n = n + 1 end
  if n == 0 or n ~= #list then
    config_error("option 'cluster' must be a list of \"host:port\" strings")
  end
  for _, k in ipairs { "host", "hostname", "path", "port" } do
    if cfg[k] ~= nil then
      config_error("give either cluster (its nodes) or %s, not both", k)
    end
  end
  if cfg.db ~= nil and cfg.db ~= 0 then
    config_error("a Redis Cluster has only db 0, got db %s", tostring(cfg.db))
  end
  local seeds = {}
  for i, v in ipairs(list) do
    local port = type(v) == "string" and
      (v:match("^%[[%x:.%%%w]+%]:(%d+)$") or v:match("^[%w%-%._%%]+:(%d+)$"))
    port = port and math.tointeger(tonumber(port))
    if not port or port < 1 or port > 65535 then
      config_error("option 'cluster': entry %d must be \"host:port\", got %s", i,
        type(v) == "string" and ("'" .. v .. "'") or type(v))
    end
    seeds[i] = v
  end
  cfg.cluster = seeds
end

local function integer_option(cfg, name, lo, hi)
  local v = cfg[name]
  if v == nil then return end
  local n = math.tointeger(v)
  if n == nil or n < lo or (hi and n > hi) then
    config_error("option '%s' must be an integer in [%d, %s], got %s",
      name, lo, hi and tostring(hi) or "inf", tostring(v))
  end
  cfg[name] = n
end

-- Builds the normalized config table the C core takes, plus the custom
-- serializer pair (functions never go into a config: configs travel).
local function normalize(kind, opts)
  if opts ~= nil and type(opts) ~= "table" then
    config_error("options must be a table, got %s", type(opts))
  end
  opts = opts or {}
  if type(kind) ~= "string" then
    config_error("store kind must be a string, got %s", type(kind))
  end
  local cfg = {}
  local url = require "proxystore.url"
  if url.is_url(kind) then
    for k, v in pairs(url.parse(kind)) do cfg[k] = v end
    kind = cfg.kind
  end
  local allowed = KIND_OPTIONS[kind]
  if not allowed then
    config_error("unknown store kind '%s' (local, redis, file or a URL)", kind)
  end
  for k, v in pairs(opts) do
    local expected = COMMON[k] or allowed[k]
    if not expected then
      config_error("unknown option '%s' for a %s store", tostring(k), kind)
    end
    check_type(k, v, expected)
    cfg[k] = v
  end
  if opts.kind ~= nil and opts.kind ~= kind then
    config_error("option kind '%s' does not match '%s'", opts.kind, kind)
  end
  cfg.kind = kind
  cfg.name = cfg.name or kind
  if cfg.name == "" then config_error("store name must not be empty") end
  if cfg.cache_size == nil then cfg.cache_size = cache_size_default() end
  integer_option(cfg, "cache_size", 0)
  integer_option(cfg, "cache_bytes", 0)

  local ser, deser = cfg.serializer, cfg.deserializer
  cfg.deserializer = nil
  if type(ser) == "function" or deser ~= nil then
    if type(ser) ~= "function" or type(deser) ~= "function" then
      config_error("a custom serializer needs both serializer and deserializer functions")
    end
    cfg.serializer = "custom"
  else
    cfg.serializer = ser or "native"
    if cfg.serializer == "custom" then
      config_error("this config comes from a store with a custom serializer: " ..
        "pass serializer and deserializer functions to recreate it")
    end
    if cfg.serializer ~= "native" and cfg.serializer ~= "json" then
      config_error("unknown serializer '%s' (native, json, or a function pair)", cfg.serializer)
    end
    ser, deser = nil, nil
  end

  if kind == "redis" then
    for _, k in ipairs { "host", "hostname", "path" } do
      if cfg[k] == "" then
        config_error("option '%s' must not be empty (leave it out for the default)", k)
      end
    end
    if cfg.hostname and cfg.host and cfg.hostname ~= cfg.host then
      config_error("host and hostname differ ('%s', '%s')", cfg.host, cfg.hostname)
    end
    if cfg.cluster ~= nil then cluster_option(cfg) end
    cfg.host = cfg.host or cfg.hostname
    cfg.hostname = nil
    if not cfg.path and not cfg.cluster then cfg.host = cfg.host or "127.0.0.1" end
    if cfg.path and cfg.host then
      config_error("give either host/port or path (a Unix socket), not both")
    end
    if cfg.host then cfg.port = cfg.port or 6379 end
    integer_option(cfg, "port", 1, 65535)
    -- Redis numbers databases with a C int; the core refuses more too.
    integer_option(cfg, "db", 0, 2147483647)
    if cfg.username and not cfg.password then
      config_error("option 'username' needs 'password' too (AUTH takes both)")
    end
    if cfg.timeout == nil then cfg.timeout = 5 end
    local t = cfg.timeout
    if t ~= t or t < 0 or t > 1e9 then
      config_error("timeout must be a number of seconds in [0, 1e9], got %s", tostring(t))
    end
  elseif kind == "file" then
    if not cfg.dir or cfg.dir == "" then config_error("a file store needs option 'dir'") end
    integer_option(cfg, "recycle", 0, 64)   -- a relative dir: see store.c
  elseif kind == "local" then
    -- Always a new instance: proxies of a closed local store must not
    -- resolve against a new, empty one re-created from its config.
    cfg.instance = core.random_key()
  end
  return cfg, ser, deser
end

-- The function pair of each store made with one (configs carry only the
-- word "custom"), so that reusing a store can tell the pairs apart.
local custom_pairs = setmetatable({}, { __mode = "k" })

local function new_store(cfg, ser, deser)
  local store = core.new_store(cfg, ser, deser)
  if ser then custom_pairs[store] = { ser, deser } end
  return store
end

--- Creates and registers a store. kind: "local", "redis", "file" or a URL.
function M.init_store(kind, opts)
  return new_store(normalize(kind, opts))
end

--- The registered store called name, or nil.
function M.get_store(name)
  return core.get_store(name)
end

-- A proxy from another process names a store that may not exist here:
-- create it from the config it carries, never with a destructive option.
core.set_store_factory(function(cfg)
  local copy = {}
  for k, v in pairs(cfg) do copy[k] = v end
  copy.clear = nil
  if copy.serializer == "custom" then copy.serializer = nil end
  return M.init_store(copy.kind, copy)
end)

-- ---- ProxyStore's one-call init_*_backend API -------------------------

local default_store

-- The first option whose value differs between two normalized configs,
-- or nil ("instance" is a local store's identity, not an option).
local function same_value(x, y)
  if type(x) == "table" and type(y) == "table" then   -- cluster: a list
    if #x ~= #y then return false end
    for i = 1, #x do
      if x[i] ~= y[i] then return false end
    end
    return true
  end
  return x == y
end

-- Options a config may leave out, and what it then means.
local IMPLIED = { cache_bytes = core.cache_bytes_default }

local function differing_option(a, b)
  for _, pair in ipairs { { a, b }, { b, a } } do
    for k, v in pairs(pair[1]) do
      local w = pair[2][k]
      if w == nil then w = IMPLIED[k] end
      if k ~= "instance" and not same_value(w, v) then return k end
    end
  end
end

local function shown(k, v)
  if v == nil then return "none" end
  if type(v) == "table" then return table.concat(v, ",") end
  return k == "password" and "(hidden)" or tostring(v)
end

-- Called again with the same options, init_*_backend hands back the store
-- it made; with other options (another port, db, ...) that store is not
-- what the caller asks for, so that is an error rather than a surprise.
local function init_default(kind, opts)
  local cfg, ser, deser = normalize(kind, opts)
  local existing = core.get_store(cfg.name)
  if existing and existing.kind == cfg.kind then
    local have = existing:config()
    local k = differing_option(have, cfg)
    if k then
      config_error("a %s store named '%s' is already registered with other " ..
        "options (%s: %s, asked for %s): close it or choose another name",
        cfg.kind, cfg.name, k, shown(k, have[k]), shown(k, cfg[k]))
    end
    local pair = custom_pairs[existing]
    if ser and not (pair and pair[1] == ser and pair[2] == deser) then
      config_error("a %s store named '%s' is already registered with other " ..
        "serializer functions: close it or choose another name", cfg.kind, cfg.name)
    end
    default_store = existing
  else
    default_store = new_store(cfg, ser, deser)
  end
  return default_store
end

--- Creates (or reuses) a local store and makes it the default for to_proxy.
function M.init_local_backend(opts)
  return init_default("local", opts)
end

--- Creates (or reuses) a Redis store and makes it the default for to_proxy.
function M.init_redis_backend(opts)
  return init_default("redis", opts)
end

--- The default store set by init_*_backend, or nil.
function M.default_store()
  return default_store
end

--- Puts obj in the default store and returns a proxy (opts: key, evict, strict).
function M.to_proxy(obj, opts)
  if default_store == nil then
    error(core.error("config",
      "no default store: call ps.init_local_backend() or ps.init_redis_backend() first"), 2)
  end
  return default_store:proxy(obj, opts)
end

--- Large strings and tables of this Lua state on huge pages and a warm
--- cache of freed blocks (a 100 MiB resolve pays fewer page faults). The
--- state's allocator is its host's: this is the host's choice, never done
--- by require. True when installed (or already), false when it cannot be.
function M.use_big_allocator()
  return core.use_big_allocator()
end

--- A pool of worker processes (see proxystore.pool), or with opts.queue a
--- pool whose tasks go through Redis to workers anywhere (proxystore.queue).
function M.pool(opts)
  if type(opts) == "table" and opts.queue ~= nil then
    return require("proxystore.queue").new(opts)
  end
  return require("proxystore.pool").new(opts)
end

--- Streams of proxies: producers and consumers (see proxystore.stream).
M.stream = {
  producer = function(opts) return require("proxystore.stream").producer(opts) end,
  consumer = function(topic, opts)
    return require("proxystore.stream").consumer(topic, opts)
  end,
}

return M
