/*
 * check.h: the "ok N - what" / "not ok N - what" lines of the plain-C test
 * programs that talk to a redis-server (the specs count the "not ok"s and
 * read the failure count these keep), and a monotonic clock for their
 * hang guards. Included by one test program each, so its state is static.
 */
#ifndef PS_SPEC_CHECK_H
#define PS_SPEC_CHECK_H

#include <stdio.h>
#include <time.h>

#include "backend.h"

static int failures, count;

/* One check; err, when the check fails, says what the backend reported. */
static inline void check(int cond, const char *what, const ps_berr *err) {
  count++;
  printf("%sok %d - %s", cond ? "" : "not ", count, what);
  if (!cond && err) printf(" (code %d: %s)", err->code, err->msg);
  printf("\n");
  if (!cond) failures++;
}

static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
