/*
 * store.c: the store's core operations (put, get through the cache, evict)
 * and resolution, for proxies.
 *
 * A store is a userdata over either the in-process "local" table (objects
 * kept by reference, as ProxyStore's local backend does) or a byte backend
 * (backend.h). For byte backends this file owns serializer dispatch, the
 * per-process LRU cache of deserialized objects, strict version checks,
 * evict-on-resolve and metrics; the backend only moves bytes.
 *
 * Serializer dispatch is in envelope.c, batches in store_batch.c, the
 * registry of stores by name (and re-creation from a carried config) in
 * store_registry.c, the Lua-facing methods in store_methods.c.
 *
 * User values: 1 config table, 2 local objects, 3 cached values,
 * 4 custom serializer, 5 custom deserializer.
 */
#include <string.h>
#include <time.h>

#include "store.h"
#include "ps_backends.h"
#include "prefetch.h"

/* Stands for a stored nil in the local store's table. */
static const char local_nil = 0;

double ps_store_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ps_store_record(ps_store *s, int op, double t0, size_t bytes) {
  if (s->ops == NULL) {
    /* Local operations take ~100 ns: timing them would double that. */
    s->m[op].count++;
    return;
  }
  double dt = ps_store_now() - t0;
  metric *m = &s->m[op];
  m->count++;
  m->bytes += (lua_Integer)bytes;
  m->total += dt;
  if (dt > m->max) m->max = dt;
}

ps_store *ps_store_check(lua_State *L, int idx) {
  return ps_checkudata(L, idx, STORE_MT);
}

int ps_store_is_open(lua_State *L, int idx) {
  return ps_store_check(L, idx)->open;
}

/* The store's name (anchored in its config table). */
const char *ps_store_name(lua_State *L, int sidx) {
  lua_getiuservalue(L, sidx, UV_CONFIG);
  lua_getfield(L, -1, "name");
  const char *name = lua_tostring(L, -1);
  lua_pop(L, 2);
  return name ? name : "?";
}

ps_store *ps_store_check_open(lua_State *L, int idx) {
  ps_store *s = ps_store_check(L, idx);
  if (!s->open)
    ps_error_raise(L, PS_ECLOSED, &(ps_errctx){.store = ps_store_name(L, idx)},
                   "store '%s' is closed", ps_store_name(L, idx));
  return s;
}

/* Keys are user input: a bad one is a config error, never a crash. A
 * number is taken as its string, as Lua's string arguments are. */
const char *ps_store_check_key(lua_State *L, int idx, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING && lua_type(L, idx) != LUA_TNUMBER)
    ps_error_raise(L, PS_ECONFIG, NULL, "a key must be a string, got %s",
                   luaL_typename(L, idx));
  const char *k = lua_tolstring(L, idx, len);
  if (*len == 0) ps_error_raise(L, PS_ECONFIG, NULL, "a key must not be empty");
  return k;
}

const char *ps_store_check_key_arg(lua_State *L, int arg, int proxy_ok,
                                   size_t *len) {
  if (proxy_ok && ps_proxy_push_key(L, arg)) lua_replace(L, arg);
  if (lua_type(L, arg) != LUA_TSTRING && lua_type(L, arg) != LUA_TNUMBER)
    ps_typeerror(L, arg, "string");
  const char *k = lua_tolstring(L, arg, len);
  if (*len == 0) ps_argerror(L, arg, "a key must not be empty");
  return k;
}

static const char *address(ps_store *s) {
  return s->ops && s->ctx && s->ops->address ? s->ops->address(s->ctx) : NULL;
}

/* Raises the error a backend reported (err already released everything). */
int ps_store_raise_backend(lua_State *L, int sidx, ps_store *s,
                         const ps_berr *err, const char *key, size_t klen) {
  return ps_store_raise_backend_at(L, sidx, err, key, klen, address(s));
}

