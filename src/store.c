/*
 * store.c: store objects, the registry of stores by name, and resolution.
 *
 * A store is a userdata over either the in-process "local" table (objects
 * kept by reference, as the seed's local backend did) or a byte backend
 * (backend.h). For byte backends this file owns serializer dispatch, the
 * per-process LRU cache of deserialized objects, strict version checks,
 * evict-on-resolve and metrics; the backend only moves bytes.
 *
 * Serializer dispatch is in envelope.c, batches in store_batch.c.
 *
 * User values: 1 config table, 2 local objects, 3 cached values,
 * 4 custom serializer, 5 custom deserializer.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "ps_backends.h"
#include "prefetch.h"

static const char *const op_names[OP_N] = {"put", "get", "exists", "evict"};

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
  return luaL_checkudata(L, idx, STORE_MT);
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

/* Keys are user input: a bad one is a config error, never a crash. */
const char *ps_store_check_key(lua_State *L, int idx, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING)
    ps_error_raise(L, PS_ECONFIG, NULL, "a key must be a string, got %s",
                   luaL_typename(L, idx));
  const char *k = lua_tolstring(L, idx, len);
  if (*len == 0) ps_error_raise(L, PS_ECONFIG, NULL, "a key must not be empty");
  return k;
}

static const char *address(ps_store *s) {
  return s->ops && s->ctx && s->ops->address ? s->ops->address(s->ctx) : NULL;
}

/* Raises the error a backend reported (err already released everything). */
int ps_store_raise_backend(lua_State *L, int sidx, ps_store *s,
                         const ps_berr *err, const char *key, size_t klen) {
  static const char *const kinds[] = {
    [PS_BNOTFOUND] = PS_EMISSING_KEY, [PS_BCONN] = PS_ECONNECTION,
    [PS_BTIMEOUT] = PS_ETIMEOUT,      [PS_BPROTO] = PS_ESTORE,
    [PS_BCONFIG] = PS_ECONFIG,        [PS_BIO] = PS_EIO,
    [PS_BNOMEM] = PS_ESTORE};
  int code = err->code;
  const char *kind = code > 0 && code <= PS_BNOMEM && kinds[code]
                         ? kinds[code] : PS_ESTORE;
  const char *name = ps_store_name(L, sidx);
  return ps_error_raise(L, kind,
                        &(ps_errctx){.key = key, .keylen = klen,
                                     .store = name, .address = address(s)},
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
                        const char *key, size_t klen, const ps_version *ver) {
  ps_cache_node *n = ps_cache_put(&s->cache, key, klen);
  if (n == NULL) return;
  if (ver) {
    n->version = *ver;
    n->has_version = 1;
  }
  lua_getiuservalue(L, sidx, UV_CACHE);
  lua_pushlstring(L, key, klen);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  ps_cache_node *old;
  while ((old = ps_cache_pop_excess(&s->cache)) != NULL) {
    lua_pushlstring(L, old->key, old->keylen);
    lua_pushnil(L);
    lua_rawset(L, -3);
    ps_cache_release(old);
  }
  lua_pop(L, 1);
}

/* Stores the value at obj under the key at kidx. */
void ps_store_do_put(lua_State *L, int sidx, ps_store *s, int obj, int kidx,
                   int ser) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    if (lua_isnil(L, obj)) lua_pushlightuserdata(L, (void *)&local_nil);
    else lua_pushvalue(L, obj);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    ps_store_record(s, OP_PUT, t0, 0);
    return;
  }
  ps_buf *b = ps_envelope_serialize(L, sidx, s, obj, ser);
  if (!s->open) ps_buf_free(b);   /* a user serializer closed the store */
  ps_store_check_open(L, sidx);
  ps_berr err = {0, ""};
  int rc = s->ops->put(s->ctx, (ps_key){key, klen}, b->data, b->len, NULL,
                       &err);
  size_t len = b->len;
  ps_buf_free(b);
  lua_pop(L, 1);
  if (rc != PS_BOK) ps_store_raise_backend(L, sidx, s, &err, key, klen);
  ps_store_cache_drop(L, sidx, s, key, klen);
  ps_store_record(s, OP_PUT, t0, len);
}

/*
 * Pushes the object under the key at kidx and returns 1, or pushes nothing
 * and returns 0 when the key is absent.
 */
