/*
 * pool.c: the parent's side of a worker pool.
 *
 * A PoolHandle owns the zygote (see pool_zygote.c) and one stream socket per
 * worker slot. Lua (lua/proxystore/pool.lua) keeps the task queue and the
 * futures; this file only moves frames and reports what happened:
 *
 *   core.pool_start(nslots, worker_main [, dir [, relay]]) -> handle
 *                   (forks the zygote and the first workers; the zygote
 *                   removes dir, a private store's directory, after its
 *                   workers are gone, even when the parent dies without
 *                   closing; with relay, workers' stdout and stderr are
 *                   pipes this handle reads, so the parent prints their
 *                   lines whole, e.g. above a progress bar)
 *   h:send(slot, value [, limit [, shm]])
 *                                  -> true [, true: it went through the
 *                                     slot's shared memory (over limit,
 *                                     with shm)]
 *                                   | false, size (over limit: not sent)
 *                                   | nil, message (the worker is gone)
 *   h:poll([timeout_s])            -> list of events (empty when a signal
 *                                    ended the wait early):
 *        {slot, "result", value, via_shm}
 *        {slot, "exit", pid, "code"|"signal", n}
 *        {slot, "bad_result", error}  (a reply that did not decode)
 *        {slot, "spawn_failed", message}
 *        {slot, "output", 1|2, text}  (relay: complete lines a worker
 *                                      wrote to stdout or stderr; before
 *                                      that worker's result)
 *        {0, "zygote_died"}       (once: the pool cannot go on)
 *   h:spawn(slot)                  starts a replacement worker in slot
 *   h:kill(slot)                   has the zygote SIGKILL slot's worker (a
 *                                  cancelled task's); its exit event follows
 *   h:pids() -> {slot = pid}, zygote pid
 *   h:close([kill])                closes sockets, reaps the zygote (which
 *                                  reaps the workers); __gc/__close kill
 *
 * A handle copied into a child by fork (a worker's copy of the parent's
 * state) is inert there: only the process that created it touches its fds.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

#define POOL_MT "proxystore.PoolHandle"
#define MAXSLOTS 4096

enum { W_FREE, W_LIVE, W_EOF };

/* A relayed line longer than this is passed on in pieces. */
#define LINE_MAX_RELAY ((size_t)64 << 10)

typedef struct pworker {
  int fd;
  pid_t pid;
  int state;
  int shm;         /* the slot's memfd (pool_shm.c), kept for replacements */
  ps_shm_out down; /* task frames we write */
  ps_shm_in up;    /* replies the worker writes */
  int out[2];      /* relay: read ends of the worker's stdout and stderr */
  ps_buf pend[2];  /* relay: a line not finished yet */
} pworker;

typedef struct pool_h {
  pid_t owner;     /* 0: closed */
  pid_t zpid;
  int ctl;
  int n;
  pworker *w;
  ps_buf buf;      /* reused for inline frames in and out */
  ps_zmsg *later;  /* zygote messages read while waiting for a spawn */
  int nlater, caplater;
  int zdead;       /* the zygote is gone: no spawns, no exit reports */
  int relay;       /* workers' stdout and stderr come through pipes */
} pool_h;

/* ---- parent-side fds of live pools (process-wide by nature: they are
 * what a fork copies) ---------------------------------------------------- */

static int *live_fds;
static size_t nlive, caplive;

void ps_pool_fds_add(int fd) {
  if (nlive == caplive) {
    size_t cap = caplive ? caplive * 2 : 16;
    int *p = realloc(live_fds, cap * sizeof *p);
    if (p == NULL) return;  /* only hygiene in children is lost */
    live_fds = p;
    caplive = cap;
  }
  live_fds[nlive++] = fd;
}

void ps_pool_fds_remove(int fd) {
  for (size_t i = 0; i < nlive; i++)
    if (live_fds[i] == fd) {
      live_fds[i] = live_fds[--nlive];
      break;
    }
  if (nlive == 0) {  /* the module may be unloaded: hold nothing then */
    free(live_fds);
    live_fds = NULL;
    caplive = 0;
  }
}

void ps_pool_fds_close_all(void) {
  for (size_t i = 0; i < nlive; i++) close(live_fds[i]);
  nlive = 0;
}

