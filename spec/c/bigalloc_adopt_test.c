/*
 * bigalloc_adopt_test.c: a blob placed for a string (ps_blob_alloc_lead)
 * becomes that Lua string without a copy (ps_blob_push_string) in a state
 * with the allocator wrapper, and is copied as before everywhere else.
 * Built alone: it includes bigalloc.c to see the wrapper and the cache.
 * Prints "ok N - what" / "not ok N - what"; exit status 1 on failure.
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

/* As backends.c's ps_blob_release does. */
static void release(ps_blob *b) {
  if (b->data == NULL && b->release == NULL) return;
  if (b->release) b->release(b);
  else free(b->data);
  memset(b, 0, sizeof *b);
}

#define LEAD 9   /* what an envelope and codec head of a large string take */

/* A blob of n bytes placed for the string after LEAD bytes, filled with a
 * pattern; returns where the string's bytes are. */
static const char *placed(ps_blob *b, size_t n) {
  if (ps_blob_alloc_lead(b, n, LEAD) != 0) return NULL;
  memset(b->data, 0xEE, LEAD);
  for (size_t i = LEAD; i < n; i++) b->data[i] = (char)(i * 7 + 3);
  return b->data + LEAD;
}

static int same_bytes(const char *s, size_t n, size_t from) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != (char)((i + from) * 7 + 3)) return 0;
  return 1;
}

static int cached(void *block) {
  for (size_t i = 0; i < CACHE_SLOTS; i++)
    if (cache_base[i] == block) return 1;
  return 0;
}

static void test_before_install(void) {
  ps_blob b;
  check(atomic_load(&str_off) == 0, "no string offset before a wrapper");
  check(ps_blob_alloc_lead(&b, 3 << 20, LEAD) == 0 && b.data == b.opaque,
        "a blob is not placed before a wrapper is installed");
  release(&b);
}

/* One string of n bytes pushed from a placed blob in a wrapped state. */
static void adopt(lua_State *L, size_t n, const char *kind) {
  char what[160];
  ps_blob b;
  const char *s = placed(&b, n);
  void *block = b.opaque;
  size_t len = n - LEAD;
  ps_blob_push_string(L, &b, s, len);
  size_t got;
  const char *t = lua_tolstring(L, -1, &got);
  snprintf(what, sizeof what, "%s: the string is made in the blob's block "
           "(no copy) and holds its bytes", kind);
  check(t == s && got == len && same_bytes(t, len, LEAD) && t[len] == '\0',
        what);
  snprintf(what, sizeof what, "%s: the blob is left empty, the wrapper "
           "disarmed", kind);
  lwrap *w;
  lua_getallocf(L, (void **)&w);
  check(b.data == NULL && b.release == NULL && b.opaque == NULL &&
        !w->armed && w->offer == NULL, what);
  release(&b);
  lua_pop(L, 1);
  lua_gc(L, LUA_GCCOLLECT);
  if (len + atomic_load(&str_off) + 1 >= PS_BIG_MIN) {
    snprintf(what, sizeof what, "%s: collected, the block goes back to the "
             "block cache", kind);
    check(cached((char *)block - HDR), what);
  }
}

