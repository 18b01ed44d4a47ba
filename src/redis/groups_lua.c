/*
 * groups_lua.c: the Lua face of groups.c (Redis streams and consumer
 * groups) for the queue pool and streams of proxies.
 *
 *   local g = core.redis_groups{host=, port=, path=, db=, username=,
 *                               password=, timeout=}   -- connects (PING)
 *   g:create_group(stream, group [, start = "0"])
 *   g:destroy_group(stream, group) -> existed
 *   g:delete_consumer(stream, group, consumer) -> pending entries dropped
 *   g:group_info(stream, group) -> {consumers=, pending=, entries_read=,
 *                                   lag=, last_delivered=}
 *   g:add(stream, entries [, trim]) -> ids   entries: list of field tables
 *       ({name = value} or {name, value, ...}); trim: {maxlen = n} or
 *       {minid = id}, with approx = true for "~"
 *   g:trim(stream, trim) -> removed   g:delete(stream, ids) -> deleted
 *   g:length(stream) -> n
 *   g:read_group(stream, group, consumer, from, count [, block [, pre]])
 *                        -> entries, woken [, pre's reply]
 *                        pre: a command ({word, arg...}) sent first in the
 *                        same write, its reply as g:call's (an error reply
 *                        as an error object, not raised), read even when
 *                        the read is woken
 *   g:read(stream, from, count [, block]) -> entries, woken
 *   g:range(stream, start, end, count) -> entries
 *   g:revrange(stream, end, start, count) -> entries, newest first
 *   g:ack_read_group(stream, group, consumer, ack_ids, from, count [, block])
 *       -> entries, woken, acked   (XACK and XREADGROUP in one round trip)
 *       entry: {id = "...", fields = {name = value}} (deleted = true and no
 *       fields for a pending entry gone from the stream); block in seconds,
 *       nil: answer at once
 *   g:ack(stream, group, ids) -> acked
 *   g:autoclaim(stream, group, consumer, min_idle, start, count
 *               [, deliveries]) -> entries, next, deleted ids
 *       (deliveries = true: each entry's delivery count, from XPENDING)
 *   g:reclaim(stream, group, consumer, min_idle, count [, cursor])
 *       -> entries (with deliveries), next cursor: what others held idle
 *       for min_idle seconds, entries gone from the stream acknowledged
 *       and left out (ps_rg_reclaim)
 *   g:pending(stream, group [, {min_idle=, start=, stop=, count=,
 *             consumer=}]) -> {{id=, consumer=, idle=, deliveries=}, ...}
 *   g:pending_summary(stream, group) -> count, lowest id or nil
 *   g:touch(stream, group, consumer, ids) -> {true|false, ...}
 *   g:call, g:pipeline, g:call_blocking: any command (groups_lua_call.c)
 *   g:set_wake_fd(fd)  g:woken() -> bool  g:sleep(seconds) -> woken
 *   g:address()  g:connects() -> connections opened so far
 *   g:close()  (also __gc, __close)
 *
 * Errors are proxystore errors: "connection", "timeout", "config",
 * "missing_key" (no such stream or group: NOGROUP), "store" (any other
 * error reply, with the server's text).
 *
 * Every C result is put in a box userdata before anything is pushed, so
 * a Lua error (out of memory) frees it through __gc.
 */
#include <stdlib.h>
#include <string.h>

#include "ps.h"
#include "groups_lua.h"

#define GROUPS_MT "proxystore.RedisGroups"
#define BOX_MT "proxystore.RedisReply"

typedef struct handle {
  ps_rgroups *g;
} handle;

typedef ps_rgl_box box;

static int box_gc(lua_State *L) {
  box *b = luaL_checkudata(L, 1, BOX_MT);
  ps_rentries_free(&b->es);
  ps_rpendings_free(&b->ps);
  for (size_t i = 0; i < b->nvals; i++) ps_rvalue_free(&b->vals[i]);
  free(b->vals);
  b->vals = NULL;
  b->nvals = 0;
  return 0;
}