/* ---- helpers ------------------------------------------------------------ */

static pool_h *check_pool(lua_State *L) {
  return luaL_checkudata(L, 1, POOL_MT);
}

static pool_h *check_open(lua_State *L) {
  pool_h *h = check_pool(L);
  if (h->owner != getpid())
    ps_error_raise(L, PS_ECLOSED, NULL, "pool is closed");
  return h;
}

static int check_slot(lua_State *L, pool_h *h, int arg) {
  lua_Integer s = luaL_checkinteger(L, arg);
  luaL_argcheck(L, s >= 1 && s <= h->n, arg, "no such worker slot");
  return (int)s - 1;
}

static void close_fd(int *fd) {
  if (*fd >= 0) {
    ps_pool_fds_remove(*fd);
    close(*fd);
  }
  *fd = -1;
}

/* The slot's shared memory, made once; without it frames go inline. */
static void open_shm(pworker *w) {
  if (w->shm >= 0) return;
  w->shm = ps_shm_create();
  if (w->shm < 0) return;
  ps_pool_fds_add(w->shm);
  ps_shm_out_init(&w->down, w->shm, 0);
  ps_shm_in_init(&w->up, w->shm, 1);
}

static void close_shm(pworker *w) {
  ps_shm_out_release(&w->down);
  ps_shm_in_release(&w->up);
  close_fd(&w->shm);
}

static void close_worker_fd(pworker *w) {
  close_fd(&w->fd);
  /* Nobody reads the frame left in shared memory any more. */
  w->down.busy = 0;
  if (w->down.fd >= 0) ps_shm_out_trim(&w->down);
}

static void close_relay(pworker *w) {
  for (int k = 0; k < 2; k++) {
    close_fd(&w->out[k]);
    ps_buf_free(&w->pend[k]);
  }
}

/* Two pipes for a worker's stdout and stderr: read ends (non-blocking) in
 * w->out, write ends in wr. 0, or an errno. */
static int relay_pipes(pworker *w, int wr[2]) {
  for (int k = 0; k < 2; k++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
      int err = errno;
      if (k == 1) {
        close(wr[0]);
        close_fd(&w->out[0]);
      }
      return err;
    }
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    w->out[k] = p[0];
    wr[k] = p[1];
    ps_pool_fds_add(p[0]);
  }
  return 0;
}

/* Asks the zygote for a worker in slot s (with relay pipes when the pool
 * relays). 0, or an errno. */
static int spawn_slot(pool_h *h, int s) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return errno;
  ps_zmsg m = {PS_Z_SPAWN, s, 0, 0};
  int fds[4] = {sv[1], -1, -1, -1}, nfds = 1;
  open_shm(&h->w[s]);
  if (h->w[s].shm >= 0) {
    fds[nfds++] = h->w[s].shm;
    m.status |= PS_SPAWN_SHM;
  }
  int relay_at = nfds;   /* the relay pipes start here */
  if (h->relay) {
    close_relay(&h->w[s]);
    int err = relay_pipes(&h->w[s], fds + nfds);
    if (err) {
      close(sv[0]);
      close(sv[1]);
      return err;
    }
    nfds += 2;
    m.status |= PS_SPAWN_RELAY;
  }
  char cbuf[CMSG_SPACE(4 * sizeof(int))];
  memset(cbuf, 0, sizeof cbuf);
  struct iovec iov = {&m, sizeof m};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
  memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
  ssize_t r;
  do r = sendmsg(h->ctl, &msg, MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
  int err = r < 0 ? errno : 0;
  /* The zygote has them; the memfd stays ours for replacements. */
  close(fds[0]);
  for (int i = relay_at; i < nfds; i++) close(fds[i]);
  if (err) {
    close(sv[0]);
    close_relay(&h->w[s]);
    return err;
  }
  h->w[s].fd = sv[0];
  h->w[s].pid = 0;
  h->w[s].state = W_LIVE;
  ps_pool_fds_add(sv[0]);
  return 0;
}

static int defer(pool_h *h, const ps_zmsg *m) {
  if (h->nlater == h->caplater) {
    int cap = h->caplater ? h->caplater * 2 : 8;
    ps_zmsg *p = realloc(h->later, (size_t)cap * sizeof *p);
    if (p == NULL) return -1;
    h->later = p;
    h->caplater = cap;
  }
  h->later[h->nlater++] = *m;
  return 0;
}