int ps_store_raise_backend_at(lua_State *L, int sidx, const ps_berr *err,
                              const char *key, size_t klen,
                              const char *addr) {
  static const char *const kinds[] = {
    [PS_BNOTFOUND] = PS_EMISSING_KEY, [PS_BCONN] = PS_ECONNECTION,
    [PS_BTIMEOUT] = PS_ETIMEOUT,      [PS_BPROTO] = PS_ESTORE,
    [PS_BCONFIG] = PS_ECONFIG,        [PS_BIO] = PS_EIO,
    [PS_BNOMEM] = PS_ESTORE,          [PS_BEXISTS] = PS_EALREADY_SET};
  int code = err->code;
  const char *kind = code > 0 && code <= PS_BEXISTS && kinds[code]
                         ? kinds[code] : PS_ESTORE;
  const char *name = ps_store_name(L, sidx);
  return ps_error_raise(L, kind,
                        &(ps_errctx){.key = key, .keylen = klen,
                                     .store = name, .address = addr},
                        "store '%s': %s", name,
                        err->msg[0] ? err->msg : "backend error");
}

/* ---- boxes for C memory that must survive a Lua error ------------------- */


static int blobs_gc(lua_State *L) {
  blobs *bs = luaL_checkudata(L, 1, BLOBS_MT);
  for (size_t i = 0; i < bs->n; i++) ps_blob_release(&bs->b[i]);
  return 0;
}

blobs *ps_blobs_push(lua_State *L, size_t n) {
  blobs *bs = lua_newuserdatauv(L, sizeof *bs + n * sizeof(ps_blob), 0);
  bs->n = 0;
  memset(bs->b, 0, n * sizeof(ps_blob));
  bs->n = n;
  luaL_setmetatable(L, BLOBS_MT);
  return bs;
}

/* ---- core operations ------------------------------------------------------- */

void ps_store_cache_drop(lua_State *L, int sidx, ps_store *s,
                         const char *key, size_t klen) {
  if (s->cache.count == 0) return;
  ps_cache_remove(&s->cache, key, klen);
  lua_getiuservalue(L, sidx, UV_CACHE);
  lua_pushlstring(L, key, klen);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Caches the value on top of the stack under key (leaves it there). */
void ps_store_cache_add(lua_State *L, int sidx, ps_store *s,
                        const char *key, size_t klen, const ps_version *ver,
                        size_t bytes) {
  if (s->cache.capacity == 0) return;
  /* The value first: a memory error raised here leaves no node that a
     later resolve would take for a cached value. */
  lua_getiuservalue(L, sidx, UV_CACHE);
  lua_pushlstring(L, key, klen);
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -4);
  lua_rawset(L, -4);
  ps_cache_node *n = ps_cache_put(&s->cache, key, klen, bytes);
  if (n == NULL) {   /* out of memory: the value goes too */
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  if (ver) {
    n->version = *ver;
    n->has_version = 1;
  }
  ps_cache_node *old;
  while ((old = ps_cache_pop_excess(&s->cache)) != NULL) {
    lua_pushlstring(L, old->key, old->keylen);
    lua_pushnil(L);
    lua_rawset(L, -3);
    ps_cache_release(old);
  }
  lua_pop(L, 1);
}

/* ---- leases this process set ---------------------------------------------- */

/*
 * UV_LEASES maps a key to the monotonic time the lease this process put it
 * with ends. The local store has nobody else to expire its objects: a
 * read that finds the time past removes the object. A byte store's backend
 * keeps the lease itself (whoever dies); here the table only keeps this
 * process's cache from serving the object past its lease. Entries go when
 * the key is evicted or put again, when found past, and in a sweep each
 * time the table has doubled.
 */
static void lease_sweep(lua_State *L, int sidx, ps_store *s);

static void lease_note(lua_State *L, int sidx, ps_store *s, int kidx,
                       int64_t ttl_ms) {
  if (ttl_ms <= 0 && s->leases == 0) return;
  lua_getiuservalue(L, sidx, UV_LEASES);
  lua_pushvalue(L, kidx);
  int had = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 1);
  lua_pushvalue(L, kidx);
  if (ttl_ms > 0) lua_pushnumber(L, ps_store_now() + (double)ttl_ms / 1000);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  s->leases += (ttl_ms > 0) - had;
  if (s->leases > s->lease_sweep_at) lease_sweep(L, sidx, s);
}

int ps_store_lease_over(lua_State *L, int sidx, ps_store *s, int kidx) {
  if (s->leases == 0) return 0;
  lua_getiuservalue(L, sidx, UV_LEASES);
  lua_pushvalue(L, kidx);
  lua_rawget(L, -2);
  int over = lua_isnumber(L, -1) && lua_tonumber(L, -1) <= ps_store_now();
  lua_pop(L, 2);
  if (!over) return 0;
  lease_note(L, sidx, s, kidx, 0);
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  } else {
    size_t klen;
    const char *key = lua_tolstring(L, kidx, &klen);
    ps_store_cache_drop(L, sidx, s, key, klen);
  }
  return 1;
}

