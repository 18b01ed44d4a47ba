/*
 * codec_encode.c: Lua value -> native format bytes (docs/format.md).
 *
 * One recursive walk over the value with raw accesses only (no metamethod
 * runs, so no Lua code can change the value under us). Tables and proxies
 * are numbered in the order they are first met; a second meeting writes a
 * reference, which keeps shared references and cycles.
 *
 * The path to the value being encoded is kept as an explicit stack of
 * frames (an array index, or the stack slot of a hash key), and turned into
 * text like value.items[3].cb only when a value is refused.
 */
#include <stdio.h>

#include "codec.h"

enum { FR_INDEX, FR_KEY, FR_ASKEY };

typedef struct frame {
  int kind;
  int keyidx;           /* FR_KEY, FR_ASKEY: stack slot of the key */
  lua_Integer i;        /* FR_INDEX: array index */
} frame;

typedef struct enc {
  lua_State *L;
  ps_buf *b;
  int depth;
  int seen;             /* stack slot of the seen map's userdata */
  uintptr_t *seen_keys;
  uint32_t *seen_ids;
  size_t seen_cap;      /* a power of 2, or 0 before the first table */
  int anchors;          /* stack slot: table of values made while encoding */
  int have_anchors;
  int pieces;           /* stack slot of the pieces list, 0: not used */
  lua_Integer nholes;   /* large strings left out of the buffer */
  lua_Integer nseen;
  unsigned flags;       /* CODEC_FLAG_*, written into the header at the end */
  frame frames[CODEC_MAX_DEPTH + 1];
} enc;

static void encode_typed(enc *e, int idx, int type);

/* ---- errors ------------------------------------------------------------ */

static int is_identifier(const char *s, size_t n) {
  if (n == 0 || n > 40) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    int ok = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static void add_key(luaL_Buffer *B, lua_State *L, int k) {
  switch (lua_type(L, k)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, k, &n);
      if (is_identifier(s, n)) {
        luaL_addchar(B, '.');
        luaL_addlstring(B, s, n);
        return;
      }
      luaL_addstring(B, "[\"");
      for (size_t i = 0; i < n && i < 40; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
          luaL_addchar(B, (char)c);
        } else {
          char esc[8];
          snprintf(esc, sizeof esc, "\\%u", c);
          luaL_addstring(B, esc);
        }
      }
      luaL_addstring(B, n > 40 ? "...\"]" : "\"]");
      return;
    }
    case LUA_TNUMBER: {
      char num[64];
      if (lua_isinteger(L, k))
        snprintf(num, sizeof num, "[" LUA_INTEGER_FMT "]", lua_tointeger(L, k));
      else
        snprintf(num, sizeof num, "[%.17g]", (double)lua_tonumber(L, k));
      luaL_addstring(B, num);
      return;
    }
    case LUA_TBOOLEAN:
      luaL_addstring(B, lua_toboolean(L, k) ? "[true]" : "[false]");
      return;
    default:
      luaL_addstring(B, "[<");
      luaL_addstring(B, luaL_typename(L, k));
      luaL_addstring(B, ">]");
      return;
  }
}

/* Pushes "value" followed by the first n frames of the path. */
static void push_path(enc *e, int n) {
  lua_State *L = e->L;
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  luaL_addstring(&B, "value");
  for (int i = 0; i < n; i++) {
    const frame *f = &e->frames[i];
    if (f->kind == FR_INDEX) {
      char num[40];
      snprintf(num, sizeof num, "[" LUA_INTEGER_FMT "]", f->i);
      luaL_addstring(&B, num);
    } else if (f->kind == FR_KEY) {
      add_key(&B, L, f->keyidx);
    } else {
      luaL_addstring(&B, "[<key>]");
    }
  }
  luaL_pushresult(&B);
}

static void refuse(enc *e, int idx) {
  lua_State *L = e->L;
  const char *what = lua_type(L, idx) == LUA_TLIGHTUSERDATA
                         ? "light userdata"
                         : luaL_typename(L, idx);
  if (!lua_checkstack(L, 8)) luaL_error(L, "proxystore: stack overflow");
  if (e->depth > 0 && e->frames[e->depth - 1].kind == FR_ASKEY) {
    push_path(e, e->depth - 1);
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot serialize a %s used as a table key in %s", what,
                   lua_tostring(L, -1));
  }
  push_path(e, e->depth);
  ps_error_raise(L, PS_ESERIALIZATION, NULL, "cannot serialize a %s at %s",
                 what, lua_tostring(L, -1));
}

