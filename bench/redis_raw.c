/*
 * redis_raw.c: the baselines for the Redis store benchmarks.
 *
 *   redis_raw HOST PORT SOCKET RUNS SIZE...
 *   redis_raw fresh HOST PORT SOCKET tcp|unix KEY SIZE
 *   redis_raw get HOST PORT SOCKET tcp|unix KEY SIZE RUNS
 *
 * For each size and transport (tcp, unix) the first form times
 *   hiredis_set / hiredis_get   redisCommand SET/GET (hiredis 0.14)
 *   limit_set / limit_get       the server-bound limit: SET written with one
 *                               writev, GET's reply read with plain read()
 *                               straight into a buffer reused across runs
 * and prints one line per measurement:
 *   <transport> <op> <size> <median ns> <spread %>
 * spread is (max - min) / median in percent, as bench/run.lua reports.
 * Then, per size and transport, the CPU time one limit_get costs:
 *   <transport> limit_get_cpu <size> <ns with the spin> <ns blocking>
 *
 * The limit waits as the store does (src/core/spin.h): a read that finds
 * the socket empty polls it without sleeping for up to SPIN_NS before it
 * blocks, on every wait of a transfer. Without that the store, which
 * spins, beat its "limit" on small replies (a blocking read pays a wakeup
 * from idle); the spin costs CPU, which the limit_get_cpu line shows.
 *
 * The second form is the limit in a fresh process: it connects, then
 * times one GET of KEY (SIZE bytes) into a freshly allocated buffer and
 * prints the nanoseconds. The third is the warm limit for an existing
 * key: RUNS GETs into one reused buffer, "<median ns> <spread %>".
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "c/redis_limit.h"

static double now_ns(void) {
  return limit_now_ns();
}

static double cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void set_nonblock(int fd, int on) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of n samples (sorted in place) and their spread in percent. */
static double median_spread(double *t, int n, double *spread) {
  qsort(t, (size_t)n, sizeof *t, cmp_d);
  double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
  *spread = med > 0 ? 100 * (t[n - 1] - t[0]) / med : 0;
  return med;
}

static void report(const char *tr, const char *op, size_t size, double *t,
                   int n) {
  double spread, med = median_spread(t, n, &spread);
  printf("%s %s %zu %.0f %.1f\n", tr, op, size, med, spread);
  fflush(stdout);
}

/* "<median ns> <spread %>", the line of the get form. */
static void print_median(double *t, int n) {
  double spread, med = median_spread(t, n, &spread);
  printf("%.0f %.1f\n", med, spread);
}

static void die(const char *what, redisContext *c) {
  fprintf(stderr, "redis_raw: %s: %s\n", what, c ? c->errstr : strerror(errno));
  exit(1);
}

/* The limit's SET (c/redis_limit.h); any failure ends the program,
 * naming the server's reply when it was not +OK. */
static void set_or_die(int fd, const char *key, const char *data, size_t len) {
  char status[LIMIT_STATUS_MAX];
  if (limit_set(fd, key, data, len, status) == 0) return;
  if (errno == EPROTO && status[0]) {
    fprintf(stderr, "redis_raw: SET: the server replied %s\n", status);
    exit(1);
  }
  die("SET", NULL);
}

/* The limit's GET (c/redis_limit.h); any failure ends the program. */
static void get_or_die(int fd, const char *key, char *buf, size_t len) {
  if (limit_get(fd, key, buf, len) != 0)
    die(errno == EPROTO ? "GET reply" : "read", NULL);
}

/* The body of the GET reply in buf (its header checked by get_or_die)
 * must be the size bytes of data. */
static void check_body(const char *buf, const char *data, size_t size) {
  if (limit_check_body(buf, data, size) != 0) die("GET bytes differ", NULL);
}

