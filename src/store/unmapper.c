/*
 * unmapper.c: one detached thread per process that unmaps queued mappings
 * (see unmapper.h for why).
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "unmapper.h"

typedef struct job {
  void *p;
  size_t len;
  struct job *next;
} job;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static job *queue;
static int running;          /* a thread serves this process */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/*
 * fork copies the queue but not the thread: the child starts its own. The
 * condition variable is made anew in the child: the parent's thread may be
 * waiting on it, and a copy that remembers a waiter which does not exist in
 * the child makes pthread_cond_signal wait forever (a pool worker hung in
 * ps_unmap_later).
 */
static void before_fork(void) { pthread_mutex_lock(&mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&mu); }
static void after_fork_child(void) {
  running = 0;
  pthread_mutex_init(&mu, NULL);
  pthread_cond_init(&cv, NULL);
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static void *serve(void *arg) {
  (void)arg;
  pthread_mutex_lock(&mu);
  for (;;) {
    while (queue == NULL) pthread_cond_wait(&cv, &mu);
    job *j = queue;
    queue = j->next;
    pthread_mutex_unlock(&mu);
    munmap(j->p, j->len);
    free(j);
    pthread_mutex_lock(&mu);
  }
  return NULL;
}

/* With mu held: a thread is running, or starts one; 0 on success. */
static int ensure_thread(void) {
  if (running) return 0;
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return -1;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_t t;
  int rc = pthread_create(&t, &attr, serve, NULL);
  pthread_attr_destroy(&attr);
  if (rc != 0) return -1;
  running = 1;
  return 0;
}

void ps_unmap_later(void *p, size_t len) {
  pthread_once(&atfork_once, register_atfork);
  job *j = malloc(sizeof *j);
  if (j == NULL) {
    munmap(p, len);
    return;
  }
  j->p = p;
  j->len = len;
  pthread_mutex_lock(&mu);
  if (ensure_thread() != 0) {
    pthread_mutex_unlock(&mu);
    free(j);
    munmap(p, len);
    return;
  }
  j->next = queue;
  queue = j;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
}