static void too_deep(enc *e) {
  lua_State *L = e->L;
  if (!lua_checkstack(L, 8)) luaL_error(L, "proxystore: stack overflow");
  push_path(e, e->depth > 8 ? 8 : e->depth);
  ps_error_raise(L, PS_ESERIALIZATION, NULL,
                 "cannot serialize: value nested deeper than %d levels "
                 "(under %s...)",
                 CODEC_MAX_DEPTH, lua_tostring(L, -1));
}

/* ---- buffer writes ----------------------------------------------------- */

static void grow(enc *e, size_t n) {
  if (ps_buf_reserve(e->b, n) != 0)
    ps_error_raise(e->L, PS_ESERIALIZATION, NULL,
                   "cannot serialize: out of memory (%f bytes)",
                   (lua_Number)e->b->len + (lua_Number)n);
}

#define ROOM(e, n)                                         \
  do {                                                     \
    if ((e)->b->cap - (e)->b->len < (size_t)(n)) grow((e), (n)); \
  } while (0)

static inline size_t put_varint(char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (char)v;
  return n;
}

static inline size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static inline void put_le(char *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (char)(v >> (8 * i));
}

/* Needs 9 bytes of room. */
static inline void put_integer(ps_buf *b, lua_Integer v) {
  char *p = b->data + b->len;
  if (v >= 0 && v < 128) {
    p[0] = (char)(TAG_FIXINT | v);
    b->len += 1;
  } else if (v >= INT8_MIN && v <= INT8_MAX) {
    p[0] = TAG_INT8;
    p[1] = (char)(uint8_t)v;
    b->len += 2;
  } else if (v >= INT16_MIN && v <= INT16_MAX) {
    p[0] = TAG_INT16;
    put_le(p + 1, (uint64_t)v, 2);
    b->len += 3;
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    p[0] = TAG_INT32;
    put_le(p + 1, (uint64_t)v, 4);
    b->len += 5;
  } else {
    p[0] = TAG_INT64;
    codec_st64(p + 1, (uint64_t)v);
    b->len += 9;
  }
}

/* Needs 9 bytes of room. */
static inline void put_float(ps_buf *b, lua_Number d) {
  double x = (double)d;
  uint64_t u;
  memcpy(&u, &x, 8);
  char *p = b->data + b->len;
  p[0] = TAG_FLOAT64;
  codec_st64(p + 1, u);
  b->len += 9;
}

/*
 * serialize() only: leaves a hole at the current end of the buffer for the
 * large string at idx; the holes list keeps (position, string) pairs, and
 * concat_pieces stitches buffer and strings together at the end.
 */
static void add_hole(enc *e, int idx) {
  lua_State *L = e->L;
  lua_pushinteger(L, (lua_Integer)e->b->len);
  lua_rawseti(L, e->pieces, 2 * e->nholes + 1);
  lua_pushvalue(L, idx);
  lua_rawseti(L, e->pieces, 2 * e->nholes + 2);
  e->nholes++;
}

/* Bytes were inserted at pos (a patched count): holes after it move. */
static void shift_holes(enc *e, size_t pos, size_t by) {
  lua_State *L = e->L;
  for (lua_Integer k = e->nholes; k >= 1; k--) {
    lua_rawgeti(L, e->pieces, 2 * k - 1);
    lua_Integer at = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if ((size_t)at <= pos) break;
    lua_pushinteger(L, at + (lua_Integer)by);
    lua_rawseti(L, e->pieces, 2 * k - 1);
  }
}

/*
 * Copies n <= SHORTSTR_MAX bytes with fixed-size moves: most strings in
 * records are a few bytes long, and a call to memcpy costs more than
 * copying them. Overlapping blocks cover every n; every load stays inside
 * [s, s + n).
 */
static inline void copy_short(char *d, const char *s, size_t n) {
  if (n >= 16) {
    for (size_t i = 0; i + 16 < n; i += 16) memcpy(d + i, s + i, 16);
    memcpy(d + n - 16, s + n - 16, 16);
  } else if (n >= 8) {
    memcpy(d, s, 8);
    memcpy(d + n - 8, s + n - 8, 8);
  } else if (n >= 4) {
    memcpy(d, s, 4);
    memcpy(d + n - 4, s + n - 4, 4);
  } else if (n > 0) {
    d[0] = s[0];
    d[n / 2] = s[n / 2];
    d[n - 1] = s[n - 1];
  }
}