static void lease_sweep(lua_State *L, int sidx, ps_store *s) {
  double now = ps_store_now();
  s->lease_sweep_at = LUA_MAXINTEGER;   /* no sweep inside the sweep */
  lua_getiuservalue(L, sidx, UV_LEASES);
  int t = lua_gettop(L);
  lua_newtable(L);   /* the keys past: t must not change while walked */
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_tonumber(L, -1) <= now) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, t + 1, ++n);
    }
    lua_pop(L, 1);
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, t + 1, i);
    ps_store_lease_over(L, sidx, s, lua_gettop(L));
    lua_pop(L, 1);
  }
  lua_settop(L, t - 1);
  s->lease_sweep_at = s->leases < 32 ? 64 : 2 * s->leases;
}

int ps_store_do_expire(lua_State *L, int sidx, ps_store *s, int kidx,
                       int64_t ttl_ms) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  if (s->ops == NULL) {
    if (ps_store_lease_over(L, sidx, s, kidx)) return 0;
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int found = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    if (found) lease_note(L, sidx, s, kidx, ttl_ms);
    return found;
  }
  if (s->ops->expire == NULL)
    return ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.store =
                          ps_store_name(L, sidx)}, "a %s store cannot keep "
                          "leases", s->ops->kind);
  ps_berr err = {0, ""};
  int rc = s->ops->expire(s->ctx, ps_key_of(key, klen), ttl_ms, &err);
  if (rc == PS_BNOTFOUND) return 0;
  if (rc != PS_BOK) ps_store_raise_backend(L, sidx, s, &err, key, klen);
  lease_note(L, sidx, s, kidx, ttl_ms);
  return 1;
}

/*
 * Writes b (released here) under the key at kidx with the options o (NULL:
 * a plain put): PS_BOK, or PS_BEXISTS when o->if_absent found the key
 * taken (nothing written); any other failure raises.
 */
static int put_bytes(lua_State *L, int sidx, ps_store *s, int kidx,
                     ps_buf *b, double t0, const ps_bput *o, int fresh) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  ps_berr err = {0, ""};
  ps_part one = {b->data, b->len};
  ps_key k = {.data = key, .len = klen, .fresh = fresh};
  int rc = o == NULL ? s->ops->put(s->ctx, k, b->data, b->len, NULL, &err)
                     : s->ops->put_ex(s->ctx, k, &one, 1, o, NULL, &err);
  size_t len = b->len;
  ps_buf_free(b);
  if (rc == PS_BEXISTS) return rc;
  if (rc != PS_BOK) ps_store_raise_backend(L, sidx, s, &err, key, klen);
  ps_store_cache_drop(L, sidx, s, key, klen);
  lease_note(L, sidx, s, kidx, o ? o->ttl_ms : 0);
  ps_store_record(s, OP_PUT, t0, len);
  return PS_BOK;
}

/*
 * Writes b (released here) with the large strings of the holes list at
 * holes in their places, through the backend's put_parts (put_ex with the
 * options o when not NULL): the strings go out from where they lie, never
 * copied into b (a future set from a pool worker wrote its 10 MiB into a
 * fresh buffer: 24 ms of page faults a set). Returns as put_bytes does.
 */
