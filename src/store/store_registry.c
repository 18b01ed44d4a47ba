/*
 * store_registry.c: the registry of stores by name, one per Lua state, and
 * store creation: core.new_store from a normalized config, and the
 * re-creation of a store from the config a proxy carries from another
 * process (never with a destructive option).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "ps_backends.h"

void ps_store_registry_push(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY);
}

void ps_store_unregister(lua_State *L, int sidx) {
  ps_store_registry_push(L);
  const char *name = ps_store_name(L, sidx);
  lua_getfield(L, -1, name);
  if (lua_rawequal(L, -1, sidx)) {
    lua_pushnil(L);
    lua_setfield(L, -3, name);
  }
  lua_pop(L, 2);
}

void ps_store_lookup(lua_State *L, const char *name) {
  ps_store_registry_push(L);
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
  /* a list option (cluster) is copied too: the store's own must not
     change under it */
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      copy_table(L, -1);
      lua_replace(L, -2);
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    } else {
      lua_pop(L, 1);
    }
  }
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
   * A carried config never deletes anything, never recycles files in
   * place, never waits for ever (a timeout of 0, "none", becomes the
   * default), and never brings back a file store whose directory is gone
   * (e.g. a pool's private store).
   */
  copy_table(L, cfg);
  int copy = lua_gettop(L);
  lua_pushnil(L);
  lua_setfield(L, copy, "clear");
  lua_pushnil(L);
  lua_setfield(L, copy, "recycle");
  if (lua_getfield(L, copy, "timeout") == LUA_TNUMBER &&
      !(lua_tonumber(L, -1) > 0)) {
    lua_pushnil(L);
    lua_setfield(L, copy, "timeout");
  }
  lua_pop(L, 1);
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

void ps_store_from_registry(lua_State *L, int cfg) {
  cfg = lua_absindex(L, cfg);
  lua_getfield(L, cfg, "name");
  lua_getfield(L, cfg, "kind");
  if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
    ps_error_raise(L, PS_ECONFIG, NULL, "store config needs name and kind");
  const char *name = lua_tostring(L, -2);
  const char *kind = lua_tostring(L, -1);
  ps_store_lookup(L, name);
  if (lua_isnil(L, -1))
    ps_error_raise(L, PS_ERESOLVE, &(ps_errctx){.store = name},
                   "untrusted proxy names store '%s', which is not "
                   "registered in this process (a proxy from untrusted "
                   "input resolves only through a store registered under "
                   "its name, never one made from the config it carries)",
                   name);
  if (!same_store(L, lua_gettop(L), cfg, kind))
    ps_error_raise(L, PS_ERESOLVE, &(ps_errctx){.store = name},
                   "untrusted proxy names a %s store '%s', but the store "
                   "registered under that name is not that store", kind,
                   name);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* ---- creating stores ------------------------------------------------------- */

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

/* Pushes the address a backend reports once open (see redis_conn.c and
 * backend_file.c), for the error of one that could not open. */
static const char *push_config_address(lua_State *L, const char *kind,
                                       const ps_bconfig *b) {
  if (strcmp(kind, "file") == 0 || b->path)
    return lua_pushstring(L, strcmp(kind, "file") == 0 ? b->dir : b->path);
  const char *host = b->host ? b->host : "127.0.0.1";
  return lua_pushfstring(L, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
                         b->port);
}

/*
 * The seeds of a Redis Cluster, cfg.cluster = {"host:port", ...}, joined
 * by ',' into s->cluster (NULL when absent). Configs may come from another
 * process: anything but a non-empty list of plain strings is refused.
 */
static void cluster_seeds(lua_State *L, int cfg, ps_store *s) {
  int t = lua_getfield(L, cfg, "cluster");
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_Integer n = t == LUA_TTABLE ? luaL_len(L, -1) : 0;
  if (n < 1 || n > 1024)
    ps_error_raise(L, PS_ECONFIG, NULL, "store option 'cluster' must be a "
                   "list of 1 to 1024 \"host:port\" strings");
  size_t total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    const char *v = lua_rawgeti(L, -1, i) == LUA_TSTRING
                        ? lua_tolstring(L, -1, &len) : NULL;
    if (v == NULL || len == 0 || len > 300 || strlen(v) != len ||
        strchr(v, ','))
      ps_error_raise(L, PS_ECONFIG, NULL, "store option 'cluster': entry %I "
                     "must be a \"host:port\" string", i);
    total += len + 1;
    lua_pop(L, 1);
  }
  s->cluster = malloc(total);   /* freed by the store's release */
  if (s->cluster == NULL) ps_error_raise(L, PS_ESTORE, NULL, "out of memory");
  char *p = s->cluster;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, -1, i);
    const char *v = lua_tolstring(L, -1, &len);
    memcpy(p, v, len);
    p += len;
    *p++ = i < n ? ',' : '\0';
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
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
  lua_Integer cache_bytes = cfg_int(L, 1, "cache_bytes", PS_CACHE_BYTES, 0,
                                    LUA_MAXINTEGER);

  ps_store *s = lua_newuserdatauv(L, sizeof *s, UV_N);   /* 4 */
  memset(s, 0, sizeof *s);
  ps_cache_init(&s->cache, (size_t)cache_size, (size_t)cache_bytes);
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
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_LEASES);
  lua_newtable(L);
  lua_setiuservalue(L, 4, UV_OWNED);

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
    cluster_seeds(L, 5, s);
    b->cluster = s->cluster;
    b->dir = cfg_string(L, 5, "dir");
    b->recycle = (int)cfg_int(L, 5, "recycle", 0, 0, 64);
    b->clear = clear;
    ps_berr err = {0, ""};
    s->ctx = ops->open(b, &err);
    if (s->ctx == NULL)
      return ps_store_raise_backend_at(L, 4, &err, NULL, 0,
                                       push_config_address(L, kind, b));
    s->ops = ops;
  }
  s->open = 1;
  ps_store_registry_push(L);
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, name);
  lua_pushvalue(L, 4);
  return 1;
}

static int l_get_store(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) ps_typeerror(L, 1, "string");
  ps_store_lookup(L, lua_tostring(L, 1));
  return 1;
}

static int l_set_store_factory(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FACTORY);
  return 0;
}

static int l_random_key(lua_State *L) {
  char key[33];
  ps_key_random(key);
  lua_pushlstring(L, key, 32);
  return 1;
}

static const luaL_Reg registry_funcs[] = {
  {"random_key", l_random_key},
  {"new_store", l_new_store},
  {"get_store", l_get_store},
  {"set_store_factory", l_set_store_factory},
  {NULL, NULL}};

void ps_store_registry_open(lua_State *L) {
  /* One registry per Lua state, kept if the module is loaded again. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, REGISTRY) != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REGISTRY);
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, registry_funcs, 0);
  /* A config without cache_bytes has this bound (the option is left out
     of configs that do not set it, so older readers accept them). */
  lua_pushinteger(L, PS_CACHE_BYTES);
  lua_setfield(L, -2, "cache_bytes_default");
}
