/*
 * key.c: random store keys.
 *
 * 128 bits from xoshiro256** seeded by getrandom(2). One state for the
 * process, under a lock (a key costs a few ns; threads rarely make keys at
 * once), and a fork bumps a generation counter so that a child reseeds
 * instead of repeating its parent's keys. Not thread-local: the module is
 * dlopen'ed, and its dynamic TLS made LeakSanitizer's exit scan crash in
 * child processes of the sanitized specs.
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
static pthread_mutex_t rng_mu = PTHREAD_MUTEX_INITIALIZER;

static struct {
  uint64_t s[4];
  unsigned generation;
  int seeded;
} rng;

/* A fork waits for a key being made; the child, whose one thread took the
 * lock, releases it and reseeds at its first key. */
static void before_fork(void) { pthread_mutex_lock(&rng_mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&rng_mu); }
static void after_fork_child(void) {
  atomic_fetch_add(&fork_generation, 1);
  pthread_mutex_unlock(&rng_mu);
}
static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

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
  pthread_mutex_lock(&rng_mu);
  unsigned gen = atomic_load(&fork_generation);
  if (!rng.seeded || rng.generation != gen) {
    seed();
    rng.generation = gen;
  }
  uint64_t w[2] = {next(), next()};
  pthread_mutex_unlock(&rng_mu);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 16; j++)
      out[i * 16 + j] = hex[(w[i] >> (60 - 4 * j)) & 0xf];
  out[32] = '\0';
}
