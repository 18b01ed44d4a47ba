-- Store URLs: parse every form the README names, refuse bad ones with a
-- "config" error, and format configs back into URLs that parse the same.
local url = require "proxystore.url"

local function config_error(s)
  local ok, err = pcall(url.parse, s)
  assert.is_false(ok, "expected an error for " .. tostring(s))
  assert.are.equal("table", type(err))
  assert.are.equal("config", err.kind)
  assert.truthy(tostring(err):match("^proxystore: "), tostring(err))
  assert.is_nil(tostring(err):find("\n"))
  return err
end

describe("proxystore.url.parse", function()
  describe("redis://", function()
    it("reads host and port", function()
      assert.are.same({ kind = "redis", host = "10.1.2.3", port = 6380 },
        url.parse("redis://10.1.2.3:6380"))
    end)

    it("defaults the port to 6379", function()
      assert.are.same({ kind = "redis", host = "cache.example", port = 6379 },
        url.parse("redis://cache.example"))
      assert.are.same({ kind = "redis", host = "h", port = 6379 },
        url.parse("redis://h/"))
    end)

    it("reads a database number from the path", function()
      assert.are.same({ kind = "redis", host = "localhost", port = 6379, db = 3 },
        url.parse("redis://localhost:6379/3"))
    end)

    it("reads user and password, percent-decoded", function()
      assert.are.same({ kind = "redis", host = "h", port = 1, username = "al ice",
                        password = "p@ss:w/rd%" },
        url.parse("redis://al%20ice:p%40ss%3Aw%2Frd%25@h:1"))
    end)

    it("takes a password without a user name", function()
      assert.are.same({ kind = "redis", host = "h", port = 6379, password = "secret" },
        url.parse("redis://:secret@h"))
    end)

    it("keeps an '@' inside the password when it is escaped", function()
      local cfg = url.parse("redis://u:a%40b@h:7")
      assert.are.equal("a@b", cfg.password)
      assert.are.equal("h", cfg.host)
    end)

    it("reads bracketed IPv6 addresses", function()
      assert.are.same({ kind = "redis", host = "::1", port = 6390 },
        url.parse("redis://[::1]:6390"))
      assert.are.same({ kind = "redis", host = "fe80::2", port = 6379, db = 1 },
        url.parse("redis://[fe80::2]/1"))
    end)

    it("reads db, prefix and timeout from the query", function()
      assert.are.same({ kind = "redis", host = "h", port = 6379, db = 2,
                        prefix = "ps:", timeout = 0.5 },
        url.parse("redis://h?db=2&prefix=ps%3A&timeout=0.5"))
    end)

    it("accepts an upper-case scheme", function()
      assert.are.equal("redis", url.parse("REDIS://h:1").kind)
    end)

    it("refuses bad ports, hosts and databases", function()
      config_error("redis://h:0")
      config_error("redis://h:65536")
      config_error("redis://h:port")
      config_error("redis://h:")
      config_error("redis://:6379")
      config_error("redis://")
      config_error("redis://h/db")
      config_error("redis://h/1/2")
      config_error("redis://h/-1")
      config_error("redis://::1:6379")
      config_error("redis://[::1")
      config_error("redis://h?db=1&db=2")
      config_error("redis://h/1?db=2")
      config_error("redis://h?timeout=-1")
      config_error("redis://h?colour=blue")
      config_error("redis://h?db")
      config_error("redis://u:p%zz@h")
      config_error("redis://h#frag")
    end)

    it("names the URL and the problem in the error", function()
      local err = config_error("redis://h:99999")
      assert.truthy(err.message:find("redis://h:99999", 1, true))
      assert.truthy(err.message:find("port", 1, true))
    end)

    it("never shows the password in an error", function()
      local err = config_error("redis://u:hunter2@h:99999")
      assert.is_nil(tostring(err):find("hunter2", 1, true))
      assert.truthy(tostring(err):find("redis://***@h:99999", 1, true))
      err = config_error("unix:///s?password=hunter2&db=x")
      assert.is_nil(tostring(err):find("hunter2", 1, true))
    end)
  end)

  describe("unix://", function()
    it("gives a redis config with a socket path", function()
      assert.are.same({ kind = "redis", path = "/run/redis/redis.sock" },
        url.parse("unix:///run/redis/redis.sock"))
    end)

    it("reads ?db=N", function()
      assert.are.same({ kind = "redis", path = "/tmp/r.sock", db = 4 },
        url.parse("unix:///tmp/r.sock?db=4"))
    end)

    it("reads credentials from the query", function()
      assert.are.same({ kind = "redis", path = "/s", username = "u", password = "p&q" },
        url.parse("unix:///s?username=u&password=p%26q"))
    end)

    it("refuses relative or empty paths and bad parameters", function()
      config_error("unix://relative.sock")
      config_error("unix://")
      config_error("unix:///s?db=x")
      config_error("unix:///s?dir=/x")
    end)
  end)

  describe("file://", function()
    it("gives a file config with an absolute dir", function()
      assert.are.same({ kind = "file", dir = "/dev/shm/ps" }, url.parse("file:///dev/shm/ps"))
    end)

    it("accepts localhost as the host", function()
      assert.are.same({ kind = "file", dir = "/data" }, url.parse("file://localhost/data"))
    end)

    it("percent-decodes the path and drops trailing slashes", function()
      assert.are.same({ kind = "file", dir = "/tmp/my store" },
        url.parse("file:///tmp/my%20store/"))
    end)

    it("reads ?prefix=", function()
      assert.are.same({ kind = "file", dir = "/d", prefix = "run1-" },
        url.parse("file:///d?prefix=run1-"))
    end)

    it("refuses relative and empty directories", function()
      config_error("file://relative/dir")
      config_error("file://")
      config_error("file:relative")
      config_error("file:///a%00b")
      config_error("file:///d?db=1")
    end)
  end)

  describe("local:", function()
    it("gives the local kind", function()
      assert.are.same({ kind = "local" }, url.parse("local:"))
      assert.are.same({ kind = "local" }, url.parse("local://"))
    end)

    it("refuses anything after the colon", function()
      config_error("local:x")
    end)
  end)

  it("refuses unknown schemes and non-URLs", function()
    config_error("http://example.com")
    config_error("redis")
    config_error("")
    config_error(42)
    config_error("redis:h:1")
  end)
end)

