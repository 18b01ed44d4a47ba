-- examples/quickstart.lua: ProxyStore's quick start, in Lua, on the
-- in-process local store (no server needed).
--
--   lua5.4 examples/quickstart.lua      (with proxystore on the Lua paths)
local ps = require "proxystore"

-- A store, registered under its name.
local store = ps.init_store("local", { name = "my-store" })

-- Put and get by key.
local key = store:put({ "large", "object" })
print("stored under", key)
print("got back", table.concat(store:get(key), " "))

-- A proxy: a small reference that fetches the object at first use.
local my_object = { values = { 3, 1, 2 }, label = "demo" }
local p = store:proxy(my_object)
print("resolved before use?", ps.is_resolved(p))
print("label through the proxy:", p.label)        -- first use resolves it
print("resolved after use?", ps.is_resolved(p))
table.sort(p.values)
print("sorted through the proxy:", table.concat(p.values, ","))
print("repr:", ps.repr(p))

-- Proxies behave as their targets: strings, numbers, functions, ...
local s = store:proxy("hello proxies")
print(s:upper(), #s, s .. "!")
local n = store:proxy(41)
print("41 + 1 =", n + 1)

-- ProxyStore's init_*_backend API: a default store for ps.to_proxy.
ps.init_local_backend()
local q = ps.to_proxy({ answer = 42 }, { evict = true })   -- single use
print("answer:", q.answer)

-- Any callable can be a factory.
local lazy = ps.proxy(function()
  print("  (factory runs now)")
  return { computed = true }
end)
print("computed?", lazy.computed)

store:close()
