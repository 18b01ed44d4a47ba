-- HMAC-SHA256 under a shared secret (src/pool/secret.c), the signature of
-- every queue pool message.

local core = require "proxystore.core"
local shell = require "helpers.shell"

-- The 8-byte little-endian length the signature puts before each part.
local function framed(...)
  local out = {}
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    out[#out + 1] = string.pack("<I8", #s) .. s
  end
  return table.concat(out)
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

describe("secret", function()
  local key = "a shared secret of enough bytes"

  it("signs parts with HMAC-SHA256 as openssl computes it", function()
    local s = core.secret(key)
    local mac = s:sign("task", "\0binary\255", "")
    assert.equal(32, #mac)
    local dir = shell.tempdir("secret")
    local f = assert(io.open(dir .. "/msg", "wb"))
    f:write(framed("task", "\0binary\255", ""))
    f:close()
    local rc, out = shell.sh("openssl dgst -sha256 -mac HMAC -macopt hexkey:" ..
      hex(key) .. " " .. shell.quote(dir .. "/msg"))
    shell.rmtree(dir)
    assert.equal(0, rc, out)
    assert.equal(hex(mac), out:match("= (%x+)"))
  end)

  it("verifies its own signatures and nothing else", function()
    local s = core.secret(key)
    local mac = s:sign("a", "b")
    assert.is_true(s:verify(mac, "a", "b"))
    assert.is_true(core.secret(key):verify(mac, "a", "b"))
    assert.is_false(s:verify(mac, "a", "c"))
    assert.is_false(s:verify(mac, "ab"))          -- lengths are signed too
    assert.is_false(s:verify(mac, "a", "b", ""))
    assert.is_false(s:verify(mac:sub(1, 31), "a", "b"))
    assert.is_false(s:verify("", "a", "b"))
    assert.is_false(core.secret(key .. "!"):verify(mac, "a", "b"))
    local flipped = string.char(mac:byte(1) ~ 1) .. mac:sub(2)
    assert.is_false(s:verify(flipped, "a", "b"))
  end)

  it("never shows the secret", function()
    local s = core.secret(key)
    assert.equal("proxystore.Secret: (hidden)", tostring(s))
    assert.equal("hidden", getmetatable(s))
    local fp = s:fingerprint()
    assert.matches("^%x%x%x%x%x%x%x%x$", fp)
    assert.equal(fp, core.secret(key):fingerprint())
    assert.not_equal(fp, core.secret(key .. "x"):fingerprint())
    assert.is_nil(fp:find(hex(key):sub(1, 8), 1, true))
  end)

  it("refuses an empty secret and parts that are not strings", function()
    assert.has_error(function() core.secret("") end)
    assert.has_error(function() core.secret() end)
    local s = core.secret(key)
    assert.has_error(function() s:sign({}) end)
    assert.has_error(function() s:verify("x", nil) end)
  end)
end)
