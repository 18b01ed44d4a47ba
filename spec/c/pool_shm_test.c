/*
 * pool_shm_test.c: a pool slot's shared memory (src/pool/pool_shm.c) keeps
 * the size it was sealed at, so a mapping never reaches past the end of
 * the file (no SIGBUS, whatever a worker does with its fd), and a writer's
 * buffer grows, keeps its pages across frames and gives large ones back.
 * Built and run by spec/pool_shared_spec.lua.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"

static int failures, tests;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
              #cond);                                                 \
      failures++;                                                     \
    }                                                                 \
  } while (0)

static void test_sealed(void) {
  tests++;
  int fd = ps_shm_create();
  CHECK(fd >= 0);
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && (size_t)st.st_size == 2 * PS_SHM_HALF);
  /* neither side can shrink or grow it, nor lift the seals */
  CHECK(ftruncate(fd, 4096) != 0 && errno == EPERM);
  CHECK(ftruncate(fd, (off_t)(3 * PS_SHM_HALF)) != 0 && errno == EPERM);
  /* the last byte of the worker's half is mapped and reads as zero */
  ps_shm_in in;
  ps_shm_in_init(&in, fd, 1);
  const char *p = ps_shm_in_map(&in, PS_SHM_HALF);
  CHECK(p != NULL);
  if (p) CHECK(p[PS_SHM_HALF - 1] == 0);
  CHECK(ps_shm_in_map(&in, PS_SHM_HALF + 1) == NULL);
  ps_shm_in_release(&in);
  close(fd);
}

static void test_frames(void) {
  tests++;
  int fd = ps_shm_create();
  ps_shm_out out;
  ps_shm_in in;
  ps_shm_out_init(&out, fd, 0);
  ps_shm_in_init(&in, fd, 0);
  /* a frame that grows the mapping, seen by the reader */
  size_t n = (size_t)5 << 20;
  CHECK(ps_buf_reserve(&out.buf, n) == 0);
  memset(out.buf.data, 'a', n);
  out.buf.len = n;
  const char *p = ps_shm_in_map(&in, n);
  CHECK(p && p[0] == 'a' && p[n - 1] == 'a');
  /* a small one after it reuses the same mapping */
  char *before = out.buf.data;
  ps_shm_out_trim(&out);
  CHECK(out.buf.len == 0 && out.buf.data == before);
  CHECK(ps_buf_append(&out.buf, "bc", 2) == 0);
  CHECK(p[0] == 'b' && p[1] == 'c');
  /* ps_buf_free leaves the mapping to its owner */
  ps_buf b = out.buf;
  ps_buf_free(&b);
  CHECK(out.buf.data[0] == 'b');
  /* a frame above the keep limit is given back after use */
  CHECK(ps_buf_reserve(&out.buf, PS_SHM_KEEP + 1) == 0);
  out.buf.data[PS_SHM_KEEP] = 'z';
  ps_shm_out_trim(&out);
  CHECK(out.buf.data == NULL && out.buf.cap == 0);
  p = ps_shm_in_map(&in, PS_SHM_KEEP + 1);
  CHECK(p && p[PS_SHM_KEEP] == 0);   /* punched out: zero again */
  ps_shm_in_release(&in);
  ps_shm_out_release(&out);
  close(fd);
}

int main(void) {
  test_sealed();
  test_frames();
  printf("%d tests, %d failures\n", tests, failures);
  return failures != 0;
}
