/*
 * prefetch.c: a background worker that fetches bytes for
 * ps.resolve_async. See prefetch.h.
 *
 * State is process-wide (one worker per process, like malloc's arenas):
 * one mutex guards the queue and every job's result fields; workers
 * signal completions on one condition variable. pthread_atfork keeps the
 * mutex consistent across fork, and the child puts back the job its
 * parent's worker was running, since no thread will finish it there.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefetch.h"

struct ps_prefetch {
  struct ps_prefetch *next;      /* queue link; for waiting jobs, the
                                    list of those running */
  int waits;                     /* a future's: wait for the key first */
  double timeout;                /* of that wait (< 0: no limit) */
  int orphan;                    /* a waiting job inherited over fork: its
                                    thread is not in this process */
  const ps_backend_ops *ops;
  ps_bconfig cfg;                /* owned copies of the strings */
  char *key;
  size_t keylen;
  int forget;                    /* not a fetch: close cfg's contexts */
  int done, abandoned, waited;
  int code;
  ps_blob blob;
  ps_version version;
  ps_berr err;
};

/* A backend context the worker keeps open for one config. */
typedef struct wctx {
  struct wctx *next;
  const ps_backend_ops *ops;
  ps_bconfig cfg;
  void *ctx;
} wctx;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static ps_prefetch *qhead, *qtail;
static ps_prefetch *current;     /* job the worker is running */
static int worker_running;
static wctx *contexts;           /* used by the worker thread only */
static ps_prefetch *waiting;     /* waiting jobs whose thread runs */

/* ---- config copies ------------------------------------------------------ */

static int dup_field(const char **dst, const char *src) {
  *dst = NULL;
  if (src == NULL) return 0;
  *dst = strdup(src);
  return *dst ? 0 : -1;
}

static void cfg_free(ps_bconfig *c) {
  free((char *)c->host);
  free((char *)c->path);
  free((char *)c->username);
  free((char *)c->password);
  free((char *)c->prefix);
  free((char *)c->dir);
  free((char *)c->cluster);
}

static int cfg_copy(ps_bconfig *d, const ps_bconfig *s) {
  *d = *s;
  int bad = dup_field(&d->host, s->host) | dup_field(&d->path, s->path) |
            dup_field(&d->username, s->username) |
            dup_field(&d->password, s->password) |
            dup_field(&d->prefix, s->prefix) | dup_field(&d->dir, s->dir) |
            dup_field(&d->cluster, s->cluster);
  d->clear = 0;       /* a prefetch context never deletes anything */
  d->no_create = 1;   /* ...nor creates a directory */
  if (bad) {
    cfg_free(d);
    return -1;
  }
  return 0;
}