/*
 * Waits for the zygote's answer about slot s, so that a worker's pid is
 * known as soon as spawn returns; other messages are kept for poll.
 * 0, or an errno.
 */
static int await_spawn(pool_h *h, int s) {
  for (;;) {
    ps_zmsg m;
    ssize_t n = recv(h->ctl, &m, sizeof m, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof m) return n < 0 ? errno : EPIPE;
    if (m.type == PS_Z_SPAWNED && m.slot == s) {
      h->w[s].pid = m.pid;
      return 0;
    }
    if (m.type == PS_Z_SPAWN_FAILED && m.slot == s) {
      close_worker_fd(&h->w[s]);
      close_relay(&h->w[s]);
      h->w[s].state = W_FREE;
      return m.status ? m.status : EAGAIN;
    }
    if (defer(h, &m) != 0) return ENOMEM;
  }
}

static void push_exit_event(lua_State *L, int slot, pid_t pid, int status) {
  lua_createtable(L, 5, 0);
  lua_pushinteger(L, slot + 1);
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "exit");
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, pid);
  lua_rawseti(L, -2, 3);
  if (WIFSIGNALED(status)) {
    lua_pushliteral(L, "signal");
    lua_pushinteger(L, WTERMSIG(status));
  } else {
    lua_pushliteral(L, "code");
    lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  lua_rawseti(L, -3, 5);
  lua_rawseti(L, -2, 4);
}

/* Appends the table on top to the list at idx. */
static void append(lua_State *L, int list, int *nev) {
  lua_rawseti(L, list, ++*nev);
}

/* Pushes an output event for slot s with text. */
static void push_output(lua_State *L, int s, int k, const char *text,
                        size_t len, int list, int *nev) {
  lua_createtable(L, 4, 0);
  lua_pushinteger(L, s + 1);
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "output");
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, k + 1);
  lua_rawseti(L, -2, 3);
  lua_pushlstring(L, text, len);
  lua_rawseti(L, -2, 4);
  append(L, list, nev);
}

/*
 * Reads what worker s wrote to its relayed stdout (k = 0) or stderr
 * (k = 1) without blocking, and pushes its complete lines as one event.
 * At the end (the pipe's end of file, or done: the worker is gone) the
 * unfinished line too, with a newline, and the pipe is closed; a
 * process the worker left behind cannot hold the pool up.
 */
