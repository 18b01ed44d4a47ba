/* buf.c: growable byte buffers, and a userdata box that frees one on error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps.h"
#include "bigalloc.h"

#define BUF_BOX "proxystore.Buffer"

void ps_buf_init(ps_buf *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->grow = NULL;
}

/*
 * A buffer of PS_BIG_MIN bytes or more lives in a big block (bigalloc.c:
 * huge pages, and freed blocks kept warm), never in malloc's memory: a
 * serialized 10 MiB string written into fresh 4 KiB pages faults ~2,600
 * of them (tens of ms on these machines, docs/performance.md), and glibc
 * gives each new large buffer fresh pages. So a process that puts large
 * objects over and over (a pool worker setting futures) writes into warm
 * memory from its second put on. Which allocator holds data follows from
 * cap: a big block iff cap >= PS_BIG_MIN (and no grow hook).
 */
static int reserve_big(ps_buf *b, size_t need) {
  size_t want = need + need / 8;   /* room for what usually follows */
  if (want < need) want = need;
  char *p;
  if (b->cap >= PS_BIG_MIN) {
    p = ps_big_realloc(b->data, want);   /* mremap: no copy */
  } else {
    p = ps_big_alloc(want);
    if (p && b->len) memcpy(p, b->data, b->len);
    if (p) free(b->data);
  }
  if (p == NULL) return -1;
  b->data = p;
  b->cap = ps_big_size(p);
  return 0;
}

int ps_buf_reserve(ps_buf *b, size_t n) {
  if (n <= b->cap - b->len) return 0;
  if (n > SIZE_MAX - b->len) return -1;
  if (b->grow) return b->grow(b, n);
  size_t need = b->len + n;
  if (need >= PS_BIG_MIN) return reserve_big(b, need);
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap *= 2;
  if (cap >= PS_BIG_MIN) return reserve_big(b, need);
  char *p = realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

int ps_buf_append(ps_buf *b, const void *p, size_t n) {
  if (ps_buf_reserve(b, n) != 0) return -1;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void ps_buf_free(ps_buf *b) {
  if (b->grow == NULL && b->cap >= PS_BIG_MIN) ps_big_free(b->data);
  else if (b->grow == NULL) free(b->data);
  ps_buf_init(b);
}

static int buf_gc(lua_State *L) {
  ps_buf_free(luaL_checkudata(L, 1, BUF_BOX));
  return 0;
}

ps_buf *ps_buf_box(lua_State *L) {
  ps_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  ps_buf_init(b);
  luaL_setmetatable(L, BUF_BOX);
  return b;
}

ps_buf *ps_buf_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, BUF_BOX);
}

void ps_buf_open(lua_State *L) {
  if (luaL_newmetatable(L, BUF_BOX)) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
}
