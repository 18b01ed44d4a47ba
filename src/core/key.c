/*
 * key.c: random store keys.
 *
 * 128 bits from xoshiro256** seeded by getrandom(2). The state is per
 * thread, and a fork bumps a generation counter so that a child reseeds
 * instead of repeating its parent's keys.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ps.h"

static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static _Thread_local struct {
  uint64_t s[4];
  unsigned generation;
  int seeded;
} rng;

static void on_fork_child(void) { atomic_fetch_add(&fork_generation, 1); }
static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next(void) {
  uint64_t *s = rng.s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static void seed(void) {
  size_t got = 0;
  unsigned char *p = (unsigned char *)rng.s;
  while (got < sizeof rng.s) {
    ssize_t n = getrandom(p + got, sizeof rng.s - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (got < sizeof rng.s) {
    /* getrandom unavailable (old kernel, seccomp): mix what we have. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rng.s[0] ^= (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
    rng.s[1] ^= (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL;
    rng.s[2] ^= (uint64_t)(uintptr_t)&rng;
    rng.s[3] ^= 0x6a09e667f3bcc909ULL;
  }
  if ((rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]) == 0) rng.s[0] = 1;
  rng.seeded = 1;
}

void ps_key_random(char out[33]) {
  static const char hex[] = "0123456789abcdef";
  pthread_once(&atfork_once, register_atfork);
  unsigned gen = atomic_load(&fork_generation);
  if (!rng.seeded || rng.generation != gen) {
    seed();
    rng.generation = gen;
  }
  uint64_t w[2] = {next(), next()};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 16; j++)
      out[i * 16 + j] = hex[(w[i] >> (60 - 4 * j)) & 0xf];
  out[32] = '\0';
}
