/*
 * codec.h: the native serialization format, shared by codec_encode.c,
 * codec_decode.c and codec.c. docs/format.md is the reference; keep the
 * two in step.
 */
#ifndef PS_CODEC_H
#define PS_CODEC_H

#include <stdint.h>
#include <string.h>

#include "ps.h"

/* A blob starts with these two bytes and a flags byte. 0xFA never occurs
 * in UTF-8 text, so a JSON or text blob is told apart at the first byte. */
#define CODEC_MAGIC   0xFA
#define CODEC_VERSION 0x01
/* Flags: the blob contains references (TAG_REF). Without it the decoder
 * need not remember the tables it makes, which saves time per table. */
#define CODEC_FLAG_REFS 0x01
#define CODEC_HEADER    3

/* Value tags (one byte each). */
enum {
  TAG_NIL      = 0x00,
  TAG_FALSE    = 0x01,
  TAG_TRUE     = 0x02,
  TAG_INT8     = 0x03,   /* 1-byte two's complement */
  TAG_INT16    = 0x04,   /* 2 bytes, little-endian */
  TAG_INT32    = 0x05,   /* 4 bytes, little-endian */
  TAG_INT64    = 0x06,   /* 8 bytes, little-endian */
  TAG_FLOAT64  = 0x07,   /* IEEE 754 binary64, bits little-endian */
  TAG_STRING   = 0x08,   /* varint length, bytes */
  TAG_TABLE    = 0x09,   /* varint narr, varint nhash, narr values, nhash pairs */
  TAG_REF      = 0x0A,   /* varint id of a table or proxy met before */
  TAG_PROXY    = 0x0B,   /* followed by a TAG_TABLE {config=, key=, flags=} */
  TAG_SHORTSTR = 0x40,   /* 0x40..0x7F: string of length tag - 0x40 (0..63) */
  TAG_FIXINT   = 0x80,   /* 0x80..0xFF: integer tag - 0x80 (0..127) */
};
#define SHORTSTR_MAX 63

/* Nesting limit for tables (and proxies, and tables used as keys), on
 * encode and on decode: deep enough for any real data, shallow enough that
 * the C recursion stays far from the end of the C stack, even under ASan. */
#define CODEC_MAX_DEPTH 512

/* Strings at least this long are not copied into the encode buffer by
 * serialize(): the result is built by one lua_concat of the pieces, so a
 * large string is copied once. */
#define CODEC_PIECE_MIN (64 * 1024)

/*
 * Encodes the value at idx into b (header included), pushing nothing. With
 * pieces != 0, strings of CODEC_PIECE_MIN bytes or more are left out of b:
 * with CODEC_PIECES_CONCAT (serialize()) the function pushes the whole blob
 * as one string made by a single lua_concat, so such a string is copied
 * once; with CODEC_PIECES_HOLES it pushes the list of holes, {at1, s1, at2,
 * s2, ...} (at: the offset in b where string s goes, ascending), and the
 * caller sends b's bytes and the strings in that order without joining
 * them (the store's put: a large string is never copied).
 */
enum { CODEC_PIECES_NONE, CODEC_PIECES_CONCAT, CODEC_PIECES_HOLES };
void ps_codec_encode_ex(lua_State *L, int idx, ps_buf *b, int pieces);

/* Little-endian stores and loads; compilers turn these into single moves. */
static inline void codec_st64(char *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  for (int i = 0; i < 8; i++) p[i] = (char)(v >> (8 * i));
#endif
}

static inline uint64_t codec_ld64(const char *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)(unsigned char)p[i] << (8 * i);
  return v;
#endif
}

/*
 * A whole object that is one long string (TAG_STRING) can become a Lua
 * string without a copy (bigalloc.c, ps_blob_push_string): its bytes are
 * read to where a Lua string's bytes will be. These say where they are.
 *
 * ps_codec_string_head: the bytes before the string's own (header, tag,
 * length) in the encoding of one string that is total bytes long in all,
 * or 0 when no string encodes to exactly that size.
 */
size_t ps_codec_string_head(size_t total);
/*
 * 1 when the len bytes at data are the encoding of exactly one long
 * string, which ps_codec_decode would push as it is: *s and *n give its
 * bytes. 0 for anything else, which ps_codec_decode then reads or refuses.
 */
int ps_codec_whole_string(const char *data, size_t len, const char **s,
                          size_t *n);

#endif
