-- proxystore.url: store URLs <-> store config tables.
--
--   redis://[user[:pass]@]host[:port][/db][?db=N&prefix=P&timeout=S]
--   redis+cluster://[user[:pass]@]host[:port][,host[:port]...][?prefix=P&timeout=S]
--   unix:///path/to.sock[?db=N&prefix=P&timeout=S&username=U&password=W]
--   file:///abs/dir[?prefix=P]
--   local:
--
-- parse(url) returns a config table with `kind` set ("redis", "file" or
-- "local") and the options the URL names; ps.init_store merges it under the
-- caller's options. format(cfg) turns a config back into a URL where one can
-- say everything about the store's location, else nil and the reason.
-- Bad URLs raise a proxystore error of kind "config", whose message and
-- address never hold a password: redact(url) shows a URL with everything
-- between "://" and the last '@', and any password parameter, as "***";
-- without_password(url) is a name for the URL's store.

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

-- %XX escapes decoded, anything else kept (for reading parameter names
-- while redacting, where a bad escape must not raise).
local function loose_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The query parameters a store URL may hold besides a password.
local PLAIN_PARAMS = { db = true, prefix = true, timeout = true, username = true }

-- A query parameter name that means a password.
local function is_password_name(name)
  return loose_decode(name):lower():find("pass", 1, true) ~= nil
end

-- Where a URL may hold a secret, as a set of byte positions:
--   * everything between "://" and the last '@' (a password may hold
--     '/', '?', '#', '@' or ':' unencoded, so no '@' before the last one
--     can be trusted to end it: the user name goes too), except in a
--     file:/// or unix:/// URL, whose empty authority has no user info;
--   * the value of the first query parameter named like a password, up to
--     the end of the URL (an unencoded '&' or '#' may be part of it).
local function secret_positions(url)
  local secret, any = {}, false
  local _, slashes = url:find("://", 1, true)
  local scheme = slashes and url:sub(1, slashes - 3):lower()
  if slashes and url:sub(slashes + 1, slashes + 1) == "/" and
      (scheme == "file" or scheme == "unix") then
    slashes = nil
  end
  if slashes then
    local last_at
    for i = slashes + 1, #url do
      if url:byte(i) == 64 then last_at = i end   -- '@'
    end
    if last_at and last_at > slashes + 1 then
      for i = slashes + 1, last_at - 1 do secret[i] = true end
      any = true
    end
  end
  for name, value in url:gmatch("[?&;]([^=&?#;]*)=()") do
    if is_password_name(name) then
      for i = value, #url do secret[i] = true end
      any = any or value <= #url
      break
    end
  end
  return any and secret or nil
end