/* The string at idx, whose bytes are s[0..n), longer than a short one. */
static void put_long_string(enc *e, int idx, const char *s, size_t n) {
  ps_buf *b = e->b;
  ROOM(e, 11);
  b->data[b->len++] = TAG_STRING;
  b->len += put_varint(b->data + b->len, n);
  if (e->pieces && n >= CODEC_PIECE_MIN) {
    add_hole(e, idx);
    return;
  }
  ROOM(e, n);
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

/* Inlined into the table walk: keys and values are mostly short strings,
 * and the call would cost more than writing one. */
static inline __attribute__((always_inline)) void put_string(enc *e, int idx) {
  size_t n;
  const char *s = lua_tolstring(e->L, idx, &n);
  if (n > SHORTSTR_MAX) {
    put_long_string(e, idx, s, n);
    return;
  }
  ps_buf *b = e->b;
  ROOM(e, n + 1);
  char *p = b->data + b->len;
  p[0] = (char)(TAG_SHORTSTR + n);
  copy_short(p + 1, s, n);
  b->len += n + 1;
}

/*
 * Writes the value at idx, whose lua_type is type, if it is a number, a
 * string or a boolean, and returns 1; returns 0 for anything else. Inlined
 * into the table walk, where most values are such scalars: nothing about
 * them can fail in a way that needs the path to them.
 */
static inline __attribute__((always_inline)) int put_scalar(enc *e, int idx,
                                                            int type) {
  lua_State *L = e->L;
  ps_buf *b = e->b;
  switch (type) {
    case LUA_TNUMBER:
      ROOM(e, 9);
      if (lua_isinteger(L, idx))
        put_integer(b, lua_tointeger(L, idx));
      else
        put_float(b, lua_tonumber(L, idx));
      return 1;
    case LUA_TSTRING:
      put_string(e, idx);
      return 1;
    case LUA_TBOOLEAN:
      ROOM(e, 1);
      b->data[b->len++] = lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE;
      return 1;
    default:
      return 0;
  }
}

/* ---- tables and proxies --------------------------------------------------- */

/*
 * The seen map: an open-addressing hash from a table's or proxy's address
 * (lua_topointer) to its id, in a userdata the encoder replaces when it
 * grows (no malloc, so nothing to free if an error is raised): cap keys
 * (addresses, 0 = free) followed by cap 32-bit ids, 12 bytes a slot so
 * more of it stays in cache. Addresses are stable while the value is
 * reachable from the value being encoded; the only values created during
 * an encode, proxy reference tables, are kept alive in the anchors table
 * so their addresses cannot be reused.
 */
static inline size_t seen_hash(uintptr_t x, size_t mask) {
  /* Tables made one after another sit at nearby addresses, at least 64
   * bytes apart: x >> 6 puts them in nearby but distinct slots, so the
   * probes of a walk over them touch few cache lines. The high bits are
   * folded in so that addresses a power of 2 apart still spread. */
  return (size_t)((x >> 6) ^ (x >> 23) ^ (x >> 40)) & mask;
}

static void seen_grow(enc *e) {
  lua_State *L = e->L;
  size_t cap = e->seen_cap ? e->seen_cap * 2 : 64;
  uintptr_t *keys = lua_newuserdatauv(L, cap * (sizeof *keys + sizeof(uint32_t)), 0);
  uint32_t *ids = (uint32_t *)(keys + cap);
  memset(keys, 0, cap * sizeof *keys);
  for (size_t i = 0; i < e->seen_cap; i++) {
    uintptr_t k = e->seen_keys[i];
    if (k == 0) continue;
    size_t h = seen_hash(k, cap - 1);
    while (keys[h] != 0) h = (h + 1) & (cap - 1);
    keys[h] = k;
    ids[h] = e->seen_ids[i];
  }
  lua_replace(L, e->seen);
  e->seen_keys = keys;
  e->seen_ids = ids;
  e->seen_cap = cap;
}

/*
 * Looks the table or proxy at idx up in the seen map: writes a reference
 * and returns 1 if it was met before, else numbers it and returns 0.
 */
static int seen_before(enc *e, int idx) {
  uintptr_t p = (uintptr_t)lua_topointer(e->L, idx);
  if (2 * (e->nseen + 1) > (lua_Integer)e->seen_cap) seen_grow(e);
  size_t mask = e->seen_cap - 1;
  size_t h = seen_hash(p, mask);
  while (e->seen_keys[h] != 0) {
    if (e->seen_keys[h] == p) {
      ROOM(e, 11);
      ps_buf *b = e->b;
      b->data[b->len++] = TAG_REF;
      e->flags |= CODEC_FLAG_REFS;
      b->len += put_varint(b->data + b->len, (uint64_t)e->seen_ids[h]);
      return 1;
    }
    h = (h + 1) & mask;
  }
  if (e->nseen >= UINT32_MAX)
    ps_error_raise(e->L, PS_ESERIALIZATION, NULL,
                   "cannot serialize: more than 2^32 tables");
  e->seen_keys[h] = p;
  e->seen_ids[h] = (uint32_t)e->nseen++;
  return 0;
}

/* Enters one nesting level (the caller leaves it with e->depth--). */
static void enter(enc *e) {
  if (e->depth >= CODEC_MAX_DEPTH) too_deep(e);
  if (!lua_checkstack(e->L, 8)) too_deep(e);
  e->depth++;
}

/* Writes v as a varint of exactly w bytes (w >= varint_len(v)): a count
 * written into room reserved before the count was known. */
static void put_varint_w(char *p, uint64_t v, size_t w) {
  for (size_t i = 0; i + 1 < w; i++) {
    p[i] = (char)(v | 0x80);
    v >>= 7;
  }
  p[w - 1] = (char)v;
}

/*
 * One lua_next walk over the table. It yields the array part first, in
 * order, so the entries 1, 2, 3... that come first form the array section;
 * every other entry (a hole ends the run, and keys 1..n that live in the
 * hash part come later) is written as a key/value pair. One walk instead of
 * a lua_rawgeti pass plus a lua_next pass that skips the array part: the
 * C API has no way to start lua_next after the array part safely.
 */
static void encode_table(enc *e, int t) {
  lua_State *L = e->L;
  if (seen_before(e, t)) return;
  enter(e);
  frame *f = &e->frames[e->depth - 1];
  ps_buf *b = e->b;
  lua_pushnil(L);
  int k = lua_gettop(L);       /* lua_next leaves the key here, value at k+1 */
  int more = lua_next(L, t);
  /* The array section is the run of keys 1, 2, 3... the walk starts with.
   * The run ends at a border, and #t is a border at or after it, so #t
   * bounds its count: room for the count's width is kept now and the
   * count written at the end. Only a walk that starts at key 1 has a run,
   * and only then is #t (a search) worth its cost. */
  lua_Unsigned bound = 0;
  if (more && lua_isinteger(L, k) && lua_tointeger(L, k) == 1)
    bound = lua_rawlen(L, t);
  size_t narr_w = varint_len(bound);
  ROOM(e, 2 + narr_w);
  b->data[b->len++] = TAG_TABLE;
  size_t narr_pos = b->len;
  b->len += narr_w;
  size_t cntpos = b->len++;   /* hash count, patched below */

  lua_Unsigned run = 0, nh = 0;
  for (; more && run < bound; more = lua_next(L, t)) {
    if (!lua_isinteger(L, k) || (lua_Unsigned)lua_tointeger(L, k) != run + 1)
      break;
    run++;
    int vt = lua_type(L, k + 1);
    if (!put_scalar(e, k + 1, vt)) {
      f->kind = FR_INDEX;
      f->i = (lua_Integer)run;
      encode_typed(e, k + 1, vt);
    }
    lua_settop(L, k);
  }
  for (; more; more = lua_next(L, t)) {
    int kt = lua_type(L, k);
    if (kt == LUA_TSTRING) {
      put_string(e, k);
    } else {
      f->kind = FR_ASKEY;
      f->keyidx = k;
      encode_typed(e, k, kt);
    }
    int vt = lua_type(L, k + 1);
    if (!put_scalar(e, k + 1, vt)) {
      f->kind = FR_KEY;
      f->keyidx = k;
      encode_typed(e, k + 1, vt);
    }
    lua_settop(L, k);
    nh++;
  }
  e->depth--;

  put_varint_w(b->data + narr_pos, run, narr_w);
  if (nh < 0x80) {
    b->data[cntpos] = (char)nh;
  } else {
    size_t w = varint_len(nh);
    ROOM(e, w - 1);
    memmove(b->data + cntpos + w, b->data + cntpos + 1, b->len - cntpos - 1);
    put_varint(b->data + cntpos, nh);
    b->len += w - 1;
    if (e->nholes > 0) shift_holes(e, cntpos, w - 1);
  }
}

static int push_reference(lua_State *L) {
  ps_proxy_push_reference(L, 1);
  return 1;
}

static void encode_proxy(enc *e, int idx) {
  lua_State *L = e->L;
  if (seen_before(e, idx)) return;
  enter(e);
  ROOM(e, 1);
  e->b->data[e->b->len++] = TAG_PROXY;
  /* Protected, so that a refusal (a proxy whose factory is a Lua function)
   * can say where in the value the proxy was. Proxies are few: the extra
   * call costs nothing that matters. */
  lua_pushcfunction(L, push_reference);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    /* Say why in the same line: the message of a proxystore error, or
     * the error value itself. */
    if (ps_error_is(L, -1)) lua_getfield(L, -1, "message");
    const char *why = lua_tostring(L, -1);
    e->depth--;
    if (!lua_checkstack(L, 8)) luaL_error(L, "proxystore: stack overflow");
    push_path(e, e->depth);
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot serialize the proxy at %s: %s", lua_tostring(L, -1),
                   why ? why : "no store reference");
  }
  if (!e->have_anchors) {
    lua_newtable(L);
    lua_replace(L, e->anchors);
    e->have_anchors = 1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, e->anchors, (lua_Integer)lua_rawlen(L, e->anchors) + 1);
  /* A fresh table, so never a reference: the decoder relies on that. */
  encode_table(e, lua_gettop(L));
  lua_pop(L, 1);
  e->depth--;
}

