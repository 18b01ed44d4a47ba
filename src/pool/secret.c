/*
 * secret.c: a shared secret and HMAC-SHA256 signatures (OpenSSL's
 * libcrypto), for the messages of the queue pool.
 *
 * Queue tasks carry Lua bytecode, and loading malformed bytecode can crash
 * a Lua VM: whoever can write the stream could run code on every worker.
 * So every message is signed under a secret shared by the pool and its
 * workers, and checked before anything in it is used.
 *
 *   local s = core.secret(bytes)     -- a userdata holding a copy
 *   s:sign(part, ...)         -> 32-byte MAC of the parts
 *   s:verify(mac, part, ...)  -> true when mac is theirs (constant time)
 *   s:fingerprint()           -> 8 hex digits naming the secret in logs
 *                                (an HMAC of a fixed text, not the secret)
 *
 * The MAC covers each part's length (8 bytes, little-endian) and bytes, so
 * no two different part lists sign alike. The secret's bytes never leave
 * the userdata: tostring shows "(hidden)", and they are wiped when it is
 * collected.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "ps.h"

#define SECRET_MT "proxystore.Secret"
#define MAC_LEN 32

typedef struct secret {
  EVP_MAC_CTX *ctx;    /* keyed once; re-initialised per message */
} secret;

static int secret_gc(lua_State *L) {
  secret *s = luaL_checkudata(L, 1, SECRET_MT);
  EVP_MAC_CTX_free(s->ctx);   /* cleanses the key it holds */
  s->ctx = NULL;
  return 0;
}

static int l_secret(lua_State *L) {
  size_t len;
  const char *key = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0, 1, "empty secret");
  secret *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->ctx = NULL;
  luaL_setmetatable(L, SECRET_MT);
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (mac) s->ctx = EVP_MAC_CTX_new(mac);
  EVP_MAC_free(mac);   /* the context keeps its own reference */
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
    OSSL_PARAM_construct_end()};
  if (s->ctx == NULL ||
      !EVP_MAC_init(s->ctx, (const unsigned char *)key, len, params))
    return ps_error_raise(L, PS_ECONFIG, NULL,
                          "libcrypto cannot make HMAC-SHA256");
  return 1;
}

static secret *check_secret(lua_State *L) {
  secret *s = luaL_checkudata(L, 1, SECRET_MT);
  if (s->ctx == NULL) luaL_error(L, "secret has been released");
  return s;
}

/* The MAC of the string arguments first..top into out. */
static int mac_of(lua_State *L, secret *s, int first, unsigned char *out) {
  int top = lua_gettop(L);
  if (!EVP_MAC_init(s->ctx, NULL, 0, NULL)) return 0;
  for (int i = first; i <= top; i++) {
    size_t len;
    const char *p = luaL_checklstring(L, i, &len);
    unsigned char n[8];
    for (int b = 0; b < 8; b++) n[b] = (unsigned char)((uint64_t)len >> (8 * b));
    if (!EVP_MAC_update(s->ctx, n, sizeof n) ||
        !EVP_MAC_update(s->ctx, (const unsigned char *)p, len))
      return 0;
  }
  size_t olen = 0;
  return EVP_MAC_final(s->ctx, out, &olen, MAC_LEN) && olen == MAC_LEN;
}

static int l_sign(lua_State *L) {
  secret *s = check_secret(L);
  unsigned char mac[MAC_LEN];
  if (!mac_of(L, s, 2, mac))
    return ps_error_raise(L, PS_ECONFIG, NULL, "libcrypto: HMAC failed");
  lua_pushlstring(L, (const char *)mac, MAC_LEN);
  return 1;
}

static int l_verify(lua_State *L) {
  secret *s = check_secret(L);
  size_t len;
  const char *given = luaL_checklstring(L, 2, &len);
  unsigned char mac[MAC_LEN];
  if (!mac_of(L, s, 3, mac))
    return ps_error_raise(L, PS_ECONFIG, NULL, "libcrypto: HMAC failed");
  lua_pushboolean(L, len == MAC_LEN && CRYPTO_memcmp(mac, given, MAC_LEN) == 0);
  return 1;
}

static int l_fingerprint(lua_State *L) {
  secret *s = check_secret(L);
  lua_settop(L, 1);
  lua_pushliteral(L, "proxystore secret fingerprint");
  unsigned char mac[MAC_LEN];
  if (!mac_of(L, s, 2, mac))
    return ps_error_raise(L, PS_ECONFIG, NULL, "libcrypto: HMAC failed");
  char hex[9];
  for (int i = 0; i < 4; i++) {
    hex[2 * i] = "0123456789abcdef"[mac[i] >> 4];
    hex[2 * i + 1] = "0123456789abcdef"[mac[i] & 15];
  }
  lua_pushlstring(L, hex, 8);
  return 1;
}

static int secret_tostring(lua_State *L) {
  luaL_checkudata(L, 1, SECRET_MT);
  lua_pushliteral(L, "proxystore.Secret: (hidden)");
  return 1;
}

static const luaL_Reg secret_methods[] = {
  {"sign", l_sign},
  {"verify", l_verify},
  {"fingerprint", l_fingerprint},
  {NULL, NULL}
};

void ps_secret_open(lua_State *L) {
  if (luaL_newmetatable(L, SECRET_MT)) {
    luaL_newlib(L, secret_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, secret_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, secret_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "hidden");
    lua_setfield(L, -2, "__metatable");   /* getmetatable shows no key */
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_secret);
  lua_setfield(L, -2, "secret");
}
