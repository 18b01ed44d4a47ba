/*
 * pool_shm.c: the shared memory a pool's parent and one worker slot move
 * large frames through.
 *
 * Each slot owns one memfd, made when the slot first gets a worker and
 * kept for its replacements. It is sized once, to two halves of
 * PS_SHM_HALF bytes (sparse: only pages written cost memory), and sealed
 * at that size. The parent encodes its task frames into the first half,
 * the worker its replies into the second. A frame larger than the pool's
 * threshold is encoded straight into the writer's mapping and only its
 * length crosses the socket (PS_FRAME_SHM); the reader decodes it from its
 * own mapping. So a large value is copied once by the encoder and once by
 * the decoder, and the kernel copies nothing (through the socket the
 * kernel copies it twice more).
 *
 * Both sides keep their mappings from task to task, so a page is faulted
 * in once, not once per task: a fault on a fresh 4 KiB page costs about
 * 12 us on these VMs (docs/performance.md).
 *
 * Immutability: one frame in flight per half. The parent writes the next
 * task frame only after the worker's reply to the previous one (a worker
 * decodes its task before it runs it), and a worker writes its next reply
 * only after it received the next task (the parent decodes a reply as
 * soon as it reads it). pool.c and pool_channel.c track that and encode
 * into their private buffer instead while a frame is out. Each side maps
 * the other's half read-only. The seals fix the size, so no mapping ever
 * reaches past the end of the file: whatever a worker does with its fd,
 * the parent gets no SIGBUS.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pool.h"

#define SHM_MIN ((size_t)2 << 20)

int ps_shm_create(void) {
  int fd = memfd_create("proxystore-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  if (ftruncate(fd, (off_t)(2 * PS_SHM_HALF)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/*
 * Huge pages for shared memory need shmem_enabled=advise (it is "never" on
 * the VMs measured), so that is advice only. DONTFORK: a process forked
 * later (another pool's zygote, a task's child) must not keep this
 * memory alive after the pool is gone.
 */
static void advise(void *p, size_t len) {
  (void)madvise(p, len, MADV_HUGEPAGE);
  (void)madvise(p, len, MADV_DONTFORK);
}

/* ---- the half this process writes ------------------------------------- */

/* ps_buf's grow hook: a larger shared mapping of the same half. mremap
 * moves the page tables along, so pages already touched stay mapped. */
static int out_grow(ps_buf *b, size_t n) {
  ps_shm_out *o = (ps_shm_out *)b;
  size_t need = b->len + n;
  if (need > PS_SHM_HALF) return -1;
  size_t cap = b->cap ? b->cap : SHM_MIN;
  while (cap < need) cap *= 2;
  if (cap > PS_SHM_HALF) cap = PS_SHM_HALF;
  void *p = b->data
    ? mremap(b->data, b->cap, cap, MREMAP_MAYMOVE)
    : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, o->fd, o->off);
  if (p == MAP_FAILED) return -1;
  advise(p, cap);
  b->data = p;
  b->cap = cap;
  return 0;
}

void ps_shm_out_init(ps_shm_out *o, int fd, int half) {
  ps_buf_init(&o->buf);
  o->buf.grow = fd >= 0 ? out_grow : NULL;
  o->fd = fd;
  o->off = (off_t)half * (off_t)PS_SHM_HALF;
  o->busy = 0;
}

void ps_shm_out_trim(ps_shm_out *o) {
  o->buf.len = 0;
  if (o->buf.cap <= PS_SHM_KEEP) return;
  /* Gives the pages back; the file keeps its sealed size. */
  (void)fallocate(o->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o->off,
                  (off_t)o->buf.cap);
  munmap(o->buf.data, o->buf.cap);
  o->buf.data = NULL;
  o->buf.cap = 0;
}

void ps_shm_out_release(ps_shm_out *o) {
  if (o->buf.data) munmap(o->buf.data, o->buf.cap);
  ps_shm_out_init(o, -1, 0);
}

/* ---- the half this process reads --------------------------------------- */

void ps_shm_in_init(ps_shm_in *in, int fd, int half) {
  in->fd = fd;
  in->off = (off_t)half * (off_t)PS_SHM_HALF;
  in->map = NULL;
  in->len = 0;
}

const char *ps_shm_in_map(ps_shm_in *in, size_t n) {
  if (in->fd < 0 || n > PS_SHM_HALF) {
    errno = EPROTO;
    return NULL;
  }
  if (n <= in->len) return in->map;
  size_t len = in->len ? in->len : SHM_MIN;
  while (len < n) len *= 2;
  if (len > PS_SHM_HALF) len = PS_SHM_HALF;
  void *p = in->map ? mremap(in->map, in->len, len, MREMAP_MAYMOVE)
                    : mmap(NULL, len, PROT_READ, MAP_SHARED, in->fd, in->off);
  if (p == MAP_FAILED) return NULL;
  advise(p, len);
  in->map = p;
  in->len = len;
  return in->map;
}

void ps_shm_in_trim(ps_shm_in *in) {
  if (in->len <= PS_SHM_KEEP) return;
  munmap(in->map, in->len);
  in->map = NULL;
  in->len = 0;
}

void ps_shm_in_release(ps_shm_in *in) {
  if (in->map) munmap(in->map, in->len);
  ps_shm_in_init(in, -1, 0);
}
