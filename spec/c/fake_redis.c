/*
 * fake_redis.c: a server that speaks just enough RESP to be hostile, for
 * spec/redis_hostile_spec.lua.
 *
 *   fake_redis OWNER PORTFILE FIRST REST
 *
 * Listens on a free loopback port (written to PORTFILE), takes one client
 * at a time, and answers the first read of each connection with FIRST and
 * every later read with REST (C-style escapes \r \n \\ are understood, and
 * \p stands for the port it listens on, for replies that name the server).
 * Exits once process OWNER is gone, so a failed spec leaves nothing behind.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* \r, \n and decimal \ddd (Lua's escapes, so a spec can send any byte,
 * NUL included), \p the port; any other escaped character stands for
 * itself. out has room for 5 bytes per input byte. */
static size_t unescape(const char *in, char *out, int port) {
  size_t n = 0;
  for (; *in; in++) {
    if (*in == '\\' && in[1] == 'p') {
      in++;
      n += (size_t)sprintf(out + n, "%d", port);
    } else if (*in == '\\' && in[1] >= '0' && in[1] <= '9') {
      unsigned v = 0;
      for (int d = 0; d < 3 && in[1] >= '0' && in[1] <= '9'; d++)
        v = v * 10 + (unsigned)(*++in - '0');
      out[n++] = (char)v;
    } else if (*in == '\\' && in[1]) {
      in++;
      out[n++] = *in == 'r' ? '\r' : *in == 'n' ? '\n' : *in;
    } else {
      out[n++] = *in;
    }
  }
  return n;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: fake_redis OWNER PORTFILE FIRST REST\n");
    return 2;
  }
  pid_t owner = (pid_t)atol(argv[1]);
  signal(SIGPIPE, SIG_IGN);
  char *first = malloc(5 * strlen(argv[3]) + 6), *rest = malloc(5 * strlen(argv[4]) + 6);
  if (!first || !rest) return 1;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(ls, 4) != 0 || getsockname(ls, (struct sockaddr *)&a, &alen) != 0) {
    perror("fake_redis");
    return 1;
  }
  size_t nfirst = unescape(argv[3], first, ntohs(a.sin_port));
  size_t nrest = unescape(argv[4], rest, ntohs(a.sin_port));
  FILE *f = fopen(argv[2], "w");
  if (!f) return 1;
  fprintf(f, "%d\n", ntohs(a.sin_port));
  fclose(f);
  for (;;) {
    struct pollfd p = {.fd = ls, .events = POLLIN};
    if (kill(owner, 0) != 0) return 0;
    if (poll(&p, 1, 200) <= 0) continue;
    int c = accept(ls, NULL, NULL);
    if (c < 0) continue;
    char buf[65536];
    int n = 0;
    for (;;) {
      struct pollfd q = {.fd = c, .events = POLLIN};
      if (kill(owner, 0) != 0) return 0;
      if (poll(&q, 1, 200) == 0) continue;
      if (read(c, buf, sizeof buf) <= 0) break;
      if (n++ == 0) write_all(c, first, nfirst);
      else write_all(c, rest, nrest);
    }
    close(c);
  }
}
