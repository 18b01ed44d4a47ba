/*
 * bigalloc.c: large blocks from mmap on huge pages, a small warm cache of
 * freed blocks, and a wrapper of a lua_State's allocator that uses them
 * (so big Lua strings, e.g. a resolved 100 MiB object, land on warm or
 * huge-page memory too).
 *
 * Why: first touch of fresh 4 KiB pages is slow here (docs/performance.md:
 * 0.37 GB/s; ~3 GB/s on a quiet day), so a 100 MiB reply buffer costs tens
 * to hundreds of ms of page faults; with MADV_HUGEPAGE (THP mode
 * "madvise") it is ~10 GB/s or better. Blocks are rounded to 2 MiB so that
 * even a 1 MiB block gets one huge page, and up to CACHE_MAX bytes of
 * freed blocks stay mapped so that repeated transfers reuse warm memory
 * (a 100 MiB resolve: ~97 -> ~88 ms). The price: up to CACHE_MAX bytes
 * stay resident after a large transfer. One freed block larger than
 * that stays mapped too, lazily freed (MADV_FREE): the kernel reclaims
 * its pages when it needs memory.
 *
 * Medium blocks (PS_MED_MIN up to PS_BIG_MIN) are carved from 2 MiB
 * chunks on huge pages in MED_UNIT units, so that a 512 KiB resolve in a
 * fresh process does not fault 128 fresh 4 KiB pages (12 us each on these
 * VMs: 1.5 ms, several times what a 1 MiB block on one huge page costs)
 * and no size in between is slower than a larger one.
 *
 * The lua_State wrapper is never installed by the module on its own: a
 * state's allocator belongs to whoever made the state (a host may cap
 * memory with it). The proxystore binary installs it for its own state;
 * a module user opts in with ps.use_big_allocator().
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ps.h"
#include "bigalloc.h"

#define HUGE_SZ ((size_t)2 << 20)
#define HDR 64                          /* keeps data 64-byte aligned */
#define MAGIC 0x70734249u               /* "psBI" */
/* Blocks, not bytes: the collector frees a burst of resolved 1 MiB
 * strings (2 MiB blocks) at once; with 8 slots most of a burst was
 * unmapped and the next ones mapped fresh (a 1 MiB store put, resolve and
 * evict, N=400 in one process: 907-921 us an item; 719-836 with 64). The
 * price: after such a burst up to CACHE_MAX stays mapped where 8 slots of
 * 2 MiB kept 16 MiB. */
#define CACHE_SLOTS 64
#define CACHE_MAX ((size_t)128 << 20)   /* bytes of freed blocks kept */
#define CACHE_ONE CACHE_MAX

typedef struct big_hdr {
  size_t maplen;       /* whole mapping, header included */
  unsigned magic;
} big_hdr;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static void *cache_base[CACHE_SLOTS];
static size_t cache_len[CACHE_SLOTS];
static uint64_t cache_seq[CACHE_SLOTS];   /* when each was freed */
static uint64_t cache_clock;
static size_t cache_total;

/*
 * One freed block too large for the cache stays mapped, its pages lazily
 * freed (MADV_FREE): the kernel takes them back only when it needs the
 * memory, and until then the next block of about its size reuses them
 * without a fault. Guarded by cache_mu.
 */
static void *lazy_base;
static size_t lazy_len;

/* Guards the list of lua_State allocator wrappers (below). */
static pthread_mutex_t wraps_mu = PTHREAD_MUTEX_INITIALIZER;

/*
 * The prefetch thread allocates and frees reply buffers, so it may hold
 * cache_mu at the moment another thread forks (a pool starting workers);
 * the child, with no such thread, would then wait forever on its first
 * large allocation. So a fork waits until no thread holds the locks, and
 * both sides release them after (as prefetch.c does).
 */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void) {
  pthread_mutex_lock(&wraps_mu);
  pthread_mutex_lock(&cache_mu);
}

/* Both sides release the locks after a fork: the child's one thread is
 * the one that took them, so it may (re-initialising a held mutex is
 * undefined). */