box *ps_rgl_push_box(lua_State *L) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, BOX_MT);
  return b;
}

static handle *check_handle(lua_State *L) {
  return luaL_checkudata(L, 1, GROUPS_MT);
}

ps_rgroups *ps_rgl_check(lua_State *L) {
  handle *h = check_handle(L);
  if (h->g == NULL)
    ps_error_raise(L, PS_ECLOSED, NULL, "redis groups handle is closed");
  return h->g;
}

int ps_rgl_raise(lua_State *L, ps_rgroups *g, const ps_berr *err) {
  const char *kind = err->code == PS_BCONN      ? PS_ECONNECTION
                     : err->code == PS_BTIMEOUT  ? PS_ETIMEOUT
                     : err->code == PS_BCONFIG   ? PS_ECONFIG
                     : err->code == PS_BNOTFOUND ? PS_EMISSING_KEY
                                                 : PS_ESTORE;
  ps_errctx ctx = {.address = ps_rg_address(g)};
  return ps_error_raise(L, kind, &ctx, "%s", err->msg);
}

/* ---- replies as Lua values ----------------------------------------------- */

static void push_entries(lua_State *L, const ps_rentries *es, int deliveries) {
  lua_createtable(L, (int)es->n, 0);
  for (size_t i = 0; i < es->n; i++) {
    const ps_rentry *e = &es->e[i];
    lua_createtable(L, 0, 3);
    lua_pushstring(L, e->id);
    lua_setfield(L, -2, "id");
    if (e->deleted) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "deleted");
    } else {
      lua_createtable(L, 0, (int)e->nfields);
      for (size_t j = 0; j < e->nfields; j++) {
        lua_pushlstring(L, e->fv[2 * j].str, e->fv[2 * j].len);
        lua_pushlstring(L, e->fv[2 * j + 1].str, e->fv[2 * j + 1].len);
        lua_rawset(L, -3);
      }
      lua_setfield(L, -2, "fields");
    }
    if (deliveries) {
      lua_pushinteger(L, e->deliveries);
      lua_setfield(L, -2, "deliveries");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* ---- arguments -------------------------------------------------------------- */

/* A list of strings at idx as a C array (memory owned by a userdata pushed
   on the stack, strings by the list). */
static const char **check_ids(lua_State *L, int idx, size_t *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  *n = (size_t)lua_rawlen(L, idx);
  const char **ids = lua_newuserdatauv(L, (*n ? *n : 1) * sizeof *ids, 0);
  for (size_t i = 0; i < *n; i++) {
    if (lua_rawgeti(L, idx, (lua_Integer)i + 1) != LUA_TSTRING)
      luaL_error(L, "bad argument #%d (ids must be strings)", idx - 1);
    ids[i] = lua_tostring(L, -1);
    lua_pop(L, 1);   /* still held by the list */
  }
  return ids;
}

/* {maxlen = n} or {minid = id}, approx = true for "~". */
static void check_trim(lua_State *L, int idx, ps_rtrim *t) {
  memset(t, 0, sizeof *t);
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "maxlen");
  lua_getfield(L, idx, "minid");
  lua_getfield(L, idx, "approx");
  t->approx = lua_toboolean(L, -1);
  if (!lua_isnil(L, -3)) {
    t->how = PS_RTRIM_MAXLEN;
    t->maxlen = (long long)luaL_checkinteger(L, -3);
  } else if (!lua_isnil(L, -2)) {
    t->how = PS_RTRIM_MINID;
    t->minid = luaL_checkstring(L, -2);   /* held by the trim table */
  }
  lua_pop(L, 3);
}

/* A string argument of a command: strings as they are, numbers as Lua
   writes them (kept alive in the anchor table at anchor). */
const char *ps_rgl_arg_string(lua_State *L, int anchor, size_t *len) {
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_error(L, "redis command arguments must be strings or numbers, got %s",
               luaL_typename(L, -1));
  const char *s = lua_tolstring(L, -1, len);
  if (t == LUA_TNUMBER) {   /* a new string: only the stack holds it */
    lua_pushvalue(L, -1);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
  }
  return s;
}

