/*
 * backend_redis_test.c: exercises the Redis backend from plain C against a
 * running redis-server: backend_redis_test PORT SOCKETPATH.
 * Prints "ok N - what" / "not ok N - what" lines; exit status 1 on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "prefetch.h"
#include "check.h"

static ps_key K(const char *s) { return ps_key_of(s, strlen(s)); }

/* Keys matching pattern on the server ($PORT), or -1 if redis-cli fails. */
static int count_keys(const char *pattern) {
  char cmd[256], line[512];
  snprintf(cmd, sizeof cmd, "redis-cli -p \"$PORT\" --raw keys '%s'", pattern);
  FILE *f = popen(cmd, "r");
  if (f == NULL) return -1;
  int n = 0;
  while (fgets(line, sizeof line, f))
    if (line[0] != '\n') n++;
  return pclose(f) == 0 ? n : -1;
}

static void roundtrip(void *ctx, const char *key, size_t len) {
  const ps_backend_ops *o = &ps_backend_redis;
  ps_berr err = {0};
  char *data = malloc(len ? len : 1);
  for (size_t i = 0; i < len; i++) data[i] = (char)(i * 7 + len);
  ps_version v, v2;
  char what[128];
  snprintf(what, sizeof what, "put %zu bytes", len);
  check(o->put(ctx, K(key), data, len, &v, &err) == PS_BOK, what, &err);
  ps_blob b = {0};
  int c = o->get(ctx, K(key), NULL, &b, &v2, &err);
  snprintf(what, sizeof what, "get %zu bytes back equal, same version", len);
  check(c == PS_BOK && b.len == len && memcmp(b.data, data, len) == 0 &&
        memcmp(&v, &v2, sizeof v) == 0, what, &err);
  ps_blob_release(&b);
  c = o->get(ctx, K(key), &v, &b, &v2, &err);
  check(c == PS_BUNCHANGED && b.data == NULL, "get with same version: unchanged", &err);
  ps_version other = v;
  other.bytes[0] ^= 1;
  c = o->get(ctx, K(key), &other, &b, &v2, &err);
  check(c == PS_BOK && b.len == len && memcmp(b.data, data, len) == 0,
        "get with another version: bytes", &err);
  ps_blob_release(&b);
  free(data);
}