int ps_store_do_get(lua_State *L, int sidx, ps_store *s, int kidx,
                  unsigned flags, int deser, ps_prefetch_slot *slot) {
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  if (s->ops == NULL) {
    lua_getiuservalue(L, sidx, UV_LOCAL);
    lua_pushvalue(L, kidx);
    int t = lua_rawget(L, -2);
    lua_remove(L, -2);
    ps_store_record(s, OP_GET, t0, 0);
    if (t == LUA_TNIL) {
      lua_pop(L, 1);
      return 0;
    }
    if (lua_touserdata(L, -1) == &local_nil) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    return 1;
  }
  /* A per-proxy deserializer makes a value only that proxy may see. */
  ps_cache_node *hit = deser ? NULL : ps_cache_find(&s->cache, key, klen);
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
  } else {
    rc = s->ops->get(s->ctx, (ps_key){key, klen}, use_have ? &have : NULL,
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
  ps_envelope_deserialize(L, sidx, bs->b[0].data, len, deser);
  ps_blob_release(&bs->b[0]);
  ps_store_check_open(L, sidx);   /* a user deserializer may have closed it */
  lua_remove(L, -2);   /* the blob box */
  if (!deser) ps_store_cache_add(L, sidx, s, key, klen, &ver);
  ps_store_record(s, OP_GET, t0, len);
  return 1;
}

static void do_evict(lua_State *L, int sidx, ps_store *s, int kidx) {
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
    if (s->ops->evict(s->ctx, (ps_key){key, klen}, &err) != PS_BOK)
      ps_store_raise_backend(L, sidx, s, &err, key, klen);
  }
  ps_store_record(s, OP_EVICT, t0, 0);
}

/* ---- resolution, for proxies ------------------------------------------------ */

void ps_store_resolve_ex(lua_State *L, int sidx, int kidx, unsigned flags,
                         int deser, ps_prefetch_slot *slot) {
  sidx = lua_absindex(L, sidx);
  kidx = lua_absindex(L, kidx);
  if (deser) deser = lua_absindex(L, deser);
  ps_store *s = ps_store_check_open(L, sidx);
  if (!ps_store_do_get(L, sidx, s, kidx, flags, deser, slot)) {
    size_t klen;
    const char *key = lua_tolstring(L, kidx, &klen);
    const char *name = ps_store_name(L, sidx);
    const char *addr = address(s);
    ps_error_raise(L, PS_EMISSING_KEY,
                   &(ps_errctx){.key = key, .keylen = klen, .store = name,
                                .address = addr},
                   "no object under key '%s' in store '%s'%s%s", key, name,
                   addr ? " at " : "", addr ? addr : "");
  }
  if (flags & PS_PROXY_EVICT) do_evict(L, sidx, s, kidx);
}

void ps_store_resolve(lua_State *L, int sidx, int kidx, unsigned flags) {
  ps_store_resolve_ex(L, sidx, kidx, flags, 0, NULL);
}

void ps_prefetch_slot_free(ps_prefetch_slot *slot) {
  if (slot && *slot) {
    ps_prefetch_free(*slot);
    *slot = NULL;
  }
}

void ps_store_prefetch(lua_State *L, int sidx, int kidx, unsigned flags,
                       ps_prefetch_slot *slot) {
  ps_store *s = ps_store_check_open(L, sidx);
  size_t klen;
  const char *key = lua_tolstring(L, kidx, &klen);
  if (s->ops == NULL || *slot) return;
  if (!(flags & PS_PROXY_STRICT) && ps_cache_find(&s->cache, key, klen))
    return;   /* first use will be a cache hit anyway */
  ps_berr err = {0, ""};
  *slot = ps_prefetch_start(s->ops, &s->bcfg, (ps_key){key, klen}, &err);
  if (*slot == NULL) ps_store_raise_backend(L, sidx, s, &err, key, klen);
}

/* ---- the registry --------------------------------------------------------- */

static void push_registry(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY);
}