/* ---- the handle ---------------------------------------------------------- */

static const char *opt_string(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);   /* still held by the table */
  return s;
}

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer d) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isnil(L, -1) ? d : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

static int l_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  ps_bconfig cfg = {0};
  cfg.host = opt_string(L, 1, "host");
  cfg.path = opt_string(L, 1, "path");
  cfg.port = (int)opt_int(L, 1, "port", 6379);
  cfg.db = (int)opt_int(L, 1, "db", 0);
  cfg.username = opt_string(L, 1, "username");
  cfg.password = opt_string(L, 1, "password");
  lua_getfield(L, 1, "timeout");
  cfg.timeout = lua_isnil(L, -1) ? 5.0 : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->g = NULL;
  luaL_setmetatable(L, GROUPS_MT);
  ps_berr err = {0, ""};
  h->g = ps_rg_open(&cfg, &err);
  if (h->g == NULL) {
    const char *kind = err.code == PS_BCONFIG    ? PS_ECONFIG
                       : err.code == PS_BTIMEOUT ? PS_ETIMEOUT
                                                 : PS_ECONNECTION;
    return ps_error_raise(L, kind, NULL, "%s", err.msg);
  }
  return 1;
}

static int l_close(lua_State *L) {
  handle *h = check_handle(L);
  ps_rg_close(h->g);
  h->g = NULL;
  return 0;
}

static int l_tostring(lua_State *L) {
  handle *h = check_handle(L);
  if (h->g)
    lua_pushfstring(L, "proxystore.RedisGroups: %s", ps_rg_address(h->g));
  else
    lua_pushliteral(L, "proxystore.RedisGroups: closed");
  return 1;
}

static int l_address(lua_State *L) {
  lua_pushstring(L, ps_rg_address(ps_rgl_check(L)));
  return 1;
}

static int l_connects(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ps_rg_connects(ps_rgl_check(L)));
  return 1;
}

static int l_set_wake_fd(lua_State *L) {
  ps_rg_set_wake_fd(ps_rgl_check(L), (int)luaL_optinteger(L, 2, -1));
  return 0;
}

static int l_woken(lua_State *L) {
  lua_pushboolean(L, ps_rg_woken(ps_rgl_check(L)));
  return 1;
}

static int l_sleep(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  double s = luaL_checknumber(L, 2);
  lua_pushboolean(L, ps_rg_sleep(g, s < 0 ? 0 : s));
  return 1;
}

/* ---- groups --------------------------------------------------------------- */

static int l_create_group(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  if (ps_rg_create_group(g, luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                         luaL_optstring(L, 4, "0"), &err))
    return ps_rgl_raise(L, g, &err);
  return 0;
}

static int l_destroy_group(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  int existed = 0;
  if (ps_rg_destroy_group(g, luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                          &existed, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushboolean(L, existed);
  return 1;
}

static int l_delete_consumer(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  long long dropped = 0;
  if (ps_rg_delete_consumer(g, luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                            luaL_checkstring(L, 4), &dropped, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)dropped);
  return 1;
}

static int l_group_info(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  ps_rgroup_info info;
  if (ps_rg_group_info(g, luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                       &info, &err))
    return ps_rgl_raise(L, g, &err);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)info.consumers);
  lua_setfield(L, -2, "consumers");
  lua_pushinteger(L, (lua_Integer)info.pending);
  lua_setfield(L, -2, "pending");
  if (info.entries_read >= 0) {
    lua_pushinteger(L, (lua_Integer)info.entries_read);
    lua_setfield(L, -2, "entries_read");
  }
  if (info.lag >= 0) {
    lua_pushinteger(L, (lua_Integer)info.lag);
    lua_setfield(L, -2, "lag");
  }
  lua_pushstring(L, info.last_delivered);
  lua_setfield(L, -2, "last_delivered");
  return 1;
}

