/*
 * bench/c/support.c: the module proxystore.bench, helpers for the
 * benchmarks in bench/ that ship in no installed library: the memcpy
 * baseline large strings are compared against, the C-API floors for
 * building and reading the codec's records, the raw read limit of a
 * stored file (warm and in a fresh process), and a sleep that takes no
 * CPU for the pipeline benchmark's tasks. make bench builds it into
 * build/lib/proxystore/bench.so.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "ps.h"
#include "redis_limit.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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

/* Writes "x" and the decimal digits of i (i >= 0) to out; returns the
 * length. By hand, because snprintf alone costs a good part of what
 * building one record does, and the floor must not carry it. */
static size_t record_name(char *out, lua_Integer i) {
  char digits[24];
  size_t n = 0;
  do {
    digits[n++] = (char)('0' + i % 10);
    i /= 10;
  } while (i > 0);
  out[0] = 'x';
  for (size_t k = 0; k < n; k++) out[1 + k] = digits[n - 1 - k];
  return n + 1;
}

/*
 * _bench_build_records(n): builds the records of bench/codec.lua,
 * {id=i, name="x"..i, score=i*0.5} for i = 1..n, straight through the C
 * API (the fastest any decoder can make them: table, three raw sets, one
 * new string each). The floor the codec's decode time is compared with.
 */
static int bench_build_records(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 100000000, 1, "0..1e8 records");
  lua_settop(L, 0);
  lua_createtable(L, (int)n, 0);
  lua_pushliteral(L, "id");
  lua_pushliteral(L, "name");
  lua_pushliteral(L, "score");
  char name[32];
  for (lua_Integer i = 1; i <= n; i++) {
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, i);
    lua_rawset(L, -3);
    lua_pushvalue(L, 3);
    lua_pushlstring(L, name, record_name(name, i));
    lua_rawset(L, -3);
    lua_pushvalue(L, 4);
    lua_pushnumber(L, (lua_Number)i * 0.5);
    lua_rawset(L, -3);
    lua_rawseti(L, 1, i);
  }
  lua_settop(L, 1);
  return 1;
}

/*
 * _bench_read_records(t): reads the array of records t through the C API
 * the way any encoder of the native format must, and writes nothing: each
 * record's identity (for shared references) and a lua_next walk over it,
 * with every key's and value's type and contents. The floor the codec's
 * encode time is compared with. Returns a checksum of what it read, so
 * that no read can be left out.
 */
static int bench_read_records(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  uint64_t sum = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 1, i) != LUA_TTABLE)
      return luaL_error(L, "record %I is not a table", i);
    sum += (uintptr_t)lua_topointer(L, 2);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      size_t len;
      if (lua_type(L, 3) == LUA_TSTRING) {
        sum += (unsigned char)lua_tolstring(L, 3, &len)[0] + len;
      }
      switch (lua_type(L, 4)) {
        case LUA_TNUMBER:
          if (lua_isinteger(L, 4)) {
            sum += (uint64_t)lua_tointeger(L, 4);
          } else {
            double d = (double)lua_tonumber(L, 4);
            uint64_t u;
            memcpy(&u, &d, sizeof u);
            sum += u;
          }
          break;
        case LUA_TSTRING:
          sum += (unsigned char)lua_tolstring(L, 4, &len)[0] + len;
          break;
        default:
          break;
      }
      lua_settop(L, 3);
    }
    lua_settop(L, 1);
  }
  lua_pushinteger(L, (lua_Integer)sum);
  return 1;
}

/* open, fstat, read all of it into buf (at least size bytes), close: what
 * any reader of a stored file must do. 0, or -1. */
static int read_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size != size) {
    close(fd);
    return -1;
  }
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  return got == size ? 0 : -1;
}

/*
 * file_read(path, size, reps) -> median, min, max seconds: the raw read
 * limit of a warm process, the file read into a buffer reused (and paged
 * in) across reps reads.
 */
