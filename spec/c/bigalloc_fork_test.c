/*
 * bigalloc_fork_test.c: a fork while another thread holds bigalloc's lock
 * (the prefetch thread inside ps_big_alloc/ps_big_free) must leave the
 * child able to allocate. Built alone: it includes bigalloc.c to reach the
 * lock itself, which makes the test deterministic (no race to win).
 * Prints "ok N - what" / "not ok N - what"; exit status 1 on failure.
 */
#include "../../src/core/bigalloc.c"

#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures, count;

static void check(int cond, const char *what) {
  count++;
  printf("%sok %d - %s\n", cond ? "" : "not ", count, what);
  if (!cond) failures++;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int held;

/* Holds cache_mu for a while, as a thread inside cache_take would. */
static void *holder(void *lock) {
  pthread_mutex_lock(lock);
  pthread_mutex_lock(&mu);
  held = 1;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
  struct timespec t = {0, 200 * 1000 * 1000};
  nanosleep(&t, NULL);
  pthread_mutex_unlock(lock);
  return NULL;
}

/*
 * Forks while another thread holds lock; the child runs fn. 1 when the
 * child finished (it takes milliseconds); still running after 30 s, a hang
 * guard, it deadlocked: killed, 0.
 */
static int child_finishes(pthread_mutex_t *lock, int (*fn)(void)) {
  held = 0;
  pthread_t t;
  if (pthread_create(&t, NULL, holder, lock) != 0) {
    fprintf(stderr, "bigalloc_fork_test: cannot start a thread\n");
    return 0;
  }
  pthread_mutex_lock(&mu);
  while (!held) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  pthread_join(t, NULL);
  if (pid < 0) {
    fprintf(stderr, "bigalloc_fork_test: fork failed\n");
    return 0;
  }
  for (int i = 0; i < 3000; i++) {       /* 30 s */
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) && WEXITSTATUS(st) == 0;
    struct timespec d = {0, 10 * 1000 * 1000};
    nanosleep(&d, NULL);
  }
  kill(pid, SIGKILL);                    /* deadlocked */
  waitpid(pid, NULL, 0);
  return 0;
}

static int big_alloc_and_free(void) {
  void *p = ps_big_alloc(PS_BIG_MIN);
  if (p == NULL) return 2;
  ps_big_free(p);
  p = ps_big_alloc(PS_BIG_MIN);          /* from the warm cache */
  ps_big_free(p);
  return p ? 0 : 2;
}

int main(void) {
  /* First use, as in a real process: the fork handlers get registered. */
  check(big_alloc_and_free() == 0, "large blocks in the parent");
  check(child_finishes(&cache_mu, big_alloc_and_free),
        "a child forked while another thread holds the block cache allocates");
  check(big_alloc_and_free() == 0, "and the parent still does");
  printf("%d tests, %d failures\n", count, failures);
  return failures != 0;
}