void ps_store_lookup(lua_State *L, const char *name) {
  push_registry(L);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

static void copy_table(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

void ps_store_push_config(lua_State *L, int sidx) {
  ps_store_check(L, sidx);
  lua_getiuservalue(L, sidx, UV_CONFIG);
  copy_table(L, -1);
  lua_remove(L, -2);
}

static int l_new_store(lua_State *L);

/* The registered store's kind equals kind (and, for local stores, it is
 * the very store that made the proxy: same instance). */
static int same_store(lua_State *L, int store, int cfg, const char *kind) {
  lua_getiuservalue(L, store, UV_CONFIG);
  lua_getfield(L, -1, "kind");
  int same = lua_type(L, -1) == LUA_TSTRING &&
             strcmp(lua_tostring(L, -1), kind) == 0;
  if (same && strcmp(kind, "local") == 0) {
    lua_getfield(L, -2, "instance");
    lua_getfield(L, cfg, "instance");
    same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
  return same;
}

void ps_store_from_config(lua_State *L, int cfg) {
  cfg = lua_absindex(L, cfg);
  int base = lua_gettop(L);   /* the result ends up at base + 1 */
  lua_getfield(L, cfg, "name");
  lua_getfield(L, cfg, "kind");
  if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
    ps_error_raise(L, PS_ECONFIG, NULL, "store config needs name and kind");
  const char *name = lua_tostring(L, -2);
  const char *kind = lua_tostring(L, -1);
  ps_store_lookup(L, name);
  if (!lua_isnil(L, -1)) {
    if (same_store(L, lua_gettop(L), cfg, kind)) {
      lua_replace(L, -3);
      lua_pop(L, 1);
      return;
    }
    if (strcmp(kind, "local") != 0)
      ps_error_raise(L, PS_ERESOLVE, &(ps_errctx){.store = name},
                     "the proxy's store '%s' is a %s store, but the store "
                     "registered under that name is not", name, kind);
  }
  if (strcmp(kind, "local") == 0)
    ps_error_raise(L, PS_ERESOLVE, &(ps_errctx){.store = name},
                   "local store '%s' was closed or lives in another "
                   "process; a local store proxy resolves only in the "
                   "process and store that made it "
                   "(use a file or redis store to share objects)", name);
  /*
   * A carried config never deletes anything, and never brings back a file
   * store whose directory is gone (e.g. a pool's private store).
   */
  copy_table(L, cfg);
  int copy = lua_gettop(L);
  lua_pushnil(L);
  lua_setfield(L, copy, "clear");
  if (strcmp(kind, "file") == 0) {
    struct stat st;
    lua_getfield(L, copy, "dir");
    const char *dir = lua_tostring(L, -1);
    if (lua_type(L, -1) != LUA_TSTRING || stat(dir, &st) != 0 ||
        !S_ISDIR(st.st_mode))
      ps_error_raise(L, PS_ERESOLVE,
                     &(ps_errctx){.store = name, .address = dir},
                     "file store '%s': directory %s no longer exists", name,
                     dir ? dir : "(none)");
    lua_pop(L, 1);
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, FACTORY) == LUA_TFUNCTION) {
    lua_pushvalue(L, copy);
    lua_call(L, 1, 1);
    ps_store_check(L, -1);
  } else {
    lua_pop(L, 1);
    lua_pushcfunction(L, l_new_store);
    lua_pushvalue(L, copy);
    lua_call(L, 1, 1);
  }
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
}

/* ---- Lua-facing functions -------------------------------------------------- */

/*
 * A string option, or NULL when absent. Only real strings are taken, so the
 * pointer stays anchored in cfg (lua_tostring on a number would convert a
 * copy that is popped). Configs may come from another process: anything
 * else is a config error.
 */
static const char *cfg_string(lua_State *L, int cfg, const char *field) {
  int t = lua_getfield(L, cfg, field);
  if (t != LUA_TSTRING && t != LUA_TNIL)
    ps_error_raise(L, PS_ECONFIG, NULL, "store option '%s' must be a string",
                   field);
  size_t len = 0;
  const char *v = lua_tolstring(L, -1, &len);
  /* C sees a string up to its first NUL: "/tmp/a\0/etc" would open /tmp/a
   * while config() reported the whole string. */
  if (v != NULL && strlen(v) != len)
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "store option '%s' must not contain a NUL byte", field);
  lua_pop(L, 1);
  return v;
}

/*
 * A relative file store dir becomes absolute here, once, from the real
 * working directory (not $PWD, which a chdir or a non-shell parent leaves
 * stale): config() then names the same directory in any process.
 */
static void absolutize_dir(lua_State *L, int cfg) {
  if (lua_getfield(L, cfg, "dir") != LUA_TSTRING ||
      lua_tostring(L, -1)[0] == '/' || lua_tostring(L, -1)[0] == '\0') {
    lua_pop(L, 1);
    return;
  }
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd) == NULL)
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "file store dir '%s' is relative and the current "
                   "directory is unknown (%s)", lua_tostring(L, -1),
                   strerror(errno));
  lua_pushfstring(L, "%s/%s", strcmp(cwd, "/") ? cwd : "",
                  lua_tostring(L, -1));
  lua_setfield(L, cfg, "dir");
  lua_pop(L, 1);
}

