-- MapReduce across machines: examples/mapreduce.lua through a queue pool.
--
-- The documents go to the queue's Redis (as proxies, a few hundred bytes
-- per task); `proxystore worker` processes on any machine that reaches it
-- count their words; this script merges the counts.
--
-- Machine A (Redis and two workers):
--   redis-server --port 6379 --bind 0.0.0.0 --protected-mode no   # or your usual Redis
--   umask 077; openssl rand -hex 32 > secret                       # the shared secret
--   build/bin/proxystore worker redis://A:6379 --queue mapreduce --workers 2 --secret-file secret
-- Machine B (copy the secret there too):
--   PROXYSTORE_SECRET=$(cat secret) build/bin/proxystore \
--       examples/cluster_mapreduce.lua redis://A:6379 [documents] [words-per-doc] [top]
--
-- Workers may start before or after this script; more workers can join at
-- any time, and one that dies has its task run again by another.

local url = arg and arg[1] or os.getenv("PROXYSTORE_QUEUE") or "redis://127.0.0.1:6379"
assert(url:match("^redis://") or url:match("^unix://"),
  "usage: cluster_mapreduce.lua redis://host:port [documents] [words-per-doc] [top]")

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local mapreduce = assert(loadfile(here .. "/mapreduce.lua"))
mapreduce {
  pool = { queue = url, name = "mapreduce" },   -- the secret: PROXYSTORE_SECRET
  args = { arg and arg[2], arg and arg[3], arg and arg[4] },
}