static void after_fork(void) {
  pthread_mutex_unlock(&cache_mu);
  pthread_mutex_unlock(&wraps_mu);
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork, after_fork);
}

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
  pthread_once(&atfork_once, register_atfork);
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
  } else if (lazy_base && lazy_len >= len && lazy_len <= 2 * len) {
    best = lazy_base;
    /* Its header may have been reclaimed (it then reads as zeros). */
    ((big_hdr *)best)->maplen = lazy_len;
    ((big_hdr *)best)->magic = MAGIC;
    lazy_base = NULL;
    lazy_len = 0;
  }
  pthread_mutex_unlock(&cache_mu);
  return best;
}

/* Keeps a block too large for the cache as the lazy one (see lazy_base),
 * unmapping the one it replaces. */
static int lazy_put(void *base, size_t len) {
  /* Before it can be taken: a taker's bytes must not be freed under it. */
  if (madvise(base, len, MADV_FREE) != 0) return 0;
  pthread_mutex_lock(&cache_mu);
  void *old = lazy_base;
  size_t oldlen = lazy_len;
  lazy_base = base;
  lazy_len = len;
  pthread_mutex_unlock(&cache_mu);
  if (old) munmap(old, oldlen);
  return 1;
}

/*
 * Keeps a freed block, making room by dropping the blocks freed longest
 * ago: the cache follows the sizes in use now (blocks of sizes no longer
 * asked for would otherwise fill its slots, and every new block of the
 * current size would be fresh memory).
 */
static int cache_put(void *base, size_t len) {
  void *drop[CACHE_SLOTS];
  size_t droplen[CACHE_SLOTS], ndrop = 0;
  pthread_once(&atfork_once, register_atfork);
  if (len > CACHE_ONE) return lazy_put(base, len);
  pthread_mutex_lock(&cache_mu);
  size_t free_slot = CACHE_SLOTS;
  for (;;) {
    size_t oldest = CACHE_SLOTS;
    free_slot = CACHE_SLOTS;
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
      if (cache_base[i] == NULL) {
        if (free_slot == CACHE_SLOTS) free_slot = i;
      } else if (oldest == CACHE_SLOTS || cache_seq[i] < cache_seq[oldest]) {
        oldest = i;
      }
    }
    if (free_slot < CACHE_SLOTS && cache_total + len <= CACHE_MAX) break;
    drop[ndrop] = cache_base[oldest];
    droplen[ndrop++] = cache_len[oldest];
    cache_total -= cache_len[oldest];
    cache_base[oldest] = NULL;
    cache_len[oldest] = 0;
  }
  cache_base[free_slot] = base;
  cache_len[free_slot] = len;
  cache_seq[free_slot] = ++cache_clock;
  cache_total += len;
  pthread_mutex_unlock(&cache_mu);
  for (size_t i = 0; i < ndrop; i++) munmap(drop[i], droplen[i]);
  return 1;
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

size_t ps_big_size(void *p) {
  return hdr_of(p)->maplen - HDR;
}

void ps_big_free(void *p) {
  if (p == NULL) return;
  big_hdr *h = hdr_of(p);
  if (!cache_put(h, h->maplen)) munmap(h, h->maplen);
}

/* ---- medium blocks ---------------------------------------------------- */

/*
 * A chunk is 2 MiB on one huge page; its first unit holds this header
 * (the rest of that unit is unused), the other MED_UNITS - 1 units are
 * handed out in runs, first fit. A block's chunk is its address rounded
 * down to 2 MiB. Up to MED_KEEP empty chunks stay; the others go to the
 * big-block cache (or back to the system). Guarded by cache_mu.
 */
#define MED_UNIT ((size_t)16 << 10)
#define MED_UNITS (HUGE_SZ / MED_UNIT)
#define MED_KEEP 2

typedef struct med_chunk {
  uint64_t used[MED_UNITS / 64];   /* unit 0, the header, is always used */
  uint8_t len[MED_UNITS];          /* at a block's first unit: its units */
  struct med_chunk *next, *prev;
  size_t nfree;
} med_chunk;

static med_chunk *med_chunks;
static int med_empty;              /* chunks holding no block */

static int med_bit(const med_chunk *c, size_t i) {
  return (int)((c->used[i / 64] >> (i % 64)) & 1);
}

