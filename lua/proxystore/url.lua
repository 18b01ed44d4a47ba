-- proxystore.url: store URLs <-> store config tables.
--
--   redis://[user[:pass]@]host[:port][/db][?db=N&prefix=P&timeout=S]
--   unix:///path/to.sock[?db=N&prefix=P&timeout=S&username=U&password=W]
--   file:///abs/dir[?prefix=P]
--   local:
--
-- parse(url) returns a config table with `kind` set ("redis", "file" or
-- "local") and the options the URL names; ps.init_store merges it under the
-- caller's options. format(cfg) turns a config back into a URL where one can
-- say everything about the store's location, else nil and the reason.
-- Bad URLs raise a proxystore error of kind "config".

local M = {}

-- Errors name the user's line, never one of this file's.
do
  local ok, core = pcall(require, "proxystore.core")
  if ok and type(core) == "table" and core.internal_source then
    core.internal_source(debug.getinfo(1, "S").source)
  end
end

local DEFAULT_REDIS_PORT = 6379

-- Errors are proxystore error objects when the C core offers a way to make
-- them, else tables of the same shape, so this module also works alone.
local fallback_mt = {
  __tostring = function(e) return "proxystore: " .. tostring(e.message) end,
}

-- Passwords never reach error messages.
local function redact(url)
  url = url:gsub("^([%a][%w+.-]*://[^/?#@]-:)[^/?#]*@", "%1***@")
  return (url:gsub("([?&]password=)[^&#]*", "%1***"))
end

local function config_error(url, fmt, ...)
  url = redact(url)
  local message = string.format("bad store URL '%s': " .. fmt, url, ...)
  local ok, core = pcall(require, "proxystore.core")
  if ok and type(core) == "table" and type(core.error) == "function" then
    error(core.error("config", message, { address = url }), 3)
  end
  error(setmetatable({ kind = "config", message = message, address = url },
    fallback_mt), 3)
end

-- %XX escapes; a stray '%' is an error rather than a silent literal.
local function decode(url, s, what)
  if s:find("%%") then
    local bad = s:gsub("%%%x%x", ""):find("%%")
    if bad then config_error(url, "bad percent escape in %s", what) end
  end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Escapes everything but RFC 3986 unreserved characters (and '/' in paths).
local function encode(s, keep_slash)
  local pattern = keep_slash and "[^%w%-%._~/]" or "[^%w%-%._~]"
  return (s:gsub(pattern, function(c) return string.format("%%%02X", c:byte()) end))
end

local function to_int(url, s, what, lo, hi)
  if not s:match("^%d+$") then
    config_error(url, "%s must be a number, got '%s'", what, s)
  end
  local n = tonumber(s)
  if n < lo or n > hi then
    config_error(url, "%s must be between %d and %d, got %s", what, lo, hi, s)
  end
  return math.tointeger(n)
end

local function to_seconds(url, s)
  local n = tonumber(s)
  if not n or n < 0 or n ~= n or n == math.huge then
    config_error(url, "timeout must be a non-negative number of seconds, got '%s'", s)
  end
  return n
end

-- Query parameters allowed per scheme, and how to read each.
local query_readers = {
  db = function(url, v) return to_int(url, v, "db", 0, 2 ^ 31 - 1) end,
  timeout = to_seconds,
  prefix = function(_, v) return v end,
  username = function(_, v) return v end,
  password = function(_, v) return v end,
}
local allowed = {
  redis = { db = true, prefix = true, timeout = true },
  unix = { db = true, prefix = true, timeout = true, username = true,
           password = true },
  file = { prefix = true },
}

local function parse_query(url, scheme, query, cfg)
  if query == nil or query == "" then return end
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then config_error(url, "query parameter '%s' has no value", pair) end
    k = decode(url, k, "a query parameter")
    if not allowed[scheme][k] then
      config_error(url, "unknown parameter '%s' for %s:", k, scheme)
    end
    if cfg[k] ~= nil then config_error(url, "'%s' given twice", k) end
    cfg[k] = query_readers[k](url, decode(url, v, k))
  end
end

-- Splits "path?query" (no fragments: '#' has no meaning for a store).
local function split_query(url, rest)
  if rest:find("#", 1, true) then config_error(url, "a store URL has no '#fragment'") end
  local path, query = rest:match("^([^?]*)%??(.*)$")
  return path, query
end

local function parse_redis(url, rest)
  local authority, tail = rest:match("^([^/?]*)(.*)$")
  local cfg = { kind = "redis" }
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  if userinfo then
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then user = userinfo end
    if user ~= "" then cfg.username = decode(url, user, "the user name") end
    if pass then cfg.password = decode(url, pass, "the password") end
  else
    hostport = authority
  end
  local host, port
  if hostport:sub(1, 1) == "[" then
    host, port = hostport:match("^%[([%x:.%%%w]+)%]:?(%d*)$")
    if not host then config_error(url, "bad IPv6 address '%s'", hostport) end
    if hostport:sub(-1) == ":" then config_error(url, "empty port") end
  else
    if select(2, hostport:gsub(":", "")) > 1 then
      config_error(url, "an IPv6 address must be in brackets: [%s]", hostport)
    end
    host, port = hostport:match("^([^:]*):?(.*)$")
    if hostport:sub(-1) == ":" then config_error(url, "empty port") end
  end
  if host == "" then config_error(url, "missing host") end
  if not host:match("^[%w%-%._:%%]+$") then
    config_error(url, "bad host '%s'", host)
  end
  cfg.host = host
  cfg.port = port ~= "" and to_int(url, port, "port", 1, 65535) or DEFAULT_REDIS_PORT
  local path, query = split_query(url, tail)
  if path ~= "" and path ~= "/" then
    local db = path:match("^/([^/]+)$")
    if not db then config_error(url, "the path must be a database number, got '%s'", path) end
    cfg.db = to_int(url, db, "db", 0, 2 ^ 31 - 1)
  end
  local q = {}
  parse_query(url, "redis", query, q)
  if q.db and cfg.db and q.db ~= cfg.db then
    config_error(url, "db given twice")
  end
  for k, v in pairs(q) do cfg[k] = v end
  return cfg
