/*
 * bigalloc_medium_test.c: medium blocks (src/core/bigalloc.c), carved from
 * 2 MiB chunks on huge pages, and the lua_State allocator wrapper that
 * hands them out, moving blocks between its three kinds (the original
 * allocator's, medium, big) as Lua grows and shrinks them. Built alone:
 * it includes bigalloc.c to see the chunk list. Prints "ok N - what" /
 * "not ok N - what"; exit status 1 on failure.
 */
#include "../../src/core/bigalloc.c"

#include <stdio.h>

#include <lualib.h>

static int failures, count;

static void check(int cond, const char *what) {
  count++;
  printf("%sok %d - %s\n", cond ? "" : "not ", count, what);
  if (!cond) failures++;
}

static int nchunks(void) {
  int n = 0;
  for (med_chunk *c = med_chunks; c; c = c->next) n++;
  return n;
}

static uintptr_t chunk_of(void *p) {
  return (uintptr_t)p & ~(uintptr_t)(HUGE_SZ - 1);
}

static void test_blocks(void) {
  char *a = ps_med_alloc(PS_MED_MIN);
  char *b = ps_med_alloc(300 << 10);
  char *c = ps_med_alloc(PS_BIG_MIN - 1);
  check(a && b && c, "medium blocks of 64 KiB, 300 KiB and 1 MiB - 1");
  check(chunk_of(a) == chunk_of(b) && chunk_of(b) == chunk_of(c),
        "small enough to share one chunk");
  check((uintptr_t)a % MED_UNIT == 0 && (uintptr_t)b % MED_UNIT == 0,
        "aligned to a unit");
  check(a + PS_MED_MIN <= b && b + (300 << 10) <= c, "they do not overlap");
  memset(a, 1, PS_MED_MIN);
  memset(b, 2, 300 << 10);
  memset(c, 3, PS_BIG_MIN - 1);
  check(a[PS_MED_MIN - 1] == 1 && b[0] == 2 && c[0] == 3, "and hold their bytes");
  ps_med_free(b);
  char *d = ps_med_alloc(200 << 10);
  check(d == b, "a freed run is reused, first fit");
  check(ps_med_alloc(0) == NULL && ps_med_alloc(HUGE_SZ) == NULL,
        "no block of 0 bytes or of a chunk's size");
  ps_med_free(a);
  ps_med_free(c);
  ps_med_free(d);
  /* many blocks: more chunks; all freed: at most MED_KEEP stay */
  void *v[64];
  for (int i = 0; i < 64; i++) v[i] = ps_med_alloc(500 << 10);
  int ok = 1;
  for (int i = 0; i < 64; i++) ok = ok && v[i] != NULL;
  check(ok && nchunks() >= 16, "64 blocks of 500 KiB spread over 16 chunks");
  for (int i = 0; i < 64; i++) ps_med_free(v[i]);
  check(nchunks() <= MED_KEEP && med_empty == nchunks(),
        "freed, at most two empty chunks stay");
  void *e = ps_med_alloc(PS_MED_MIN);
  check(e != NULL && nchunks() <= MED_KEEP, "and serve the next block");
  ps_med_free(e);
}

/* As backends.c's ps_blob_release does. */
static void release(ps_blob *b) {
  if (b->release) b->release(b);
  else free(b->data);
}

/* A blob of each kind. */
static void test_blobs(void) {
  ps_blob b;
  check(ps_blob_alloc(&b, 1000) == 0 && b.release == NULL, "a small blob is malloc'ed");
  release(&b);
  check(ps_blob_alloc(&b, 100 << 10) == 0 && b.release == blob_med_release,
        "a 100 KiB blob is a medium block");
  memset(b.data, 7, b.len);
  release(&b);
  check(ps_blob_alloc(&b, 3 << 20) == 0 && b.release == blob_big_release,
        "a 3 MiB blob is a big block");
  release(&b);
}

/* A freed block too large for the cache is kept lazily freed and reused
 * by the next block of about its size. */
static void test_lazy(void) {
  size_t big = CACHE_MAX + (8 << 20);
  char *a = ps_big_alloc(big);
  check(a != NULL, "a block larger than the cache");
  a[0] = 1;
  a[big - 1] = 2;
  ps_big_free(a);
  check(lazy_base == (char *)a - HDR, "is kept lazily freed when freed");
  char *b = ps_big_alloc(big - (1 << 20));
  check(b == a && hdr_of(b)->maplen >= big && hdr_of(b)->magic == MAGIC,
        "and a block of about its size reuses it, header rewritten");
  check(lazy_base == NULL, "taking it empties the lazy slot");
  memset(b, 3, 1 << 20);
  char *c = ps_big_alloc(big);
  ps_big_free(b);
  ps_big_free(c);
  check(lazy_base == (char *)c - HDR, "a newer one replaces it (the older is unmapped)");
  char *d = ps_big_alloc(4 << 20);
  check(d != c, "a much smaller block does not take it");
  ps_big_free(d);
  char *e = ps_big_alloc(big);
  check(e == c, "one of its size does");
  ps_big_free(e);
}

static const char *grow_script =
  "local t = {}\n"
  "for i = 1, 200000 do t[i] = i end\n"             /* array: orig, medium, big */
  "for i = 200000, 2, -1 do t[i] = nil end\n"
  "collectgarbage()\n"
  "local s = {}\n"
  "for _, n in ipairs{65535, 65536, 300000, 1048575, 1048576, 3000000} do\n"
  "  s[#s + 1] = ('x'):rep(n)\n"
  "  assert(#s[#s] == n and s[#s]:sub(-1) == 'x')\n"
  "end\n"
  "local parts = {}\n"
  "for i = 1, 40 do parts[i] = ('%05d'):format(i):rep(8000) end\n"
  "local joined = table.concat(parts)\n"       /* a buffer grown by doubling */
  "assert(#joined == 40 * 40000 and joined:sub(1, 5) == '00001')\n"
  "return #joined\n";

static void test_wrapper(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  ps_alloc_install(L);
  void *ud;
  check(lua_getallocf(L, &ud) == wrap_alloc,
        "the wrapper installs in a program that links bigalloc in");
  int rc = luaL_dostring(L, grow_script);
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  check(rc == LUA_OK && lua_tointeger(L, -1) == 40 * 40000,
        "tables and strings grow and shrink across the three kinds");
  lua_close(L);
  check(nchunks() <= MED_KEEP, "closing the state gives the medium blocks back");
}

int main(void) {
  test_blocks();
  test_blobs();
  test_lazy();
  test_wrapper();
  printf("%d tests, %d failures\n", count, failures);
  return failures != 0;
}