static int put_parts(lua_State *L, int sidx, ps_store *s, int kidx,
                     ps_buf *b, int holes, double t0, const ps_bput *o,
                     int fresh) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  size_t nholes = lua_rawlen(L, holes) / 2;
  /* the parts live in a box, freed however this ends */
  ps_buf *pb = ps_buf_box(L);
  if (ps_buf_reserve(pb, (2 * nholes + 1) * sizeof(ps_part)) != 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "out of memory");
  ps_part *parts = (ps_part *)(void *)pb->data;
  size_t n = 0, from = 0, len = b->len;
  for (size_t h = 1; h <= nholes; h++) {
    lua_rawgeti(L, holes, (lua_Integer)(2 * h - 1));
    size_t at = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (at > from) parts[n++] = (ps_part){b->data + from, at - from};
    /* the string stays referenced by the holes list until we return */
    lua_rawgeti(L, holes, (lua_Integer)(2 * h));
    size_t sl;
    const char *str = lua_tolstring(L, -1, &sl);
    lua_pop(L, 1);
    parts[n++] = (ps_part){str, sl};
    len += sl;
    from = at;
  }
  if (b->len > from) parts[n++] = (ps_part){b->data + from, b->len - from};
  ps_berr err = {0, ""};
  ps_key k = {.data = key, .len = klen, .fresh = fresh};
  int rc = o == NULL ? s->ops->put_parts(s->ctx, k, parts, n, NULL, &err)
                     : s->ops->put_ex(s->ctx, k, parts, n, o, NULL, &err);
  ps_buf_free(pb);
  lua_pop(L, 1);
  ps_buf_free(b);
  if (rc == PS_BEXISTS) return rc;
  if (rc != PS_BOK) ps_store_raise_backend(L, sidx, s, &err, key, klen);
  ps_store_cache_drop(L, sidx, s, key, klen);
  lease_note(L, sidx, s, kidx, o ? o->ttl_ms : 0);
  ps_store_record(s, OP_PUT, t0, len);
  return PS_BOK;
}

/* Stores the value at obj under the key at kidx. */
void ps_store_do_put(lua_State *L, int sidx, ps_store *s, int obj, int kidx,
                   int ser) {
  ps_store_do_put_ex(L, sidx, s, obj, kidx, ser, NULL);
}

/* Local store: put_ex on the Lua table of objects. */
static int local_put(lua_State *L, int sidx, ps_store *s, int obj, int kidx,
                     const ps_bput *o) {
  if (o && o->if_absent) {
    ps_store_lease_over(L, sidx, s, kidx);
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int taken = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    if (taken) return PS_BEXISTS;
  }
  lua_getiuservalue(L, sidx, UV_LOCAL);
  lua_pushvalue(L, kidx);
  if (lua_isnil(L, obj)) lua_pushlightuserdata(L, (void *)&local_nil);
  else lua_pushvalue(L, obj);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lease_note(L, sidx, s, kidx, o ? o->ttl_ms : 0);
  ps_store_record(s, OP_PUT, 0, 0);
  return PS_BOK;
}

int ps_store_do_put_ex(lua_State *L, int sidx, ps_store *s, int obj,
                       int kidx, int ser, const ps_bput *o) {
  if (s->ops == NULL) return local_put(L, sidx, s, obj, kidx, o);
  int plain = o == NULL || (o->ttl_ms <= 0 && !o->if_absent && !o->wake);
  if (!plain && s->ops->put_ex == NULL)
    return ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.store =
                          ps_store_name(L, sidx)}, "a %s store cannot keep "
                          "leases or futures", s->ops->kind);
  double t0 = ps_store_now();
  int fresh = o != NULL && o->fresh_key;
  if (!plain || s->ops->put_parts != NULL) {
    ps_buf *b = ps_envelope_serialize_holes(L, sidx, s, obj, ser);
    if (!s->open) ps_buf_free(b);   /* a user serializer closed the store */
    ps_store_check_open(L, sidx);
    if (lua_istable(L, -1) && lua_rawlen(L, -1) > 0) {
      int rc = put_parts(L, sidx, s, kidx, b, lua_gettop(L), t0,
                         plain ? NULL : o, fresh);
      lua_pop(L, 2);
      return rc;
    }
    lua_pop(L, 1);
    int rc = put_bytes(L, sidx, s, kidx, b, t0, plain ? NULL : o, fresh);
    lua_pop(L, 1);
    return rc;
  }
  ps_buf *b = ps_envelope_serialize(L, sidx, s, obj, ser);
  if (!s->open) ps_buf_free(b);   /* a user serializer closed the store */
  ps_store_check_open(L, sidx);
  int rc = put_bytes(L, sidx, s, kidx, b, t0, plain ? NULL : o, fresh);
  lua_pop(L, 1);
  return rc;
}

void ps_store_put_bytes(lua_State *L, int sidx, ps_store *s, int kidx,
                        ps_buf *b, int fresh) {
  put_bytes(L, sidx, s, kidx, b, ps_store_now(), NULL, fresh);
}

