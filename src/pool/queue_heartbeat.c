/*
 * queue_heartbeat.c: a queue worker's heartbeat, on a thread of its own.
 *
 * While a worker runs a task its Lua state is busy with the task, for as
 * long as the task takes. The entries it holds must still look alive to
 * the other workers, or they would claim them once idle for the queue's
 * visibility. So a thread touches them (ps_rg_touch: XCLAIM JUSTID of the
 * entries still this consumer's) every interval, on a connection of its
 * own, with no Lua state: it works from a copy of the ids. A worker that
 * dies or is stopped (SIGSTOP, a hung machine) stops touching, and its
 * entries are claimed by others: "died or went silent".
 *
 *   local hb = core.queue_heartbeat(cfg, stream, group, consumer, interval)
 *   hb:hold(ids)     the entries held from now on (copied)
 *   hb:release()     none; returns the ids found taken by another consumer
 *                    while held, if any (the task runs twice; the first
 *                    result wins), else nothing
 *   hb:set_interval(s)  touches every s seconds from now on
 *   hb:close()       stops and joins the thread (also __gc, __close)
 *
 * A heartbeat copied into a child by fork has no thread there: only the
 * process that made it stops it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps.h"
#include "groups.h"

#define HEARTBEAT_MT "proxystore.QueueHeartbeat"
#define MAXLOST 64

typedef struct heartbeat {
  pid_t owner;               /* 0: not running */
  unsigned forks;            /* forks_seen when it started */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
  double interval;
  ps_rgroups *g;             /* the thread's */
  char *stream, *group, *consumer;
  char **ids;                /* held, owned copies */
  size_t nids;
  unsigned gen;              /* bumped by hold/release */
  unsigned igen;             /* bumped by set_interval */
  char *lost[MAXLOST];
  size_t nlost;
} heartbeat;

/* Forks this process has seen (bumped in the child by pthread_atfork):
   hold and release run once per task, and telling whether the thread is
   this process's by it costs no getpid() system call. */
static unsigned forks_seen;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;
static void forked_child(void) { forks_seen++; }
static void watch_forks(void) { pthread_atfork(NULL, NULL, forked_child); }

static void free_ids(char **ids, size_t n) {
  for (size_t i = 0; i < n; i++) free(ids[i]);
  free(ids);
}