static void bench(const char *tr, redisContext *c, size_t size, int runs) {
  char *data = malloc(size), *buf = malloc(size + 64);
  double *t = malloc(runs * sizeof *t);
  for (size_t i = 0; i < size; i++) data[i] = (char)(i * 31);
  memset(buf, 0, size + 64);     /* the limit's buffer is warm: reused */
  const char *key = "redis_raw:bench";
  redisReply *r;
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    r = redisCommand(c, "SET %s %b", key, data, size);
    t[i] = now_ns() - t0;
    if (!r) die("SET", c);
    freeReplyObject(r);
  }
  report(tr, "hiredis_set", size, t, runs);
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    r = redisCommand(c, "GET %s", key);
    t[i] = now_ns() - t0;
    if (!r || r->type != REDIS_REPLY_STRING || r->len != size) die("GET", c);
    freeReplyObject(r);
  }
  report(tr, "hiredis_get", size, t, runs);
  /* hiredis reads its (blocking) socket itself; the limit's waits are
   * ours, on a non-blocking one, as in the store. */
  set_nonblock(c->fd, 1);
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    set_or_die(c->fd, key, data, size);
    t[i] = now_ns() - t0;
  }
  report(tr, "limit_set", size, t, runs);
  double cpu0 = cpu_ns();
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    get_or_die(c->fd, key, buf, size);
    t[i] = now_ns() - t0;
  }
  double cpu_spin = (cpu_ns() - cpu0) / runs;
  check_body(buf, data, size);
  report(tr, "limit_get", size, t, runs);
  /* The same GETs blocking at once: what the spin costs in CPU. */
  limit_spin = 0;
  cpu0 = cpu_ns();
  for (int i = 0; i < runs; i++) get_or_die(c->fd, key, buf, size);
  double cpu_block = (cpu_ns() - cpu0) / runs;
  limit_spin = 1;
  printf("%s limit_get_cpu %zu %.0f %.0f\n", tr, size, cpu_spin, cpu_block);
  fflush(stdout);
  set_nonblock(c->fd, 0);
  r = redisCommand(c, "DEL %s", key);
  freeReplyObject(r);
  free(data);
  free(buf);
  free(t);
}

static redisContext *connect_to(char **argv) {
  int unix_ = strcmp(argv[5], "unix") == 0;
  redisContext *c = unix_ ? redisConnectUnix(argv[4])
                          : redisConnect(argv[2], atoi(argv[3]));
  if (!c || c->err) die("connect", c);
  set_nonblock(c->fd, 1);
  return c;
}

/* redis_raw fresh HOST PORT SOCKET tcp|unix KEY SIZE */
static int fresh(char **argv) {
  redisContext *c = connect_to(argv);
  size_t size = strtoull(argv[7], NULL, 10);
  double t0 = now_ns();
  char *buf = malloc(size + 64);
  if (buf == NULL) die("malloc", NULL);
  get_or_die(c->fd, argv[6], buf, size);
  double dt = now_ns() - t0;
  printf("%.0f\n", dt);
  free(buf);
  redisFree(c);
  return 0;
}

/* redis_raw get HOST PORT SOCKET tcp|unix KEY SIZE RUNS */
static int warm_get(char **argv) {
  redisContext *c = connect_to(argv);
  size_t size = strtoull(argv[7], NULL, 10);
  int runs = atoi(argv[8]);
  if (runs < 1) runs = 1;
  char *buf = malloc(size + 64);
  double *t = malloc((size_t)runs * sizeof *t);
  if (buf == NULL || t == NULL) die("malloc", NULL);
  memset(buf, 0, size + 64);
  get_or_die(c->fd, argv[6], buf, size);   /* warm-up */
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    get_or_die(c->fd, argv[6], buf, size);
    t[i] = now_ns() - t0;
  }
  print_median(t, runs);
  free(buf);
  free(t);
  redisFree(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 8 && strcmp(argv[1], "fresh") == 0) return fresh(argv);
  if (argc == 9 && strcmp(argv[1], "get") == 0) return warm_get(argv);
  if (argc < 6) {
    fprintf(stderr, "usage: redis_raw HOST PORT SOCKET RUNS SIZE...\n");
    return 2;
  }
  int runs = atoi(argv[4]);
  for (int tr = 0; tr < 2; tr++) {
    redisContext *c = tr == 0 ? redisConnect(argv[1], atoi(argv[2]))
                              : redisConnectUnix(argv[3]);
    if (!c || c->err) die("connect", c);
    for (int i = 5; i < argc; i++) {
      size_t size = strtoull(argv[i], NULL, 10);
      /* fewer runs for the largest sizes, never fewer than 5 */
      int n = size >= (50u << 20) ? (runs < 5 ? runs : 5) : runs;
      bench(tr == 0 ? "tcp" : "unix", c, size, n < 5 ? 5 : n);
    }
    redisFree(c);
  }
  return 0;
}
