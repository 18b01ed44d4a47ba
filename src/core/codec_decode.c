/*
 * codec_decode.c: native format bytes -> Lua value (docs/format.md).
 *
 * The input is untrusted. Every read is bounds-checked against the end of
 * the input, and every size the input claims (string length, table entry
 * counts) is checked against the bytes that remain before anything is
 * allocated: each array entry takes at least one byte and each hash pair
 * two, so a table can never ask for more slots than the input has bytes.
 * Nothing here mallocs; decoded tables and proxies are kept, in the order
 * they were numbered by the encoder, in a Lua table on the stack, so a
 * raised error leaks nothing.
 */
#include <limits.h>
#include <stdarg.h>

#include "codec.h"

#define MEMO_BITS 6
#define MEMO_SIZE (1 << MEMO_BITS)

typedef struct dec {
  lua_State *L;
  const unsigned char *start, *p, *end;
  int depth;
  int refs;             /* stack slot of the id -> value table */
  int have_refs;
  int use_refs;         /* the header's CODEC_FLAG_REFS */
  int untrusted;        /* PS_DECODE_UNTRUSTED: proxies are untrusted */
  lua_Integer nrefs;
  /* Table slots that may still be reserved up front: every entry of a
   * real blob takes at least one byte, so the counts of all its tables add
   * up to less than its length. */
  uint64_t presize_budget;
  /* Memo of recent short-string table keys: records repeat the same keys,
   * and a hit skips Lua's string interning (a hash-chain walk that misses
   * the cache once the string table is large). */
  int memo;             /* stack slot of the memo's strings, nil until used */
  int have_memo;
  struct {
    const char *s;      /* the anchored string's bytes, NULL: empty */
    size_t len;
  } memo_slot[MEMO_SIZE];
} dec;

static void decode_value(dec *d);

static void fail(dec *d, const char *fmt, ...) {
  lua_State *L = d->L;
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  ps_error_raise(L, PS_ESERIALIZATION, NULL,
                 "cannot deserialize: malformed data at byte %I: %s",
                 (lua_Integer)(d->p - d->start), lua_tostring(L, -1));
}

/* For messages: a claimed size as a Lua integer (saturated). */
static inline lua_Integer as_int(uint64_t n) {
  return n > (uint64_t)LUA_MAXINTEGER ? LUA_MAXINTEGER : (lua_Integer)n;
}

static inline size_t remaining(const dec *d) { return (size_t)(d->end - d->p); }

static inline void need(dec *d, size_t n) {
  if (remaining(d) < n)
    fail(d, "truncated (%I more bytes needed, %I left)", (lua_Integer)n,
         (lua_Integer)remaining(d));
}

static uint64_t get_varint_slow(dec *d) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    need(d, 1);
    unsigned c = *d->p++;
    if (shift == 63 && c > 1) fail(d, "varint overflows 64 bits");
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
}

/* Most varints are one byte. */
static inline uint64_t get_varint(dec *d) {
  if (d->p < d->end && *d->p < 0x80) return *d->p++;
  return get_varint_slow(d);
}

static inline uint64_t get_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void enter(dec *d) {
  if (d->depth >= CODEC_MAX_DEPTH)
    fail(d, "nested deeper than %d levels", CODEC_MAX_DEPTH);
  if (!lua_checkstack(d->L, 8)) fail(d, "Lua stack overflow");
  d->depth++;
}

static void ensure_refs(dec *d) {
  if (!d->have_refs) {
    lua_createtable(d->L, 8, 0);
    lua_replace(d->L, d->refs);
    d->have_refs = 1;
  }
}

/* Loads for same_short; compilers turn them into single moves. */
static inline uint64_t load64(const char *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline uint32_t load32(const char *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* a[0..n) == b[0..n) for n <= SHORTSTR_MAX, without a call to memcmp
 * (which costs more than comparing a record key). Overlapping words cover
 * every n; every load stays inside the n bytes. */
static inline int same_short(const char *a, const char *b, size_t n) {
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8)
      if (load64(a + i) != load64(b + i)) return 0;
    return load64(a + n - 8) == load64(b + n - 8);
  }
  if (n >= 4)
    return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
  return n == 0 ||
         (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1]);
}

/* Pushes a short string key, through the memo. The memo's slot comes from
 * the key's length and three of its bytes: cheap, and enough to tell the
 * keys of a record apart (a collision only costs a miss). */
