/*
 * pool_channel.c: length-prefixed frames over a stream socket, and the
 * worker's end of the task channel as a Lua userdata.
 *
 * Frames hold ps_codec encodings, encoded straight into a buffer that is
 * reused from task to task and decoded straight out of it, so a value
 * crosses the socket without an intermediate Lua string.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pool.h"

#define CHANNEL_MT "proxystore.Channel"

/* Buffers above this are given back after use rather than kept. */
#define KEEP_MAX ((size_t)256 << 20)

int ps_fd_write_all(int fd, const void *p, size_t n) {
  const char *s = p;
  while (n > 0) {
    ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOTSOCK) w = write(fd, s, n);
      if (w < 0) return -1;
    }
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

int ps_fd_read_all(int fd, void *p, size_t n) {
  char *s = p;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, s + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      if (got == 0) return 1;
      errno = EPIPE;
      return -1;
    }
    got += (size_t)r;
  }
  return 0;
}

void ps_frame_trim(ps_buf *b) {
  /* A shared half (grow hook) is trimmed by its owner (ps_shm_out_trim). */
  if (b->grow == NULL && b->cap > KEEP_MAX) ps_buf_free(b);
  b->len = 0;
}

/* Large buffers are big blocks on huge pages (ps_buf_reserve): first
 * touch of 4 KiB pages is the cost of moving big frames on these machines
 * (docs/performance.md). */
static int reserve(ps_buf *b, size_t n) {
  return ps_buf_reserve(b, n);
}

size_t ps_frame_encode(lua_State *L, int idx, ps_buf *b) {
  idx = lua_absindex(L, idx);
  ps_frame_trim(b);
  if (reserve(b, PS_FRAME_HEADER) != 0)
    ps_error_raise(L, PS_EPOOL, NULL, "out of memory encoding a task frame");
  b->len = PS_FRAME_HEADER;
  ps_codec_encode(L, idx, b);
  uint64_t n = b->len - PS_FRAME_HEADER;
  memcpy(b->data, &n, sizeof n);
  return (size_t)n;
}

int ps_frame_send(int fd, ps_buf *b) {
  return ps_fd_write_all(fd, b->data, b->len);
}

int ps_frame_send_shm(int fd, ps_buf *b) {
  uint64_t n = (uint64_t)(b->len - PS_FRAME_HEADER) | PS_FRAME_SHM;
  return ps_fd_write_all(fd, &n, sizeof n);
}

int ps_frame_recv(int fd, ps_buf *b, size_t *shm_len) {
  uint64_t n;
  *shm_len = 0;
  int r = ps_fd_read_all(fd, &n, sizeof n);
  if (r != 0) return r;
  if (n & PS_FRAME_SHM) {
    n &= ~PS_FRAME_SHM;
    if (n == 0 || n > PS_FRAME_MAX) {
      errno = EPROTO;
      return -1;
    }
    *shm_len = (size_t)n;
    return 0;
  }
  if (n > PS_FRAME_MAX) {
    errno = EPROTO;
    return -1;
  }
  ps_frame_trim(b);
  if (reserve(b, (size_t)n) != 0) {
    errno = ENOMEM;
    return -1;
  }
  if (ps_fd_read_all(fd, b->data, (size_t)n) != 0) {
    if (errno == 0) errno = EPIPE;
    return -1;
  }
  b->len = (size_t)n;
  return 0;
}

/* ---- the worker's end ------------------------------------------------- */

typedef struct channel {
  int fd;
  ps_buf buf;         /* inline frames in and out */
  int shm;            /* the slot's memfd, or -1 */
  ps_shm_in down;     /* task frames from the parent */
  ps_shm_out up;      /* replies to the parent */
} channel;

static channel *check_channel(lua_State *L) {
  return luaL_checkudata(L, 1, CHANNEL_MT);
}

void ps_channel_push(lua_State *L, int fd, int shm) {
  channel *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->fd = -1;
  c->shm = -1;
  ps_buf_init(&c->buf);
  ps_shm_in_init(&c->down, -1, 0);
  ps_shm_out_init(&c->up, -1, 1);
  luaL_setmetatable(L, CHANNEL_MT);
  c->fd = fd;
  c->shm = shm;
  ps_shm_in_init(&c->down, shm, 0);
  ps_shm_out_init(&c->up, shm, 1);
}

