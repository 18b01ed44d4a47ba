/*
 * codec.c: the Lua face of the native codec, core.serialize and
 * core.deserialize. The format itself lives in codec_encode.c and
 * codec_decode.c (docs/format.md describes it).
 */
#include "codec.h"

/* Registry key of the encode buffer kept between serialize() calls: a
 * reused buffer is already paged in, a fresh one costs a page fault per
 * 4 KiB on first touch. */
static const char buffer_key = 0;

/* Buffers that grew larger than this are freed rather than kept. */
#define KEEP_MAX (32u << 20)

static int codec_serialize(lua_State *L) {
  ps_checkany(L, 1);
  lua_settop(L, 1);
  /* Take the cached buffer out of the registry while it is in use: if the
   * encode raises, the box is just garbage (its __gc frees it) and the
   * next call starts a new one. */
  ps_buf *b;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &buffer_key) == LUA_TUSERDATA) {
    b = lua_touserdata(L, 2);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &buffer_key);
  } else {
    lua_pop(L, 1);
    b = ps_buf_box(L);
  }
  b->len = 0;
  ps_codec_encode_ex(L, 1, b, CODEC_PIECES_CONCAT);     /* pushes the blob (slot 3) */
  b->len = 0;
  if (b->cap > KEEP_MAX) ps_buf_free(b);
  lua_pushvalue(L, 2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &buffer_key);
  return 1;
}

/* deserialize's options: {untrusted = boolean}; anything else is a
 * config error, so a misspelt "untrusted" never passes silently. */
static unsigned decode_options(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (!lua_istable(L, idx))
    ps_error_raise(L, PS_ECONFIG, NULL,
                   "deserialize options must be a table, got %s",
                   luaL_typename(L, idx));
  unsigned opts = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING ||
        strcmp(lua_tostring(L, -2), "untrusted") != 0) {
      lua_pop(L, 1);
      ps_error_raise(L, PS_ECONFIG, NULL,
                     "unknown option '%s' for deserialize (untrusted)",
                     luaL_tolstring(L, -1, NULL));
    }
    if (!lua_isboolean(L, -1))
      ps_error_raise(L, PS_ECONFIG, NULL,
                     "option 'untrusted' must be a boolean, got %s",
                     luaL_typename(L, -1));
    if (lua_toboolean(L, -1)) opts |= PS_DECODE_UNTRUSTED;
    lua_pop(L, 1);
  }
  return opts;
}

static int codec_deserialize(lua_State *L) {
  size_t len;
  ps_checktype(L, 1, LUA_TSTRING);
  const char *s = lua_tolstring(L, 1, &len);
  unsigned opts = decode_options(L, 2);
  lua_settop(L, 1);
  ps_codec_decode_ex(L, s, len, opts);
  return 1;
}

static const luaL_Reg codec_funcs[] = {
  {"serialize", codec_serialize},
  {"deserialize", codec_deserialize},
  {NULL, NULL},
};

void ps_codec_open(lua_State *L) {
  luaL_setfuncs(L, codec_funcs, 0);
}

/* ---- a whole object that is one string -------------------------------- */

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) n++;
  return n;
}

size_t ps_codec_string_head(size_t total) {
  for (size_t w = 1; w <= 10; w++) {
    size_t head = CODEC_HEADER + 1 + w;
    if (total < head) return 0;
    size_t n = total - head;
    if (n > SHORTSTR_MAX && varint_size(n) == w) return head;
  }
  return 0;
}

int ps_codec_whole_string(const char *data, size_t len, const char **s,
                          size_t *n) {
  const unsigned char *p = (const unsigned char *)data;
  const unsigned char *end = p + len;
  if (len < CODEC_HEADER + 2 || p[0] != CODEC_MAGIC ||
      p[1] != CODEC_VERSION || (p[2] & ~(unsigned)CODEC_FLAG_REFS) ||
      p[3] != TAG_STRING)
    return 0;
  p += CODEC_HEADER + 1;
  /* The varint as the decoder reads it (get_varint_slow), overflow and
   * truncation left to the decoder to report. */
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    if (p == end) return 0;
    unsigned c = *p++;
    if (shift == 63 && c > 1) return 0;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) break;
  }
  if (v != (uint64_t)(end - p)) return 0;
  *s = (const char *)p;
  *n = (size_t)v;
  return 1;
}