static void decode_key_string(dec *d) {
  lua_State *L = d->L;
  size_t n = *d->p - TAG_SHORTSTR;
  need(d, n + 1);
  const char *s = (const char *)d->p + 1;
  d->p += n + 1;
  uint32_t x = (uint32_t)n;
  if (n > 0)
    x |= (uint32_t)(unsigned char)s[0] << 8 |
         (uint32_t)(unsigned char)s[n / 2] << 16 |
         (uint32_t)(unsigned char)s[n - 1] << 24;
  /* Fibonacci hashing: the top bits of the product mix all four bytes. */
  uint32_t h = (uint32_t)(x * 0x9E3779B1u) >> (32 - MEMO_BITS);
  if (d->memo_slot[h].s != NULL && d->memo_slot[h].len == n &&
      same_short(d->memo_slot[h].s, s, n)) {
    lua_rawgeti(L, d->memo, (lua_Integer)h + 1);
    return;
  }
  if (!d->have_memo) {
    lua_createtable(L, MEMO_SIZE, 0);
    lua_replace(L, d->memo);
    d->have_memo = 1;
  }
  lua_pushlstring(L, s, n);
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->memo, (lua_Integer)h + 1);
  d->memo_slot[h].s = lua_tostring(L, -1);
  d->memo_slot[h].len = n;
}

/*
 * Pushes the value at d->p if it is one of the common scalars whose bytes
 * are all there (a small integer, a short string, a float) and returns 1;
 * returns 0, having read nothing, for anything else, which decode_value
 * then reads and checks. Needs one byte. Inlined into the table loops:
 * most entries of real data are such scalars.
 */
static inline __attribute__((always_inline)) int push_scalar(dec *d) {
  lua_State *L = d->L;
  unsigned tag = *d->p;
  if (tag >= TAG_FIXINT) {
    d->p++;
    lua_pushinteger(L, (lua_Integer)(tag - TAG_FIXINT));
    return 1;
  }
  if (tag >= TAG_SHORTSTR) {
    size_t n = tag - TAG_SHORTSTR;
    if (remaining(d) <= n) return 0;
    lua_pushlstring(L, (const char *)d->p + 1, n);
    d->p += n + 1;
    return 1;
  }
  if (tag == TAG_FLOAT64 && remaining(d) >= 9) {
    uint64_t u = codec_ld64((const char *)d->p + 1);
    double x;
    memcpy(&x, &u, 8);
    d->p += 9;
    lua_pushnumber(L, (lua_Number)x);
    return 1;
  }
  return 0;
}

static inline int clamp_int(uint64_t n) { return n > INT_MAX ? INT_MAX : (int)n; }

static void decode_table(dec *d) {
  lua_State *L = d->L;
  enter(d);
  uint64_t narr = get_varint(d);
  uint64_t nhash = get_varint(d);
  size_t rem = remaining(d);
  if (narr > rem || nhash > (rem - narr) / 2)
    fail(d, "table claims %I array and %I hash entries, only %I bytes left",
         as_int(narr), as_int(nhash), (lua_Integer)rem);
  /*
   * Each count passed the bytes-left check alone, but nested tables would
   * all reserve the rest of the input at once (500 levels: thousands of
   * times the input's size). Past the budget a table grows as it fills.
   */
  int presize = narr + nhash <= d->presize_budget;
  if (presize) d->presize_budget -= narr + nhash;
  lua_createtable(L, presize ? clamp_int(narr) : 0,
                  presize ? clamp_int(nhash) : 0);
  int t = lua_gettop(L);
  if (d->use_refs) {
    ensure_refs(d);
    lua_pushvalue(L, t);
    lua_rawseti(L, d->refs, ++d->nrefs);
  }

  for (uint64_t i = 1; i <= narr; i++) {
    /* Fast paths for the common scalars. */
    need(d, 1);
    if (*d->p == TAG_NIL) {
      d->p++;
      continue;
    }
    if (!push_scalar(d)) decode_value(d);
    lua_rawseti(L, t, (lua_Integer)i);
  }

  for (uint64_t j = 0; j < nhash; j++) {
    need(d, 1);
    unsigned kt0 = *d->p;
    if (kt0 >= TAG_SHORTSTR && kt0 < TAG_FIXINT) {
      decode_key_string(d);
    } else {
      decode_value(d);
      int kt = lua_type(L, -1);
      if (kt == LUA_TNIL) fail(d, "nil table key");
      if (kt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
        lua_Number k = lua_tonumber(L, -1);
        if (k != k) fail(d, "NaN table key");
      }
    }
    need(d, 1);
    if (!push_scalar(d)) decode_value(d);
    lua_rawset(L, t);
  }
  d->depth--;
}

static void decode_proxy(dec *d) {
  lua_State *L = d->L;
  enter(d);
  lua_Integer slot = 0;
  if (d->use_refs) {
    ensure_refs(d);
    slot = ++d->nrefs;   /* stays nil until the proxy exists */
  }
  need(d, 1);
  if (*d->p != TAG_TABLE) fail(d, "proxy reference is not a table");
  decode_value(d);
  ps_proxy_from_reference(L, d->untrusted);
  if (slot) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->refs, slot);
  }
  d->depth--;
}

