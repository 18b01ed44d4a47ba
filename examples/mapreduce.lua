-- MapReduce with proxies: ProxyStore's word-count example in Lua.
--
-- Generates N random text documents, puts each in the pool's store and
-- hands the workers only proxies (a few hundred bytes each); every worker
-- resolves its document from the store, counts its words (map), and the
-- script merges the counts (reduce) and prints the most frequent words.
--
--   build/bin/proxystore examples/mapreduce.lua [documents] [words-per-doc] [top]
--   build/bin/proxystore --workers 4 --store redis://127.0.0.1:6379 \
--       examples/mapreduce.lua 32 200000
--
-- With no --store the pool keeps a private file store on /dev/shm, removed
-- when the pool closes; with --store the documents go to that store.
-- examples/cluster_mapreduce.lua runs this file through a queue pool: it
-- loads it with {pool = options for ps.pool, args = {documents, ...}}.

local ps = require "proxystore"

local first = ...   -- nothing when run with no arguments
local cluster = type(first) == "table" and first or nil
local args = cluster and cluster.args or arg or {}
local ndocs = math.tointeger(tonumber(args[1] or "") or 16)
local nwords = math.tointeger(tonumber(args[2] or "") or 50000)
local top = math.tointeger(tonumber(args[3] or "") or 10)
assert(ndocs and ndocs > 0 and nwords and nwords > 0 and top and top > 0,
  "usage: mapreduce.lua [documents] [words-per-doc] [top]")

-- Words drawn with Zipf-like frequencies from a fixed vocabulary, so that
-- the top words are stable from run to run.
local vocabulary = {
  "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was",
  "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from",
  "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
  "one", "all", "we", "can", "her", "has", "there", "been", "if", "more",
  "when", "will", "would", "who", "so", "no", "proxy", "store", "lua",
  "worker", "future", "data", "object", "task", "result", "value", "key",
}
local weights, total = {}, 0
for i = 1, #vocabulary do
  total = total + 1 / i
  weights[i] = total
end

local function random_word()
  local r = math.random() * total
  local lo, hi = 1, #vocabulary
  while lo < hi do
    local mid = (lo + hi) // 2
    if weights[mid] < r then lo = mid + 1 else hi = mid end
  end
  return vocabulary[lo]
end

local function generate_document(n)
  local words = {}
  for i = 1, n do words[i] = random_word() end
  return table.concat(words, " ")
end

-- map: runs on a worker; `doc` is a proxy and resolves there.
local function count_words(doc)
  local counts = {}
  for word in ps.extract(doc):gmatch("%a+") do
    counts[word] = (counts[word] or 0) + 1
  end
  return counts
end

-- reduce
local function merge(all)
  local counts = {}
  for _, c in ipairs(all) do
    for word, n in pairs(c) do counts[word] = (counts[word] or 0) + n end
  end
  return counts
end

math.randomseed(tonumber(os.getenv("SEED") or "") or 42)

local pool <close> = ps.pool(cluster and cluster.pool)
local store = pool.store

local t0 = os.clock()
local docs, bytes = {}, 0
for i = 1, ndocs do
  local text = generate_document(nwords)
  bytes = bytes + #text
  -- single use, except on a queue: a task may run twice there (at least
  -- once), so its document must outlive a first attempt
  docs[i] = store:proxy(text, { evict = not cluster })
end
print(("generated %d documents, %.1f MiB, into %s"):format(
  ndocs, bytes / 2^20, tostring(store)))

local counts = merge(pool:map(count_words, docs))
if cluster then
  for _, doc in ipairs(docs) do store:evict(ps.key(doc)) end
end

local words = {}
for word, n in pairs(counts) do words[#words + 1] = { word = word, n = n } end
table.sort(words, function(a, b)
  if a.n ~= b.n then return a.n > b.n end
  return a.word < b.word
end)

local sum = 0
for _, w in ipairs(words) do sum = sum + w.n end
assert(sum == ndocs * nwords, "word count mismatch")

print(("counted %d words on %s (%.2f s of parent CPU)"):format(sum,
  cluster and ("the workers of queue '" .. pool.name .. "'")
    or (pool.workers .. " workers"), os.clock() - t0))
print(("top %d words:"):format(math.min(top, #words)))
for i = 1, math.min(top, #words) do
  print(("%4d. %-10s %d"):format(i, words[i].word, words[i].n))
end