/* A future on the local store that is not set: nobody else can set it. */
static int raise_local_unset(lua_State *L, int sidx, int kidx) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  const char *name = ps_store_name(L, sidx);
  return ps_error_raise(L, PS_ETIMEOUT,
                        &(ps_errctx){.key = key, .keylen = klen,
                                     .store = name},
                        "future '%s' in local store '%s' is not set, and "
                        "nothing else can set it while this process waits (a "
                        "local store lives in one process: use a file or "
                        "redis store to set futures from other processes)",
                        key, name);
}

/* The store's context for waits, opened at the first: a waiting resolve
   never holds the connection the store's other calls use. It neither
   creates nor clears anything. */
static void *wait_ctx(lua_State *L, int sidx, ps_store *s, ps_key k) {
  if (s->ops->wait == NULL)
    ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.store =
                   ps_store_name(L, sidx)}, "a %s store cannot wait for "
                   "futures", s->ops->kind);
  if (s->wctx == NULL) {
    ps_berr err = {0, ""};
    ps_bconfig cfg = s->bcfg;
    cfg.clear = 0;
    cfg.no_create = 1;
    s->wctx = s->ops->open(&cfg, &err);
    if (s->wctx == NULL) ps_store_raise_backend(L, sidx, s, &err, k.data, k.len);
  }
  return s->wctx;
}

int ps_store_do_get(lua_State *L, int sidx, ps_store *s, int kidx,
                    unsigned flags, int deser, ps_prefetch_slot *slot) {
  return ps_store_do_get_wait(L, sidx, s, kidx, flags & ~PS_PROXY_FUTURE,
                              deser, slot, -1);
}

/*
 * Pushes the object under the key at kidx and returns 1, or pushes nothing
 * and returns 0 when the key is absent. With PS_PROXY_FUTURE in flags it
 * first waits (timeout seconds, < 0: no limit) until the key is set: the
 * backend's wait reads the object in the same round trip where it can.
 */
int ps_store_do_get_wait(lua_State *L, int sidx, ps_store *s, int kidx,
                         unsigned flags, int deser, ps_prefetch_slot *slot,
                         double timeout) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  if (s->leases) ps_store_lease_over(L, sidx, s, kidx);
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int t = lua_rawget(L, -2);
    lua_remove(L, -2);
    ps_store_record(s, OP_GET, t0, 0);
    if (t == LUA_TNIL) {
      lua_pop(L, 1);
      if (flags & PS_PROXY_FUTURE) raise_local_unset(L, sidx, kidx);
      return 0;
    }
    if (lua_touserdata(L, -1) == &local_nil) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    return 1;
  }
  /* A per-proxy deserializer makes a value only that proxy may see. */
  int cached = !deser && !(flags & PS_GET_FRESH);
  ps_cache_node *hit = cached ? ps_cache_find(&s->cache, key, klen) : NULL;
  if (hit && !(flags & PS_PROXY_STRICT)) {
    s->hits++;
    ps_prefetch_slot_free(slot);
    lua_getiuservalue(L, sidx, UV_CACHE);
    lua_pushvalue(L, kidx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return 1;
  }
  ps_version have, ver;
  int use_have = hit && hit->has_version;
  if (use_have) have = hit->version;
  blobs *bs = ps_blobs_push(L, 1);
  ps_berr err = {0, ""};
  int rc;
  if (slot && *slot) {
    rc = ps_prefetch_wait(*slot, &bs->b[0], &ver, &err);
    ps_prefetch_slot_free(slot);
    if (rc == PS_BOK && use_have && memcmp(&ver, &have, sizeof ver) == 0)
      rc = PS_BUNCHANGED;
  } else if ((flags & PS_PROXY_FUTURE) && !use_have) {
    /* A cached copy (use_have) says it was set: no wait then. */
    void *w = wait_ctx(L, sidx, s, ps_key_of(key, klen));
    rc = s->ops->wait(w, ps_key_of(key, klen), timeout, &bs->b[0], &ver, &err);
  } else {
    rc = s->ops->get(s->ctx, ps_key_of(key, klen), use_have ? &have : NULL,
                     &bs->b[0], &ver, &err);
  }
  if (rc == PS_BUNCHANGED) {
    ps_blob_release(&bs->b[0]);
    lua_pop(L, 1);
    s->hits++;
    ps_store_record(s, OP_GET, t0, 0);
    lua_getiuservalue(L, sidx, UV_CACHE);
    lua_pushvalue(L, kidx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return 1;
  }
  if (rc == PS_BNOTFOUND) {
    lua_pop(L, 1);
    if (hit) ps_store_cache_drop(L, sidx, s, key, klen);
    s->misses++;
    ps_store_record(s, OP_GET, t0, 0);
    return 0;
  }
  if (rc != PS_BOK) {
    ps_blob_release(&bs->b[0]);
    ps_store_raise_backend(L, sidx, s, &err, key, klen);
  }
  s->misses++;
  size_t len = bs->b[0].len;
  ps_envelope_deserialize_blob(L, sidx, &bs->b[0], deser);
  ps_blob_release(&bs->b[0]);
  ps_store_check_open(L, sidx);   /* a user deserializer may have closed it */
  lua_remove(L, -2);   /* the blob box */
  if (cached) ps_store_cache_add(L, sidx, s, key, klen, &ver, len);
  ps_store_record(s, OP_GET, t0, len);
  return 1;
}

void ps_store_do_evict(lua_State *L, int sidx, ps_store *s, int kidx) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  } else {
    ps_berr err = {0, ""};
    ps_store_cache_drop(L, sidx, s, key, klen);
    if (s->ops->evict(s->ctx, ps_key_of(key, klen), &err) != PS_BOK)
      ps_store_raise_backend(L, sidx, s, &err, key, klen);
  }
  lease_note(L, sidx, s, kidx, 0);
  ps_store_record(s, OP_EVICT, t0, 0);
}

