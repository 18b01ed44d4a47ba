/*
 * queue_raw.c: the Redis floor for the queue pool benchmarks (bench/queue.lua).
 *
 *   queue_raw HOST PORT RUNS
 *
 * What a task queue over Redis costs at the least, in C with hiredis and
 * no payload, the same path the queue pool takes:
 *   roundtrip   one task: XADD; a worker process blocked in XREADGROUP gets
 *               it and answers RPUSH + XACK in one write; BLPOP gets it.
 *   throughput  10000 tasks, 2 worker processes: XADD pipelined in batches
 *               of 512, workers read COUNT 128 and answer each batch with
 *               one RPUSH of all its results and one XACK of all its ids,
 *               the submitter pops results with BLPOP + LPOP 1000.
 * Prints "roundtrip <median ns> <spread %>" and "throughput <median
 * tasks/s> <spread %>", spread being (max - min) / median as
 * bench/run.lua reports it.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define STREAM "queue_raw:s"
#define GROUP "g"
#define RESULTS "queue_raw:r"
#define NTASKS 10000
#define ADDBATCH 512
#define READCOUNT 128

static const char *host;
static int port;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *what, double *t, int n) {
  qsort(t, n, sizeof *t, cmp_d);
  double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
  printf("%s %.0f %.1f\n", what, med, med > 0 ? 100 * (t[n - 1] - t[0]) / med : 0);
  fflush(stdout);
}

static redisContext *connect_or_die(void) {
  redisContext *c = redisConnect(host, port);
  if (!c || c->err) {
    fprintf(stderr, "queue_raw: connect: %s\n", c ? c->errstr : "out of memory");
    exit(1);
  }
  return c;
}

static redisReply *cmd(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (!r || r->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "queue_raw: %s: %s\n", fmt, r ? r->str : c->errstr);
    exit(1);
  }
  return r;
}

static void fresh(redisContext *c) {
  freeReplyObject(cmd(c, "DEL " STREAM " " RESULTS));
  freeReplyObject(cmd(c, "XGROUP CREATE " STREAM " " GROUP " $ MKSTREAM"));
}

/* A worker: reads batches and answers each with one RPUSH and one XACK,
   until its parent kills it. */
static void worker(int id) {
  redisContext *c = connect_or_die();
  char consumer[32];
  snprintf(consumer, sizeof consumer, "w%d", id);
  const char *argv[2 + 3 + READCOUNT];
  size_t lens[2 + 3 + READCOUNT];
  for (;;) {
    redisReply *r = redisCommand(c, "XREADGROUP GROUP " GROUP " %s COUNT %d "
                                 "BLOCK 1000 STREAMS " STREAM " >", consumer,
                                 READCOUNT);
    if (!r) exit(0);
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
      freeReplyObject(r);
      continue;
    }
    redisReply *es = r->element[0]->element[1];
    size_t n = es->elements;
    argv[0] = "RPUSH", lens[0] = 5;
    argv[1] = RESULTS, lens[1] = strlen(RESULTS);
    for (size_t i = 0; i < n; i++) {
      argv[2 + i] = es->element[i]->element[0]->str;   /* result: the id */
      lens[2 + i] = es->element[i]->element[0]->len;
    }
    redisAppendCommandArgv(c, (int)(2 + n), argv, lens);
    argv[0] = "XACK", lens[0] = 4;
    argv[1] = STREAM, lens[1] = strlen(STREAM);
    argv[2] = GROUP, lens[2] = strlen(GROUP);
    for (size_t i = 0; i < n; i++) {
      argv[3 + i] = es->element[i]->element[0]->str;
      lens[3 + i] = es->element[i]->element[0]->len;
    }
    redisAppendCommandArgv(c, (int)(3 + n), argv, lens);
    freeReplyObject(r);
    for (int k = 0; k < 2; k++) {
      redisReply *a;
      if (redisGetReply(c, (void **)&a) != REDIS_OK) exit(0);
      freeReplyObject(a);
    }
  }
}

static pid_t start_worker(int id) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    worker(id);
    _exit(0);
  }
  return pid;
}

static void stop(pid_t *pids, int n) {
  for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
  for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
}

static double one_roundtrip(redisContext *c) {
  double t0 = now_ns();
  freeReplyObject(cmd(c, "XADD " STREAM " * t x"));
  freeReplyObject(cmd(c, "BLPOP " RESULTS " 10"));
  return now_ns() - t0;
}

static double throughput(redisContext *c) {
  double t0 = now_ns();
  for (int sent = 0; sent < NTASKS; sent += ADDBATCH) {
    int n = NTASKS - sent < ADDBATCH ? NTASKS - sent : ADDBATCH;
    for (int i = 0; i < n; i++)
      redisAppendCommand(c, "XADD " STREAM " * t x");
    for (int i = 0; i < n; i++) {
      redisReply *r;
      if (redisGetReply(c, (void **)&r) != REDIS_OK) exit(1);
      freeReplyObject(r);
    }
  }
  int got = 0;
  while (got < NTASKS) {
    redisAppendCommand(c, "BLPOP " RESULTS " 10");
    redisAppendCommand(c, "LPOP " RESULTS " 1000");
    redisReply *a, *b;
    if (redisGetReply(c, (void **)&a) != REDIS_OK ||
        redisGetReply(c, (void **)&b) != REDIS_OK) exit(1);
    if (a->type == REDIS_REPLY_ARRAY) got++;
    if (b->type == REDIS_REPLY_ARRAY) got += (int)b->elements;
    freeReplyObject(a);
    freeReplyObject(b);
  }
  return NTASKS / ((now_ns() - t0) / 1e9);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: queue_raw HOST PORT RUNS\n");
    return 2;
  }
  host = argv[1];
  port = atoi(argv[2]);
  int runs = atoi(argv[3]);
  if (runs < 3) runs = 3;
  redisContext *c = connect_or_die();

  /* one task at a time, one worker */
  fresh(c);
  pid_t w[2];
  w[0] = start_worker(0);
  int n = runs * 100;
  double *t = malloc((size_t)n * sizeof *t);
  for (int i = 0; i < 50; i++) one_roundtrip(c);   /* warm */
  for (int i = 0; i < n; i++) t[i] = one_roundtrip(c);
  stop(w, 1);
  report("roundtrip", t, n);

  /* 10000 tasks, two workers, batched */
  double *tp = malloc((size_t)runs * sizeof *tp);
  for (int i = -1; i < runs; i++) {   /* one warm-up run */
    fresh(c);
    w[0] = start_worker(0);
    w[1] = start_worker(1);
    double v = throughput(c);
    stop(w, 2);
    if (i >= 0) tp[i] = v;
  }
  report("throughput", tp, runs);
  freeReplyObject(cmd(c, "DEL " STREAM " " RESULTS));
  redisFree(c);
  free(t);
  free(tp);
  return 0;
}