static void read_output(lua_State *L, pool_h *h, int s, int k, int done,
                        int list, int *nev) {
  pworker *w = &h->w[s];
  ps_buf *b = &w->pend[k];
  int eof = 0;
  while (w->out[k] >= 0) {
    if (ps_buf_reserve(b, 4096) != 0) break;
    ssize_t r = read(w->out[k], b->data + b->len, b->cap - b->len);
    if (r > 0) {
      b->len += (size_t)r;
      if (b->len >= LINE_MAX_RELAY) break;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    eof = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    break;
  }
  size_t whole = b->len;
  while (whole > 0 && b->data[whole - 1] != '\n') whole--;
  if (whole == 0 && b->len >= LINE_MAX_RELAY) whole = b->len;
  if (eof || done) {
    if (b->len > whole && ps_buf_append(b, "\n", 1) == 0) whole = b->len;
    close_fd(&w->out[k]);
  }
  if (whole > 0) {
    push_output(L, s, k, b->data, whole, list, nev);
    memmove(b->data, b->data + whole, b->len - whole);
    b->len -= whole;
  }
  if (w->out[k] < 0) ps_buf_free(b);
}

/* Relays what worker s wrote so far (done: all of it, it is gone). */
static void drain_output(lua_State *L, pool_h *h, int s, int done, int list,
                         int *nev) {
  for (int k = 0; k < 2; k++)
    if (h->w[s].out[k] >= 0) read_output(L, h, s, k, done, list, nev);
}

typedef struct frame_ref {
  const char *p;
  size_t len;
} frame_ref;

static int decode_frame(lua_State *L) {
  frame_ref *f = lua_touserdata(L, 1);
  ps_codec_decode(L, f->p, f->len);
  return 1;
}

/* Reads one frame from slot s; pushes a result event (1), or marks the
 * worker gone (0). A frame that does not decode becomes a "bad_result"
 * event for its task alone: raising here would drop the other events. */
static int read_result(lua_State *L, pool_h *h, int s, int list, int *nev) {
  pworker *w = &h->w[s];
  drain_output(L, h, s, 0, list, nev);   /* what it printed comes first */
  size_t shm_len;
  if (ps_frame_recv(w->fd, &h->buf, &shm_len) != 0) {
    close_worker_fd(w);
    w->state = W_EOF;
    return 0;
  }
  /* A reply: the worker is done with the task frame it was sent. */
  w->down.busy = 0;
  if (w->down.fd >= 0) ps_shm_out_trim(&w->down);
  frame_ref f = {h->buf.data, h->buf.len};
  if (shm_len > 0) {
    f.p = ps_shm_in_map(&w->up, PS_FRAME_HEADER + shm_len);
    f.len = shm_len;
    if (f.p) f.p += PS_FRAME_HEADER;
  }
  lua_createtable(L, 4, 0);
  lua_pushinteger(L, s + 1);
  lua_rawseti(L, -2, 1);
  int st;
  if (f.p == NULL) {
    lua_pushfstring(L, "cannot map the worker's shared memory: %s",
                    strerror(errno));
    st = LUA_ERRRUN;
  } else {
    lua_pushcfunction(L, decode_frame);
    lua_pushlightuserdata(L, &f);
    st = lua_pcall(L, 1, 1, 0);
  }
  ps_frame_trim(&h->buf);
  if (shm_len > 0) ps_shm_in_trim(&w->up);
  lua_pushstring(L, st == LUA_OK ? "result" : "bad_result");
  lua_rawseti(L, -3, 2);
  lua_rawseti(L, -2, 3);
  lua_pushboolean(L, shm_len > 0);
  lua_rawseti(L, -2, 4);
  append(L, list, nev);
  return 1;
}

static int find_pid(pool_h *h, pid_t pid) {
  for (int s = 0; s < h->n; s++)
    if (h->w[s].pid == pid && h->w[s].state != W_FREE) return s;
  return -1;
}

/* Messages from the zygote (deferred ones first), without blocking. */
static void read_ctl(lua_State *L, pool_h *h, int list, int *nev) {
  ps_zmsg m;
  int later = 0;
  for (;;) {
    if (later < h->nlater) {
      m = h->later[later++];
      if (later == h->nlater) h->nlater = later = 0;
    } else {
      ssize_t n = recv(h->ctl, &m, sizeof m, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        /* The zygote died (killed from outside): its workers die with it
         * and nobody will report them. Say so once. */
        if (!h->zdead) {
          h->zdead = 1;
          lua_createtable(L, 2, 0);
          lua_pushinteger(L, 0);
          lua_rawseti(L, -2, 1);
          lua_pushliteral(L, "zygote_died");
          lua_rawseti(L, -2, 2);
          append(L, list, nev);
        }
        return;
      }
      if (n != (ssize_t)sizeof m) return;
    }
    if (m.type == PS_Z_SPAWNED && m.slot >= 0 && m.slot < h->n) {
      h->w[m.slot].pid = m.pid;
    } else if (m.type == PS_Z_SPAWN_FAILED && m.slot >= 0 && m.slot < h->n) {
      close_worker_fd(&h->w[m.slot]);
      close_relay(&h->w[m.slot]);
      h->w[m.slot].state = W_FREE;
      lua_createtable(L, 3, 0);
      lua_pushinteger(L, m.slot + 1);
      lua_rawseti(L, -2, 1);
      lua_pushliteral(L, "spawn_failed");
      lua_rawseti(L, -2, 2);
      lua_pushstring(L, strerror(m.status));
      lua_rawseti(L, -2, 3);
      append(L, list, nev);
    } else if (m.type == PS_Z_EXITED) {
      int s = find_pid(h, m.pid);
      if (s < 0) continue;
      /* A result written just before dying is still delivered. */
      while (h->w[s].state == W_LIVE && read_result(L, h, s, list, nev)) {}
      drain_output(L, h, s, 1, list, nev);
      close_worker_fd(&h->w[s]);
      h->w[s].state = W_FREE;
      h->w[s].pid = 0;
      push_exit_event(L, s, m.pid, m.status);
      append(L, list, nev);
    }
  }
}

/* ---- Lua functions -------------------------------------------------------- */

static int pool_start(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= MAXSLOTS, 1, "worker count out of range");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  const char *dir = luaL_optstring(L, 3, NULL);
  int relay = lua_toboolean(L, 4);
  lua_settop(L, 3);
  pool_h *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  h->ctl = -1;
  ps_buf_init(&h->buf);
  luaL_setmetatable(L, POOL_MT);
  h->w = calloc((size_t)n, sizeof *h->w);
  if (h->w == NULL)
    return ps_error_raise(L, PS_EPOOL, NULL, "out of memory");
  h->n = (int)n;
  h->relay = relay;
  for (int s = 0; s < h->n; s++) {
    h->w[s].fd = h->w[s].out[0] = h->w[s].out[1] = -1;
    ps_buf_init(&h->w[s].pend[0]);
    ps_buf_init(&h->w[s].pend[1]);
    h->w[s].shm = -1;
    ps_shm_out_init(&h->w[s].down, -1, 0);
    ps_shm_in_init(&h->w[s].up, -1, 1);
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return ps_error_raise(L, PS_EPOOL, NULL, "socketpair: %s",
                          strerror(errno));
  fflush(NULL);  /* buffered output must not be written twice */
  pid_t parent = getpid();  /* pid_t before fork: the owner */
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    ps_pool_fds_close_all();
    ps_zygote_run(L, sv[1], 2, dir);
  }
  int err = errno;
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return ps_error_raise(L, PS_EPOOL, NULL, "fork: %s", strerror(err));
  }
  h->owner = parent;
  h->zpid = pid;
  h->ctl = sv[0];
  ps_pool_fds_add(h->ctl);
  for (int s = 0; s < h->n; s++) {
    err = spawn_slot(h, s);
    if (!err) err = await_spawn(h, s);
    if (err)
      return ps_error_raise(L, PS_EPOOL, NULL, "starting worker %d: %s",
                            s + 1, strerror(err));
  }
  return 1;
}