static void med_mark(med_chunk *c, size_t at, size_t k, int on) {
  for (size_t i = at; i < at + k; i++) {
    uint64_t m = (uint64_t)1 << (i % 64);
    if (on) c->used[i / 64] |= m;
    else c->used[i / 64] &= ~m;
  }
}

/* The first run of k free units, or 0 (unit 0 is the header). */
static size_t med_find(const med_chunk *c, size_t k) {
  size_t run = 0;
  for (size_t i = 1; i < MED_UNITS; i++) {
    if (med_bit(c, i)) run = 0;
    else if (++run == k) return i + 1 - k;
  }
  return 0;
}

/* Under cache_mu: a block of k units from the chunks there are, or NULL. */
static void *med_carve(size_t k) {
  for (med_chunk *c = med_chunks; c; c = c->next) {
    size_t at;
    if (c->nfree < k || (at = med_find(c, k)) == 0) continue;
    if (c->nfree == MED_UNITS - 1) med_empty--;
    med_mark(c, at, k, 1);
    c->len[at] = (uint8_t)k;
    c->nfree -= k;
    return (char *)c + at * MED_UNIT;
  }
  return NULL;
}

void *ps_med_alloc(size_t n) {
  size_t k = (n + MED_UNIT - 1) / MED_UNIT;
  if (n == 0 || k > MED_UNITS - 1) return NULL;
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&cache_mu);
  void *p = med_carve(k);
  pthread_mutex_unlock(&cache_mu);
  if (p) return p;
  /* A new chunk (outside the lock: cache_take takes it), warm when a
   * freed big block is there: its first 2 MiB, the rest unmapped. */
  char *base = cache_take(HUGE_SZ);
  if (base) {
    size_t len = ((big_hdr *)base)->maplen;
    if (len > HUGE_SZ) munmap(base + HUGE_SZ, len - HUGE_SZ);
  } else if ((base = map_aligned(HUGE_SZ)) == NULL) {
    return NULL;
  }
  med_chunk *c = (med_chunk *)base;
  memset(c, 0, sizeof *c);
  med_mark(c, 0, 1, 1);
  c->nfree = MED_UNITS - 1;
  pthread_mutex_lock(&cache_mu);
  c->next = med_chunks;
  if (med_chunks) med_chunks->prev = c;
  med_chunks = c;
  med_empty++;
  p = med_carve(k);
  pthread_mutex_unlock(&cache_mu);
  return p;
}

void ps_med_free(void *p) {
  if (p == NULL) return;
  med_chunk *c = (med_chunk *)((uintptr_t)p & ~(uintptr_t)(HUGE_SZ - 1));
  size_t at = (size_t)((char *)p - (char *)c) / MED_UNIT;
  pthread_mutex_lock(&cache_mu);
  size_t k = c->len[at];
  med_mark(c, at, k, 0);
  c->len[at] = 0;
  c->nfree += k;
  int release = 0;
  if (c->nfree == MED_UNITS - 1) {
    if (med_empty < MED_KEEP) {
      med_empty++;
    } else {
      if (c->prev) c->prev->next = c->next;
      else med_chunks = c->next;
      if (c->next) c->next->prev = c->prev;
      release = 1;
    }
  }
  pthread_mutex_unlock(&cache_mu);
  if (release) {
    big_hdr *h = (big_hdr *)c;
    h->maplen = HUGE_SZ;
    h->magic = MAGIC;
    if (!cache_put(h, HUGE_SZ)) munmap(h, HUGE_SZ);
  }
}

/* ---- blobs ------------------------------------------------------------ */

/* Big and medium blobs keep their block in opaque: a placed blob's data
 * (ps_blob_alloc_lead) does not start at its block. */
static void blob_big_release(ps_blob *b) {
  ps_big_free(b->opaque);
}

static void blob_med_release(ps_blob *b) {
  ps_med_free(b->opaque);
}

void ps_blob_take_buf(ps_blob *out, ps_buf *b) {
  int big = b->cap >= PS_BIG_MIN;
  out->data = b->data;
  out->len = b->len;
  out->opaque = big ? b->data : NULL;   /* the block, as blob_big_release frees */
  out->release = big ? blob_big_release : NULL;
  b->data = NULL;   /* (no ps_buf_init: bigalloc.c stands alone) */
  b->len = b->cap = 0;
}