end

-- file:///p and unix:///p: an empty authority (or "localhost") and an
-- absolute path.
local function parse_local_path(url, scheme, rest, what)
  local authority, tail = rest:match("^([^/?#]*)(.*)$")
  if authority ~= "" and authority:lower() ~= "localhost" then
    config_error(url, "%s must be absolute: %s:///%s (got host '%s')",
      what, scheme, authority .. tail, authority)
  end
  local path, query = split_query(url, tail)
  path = decode(url, path, what)
  if path == "" then config_error(url, "empty %s", what) end
  if path:sub(1, 1) ~= "/" then config_error(url, "%s must be absolute", what) end
  if path:find("\0", 1, true) then config_error(url, "%s contains NUL", what) end
  if #path > 1 then path = path:gsub("/+$", "") end
  return path, query
end

local function parse_unix(url, rest)
  local path, query = parse_local_path(url, "unix", rest, "the socket path")
  local cfg = { kind = "redis", path = path }
  parse_query(url, "unix", query, cfg)
  return cfg
end

local function parse_file(url, rest)
  local dir, query = parse_local_path(url, "file", rest, "the directory")
  local cfg = { kind = "file", dir = dir }
  parse_query(url, "file", query, cfg)
  return cfg
end

--- The URL without a password (in its user info or its query): a name
-- that can be shown and logged.
function M.without_password(url)
  url = url:gsub("^([%a][%w+.-]*://[^/?#@]-):[^/?#]*@", "%1@")
  url = url:gsub("([?&])password=[^&#]*&?", "%1")
  return (url:gsub("[?&]$", ""))
end

--- True when s looks like a store URL rather than a kind.
function M.is_url(s)
  return type(s) == "string" and (s:find("://", 1, true) ~= nil or s:lower() == "local:")
end

--- Parses a store URL into a config table with `kind` set.
function M.parse(url)
  if type(url) ~= "string" then
    config_error(tostring(url), "a URL must be a string, got %s", type(url))
  end
  local scheme, rest = url:match("^(%a[%w+.-]*):(.*)$")
  if not scheme then config_error(url, "no scheme (redis://, unix://, file://, local:)") end
  scheme = scheme:lower()
  if scheme == "local" then
    if rest ~= "" and rest ~= "//" then
      config_error(url, "local: takes nothing after the colon")
    end
    return { kind = "local" }
  end
  local after = rest:match("^//(.*)$")
  if not after then config_error(url, "expected %s://", scheme) end
  if scheme == "redis" then return parse_redis(url, after) end
  if scheme == "unix" then return parse_unix(url, after) end
  if scheme == "file" then return parse_file(url, after) end
  config_error(url, "unknown scheme '%s' (redis://, unix://, file://, local:)", scheme)
end

local function query_string(cfg, keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = cfg[k]
    if v ~= nil then
      parts[#parts + 1] = k .. "=" .. encode(tostring(v))
    end
  end
  return #parts > 0 and "?" .. table.concat(parts, "&") or ""
end

--- A URL for the config's store location, or nil and the reason.
-- Store-level options (name, cache_size, serializers) are not part of it.
function M.format(cfg)
  if type(cfg) ~= "table" then return nil, "a config must be a table" end
  local kind = cfg.kind
  if kind == "local" then return "local:" end
  if kind == "file" then
    local dir = cfg.dir
    if type(dir) ~= "string" or dir:sub(1, 1) ~= "/" then
      return nil, "a file store URL needs an absolute dir"
    end
    return "file://" .. encode(dir, true) .. query_string(cfg, { "prefix" })
  end
  if kind == "redis" then
    if cfg.path then
      return "unix://" .. encode(cfg.path, true) ..
        query_string(cfg, { "db", "prefix", "timeout", "username", "password" })
    end
    local host = cfg.host or cfg.hostname
    if type(host) ~= "string" or host == "" then
      return nil, "a redis store URL needs a host or a path"
    end
    if host:find(":", 1, true) then host = "[" .. host .. "]" end
    local auth = ""
    if cfg.username or cfg.password then
      auth = encode(cfg.username or "")
      if cfg.password then auth = auth .. ":" .. encode(cfg.password) end
      auth = auth .. "@"
    end
    local db = cfg.db and cfg.db ~= 0 and "/" .. tostring(math.tointeger(cfg.db) or cfg.db) or ""
    return "redis://" .. auth .. host .. ":" .. tostring(cfg.port or DEFAULT_REDIS_PORT) ..
      db .. query_string(cfg, { "prefix", "timeout" })
  end
  return nil, string.format("no URL form for store kind '%s'", tostring(kind))
end

return M
