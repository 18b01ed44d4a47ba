/*
 * bigalloc.c: large blocks from mmap on huge pages, a small warm cache of
 * freed blocks, and a wrapper of a lua_State's allocator that uses them
 * (so big Lua strings, e.g. a resolved 100 MiB object, land on warm or
 * huge-page memory too).
 *
 * Why: first touch of fresh 4 KiB pages is slow here (docs/performance.md
 * measured 0.37 GB/s; ~3 GB/s on a quiet day), so a 100 MiB reply buffer costs tens
 * to hundreds of ms of page faults; with MADV_HUGEPAGE (THP mode
 * "madvise") it is ~10 GB/s or better. Blocks are rounded to 2 MiB so that
 * even a 1 MiB block gets one huge page, and up to CACHE_MAX bytes of
 * freed blocks stay mapped so that repeated transfers reuse warm memory
 * (a 100 MiB resolve: ~97 -> ~88 ms). The price: up to CACHE_MAX bytes
 * stay resident after a large transfer.
 *
 * The lua_State wrapper is never installed by the module on its own: a
 * state's allocator belongs to whoever made the state (a host may cap
 * memory with it). The proxystore binary installs it for its own state;
 * a module user opts in with ps.use_big_allocator().
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ps.h"
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
  }
  pthread_mutex_unlock(&cache_mu);
  return best;
}

static int cache_put(void *base, size_t len) {
  int kept = 0;
  if (len > CACHE_ONE) return 0;
  pthread_once(&atfork_once, register_atfork);
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

/* ---- the lua_State allocator wrapper ---------------------------------- */

/*
 * Pointer set of the big blocks this wrapper handed out, so that blocks
 * the original allocator made (before installation, or small ones) go
 * back to it. Open addressing, linear probing, tombstones.
 */
#define TOMB ((void *)1)

typedef struct lwrap {
  lua_Alloc orig;
  void *orig_ud;
  void **slots;
  size_t cap, used;      /* used counts live entries and tombstones */
  struct lwrap *next;
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

static void *wrap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  lwrap *w = ud;
  /* With ptr == NULL, osize is a type tag, never a size. */
  size_t at = (ptr && osize >= PS_BIG_MIN) ? set_find(w, ptr) : SIZE_MAX;
  int ours = at != SIZE_MAX;
  if (nsize == 0) {
    if (ours) {
      set_del(w, at);
      ps_big_free(ptr);
      return NULL;
    }
    return w->orig(w->orig_ud, ptr, osize, 0);
  }
  if (nsize >= PS_BIG_MIN) {
    if (ours) {
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
    void *q = ps_big_alloc(nsize);
    if (q && set_add(w, q) != 0) {
      ps_big_free(q);
      q = NULL;
    }
    if (q == NULL) return w->orig(w->orig_ud, ptr, osize, nsize);
    if (ptr) {
      memcpy(q, ptr, osize < nsize ? osize : nsize);
      w->orig(w->orig_ud, ptr, osize, 0);
    }
    return q;
  }
  if (ours) {                         /* shrinking below the threshold */
    void *q = w->orig(w->orig_ud, NULL, 0, nsize);
    if (q == NULL) return NULL;
    memcpy(q, ptr, nsize);
    set_del(w, at);
    ps_big_free(ptr);
    return q;
  }
  return w->orig(w->orig_ud, ptr, osize, nsize);
}

/* dl_iterate_phdr calls back for the main program first: does it hold
 * the address in *data? */
static int in_first_object(struct dl_phdr_info *info, size_t size,
                           void *data) {
  (void)size;
  uintptr_t *addr = data;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type == PT_LOAD && *addr >= lo && *addr < lo + ph->p_memsz)
      *addr = 0;
  }
  return 1;
}

/*
 * lua_close unloads C modules (the _CLIBS finalizer) before it frees the
 * remaining objects through the allocator: wrap_alloc must outlive that,
 * so the library that holds it is made undeletable. Linked into a program
 * (the proxystore binary) it is never unloaded. Returns 0 on success.
 */
int ps_pin_library(void) {
  uintptr_t addr = (uintptr_t)wrap_alloc;
  dl_iterate_phdr(in_first_object, &addr);
  if (addr == 0) return 0;
  Dl_info info;
  if (dladdr((void *)wrap_alloc, &info) == 0 || info.dli_fname == NULL)
    return -1;
  void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
  return h ? 0 : -1;     /* the handle is deliberately never closed */
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
  return 0;
}
