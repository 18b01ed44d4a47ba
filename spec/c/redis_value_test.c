/*
 * redis_value_test.c: whole replies of any shape (ps_rconn_read_value)
 * and waits the server holds on purpose (ps_rconn_allow_wait), from plain
 * C against a running redis-server: redis_value_test PORT.
 * Prints "ok N - what" / "not ok N - what"; exit status 1 on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "redis_conn.h"
#include "check.h"

/* Sends one command (words separated by spaces) and reads its reply. */
static int call(ps_rconn *c, const char *words, const ps_rlimits *lim,
                double wait, ps_rvalue *v, ps_berr *err) {
  char buf[512];
  char *argv[32];
  size_t argc = 0;
  snprintf(buf, sizeof buf, "%s", words);
  for (char *t = strtok(buf, " "); t && argc < 32; t = strtok(NULL, " "))
    argv[argc++] = t;
  memset(v, 0, sizeof *v);
  ps_rconn_begin_call(c);
  int code = ps_rconn_ensure(c, err);
  if (code) return code;
  ps_rcmd_begin(c, argc);
  for (size_t i = 0; i < argc; i++) ps_rcmd_str(c, argv[i]);
  code = ps_rconn_send(c, err);
  if (!code) {
    ps_rconn_allow_wait(c, wait);
    code = ps_rconn_read_value(c, v, lim, err);
  }
  ps_rconn_settle(c);
  return code;
}

static int is_bulk(const ps_rvalue *v, const char *s) {
  return v && v->type == PS_R_BULK && v->n >= 0 && v->len == strlen(s) &&
         memcmp(v->str, s, v->len) == 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: redis_value_test PORT\n");
    return 2;
  }
  ps_bconfig cfg = {.host = "127.0.0.1", .port = atoi(argv[1]),
                    .timeout = 1.0};
  ps_rconn c;
  ps_berr err = {0, ""};
  ps_rvalue v;
  check(ps_rconn_init(&c, &cfg, &err) == PS_BOK, "init", &err);

  /* scalars */
  int code = call(&c, "SET rv:k hello", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BOK && v.type == PS_R_STATUS && strcmp(v.str, "OK") == 0,
        "a status reply", &err);
  ps_rvalue_free(&v);
  code = call(&c, "GET rv:k", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BOK && is_bulk(&v, "hello"), "a bulk reply", &err);
  ps_rvalue_free(&v);
  code = call(&c, "GET rv:absent", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BOK && v.type == PS_R_BULK && v.n == -1 && !v.str,
        "a nil bulk reply", &err);
  ps_rvalue_free(&v);
  code = call(&c, "NOSUCHCOMMAND", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BOK && v.type == PS_R_ERROR && strstr(v.str, "unknown"),
        "an error reply is a value, not a failure", &err);
  ps_rvalue_free(&v);

  /* nested arrays: stream entries are [[id, [field, value, ...]], ...] */
  call(&c, "DEL rv:s", &ps_rlimits_small, 0, &v, &err);
  ps_rvalue_free(&v);
  call(&c, "XADD rv:s 1-1 a 1 b 2", &ps_rlimits_small, 0, &v, &err);
  ps_rvalue_free(&v);
  call(&c, "XADD rv:s 2-1 c 3", &ps_rlimits_small, 0, &v, &err);
  ps_rvalue_free(&v);
  code = call(&c, "XRANGE rv:s - +", &ps_rlimits_small, 0, &v, &err);
  const ps_rvalue *e0 = ps_rvalue_at(&v, 0), *e1 = ps_rvalue_at(&v, 1);
  check(code == PS_BOK && v.type == PS_R_ARRAY && v.n == 2 &&
        is_bulk(ps_rvalue_at(e0, 0), "1-1") &&
        is_bulk(ps_rvalue_at(ps_rvalue_at(e0, 1), 3), "2") &&
        is_bulk(ps_rvalue_at(ps_rvalue_at(e1, 1), 0), "c") &&
        ps_rvalue_at(&v, 2) == NULL && ps_rvalue_at(e0, 9) == NULL,
        "stream entries as nested arrays", &err);
  ps_rvalue_free(&v);
  check(c.pending == 0 && ps_rconn_owned(&c),
        "a nested reply counts as one reply read", NULL);

  /* limits: what a reply may make the reader allocate */
  ps_rlimits few = {1 << 20, 3, 8};
  code = call(&c, "XRANGE rv:s - +", &few, 0, &v, &err);
  check(code == PS_BPROTO && !ps_rconn_owned(&c),
        "more elements than allowed: refused, connection closed", &err);
  ps_rvalue_free(&v);
  ps_rlimits shallow = {1 << 20, 100, 2};
  code = call(&c, "XRANGE rv:s - +", &shallow, 0, &v, &err);
  check(code == PS_BPROTO, "nested deeper than allowed: refused", &err);
  ps_rvalue_free(&v);
  ps_rlimits tiny = {3, 100, 8};
  code = call(&c, "GET rv:k", &tiny, 0, &v, &err);
  check(code == PS_BPROTO, "more bytes than allowed: refused", &err);
  ps_rvalue_free(&v);
  code = call(&c, "GET rv:k", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BOK && is_bulk(&v, "hello"),
        "the next call reconnects and reads its own reply", &err);
  ps_rvalue_free(&v);

  /* a wait the server holds on purpose: BLPOP 2 with a 1 s timeout */
  double t0 = now();
  code = call(&c, "BLPOP rv:empty 2", &ps_rlimits_small, 2.0, &v, &err);
  double dt = now() - t0;
  check(code == PS_BOK && v.type == PS_R_ARRAY && v.n == -1 && dt >= 1.9,
        "BLPOP past the connection timeout: a nil array, not a timeout",
        &err);
  ps_rvalue_free(&v);
  /* without allow_wait the same wait is a hang to the connection */
  code = call(&c, "BLPOP rv:empty 2", &ps_rlimits_small, 0, &v, &err);
  check(code == PS_BTIMEOUT, "an unannounced wait times out", &err);
  ps_rvalue_free(&v);
  call(&c, "RPUSH rv:list x", &ps_rlimits_small, 0, &v, &err);
  ps_rvalue_free(&v);
  code = call(&c, "BLPOP rv:list 2", &ps_rlimits_small, 2.0, &v, &err);
  check(code == PS_BOK && is_bulk(ps_rvalue_at(&v, 0), "rv:list") &&
        is_bulk(ps_rvalue_at(&v, 1), "x"), "BLPOP of a ready list", &err);
  ps_rvalue_free(&v);

  ps_rconn_free(&c);
  printf("%d tests, %d failures\n", count, failures);
  return failures ? 1 : 0;
}