/* The value at idx, whose lua_type is type. */
static void encode_typed(enc *e, int idx, int type) {
  lua_State *L = e->L;
  if (put_scalar(e, idx, type)) return;
  switch (type) {
    case LUA_TTABLE:
      encode_table(e, idx);
      return;
    case LUA_TNIL:
      ROOM(e, 1);
      e->b->data[e->b->len++] = TAG_NIL;
      return;
    case LUA_TUSERDATA:
      if (ps_proxy_is(L, idx) || ps_future_is(L, idx)) {
        encode_proxy(e, idx);
        return;
      }
      refuse(e, idx);
      return;
    default:
      refuse(e, idx);
      return;
  }
}

/* Leaves the blob on top of the stack: the buffer's bytes with the large
 * strings put back into their holes, by one lua_concat (a few hundred
 * pieces at a time, so the stack stays small). */
static void concat_pieces(enc *e) {
  lua_State *L = e->L;
  enum { BATCH = 200 };
  if (!lua_checkstack(L, BATCH + 4))
    luaL_error(L, "proxystore: stack overflow");
  size_t from = 0;
  int k = 0;
  for (lua_Integer h = 1; h <= e->nholes; h++) {
    if (k >= BATCH) {
      lua_concat(L, k);
      k = 1;
    }
    lua_rawgeti(L, e->pieces, 2 * h - 1);
    size_t at = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushlstring(L, e->b->data + from, at - from);
    lua_rawgeti(L, e->pieces, 2 * h);
    k += 2;
    from = at;
  }
  lua_pushlstring(L, e->b->data + from, e->b->len - from);
  lua_concat(L, k + 1);
}