static void deadline_in(struct timespec *ts, double s) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t)s;
  ts->tv_nsec += (long)((s - (double)(time_t)s) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void *beat(void *arg) {
  heartbeat *h = arg;
  pthread_mutex_lock(&h->mu);
  while (!h->stop) {
    struct timespec until;
    deadline_in(&until, h->interval);
    unsigned igen = h->igen;
    int due = 0;
    while (!h->stop && h->igen == igen && !due)
      due = pthread_cond_timedwait(&h->cv, &h->mu, &until) == ETIMEDOUT;
    /* a new interval starts counting now */
    if (h->stop || !due || h->nids == 0) continue;
    /* Touch a copy, unlocked: hold() must never wait for the server. */
    size_t n = h->nids;
    unsigned gen = h->gen;
    char **ids = calloc(n, sizeof *ids);
    int *owned = calloc(n, sizeof *owned);
    size_t k = 0;
    for (; ids && owned && k < n; k++)
      if ((ids[k] = strdup(h->ids[k])) == NULL) break;
    pthread_mutex_unlock(&h->mu);
    ps_berr err = {0, ""};
    int code = k == n ? ps_rg_touch(h->g, h->stream, h->group, h->consumer, n,
                                    (const char *const *)ids, owned, &err)
                      : PS_BNOMEM;
    pthread_mutex_lock(&h->mu);
    /* A failed touch (the server is away) is tried again next interval;
       reports of lost entries only count for the batch still held. */
    for (size_t i = 0; code == PS_BOK && gen == h->gen && i < n; i++)
      if (!owned[i] && h->nlost < MAXLOST) {
        h->lost[h->nlost] = ids[i];
        ids[i] = NULL;
        h->nlost++;
      }
    free_ids(ids, k);
    free(owned);
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

static heartbeat *check_hb(lua_State *L) {
  return luaL_checkudata(L, 1, HEARTBEAT_MT);
}

static void stop_hb(heartbeat *h) {
  if (h->owner == getpid()) {
    pthread_mutex_lock(&h->mu);
    h->stop = 1;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    ps_rg_close(h->g);
    free_ids(h->ids, h->nids);
    for (size_t i = 0; i < h->nlost; i++) free(h->lost[i]);
    free(h->stream);
    free(h->group);
    free(h->consumer);
  }
  /* in a forked child: the thread is not there, the memory is the
     parent's copy; leave it */
  h->owner = 0;
  h->g = NULL;
  h->ids = NULL;
  h->nids = h->nlost = 0;
  h->stream = h->group = h->consumer = NULL;
}

static int l_close(lua_State *L) {
  stop_hb(check_hb(L));
  return 0;
}

static const char *opt_string(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);
  return s;
}

static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  double interval = luaL_checknumber(L, 5);
  luaL_argcheck(L, interval > 0 && interval <= 3600, 5, "interval out of range");
  ps_bconfig cfg = {0};
  cfg.host = opt_string(L, 1, "host");
  cfg.path = opt_string(L, 1, "path");
  lua_getfield(L, 1, "port");
  cfg.port = (int)luaL_optinteger(L, -1, 6379);
  lua_getfield(L, 1, "db");
  cfg.db = (int)luaL_optinteger(L, -1, 0);
  lua_getfield(L, 1, "timeout");
  cfg.timeout = luaL_optnumber(L, -1, 5.0);
  lua_pop(L, 3);
  cfg.username = opt_string(L, 1, "username");
  cfg.password = opt_string(L, 1, "password");

  pthread_once(&forks_once, watch_forks);
  heartbeat *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  luaL_setmetatable(L, HEARTBEAT_MT);
  ps_berr err = {0, ""};
  ps_rgroups *g = ps_rg_open(&cfg, &err);
  if (g == NULL)
    return ps_error_raise(L, err.code == PS_BCONFIG ? PS_ECONFIG
                             : err.code == PS_BTIMEOUT ? PS_ETIMEOUT
                             : PS_ECONNECTION, NULL, "%s", err.msg);
  char *s = strdup(stream), *gr = strdup(group), *c = strdup(consumer);
  pthread_condattr_t ca;
  int ok = s && gr && c && pthread_condattr_init(&ca) == 0;
  if (ok) {
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    ok = pthread_cond_init(&h->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (ok && pthread_mutex_init(&h->mu, NULL) != 0) {
    pthread_cond_destroy(&h->cv);
    ok = 0;
  }
  if (!ok) {
    free(s), free(gr), free(c);
    ps_rg_close(g);
    return ps_error_raise(L, PS_EPOOL, NULL, "heartbeat: out of memory");
  }
  h->g = g;
  h->stream = s, h->group = gr, h->consumer = c;
  h->interval = interval;
  if (pthread_create(&h->thread, NULL, beat, h) != 0) {
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(s), free(gr), free(c);
    ps_rg_close(g);
    h->g = NULL;
    h->stream = h->group = h->consumer = NULL;
    return ps_error_raise(L, PS_EPOOL, NULL, "heartbeat: cannot start a thread");
  }
  h->owner = getpid();
  h->forks = forks_seen;
  return 1;
}

static heartbeat *check_running(lua_State *L) {
  heartbeat *h = check_hb(L);
  if (h->owner == 0 || h->forks != forks_seen)
    ps_error_raise(L, PS_ECLOSED, NULL, "heartbeat is closed");
  return h;
}

static int l_hold(lua_State *L) {
  heartbeat *h = check_running(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  size_t n = (size_t)lua_rawlen(L, 2);
  /* Checked one at a time, each popped before the next: a worker holds a
     batch of up to 128 ids, more than the 20 stack slots a C function may
     use without luaL_checkstack (pushing them all wrote past the stack). */
  for (size_t i = 0; i < n; i++) {
    int t = lua_rawgeti(L, 2, (lua_Integer)i + 1);
    lua_pop(L, 1);
    if (t != LUA_TSTRING) return luaL_argerror(L, 2, "ids must be strings");
  }
  char **ids = calloc(n ? n : 1, sizeof *ids);
  size_t k = 0;
  for (; ids && k < n; k++) {
    lua_rawgeti(L, 2, (lua_Integer)k + 1);
    ids[k] = strdup(lua_tostring(L, -1));   /* no error can come between */
    lua_pop(L, 1);
    if (ids[k] == NULL) break;
  }
  if (ids == NULL || k < n) {
    if (ids) free_ids(ids, k);
    return ps_error_raise(L, PS_EPOOL, NULL, "heartbeat: out of memory");
  }
  pthread_mutex_lock(&h->mu);
  char **old = h->ids;
  size_t nold = h->nids;
  h->ids = ids;
  h->nids = n;
  h->gen++;
  pthread_mutex_unlock(&h->mu);
  free_ids(old, nold);
  return 0;
}

static int l_release(lua_State *L) {
  heartbeat *h = check_running(L);
  pthread_mutex_lock(&h->mu);
  char **old = h->ids;
  size_t nold = h->nids;
  h->ids = NULL;
  h->nids = 0;
  h->gen++;
  size_t nlost = h->nlost;
  pthread_mutex_unlock(&h->mu);
  free_ids(old, nold);
  if (nlost == 0) return 0;
  /* Lost ids stay owned by h until all are pushed (a push may raise);
     the thread cannot add more now that nothing is held. */
  lua_createtable(L, (int)nlost, 0);
  for (size_t i = 0; i < nlost; i++) {
    lua_pushstring(L, h->lost[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  pthread_mutex_lock(&h->mu);
  for (size_t i = 0; i < nlost; i++) free(h->lost[i]);
  memmove(h->lost, h->lost + nlost, (h->nlost - nlost) * sizeof *h->lost);
  h->nlost -= nlost;
  pthread_mutex_unlock(&h->mu);
  return 1;
}

static int l_set_interval(lua_State *L) {
  heartbeat *h = check_running(L);
  double s = luaL_checknumber(L, 2);
  luaL_argcheck(L, s > 0 && s <= 3600, 2, "interval out of range");
  pthread_mutex_lock(&h->mu);
  h->interval = s;
  h->igen++;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  return 0;
}

static int l_tostring(lua_State *L) {
  heartbeat *h = check_hb(L);
  if (h->owner == getpid())
    lua_pushfstring(L, "proxystore.QueueHeartbeat: %s every %f s",
                    h->consumer, h->interval);
  else
    lua_pushliteral(L, "proxystore.QueueHeartbeat: closed");
  return 1;
}

static const luaL_Reg methods[] = {
  {"hold", l_hold},
  {"release", l_release},
  {"set_interval", l_set_interval},
  {"close", l_close},
  {NULL, NULL}
};

void ps_heartbeat_open(lua_State *L) {
  if (luaL_newmetatable(L, HEARTBEAT_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_new);
  lua_setfield(L, -2, "queue_heartbeat");
}