/* ---- resolution, for proxies ------------------------------------------------ */

/* Deserializes, under lua_pcall: the store (1), the deserializer or nil
   (2), and the blob (3, a light userdata). As a get does: an object that
   is one string becomes a Lua string in the blob's own block when it can
   (the blob is then left empty), rather than a copy of the bytes. */
static int deserialize_call(lua_State *L) {
  ps_blob *b = lua_touserdata(L, 3);
  ps_envelope_deserialize_blob(L, 1, b, lua_isnil(L, 2) ? 0 : 2);
  return 1;
}

/*
 * The resolve of a single-use (evict) proxy through the backend's take:
 * the object is read and deleted in one round trip. Pushes it and returns
 * 1, or pushes nothing and returns 0 when the key is absent. Bytes that do
 * not deserialize are put back under the key (as a get would have left
 * them) before the error goes up. Metrics count a get and an evict, as
 * the two calls it replaces.
 */
static int do_take(lua_State *L, int sidx, ps_store *s, int kidx,
                   int deser) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = ps_store_now();
  if (s->leases) ps_store_lease_over(L, sidx, s, kidx);
  blobs *bs = ps_blobs_push(L, 1);
  ps_berr err = {0, ""};
  ps_version ver;
  int rc = s->ops->take(s->ctx, ps_key_of(key, klen), &bs->b[0], &ver, &err);
  if (rc == PS_BNOTFOUND) {
    lua_pop(L, 1);
    s->misses++;
    ps_store_record(s, OP_GET, t0, 0);
    return 0;
  }
  if (rc != PS_BOK) {
    ps_blob_release(&bs->b[0]);
    ps_store_raise_backend(L, sidx, s, &err, key, klen);
  }
  s->misses++;
  size_t len = bs->b[0].len;
  lua_pushcfunction(L, deserialize_call);
  lua_pushvalue(L, sidx);
  if (deser) lua_pushvalue(L, deser);
  else lua_pushnil(L);
  lua_pushlightuserdata(L, &bs->b[0]);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
    /* Not delivered: the object goes back (unless a user deserializer
       closed the store, or the bytes became a string before the error),
       and the deserializer's error goes up. */
    if (s->open && bs->b[0].data) {
      ps_berr e = {0, ""};
      (void)s->ops->put(s->ctx, ps_key_of(key, klen), bs->b[0].data, len,
                        NULL, &e);
    }
    ps_blob_release(&bs->b[0]);
    lua_error(L);
  }
  ps_blob_release(&bs->b[0]);
  ps_store_check_open(L, sidx);   /* a user deserializer may have closed it */
  lua_remove(L, -2);   /* the blob box */
  ps_store_record(s, OP_GET, t0, len);
  lease_note(L, sidx, s, kidx, 0);
  ps_store_record(s, OP_EVICT, ps_store_now(), 0);
  return 1;
}

