/* buf.c: growable byte buffers, and a userdata box that frees one on error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ps.h"

#define BUF_BOX "proxystore.Buffer"

void ps_buf_init(ps_buf *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

int ps_buf_reserve(ps_buf *b, size_t n) {
  if (n <= b->cap - b->len) return 0;
  if (n > SIZE_MAX - b->len) return -1;
  size_t need = b->len + n;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  /* A large buffer (a serialized 100 MiB string) is written right after
     this: on huge pages its fresh memory faults in ~5x faster
     (docs/performance.md). glibc serves it from mmap; still malloc/free. */
  if (cap >= ((size_t)2 << 20)) {
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t e = ((uintptr_t)p + cap) & ~(uintptr_t)4095;
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
  }
  return 0;
}

int ps_buf_append(ps_buf *b, const void *p, size_t n) {
  if (ps_buf_reserve(b, n) != 0) return -1;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void ps_buf_free(ps_buf *b) {
  free(b->data);
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

void ps_buf_open(lua_State *L) {
  if (luaL_newmetatable(L, BUF_BOX)) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
}
