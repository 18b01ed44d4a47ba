/* cache.c: LRU order and versions for a store's cache (see cache.h). */
#include <stdlib.h>
#include <string.h>

#include "cache.h"

static size_t hash_key(const char *k, size_t len) {
  size_t h = 1469598103934665603ULL;   /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)k[i]) * 1099511628211ULL;
  return h;
}

static void unlink_lru(ps_cache_node *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
}

static void link_front(ps_cache *c, ps_cache_node *n) {
  n->next = c->head.next;
  n->prev = &c->head;
  c->head.next->prev = n;
  c->head.next = n;
}

void ps_cache_init(ps_cache *c, size_t capacity, size_t max_bytes) {
  memset(c, 0, sizeof *c);
  c->capacity = capacity;
  c->max_bytes = max_bytes;
  c->head.next = c->head.prev = &c->head;
}

void ps_cache_free(ps_cache *c) {
  ps_cache_node *n = c->head.next;
  while (n && n != &c->head) {
    ps_cache_node *next = n->next;
    free(n);
    n = next;
  }
  free(c->buckets);
  ps_cache_init(c, c->capacity, c->max_bytes);
}

static ps_cache_node **slot_of(ps_cache *c, const char *key, size_t len,
                               size_t h) {
  ps_cache_node **s = &c->buckets[h & (c->nbuckets - 1)];
  while (*s && !((*s)->hash == h && (*s)->keylen == len &&
                 memcmp((*s)->key, key, len) == 0))
    s = &(*s)->chain;
  return s;
}

ps_cache_node *ps_cache_find(ps_cache *c, const char *key, size_t len) {
  if (c->count == 0) return NULL;
  ps_cache_node *n = *slot_of(c, key, len, hash_key(key, len));
  if (n) {
    unlink_lru(n);
    link_front(c, n);
  }
  return n;
}

static int grow(ps_cache *c) {
  size_t nb = c->nbuckets ? c->nbuckets * 2 : 16;
  ps_cache_node **b = calloc(nb, sizeof *b);
  if (b == NULL) return -1;
  for (size_t i = 0; i < c->nbuckets; i++) {
    ps_cache_node *n = c->buckets[i];
    while (n) {
      ps_cache_node *next = n->chain;
      n->chain = b[n->hash & (nb - 1)];
      b[n->hash & (nb - 1)] = n;
      n = next;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = nb;
  return 0;
}

ps_cache_node *ps_cache_put(ps_cache *c, const char *key, size_t len,
                            size_t bytes) {
  if (c->capacity == 0) return NULL;
  ps_cache_node *n = ps_cache_find(c, key, len);
  if (n) {
    n->has_version = 0;
    c->bytes = c->bytes - n->bytes + bytes;
    n->bytes = bytes;
    return n;
  }
  if (c->count + 1 > c->nbuckets && grow(c) != 0) return NULL;
  n = malloc(sizeof *n + len);
  if (n == NULL) return NULL;
  memset(n, 0, sizeof *n);
  memcpy(n->key, key, len);
  n->keylen = len;
  n->bytes = bytes;
  c->bytes += bytes;
  n->hash = hash_key(key, len);
  ps_cache_node **s = &c->buckets[n->hash & (c->nbuckets - 1)];
  n->chain = *s;
  *s = n;
  link_front(c, n);
  c->count++;
  return n;
}

static void detach(ps_cache *c, ps_cache_node *n) {
  ps_cache_node **s = slot_of(c, n->key, n->keylen, n->hash);
  *s = n->chain;
  unlink_lru(n);
  c->count--;
  c->bytes -= n->bytes;
}

ps_cache_node *ps_cache_pop_excess(ps_cache *c) {
  if (c->count <= c->capacity && (c->bytes <= c->max_bytes || c->count < 2))
    return NULL;
  ps_cache_node *n = c->head.prev;
  detach(c, n);
  return n;
}

void ps_cache_remove(ps_cache *c, const char *key, size_t len) {
  if (c->count == 0) return;
  ps_cache_node *n = *slot_of(c, key, len, hash_key(key, len));
  if (n) {
    detach(c, n);
    free(n);
  }
}

void ps_cache_release(ps_cache_node *n) { free(n); }
