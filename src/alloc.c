/*
 * alloc.c: puts the large blocks of the Lua state's allocator on huge pages.
 *
 * On these machines the first touch of fresh memory costs about 11 us per
 * 4 KiB page (DESIGN.md), so creating a 100 MiB Lua string (one allocation
 * and one copy through the state's allocator) costs more in page faults
 * than in copying. madvise(MADV_HUGEPAGE) on the block before it is first
 * touched cuts that about 4x (blocks from 2 MiB on: smaller ones cannot hold an aligned huge page) where transparent huge pages are in "madvise"
 * mode, and is harmless elsewhere.
 *
 * The wrapper keeps the original allocator for every call and only adds
 * the advice, so blocks allocated before it was installed are freed as
 * usual. Its state lives in a userdata anchored in the registry, whose
 * __gc (run by lua_close before the objects are freed) puts the original
 * allocator back.
 */
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ps.h"

#define ALLOC_MT "proxystore.Allocator"
#define HUGE_MIN ((size_t)2 << 20)

typedef struct wrap {
  lua_Alloc f;
  void *ud;
} wrap;

static void *alloc_huge(void *ud, void *ptr, size_t osize, size_t nsize) {
  wrap *w = ud;
  void *p = w->f(w->ud, ptr, osize, nsize);
  if (p != NULL && nsize >= HUGE_MIN) {
    /* Advise the whole pages inside the block (for a realloc, the grown
     * part is what matters, but advising the rest again is harmless). */
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t e = ((uintptr_t)p + nsize) & ~(uintptr_t)4095;
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
  }
  return p;
}

static int alloc_gc(lua_State *L) {
  wrap *w = luaL_checkudata(L, 1, ALLOC_MT);
  void *ud;
  if (w->f != NULL && lua_getallocf(L, &ud) == alloc_huge && ud == w) {
    lua_setallocf(L, w->f, w->ud);
    w->f = NULL;
  }
  return 0;
}

static const char alloc_key = 0;

void ps_alloc_open(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &alloc_key) != LUA_TNIL) {
    lua_pop(L, 1);    /* already installed in this state */
    return;
  }
  lua_pop(L, 1);
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  wrap *w = lua_newuserdatauv(L, sizeof *w, 0);
  w->f = NULL;
  w->ud = NULL;
  if (luaL_newmetatable(L, ALLOC_MT)) {
    lua_pushcfunction(L, alloc_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &alloc_key);
  w->f = f;
  w->ud = ud;
  lua_setallocf(L, alloc_huge, w);
}