static int pool_spawn(lua_State *L) {
  pool_h *h = check_open(L);
  int s = check_slot(L, h, 2);
  if (h->w[s].state == W_LIVE)
    return luaL_error(L, "worker slot %d is busy", s + 1);
  if (h->zdead)
    return ps_error_raise(L, PS_EPOOL, NULL, "the pool's zygote is gone");
  int err = spawn_slot(h, s);
  if (!err) err = await_spawn(h, s);
  if (err)
    return ps_error_raise(L, PS_EPOOL, NULL, "starting worker %d: %s",
                          s + 1, strerror(err));
  return 0;
}

static int pool_kill(lua_State *L) {
  pool_h *h = check_open(L);
  int s = check_slot(L, h, 2);
  int sent = 0;
  if (h->w[s].state != W_FREE && h->w[s].pid > 0 && !h->zdead) {
    ps_zmsg m = {PS_Z_KILL_ONE, s, h->w[s].pid, 0};
    ssize_t r;
    do r = send(h->ctl, &m, sizeof m, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    sent = r == (ssize_t)sizeof m;
  }
  lua_pushboolean(L, sent);
  return 1;
}

static int pool_send(lua_State *L) {
  pool_h *h = check_open(L);
  int s = check_slot(L, h, 2);
  luaL_checkany(L, 3);
  lua_Integer limit = luaL_optinteger(L, 4, -1);
  int shm = lua_toboolean(L, 5);
  pworker *w = &h->w[s];
  if (w->state != W_LIVE) {
    lua_pushnil(L);
    lua_pushliteral(L, "worker is gone");
    return 2;
  }
  /* Encoded straight into the slot's shared half when it is free: a frame
   * over the limit then goes as it is, with no copy. */
  ps_buf *b = w->down.fd >= 0 && !w->down.busy ? &w->down.buf : &h->buf;
  size_t n = ps_frame_encode(L, 3, b);
  int via_shm = 0;
  if (limit >= 0 && n > (size_t)limit) {
    if (!shm || b != &w->down.buf) {
      if (b == &h->buf) ps_frame_trim(&h->buf);
      else ps_shm_out_trim(&w->down);
      lua_pushboolean(L, 0);
      lua_pushinteger(L, (lua_Integer)n);
      return 2;
    }
    via_shm = 1;
  }
  int r = via_shm ? ps_frame_send_shm(w->fd, b) : ps_frame_send(w->fd, b);
  int err = errno;
  if (b == &h->buf) ps_frame_trim(&h->buf);
  if (r != 0) {
    if (b != &h->buf) ps_shm_out_trim(&w->down);
    lua_pushnil(L);
    lua_pushstring(L, strerror(err));
    return 2;
  }
  if (via_shm) w->down.busy = 1;
  else if (b != &h->buf) ps_shm_out_trim(&w->down);
  lua_pushboolean(L, 1);
  lua_pushboolean(L, via_shm);
  return 2;
}

static int pool_poll(lua_State *L) {
  pool_h *h = check_open(L);
  double t = luaL_optnumber(L, 2, -1);
  int timeout = t < 0 ? -1 : t > 3600 ? 3600000 : (int)(t * 1000 + 0.5);
  lua_settop(L, 2);
  struct pollfd stackfds[16];
  int stackslots[16];
  struct pollfd *fds = stackfds;
  int *slot_of = stackslots;
  int per = h->relay ? 3 : 1;   /* fds per worker */
  if (per * h->n + 1 > 16) {
    /* a userdata, so that a raise below cannot leak it */
    size_t m = (size_t)(per * h->n) + 1;
    fds = lua_newuserdatauv(L, m * (sizeof *fds + sizeof *slot_of), 0);
    lua_replace(L, 2);
    slot_of = (int *)(fds + m);
  }
  int nfds = 0;
  fds[nfds].fd = h->zdead ? -1 : h->ctl;  /* poll skips negative fds */
  fds[nfds].events = POLLIN;
  slot_of[nfds++] = -1;
  for (int s = 0; s < h->n; s++)
    if (h->w[s].state == W_LIVE) {
      fds[nfds].fd = h->w[s].fd;
      fds[nfds].events = POLLIN;
      slot_of[nfds++] = s;
    }
  int nsock = nfds;   /* then the relay pipes: slot_of is -2 - slot */
  for (int s = 0; s < h->n; s++)
    for (int k = 0; k < 2; k++)
      if (h->w[s].out[k] >= 0) {
        fds[nfds].fd = h->w[s].out[k];
        fds[nfds].events = POLLIN;
        slot_of[nfds++] = -2 - s;
      }
  lua_newtable(L);
  int list = lua_gettop(L);
  int nev = 0;
  int r;
  if (h->nlater > 0) timeout = 0;
  r = timeout != 0 ? ps_poll_spin(fds, (nfds_t)nfds) : 0;
  if (r == 0) r = poll(fds, (nfds_t)nfds, timeout);
  /* A signal ends the wait with no event: the caller's Lua loop runs again,
   * so a host's SIGINT hook (lua.c's "interrupted!") gets its chance. */
  if (r < 0 && errno == EINTR) r = 0;
  if (r < 0)
    return ps_error_raise(L, PS_EPOOL, NULL, "poll: %s", strerror(errno));
  for (int i = nsock; i < nfds && r > 0; i++)
    if (fds[i].revents) drain_output(L, h, -2 - slot_of[i], 0, list, &nev);
  for (int i = 1; i < nsock && r > 0; i++) {
    int s = slot_of[i];
    if (fds[i].revents && h->w[s].state == W_LIVE)
      read_result(L, h, s, list, &nev);
  }
  if (h->nlater > 0 || (r > 0 && fds[0].revents)) read_ctl(L, h, list, &nev);
  lua_settop(L, list);
  return 1;
}

static int pool_pids(lua_State *L) {
  pool_h *h = check_pool(L);
  lua_newtable(L);
  for (int s = 0; s < h->n; s++)
    if (h->w[s].state != W_FREE && h->w[s].pid > 0) {
      lua_pushinteger(L, h->w[s].pid);
      lua_rawseti(L, -2, s + 1);
    }
  lua_pushinteger(L, h->zpid);
  return 2;
}

/* close, __gc and __close: idempotent, safe half-built, inert in a child. */
static void close_handle(pool_h *h, int kill) {
  if (h->owner == getpid()) {
    for (int s = 0; s < h->n; s++) {
      close_worker_fd(&h->w[s]);
      close_shm(&h->w[s]);
      close_relay(&h->w[s]);
    }
    if (h->ctl >= 0) {
      ps_zmsg m = {kill ? PS_Z_KILL : PS_Z_DRAIN, 0, 0, 0};
      send(h->ctl, &m, sizeof m, MSG_NOSIGNAL);
      ps_pool_fds_remove(h->ctl);
      close(h->ctl);
    }
    if (h->zpid > 0)
      while (waitpid(h->zpid, NULL, 0) < 0 && errno == EINTR) {}
  }
  h->owner = 0;
  h->ctl = -1;
  h->zpid = 0;
  for (int s = 0; s < h->n; s++) {   /* a forked copy's buffers too */
    ps_buf_free(&h->w[s].pend[0]);
    ps_buf_free(&h->w[s].pend[1]);
  }
  free(h->w);
  h->w = NULL;
  free(h->later);
  h->later = NULL;
  h->nlater = h->caplater = 0;
  h->n = 0;
  ps_buf_free(&h->buf);
}

static int pool_close(lua_State *L) {
  close_handle(check_pool(L), lua_toboolean(L, 2));
  return 0;
}

static int pool_gc(lua_State *L) {
  close_handle(check_pool(L), 1);
  return 0;
}

static int pool_isopen(lua_State *L) {
  lua_pushboolean(L, check_pool(L)->owner == getpid());
  return 1;
}

static int pool_tostring(lua_State *L) {
  pool_h *h = check_pool(L);
  if (h->owner == getpid())
    lua_pushfstring(L, "proxystore.PoolHandle: %d workers, zygote %d",
                    h->n, (int)h->zpid);
  else
    lua_pushliteral(L, "proxystore.PoolHandle: closed");
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static int l_rmtree(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  luaL_argcheck(L, dir[0] == '/' && dir[1] != '\0', 1, "not an absolute path");
  lua_pushboolean(L, ps_rmtree(dir) == 0);
  return 1;
}

/*
 * core.pool_exit([code]): os.exit inside a worker. Flushes stdio and
 * leaves at once: the atexit handlers and the Lua state are the parent's
 * copies, not the worker's to run or close.
 */
static int l_exit(lua_State *L) {
  int code;
  if (lua_isnoneornil(L, 1) || lua_isboolean(L, 1))
    code = lua_isnoneornil(L, 1) || lua_toboolean(L, 1) ? 0 : 1;
  else
    code = (int)luaL_checkinteger(L, 1);
  fflush(NULL);
  _exit(code & 0xff);
  return 0;
}

/* core.pool_ncpu() -> online cores (the default worker count). */
static int l_ncpu(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* core.pool_isatty(fd) -> whether the progress bar may draw there. */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* core.pool_mkdtemp(template) -> a fresh private directory's path. */
static int l_mkdtemp(lua_State *L) {
  size_t len;
  const char *t = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, len + 1);
  memcpy(p, t, len + 1);
  if (mkdtemp(p) == NULL)
    return ps_error_raise(L, PS_EIO, NULL, "mkdtemp %s: %s", t,
                          strerror(errno));
  luaL_pushresultsize(&b, len);
  return 1;
}

static const luaL_Reg pool_methods[] = {
  {"send", pool_send},
  {"poll", pool_poll},
  {"spawn", pool_spawn},
  {"kill", pool_kill},
  {"pids", pool_pids},
  {"close", pool_close},
  {"isopen", pool_isopen},
  {NULL, NULL}
};

static const luaL_Reg pool_funcs[] = {
  {"pool_start", pool_start},
  {"pool_getpid", l_getpid},
  {"pool_rmtree", l_rmtree},
  {"pool_ncpu", l_ncpu},
  {"pool_exit", l_exit},
  {"pool_isatty", l_isatty},
  {"pool_mkdtemp", l_mkdtemp},
  {NULL, NULL}
};

void ps_pool_open(lua_State *L) {
  if (luaL_newmetatable(L, POOL_MT)) {
    luaL_newlib(L, pool_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, pool_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, pool_funcs, 0);
  ps_channel_open(L);
}
