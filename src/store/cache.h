/*
 * cache.h: the per-store LRU of deserialized objects.
 *
 * The C side keeps order and versions; the values themselves live in a Lua
 * table owned by the store (values[key]), so the collector sees them.
 */
#ifndef PS_CACHE_H
#define PS_CACHE_H

#include <stddef.h>
#include "backend.h"

/*
 * Default bound on the stored bytes of the objects a cache keeps. Without
 * one, 16 objects of 10 MiB pin 160 MiB in every process that resolved
 * them (each pool worker), and each new one takes fresh memory where an
 * old one's could have been reused.
 */
#define PS_CACHE_BYTES ((long long)32 << 20)

typedef struct ps_cache_node {
  struct ps_cache_node *prev, *next;   /* LRU order: head is most recent */
  struct ps_cache_node *chain;         /* hash bucket chain */
  size_t hash;
  ps_version version;
  int has_version;
  size_t bytes;                        /* its stored size */
  size_t keylen;
  char key[];
} ps_cache_node;

typedef struct ps_cache {
  ps_cache_node **buckets;
  size_t nbuckets;
  size_t count;
  size_t capacity;    /* 0: caching off */
  size_t bytes;       /* stored sizes of the objects kept */
  size_t max_bytes;   /* more are dropped, least recent first, but one */
  ps_cache_node head; /* sentinel */
} ps_cache;

void ps_cache_init(ps_cache *c, size_t capacity, size_t max_bytes);
void ps_cache_free(ps_cache *c);
/* The node for key, moved to the front; NULL when absent. */
ps_cache_node *ps_cache_find(ps_cache *c, const char *key, size_t len);
/* Inserts or refreshes key, an object of bytes stored bytes; NULL when
 * out of memory or caching is off. */
ps_cache_node *ps_cache_put(ps_cache *c, const char *key, size_t len,
                            size_t bytes);
/* The least recently used node when over capacity, or over max_bytes with
 * more than one node, else NULL (unlinked: the caller drops its value,
 * then frees it with ps_cache_release). */
ps_cache_node *ps_cache_pop_excess(ps_cache *c);
void ps_cache_remove(ps_cache *c, const char *key, size_t len);
void ps_cache_release(ps_cache_node *n);

#endif
