/*
 * bigalloc.c: large blocks from mmap on huge pages and a small warm cache
 * of freed blocks, for backend reply buffers (ps_blob). Lua strings get
 * huge pages from alloc.c's allocator wrapper instead.
 *
 * Why: first touch of fresh 4 KiB pages is slow here (DESIGN.md measured
 * 0.37 GB/s; ~3 GB/s on a quiet day), so a 100 MiB reply buffer costs tens
 * to hundreds of ms of page faults; with MADV_HUGEPAGE (THP mode
 * "madvise") it is ~10 GB/s or better. Blocks are rounded to 2 MiB so that
 * even a 1 MiB block gets one huge page, and up to CACHE_MAX bytes of
 * freed blocks stay mapped so that repeated transfers reuse warm memory
 * (a 100 MiB resolve: ~97 -> ~88 ms). The price: up to CACHE_MAX bytes
 * stay resident after a large transfer.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bigalloc.h"

#define HUGE_SZ ((size_t)2 << 20)
#define HDR 64                          /* keeps data 64-byte aligned */
#define MAGIC 0x70734249u               /* "psBI" */
#define CACHE_SLOTS 8
#define CACHE_MAX ((size_t)128 << 20)   /* bytes of freed blocks kept */
#define CACHE_ONE CACHE_MAX

typedef struct big_hdr {
  size_t maplen;       /* whole mapping, header included */
  unsigned magic;
} big_hdr;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static void *cache_base[CACHE_SLOTS];
static size_t cache_len[CACHE_SLOTS];
static size_t cache_total;

static size_t round_up(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

static void *map_aligned(size_t len) {
  /* Over-map by 2 MiB and trim so the block starts on a huge page. */
  size_t want = len + HUGE_SZ;
  char *p = mmap(NULL, want, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  uintptr_t start = round_up((uintptr_t)p, HUGE_SZ);
  size_t head = start - (uintptr_t)p;
  if (head) munmap(p, head);
  size_t tail = want - head - len;
  if (tail) munmap((char *)start + len, tail);
  madvise((void *)start, len, MADV_HUGEPAGE);
  return (void *)start;
}

static void *cache_take(size_t len) {
  void *best = NULL;
  size_t bi = 0;
  pthread_mutex_lock(&cache_mu);
  for (size_t i = 0; i < CACHE_SLOTS; i++) {
    size_t l = cache_len[i];
    if (cache_base[i] && l >= len && l <= 2 * len &&
        (best == NULL || l < cache_len[bi])) {
      best = cache_base[i];
      bi = i;
    }
  }
  if (best) {
    cache_total -= cache_len[bi];
    cache_base[bi] = NULL;
    cache_len[bi] = 0;
  }
  pthread_mutex_unlock(&cache_mu);
  return best;
}

static int cache_put(void *base, size_t len) {
  int kept = 0;
  if (len > CACHE_ONE) return 0;
  pthread_mutex_lock(&cache_mu);
  if (cache_total + len <= CACHE_MAX) {
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
      if (cache_base[i] == NULL) {
        cache_base[i] = base;
        cache_len[i] = len;
        cache_total += len;
        kept = 1;
        break;
      }
    }
  }
  pthread_mutex_unlock(&cache_mu);
  return kept;
}

void *ps_big_alloc(size_t n) {
  if (n > SIZE_MAX - HDR - HUGE_SZ * 2) return NULL;
  size_t len = round_up(n + HDR, HUGE_SZ);
  big_hdr *h = cache_take(len);
  if (h == NULL) {
    h = map_aligned(len);
    if (h == NULL) return NULL;
    h->maplen = len;
    h->magic = MAGIC;
  }
  return (char *)h + HDR;
}

static big_hdr *hdr_of(void *p) {
  return (big_hdr *)((char *)p - HDR);
}

void *ps_big_realloc(void *p, size_t n) {
  if (p == NULL) return ps_big_alloc(n);
  big_hdr *h = hdr_of(p);
  if (n > SIZE_MAX - HDR - HUGE_SZ * 2) return NULL;
  size_t len = round_up(n + HDR, HUGE_SZ);
  if (len == h->maplen) return p;
  void *q = mremap(h, h->maplen, len, MREMAP_MAYMOVE);
  if (q == MAP_FAILED) return NULL;
  h = q;
  h->maplen = len;
  return (char *)h + HDR;
}

void ps_big_free(void *p) {
  if (p == NULL) return;
  big_hdr *h = hdr_of(p);
  if (!cache_put(h, h->maplen)) munmap(h, h->maplen);
}

static void blob_big_release(ps_blob *b) {
  ps_big_free(b->data);
}

int ps_blob_alloc(ps_blob *b, size_t n) {
  b->len = n;
  b->opaque = NULL;
  if (n >= PS_BIG_MIN) {
    b->data = ps_big_alloc(n);
    b->release = blob_big_release;
  } else {
    b->data = malloc(n ? n : 1);
    b->release = NULL;
  }
  if (b->data == NULL) {
    b->release = NULL;
    b->len = 0;
    return -1;
  }
  return 0;
}
