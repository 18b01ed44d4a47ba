-- script.lua: the Lua side of examples/embed/host.c. The host puts a
-- buffer into a file store and calls summarize with a proxy for it.
local ps = require "proxystore"

local M = {}

--- Counts the lines and words of a text, which arrives as a proxy: it is
--- fetched from its store only here, at first use.
function M.summarize(text)
  assert(ps.is_proxy(text), "expected a proxy")
  local before = ps.is_resolved(text)
  local lines, words = 0, 0
  for line in text:gmatch("[^\n]+") do
    lines = lines + 1
    for _ in line:gmatch("%S+") do words = words + 1 end
  end
  return string.format("%d bytes, %d lines, %d words (resolved before use: %s)",
    #text, lines, words, tostring(before))
end

return M
