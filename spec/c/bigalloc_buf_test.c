/*
 * bigalloc_buf_test.c: growable buffers (src/core/buf.c) of 1 MiB and more
 * live in big blocks, so a process that serializes large objects over and
 * over (a pool worker setting 10 MiB futures) writes into warm memory
 * from its second time on, not into fresh 4 KiB pages. Built alone: it
 * includes bigalloc.c and buf.c to see the block cache. Prints "ok N -
 * what" / "not ok N - what"; exit status 1 on failure.
 */
#include "../../src/core/bigalloc.c"
#include "../../src/core/buf.c"

#include <stdio.h>

static int failures, count;

static void check(int cond, const char *what) {
  count++;
  printf("%sok %d - %s\n", cond ? "" : "not ", count, what);
  if (!cond) failures++;
}

#define MiB ((size_t)1 << 20)

static int is_big(const void *p) {
  const big_hdr *h = (const big_hdr *)((const char *)p - HDR);
  return ((uintptr_t)h % HUGE_SZ) == 0 && h->magic == MAGIC;
}

/* Grows b by appends of step bytes up to n, each byte its offset's low 8 bits. */
static int fill(ps_buf *b, size_t n, size_t step) {
  char chunk[4096];
  while (b->len < n) {
    size_t k = n - b->len < step ? n - b->len : step;
    if (k > sizeof chunk) k = sizeof chunk;
    for (size_t i = 0; i < k; i++) chunk[i] = (char)((b->len + i) & 0xff);
    if (ps_buf_append(b, chunk, k) != 0) return -1;
  }
  return 0;
}

static int holds(const ps_buf *b) {
  for (size_t i = 0; i < b->len; i += 4093)
    if (b->data[i] != (char)(i & 0xff)) return 0;
  return b->data[b->len - 1] == (char)((b->len - 1) & 0xff);
}

static void test_growth(void) {
  ps_buf b;
  ps_buf_init(&b);
  check(fill(&b, 100 << 10, 1000) == 0 && !is_big(b.data) && b.cap < PS_BIG_MIN,
        "a small buffer stays with malloc");
  check(fill(&b, 10 * MiB + 7, 4096) == 0, "grows by appends to 10 MiB");
  check(is_big(b.data) && b.cap >= b.len, "into a big block");
  check(holds(&b), "keeping every byte across the move and the mremaps");
  check(b.cap == ps_big_size(b.data), "its capacity is the whole block");
  size_t before = cache_total;
  void *old = b.data;
  ps_buf_free(&b);
  check(b.data == NULL && b.cap == 0 && b.len == 0, "free empties it");
  check(cache_total > before, "its block goes to the warm cache");
  ps_buf c;
  ps_buf_init(&c);
  check(ps_buf_reserve(&c, 10 * MiB) == 0 && c.data == old,
        "the next large buffer reuses that block");
  check(cache_total == before, "taken out of the cache");
  c.len = 0;
  check(fill(&c, 3 * MiB, 4096) == 0 && holds(&c), "and works");
  ps_buf_free(&c);
  ps_buf d;
  ps_buf_init(&d);
  check(ps_buf_reserve(&d, 2 * MiB) == 0 && is_big(d.data),
        "one reserve straight past 1 MiB is big too");
  ps_buf_free(&d);
}

/* As ps_blob_release (store/backends.c, not built in here) does. */
static void release(ps_blob *b) {
  if (b->release) b->release(b);
  else free(b->data);
  b->data = NULL;
}

static void test_blob_move(void) {
  ps_buf b;
  ps_buf_init(&b);
  ps_blob out;
  check(fill(&b, 4 * MiB, 4096) == 0, "a 4 MiB buffer");
  char *data = b.data;
  ps_blob_take_buf(&out, &b);
  check(out.data == data && out.len == 4 * MiB && out.release == blob_big_release,
        "moves into a blob with the big release");
  check(b.data == NULL && b.len == 0 && b.cap == 0, "leaving the buffer empty");
  size_t before = cache_total;
  release(&out);
  check(out.data == NULL, "and the blob releases it");
  check(cache_total > before, "its block to the warm cache");
  char *again = ps_big_alloc(4 * MiB);
  check(again == data, "where the next big block comes from");
  ps_big_free(again);
  check(fill(&b, 1000, 100) == 0, "a small buffer");
  ps_blob_take_buf(&out, &b);
  check(out.release == NULL && out.len == 1000, "moves with free as its release");
  release(&out);
}

int main(void) {
  test_growth();
  test_blob_move();
  printf("%d tests, %d failures\n", count, failures);
  return failures != 0;
}