int ps_blob_alloc(ps_blob *b, size_t n) {
  b->len = n;
  b->opaque = NULL;
  b->data = NULL;
  if (n >= PS_BIG_MIN) {
    b->data = ps_big_alloc(n);
    b->release = blob_big_release;
  } else if (n >= PS_MED_MIN && (b->data = ps_med_alloc(n)) != NULL) {
    b->release = blob_med_release;
  } else {
    b->data = malloc(n ? n : 1);
    b->release = NULL;
  }
  if (b->data == NULL) {
    b->release = NULL;
    b->len = 0;
    return -1;
  }
  if (b->release) b->opaque = b->data;
  return 0;
}

/*
 * Where a Lua long string's bytes start in its allocation (the size of
 * Lua's string header), learnt by ps_alloc_install from a string it makes;
 * 0 until then. The same for every state: there is one Lua in a process.
 */
static atomic_size_t str_off;

int ps_blob_alloc_lead(ps_blob *b, size_t n, size_t lead) {
  size_t off = atomic_load_explicit(&str_off, memory_order_relaxed);
  if (off == 0 || lead == 0 || lead > off || lead > n || n > SIZE_MAX / 2)
    return ps_blob_alloc(b, n);
  /* The block a string of the n - lead bytes after the lead would take. */
  size_t m = off - lead + n + 1;
  if (m >= PS_ADOPT_MIN && m < PS_MED_MIN &&
      (b->data = ps_med_alloc(m)) != NULL) {
    /* Smaller than other medium blocks: such a string, made without a
     * copy, takes this one block (on a huge page) where a copy would take
     * the blob and the string, both fresh 4 KiB pages in a new process. */
    b->release = blob_med_release;
    b->opaque = b->data;
  } else if (ps_blob_alloc(b, m) != 0) {
    return -1;
  }
  if (b->release == NULL) {          /* from malloc: nothing to hand over */
    b->len = n;
    return 0;
  }
  b->data += off - lead;
  b->len = n;
  return 0;
}

/* ---- the lua_State allocator wrapper ---------------------------------- */

/*
 * Pointer set of the big and medium blocks this wrapper handed out (which
 * is which follows from the size Lua gives back), so that blocks the
 * original allocator made (before installation, or small ones) go back to
 * it. Open addressing, linear probing, tombstones.
 */
#define TOMB ((void *)1)

typedef struct lwrap {
  lua_Alloc orig;
  void *orig_ud;
  void **slots;
  size_t cap, used;      /* used counts live entries and tombstones */
  struct lwrap *next;
  /*
   * Armed for the very next allocation of the state: a block offered as
   * the string being made (ps_blob_push_string), or the probe that learns
   * str_off (ps_alloc_install). Either way disarmed by that allocation.
   */
  int armed;
  ps_blob *offer;        /* its block becomes the string, if sizes agree */
  size_t offer_size;
  void *probe_block;     /* the probe: the string block allocated, */
  size_t probe_size;     /* and its size */
} lwrap;

/*
 * Wrappers are never freed: a state's allocator is called until the very
 * end of lua_close, after any finalizer could run. Keeping them on a
 * global list keeps them reachable (no LeakSanitizer report).
 */
static lwrap *wraps;      /* guarded by wraps_mu */

static size_t ptr_hash(void *p, size_t cap) {
  uintptr_t x = (uintptr_t)p >> 6;
  x *= (uintptr_t)0x9E3779B97F4A7C15ull;
  return (size_t)(x >> 7) & (cap - 1);
}

static size_t set_find(lwrap *w, void *p) {
  if (w->cap == 0) return SIZE_MAX;
  for (size_t i = ptr_hash(p, w->cap), n = 0; n < w->cap;
       i = (i + 1) & (w->cap - 1), n++) {
    if (w->slots[i] == p) return i;
    if (w->slots[i] == NULL) return SIZE_MAX;
  }
  return SIZE_MAX;
}

