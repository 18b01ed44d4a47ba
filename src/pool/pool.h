/*
 * pool.h: declarations shared by the worker pool's C files.
 *
 *   pool.c          the parent's handle: workers, task frames out, events in
 *   pool_zygote.c   the zygote process that forks (replacement) workers
 *   pool_channel.c  length-prefixed frames over a socket; the worker's end
 */
#ifndef PS_POOL_H
#define PS_POOL_H

#include <poll.h>

#include "spin.h"
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ps.h"

/* A frame is an 8-byte native-endian length followed by that many bytes,
 * each a ps_codec encoding of one Lua value. */
#define PS_FRAME_HEADER 8
#define PS_FRAME_MAX ((uint64_t)1 << 40)

/* Writes all n bytes (EINTR-safe, no SIGPIPE). 0, or -1 with errno set. */
int ps_fd_write_all(int fd, const void *p, size_t n);
/* Reads exactly n bytes. 0 ok, 1 end of file before the first byte,
 * -1 error or end of file part-way (errno set; EPIPE for the latter). */
int ps_fd_read_all(int fd, void *p, size_t n);

/*
 * Encodes the value at idx into b as one frame (b is reset; its memory is
 * reused across calls). Returns the payload length.
 */
size_t ps_frame_encode(lua_State *L, int idx, ps_buf *b);
/* Sends the frame in b. 0, or -1 with errno set. */
int ps_frame_send(int fd, ps_buf *b);
/* Reads one frame's payload into b. 0 ok, 1 clean end of file, -1 error. */
int ps_frame_recv(int fd, ps_buf *b);
/* Keeps a large buffer on huge pages and drops one that grew too large. */
void ps_frame_trim(ps_buf *b);

/* Pushes a worker-side channel userdata owning fd. */
void ps_channel_push(lua_State *L, int fd);
void ps_channel_open(lua_State *L);

/* ---- zygote protocol (SOCK_SEQPACKET between parent and zygote) ------ */

enum {
  PS_Z_SPAWN = 1,    /* parent -> zygote: fork a worker on the passed fd */
  PS_Z_KILL,         /* parent -> zygote: SIGKILL every worker now */
  PS_Z_DRAIN,        /* parent -> zygote: closing on purpose; let idle
                        workers leave by themselves */
  PS_Z_SPAWNED,      /* zygote -> parent: slot's worker has pid */
  PS_Z_SPAWN_FAILED, /* zygote -> parent: fork failed with err */
  PS_Z_EXITED,       /* zygote -> parent: pid ended with wait status */
  PS_Z_KILL_ONE      /* parent -> zygote: SIGKILL worker pid, if it is
                        still one (the zygote reaps, so no reused pid) */
};

typedef struct ps_zmsg {
  int32_t type;
  int32_t slot;
  int32_t pid;
  int32_t status;    /* wait status, or errno for SPAWN_FAILED */
} ps_zmsg;

/*
 * Runs the zygote in the freshly forked child: serves ctl until the parent
 * closes it, forking workers that call the Lua function at fn_idx with a
 * channel; removes dir (when not NULL) on the way out. Never returns.
 */
void ps_zygote_run(lua_State *L, int ctl, int fn_idx, const char *dir);
/* rm -rf dir (no symlinks followed). 0, or -1. */
int ps_rmtree(const char *dir);

/* Parent-side fds of every live pool of this process, closed in each
 * freshly forked zygote so that one pool's workers never hold another
 * pool's sockets open. */
void ps_pool_fds_add(int fd);
void ps_pool_fds_remove(int fd);
void ps_pool_fds_close_all(void);

#endif