/* ---- adding and trimming --------------------------------------------------- */

static int l_add(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  ps_rtrim trim;
  check_trim(L, 4, &trim);
  lua_settop(L, 4);
  lua_newtable(L);   /* 5: anchors numbers turned into strings */
  size_t n = (size_t)lua_rawlen(L, 3), total = 0;
  for (size_t i = 0; i < n; i++) {
    if (lua_rawgeti(L, 3, (lua_Integer)i + 1) != LUA_TTABLE)
      return luaL_error(L, "bad argument #2 to 'add' (entry %d is not a table)",
                        (int)i + 1);
    size_t len = (size_t)lua_rawlen(L, -1);
    if (len == 0) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        len += 2;
        lua_pop(L, 1);
      }
    }
    if (len == 0 || len % 2)
      return luaL_error(L, "bad argument #2 to 'add' (entry %d needs "
                        "field/value pairs)", (int)i + 1);
    total += len;
    lua_pop(L, 1);
  }
  char *mem = lua_newuserdatauv(L, (n ? n : 1) * sizeof(ps_rnew) +
                                (total ? total : 1) * sizeof(ps_rbytes) +
                                (n ? n : 1) * PS_RID_MAX, 0);
  ps_rnew *entries = (ps_rnew *)mem;
  ps_rbytes *fv = (ps_rbytes *)(mem + (n ? n : 1) * sizeof(ps_rnew));
  char (*ids)[PS_RID_MAX] = (char (*)[PS_RID_MAX])(fv + (total ? total : 1));
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    size_t len = (size_t)lua_rawlen(L, -1), start = k;
    if (len > 0) {
      for (size_t j = 1; j <= len; j++, k++) {
        lua_rawgeti(L, -1, (lua_Integer)j);
        fv[k].p = ps_rgl_arg_string(L, 5, &fv[k].len);
        lua_pop(L, 1);
      }
    } else {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        lua_pushvalue(L, -2);
        fv[k].p = ps_rgl_arg_string(L, 5, &fv[k].len);
        lua_pop(L, 1);
        k++;
        fv[k].p = ps_rgl_arg_string(L, 5, &fv[k].len);
        lua_pop(L, 1);
        k++;
      }
    }
    entries[i] = (ps_rnew){(k - start) / 2, fv + start};
    lua_pop(L, 1);
  }
  ps_berr err = {0, ""};
  if (ps_rg_add(g, stream, &trim, n, entries, ids, &err))
    return ps_rgl_raise(L, g, &err);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_trim(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2);
  ps_rtrim trim;
  check_trim(L, 3, &trim);
  ps_berr err = {0, ""};
  long long removed = 0;
  if (ps_rg_trim(g, stream, &trim, &removed, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)removed);
  return 1;
}

static int l_delete(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2);
  size_t n;
  const char **ids = check_ids(L, 3, &n);
  ps_berr err = {0, ""};
  long long deleted = 0;
  if (ps_rg_delete(g, stream, n, ids, &deleted, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)deleted);
  return 1;
}

static int l_length(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  long long len = 0;
  if (ps_rg_length(g, luaL_checkstring(L, 2), &len, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)len);
  return 1;
}

/* ---- reading -------------------------------------------------------------- */

/* A block argument in seconds: nil (no BLOCK) or > 0, as milliseconds. */
static long opt_block(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double s = luaL_checknumber(L, idx);
  luaL_argcheck(L, s >= 0 && s <= 86400, idx, "block must be in [0, 86400] s");
  long ms = (long)(s * 1000 + 0.5);
  return ms < 1 ? 1 : ms;
}

static long check_count(lua_State *L, int idx) {
  lua_Integer c = luaL_optinteger(L, idx, 1);
  luaL_argcheck(L, c >= 1 && c <= 1000000, idx, "count out of range");
  return (long)c;
}

