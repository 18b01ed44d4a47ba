/*
 * groups_streams_test.c: what streams of proxies added to the groups
 * module (src/redis/groups.h): acknowledging and reading in one call, the
 * newest entries, reclaiming. Against a running redis-server:
 * groups_streams_test PORT. Prints "ok N - what" / "not ok N - what";
 * exit status 1 on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "groups.h"
#include "check.h"

static long long pending(ps_rgroups *g, ps_berr *err) {
  long long n = -1;
  char lowest[PS_RID_MAX];
  if (ps_rg_pending_summary(g, "t", "grp", &n, lowest, err) != PS_BOK)
    return -1;
  return n;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: groups_streams_test PORT\n");
    return 2;
  }
  /* a generous timeout: on a loaded machine a call may take seconds */
  ps_bconfig cfg = {.host = "127.0.0.1", .port = atoi(argv[1]),
                    .timeout = 30.0};
  ps_berr err = {0, ""};
  ps_rgroups *g = ps_rg_open(&cfg, &err);
  check(g != NULL, "open", &err);
  if (g == NULL) return 1;
  const char *flush[] = {"FLUSHALL"};
  ps_rcmd fl = {1, flush, NULL};
  ps_rvalue v;
  ps_rg_call(g, 1, &fl, &v, &err);
  ps_rvalue_free(&v);

  check(ps_rg_create_group(g, "t", "grp", "0", &err) == PS_BOK, "group", &err);
  ps_rbytes f[] = {{"k", 1}, {"1", 1}, {"k", 1}, {"2", 1}, {"k", 1}, {"3", 1}};
  ps_rnew add[] = {{1, f}, {1, f + 2}, {1, f + 4}};
  char ids[3][PS_RID_MAX];
  check(ps_rg_add(g, "t", NULL, 3, add, ids, &err) == PS_BOK, "add 3", &err);

  /* the newest entry */
  ps_rentries es;
  int code = ps_rg_revrange(g, "t", "+", "-", 1, &es, &err);
  check(code == PS_BOK && es.n == 1 && !strcmp(es.e[0].id, ids[2]),
        "revrange count 1 is the last entry", &err);
  ps_rentries_free(&es);

  /* acknowledging and reading in one round trip, with and without a
     wake fd (which sends the XACK on its own first) */
  int woken = -1;
  long long acked = -1;
  code = ps_rg_ack_read_group(g, "t", "grp", "c", 0, NULL, &acked, ">", 1, -1,
                              &es, &woken, &err);
  check(code == PS_BOK && es.n == 1 && acked == 0, "read, nothing to ack",
        &err);
  ps_rentries_free(&es);
  const char *first[] = {ids[0]};
  code = ps_rg_ack_read_group(g, "t", "grp", "c", 1, first, &acked, ">", 1,
                              100, &es, &woken, &err);
  check(code == PS_BOK && es.n == 1 && !strcmp(es.e[0].id, ids[1]) &&
        acked == 1 && woken == 0 && pending(g, &err) == 1,
        "ack the first, read the second (held read)", &err);
  ps_rentries_free(&es);
  int pfd[2];
  check(pipe(pfd) == 0, "pipe", NULL);
  ps_rg_set_wake_fd(g, pfd[0]);
  const char *second[] = {ids[1]};
  code = ps_rg_ack_read_group(g, "t", "grp", "c", 1, second, &acked, ">", 1,
                              100, &es, &woken, &err);
  check(code == PS_BOK && es.n == 1 && !strcmp(es.e[0].id, ids[2]) &&
        acked == 1 && woken == 0 && pending(g, &err) == 1,
        "the same with a wake fd set", &err);
  ps_rentries_free(&es);
  if (write(pfd[1], "x", 1) != 1) return 1;
  const char *third[] = {ids[2]};
  double t0 = now();
  code = ps_rg_ack_read_group(g, "t", "grp", "c", 1, third, &acked, ">", 1,
                              10000, &es, &woken, &err);
  check(code == PS_BOK && woken == 1 && es.n == 0 && acked == 1 &&
        now() - t0 < 5 && pending(g, &err) == 0,
        "woken: the ack is made, the 10 s held read ends at once", &err);
  ps_rentries_free(&es);
  ps_rg_set_wake_fd(g, -1);
  close(pfd[0]);
  close(pfd[1]);
  code = ps_rg_ack_read_group(g, "none", "grp", "c", 1, third, &acked, ">", 1,
                              -1, &es, &woken, &err);
  check(code == PS_BNOTFOUND, "an unknown group is PS_BNOTFOUND", &err);
  ps_rentries_free(&es);

  /* reclaiming: a dead consumer's entries, with their delivery counts;
     an entry deleted while pending leaves the pending list */
  check(ps_rg_add(g, "t", NULL, 3, add, ids, &err) == PS_BOK, "add 3 more",
        &err);
  code = ps_rg_read_group(g, "t", "grp", "dead", ">", 3, -1, &es, NULL, &err);
  check(code == PS_BOK && es.n == 3, "the dead consumer took 3", &err);
  ps_rentries_free(&es);
  const char *gone[] = {ids[1]};
  check(ps_rg_delete(g, "t", 1, gone, NULL, &err) == PS_BOK, "delete one",
        &err);
  char cursor[PS_RID_MAX] = "0-0";
  code = ps_rg_reclaim(g, "t", "grp", "live", 3600 * 1000, 10, cursor, &es,
                       &err);
  check(code == PS_BOK && es.n == 0 && !strcmp(cursor, "0-0"),
        "nothing idle long enough", &err);
  ps_rentries_free(&es);
  code = ps_rg_reclaim(g, "t", "grp", "live", 0, 1, cursor, &es, &err);
  check(code == PS_BOK && es.n == 1 && !strcmp(es.e[0].id, ids[0]) &&
        es.e[0].deliveries == 2 && strcmp(cursor, "0-0") != 0,
        "one at a time: the first, delivered twice, and a cursor", &err);
  ps_rentries_free(&es);
  code = ps_rg_reclaim(g, "t", "grp", "live", 0, 10, cursor, &es, &err);
  check(code == PS_BOK && es.n == 1 && !strcmp(es.e[0].id, ids[2]) &&
        !strcmp(cursor, "0-0") && pending(g, &err) == 2,
        "then the rest; the deleted one is no longer pending", &err);
  ps_rentries_free(&es);

  ps_rg_close(g);
  printf("%d tests, %d failures\n", count, failures);
  return failures ? 1 : 0;
}