static int set_add(lwrap *w, void *p) {
  if ((w->used + 1) * 2 > w->cap) {
    size_t ncap = w->cap ? w->cap * 2 : 64;
    void **ns = calloc(ncap, sizeof *ns);
    if (ns == NULL) return -1;
    void **old = w->slots;
    size_t ocap = w->cap;
    w->slots = ns;
    w->cap = ncap;
    w->used = 0;
    for (size_t i = 0; i < ocap; i++)
      if (old[i] && old[i] != TOMB) {
        size_t j = ptr_hash(old[i], ncap);
        while (ns[j]) j = (j + 1) & (ncap - 1);
        ns[j] = old[i];
        w->used++;
      }
    free(old);
  }
  size_t j = ptr_hash(p, w->cap);
  while (w->slots[j] && w->slots[j] != TOMB) j = (j + 1) & (w->cap - 1);
  if (w->slots[j] == NULL) w->used++;
  w->slots[j] = p;
  return 0;
}

static void set_del(lwrap *w, size_t i) {
  w->slots[i] = TOMB;
}

enum { K_ORIG, K_MED, K_BIG };   /* who made a block of a wrapped state */

static int kind_for(size_t n) {
  return n >= PS_BIG_MIN ? K_BIG : n >= PS_MED_MIN ? K_MED : K_ORIG;
}

static void kind_free(int kind, void *p) {
  if (kind == K_BIG) ps_big_free(p);
  else ps_med_free(p);
}

/* A tracked block of ours, or NULL. */
static void *kind_alloc(lwrap *w, int kind, size_t n) {
  void *q = kind == K_BIG ? ps_big_alloc(n) : ps_med_alloc(n);
  if (q && set_add(w, q) != 0) {
    kind_free(kind, q);
    q = NULL;
  }
  return q;
}

static size_t med_units(size_t n) {
  return (n + MED_UNIT - 1) / MED_UNIT;
}

static void *wrap_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/*
 * The armed allocation (ptr is NULL, nsize > 0): an offered block is taken
 * when Lua asks for a string of exactly its size (then the blob no longer
 * owns it: the string does); the probe notes the block of a string.
 * Anything else disarms without taking.
 */
static void *armed_alloc(lwrap *w, size_t osize, size_t nsize) {
  w->armed = 0;
  ps_blob *b = w->offer;
  w->offer = NULL;
  if (b) {
    if (osize == LUA_TSTRING && nsize == w->offer_size &&
        set_add(w, b->opaque) == 0) {
      void *q = b->opaque;
      b->data = NULL;
      b->len = 0;
      b->release = NULL;
      b->opaque = NULL;
      return q;
    }
    return wrap_alloc(w, NULL, osize, nsize);
  }
  void *q = wrap_alloc(w, NULL, osize, nsize);
  if (osize == LUA_TSTRING) {
    w->probe_block = q;
    w->probe_size = nsize;
  }
  return q;
}

static void *wrap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  lwrap *w = ud;
  if (w->armed && ptr == NULL && nsize > 0) return armed_alloc(w, osize, nsize);
  /* With ptr == NULL, osize is a type tag, never a size. */
  size_t at = (ptr && osize >= PS_ADOPT_MIN) ? set_find(w, ptr) : SIZE_MAX;
  int okind = at == SIZE_MAX ? K_ORIG : osize >= PS_BIG_MIN ? K_BIG : K_MED;
  if (nsize == 0) {
    if (okind == K_ORIG) return w->orig(w->orig_ud, ptr, osize, 0);
    set_del(w, at);
    kind_free(okind, ptr);
    return NULL;
  }
  int nkind = kind_for(nsize);
  if (okind == K_ORIG && nkind == K_ORIG)
    return w->orig(w->orig_ud, ptr, osize, nsize);
  if (okind == K_MED && nkind == K_MED && med_units(osize) == med_units(nsize))
    return ptr;
  if (okind == K_BIG && nkind == K_BIG) {   /* mremap: no copy */
    void *q = ps_big_realloc(ptr, nsize);
    if (q && q != ptr) {
      set_del(w, at);
      if (set_add(w, q) != 0) {     /* cannot track: hand back a copy */
        void *c = w->orig(w->orig_ud, NULL, 0, nsize);
        if (c) memcpy(c, q, osize < nsize ? osize : nsize);
        ps_big_free(q);
        return c;
      }
    }
    return q;
  }
  /* Another kind or size class: a new block and a copy. When ours cannot
   * be had, the original allocator's will do. */
  void *q = nkind == K_ORIG ? NULL : kind_alloc(w, nkind, nsize);
  if (q == NULL) {
    if (okind == K_ORIG) return w->orig(w->orig_ud, ptr, osize, nsize);
    if ((q = w->orig(w->orig_ud, NULL, 0, nsize)) == NULL) return NULL;
  }
  if (ptr) {
    memcpy(q, ptr, osize < nsize ? osize : nsize);
    if (okind == K_ORIG) {
      w->orig(w->orig_ud, ptr, osize, 0);
    } else {
      set_del(w, at);
      kind_free(okind, ptr);
    }
  }
  return q;
}