/*
 * An integer option in [lo, hi], or def when absent. Anything else is a
 * config error, never a silent default or a truncating cast (db 2^32 once
 * became db 0): configs may come from another process.
 */
static lua_Integer cfg_int(lua_State *L, int cfg, const char *field,
                           lua_Integer def, lua_Integer lo, lua_Integer hi) {
  int t = lua_getfield(L, cfg, field);
  int isint;
  lua_Integer v = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (t == LUA_TNIL) return def;
  if (t != LUA_TNUMBER || !isint || v < lo || v > hi)
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "store option '%s' must be an integer in [%I, %I]", field,
                   (lua_Integer)lo, (lua_Integer)hi);
  return v;
}

/*
 * core.new_store(cfg [, serializer, deserializer]): cfg is normalized by
 * the Lua face (name, kind, cache_size, serializer, backend options).
 */
static int l_new_store(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  const char *name = cfg_string(L, 1, "name");
  const char *kind = cfg_string(L, 1, "kind");
  if (name == NULL || kind == NULL)
    return ps_error_raise(L, PS_ECONFIG, NULL,
                          "store config needs name and kind");
  ps_store_lookup(L, name);
  if (!lua_isnil(L, -1))
    return ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.store = name},
                          "a store named '%s' already exists (close it or "
                          "choose another name)", name);
  lua_pop(L, 1);
  const ps_backend_ops *ops = NULL;
  if (strcmp(kind, "local") != 0 && (ops = ps_backend_find(kind)) == NULL)
    return ps_error_raise(L, PS_ECONFIG, NULL, "unknown store kind '%s'",
                          kind);
  lua_Integer cache_size = cfg_int(L, 1, "cache_size", 16, 0, LUA_MAXINTEGER);

  ps_store *s = lua_newuserdatauv(L, sizeof *s, UV_N);   /* 4 */
  memset(s, 0, sizeof *s);
  ps_cache_init(&s->cache, (size_t)cache_size);
  luaL_setmetatable(L, STORE_MT);
  copy_table(L, 1);
  lua_setiuservalue(L, 4, UV_CONFIG);
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_LOCAL);
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_CACHE);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 4, UV_SER);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 4, UV_DESER);

  lua_getiuservalue(L, 4, UV_CONFIG);   /* 5: strings below live here */
  /* clear is this process's request only: a config carried by a proxy
   * re-creates a store that never deletes anything. */
  lua_getfield(L, 5, "clear");
  int clear = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setfield(L, 5, "clear");
  const char *ser = cfg_string(L, 5, "serializer");
  if (lua_isfunction(L, 2)) s->serializer = ENV_CUSTOM;
  else if (ser == NULL || strcmp(ser, "native") == 0) s->serializer = ENV_NATIVE;
  else if (strcmp(ser, "json") == 0) s->serializer = ENV_JSON;
  else
    return ps_error_raise(L, PS_ECONFIG, NULL, "unknown serializer '%s'", ser);
  if (ops) {
    if (strcmp(kind, "file") == 0) absolutize_dir(L, 5);
    ps_bconfig *b = &s->bcfg;
    b->host = cfg_string(L, 5, "host");
    b->port = (int)cfg_int(L, 5, "port", 6379, 1, 65535);
    b->path = cfg_string(L, 5, "path");
    b->db = (int)cfg_int(L, 5, "db", 0, 0, INT_MAX);
    b->username = cfg_string(L, 5, "username");
    b->password = cfg_string(L, 5, "password");
    lua_getfield(L, 5, "timeout");
    b->timeout = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 5.0;
    lua_pop(L, 1);
    b->prefix = cfg_string(L, 5, "prefix");
    b->dir = cfg_string(L, 5, "dir");
    b->recycle = (int)cfg_int(L, 5, "recycle", 0, 0, 64);
    b->clear = clear;
    ps_berr err = {0, ""};
    s->ctx = ops->open(b, &err);
    if (s->ctx == NULL)
      return ps_store_raise_backend(L, 4, s, &err, NULL, 0);
    s->ops = ops;
  }
  s->open = 1;
  push_registry(L);
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, name);
  lua_pushvalue(L, 4);
  return 1;
}

