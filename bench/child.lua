-- bench/child.lua: runs one benchmark module in this fresh lua5.4 process
-- and prints its rows tab-separated for bench/run.lua (as the binary's
-- sections print them with --rows), so that no section runs in a process
-- that earlier sections have filled.
--
--   lua5.4 bench/child.lua bench/<section>.lua
local path = assert(arg[1], "usage: lua5.4 bench/child.lua bench/<section>.lua")
local bench = dofile(path)
local stats = dofile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "./") .. "stats.lua")
bench(stats.print_row)
