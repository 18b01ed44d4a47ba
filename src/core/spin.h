/*
 * spin.h: wait a little before sleeping.
 *
 * A reply from another process on this machine (a pool worker, a local
 * redis-server) often arrives microseconds after the request. A process
 * that sleeps for it pays a CPU wakeup from idle, tens of microseconds on
 * an idle machine; polling without waiting for a short while first avoids
 * that, at the cost of at most PS_SPIN_NS of CPU per wait.
 */
#ifndef PS_SPIN_H
#define PS_SPIN_H

#include <poll.h>

#define PS_SPIN_NS 30000L

/* poll(fds, n, 0) until an event, an error or PS_SPIN_NS: poll's result
 * (-1 with errno EINTR when a signal arrived), or 0. */
int ps_poll_spin(struct pollfd *fds, nfds_t n);

#endif