describe("proxystore.url.is_url", function()
  it("tells URLs from kinds", function()
    assert.is_true(url.is_url("file:///x"))
    assert.is_true(url.is_url("local:"))
    assert.is_false(url.is_url("file"))
    assert.is_false(url.is_url("redis"))
    assert.is_false(url.is_url(nil))
  end)
end)

describe("proxystore.url.format", function()
  local urls = {
    "local:",
    "file:///dev/shm/ps",
    "file:///tmp/my%20store?prefix=a-",
    "redis://10.0.0.1:6380",
    "redis://h:6379/5",
    "redis://al%20ice:p%40ss%3Aw@h:1",
    "redis://:secret@h:6379",
    "redis://[::1]:6390/2",
    "redis://h:6379?prefix=ps%3A&timeout=1.5",
    "unix:///run/redis.sock",
    "unix:///tmp/r.sock?db=4&password=p%26q",
  }
  for _, u in ipairs(urls) do
    it("round trips " .. u, function()
      local cfg = url.parse(u)
      local back = assert(url.format(cfg))
      assert.are.equal(u, back)
      assert.are.same(cfg, url.parse(back))
    end)
  end

  it("ignores store-level options", function()
    assert.are.equal("file:///d",
      url.format({ kind = "file", dir = "/d", name = "x", cache_size = 3 }))
  end)

  it("accepts hostname for host and defaults the port", function()
    assert.are.equal("redis://h:6379", url.format({ kind = "redis", hostname = "h" }))
  end)

  it("returns nil and a reason when there is no URL form", function()
    local u, why = url.format({ kind = "file", dir = "relative" })
    assert.is_nil(u)
    assert.truthy(why:find("absolute"))
    u, why = url.format({ kind = "memory" })
    assert.is_nil(u)
    assert.truthy(why:find("memory"))
    assert.is_nil((url.format({ kind = "redis" })))
    assert.is_nil((url.format("file:///x")))
  end)
end)

describe("proxystore.url.without_password", function()
  it("drops the password from the user info and from the query", function()
    local w = url.without_password
    assert.are.equal("redis://u@h:1/2", w("redis://u:s3cret@h:1/2"))
    assert.are.equal("redis://@h:1", w("redis://:s3cret@h:1"))
    assert.are.equal("unix:///s.sock?db=1", w("unix:///s.sock?password=x&db=1"))
    assert.are.equal("unix:///s.sock?db=1", w("unix:///s.sock?db=1&password=x"))
    assert.are.equal("unix:///s.sock", w("unix:///s.sock?password=x"))
    assert.are.equal("redis://h:1", w("redis://h:1"))
    assert.are.equal("file:///d", w("file:///d"))
  end)
end)

describe("proxystore.url redis+cluster://", function()
  it("reads the seed nodes into cluster, ports defaulting to 6379", function()
    assert.are.same({ kind = "redis", cluster = { "10.0.0.1:7000", "10.0.0.2:7001", "h:6379" } },
      url.parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,h"))
    assert.are.same({ kind = "redis", cluster = { "[::1]:7000" }, username = "u",
                      password = "p,w", prefix = "ps:", timeout = 2 },
      url.parse("redis+CLUSTER://u:p%2Cw@[::1]:7000/?prefix=ps%3A&timeout=2"))
  end)

  it("refuses a database, empty or bad nodes and unknown parameters", function()
    for _, bad in ipairs {
      "redis+cluster://h:7000/2", "redis+cluster://", "redis+cluster://h:7000,",
      "redis+cluster://,h:7000", "redis+cluster://h:70000", "redis+cluster://h:",
      "redis+cluster://a b:1", "redis+cluster://h:1?db=1", "redis+cluster://h:1?path=/x",
    } do
      config_error(bad)
    end
  end)

  it("never shows the password in an error", function()
    local err = config_error("redis+cluster://u:s3cret@h:1/4")
    assert.is_nil(tostring(err):find("s3cret", 1, true))
  end)

  for _, u in ipairs {
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    "redis+cluster://u:p%2Cw@[::1]:7000?prefix=ps%3A&timeout=2",
  } do
    it("round trips " .. u, function()
      local cfg = url.parse(u)
      assert.are.equal(u, assert(url.format(cfg)))
      assert.are.same(cfg, url.parse(url.format(cfg)))
    end)
  end
end)
