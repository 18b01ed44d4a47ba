/*
 * envelope.c: serializer dispatch for byte stores.
 *
 * Every stored object starts with one byte naming the serializer that
 * wrote it (native codec, lua-cjson, or a user's function pair), so a
 * proxy resolves with the right one in any process.
 */
#include <string.h>

#include "store.h"
#include "bigalloc.h"
#include "codec.h"

static void call_cjson(lua_State *L, const char *fn) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    ps_error_raise(L, PS_ECONFIG, &(ps_errctx){.cause = -1},
                   "the json serializer needs lua-cjson");
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
}

/*
 * Calls the serializer or deserializer pushed below its one argument. What
 * it raises (lua-cjson's plain strings, a user's values) becomes a
 * serialization error with the original as its cause; a proxystore error
 * (a closed store...) goes up as it is.
 */
static void call_serializer(lua_State *L, const char *what) {
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) return;
  if (ps_error_is(L, -1)) lua_error(L);
  /* The cause's text is printed after the message (error.c), so the
   * message does not repeat it. */
  ps_error_raise(L, PS_ESERIALIZATION, &(ps_errctx){.cause = -1},
                 "%s failed", what);
}

/* Picks the serializer: a per-call option at opt (0: none) or the store's. */
static int serializer_for(lua_State *L, ps_store *s, int opt) {
  if (opt == 0 || lua_isnil(L, opt)) return s->serializer;
  if (lua_isfunction(L, opt)) return ENV_CUSTOM;
  const char *name = lua_tostring(L, opt);
  if (name && strcmp(name, "native") == 0) return ENV_NATIVE;
  if (name && strcmp(name, "json") == 0) return ENV_JSON;
  return ps_error_raise(L, PS_ECONFIG, NULL,
                        "unknown serializer '%s' (use \"native\", \"json\" "
                        "or a function)", luaL_tolstring(L, opt, NULL));
}

/*
 * Serializes the value at obj into a boxed buffer pushed on the stack:
 * one envelope byte, then the payload. With holes, the native codec leaves
 * large strings out of the buffer and their holes list is pushed after it
 * (nil for other serializers, which make one string anyway).
 */
static ps_buf *serialize(lua_State *L, int sidx, ps_store *s, int obj,
                         int opt, int holes) {
  int env = serializer_for(L, s, opt);
  ps_buf *b = ps_buf_box(L);
  unsigned char tag = (unsigned char)env;
  if (ps_buf_append(b, &tag, 1) != 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "out of memory");
  if (env == ENV_NATIVE) {
    if (holes) ps_codec_encode_holes(L, obj, b);
    else ps_codec_encode(L, obj, b);
    return b;
  }
  if (env == ENV_JSON) {
    call_cjson(L, "encode");
  } else if (opt && lua_isfunction(L, opt)) {
    lua_pushvalue(L, opt);
  } else {
    lua_getiuservalue(L, sidx, UV_SER);
  }
  lua_pushvalue(L, obj);
  call_serializer(L, env == ENV_JSON ? "json serializer" : "serializer");
  if (lua_type(L, -1) != LUA_TSTRING)
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "serializer returned %s, not a string",
                   luaL_typename(L, -1));
  size_t len;
  const char *bytes = lua_tolstring(L, -1, &len);
  if (ps_buf_append(b, bytes, len) != 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "out of memory");
  lua_pop(L, 1);
  if (holes) lua_pushnil(L);
  return b;
}

ps_buf *ps_envelope_serialize(lua_State *L, int sidx, ps_store *s, int obj,
                              int opt) {
  return serialize(L, sidx, s, obj, opt, 0);
}

ps_buf *ps_envelope_serialize_holes(lua_State *L, int sidx, ps_store *s,
                                    int obj, int opt) {
  return serialize(L, sidx, s, obj, opt, 1);
}

/* Pushes the object held in data; deser is a stack index or 0. */
void ps_envelope_deserialize(lua_State *L, int sidx, const char *data, size_t len,
                        int deser) {
  if (len == 0)
    ps_error_raise(L, PS_ESERIALIZATION, NULL, "stored object is empty");
  switch ((unsigned char)data[0]) {
  case ENV_NATIVE:
    ps_codec_decode(L, data + 1, len - 1);
    return;
  case ENV_JSON:
    call_cjson(L, "decode");
    break;
  case ENV_CUSTOM:
    if (deser) {
      lua_pushvalue(L, deser);
    } else if (lua_getiuservalue(L, sidx, UV_DESER) != LUA_TFUNCTION) {
      ps_error_raise(L, PS_ESERIALIZATION, NULL,
                     "object was stored with a custom serializer; give the "
                     "store or the proxy a deserializer");
    }
    break;
  default:
    ps_error_raise(L, PS_ESERIALIZATION, NULL,
                   "stored bytes are not a proxystore object (envelope "
                   "byte %d)", (int)(unsigned char)data[0]);
  }
  const char *what = (unsigned char)data[0] == ENV_JSON ? "json deserializer"
                                                         : "deserializer";
  lua_pushlstring(L, data + 1, len - 1);
  call_serializer(L, what);
}

/*
 * The same for the bytes of blob b. An object that is one string (the
 * common large object) is pushed by ps_blob_push_string: where the state
 * has the big-block allocator, the string is made in b's block and the
 * bytes are not copied again (b is then left empty).
 */
void ps_envelope_deserialize_blob(lua_State *L, int sidx, ps_blob *b,
                                  int deser) {
  const char *s;
  size_t n;
  if (b->len > 0 && (unsigned char)b->data[0] == ENV_NATIVE &&
      ps_codec_whole_string(b->data + 1, b->len - 1, &s, &n)) {
    ps_blob_push_string(L, b, s, n);
    return;
  }
  ps_envelope_deserialize(L, sidx, b->data, b->len, deser);
}