static int l_read_group(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  const char *from = luaL_checkstring(L, 5);
  long count = check_count(L, 6);
  long block = opt_block(L, 7);
  const ps_rcmd *pre = NULL;
  if (!lua_isnoneornil(L, 8)) {
    lua_settop(L, 8);
    lua_newtable(L);   /* 9: anchors */
    pre = ps_rgl_check_cmds(L, 8, 8, 9);
  }
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  int woken = 0;
  if (pre) {
    b->vals = calloc(1, sizeof *b->vals);
    if (b->vals == NULL) return ps_error_raise(L, PS_ESTORE, NULL, "out of memory");
    b->nvals = 1;
  }
  if (ps_rg_read_group_after(g, pre, b->vals, stream, group, consumer, from,
                             count, block, &b->es, &woken, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 0);
  lua_pushboolean(L, woken);
  if (!pre) return 2;
  ps_rgl_push_reply(L, g, &b->vals[0]);
  return 3;
}

static int l_read(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *from = luaL_checkstring(L, 3);
  long count = check_count(L, 4);
  long block = opt_block(L, 5);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  int woken = 0;
  if (ps_rg_read(g, stream, from, count, block, &b->es, &woken, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 0);
  lua_pushboolean(L, woken);
  return 2;
}

static int l_range(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2);
  const char *start = luaL_optstring(L, 3, "-"), *end = luaL_optstring(L, 4, "+");
  long count = check_count(L, 5);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  if (ps_rg_range(g, stream, start, end, count, &b->es, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 0);
  return 1;
}

static int l_revrange(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2);
  const char *end = luaL_optstring(L, 3, "+"), *start = luaL_optstring(L, 4, "-");
  long count = check_count(L, 5);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  if (ps_rg_revrange(g, stream, end, start, count, &b->es, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 0);
  return 1;
}

static int l_ack_read_group(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  lua_settop(L, 8);   /* check_ids pushes its array above the arguments */
  size_t nack;
  const char **ids = check_ids(L, 5, &nack);
  const char *from = luaL_checkstring(L, 6);
  long count = check_count(L, 7);
  long block = opt_block(L, 8);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  int woken = 0;
  long long acked = 0;
  if (ps_rg_ack_read_group(g, stream, group, consumer, nack, ids, &acked, from,
                           count, block, &b->es, &woken, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 0);
  lua_pushboolean(L, woken);
  lua_pushinteger(L, (lua_Integer)acked);
  return 3;
}

/* ---- acknowledging, claiming, pending ---------------------------------------- */

static int l_ack(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  size_t n;
  const char **ids = check_ids(L, 4, &n);
  ps_berr err = {0, ""};
  long long acked = 0;
  if (ps_rg_ack(g, stream, group, n, ids, &acked, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)acked);
  return 1;
}

static int l_autoclaim(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  double idle = luaL_checknumber(L, 5);
  const char *start = luaL_optstring(L, 6, "0-0");
  long count = check_count(L, 7);
  int deliveries = lua_toboolean(L, 8);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  if (ps_rg_autoclaim(g, stream, group, consumer,
                      (long long)(idle * 1000 + 0.5), start, count, &b->es,
                      &err) ||
      (deliveries && ps_rg_deliveries(g, stream, group, &b->es, &err)))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, deliveries);
  lua_pushstring(L, b->es.next);
  lua_createtable(L, (int)b->es.ndeleted, 0);
  for (size_t i = 0; i < b->es.ndeleted; i++) {
    lua_pushlstring(L, b->es.deleted[i].str, b->es.deleted[i].len);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 3;
}

static int l_reclaim(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  double idle = luaL_checknumber(L, 5);
  luaL_argcheck(L, idle >= 0 && idle <= 1e9, 5, "min_idle must be in [0, 1e9] s");
  long count = check_count(L, 6);
  size_t clen;
  const char *start = luaL_optlstring(L, 7, "0-0", &clen);
  luaL_argcheck(L, clen < PS_RID_MAX, 7, "not a stream id");
  char cursor[PS_RID_MAX];
  memcpy(cursor, start, clen + 1);
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  if (ps_rg_reclaim(g, stream, group, consumer, (long long)(idle * 1000 + 0.5),
                    count, cursor, &b->es, &err))
    return ps_rgl_raise(L, g, &err);
  push_entries(L, &b->es, 1);
  lua_pushstring(L, cursor);
  return 2;
}

static int l_pending(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  double idle = 0;
  const char *start = "-", *stop = "+", *consumer = NULL;
  long count = 100;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "min_idle");
    idle = luaL_optnumber(L, -1, 0);
    lua_pop(L, 1);
    start = opt_string(L, 4, "start");
    stop = opt_string(L, 4, "stop");
    consumer = opt_string(L, 4, "consumer");
    count = (long)opt_int(L, 4, "count", 100);
    luaL_argcheck(L, count >= 1 && count <= 1000000, 4, "count out of range");
    if (!start) start = "-";
    if (!stop) stop = "+";
  }
  box *b = ps_rgl_push_box(L);
  ps_berr err = {0, ""};
  if (ps_rg_pending(g, stream, group, (long long)(idle * 1000 + 0.5), start,
                    stop, count, consumer, &b->ps, &err))
    return ps_rgl_raise(L, g, &err);
  lua_createtable(L, (int)b->ps.n, 0);
  for (size_t i = 0; i < b->ps.n; i++) {
    const ps_rpending *p = &b->ps.p[i];
    lua_createtable(L, 0, 4);
    lua_pushstring(L, p->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, p->consumer);
    lua_setfield(L, -2, "consumer");
    lua_pushnumber(L, (lua_Number)p->idle_ms / 1000);
    lua_setfield(L, -2, "idle");
    lua_pushinteger(L, (lua_Integer)p->deliveries);
    lua_setfield(L, -2, "deliveries");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_pending_summary(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  ps_berr err = {0, ""};
  long long count = 0;
  char lowest[PS_RID_MAX];
  if (ps_rg_pending_summary(g, luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                            &count, lowest, &err))
    return ps_rgl_raise(L, g, &err);
  lua_pushinteger(L, (lua_Integer)count);
  if (lowest[0]) lua_pushstring(L, lowest); else lua_pushnil(L);
  return 2;
}

static int l_touch(lua_State *L) {
  ps_rgroups *g = ps_rgl_check(L);
  const char *stream = luaL_checkstring(L, 2), *group = luaL_checkstring(L, 3);
  const char *consumer = luaL_checkstring(L, 4);
  size_t n;
  const char **ids = check_ids(L, 5, &n);
  int *owned = lua_newuserdatauv(L, (n ? n : 1) * sizeof *owned, 0);
  ps_berr err = {0, ""};
  if (ps_rg_touch(g, stream, group, consumer, n, ids, owned, &err))
    return ps_rgl_raise(L, g, &err);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushboolean(L, owned[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static const luaL_Reg methods[] = {
  {"create_group", l_create_group},
  {"destroy_group", l_destroy_group},
  {"delete_consumer", l_delete_consumer},
  {"group_info", l_group_info},
  {"add", l_add},
  {"trim", l_trim},
  {"delete", l_delete},
  {"length", l_length},
  {"read_group", l_read_group},
  {"read", l_read},
  {"range", l_range},
  {"ack", l_ack},
  {"autoclaim", l_autoclaim},
  {"pending", l_pending},
  {"pending_summary", l_pending_summary},
  {"touch", l_touch},
  {"revrange", l_revrange},
  {"ack_read_group", l_ack_read_group},
  {"reclaim", l_reclaim},
  {"set_wake_fd", l_set_wake_fd},
  {"woken", l_woken},
  {"sleep", l_sleep},
  {"address", l_address},
  {"connects", l_connects},
  {"close", l_close},
  {NULL, NULL}
};

void ps_groups_open(lua_State *L) {
  if (luaL_newmetatable(L, GROUPS_MT)) {
    luaL_newlib(L, methods);
    ps_rgl_call_methods(L);   /* call, pipeline, call_blocking */
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "redis_groups");
}