void ps_codec_encode_ex(lua_State *L, int idx, ps_buf *b, int pieces) {
  enc e;
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 8)) luaL_error(L, "proxystore: stack overflow");
  e.L = L;
  e.b = b;
  e.depth = 0;
  e.nseen = 0;
  e.nholes = 0;
  e.seen_keys = NULL;
  e.seen_ids = NULL;
  e.seen_cap = 0;
  e.have_anchors = 0;
  lua_pushnil(L);
  e.seen = lua_gettop(L);
  lua_pushnil(L);
  e.anchors = lua_gettop(L);
  e.pieces = 0;
  if (pieces) {
    lua_newtable(L);
    e.pieces = lua_gettop(L);
  }
  e.flags = 0;
  ROOM(&e, CODEC_HEADER);
  size_t hdr = b->len;
  b->data[b->len++] = (char)CODEC_MAGIC;
  b->data[b->len++] = CODEC_VERSION;
  b->data[b->len++] = 0;
  encode_typed(&e, idx, lua_type(L, idx));
  b->data[hdr + 2] = (char)e.flags;
  if (pieces == CODEC_PIECES_HOLES) {
    lua_pushvalue(L, e.pieces);   /* the holes list, for the caller */
    lua_replace(L, e.seen);
  } else if (pieces) {
    concat_pieces(&e);
    lua_replace(L, e.seen);
  }
  lua_settop(L, e.seen - (pieces ? 0 : 1));
}

void ps_codec_encode(lua_State *L, int idx, ps_buf *b) {
  ps_codec_encode_ex(L, idx, b, 0);
}

void ps_codec_encode_holes(lua_State *L, int idx, ps_buf *b) {
  ps_codec_encode_ex(L, idx, b, CODEC_PIECES_HOLES);
}
