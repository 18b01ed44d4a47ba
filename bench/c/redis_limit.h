/*
 * bench/c/redis_limit.h: the server-bound limit of a Redis GET and SET,
 * shared by bench/redis_raw.c (a program of its own) and bench/c/support.c
 * (the bench module, so that the size sweep and the stream section can
 * time the limit in the process of the store's own transfers). The reply
 * is read with plain read() into a caller's buffer, on a non-blocking
 * socket, waiting as the store does (src/core/spin.h): a read that finds
 * the socket empty polls it without sleeping for up to LIMIT_SPIN_NS
 * before it blocks, on every wait of a transfer. Functions return 0, or -1 with errno set.
 */
#ifndef PS_BENCH_REDIS_LIMIT_H
#define PS_BENCH_REDIS_LIMIT_H

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LIMIT_SPIN_NS 30000.0   /* as PS_SPIN_NS in src/core/spin.h */

static int limit_spin = 1;      /* limit reads spin before they block */

static double limit_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Waits until fd is ready for events: first polling without sleeping for
 * up to LIMIT_SPIN_NS (when limit_spin is on), then blocking. */
static void limit_wait_fd(int fd, short events) {
  struct pollfd p = {fd, events, 0};
  if (limit_spin) {
    double t0 = limit_now_ns();
    do {
      if (poll(&p, 1, 0) > 0) return;
    } while (limit_now_ns() - t0 < LIMIT_SPIN_NS);
  }
  while (poll(&p, 1, -1) < 0 && errno == EINTR) {}
}

/* read(2) on the non-blocking fd, waiting as the store does. */
static ssize_t limit_read_wait(int fd, void *p, size_t n) {
  for (;;) {
    ssize_t r = read(fd, p, n);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    limit_wait_fd(fd, POLLIN);
  }
}

static int limit_write_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        limit_wait_fd(fd, POLLOUT);
        continue;
      }
      return -1;
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
  return 0;
}

static int limit_read_exact(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = limit_read_wait(fd, p, n);
    if (r <= 0) {
      if (r == 0) errno = ECONNRESET;
      return -1;
    }
    p += r;
    n -= r;
  }
  return 0;
}

/*
 * GET key, whose value is len bytes, into buf (len + 64 bytes, reused):
 * the first read takes whatever has arrived, header included; the header
 * is parsed in place and the rest of the body read right after it. No
 * copy, no parsing library. A reply that is not len bytes fails (EPROTO).
 */
static int limit_get(int fd, const char *key, char *buf, size_t len) {
  char hdr[128];
  int hl = snprintf(hdr, sizeof hdr, "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
                    strlen(key), key);
  if (hl < 0 || (size_t)hl >= sizeof hdr) {
    errno = ENAMETOOLONG;
    return -1;
  }
  struct iovec iov[1] = {{hdr, (size_t)hl}};
  if (limit_write_all(fd, iov, 1) != 0) return -1;
  size_t total = 0, need = 0;
  char *eol = NULL;
  while (eol == NULL) {
    ssize_t r = limit_read_wait(fd, buf + total, len + 64 - total);
    if (r <= 0) {
      if (r == 0) errno = ECONNRESET;
      return -1;
    }
    total += r;
    eol = memchr(buf, '\n', total);
  }
  if (buf[0] != '$' || (size_t)atoll(buf + 1) != len) {
    errno = EPROTO;
    return -1;
  }
  need = (size_t)(eol + 1 - buf) + len + 2;
  if (total < need) return limit_read_exact(fd, buf + total, need - total);
  return 0;
}

/* The body of a GET reply limit_get read into buf (its header checked
 * there) is the len bytes of data: 0, or -1 with errno EPROTO. */
static int limit_check_body(const char *buf, const char *data, size_t len) {
  const char *eol = memchr(buf, '\n', 64);
  if (eol == NULL || memcmp(eol + 1, data, len) != 0) {
    errno = EPROTO;
    return -1;
  }
  return 0;
}

/* Reads a short reply ("+OK\r\n") whole, as it is all the server sends,
 * into line (cap bytes), without its CRLF. */
static int limit_read_status(int fd, char *line, size_t cap) {
  size_t n = 0;
  while (n < 2 || line[n - 1] != '\n') {
    if (n + 1 >= cap) {   /* too long: what came, as a string, for messages */
      line[n] = '\0';
      errno = EPROTO;
      return -1;
    }
    ssize_t r = limit_read_wait(fd, line + n, cap - 1 - n);
    if (r <= 0) {
      if (r == 0) errno = ECONNRESET;
      return -1;
    }
    n += r;
  }
  line[n - 2] = '\0';
  return 0;
}

/* SET key to the len bytes at data, written with one writev from where
 * they lie. The server's reply line goes to status (LIMIT_STATUS_MAX
 * bytes): a reply other than +OK fails (EPROTO) and status says what the
 * server said. */
#define LIMIT_STATUS_MAX 256
static int limit_set(int fd, const char *key, const char *data, size_t len,
                     char *status) {
  char hdr[128];
  status[0] = '\0';
  int hl = snprintf(hdr, sizeof hdr, "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n",
                    strlen(key), key, len);
  if (hl < 0 || (size_t)hl >= sizeof hdr) {
    errno = ENAMETOOLONG;
    return -1;
  }
  struct iovec iov[3] = {{hdr, (size_t)hl}, {(void *)data, len}, {"\r\n", 2}};
  if (limit_write_all(fd, iov, 3) != 0) return -1;
  if (limit_read_status(fd, status, LIMIT_STATUS_MAX) != 0) return -1;
  if (strcmp(status, "+OK") != 0) {
    errno = EPROTO;
    return -1;
  }
  return 0;
}

#endif