/* dl_iterate_phdr callback: 1 when the address in data lies in the main
 * program (the first object, which has no name), 2 in another object. */
static int object_of(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  uintptr_t a = (uintptr_t)data;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type == PT_LOAD && a >= lo && a - lo < ph->p_memsz)
      return info->dlpi_name[0] == '\0' ? 1 : 2;
  }
  return 0;
}

/*
 * lua_close unloads C modules (the _CLIBS finalizer) before it frees the
 * remaining objects through the allocator: wrap_alloc must outlive that,
 * so the library that holds it is made undeletable. Linked into a program
 * (the proxystore binary), there is nothing to pin: dlopen could not even
 * name it, and a program is never unloaded. Returns 0 on success.
 */
int ps_pin_library(void) {
  if (dl_iterate_phdr(object_of, (void *)wrap_alloc) == 1) return 0;
  Dl_info info;
  if (dladdr((void *)wrap_alloc, &info) == 0 || info.dli_fname == NULL)
    return -1;
  void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
  return h ? 0 : -1;     /* the handle is deliberately never closed */
}

/*
 * Learns str_off from one long string made through the wrapper (64 bytes:
 * longer than any short string, which Lua may find already interned).
 */
static void probe_str_off(lua_State *L, lwrap *w) {
  char s[64];
  memset(s, '\x5a', sizeof s);
  w->probe_block = NULL;
  w->armed = 1;
  lua_pushlstring(L, s, sizeof s);
  w->armed = 0;
  const char *got = lua_tostring(L, -1);
  if (w->probe_block && got > (char *)w->probe_block) {
    size_t off = (size_t)(got - (char *)w->probe_block);
    if (off < HDR && off + sizeof s + 1 == w->probe_size)
      atomic_store_explicit(&str_off, off, memory_order_relaxed);
  }
  lua_pop(L, 1);
}

int ps_alloc_install(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f == wrap_alloc) return 0;
  if (ps_pin_library() != 0) return -1;  /* keep the plain allocator */
  lwrap *w = calloc(1, sizeof *w);
  if (w == NULL) return -1;           /* keep the plain allocator */
  w->orig = f;
  w->orig_ud = ud;
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&wraps_mu);
  w->next = wraps;
  wraps = w;
  pthread_mutex_unlock(&wraps_mu);
  lua_setallocf(L, wrap_alloc, w);
  probe_str_off(L, w);
  return 0;
}

/*
 * Pushes the n bytes at s as a Lua string. When they lie at the end of
 * blob b, placed by ps_blob_alloc_lead, and L has the wrapper, the string
 * is made in b's block itself: Lua writes its header over the bytes before
 * s and copies the n bytes onto themselves (glibc's memcpy returns at once
 * when source and destination are the same), and b is left empty. Else an
 * ordinary copy. Either way b still needs ps_blob_release.
 */
void ps_blob_push_string(lua_State *L, ps_blob *b, const char *s, size_t n) {
  void *ud;
  size_t off = atomic_load_explicit(&str_off, memory_order_relaxed);
  if (off && lua_getallocf(L, &ud) == wrap_alloc &&
      (b->release == blob_big_release || b->release == blob_med_release) &&
      s == (const char *)b->opaque + off && s + n == b->data + b->len) {
    lwrap *w = ud;
    w->offer = b;
    w->offer_size = off + n + 1;
    w->armed = 1;
  }
  lua_pushlstring(L, s, n);
}