static int str_eq(const char *a, const char *b) {
  return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static int cfg_eq(const ps_bconfig *a, const ps_bconfig *b) {
  return str_eq(a->host, b->host) && a->port == b->port &&
         str_eq(a->path, b->path) && a->db == b->db &&
         str_eq(a->username, b->username) &&
         str_eq(a->password, b->password) && a->timeout == b->timeout &&
         str_eq(a->prefix, b->prefix) && str_eq(a->dir, b->dir) &&
         str_eq(a->cluster, b->cluster);
}

/* ---- jobs ----------------------------------------------------------------- */

static void job_free(ps_prefetch *pf) {
  ps_blob_release(&pf->blob);
  cfg_free(&pf->cfg);
  free(pf->key);
  free(pf);
}

/*
 * Opens (or finds) the worker's context for the job's config. The list is
 * kept most recently used first and holds at most MAX_CONTEXTS: stores
 * come and go (a spec makes dozens), and each context may hold a socket.
 */
#define MAX_CONTEXTS 8

static void *context_for(ps_prefetch *pf, ps_berr *err) {
  size_t n = 0;
  for (wctx **pp = &contexts; *pp; pp = &(*pp)->next, n++) {
    wctx *w = *pp;
    if (w->ops == pf->ops && cfg_eq(&w->cfg, &pf->cfg)) {
      *pp = w->next;            /* move to the front */
      w->next = contexts;
      contexts = w;
      return w->ctx;
    }
  }
  if (n >= MAX_CONTEXTS) {      /* close the least recently used */
    wctx **pp = &contexts;
    while ((*pp)->next) pp = &(*pp)->next;
    wctx *old = *pp;
    *pp = NULL;
    old->ops->close(old->ctx);
    cfg_free(&old->cfg);
    free(old);
  }
  wctx *w = calloc(1, sizeof *w);
  if (w == NULL || cfg_copy(&w->cfg, &pf->cfg) != 0) {
    free(w);
    ps_berr_set(err, PS_BNOMEM, "prefetch: out of memory");
    return NULL;
  }
  w->ops = pf->ops;
  w->ctx = pf->ops->open(&w->cfg, err);
  if (w->ctx == NULL) {
    cfg_free(&w->cfg);
    free(w);
    return NULL;
  }
  w->next = contexts;
  contexts = w;
  return w->ctx;
}

/* Closes the worker's contexts for cfg; worker thread only (or with no
 * worker running, under mu). */
static void close_contexts(const ps_backend_ops *ops, const ps_bconfig *cfg) {
  for (wctx **pp = &contexts; *pp;) {
    wctx *w = *pp;
    if (w->ops == ops && cfg_eq(&w->cfg, cfg)) {
      *pp = w->next;
      w->ops->close(w->ctx);
      cfg_free(&w->cfg);
      free(w);
    } else {
      pp = &w->next;
    }
  }
}

/* Hands a job's outcome to its waiter, or frees an abandoned job. */
static void finish(ps_prefetch *pf, int code, ps_blob blob, ps_version v,
                   const ps_berr *err) {
  pthread_mutex_lock(&mu);
  if (pf == current) current = NULL;
  if (pf->waits)
    for (ps_prefetch **pp = &waiting; *pp; pp = &(*pp)->next)
      if (*pp == pf) {
        *pp = pf->next;
        break;
      }
  if (pf->abandoned) {
    pthread_mutex_unlock(&mu);
    ps_blob_release(&blob);
    job_free(pf);
    return;
  }
  pf->code = code;
  pf->blob = blob;
  pf->version = v;
  pf->err = *err;
  pf->done = 1;
  pthread_cond_broadcast(&done_cv);
  pthread_mutex_unlock(&mu);
}

static void run_job(ps_prefetch *pf) {
  if (pf->forget) {
    close_contexts(pf->ops, &pf->cfg);
    pthread_mutex_lock(&mu);
    if (pf == current) current = NULL;
    pf->done = 1;
    pthread_cond_broadcast(&done_cv);
    pthread_mutex_unlock(&mu);
    return;
  }
  ps_berr err = {0};
  ps_blob blob = {0};
  ps_version v;
  memset(&v, 0, sizeof v);
  int code;
  void *ctx = context_for(pf, &err);
  if (ctx == NULL)
    code = err.code ? err.code : PS_BCONN;
  else
    code = pf->ops->get(ctx, ps_key_of(pf->key, pf->keylen), NULL, &blob, &v,
                        &err);
  finish(pf, code, blob, v, &err);
}

/* A waiting job: its own context, opened and closed here (it may block
   for long; the shared worker's contexts are that thread's alone). */
static void run_wait(ps_prefetch *pf) {
  ps_berr err = {0};
  ps_blob blob = {0};
  ps_version v;
  memset(&v, 0, sizeof v);
  int code;
  ps_key key = ps_key_of(pf->key, pf->keylen);
  void *ctx = pf->ops->open(&pf->cfg, &err);
  if (ctx == NULL) {
    code = err.code ? err.code : PS_BCONN;
  } else {
    code = pf->ops->wait(ctx, key, pf->timeout, &blob, &v, &err);
    pf->ops->close(ctx);
  }
  finish(pf, code, blob, v, &err);
}

static void *wait_thread(void *arg) {
  run_wait(arg);
  return NULL;
}

static void *worker(void *arg) {
  (void)arg;
  pthread_mutex_lock(&mu);
  for (;;) {
    while (qhead == NULL) pthread_cond_wait(&work_cv, &mu);
    ps_prefetch *pf = qhead;
    qhead = pf->next;
    if (qhead == NULL) qtail = NULL;
    pf->next = NULL;
    current = pf;
    pthread_mutex_unlock(&mu);
    run_job(pf);
    pthread_mutex_lock(&mu);
  }
  return NULL;
}

/* ---- fork ----------------------------------------------------------------- */

static void atfork_prepare(void) { pthread_mutex_lock(&mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&mu); }

static void atfork_child(void) {
  /* Only this thread exists now: no worker, nobody waiting. */
  pthread_mutex_unlock(&mu);
  pthread_cond_init(&work_cv, NULL);
  pthread_cond_init(&done_cv, NULL);
  worker_running = 0;
  /* Waiting jobs' threads stayed in the parent: the child runs such a job
     itself when it waits for it. */
  for (ps_prefetch *pf = waiting; pf; pf = pf->next) pf->orphan = 1;
  waiting = NULL;
  if (current) {
    current->next = qhead;
    qhead = current;
    if (qtail == NULL) qtail = current;
    current = NULL;
  }
}

static void install_atfork(void) {
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/*
 * The worker outlives any lua_State, but lua_close unloads C modules: its
 * code, the mutex it sleeps on and its contexts would be unmapped under
 * it (a futex on unmapped memory aborts the process). So once a worker
 * exists, the library that holds it can no longer be unloaded.
 */
static void pin_library(void) {
  static int pinned;
  if (pinned) return;
  pinned = 1;
  Dl_info info;
  /* When this code is not in a dlopen'ed object (a host executable that
     links the core in), NOLOAD finds nothing and nothing can unload it. */
  if (dladdr((void *)worker, &info) != 0 && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Starts a detached thread running fn(arg), with every signal blocked
   (signals stay with the application's threads). */
static int start_thread(void *(*fn)(void *), void *arg, ps_berr *err) {
  pin_library();        /* the handle is deliberately never closed */
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int rc = pthread_create(&t, &attr, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (rc != 0)
    return ps_berr_set(err, PS_BNOMEM, "prefetch: cannot start a thread");
  return PS_BOK;
}

/* Starts the worker if needed; mu held. */
static int ensure_worker(ps_berr *err) {
  if (worker_running) return PS_BOK;
  int rc = start_thread(worker, NULL, err);
  if (rc != PS_BOK) return rc;
  worker_running = 1;
  return PS_BOK;
}

/* ---- the interface -------------------------------------------------------- */

/* A new job for key, not queued yet; NULL with err set. */
static ps_prefetch *new_job(const ps_backend_ops *ops, const ps_bconfig *cfg,
                            ps_key key, ps_berr *err) {
  pthread_once(&atfork_once, install_atfork);
  ps_prefetch *pf = calloc(1, sizeof *pf);
  if (pf == NULL) {
    ps_berr_set(err, PS_BNOMEM, "prefetch: out of memory");
    return NULL;
  }
  pf->ops = ops;
  pf->key = malloc(key.len ? key.len : 1);
  if (pf->key == NULL || cfg_copy(&pf->cfg, cfg) != 0) {
    free(pf->key);
    free(pf);
    ps_berr_set(err, PS_BNOMEM, "prefetch: out of memory");
    return NULL;
  }
  memcpy(pf->key, key.data, key.len);
  pf->keylen = key.len;
  return pf;
}

ps_prefetch *ps_prefetch_start(const ps_backend_ops *ops,
                               const ps_bconfig *cfg, ps_key key,
                               ps_berr *err) {
  ps_prefetch *pf = new_job(ops, cfg, key, err);
  if (pf == NULL) return NULL;
  pthread_mutex_lock(&mu);
  if (ensure_worker(err) != PS_BOK) {
    pthread_mutex_unlock(&mu);
    job_free(pf);
    return NULL;
  }
  if (qtail) qtail->next = pf;
  else qhead = pf;
  qtail = pf;
  pthread_cond_signal(&work_cv);
  pthread_mutex_unlock(&mu);
  return pf;
}

ps_prefetch *ps_prefetch_start_wait(const ps_backend_ops *ops,
                                    const ps_bconfig *cfg, ps_key key,
                                    double timeout, ps_berr *err) {
  ps_prefetch *pf = new_job(ops, cfg, key, err);
  if (pf == NULL) return NULL;
  pf->waits = 1;
  pf->timeout = timeout;
  pthread_mutex_lock(&mu);
  pf->next = waiting;
  waiting = pf;
  if (start_thread(wait_thread, pf, err) != PS_BOK) {
    waiting = pf->next;
    pthread_mutex_unlock(&mu);
    job_free(pf);
    return NULL;
  }
  pthread_mutex_unlock(&mu);
  return pf;
}

int ps_prefetch_done(ps_prefetch *pf) {
  pthread_mutex_lock(&mu);
  int d = pf->done;
  pthread_mutex_unlock(&mu);
  return d;
}

int ps_prefetch_wait(ps_prefetch *pf, ps_blob *out, ps_version *version,
                     ps_berr *err) {
  pthread_mutex_lock(&mu);
  if (pf->waited) {
    pthread_mutex_unlock(&mu);
    return ps_berr_set(err, PS_BIO, "prefetch: result already taken");
  }
  if (!pf->done && pf->orphan) {
    /* A waiting job whose thread is in the parent: run it here. */
    pf->orphan = 0;
    pthread_mutex_unlock(&mu);
    run_wait(pf);
    pthread_mutex_lock(&mu);
  }
  /* In a forked child the queue may hold jobs but no worker runs yet. */
  if (!pf->done && !pf->waits && ensure_worker(err) != PS_BOK) {
    pthread_mutex_unlock(&mu);
    return err->code;
  }
  while (!pf->done) pthread_cond_wait(&done_cv, &mu);
  pf->waited = 1;
  int code = pf->code;
  *out = pf->blob;
  pf->blob = (ps_blob){0};
  if (version) *version = pf->version;
  if (err) *err = pf->err;
  pthread_mutex_unlock(&mu);
  return code;
}

void ps_prefetch_forget(const ps_backend_ops *ops, const ps_bconfig *cfg) {
  pthread_mutex_lock(&mu);
  if (!worker_running) {
    /* Nobody else uses the contexts (a forked child's inherited ones, or
     * none at all): close them here. */
    close_contexts(ops, cfg);
    pthread_mutex_unlock(&mu);
    return;
  }
  pthread_mutex_unlock(&mu);
  ps_prefetch *req = calloc(1, sizeof *req);
  if (req == NULL || cfg_copy(&req->cfg, cfg) != 0) {
    free(req);
    return;   /* out of memory: the LRU closes them later */
  }
  req->ops = ops;
  req->forget = 1;
  pthread_mutex_lock(&mu);
  /* After the last queued fetch of this config (they would open a context
   * again), else first: waiting behind other stores' fetches is needless. */
  ps_prefetch *after = NULL;
  for (ps_prefetch *q = qhead; q; q = q->next)
    if (!q->forget && q->ops == ops && cfg_eq(&q->cfg, &req->cfg)) after = q;
  if (after) {
    req->next = after->next;
    after->next = req;
    if (qtail == after) qtail = req;
  } else {
    req->next = qhead;
    qhead = req;
    if (qtail == NULL) qtail = req;
  }
  pthread_cond_signal(&work_cv);
  while (!req->done) pthread_cond_wait(&done_cv, &mu);
  pthread_mutex_unlock(&mu);
  job_free(req);
}

void ps_prefetch_free(ps_prefetch *pf) {
  if (pf == NULL) return;
  pthread_mutex_lock(&mu);
  if (pf->done || pf->orphan) {   /* no thread will touch it */
    pthread_mutex_unlock(&mu);
    job_free(pf);
    return;
  }
  /* Still queued: unlink and free. Running: the worker frees it. */
  for (ps_prefetch **pp = &qhead, *prev = NULL; *pp;
       prev = *pp, pp = &(*pp)->next) {
    if (*pp == pf) {
      *pp = pf->next;
      if (qtail == pf) qtail = prev;
      pthread_mutex_unlock(&mu);
      job_free(pf);
      return;
    }
  }
  pf->abandoned = 1;
  pthread_mutex_unlock(&mu);
}
