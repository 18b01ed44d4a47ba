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
 * each a ps_codec encoding of one Lua value. With PS_FRAME_SHM set in the
 * length, no bytes follow: the frame is in the sender's half of the slot's
 * shared memory (pool_shm.c), its header included, at offset 0. */
#define PS_FRAME_HEADER 8
#define PS_FRAME_MAX ((uint64_t)1 << 40)
#define PS_FRAME_SHM ((uint64_t)1 << 62)

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
/* Sends only the header of the frame in b, flagged PS_FRAME_SHM: b is the
 * sender's shared half. 0, or -1 with errno set. */
int ps_frame_send_shm(int fd, ps_buf *b);
/*
 * Reads one frame's payload into b, or, for a PS_FRAME_SHM frame, only its
 * length into *shm_len (0 for a frame read into b). 0 ok, 1 clean end of
 * file, -1 error.
 */
int ps_frame_recv(int fd, ps_buf *b, size_t *shm_len);
/* Keeps a large buffer on huge pages and drops one that grew too large. */
void ps_frame_trim(ps_buf *b);

/* ---- shared memory of a slot (pool_shm.c) ------------------------------ */

/* Each half of a slot's memfd; frames up to PS_FRAME_MAX fit. */
#define PS_SHM_HALF ((size_t)PS_FRAME_MAX)
/* Mapped bytes above this are given back after use, not kept warm. */
#define PS_SHM_KEEP ((size_t)256 << 20)

/* The half this process writes: encode into buf (ps_buf's grow hook maps
 * more of the half). busy: a frame there is not read yet. */
typedef struct ps_shm_out {
  ps_buf buf;      /* first member: the grow hook casts */
  int fd;          /* -1: no shared memory, buf is not usable */
  off_t off;
  int busy;
} ps_shm_out;

/* The half this process reads. */
typedef struct ps_shm_in {
  int fd;
  off_t off;
  char *map;
  size_t len;
} ps_shm_in;

/* A new slot memfd, sized and sealed; -1 with errno set. */
int ps_shm_create(void);
/* half 0: parent to worker, 1: worker to parent. fd -1: none. */
void ps_shm_out_init(ps_shm_out *o, int fd, int half);
/* After the reader is done: empty; unmapped and punched out when large. */
void ps_shm_out_trim(ps_shm_out *o);
void ps_shm_out_release(ps_shm_out *o);
void ps_shm_in_init(ps_shm_in *in, int fd, int half);
/* The first n bytes of the half, mapped read-only; NULL with errno set. */
const char *ps_shm_in_map(ps_shm_in *in, size_t n);
void ps_shm_in_trim(ps_shm_in *in);
void ps_shm_in_release(ps_shm_in *in);

/* Pushes a worker-side channel userdata owning fd and shm (the slot's
 * memfd, or -1). */
void ps_channel_push(lua_State *L, int fd, int shm);
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
  int32_t status;    /* wait status, or errno for SPAWN_FAILED, or for
                        SPAWN the PS_SPAWN_* flags of the passed fds */
} ps_zmsg;

/* Which fds a PS_Z_SPAWN passes after the worker's socket, in this order. */
enum {
  PS_SPAWN_SHM = 1,    /* the slot's memfd */
  PS_SPAWN_RELAY = 2   /* the write ends of its stdout and stderr pipes */
};

/*
 * Runs the zygote in the freshly forked child: serves ctl until the parent
 * closes it, forking workers that call the Lua function at fn_idx with a
 * channel; removes dir (when not NULL) on the way out. Never returns.
 * A PS_Z_SPAWN message carries the worker's socket, then (SCM_RIGHTS, as
 * its status flags say) the slot's memfd and the relay pipes.
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