static int bench_file_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  lua_Integer reps = luaL_optinteger(L, 3, 5);
  luaL_argcheck(L, n >= 0, 2, "size must not be negative");
  luaL_argcheck(L, reps > 0 && reps <= 1000, 3, "1..1000 repetitions");
  ps_buf *b = ps_buf_box(L);
  double *t = lua_newuserdatauv(L, sizeof(double) * (size_t)reps, 0);
  if (ps_buf_reserve(b, (size_t)n + 1)) return luaL_error(L, "out of memory");
  memset(b->data, 0, (size_t)n + 1);
  for (lua_Integer i = 0; i < reps; i++) {
    double t0 = now();
    if (read_file(path, b->data, (size_t)n) != 0)
      return luaL_error(L, "cannot read %s", path);
    t[i] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  lua_pushnumber(L, t[reps / 2]);
  lua_pushnumber(L, t[0]);
  lua_pushnumber(L, t[reps - 1]);
  ps_buf_free(b);
  return 3;
}

/*
 * file_read_fresh(path, size) -> seconds: the raw read limit of a fresh
 * process (call it once, first thing): the file read into a buffer just
 * allocated, whose pages fault in as the read fills them.
 */
static int bench_file_read_fresh(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0, 2, "size must not be negative");
  double t0 = now();
  char *buf = malloc((size_t)n + 1);
  if (buf == NULL) return luaL_error(L, "out of memory");
  int rc = read_file(path, buf, (size_t)n);
  double dt = now() - t0;
  free(buf);
  if (rc != 0) return luaL_error(L, "cannot read %s", path);
  lua_pushnumber(L, dt);
  return 1;
}

/*
 * copy_strings(list) -> seconds: memcpy of each string of the list (1..#list)
 * into one reused, paged-in buffer; the least any encoder of those strings
 * must do (read each once, write it once).
 */
static int bench_copy_strings(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  size_t max = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "list[%d] is not a string", (int)i);
    lua_tolstring(L, -1, &len);
    if (len > max) max = len;
    lua_pop(L, 1);
  }
  ps_buf *b = ps_buf_box(L);
  if (ps_buf_reserve(b, max + 1)) return luaL_error(L, "out of memory");
  memset(b->data, 0, max + 1);
  double total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, 1, i);
    const char *p = lua_tolstring(L, -1, &len);
    double t0 = now();
    memcpy(b->data, p, len);
    __asm__ volatile("" : : "r"(b->data) : "memory");
    total += now() - t0;
    lua_pop(L, 1);
  }
  ps_buf_free(b);
  lua_pushnumber(L, total);
  return 1;
}

/*
 * sleep(seconds): nanosleep. The pipeline benchmark's tasks wait rather
 * than compute, and a wait must take no CPU (a spin would compete for the
 * two cores) and fork nothing (os.execute("sleep") costs a process).
 */
static int bench_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s < 1e6, 1, "seconds in [0, 1e6)");
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/*
 * redis_limit(host, port, key, size) -> a connection whose get() returns
 * the seconds one GET of key (size bytes) takes at the server-bound limit
 * (redis_limit.h: the read()s and the spin of bench/redis_raw.c's
 * limit_get), into a buffer reused across calls, and whose set(data) the
 * seconds of one SET of key, and batch(data, n) those of the stream loop's
 * pattern (bench/stream.lua times both in the process of its loops);
 * close() ends it (so does collection). It makes one untimed GET
 * first, so the buffer is paged in. The size sweep times it between two
 * of the store's resolves, in the same process. resize(size) makes it read
 * a value of another size on the same connection (the buffer paged in and
 * one untimed GET again), so that the limit's connection carries the
 * same history of transfers as the store's (see bench/sweep.lua).
 */
#define RLIMIT_BATCH_MAX 16

typedef struct rlimit {
  int fd;
  char *key;
  char *buf;
  size_t size;
  char *bufs[RLIMIT_BATCH_MAX];   /* batch()'s buffers, made on first use */
} rlimit;

static int rlimit_gc(lua_State *L) {
  rlimit *r = luaL_checkudata(L, 1, "proxystore.bench.redis_limit");
  if (r->fd >= 0) close(r->fd);
  free(r->key);
  free(r->buf);
  for (int k = 0; k < RLIMIT_BATCH_MAX; k++) {
    free(r->bufs[k]);
    r->bufs[k] = NULL;
  }
  r->fd = -1;
  r->key = r->buf = NULL;
  return 0;
}

/* A failed transfer leaves replies unread on the connection, which would
 * make the next call misread them: it is closed, and the error raised. */