static void decode_value(dec *d) {
  lua_State *L = d->L;
  need(d, 1);
  if (push_scalar(d)) return;
  unsigned tag = *d->p++;
  if (tag >= TAG_SHORTSTR) {
    /* push_scalar took every small integer and every short string whose
     * bytes are all there: this one is cut off, and need() says so. */
    need(d, tag - TAG_SHORTSTR);
  }
  switch (tag) {
    case TAG_NIL:
      lua_pushnil(L);
      return;
    case TAG_FALSE:
      lua_pushboolean(L, 0);
      return;
    case TAG_TRUE:
      lua_pushboolean(L, 1);
      return;
    case TAG_INT8:
      need(d, 1);
      lua_pushinteger(L, (int8_t)d->p[0]);
      d->p += 1;
      return;
    case TAG_INT16:
      need(d, 2);
      lua_pushinteger(L, (int16_t)(uint16_t)get_le(d->p, 2));
      d->p += 2;
      return;
    case TAG_INT32:
      need(d, 4);
      lua_pushinteger(L, (int32_t)(uint32_t)get_le(d->p, 4));
      d->p += 4;
      return;
    case TAG_INT64:
      need(d, 8);
      lua_pushinteger(L, (lua_Integer)codec_ld64((const char *)d->p));
      d->p += 8;
      return;
    case TAG_FLOAT64: {
      need(d, 8);
      uint64_t u = codec_ld64((const char *)d->p);
      double x;
      memcpy(&x, &u, 8);
      lua_pushnumber(L, (lua_Number)x);
      d->p += 8;
      return;
    }
    case TAG_STRING: {
      uint64_t n = get_varint(d);
      if (n > remaining(d))
        fail(d, "string of %I bytes claimed, only %I bytes left",
             as_int(n), (lua_Integer)remaining(d));
      lua_pushlstring(L, (const char *)d->p, (size_t)n);
      d->p += n;
      return;
    }
    case TAG_TABLE:
      decode_table(d);
      return;
    case TAG_REF: {
      const unsigned char *at = d->p - 1;
      uint64_t id = get_varint(d);
      if (!d->use_refs) {
        d->p = at;
        fail(d, "reference in a blob whose header says it has none");
      }
      if (id >= (uint64_t)d->nrefs ||
          lua_rawgeti(L, d->refs, (lua_Integer)id + 1) == LUA_TNIL) {
        d->p = at;
        fail(d, "reference to value %I, which is not defined yet",
             as_int(id));
      }
      return;
    }
    case TAG_PROXY:
      decode_proxy(d);
      return;
    default:
      d->p--;
      fail(d, "unknown tag %d", (int)tag);
  }
}

void ps_codec_decode(lua_State *L, const char *data, size_t len) {
  ps_codec_decode_ex(L, data, len, 0);
}

void ps_codec_decode_ex(lua_State *L, const char *data, size_t len,
                        unsigned opts) {
  dec d;
  d.L = L;
  d.untrusted = (opts & PS_DECODE_UNTRUSTED) != 0;
  d.start = d.p = (const unsigned char *)data;
  d.end = d.start + len;
  d.depth = 0;
  d.have_refs = 0;
  d.nrefs = 0;
  d.presize_budget = len;
  if (len < CODEC_HEADER)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot deserialize: %s", len == 0 ? "empty input"
                                                      : "truncated header");
  if ((unsigned char)data[0] != CODEC_MAGIC)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot deserialize: not proxystore native data "
                   "(first byte %d, expected %d)",
                   (int)(unsigned char)data[0], CODEC_MAGIC);
  if ((unsigned char)data[1] != CODEC_VERSION)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot deserialize: format version %d %s (this "
                   "proxystore reads version %d)",
                   (int)(unsigned char)data[1],
                   (unsigned char)data[1] > CODEC_VERSION
                       ? "is newer than this proxystore"
                       : "is unknown",
                   CODEC_VERSION);
  unsigned flags = (unsigned char)data[2];
  if (flags & ~(unsigned)CODEC_FLAG_REFS)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "cannot deserialize: unknown header flags %d", (int)flags);
  d.use_refs = (flags & CODEC_FLAG_REFS) != 0;
  d.p += CODEC_HEADER;
  if (!lua_checkstack(L, 8)) luaL_error(L, "proxystore: stack overflow");
  lua_pushnil(L);
  d.refs = lua_gettop(L);
  lua_pushnil(L);
  d.memo = lua_gettop(L);
  d.have_memo = 0;
  memset(d.memo_slot, 0, sizeof d.memo_slot);
  decode_value(&d);
  if (d.p != d.end)
    fail(&d, "%I unexpected byte(s) after the value",
         (lua_Integer)remaining(&d));
  lua_replace(L, d.refs);
  lua_settop(L, d.refs);
}
