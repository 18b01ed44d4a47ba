-- Docs and comments cite only files the repository has: a reader can open
-- every file they name.
local ROOT = os.getenv("PROXYSTORE_SOURCE_ROOT") or "."
local shell = require "helpers.shell"

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path) return read(path) ~= nil or os.rename(path, path) == true end

-- The tracked files worth reading for citations.
local function sources()
  local rc, out = shell.sh("cd " .. shell.quote(ROOT) .. " && (git ls-files 2>/dev/null || " ..
    "find . -type f -not -path './build*' -not -path './.git/*' | sed 's|^./||')")
  assert(rc == 0, out)
  local list = {}
  for f in out:gmatch("[^\n]+") do
    if f:match("%.[ch]$") or f:match("%.cpp$") or f:match("%.lua$") or f:match("%.md$")
        or f:match("%.sh$") or f:match("%.rockspec$") or f == "Makefile" or f:match("^%.ci/") then
      list[#list + 1] = f
    end
  end
  return list
end

local TOP = { "src", "lua", "spec", "bench", "docs", "examples", "tools", "fuzz", "rockspec", ".ci" }

-- Every repository path a text names: dir/.../file.ext under one of TOP
-- (globs and generated build paths left out), every *.md, and, in
-- markdown, the target of every relative link.
local function cited(text, file)
  local found = {}
  for _, top in ipairs(TOP) do
    local pat = "%f[%w./_-]" .. top:gsub("%.", "%%.") .. "/[%w_./-]*%.%a[%w]*"
    for path in text:gmatch(pat) do
      path = path:gsub("[.]+$", "")
      if not path:find("*", 1, true) then found[#found + 1] = path end
    end
  end
  for name in text:gmatch("%f[%w_./-]([%w_-]+%.md)%f[^%w]") do found[#found + 1] = name end
  if file:match("%.md$") then
    for target in text:gmatch("%]%(([^)#%s]+)") do
      if not target:match("^%a+:") then
        local dir = file:match("^(.*)/[^/]*$")
        found[#found + 1] = (dir and dir .. "/" or "") .. target
      end
    end
  end
  return found
end

describe("citations", function()
  it("name only files that exist", function()
    local missing = {}
    for _, file in ipairs(sources()) do
      local text = read(ROOT .. "/" .. file) or ""
      for _, path in ipairs(cited(text, file)) do
        local ok = exists(ROOT .. "/" .. path) or exists(ROOT .. "/docs/" .. path)
          or (path:match("%.md$") and exists(ROOT .. "/" .. path:gsub("^.*/", "")))
        if not ok then missing[#missing + 1] = file .. ": " .. path end
      end
    end
    assert.same({}, missing)
  end)

  it("keep the measured machine facts in docs/performance.md", function()
    local text = assert(read(ROOT .. "/docs/performance.md"))
    assert.matches("first touch", text, 1, true)
    assert.matches("MADV_HUGEPAGE", text, 1, true)
    assert.matches("how it was measured", text, 1, true)
  end)
end)
