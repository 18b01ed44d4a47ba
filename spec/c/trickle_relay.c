/*
 * trickle_relay.c: a TCP relay in front of a real redis-server that moves
 * bytes on a fixed schedule, for the timeout specs of spec/redis_spec.lua:
 * a server whose bytes keep moving slowly, without the timing games of
 * stopping and continuing a real process.
 *
 *   trickle_relay OWNER PORTFILE TARGET_PORT UP DOWN PAUSE_MS
 *
 * Listens on a free loopback port (written to PORTFILE) and relays every
 * connection to 127.0.0.1:TARGET_PORT. Once per PAUSE_MS tick it moves at
 * most UP bytes from each client to the server and DOWN bytes from the
 * server to the client (0: whatever is there), so a transfer of n bytes
 * takes at least (n / UP - 1) ticks, and a byte moves at least once a tick
 * while any is waiting. Exits once process OWNER is gone.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXPAIRS 16
#define BUF ((size_t)1 << 20)

typedef struct pair {
  int fd[2];          /* 0: the client, 1: the server */
} pair;

static pair pairs[MAXPAIRS];
static int npairs;
static char buf[BUF];

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void drop(int i) {
  close(pairs[i].fd[0]);
  close(pairs[i].fd[1]);
  pairs[i] = pairs[--npairs];
}

static int connect_target(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

/* Moves up to budget bytes (0: all there are) from one side to the other
 * without waiting; -1 once either side is closed. */
static int move(int from, int to, size_t budget) {
  size_t moved = 0;
  for (;;) {
    size_t want = BUF;
    if (budget && budget - moved < want) want = budget - moved;
    if (want == 0) return 0;
    ssize_t r = recv(from, buf, want, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (r <= 0) return -1;
    if (write_all(to, buf, (size_t)r) != 0) return -1;
    moved += (size_t)r;
  }
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: trickle_relay OWNER PORTFILE TARGET_PORT UP DOWN PAUSE_MS\n");
    return 2;
  }
  pid_t owner = (pid_t)atol(argv[1]);
  int target = atoi(argv[3]);
  size_t budget[2] = {(size_t)atol(argv[4]), (size_t)atol(argv[5])};
  long pause_ms = atol(argv[6]);
  signal(SIGPIPE, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(ls, 8) != 0 || getsockname(ls, (struct sockaddr *)&a, &alen) != 0)
    return 1;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
  FILE *f = fopen(tmp, "w");
  if (f == NULL) return 1;
  fprintf(f, "%d\n", ntohs(a.sin_port));
  fclose(f);
  rename(tmp, argv[2]);

  long next_tick = now_ms();
  for (;;) {
    if (kill(owner, 0) != 0) return 0;
    long wait = next_tick - now_ms();
    struct pollfd p = {ls, POLLIN, 0};
    if (poll(&p, 1, wait > 0 ? (int)wait : 0) > 0) {
      int c = accept(ls, NULL, NULL);
      int s = c >= 0 ? connect_target(target) : -1;
      if (c >= 0 && (s < 0 || npairs == MAXPAIRS)) {
        close(c);
        if (s >= 0) close(s);
      } else if (c >= 0) {
        pairs[npairs].fd[0] = c;
        pairs[npairs].fd[1] = s;
        npairs++;
      }
      continue;
    }
    if (now_ms() < next_tick) continue;
    next_tick += pause_ms;
    if (next_tick < now_ms()) next_tick = now_ms();   /* no bursts of ticks */
    for (int i = npairs - 1; i >= 0; i--) {
      if (move(pairs[i].fd[0], pairs[i].fd[1], budget[0]) != 0 ||
          move(pairs[i].fd[1], pairs[i].fd[0], budget[1]) != 0)
        drop(i);
    }
  }
}
