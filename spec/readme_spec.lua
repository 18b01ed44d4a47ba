-- Every Lua example in README.md runs as written.
local root = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local build = os.getenv("PROXYSTORE_BUILD") or (root .. "/build")

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

describe("README.md", function()
  local text = read(root .. "/README.md")
  local n = 0
  for block in text:gmatch("```lua\n(.-)```") do
    n = n + 1
    local index = n
    it("example " .. index .. " runs as written", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(block)
      f:close()
      local out = os.tmpname()
      local ok, _, code = os.execute(string.format("'%s/bin/proxystore' '%s' >'%s' 2>&1",
        build, path, out))
      local output = read(out)
      os.remove(path)
      os.remove(out)
      assert.is_true(ok, "exit " .. tostring(code) .. ":\n" .. output)
    end)
  end
  it("has examples", function() assert.is_true(n >= 3) end)
end)