static int rlimit_fail(lua_State *L, rlimit *r, const char *op, const char *key,
                       const char *why) {
  close(r->fd);
  r->fd = -1;
  return luaL_error(L, "redis_limit: %s %s: %s", op, key, why);
}

/* A SET at the limit, or a Lua error naming what went wrong (the server's
 * reply when it was not +OK: "-OOM ...", "-MISCONF ..."). */
static void rlimit_set_or_raise(lua_State *L, rlimit *r, const char *key,
                                const char *data, size_t len) {
  char status[LIMIT_STATUS_MAX];
  if (limit_set(r->fd, key, data, len, status) == 0) return;
  rlimit_fail(L, r, "SET", key,
              errno == EPROTO && status[0] ? status : strerror(errno));
}

static int rlimit_get(lua_State *L) {
  rlimit *r = luaL_checkudata(L, 1, "proxystore.bench.redis_limit");
  if (r->fd < 0) return luaL_error(L, "redis_limit: closed");
  double t0 = limit_now_ns();
  if (limit_get(r->fd, r->key, r->buf, r->size) != 0)
    return rlimit_fail(L, r, "GET", r->key, strerror(errno));
  lua_pushnumber(L, (limit_now_ns() - t0) / 1e9);
  return 1;
}

/* The open connection at 1 and the data at 2 of a call that writes:
 * size bytes, as get() reads back. */
static rlimit *rlimit_writer(lua_State *L, const char **data, size_t *len) {
  rlimit *r = luaL_checkudata(L, 1, "proxystore.bench.redis_limit");
  *data = luaL_checklstring(L, 2, len);
  luaL_argcheck(L, *len == r->size, 2, "not the connection's size");
  if (r->fd < 0) luaL_error(L, "redis_limit: closed");
  return r;
}

/* set(data) -> seconds one SET of key to the string data takes at the
 * limit, written from the string itself. */
static int rlimit_set(lua_State *L) {
  const char *data;
  size_t len;
  rlimit *r = rlimit_writer(L, &data, &len);
  double t0 = limit_now_ns();
  rlimit_set_or_raise(L, r, r->key, data, len);
  lua_pushnumber(L, (limit_now_ns() - t0) / 1e9);
  return 1;
}

/* batch(data, n) -> seconds an item of bench/stream.lua's loop pattern at
 * the limit: SET n distinct keys (key:1 .. key:n) to data, GET each back
 * into a buffer of its own (n values held at once, as the loop's consumer
 * holds them; the buffers are reused across calls), then one DEL of all
 * n, as the loop's single-use items are deleted. */
static int rlimit_batch(lua_State *L) {
  const char *data;
  size_t len;
  rlimit *r = rlimit_writer(L, &data, &len);
  lua_Integer n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, n >= 1 && n <= RLIMIT_BATCH_MAX, 3, "1 to 16 keys");
  char keys[RLIMIT_BATCH_MAX][96];
  char del[16 + RLIMIT_BATCH_MAX * 112];
  int dl = snprintf(del, sizeof del, "*%d\r\n$3\r\nDEL\r\n", (int)n + 1);
  for (int k = 0; k < n; k++) {
    int kl = snprintf(keys[k], sizeof keys[k], "%s:%d", r->key, k + 1);
    if (kl < 0 || (size_t)kl >= sizeof keys[k])
      return luaL_error(L, "redis_limit: key too long for batch()");
    dl += snprintf(del + dl, sizeof del - (size_t)dl, "$%d\r\n%s\r\n", kl, keys[k]);
    if (r->bufs[k] == NULL) {
      r->bufs[k] = malloc(r->size + 64);
      if (r->bufs[k] == NULL) return luaL_error(L, "out of memory");
      memset(r->bufs[k], 0, r->size + 64);
    }
  }
  double t0 = limit_now_ns();
  for (int k = 0; k < n; k++) rlimit_set_or_raise(L, r, keys[k], data, len);
  for (int k = 0; k < n; k++)
    if (limit_get(r->fd, keys[k], r->bufs[k], r->size) != 0)
      return rlimit_fail(L, r, "GET", keys[k], strerror(errno));
  struct iovec iov[1] = {{del, (size_t)dl}};
  char status[LIMIT_STATUS_MAX];
  if (limit_write_all(r->fd, iov, 1) != 0 ||
      limit_read_status(r->fd, status, sizeof status) != 0)
    return rlimit_fail(L, r, "DEL", r->key, strerror(errno));
  if (status[0] != ':' || atoll(status + 1) != n)
    return rlimit_fail(L, r, "DEL", r->key, status);
  double took = limit_now_ns() - t0;
  for (int k = 0; k < n; k++)   /* untimed: each key gave back its bytes */
    if (limit_check_body(r->bufs[k], data, len) != 0)
      return luaL_error(L, "redis_limit: GET %s: bytes differ", keys[k]);
  lua_pushnumber(L, took / 1e9 / (double)n);
  return 1;
}

