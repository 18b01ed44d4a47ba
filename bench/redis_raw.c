/*
 * redis_raw.c: the baselines for the Redis store benchmarks.
 *
 *   redis_raw HOST PORT SOCKET RUNS SIZE...
 *
 * For each size and transport (tcp, unix) it times
 *   hiredis_set / hiredis_get   redisCommand SET/GET (hiredis 0.14)
 *   limit_set / limit_get       the server-bound limit: SET written with one
 *                               writev, GET's reply read with plain read()
 *                               straight into a buffer reused across runs
 * and prints one line per measurement:
 *   <transport> <op> <size> <median ns> <spread %>
 * spread is (max - min) / median in percent, as bench/run.lua reports.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *tr, const char *op, size_t size, double *t,
                   int n) {
  qsort(t, n, sizeof *t, cmp_d);
  double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
  printf("%s %s %zu %.0f %.1f\n", tr, op, size, med,
         med > 0 ? 100 * (t[n - 1] - t[0]) / med : 0);
  fflush(stdout);
}

static void die(const char *what, redisContext *c) {
  fprintf(stderr, "redis_raw: %s: %s\n", what, c ? c->errstr : strerror(errno));
  exit(1);
}

static void write_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("writev", NULL);
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= w;
    }
  }
}

static void read_exact(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("read", NULL);
    p += r;
    n -= r;
  }
}

/* Reads a short reply ("+OK\r\n") whole: it is all the server sends. */
static void read_status(int fd, char *line, size_t cap) {
  size_t n = 0;
  while (n < 2 || line[n - 1] != '\n') {
    if (n + 1 >= cap) die("line too long", NULL);
    ssize_t r = read(fd, line + n, cap - 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("read", NULL);
    n += r;
  }
  line[n - 2] = '\0';
}

static void limit_set(int fd, const char *key, const char *data, size_t len) {
  char hdr[128], line[64];
  int hl = snprintf(hdr, sizeof hdr, "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n",
                    strlen(key), key, len);
  struct iovec iov[3] = {{hdr, hl}, {(void *)data, len}, {"\r\n", 2}};
  write_all(fd, iov, 3);
  read_status(fd, line, sizeof line);
  if (strcmp(line, "+OK") != 0) die("SET reply", NULL);
}

/*
 * The reply goes into buf (len + 64 bytes, reused): the first read takes
 * whatever has arrived, header included; the header is parsed in place and
 * the rest of the body read right after it. No copy, no parsing library.
 */
static void limit_get(int fd, const char *key, char *buf, size_t len) {
  char hdr[128];
  int hl = snprintf(hdr, sizeof hdr, "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
                    strlen(key), key);
  struct iovec iov[1] = {{hdr, hl}};
  write_all(fd, iov, 1);
  size_t total = 0, need = 0;
  char *eol = NULL;
  while (eol == NULL) {
    ssize_t r = read(fd, buf + total, len + 64 - total);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("read", NULL);
    total += r;
    eol = memchr(buf, '\n', total);
  }
  if (buf[0] != '$' || (size_t)atoll(buf + 1) != len) die("GET reply", NULL);
  need = (size_t)(eol + 1 - buf) + len + 2;
  if (total < need) read_exact(fd, buf + total, need - total);
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
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    limit_set(c->fd, key, data, size);
    t[i] = now_ns() - t0;
  }
  report(tr, "limit_set", size, t, runs);
  for (int i = 0; i < runs; i++) {
    double t0 = now_ns();
    limit_get(c->fd, key, buf, size);
    t[i] = now_ns() - t0;
  }
  {
    char *body = memchr(buf, '\n', 64) + 1;
    if (memcmp(body, data, size) != 0) die("GET bytes differ", NULL);
  }
  report(tr, "limit_get", size, t, runs);
  r = redisCommand(c, "DEL %s", key);
  freeReplyObject(r);
  free(data);
  free(buf);
  free(t);
}

int main(int argc, char **argv) {
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
