-- A fuzz of URL redaction: thousands of store URLs with passwords that
-- hold '/', '?', '#', '@', ':', '&' and percent escapes, in the user info
-- and in the query, around hosts, ports, paths and queries good and bad.
-- Whatever the URL parser, ps.init_store or the host binary say about
-- them, no error message and no error field holds the password or any
-- piece of it.
--
-- The oracle: a password is built from random upper-case words of four
-- letters (QXKZ) mixed with special characters and escapes; the rest of
-- every URL is lower case and digits, and no message of proxystore holds
-- such a word, so any one of them in an error came from the password.
local ps = require "proxystore"
local url = require "proxystore.url"

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local BIN = BUILD .. "/bin/proxystore"

-- A fixed generator, so a failure reproduces: xorshift over 32 bits.
local function rng(seed)
  local x = seed
  return function(n)
    x = x ~ ((x << 13) & 0xffffffff)
    x = x ~ (x >> 17)
    x = x ~ ((x << 5) & 0xffffffff)
    return x % n + 1
  end
end

local SPECIALS = { "/", "?", "#", "@", ":", "&", "=", ";", "[", "]", "%",
                   "%2F", "%40", "%3a", "%25", "%zz", "%4", "%%", "+", " " }

-- A password and the words that must never show.
local function password(r)
  local parts, words = {}, {}
  for _ = 1, r(5) + 1 do
    if r(2) == 1 then
      local w = {}
      for i = 1, 4 do w[i] = string.char(64 + r(26)) end
      w = table.concat(w)
      parts[#parts + 1] = w
      words[#words + 1] = w
    end
    parts[#parts + 1] = SPECIALS[r(#SPECIALS)]
  end
  if #words == 0 then
    parts[#parts + 1] = "WXYZ"
    words[1] = "WXYZ"
  end
  return table.concat(parts), words
end

local HOSTS = { "h", "127.0.0.1", "", "[::1]", "[::1", "b@d", "h:port", "h:0",
                "h:", "::1:6379", "h:1" }
-- For the specs that connect: numeric addresses where nothing listens, so
-- no name lookup and no wait.
local DEAD_HOSTS = { "127.0.0.1:1", "", "[::1]:1", "[::1", "b@127.0.0.1:1",
                     "127.0.0.1:port", "127.0.0.1:0", "127.0.0.1:", "::1:1" }
local TAILS = { "", "/", "/1", "/x", "/1/2", "?db=x", "?foo=1", "#frag",
                "?prefix=a@b", "/2?timeout=-1", "?db=1&db=2" }

-- A URL holding the password somewhere, and its words.
local function hostile_url(r, hosts)
  local HOSTS = hosts or HOSTS
  local pw, words = password(r)
  local form = r(5)
  if form == 1 then
    return "redis://:" .. pw .. "@" .. HOSTS[r(#HOSTS)] .. TAILS[r(#TAILS)], words
  elseif form == 2 then
    return "redis://user:" .. pw .. "@" .. HOSTS[r(#HOSTS)] .. TAILS[r(#TAILS)], words
  elseif form == 3 then
    return "REDIS://" .. pw .. "@" .. HOSTS[r(#HOSTS)] .. TAILS[r(#TAILS)], words
  elseif form == 4 then
    local tails = { "", "&db=1", "&db=x", "#f", "&password=again" }
    return "unix:///run/r.sock?db=2&password=" .. pw .. tails[r(#tails)], words
  else
    return "unix:///run/r.sock?" .. ({ "pass", "Password", "pass%77ord" })[r(3)] ..
      "=" .. pw, words
  end
end

-- Every string an error exposes: its text and its fields, nested.
local function texts(err, out, seen)
  out, seen = out or {}, seen or {}
  if type(err) == "string" then
    out[#out + 1] = err
  elseif type(err) == "table" and not seen[err] then
    seen[err] = true
    local ok, s = pcall(tostring, err)
    if ok then out[#out + 1] = s end
    for k, v in pairs(err) do
      texts(k, out, seen)
      texts(v, out, seen)
    end
  end
  return out
end

local function assert_hidden(what, u, words, err)
  for _, s in ipairs(texts(err)) do
    for _, w in ipairs(words) do
      if s:find(w, 1, true) then
        error(("%s of %q shows password word %s: %s"):format(what, u, w, s), 2)
      end
    end
  end
end

describe("URL redaction, fuzzed", function()
  it("url.parse never shows a password in any error or field", function()
    local r = rng(0x9e3779b9)
    local failed = 0
    for _ = 1, 6000 do
      local u, words = hostile_url(r)
      local ok, err = pcall(url.parse, u)
      if not ok then
        failed = failed + 1
        assert.are.equal("config", err.kind, tostring(err))
        assert_hidden("url.parse", u, words, err)
      end
    end
    assert.is_true(failed > 3000)   -- most of them are bad URLs
  end)

  it("url.redact and url.without_password never keep a password word", function()
    local r = rng(12345)
    for _ = 1, 3000 do
      local u, words = hostile_url(r)
      assert_hidden("redact", u, words, url.redact(u))
      -- a name made from a URL (whose user info has a ':' before the
      -- password: without one it is a user name, which stays)
      local name = url.without_password(u)
      if not u:find("^REDIS:") then
        assert_hidden("without_password", u, words, name)
      end
    end
  end)

  it("ps.init_store never shows a password, also when connecting fails", function()
    local r = rng(777)
    for i = 1, 400 do
      -- valid ones fail at once: nothing listens on port 1 or that socket
      local u, words = hostile_url(r, DEAD_HOSTS)
      local ok, err = pcall(ps.init_store, u, { name = "fuzz-" .. i, timeout = 1 })
      if ok then
        err:close()
        error("a store was made from " .. u)
      end
      assert_hidden("ps.init_store", u, words, err)
    end
  end)

  it("the host binary's --store never prints a password", function()
    local r = rng(4242)
    local tmp = os.tmpname()
    for _ = 1, 12 do
      local u, words = hostile_url(r, DEAD_HOSTS)
      local cmd = ("%s --store %s -e %s >%s 2>&1"):format(BIN,
        "'" .. u:gsub("'", "'\\''") .. "'",
        "'require(\"proxystore\").pool{workers = 1, progress = false}:close()'", tmp)
      os.execute("env -u LUA_PATH -u LUA_PATH_5_4 " .. cmd)
      local f = assert(io.open(tmp, "rb"))
      local out = f:read("a")
      f:close()
      assert.truthy(out:find("proxystore: ", 1, true), out)
      assert_hidden("proxystore --store", u, words, out)
    end
    os.remove(tmp)
  end)

  it("shows the parts of the URL that hold no password", function()
    local ok, err = pcall(url.parse, "redis://u:QX@KZ@h:99999")
    assert.is_false(ok)
    assert.are.equal("redis://***@h:99999", err.address)
    assert.matches("65535", err.message, 1, true)
    ok, err = pcall(url.parse, "redis://:s3cr3t/pa#ss@localhost")
    assert.is_false(ok)
    assert.matches("percent-encoded", tostring(err), 1, true)
    assert.is_nil(tostring(err):find("s3cr3t", 1, true))
    assert.is_nil(tostring(err):find("pa#ss", 1, true))
    ok, err = pcall(url.parse, "redis://h:99999/1")
    assert.matches("'redis://h:99999/1'", tostring(err), 1, true)
  end)
end)