/* The parent's end is gone (it closed the pool or died). */
static int parent_gone(int err) {
  return err == EPIPE || err == ECONNRESET;
}

/* chan:recv() -> value, or nothing when the parent has closed the pool or
 * is gone. */
static int channel_recv(lua_State *L) {
  channel *c = check_channel(L);
  if (c->fd < 0) return 0;
  struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
  ps_poll_spin(&pfd, 1);   /* the next task often follows at once */
  size_t shm_len;
  int r = ps_frame_recv(c->fd, &c->buf, &shm_len);
  if (r == 1 || (r < 0 && parent_gone(errno))) return 0;
  /* A new task: the parent has read our last reply. */
  c->up.busy = 0;
  ps_shm_out_trim(&c->up);
  const char *p = NULL;
  if (r == 0 && shm_len > 0 &&
      (p = ps_shm_in_map(&c->down, PS_FRAME_HEADER + shm_len)) == NULL)
    r = -1;
  if (r < 0)
    return ps_error_raise(L, PS_EPOOL, NULL, "worker: reading a task: %s",
                          strerror(errno));
  if (p) {
    ps_codec_decode(L, p + PS_FRAME_HEADER, shm_len);
    ps_shm_in_trim(&c->down);
  } else {
    ps_codec_decode(L, c->buf.data, c->buf.len);
  }
  return 1;
}

/*
 * chan:send(v [, limit [, shm]]) -> true [, true when it went through
 * shared memory]; or false, size without sending when the encoding is
 * larger than limit and shm is false or there is no shared memory (the
 * caller then proxies parts of it). When the parent is gone it raises kind
 * "closed", which ends the worker quietly: nobody is left to read what it
 * would say.
 */
static int channel_send(lua_State *L) {
  channel *c = check_channel(L);
  luaL_checkany(L, 2);
  lua_Integer limit = luaL_optinteger(L, 3, -1);
  int shm = lua_toboolean(L, 4);
  if (c->fd < 0)
    return ps_error_raise(L, PS_ECLOSED, NULL, "worker: channel closed");
  /* Encoded straight into the shared half when it is free. */
  ps_buf *b = c->up.fd >= 0 && !c->up.busy ? &c->up.buf : &c->buf;
  size_t n = ps_frame_encode(L, 2, b);
  int via_shm = 0;
  if (limit >= 0 && n > (size_t)limit) {
    if (!shm || b != &c->up.buf) {
      lua_pushboolean(L, 0);
      lua_pushinteger(L, (lua_Integer)n);
      return 2;
    }
    via_shm = 1;
  }
  int r = via_shm ? ps_frame_send_shm(c->fd, b) : ps_frame_send(c->fd, b);
  if (r != 0) {
    int err = errno;
    if (b == &c->buf) ps_frame_trim(b);
    if (parent_gone(err)) {
      close(c->fd);
      c->fd = -1;
      return ps_error_raise(L, PS_ECLOSED, NULL, "worker: the pool is gone");
    }
    return ps_error_raise(L, PS_EPOOL, NULL, "worker: sending a result: %s",
                          strerror(err));
  }
  if (via_shm) c->up.busy = 1;
  else if (b == &c->buf) ps_frame_trim(b);
  lua_pushboolean(L, 1);
  lua_pushboolean(L, via_shm);
  return 2;
}

static int channel_close(lua_State *L) {
  channel *c = check_channel(L);
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  ps_buf_free(&c->buf);
  ps_shm_in_release(&c->down);
  ps_shm_out_release(&c->up);
  if (c->shm >= 0) close(c->shm);
  c->shm = -1;
  return 0;
}

/* chan:fileno() -> the socket's fd (readable at end of file: a queue
   worker forked by a pool wakes on it when the pool closes). */
static int channel_fileno(lua_State *L) {
  lua_pushinteger(L, check_channel(L)->fd);
  return 1;
}

static int channel_tostring(lua_State *L) {
  channel *c = check_channel(L);
  lua_pushfstring(L, "proxystore.Channel: fd %d", c->fd);
  return 1;
}

static const luaL_Reg channel_methods[] = {
  {"recv", channel_recv},
  {"send", channel_send},
  {"close", channel_close},
  {"fileno", channel_fileno},
  {NULL, NULL}
};

void ps_channel_open(lua_State *L) {
  if (luaL_newmetatable(L, CHANNEL_MT)) {
    luaL_newlib(L, channel_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, channel_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, channel_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, channel_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