void ps_store_resolve_ex(lua_State *L, int sidx, int kidx, unsigned flags,
                         int deser, ps_prefetch_slot *slot, double timeout) {
  sidx = lua_absindex(L, sidx);
  kidx = lua_absindex(L, kidx);
  if (deser) deser = lua_absindex(L, deser);
  ps_store *s = ps_store_check_open(L, sidx);
  size_t kl;
  const char *k = lua_tolstring(L, kidx, &kl);
  /* A single-use proxy with nothing to wait for, cached or prefetched:
     read and deleted in one round trip. */
  int take = (flags & PS_PROXY_EVICT) && !(flags & PS_PROXY_FUTURE) &&
             s->ops && s->ops->take && !(slot && *slot) &&
             !ps_cache_find(&s->cache, k, kl);
  if (take ? !do_take(L, sidx, s, kidx, deser)
           : !ps_store_do_get_wait(L, sidx, s, kidx, flags, deser, slot,
                                   timeout)) {
    size_t klen;
    const char *key = lua_tolstring(L, kidx, &klen);
    const char *name = ps_store_name(L, sidx);
    const char *addr = address(s);
    ps_error_raise(L, PS_EMISSING_KEY,
                   &(ps_errctx){.key = key, .keylen = klen, .store = name,
                                .address = addr},
                   "no object under key '%s' in store '%s'%s%s%s", key, name,
                   addr ? " at " : "", addr ? addr : "",
                   (flags & PS_PROXY_EVICT)
                       ? " (an evict proxy is single use: did another copy "
                         "of it resolve already?)" : "");
  }
  if ((flags & PS_PROXY_EVICT) && !take) ps_store_do_evict(L, sidx, s, kidx);
}

void ps_store_resolve(lua_State *L, int sidx, int kidx, unsigned flags) {
  ps_store_resolve_ex(L, sidx, kidx, flags & ~PS_PROXY_FUTURE, 0, NULL, -1);
}

int ps_prefetch_slot_done(ps_prefetch_slot *slot) {
  return *slot != NULL && ps_prefetch_done(*slot);
}

void ps_prefetch_slot_free(ps_prefetch_slot *slot) {
  if (slot && *slot) {
    ps_prefetch_free(*slot);
    *slot = NULL;
  }
}

void ps_store_prefetch(lua_State *L, int sidx, int kidx, unsigned flags,
                       double timeout, ps_prefetch_slot *slot) {
  ps_store *s = ps_store_check_open(L, sidx);
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  if (s->ops == NULL || *slot) return;
  if (!(flags & PS_PROXY_STRICT) && ps_cache_find(&s->cache, key, klen))
    return;   /* first use will be a cache hit anyway */
  ps_berr err = {0, ""};
  if ((flags & PS_PROXY_FUTURE) && s->ops->wait)
    *slot = ps_prefetch_start_wait(s->ops, &s->bcfg, ps_key_of(key, klen),
                                   timeout, &err);
  else
    *slot = ps_prefetch_start(s->ops, &s->bcfg, ps_key_of(key, klen), &err);
  if (*slot == NULL) ps_store_raise_backend(L, sidx, s, &err, key, klen);
}

/* ---- waiting for futures ------------------------------------------------------ */

void ps_store_wait(lua_State *L, int sidx, int kidx, double timeout) {
  sidx = lua_absindex(L, sidx);
  ps_store *s = ps_store_check_open(L, sidx);
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  if (s->ops == NULL) {
    ps_store_lease_over(L, sidx, s, kidx);
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int set = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    if (!set) raise_local_unset(L, sidx, kidx);
    return;
  }
  ps_key k = ps_key_of(key, klen);
  void *w = wait_ctx(L, sidx, s, k);
  ps_berr err = {0, ""};
  if (s->ops->wait(w, k, timeout, NULL, NULL, &err) != PS_BOK)
    ps_store_raise_backend(L, sidx, s, &err, key, klen);
}

void ps_store_open(lua_State *L) {
  luaL_newmetatable(L, BLOBS_MT);
  lua_pushcfunction(L, blobs_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  ps_store_methods_open(L);
  ps_store_registry_open(L);
  ps_future_open(L);
  ps_lifetime_open(L);
  ps_owned_open(L);
}
