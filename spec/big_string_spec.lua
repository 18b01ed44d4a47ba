-- Large stored strings resolved in the proxystore binary, whose Lua state
-- has the big-block allocator: an object that is one string is read to
-- where a Lua string's bytes sit in its block, and the string is made in
-- that block, without a copy (src/core/bigalloc.c, ps_blob_push_string;
-- spec/c/bigalloc_adopt_test.c tests that no copy is made). Here: the
-- bytes come out the same at every size around the edges (varint widths,
-- the medium and big block sizes), from the file store and Redis (plain
-- and chunked), one by one and in batches, with and without the store's
-- cache, single use too, and a damaged object still fails as before (and
-- a single-use one is put back).
local shell = require "helpers.shell"
local redis = require "helpers.redis"

local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local BUILD = os.getenv("PROXYSTORE_BUILD") or (ROOT .. "/build")
local BIN = BUILD .. "/bin/proxystore"

-- Runs code in the binary with LUA_PATH/CPATH of this build; returns
-- exit status and everything it printed.
local function run(code, env)
  local tmp = shell.tempdir("bigstr")
  local path = tmp .. "/script.lua"
  local f = assert(io.open(path, "wb"))
  f:write(code)
  f:close()
  local rc, out = shell.sh(("cd %s && env -u LD_PRELOAD %s LUA_PATH=%s LUA_CPATH=%s %s %s 2>&1")
    :format(shell.quote(ROOT), env or "",
      shell.quote(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"),
      shell.quote(BUILD .. "/lib/?.so;;"), shell.quote(BIN), shell.quote(path)))
  shell.rmtree(tmp)
  return rc, out
end

-- The script: every size, put, resolved through a fresh proxy, compared;
-- then all of them again in one get_batch. Prints "ok <count>".
local SWEEP = [[
local ps = require "proxystore"
local store = ps.init_store(...)
local chunk = {}
for i = 1, 251 do chunk[i] = string.char((i * 37 + 11) % 256) end
chunk = table.concat(chunk)
local big = chunk:rep((3 << 20) // 251 + 2)
local sizes = { 64, 16383, 16384, 20000, 40000, 65000 }
for n = 32768 - 40, 32768 + 8, 4 do sizes[#sizes + 1] = n end
for n = 65536 - 40, 65536 + 8, 4 do sizes[#sizes + 1] = n end
for n = (1 << 20) - 40, (1 << 20) + 8, 4 do sizes[#sizes + 1] = n end
for _, n in ipairs { (1 << 21) - 1, 1 << 21, (3 << 20) + 1 } do sizes[#sizes + 1] = n end
local keys, count = {}, 0
for i, n in ipairs(sizes) do
  local want = big:sub(i, i + n - 1)
  keys[i] = store:put(want)
  for _ = 1, 2 do
    local got = ps.extract(store:proxy_from_key(keys[i]))
    assert(#got == n and got == want, "size " .. n .. ": bytes differ")
    count = count + 1
  end
  -- single use: Redis reads and deletes in one round trip (take)
  local once = store:put(want)
  local got = ps.extract(store:proxy_from_key(once, { evict = true }))
  assert(#got == n and got == want, "size " .. n .. ", single use: bytes differ")
  assert(not store:exists(once), "size " .. n .. ", single use: still stored")
  count = count + 1
  collectgarbage()
end
local got = store:get_batch(keys)
for i, n in ipairs(sizes) do
  assert(got[i] == big:sub(i, i + n - 1), "batch, size " .. n .. ": bytes differ")
  count = count + 1
end
got = nil
collectgarbage()
-- a table holding a large string, and a large string as a table key
local t = { s = big:sub(1, 1 << 20), [big:sub(2, 70000)] = 1 }
local back = ps.extract(store:proxy_from_key(store:put(t)))
assert(back.s == t.s and back[big:sub(2, 70000)] == 1, "table bytes differ")
store:close()
print("ok " .. (count + 1))
]]

-- What a script that resolves a 1 MiB + 3 object damaged two ways (one
-- byte short, one too many), then intact, prints: both errors, as
-- serialization errors, then "ok".
local function fails_on_both_damages(rc, out)
  assert.are.equal(0, rc, out)
  assert.truthy(out:find("string of 1048579 bytes claimed, only 1048578 bytes left", 1, true), out)
  assert.truthy(out:find("1 unexpected byte(s) after the value", 1, true), out)
  local _, kinds = out:gsub("serialization", "")
  assert.truthy(kinds >= 2, out)
  assert.truthy(out:find("\nok\n", 1, true), out)
end

describe("a large stored string resolved in the binary", function()
  local tmp
  before_each(function() tmp = shell.tempdir("bigstr-store") end)
  after_each(function() shell.rmtree(tmp) end)

  for _, cache in ipairs { 0, 16 } do
    it(("keeps its bytes at every size from the file store (cache_size %d)"):format(cache),
      function()
        local code = SWEEP:gsub("%.%.%.", ("'file', { name = 'f', dir = %q, cache_size = %d }")
          :format(tmp .. "/files", cache), 1)
        local rc, out = run(code)
        assert.are.equal(0, rc, out)
        assert.truthy(out:match("^ok %d+"), out)
      end)
  end

  it("keeps its bytes at every size from Redis, plain and chunked", function()
    local srv = redis.start()
    finally(function() srv:stop() end)
    local cfg = ("'redis', { name = 'r', host = '127.0.0.1', port = %d, cache_size = 0 }")
      :format(srv.port)
    local rc, out = run((SWEEP:gsub("%.%.%.", cfg, 1)))
    assert.are.equal(0, rc, out)
    assert.truthy(out:match("^ok %d+"), out)
    -- chunks of 300000 bytes: every size from 300 KB on is chunked
    rc, out = run((SWEEP:gsub("%.%.%.", cfg, 1)), "PROXYSTORE_REDIS_CHUNK_SIZE=300000")
    assert.are.equal(0, rc, out)
    assert.truthy(out:match("^ok %d+"), out)
  end)

  it("still fails on a damaged object as before (one byte short, one too many)", function()
    local code = ([[
      local ps = require "proxystore"
      local dir = %q
      local store = ps.init_store("file", { name = "d", dir = dir, cache_size = 0 })
      local n = (1 << 20) + 3
      local key = store:put(("z"):rep(n))
      local path = dir .. "/" .. key
      local f = assert(io.open(path, "rb"))
      local bytes = f:read("a")
      f:close()
      for _, damaged in ipairs { bytes:sub(1, -2), bytes .. "z" } do
        f = assert(io.open(path, "wb"))
        f:write(damaged)
        f:close()
        local ok, err = pcall(ps.extract, store:proxy_from_key(key))
        assert(not ok, "a damaged object resolved")
        print(err.kind, tostring(err))
      end
      f = assert(io.open(path, "wb"))
      f:write(bytes)
      f:close()
      assert(ps.extract(store:proxy_from_key(key)) == ("z"):rep(n))
      print("ok")
    ]]):format(tmp .. "/files")
    fails_on_both_damages(run(code))
  end)

  it("puts a damaged single-use object back on Redis, its bytes unchanged", function()
    local srv = redis.start()
    finally(function() srv:stop() end)
    local code = ([[
      local ps = require "proxystore"
      local core = require "proxystore.core"
      local store = ps.init_store("redis", { name = "d", host = "127.0.0.1", port = %d,
                                             prefix = "d:", cache_size = 0 })
      local g = core.redis_groups { host = "127.0.0.1", port = %d }
      local n = (1 << 20) + 3
      local key = store:put(("z"):rep(n))
      local raw = store:config().prefix .. key
      local bytes = g:call("GET", raw)
      for _, damaged in ipairs { bytes:sub(1, -2), bytes .. "z" } do
        g:call("SET", raw, damaged)
        local ok, err = pcall(ps.extract, store:proxy_from_key(key, { evict = true }))
        assert(not ok, "a damaged object resolved")
        print(err.kind, tostring(err))
        -- the same bytes under a new version (the 17-byte header)
        assert(g:call("GET", raw):sub(18) == damaged:sub(18),
          "the damaged object was not put back as it was")
      end
      g:call("SET", raw, bytes)
      assert(ps.extract(store:proxy_from_key(key, { evict = true })) == ("z"):rep(n))
      assert(not store:exists(key))
      g:close()
      store:close()
      print("ok")
    ]]):format(srv.port, srv.port)
    fails_on_both_damages(run(code))
  end)
end)
