/*
 * bench_support.c: two helpers for the benchmarks in bench/, kept out of the public
 * face (underscore names): a monotonic clock, and the memcpy baseline the
 * codec benchmark compares large strings against.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_clock(lua_State *L) {
  lua_pushnumber(L, now());
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/*
 * _bench_memcpy(n, reps): seconds one memcpy of n bytes takes into a
 * reused, already paged-in buffer (median of reps copies; both buffers
 * are touched before timing). Returns median, min, max.
 */
static int bench_memcpy(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_Integer reps = luaL_optinteger(L, 2, 5);
  luaL_argcheck(L, n > 0, 1, "size must be positive");
  luaL_argcheck(L, reps > 0 && reps <= 1000, 2, "1..1000 repetitions");
  ps_buf *src = ps_buf_box(L);
  ps_buf *dst = ps_buf_box(L);
  double *t = lua_newuserdatauv(L, sizeof(double) * (size_t)reps, 0);
  if (ps_buf_reserve(src, (size_t)n) || ps_buf_reserve(dst, (size_t)n))
    return luaL_error(L, "out of memory");
  memset(src->data, 'x', (size_t)n);
  memset(dst->data, 0, (size_t)n);
  for (lua_Integer i = 0; i < reps; i++) {
    double t0 = now();
    memcpy(dst->data, src->data, (size_t)n);
    __asm__ volatile("" : : "r"(dst->data) : "memory");
    t[i] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  lua_pushnumber(L, t[reps / 2]);
  lua_pushnumber(L, t[0]);
  lua_pushnumber(L, t[reps - 1]);
  ps_buf_free(src);
  ps_buf_free(dst);
  return 3;
}

static const luaL_Reg bench_funcs[] = {
  {"_bench_clock", bench_clock},
  {"_bench_memcpy", bench_memcpy},
  {NULL, NULL},
};

void ps_bench_open(lua_State *L) {
  luaL_setfuncs(L, bench_funcs, 0);
}
