/*
 * groups_test.c: the consumer-group module's C API (src/redis/groups.h)
 * without Lua, against a running redis-server: groups_test PORT.
 * Prints "ok N - what" / "not ok N - what"; exit status 1 on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "groups.h"
#include "check.h"

static int field_is(const ps_rentry *e, const char *name, const char *v) {
  const ps_rvalue *f = ps_rentry_field(e, name);
  return f && f->len == strlen(v) && memcmp(f->str, v, f->len) == 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: groups_test PORT\n");
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
  check(ps_rg_call(g, 1, &fl, &v, &err) == PS_BOK && v.type == PS_R_STATUS,
        "a plain command", &err);
  ps_rvalue_free(&v);

  check(ps_rg_create_group(g, "t", "grp", "0", &err) == PS_BOK &&
        ps_rg_create_group(g, "t", "grp", "0", &err) == PS_BOK,
        "create a group twice", &err);

  /* a pipelined batch of entries with binary values */
  ps_rbytes f1[] = {{"k", 1}, {"a\0b", 3}};
  ps_rbytes f2[] = {{"k", 1}, {"two", 3}, {"x", 1}, {"", 0}};
  ps_rnew add[] = {{1, f1}, {2, f2}};
  char ids[2][PS_RID_MAX];
  ps_rtrim trim = {PS_RTRIM_MAXLEN, 1, 1000, NULL};
  check(ps_rg_add(g, "t", &trim, 2, add, ids, &err) == PS_BOK &&
        strchr(ids[0], '-') && strcmp(ids[0], ids[1]) != 0,
        "add two entries in one round trip", &err);

  ps_rentries es;
  int woken = -1;
  int code = ps_rg_read_group(g, "t", "grp", "c1", ">", 10, 100, &es, &woken,
                              &err);
  check(code == PS_BOK && es.n == 2 && woken == 0 &&
        !strcmp(es.e[0].id, ids[0]) && es.e[0].nfields == 1 &&
        es.e[0].fv[1].len == 3 && !memcmp(es.e[0].fv[1].str, "a\0b", 3) &&
        field_is(&es.e[1], "k", "two") && field_is(&es.e[1], "x", "") &&
        ps_rentry_field(&es.e[1], "nope") == NULL,
        "read both, binary-safe", &err);
  ps_rentries_free(&es);

  /* claims and delivery counts */
  code = ps_rg_autoclaim(g, "t", "grp", "c2", 0, "0-0", 10, &es, &err);
  check(code == PS_BOK && es.n == 2 && !strcmp(es.next, "0-0"),
        "autoclaim", &err);
  code = ps_rg_deliveries(g, "t", "grp", &es, &err);
  check(code == PS_BOK && es.e[0].deliveries == 2 && es.e[1].deliveries == 2,
        "delivery counts after a claim", &err);
  const char *both[] = {es.e[0].id, es.e[1].id};
  int owned[2] = {-1, -1};
  code = ps_rg_touch(g, "t", "grp", "c1", 2, both, owned, &err);
  check(code == PS_BOK && owned[0] == 0 && owned[1] == 0,
        "the old consumer no longer owns them", &err);
  code = ps_rg_touch(g, "t", "grp", "c2", 2, both, owned, &err);
  check(code == PS_BOK && owned[0] == 1 && owned[1] == 1,
        "the new one does", &err);
  long long acked = 0;
  code = ps_rg_ack(g, "t", "grp", 2, both, &acked, &err);
  check(code == PS_BOK && acked == 2, "ack both at once", &err);
  ps_rentries_free(&es);
  long long npending = -1;
  char lowest[PS_RID_MAX];
  code = ps_rg_pending_summary(g, "t", "grp", &npending, lowest, &err);
  check(code == PS_BOK && npending == 0 && lowest[0] == '\0',
        "nothing pending", &err);

  ps_rgroup_info info;
  code = ps_rg_group_info(g, "t", "grp", &info, &err);
  check(code == PS_BOK && info.pending == 0 && info.consumers == 2 &&
        !strcmp(info.last_delivered, ids[1]), "group info", &err);

  /* a wake fd ends a held read at once, whatever its BLOCK */
  int pfd[2];
  check(pipe(pfd) == 0, "pipe", NULL);
  ps_rg_set_wake_fd(g, pfd[0]);
  check(!ps_rg_woken(g), "not woken before a write", NULL);
  if (write(pfd[1], "x", 1) != 1) return 1;
  check(ps_rg_woken(g), "woken after a write", NULL);
  double t0 = now();
  code = ps_rg_read_group(g, "t", "grp", "c1", ">", 1, 10000, &es, &woken,
                          &err);
  check(code == PS_BOK && woken == 1 && es.n == 0 && now() - t0 < 5,
        "a 10 s held read ends at once when woken", &err);
  ps_rentries_free(&es);
  /* a command sent with the read: its reply is read before the wait, so
     a wake loses it not (a worker's results go with its next read) */
  const char *push1[] = {"RPUSH", "pre:list", "x"};
  ps_rcmd pre = {3, push1, NULL};
  ps_rvalue pv;
  t0 = now();
  code = ps_rg_read_group_after(g, &pre, &pv, "t", "grp", "c1", ">", 1, 10000,
                                &es, &woken, &err);
  check(code == PS_BOK && woken == 1 && es.n == 0 && pv.type == PS_R_INT &&
        pv.n == 1 && now() - t0 < 5,
        "a woken read still gives the reply of the command sent with it",
        &err);
  ps_rvalue_free(&pv);
  ps_rentries_free(&es);
  check(ps_rg_sleep(g, 10) == 1 && now() - t0 < 5, "so does a sleep", NULL);
  /* drained: the next held read waits its BLOCK out */
  char c;
  if (read(pfd[0], &c, 1) != 1) return 1;
  t0 = now();
  code = ps_rg_read_group(g, "t", "grp", "c1", ">", 1, 200, &es, &woken,
                          &err);
  check(code == PS_BOK && woken == 0 && es.n == 0 && now() - t0 >= 0.15,
        "not woken: the read is held its BLOCK", &err);
  ps_rentries_free(&es);
  /* a blocking call woken while held, then the handle goes on */
  if (write(pfd[1], "x", 1) != 1) return 1;
  const char *blpop[] = {"BLPOP", "nolist", "5"};
  ps_rcmd bl = {3, blpop, NULL};
  code = ps_rg_call_blocking(g, 1, &bl, 5, &v, &woken, &err);
  check(code == PS_BOK && woken == 1, "a held BLPOP woken", &err);
  ps_rvalue_free(&v);
  if (read(pfd[0], &c, 1) != 1) return 1;
  /* another list: the server may not have seen the woken connection
     close yet, and would hand it a value pushed to its list */
  const char *rpush[] = {"RPUSH", "list2", "v"};
  ps_rcmd rp = {3, rpush, NULL};
  ps_rg_call(g, 1, &rp, &v, &err);
  ps_rvalue_free(&v);
  const char *blpop2[] = {"BLPOP", "list2", "5"};
  ps_rcmd bl2 = {3, blpop2, NULL};
  code = ps_rg_call_blocking(g, 1, &bl2, 5, &v, &woken, &err);
  check(code == PS_BOK && woken == 0 && v.type == PS_R_ARRAY && v.n == 2,
        "the next BLPOP reconnects and pops", &err);
  ps_rvalue_free(&v);
  ps_rg_set_wake_fd(g, -1);
  close(pfd[0]);
  close(pfd[1]);

  /* an error reply to the command sent first is given, not raised: the
     read goes on */
  ps_rnew one[] = {{1, f1}};
  char id3[1][PS_RID_MAX];
  check(ps_rg_add(g, "t", NULL, 1, one, id3, &err) == PS_BOK, "add one", &err);
  ps_rcmd badpre = {3, (const char *[]){"XADD", "t", "notanid"}, NULL};
  code = ps_rg_read_group_after(g, &badpre, &pv, "t", "grp", "c1", ">", 1,
                                1000, &es, &woken, &err);
  check(code == PS_BOK && woken == 0 && pv.type == PS_R_ERROR && es.n == 1 &&
        !strcmp(es.e[0].id, id3[0]),
        "an error reply to the command sent first, and the entry read", &err);
  ps_rvalue_free(&pv);
  ps_rentries_free(&es);
  code = ps_rg_read_group_after(g, &pre, &pv, "t", "grp", "c1", ">", 1, 100,
                                &es, &woken, &err);
  check(code == PS_BOK && woken == 0 && pv.type == PS_R_INT && pv.n == 2 &&
        es.n == 0, "nothing to read: the command's reply all the same", &err);
  ps_rvalue_free(&pv);
  ps_rentries_free(&es);

  /* trimming and errors */
  long long removed = -1;
  ps_rtrim minid = {PS_RTRIM_MINID, 0, 0, ids[1]};
  code = ps_rg_trim(g, "t", &minid, &removed, &err);
  check(code == PS_BOK && removed == 1, "trim by MINID", &err);
  code = ps_rg_read_group(g, "none", "grp", "c", ">", 1, -1, &es, NULL, &err);
  check(code == PS_BNOTFOUND && strstr(err.msg, "NOGROUP"),
        "NOGROUP is PS_BNOTFOUND", &err);
  ps_rentries_free(&es);
  const char *bad[] = {"XADD", "t", "notanid", "k", "v"};
  ps_rcmd bc = {5, bad, NULL};
  code = ps_rg_call(g, 1, &bc, &v, &err);
  check(code == PS_BOK && v.type == PS_R_ERROR,
        "an error reply to ps_rg_call is a value", &err);
  ps_rvalue_free(&v);

  ps_rg_close(g);
  ps_rg_close(NULL);
  printf("%d tests, %d failures\n", count, failures);
  return failures ? 1 : 0;
}
