/*
 * bigalloc.h: large blocks on transparent huge pages.
 *
 * Fresh 4 KiB pages cost about 11 us each to fault in on these machines;
 * with madvise(MADV_HUGEPAGE) a block is ~25x cheaper to touch. Large
 * backend reply buffers therefore come from mmap, and a few freed blocks
 * are kept warm for reuse; medium ones are carved from huge pages.
 * Thread-safe (prefetch threads allocate reply buffers).
 */
#ifndef PS_BIGALLOC_H
#define PS_BIGALLOC_H

#include <stddef.h>

#include "backend.h"

/* Blocks of at least this many bytes go to mmap. */
#define PS_BIG_MIN ((size_t)1 << 20)
/* From here up to PS_BIG_MIN: medium blocks, carved from huge pages. */
#define PS_MED_MIN ((size_t)64 << 10)
/* A string made in its read buffer (ps_blob_alloc_lead) is a medium
 * block from this size on. */
#define PS_ADOPT_MIN ((size_t)32 << 10)

/* A block of at least n bytes from mmap (huge pages advised), or NULL. */
void *ps_big_alloc(size_t n);
/* Resizes a ps_big_alloc block (mremap: no copy); NULL on failure. */
void *ps_big_realloc(void *p, size_t n);
void ps_big_free(void *p);
/* The bytes a ps_big_alloc block holds (at least what was asked). */
size_t ps_big_size(void *p);
/* A medium block of n bytes (n < PS_BIG_MIN), or NULL. Thread-safe. */
void *ps_med_alloc(size_t n);
void ps_med_free(void *p);

/*
 * Fills b with a buffer of exactly n usable bytes: malloc for small n,
 * ps_big_alloc for large, with the matching release. Returns 0 or -1.
 */
int ps_blob_alloc(ps_blob *b, size_t n);

/* Moves the bytes of b (a malloc'ed or big buffer, no grow hook) into
   out, with the matching release; b is left empty. */
struct ps_buf;
void ps_blob_take_buf(ps_blob *out, struct ps_buf *b);

/*
 * As ps_blob_alloc, but placed so that the bytes from data + lead to the
 * end sit where a Lua string of them would sit in the same block: a state
 * with the wrapper below then makes that string in the block itself, with
 * no copy (ps_blob_push_string). Plain ps_blob_alloc until a wrapper has
 * been installed in the process.
 */
int ps_blob_alloc_lead(ps_blob *b, size_t n, size_t lead);

/*
 * Makes the library that holds this code undeletable (dlclose leaves it
 * mapped); a no-op linked into a program. 0, or -1 when it cannot.
 */
int ps_pin_library(void);

#ifdef LUA_VERSION_NUM
/*
 * Wraps the allocator of L so that blocks of PS_BIG_MIN bytes or more use
 * ps_big_alloc, and from PS_MED_MIN medium blocks; blocks from before the
 * call stay with the old allocator. Idempotent; 0, or -1 when it cannot
 * (L keeps its allocator). Only the owner of L may decide this: the
 * proxystore binary for its own state, or a user through
 * ps.use_big_allocator(); the module never does it alone.
 * Only the thread running L may use it (as with any lua_State).
 */
int ps_alloc_install(lua_State *L);

/*
 * Pushes the n bytes at s, which lie in b, as a Lua string: without a copy
 * when they end b, b was placed for them (ps_blob_alloc_lead) and L has
 * the wrapper (the string then owns b's block and b is left empty); else
 * by lua_pushlstring. Release b afterwards as always.
 */
void ps_blob_push_string(lua_State *L, ps_blob *b, const char *s, size_t n);
#endif

#endif
