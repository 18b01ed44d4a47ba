/*
 * store_batch.c: put_batch, get_batch and proxy_batch. With a backend that
 * has batch operations every object goes in one round trip; otherwise
 * the store loops over single operations.
 */
#include <string.h>

#include "bigalloc.h"
#include "store.h"

/* A batch's length from #list (which a __len may make anything): bounded,
 * so a bogus length is an error, not hours of key making. */
#define BATCH_MAX (1 << 24)

static lua_Integer batch_len(lua_State *L, int idx) {
  lua_Integer n = luaL_len(L, idx);
  if (n < 0 || n > BATCH_MAX)
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "a batch holds 0 to %d objects, got a length of %I",
                   BATCH_MAX, n);
  return n;
}

/*
 * put_batch(list [, opts]): stores every element, returns their keys.
 * With a batch-capable backend all objects go in one round trip.
 * opts.keys: a list of keys to use.
 */
static int put_batch(lua_State *L, int make_proxies) {
  ps_store *s = ps_store_check_open(L, 1);
  ps_checktype(L, 2, LUA_TTABLE);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  lua_Integer n = batch_len(L, 2);
  int keys_opt = ps_store_opt_field(L, opts, "keys");   /* 4 or 0 */
  if (!keys_opt) lua_pushnil(L);
  int ser = ps_store_opt_field(L, opts, "serializer");  /* 5 or 0 */
  if (!ser) lua_pushnil(L);
  lua_createtable(L, (int)n, 0);               /* 6: keys */
  for (lua_Integer i = 1; i <= n; i++) {
    if (keys_opt) {
      lua_geti(L, 4, i);
      size_t len;
      ps_store_check_key(L, -1, &len);
    } else {
      char key[33];
      ps_key_random(key);
      lua_pushlstring(L, key, 32);
    }
    lua_rawseti(L, 6, i);
  }
  double t0 = ps_store_now();
  if (s->ops && s->ops->put_batch && n > 0) {
    blobs *bs = ps_blobs_push(L, (size_t)n);      /* 7 */
    ps_key *keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0); /* 8 */
    size_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      ps_buf *b = ps_envelope_serialize(L, 1, s, lua_gettop(L), ser ? 5 : 0);
      /* Move the buffer into the blob box, which now owns it. */
      total += b->len;
      ps_blob_take_buf(&bs->b[i - 1], b);
      lua_pop(L, 2);
      lua_rawgeti(L, 6, i);
      size_t kl;
      const char *kd = lua_tolstring(L, -1, &kl);
      keys[i - 1] = ps_key_of(kd, kl);
      keys[i - 1].fresh = !keys_opt;   /* made above: 128 random bits */
      lua_pop(L, 1);   /* anchored in the keys table */
    }
    ps_store_check_open(L, 1);   /* a user serializer may have closed it */
    ps_berr err = {0, ""};
    int rc = s->ops->put_batch(s->ctx, (size_t)n, keys, bs->b, NULL, &err);
    for (lua_Integer i = 0; i < n; i++) ps_blob_release(&bs->b[i]);
    if (rc != PS_BOK) ps_store_raise_backend(L, 1, s, &err, NULL, 0);
    for (lua_Integer i = 0; i < n; i++)
      ps_store_cache_drop(L, 1, s, keys[i].data, keys[i].len);
    ps_store_record(s, OP_PUT, t0, total);
    lua_settop(L, 6);
  } else {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      lua_rawgeti(L, 6, i);
      ps_store_do_put(L, 1, s, lua_gettop(L) - 1, lua_gettop(L), ser ? 5 : 0);
      lua_pop(L, 2);
    }
  }
  if (make_proxies) {
    unsigned flags = ps_store_proxy_flags(L, opts);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 6, i);
      ps_proxy_push_store_ref(L, 1, -1, flags);
      lua_rawseti(L, -3, i);
      lua_pop(L, 1);
    }
  }
  return 1;
}

int ps_store_put_batch(lua_State *L) { return put_batch(L, 0); }
int ps_store_proxy_batch(lua_State *L) { return put_batch(L, 1); }

/* get_batch(keys): values in order (nil where absent), with field n. */
int ps_store_get_batch(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  ps_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_Integer n = batch_len(L, 2);
  /* Keys are copied to a private table (3) first: the backend keeps
   * pointers to them, and the caller's table may be a proxy-like object
   * whose __index makes fresh strings nothing else holds. */
  lua_createtable(L, (int)n, 0);   /* 3: keys */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    size_t len;
    ps_store_check_key(L, -1, &len);
    lua_rawseti(L, 3, i);
  }
  lua_createtable(L, (int)n, 1);   /* 4: results */
  if (s->ops && s->ops->get_batch && n > 0) {
    double t0 = ps_store_now();
    blobs *bs = ps_blobs_push(L, (size_t)n);                                /* 5 */
    ps_key *keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0);   /* 6 */
    int *codes = lua_newuserdatauv(L, (size_t)n * sizeof *codes, 0);    /* 7 */
    ps_version *vers = lua_newuserdatauv(L, (size_t)n * sizeof *vers, 0); /* 8 */
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 3, i);
      size_t kl;
      const char *kd = lua_tolstring(L, -1, &kl);
      keys[i - 1] = ps_key_of(kd, kl);
      lua_pop(L, 1);   /* anchored in the keys table */
    }
    ps_berr err = {0, ""};
    int rc = s->ops->get_batch(s->ctx, (size_t)n, keys, bs->b, vers, codes,
                               &err);
    if (rc != PS_BOK) {
      for (lua_Integer i = 0; i < n; i++) ps_blob_release(&bs->b[i]);
      ps_store_raise_backend(L, 1, s, &err, NULL, 0);
    }
    size_t total = 0;
    for (lua_Integer i = 0; i < n; i++) {
      s->misses++;
      if (codes[i] != PS_BOK) continue;
      size_t len = bs->b[i].len;
      total += len;
      ps_envelope_deserialize_blob(L, 1, &bs->b[i], 0);
      ps_blob_release(&bs->b[i]);
      ps_store_check_open(L, 1);   /* a user deserializer may close it */
      ps_store_cache_add(L, 1, s, keys[i].data, keys[i].len, &vers[i], len);
      lua_rawseti(L, 4, i + 1);
    }
    ps_store_record(s, OP_GET, t0, total);
    lua_settop(L, 4);
  } else {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 3, i);
      if (ps_store_do_get(L, 1, s, lua_gettop(L), 0, 0, NULL))
        lua_rawseti(L, 4, i);
      lua_pop(L, 1);
    }
  }
  lua_pushinteger(L, n);
  lua_setfield(L, 4, "n");
  return 1;
}