int main(int argc, char **argv) {
  (void)argc;
  const ps_backend_ops *o = &ps_backend_redis;
  ps_berr err = {0};
  ps_bconfig cfg = {.host = "127.0.0.1", .port = atoi(argv[1]), .timeout = 30,
                    .prefix = "t:"};
  void *ctx = o->open(&cfg, &err);
  check(ctx != NULL, "open tcp", &err);
  if (!ctx) return 1;
  roundtrip(ctx, "a", 0);
  roundtrip(ctx, "b", 1000);
  roundtrip(ctx, "c", 1 << 20);
  roundtrip(ctx, "d", 10 << 20);
  ps_blob b = {0};
  check(o->get(ctx, K("nope"), NULL, &b, NULL, &err) == PS_BNOTFOUND, "missing", &err);
  ps_version v;
  check(o->get(ctx, K("nope"), &v, &b, NULL, &err) == PS_BNOTFOUND, "missing with have", &err);
  int found = 5;
  check(o->exists(ctx, K("b"), &found, &err) == PS_BOK && found == 1, "exists", &err);
  check(o->evict(ctx, K("b"), &err) == PS_BOK, "evict", &err);
  check(o->exists(ctx, K("b"), &found, &err) == PS_BOK && found == 0, "gone", &err);
  check(o->evict(ctx, K("b"), &err) == PS_BOK, "evict absent", &err);
  system("redis-cli -p \"$PORT\" hset t:h f v >/dev/null");
  int c = o->get(ctx, K("h"), NULL, &b, NULL, &err);
  check(c == PS_BPROTO && strstr(err.msg, "not a string"), "wrong type", &err);
  printf("# %s\n", err.msg);
  c = o->get(ctx, K("h"), &v, &b, NULL, &err);
  check(c == PS_BPROTO && strstr(err.msg, "not a string"), "wrong type with have", &err);
  system("redis-cli -p \"$PORT\" set t:s hello >/dev/null");
  c = o->get(ctx, K("s"), NULL, &b, NULL, &err);
  check(c == PS_BPROTO, "foreign string", &err);
  printf("# %s\n", err.msg);
  check(o->exists(ctx, K("a"), &found, &err) == PS_BOK && found, "after proto error works", &err);
  /* batches */
  ps_key keys[4] = {K("x1"), K("x2"), K("x3"), K("nope")};
  ps_blob vals[3] = {{"one", 3, 0, 0}, {"two!", 4, 0, 0}, {"", 0, 0, 0}};
  ps_version vs[4];
  check(o->put_batch(ctx, 3, keys, vals, vs, &err) == PS_BOK, "put_batch", &err);
  ps_blob outs[4];
  int codes[4];
  c = o->get_batch(ctx, 4, keys, outs, vs, codes, &err);
  check(c == PS_BOK && codes[0] == PS_BOK && outs[0].len == 3 && !memcmp(outs[0].data, "one", 3) &&
        codes[1] == PS_BOK && outs[1].len == 4 && codes[2] == PS_BOK && outs[2].len == 0 &&
        codes[3] == PS_BNOTFOUND, "get_batch", &err);
  for (int i = 0; i < 4; i++) ps_blob_release(&outs[i]);
  o->close(ctx);
  /* chunking */
  setenv("PROXYSTORE_REDIS_CHUNK_SIZE", "1000", 1);
  ctx = o->open(&cfg, &err);
  roundtrip(ctx, "big", 4500);
  check(count_keys("t:big*") == 6, "4500 bytes: the main key and 5 chunks", NULL);
  roundtrip(ctx, "big", 2500);
  check(count_keys("t:big*") == 4,
        "overwritten with 2500 bytes: 3 chunks, the old 5 gone", NULL);
  check(o->evict(ctx, K("big"), &err) == PS_BOK, "evict chunked", &err);
  check(count_keys("t:big*") == 0, "evicted: no key left", NULL);
  keys[0] = K("cb1");
  vals[0] = (ps_blob){malloc(3000), 3000, 0, 0};
  memset(vals[0].data, 'z', 3000);
  check(o->put_batch(ctx, 2, keys, vals, vs, &err) == PS_BOK, "put_batch chunked", &err);
  c = o->get_batch(ctx, 2, keys, outs, vs, codes, &err);
  check(c == PS_BOK && outs[0].len == 3000 && outs[0].data[2999] == 'z' && outs[1].len == 4, "get_batch chunked", &err);
  for (int i = 0; i < 2; i++) ps_blob_release(&outs[i]);
  free(vals[0].data);
  unsetenv("PROXYSTORE_REDIS_CHUNK_SIZE");
  /* fork */
  pid_t pid = fork();
  if (pid == 0) {
    ps_blob bb = {0};
    int cc = o->get(ctx, K("x1"), NULL, &bb, NULL, &err);
    _exit(cc == PS_BOK && bb.len == 3 ? 0 : 1);
  }
  int st;
  waitpid(pid, &st, 0);
  check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child reads via own connection", NULL);
  c = o->get(ctx, K("x1"), NULL, &b, NULL, &err);
  check(c == PS_BOK && b.len == 3, "parent still fine after fork", &err);
  ps_blob_release(&b);
  o->close(ctx);
  /* prefetch */
  {
    ps_prefetch *pf = ps_prefetch_start(o, &cfg, K("d"), &err);
    ps_prefetch *pf2 = ps_prefetch_start(o, &cfg, K("nope"), &err);
    ps_prefetch *pf3 = ps_prefetch_start(o, &cfg, K("c"), &err);
    ps_prefetch_free(pf3);   /* abandoned while queued or running */
    ps_version pv;
    c = ps_prefetch_wait(pf, &b, &pv, &err);
    check(c == PS_BOK && b.len == (10u << 20), "prefetch 10 MiB", &err);
    ps_blob_release(&b);
    ps_prefetch_free(pf);
    c = ps_prefetch_wait(pf2, &b, &pv, &err);
    check(c == PS_BNOTFOUND, "prefetch missing", &err);
    ps_prefetch_free(pf2);
    pf = ps_prefetch_start(o, &cfg, K("d"), &err);
    pid = fork();
    if (pid == 0) {
      int cc = ps_prefetch_wait(pf, &b, &pv, &err);
      _exit(cc == PS_BOK && b.len == (10u << 20) ? 0 : 1);
    }
    waitpid(pid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "prefetch completes in a forked child", NULL);
    c = ps_prefetch_wait(pf, &b, &pv, &err);
    check(c == PS_BOK && b.len == (10u << 20), "and in the parent", &err);
    ps_blob_release(&b);
    ps_prefetch_free(pf);
    ps_bconfig bad = {.host = "127.0.0.1", .port = 1, .timeout = 30};
    pf = ps_prefetch_start(o, &bad, K("d"), &err);
    c = ps_prefetch_wait(pf, &b, &pv, &err);
    check(c == PS_BCONN, "prefetch unreachable", &err);
    ps_prefetch_free(pf);
    /* more configs than the worker keeps contexts for */
    char prefixes[12][16];
    for (int i = 0; i < 12; i++) {
      ps_bconfig c2 = cfg;
      snprintf(prefixes[i], sizeof prefixes[i], "p%d:", i);
      c2.prefix = prefixes[i];
      pf = ps_prefetch_start(o, &c2, K("nope"), &err);
      c = ps_prefetch_wait(pf, &b, &pv, &err);
      ps_prefetch_free(pf);
      if (c != PS_BNOTFOUND) break;
    }
    check(c == PS_BNOTFOUND, "prefetch over many configs", &err);
    pf = ps_prefetch_start(o, &cfg, K("d"), &err);
    c = ps_prefetch_wait(pf, &b, &pv, &err);
    check(c == PS_BOK && b.len == (10u << 20), "prefetch after contexts were recycled", &err);
    ps_blob_release(&b);
    ps_prefetch_free(pf);
    pf = ps_prefetch_start(o, &cfg, K("d"), &err);
    ps_prefetch_free(pf);   /* left running at exit */
  }
  /* unix socket */
  ps_bconfig ucfg = {.path = argv[2], .timeout = 30, .prefix = "t:", .db = 3};
  ctx = o->open(&ucfg, &err);
  check(ctx != NULL, "open unix db 3", &err);
  if (ctx) { roundtrip(ctx, "u", 5000); o->close(ctx); }
  /* failures */
  ps_bconfig bad = {.host = "127.0.0.1", .port = 1, .timeout = 30};
  check(o->open(&bad, &err) == NULL && err.code == PS_BCONN, "unreachable", &err);
  printf("# %s\n", err.msg);
  bad = (ps_bconfig){.host = "127.0.0.1", .port = atoi(argv[1]), .timeout = 30, .password = "x"};
  check(o->open(&bad, &err) == NULL && err.code == PS_BCONFIG, "bad password", &err);
  printf("# %s\n", err.msg);
  bad = (ps_bconfig){.host = "127.0.0.1", .port = atoi(argv[1]), .timeout = 30, .db = 99};
  check(o->open(&bad, &err) == NULL && err.code == PS_BCONFIG, "bad db", &err);
  printf("# %s\n", err.msg);
  printf("%d tests, %d failures\n", count, failures);
  return failures != 0;
}
