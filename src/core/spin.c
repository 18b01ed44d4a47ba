/* spin.c: see spin.h. */
#include <time.h>

#include "spin.h"

int ps_poll_spin(struct pollfd *fds, nfds_t n) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int r = poll(fds, n, 0);
    if (r != 0) return r;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) >
        PS_SPIN_NS)
      return 0;
  }
}