static int rlimit_resize(lua_State *L) {
  rlimit *r = luaL_checkudata(L, 1, "proxystore.bench.redis_limit");
  lua_Integer size = luaL_checkinteger(L, 2);
  luaL_argcheck(L, size >= 0, 2, "size must not be negative");
  if (r->fd < 0) return luaL_error(L, "redis_limit: closed");
  char *b = realloc(r->buf, (size_t)size + 64);
  if (b == NULL) return luaL_error(L, "out of memory");
  memset(b, 0, (size_t)size + 64);
  r->buf = b;
  r->size = (size_t)size;
  for (int k = 0; k < RLIMIT_BATCH_MAX; k++) {   /* made again at the new size */
    free(r->bufs[k]);
    r->bufs[k] = NULL;
  }
  if (limit_get(r->fd, r->key, r->buf, r->size) != 0)   /* warm-up */
    return rlimit_fail(L, r, "GET", r->key, strerror(errno));
  return 0;
}

static int bench_redis_limit(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  const char *key = luaL_checkstring(L, 3);
  lua_Integer size = luaL_checkinteger(L, 4);
  luaL_argcheck(L, port > 0 && port < 65536, 2, "a TCP port");
  luaL_argcheck(L, size >= 0, 4, "size must not be negative");
  rlimit *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->fd = -1;
  r->size = (size_t)size;
  if (luaL_newmetatable(L, "proxystore.bench.redis_limit")) {
    lua_pushcfunction(L, rlimit_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, rlimit_get);
    lua_setfield(L, -2, "get");
    lua_pushcfunction(L, rlimit_gc);
    lua_setfield(L, -2, "close");
    lua_pushcfunction(L, rlimit_set);
    lua_setfield(L, -2, "set");
    lua_pushcfunction(L, rlimit_batch);
    lua_setfield(L, -2, "batch");
    lua_pushcfunction(L, rlimit_resize);
    lua_setfield(L, -2, "resize");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
    return luaL_error(L, "redis_limit: '%s' is not an IPv4 address", host);
  r->key = strdup(key);
  r->buf = malloc(r->size + 64);
  if (r->key == NULL || r->buf == NULL) return luaL_error(L, "out of memory");
  memset(r->buf, 0, r->size + 64);
  r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  /* As hiredis connects (bench/redis_raw.c): no Nagle delay. */
  if (r->fd < 0 ||
      setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
      connect(r->fd, (struct sockaddr *)&a, sizeof a) != 0)
    return luaL_error(L, "redis_limit: connect %s:%d: %s", host, (int)port,
                      strerror(errno));
  fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK);
  if (limit_get(r->fd, r->key, r->buf, r->size) != 0)   /* warm-up */
    return luaL_error(L, "redis_limit: GET %s: %s", key, strerror(errno));
  return 1;
}

static const luaL_Reg bench_funcs[] = {
  {"redis_limit", bench_redis_limit},
  {"copy_strings", bench_copy_strings},
  {"file_read", bench_file_read},
  {"file_read_fresh", bench_file_read_fresh},
  {"sleep", bench_sleep},
  {"build_records", bench_build_records},
  {"read_records", bench_read_records},
  {"memcpy", bench_memcpy},
  {NULL, NULL},
};

int luaopen_proxystore_bench(lua_State *L);
int luaopen_proxystore_bench(lua_State *L) {
  ps_buf_open(L);
  luaL_newlib(L, bench_funcs);
  return 1;
}