static int l_get_store(lua_State *L) {
  ps_store_lookup(L, luaL_checkstring(L, 1));
  return 1;
}

static int l_set_store_factory(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FACTORY);
  return 0;
}

/* Key for a put: opts.key at opts (0: none), else 128 random bits. */
static int push_put_key(lua_State *L, int opts) {
  if (opts && lua_getfield(L, opts, "key") != LUA_TNIL) {
    size_t len;
    ps_store_check_key(L, lua_gettop(L), &len);
    return lua_gettop(L);
  }
  if (opts) lua_pop(L, 1);
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  return lua_gettop(L);
}

int ps_store_opt_table(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return idx;
}

int ps_store_opt_field(lua_State *L, int opts, const char *field) {
  if (!opts) return 0;
  lua_getfield(L, opts, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return lua_gettop(L);
}

unsigned ps_store_proxy_flags(lua_State *L, int opts) {
  unsigned flags = 0;
  if (!opts) return 0;
  if (lua_getfield(L, opts, "evict"), lua_toboolean(L, -1)) flags |= PS_PROXY_EVICT;
  if (lua_getfield(L, opts, "strict"), lua_toboolean(L, -1)) flags |= PS_PROXY_STRICT;
  lua_pop(L, 2);
  return flags;
}

static int store_put(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  luaL_checkany(L, 2);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  int k = push_put_key(L, opts);
  ps_store_do_put(L, 1, s, 2, k, ps_store_opt_field(L, opts, "serializer"));
  lua_pushvalue(L, k);
  return 1;
}

static int store_get(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key(L, 2, &klen);
  lua_settop(L, 3);
  if (!ps_store_do_get(L, 1, s, 2, 0, 0, NULL)) lua_pushvalue(L, 3);
  return 1;
}

static int store_exists(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  const char *key = ps_store_check_key(L, 2, &klen);
  double t0 = s->ops ? ps_store_now() : 0;
  int found;
  if (s->ops == NULL) {
    lua_getiuservalue(L, 1, UV_LOCAL);
    lua_pushvalue(L, 2);
    found = lua_rawget(L, -2) != LUA_TNIL;
  } else {
    ps_berr err = {0, ""};
    if (s->ops->exists(s->ctx, (ps_key){key, klen}, &found, &err) != PS_BOK)
      ps_store_raise_backend(L, 1, s, &err, key, klen);
  }
  ps_store_record(s, OP_EXISTS, t0, 0);
  lua_pushboolean(L, found);
  return 1;
}

static int store_evict(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key(L, 2, &klen);
  do_evict(L, 1, s, 2);
  return 0;
}

/* Gives the proxy on top its per-proxy deserializer from opts, if any. */
static void set_proxy_deserializer(lua_State *L, int opts) {
  int d = ps_store_opt_field(L, opts, "deserializer");
  if (d == 0) return;
  luaL_argexpected(L, lua_isfunction(L, d), opts, "deserializer function");
  lua_setiuservalue(L, -2, 1);
}

static int store_proxy(lua_State *L) {
  ps_store *s = ps_store_check_open(L, 1);
  luaL_checkany(L, 2);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  int k = push_put_key(L, opts);
  ps_store_do_put(L, 1, s, 2, k, ps_store_opt_field(L, opts, "serializer"));
  ps_proxy_push_store_ref(L, 1, k, ps_store_proxy_flags(L, opts));
  set_proxy_deserializer(L, opts);
  return 1;
}

static int store_proxy_from_key(lua_State *L) {
  ps_store_check_open(L, 1);
  size_t klen;
  ps_store_check_key(L, 2, &klen);
  int opts = ps_store_opt_table(L, 3);
  lua_settop(L, 3);
  ps_proxy_push_store_ref(L, 1, 2, ps_store_proxy_flags(L, opts));
  set_proxy_deserializer(L, opts);
  return 1;
}

static int store_config(lua_State *L) {
  ps_store_check(L, 1);
  ps_store_push_config(L, 1);
  return 1;
}

static int store_metrics(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  lua_createtable(L, 0, OP_N + 1);
  for (int i = 0; i < OP_N; i++) {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s->m[i].count);
    lua_setfield(L, -2, "count");
    lua_pushinteger(L, s->m[i].bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushnumber(L, s->m[i].total);
    lua_setfield(L, -2, "time_total");
    lua_pushnumber(L, s->m[i].max);
    lua_setfield(L, -2, "time_max");
    lua_setfield(L, -2, op_names[i]);
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, s->hits);
  lua_setfield(L, -2, "hits");
  lua_pushinteger(L, s->misses);
  lua_setfield(L, -2, "misses");
  lua_pushinteger(L, (lua_Integer)s->cache.count);
  lua_setfield(L, -2, "size");
  lua_setfield(L, -2, "cache");
  return 1;
}

/* Releases the backend and cache; safe on a half-built store, idempotent. */
static void release(ps_store *s) {
  if (s->ops && s->ctx) s->ops->close(s->ctx);
  s->ctx = NULL;
  s->ops = NULL;
  s->open = 0;
  ps_cache_free(&s->cache);
}

static int store_close(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  if (s->open) {
    push_registry(L);
    const char *name = ps_store_name(L, 1);
    lua_getfield(L, -1, name);
    if (lua_rawequal(L, -1, 1)) {
      lua_pushnil(L);
      lua_setfield(L, -3, name);
    }
    lua_pop(L, 2);
  }
  release(s);
  lua_newtable(L);
  lua_setiuservalue(L, 1, UV_CACHE);
  return 0;
}

static int store_gc(lua_State *L) {
  release(luaL_checkudata(L, 1, STORE_MT));
  return 0;
}

static int store_tostring(lua_State *L) {
  ps_store *s = ps_store_check(L, 1);
  lua_getiuservalue(L, 1, UV_CONFIG);
  lua_getfield(L, -1, "name");
  lua_getfield(L, -2, "kind");
  lua_pushfstring(L, "proxystore.Store: %s (%s%s)", lua_tostring(L, -2),
                  lua_tostring(L, -1), s->open ? "" : ", closed");
  return 1;
}

static int store_index(lua_State *L) {
  ps_store_check(L, 1);
  const char *field = lua_tostring(L, 2);
  if (field && (strcmp(field, "name") == 0 || strcmp(field, "kind") == 0)) {
    lua_getiuservalue(L, 1, UV_CONFIG);
    lua_getfield(L, -1, field);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static const luaL_Reg store_methods[] = {
  {"put", store_put},
  {"get", store_get},
  {"exists", store_exists},
  {"evict", store_evict},
  {"proxy", store_proxy},
  {"proxy_from_key", store_proxy_from_key},
  {"put_batch", ps_store_put_batch},
  {"get_batch", ps_store_get_batch},
  {"proxy_batch", ps_store_proxy_batch},
  {"config", store_config},
  {"metrics", store_metrics},
  {"close", store_close},
  {NULL, NULL}};

static int l_random_key(lua_State *L) {
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  return 1;
}

static const luaL_Reg store_funcs[] = {
  {"random_key", l_random_key},
  {"new_store", l_new_store},
  {"get_store", l_get_store},
  {"set_store_factory", l_set_store_factory},
  {NULL, NULL}};

void ps_store_open(lua_State *L) {
  luaL_newmetatable(L, STORE_MT);
  /* getmetatable(store) must not hand out __gc to be called on any value */
  lua_pushliteral(L, STORE_MT);
  lua_setfield(L, -2, "__metatable");
  lua_pushcfunction(L, store_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, store_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, store_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, store_close);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, store_methods);
  lua_setfield(L, -2, "__methods");
  lua_pop(L, 1);
  luaL_newmetatable(L, BLOBS_MT);
  lua_pushcfunction(L, blobs_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  /* One registry per Lua state, kept if the module is loaded again. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY) != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REGISTRY);
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, store_funcs, 0);
}