-- The URL with each run of secret bytes replaced by "***": safe to show
-- and log.
local function redact(url)
  local secret = secret_positions(url)
  if not secret then return url end
  local out, i = {}, 1
  while i <= #url do
    if secret[i] then
      out[#out + 1] = "***"
      while secret[i] do i = i + 1 end
    else
      local j = i
      while j <= #url and not secret[j] do j = j + 1 end
      out[#out + 1] = url:sub(i, j - 1)
      i = j
    end
  end
  return table.concat(out)
end
M.redact = redact

-- A part of the URL quoted in a message. config_error shows it only when
-- the URL holds no secret, or when the redacted URL shows the same text
-- anyway: a fragment of a password never reaches a message.
local PIECE = {}
local function piece(s)
  return setmetatable({ s = tostring(s) }, PIECE)
end

local function config_error(url, fmt, ...)
  local shown = redact(url)
  local has_secret = shown ~= url
  local args = table.pack(...)
  for i = 1, args.n do
    local a = args[i]
    if getmetatable(a) == PIECE then
      args[i] = (not has_secret or shown:find(a.s, 1, true)) and a.s or "***"
    end
  end
  local message = string.format("bad store URL '%s': " .. fmt, shown,
    table.unpack(args, 1, args.n))
  local ok, core = pcall(require, "proxystore.core")
  if ok and type(core) == "table" and type(core.error) == "function" then
    error(core.error("config", message, { address = shown }), 3)
  end
  error(setmetatable({ kind = "config", message = message, address = shown },
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
    config_error(url, "%s must be a number, got '%s'", what, piece(s))
  end
  local n = tonumber(s)
  if n < lo or n > hi then
    config_error(url, "%s must be between %d and %d, got %s", what, lo, hi, piece(s))
  end
  return math.tointeger(n)
end

local function to_seconds(url, s)
  local n = tonumber(s)
  if not n or n < 0 or n ~= n or n == math.huge then
    config_error(url, "timeout must be a non-negative number of seconds, got '%s'", piece(s))
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
  ["redis+cluster"] = { prefix = true, timeout = true },
}

local function parse_query(url, scheme, query, cfg)
  if query == nil or query == "" then return end
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then config_error(url, "query parameter '%s' has no value", piece(pair)) end
    k = decode(url, k, "a query parameter")
    if not allowed[scheme][k] then
      config_error(url, "unknown parameter '%s' for %s:", piece(k), scheme)
    end
    if cfg[k] ~= nil then config_error(url, "'%s' given twice", piece(k)) end
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
  -- An '@' only after the first '/' or '?': most likely a password with
  -- one of those unencoded, which cut the authority short. Errors about
  -- the host then say how to write it.
  local hint = ""
  if not authority:find("@", 1, true) and tail:find("@", 1, true) then
    hint = " (a '/', '?' or '#' in a user name or password must be " ..
      "percent-encoded: %2F, %3F, %23)"
  end
  local function host_error(fmt, ...)
    config_error(url, fmt .. "%s", ...)
  end
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
    if not host then host_error("bad IPv6 address '%s'", piece(hostport), hint) end
    if hostport:sub(-1) == ":" then host_error("empty port", hint) end
  else
    if select(2, hostport:gsub(":", "")) > 1 then
      host_error("an IPv6 address must be in brackets: [%s]", piece(hostport), hint)
    end
    host, port = hostport:match("^([^:]*):?(.*)$")
    if hostport:sub(-1) == ":" then host_error("empty port", hint) end
  end
  if host == "" then host_error("missing host", hint) end
  if not host:match("^[%w%-%._:%%]+$") then
    host_error("bad host '%s'", piece(host), hint)
  end
  if port ~= "" and not port:match("^%d+$") then
    host_error("port must be a number, got '%s'", piece(port), hint)
  end
  cfg.host = host
  cfg.port = port ~= "" and to_int(url, port, "port", 1, 65535) or DEFAULT_REDIS_PORT
  local path, query = split_query(url, tail)
  if path ~= "" and path ~= "/" then
    local db = path:match("^/([^/]+)$")
    if not db then
      host_error("the path must be a database number, got '%s'", piece(path), hint)
    end
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

-- redis+cluster://[user[:pass]@]node[,node...]: the seed nodes of a Redis
-- Cluster (any that answers will do), as cfg.cluster = {"host:port", ...}.
local function parse_cluster(url, rest)
  local authority, tail = rest:match("^([^/?]*)(.*)$")
  local cfg = { kind = "redis", cluster = {} }
  local userinfo, hosts = authority:match("^(.*)@([^@]*)$")
  if userinfo then
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then user = userinfo end
    if user ~= "" then cfg.username = decode(url, user, "the user name") end
    if pass then cfg.password = decode(url, pass, "the password") end
  else
    hosts = authority
  end
  for node in (hosts .. ","):gmatch("([^,]*),") do
    local host, port = node:match("^(%[[%x:.%%%w]+%]):?(%d*)$")
    if not host then host, port = node:match("^([%w%-%._%%]+):?(%d*)$") end
    if not host or node:sub(-1) == ":" then
      config_error(url, "bad cluster node '%s' (host:port)", node)
    end
    port = port ~= "" and to_int(url, port, "port", 1, 65535) or DEFAULT_REDIS_PORT
    cfg.cluster[#cfg.cluster + 1] = host .. ":" .. port
  end
  local path, query = split_query(url, tail)
  if path ~= "" and path ~= "/" then
    config_error(url, "a Redis Cluster has only db 0: no path, got '%s'", path)
  end
  parse_query(url, "redis+cluster", query, cfg)
  return cfg
end

-- file:///p and unix:///p: an empty authority (or "localhost") and an
-- absolute path.
local function parse_local_path(url, scheme, rest, what)
  local authority, tail = rest:match("^([^/?#]*)(.*)$")
  if authority ~= "" and authority:lower() ~= "localhost" then
    config_error(url, "%s must be absolute: %s:///%s (got host '%s')",
      what, scheme, piece(authority .. tail), piece(authority))
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
-- that can be shown and logged. The user info (everything between "://"
-- and the last '@', as redact takes it) keeps only a plain user name.
-- From the query go the password and whatever follows it that is not a
-- plain store parameter (db, prefix, timeout, username of URL-safe
-- characters): an unencoded '&' or '#' in a password must not leave a
-- piece of it behind.
function M.without_password(url)
  local secret = secret_positions(url)
  if not secret then return url end
  local _, slashes = url:find("://", 1, true)
  if slashes and secret[slashes + 1] then
    local last_at
    for i = slashes + 1, #url do
      if url:byte(i) == 64 then last_at = i end
    end
    if last_at then
      local info = url:sub(slashes + 1, last_at - 1)
      local user = info:match("^([^:/?#@]*):") or info:match("^[^:/?#@]*$") or ""
      url = url:sub(1, slashes) .. user .. url:sub(last_at)
    end
  end
  local head, query = url:match("^([^?]*)%?(.*)$")
  if not head then return url end
  local kept, after_password = {}, false
  for param in query:gmatch("[^&]+") do
    local name, value = param:match("^([^=]*)=(.*)$")
    if name and is_password_name(name) then
      after_password = true
    elseif not after_password or (PLAIN_PARAMS[name] and
        value:match("^[%w%-%._~%%:]*$")) then
      kept[#kept + 1] = param
    end
  end
  return #kept > 0 and head .. "?" .. table.concat(kept, "&") or head
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
  if not scheme then config_error(url, "no scheme (redis://, redis+cluster://, unix://, file://, local:)") end
  scheme = scheme:lower()
  if scheme == "local" then
    if rest ~= "" and rest ~= "//" then
      config_error(url, "local: takes nothing after the colon")
    end
    return { kind = "local" }
  end
  local after = rest:match("^//(.*)$")
  if not after then config_error(url, "expected %s://", piece(scheme)) end
  if scheme == "redis" then return parse_redis(url, after) end
  if scheme == "redis+cluster" then return parse_cluster(url, after) end
  if scheme == "unix" then return parse_unix(url, after) end
  if scheme == "file" then return parse_file(url, after) end
  config_error(url, "unknown scheme '%s' (redis://, redis+cluster://, unix://, file://, local:)", piece(scheme))
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

local function format_cluster(cfg)
  local auth = ""
  if cfg.username or cfg.password then
    auth = encode(cfg.username or "")
    if cfg.password then auth = auth .. ":" .. encode(cfg.password) end
    auth = auth .. "@"
  end
  for i, node in ipairs(cfg.cluster) do
    if type(node) ~= "string" or node:find("[,/?#@]") then
      return nil, string.format("cluster node %d is not host:port", i)
    end
  end
  return "redis+cluster://" .. auth .. table.concat(cfg.cluster, ",") ..
    query_string(cfg, { "prefix", "timeout" })
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
    if type(cfg.cluster) == "table" then return format_cluster(cfg) end
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