static void test_copies(lua_State *L) {
  ps_blob b;
  size_t off = atomic_load(&str_off);
  /* Not the whole rest of the blob: copied. */
  const char *s = placed(&b, 2 << 20);
  ps_blob_push_string(L, &b, s + 1, (2 << 20) - LEAD - 2);
  const char *t = lua_tostring(L, -1);
  lwrap *w;
  lua_getallocf(L, (void **)&w);
  check(t != s + 1 && same_bytes(t, (2 << 20) - LEAD - 2, LEAD + 1) &&
        b.release == blob_big_release && !w->armed && w->offer == NULL,
        "bytes that do not end the blob are copied; the blob keeps its block");
  lua_pop(L, 1);
  release(&b);
  /* A blob not placed for its string: copied. */
  check(ps_blob_alloc(&b, 2 << 20) == 0, "a plain blob");
  memset(b.data, 'q', b.len);
  ps_blob_push_string(L, &b, b.data + LEAD, b.len - LEAD);
  t = lua_tostring(L, -1);
  check(t != b.data + LEAD && t[0] == 'q' && b.release == blob_big_release,
        "a blob not placed for the string is copied");
  lua_pop(L, 1);
  release(&b);
  /* Just under the smallest made in its block: malloc, copied. */
  check(ps_blob_alloc_lead(&b, PS_ADOPT_MIN - off - 2 + LEAD, LEAD) == 0 &&
        b.release == NULL, "a blob just under the smallest placed size comes from malloc");
  release(&b);
  /* Small: malloc, copied. */
  check(ps_blob_alloc_lead(&b, 1000, LEAD) == 0 && b.release == NULL,
        "a small blob comes from malloc");
  memset(b.data, 'r', b.len);
  ps_blob_push_string(L, &b, b.data + LEAD, b.len - LEAD);
  t = lua_tostring(L, -1);
  check(t != b.data + LEAD && t[0] == 'r' && lua_rawlen(L, -1) == 1000 - LEAD,
        "and its string is a copy");
  lua_pop(L, 1);
  release(&b);
  /* A lead longer than Lua's string header cannot be placed. */
  check(ps_blob_alloc_lead(&b, 2 << 20, HDR) == 0 && b.data == b.opaque,
        "a lead longer than the string header is not placed");
  release(&b);
}

/* A state without the wrapper (a module user who did not opt in). */
static void test_plain_state(void) {
  lua_State *L = luaL_newstate();
  ps_blob b;
  const char *s = placed(&b, 2 << 20);
  ps_blob_push_string(L, &b, s, (2 << 20) - LEAD);
  const char *t = lua_tostring(L, -1);
  check(t != s && same_bytes(t, (2 << 20) - LEAD, LEAD) &&
        b.release == blob_big_release,
        "a state without the wrapper gets a copy; the blob keeps its block");
  release(&b);
  lua_close(L);
}

int main(void) {
  test_before_install();
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  check(ps_alloc_install(L) == 0, "the wrapper installs");
  size_t off = atomic_load(&str_off);
  check(off > LEAD && off < HDR, "and learns where a string's bytes start");
  lua_pushlstring(L, "................................................................", 64);
  lwrap *w;
  lua_getallocf(L, (void **)&w);
  check(!w->armed, "the probe left the wrapper disarmed");
  lua_pop(L, 1);
  adopt(L, 3 << 20, "3 MiB (a big block)");
  adopt(L, 200 << 10, "200 KiB (a medium block)");
  adopt(L, PS_BIG_MIN - off - 2 + LEAD, "the largest medium string");
  adopt(L, PS_BIG_MIN - off - 1 + LEAD, "the smallest big string");
  adopt(L, PS_MED_MIN - off - 1 + LEAD, "a string of a whole medium block");
  adopt(L, 40 << 10, "40 KiB (a medium block smaller than most)");
  adopt(L, PS_ADOPT_MIN - off - 1 + LEAD, "the smallest string made in its block");
  test_copies(L);
  /* Many strings made and collected: no block is owned twice. */
  for (int i = 0; i < 50; i++) {
    ps_blob b;
    const char *s = placed(&b, (size_t)(i % 5 + 1) << 19);
    ps_blob_push_string(L, &b, s, ((size_t)(i % 5 + 1) << 19) - LEAD);
    release(&b);
    if (i % 3 == 0) lua_gc(L, LUA_GCCOLLECT);
    else lua_pop(L, 1);
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  check(1, "50 strings made from blobs and collected");
  lua_close(L);
  test_plain_state();
  printf("%d tests, %d failures\n", count, failures);
  return failures != 0;
}
