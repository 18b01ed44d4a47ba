/*
 * embed_test.c: the C API of proxystore.h driven by a C host, happy paths
 * and error paths. Prints TAP lines; spec/embed_spec.lua builds and runs it
 * with a temporary directory as argv[1].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "proxystore.h"

static int n;
static int failures;

static void check(int ok, const char *what, const char *detail) {
  n++;
  if (!ok) failures++;
  printf("%sok %d - %s%s%s\n", ok ? "" : "not ", n, what,
         detail ? ": " : "", detail ? detail : "");
}

/* Runs Lua code that returns one value; leaves it on the stack. */
static void lua(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    exit(2);
  }
}

static lua_State *newstate(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  return L;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: embed_test DIR\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IONBF, 0);
  const char *dir = argv[1];
  char err[512], url[512], code[1024];
  snprintf(url, sizeof url, "file://%s/store", dir);

  /* ---- before proxystore_open ---- */
  lua_State *L = newstate();
  int top = lua_gettop(L);
  int rc = proxystore_put_url(L, url, "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "call proxystore_open first"),
        "put before open fails with a message", err);
  check(lua_gettop(L) == top, "and leaves the stack as it was", NULL);
  lua_close(L);

  lua_State *bare = luaL_newstate();   /* no standard libraries */
  rc = proxystore_open(bare, err, sizeof err);
  check(rc != PROXYSTORE_OK && strstr(err, "luaL_openlibs"),
        "open without the standard libraries fails with a message", err);
  check(lua_gettop(bare) == 0, "and pushes nothing", NULL);
  lua_close(bare);

  /* ---- open ---- */
  L = newstate();
  rc = proxystore_open(L, err, sizeof err);
  check(rc == PROXYSTORE_OK && lua_istable(L, -1), "open pushes the module",
        rc ? err : NULL);
  lua_getfield(L, -1, "_VERSION");
  check(strcmp(lua_tostring(L, -1), PROXYSTORE_VERSION) == 0,
        "the module's _VERSION is PROXYSTORE_VERSION", lua_tostring(L, -1));
  lua_pop(L, 1);
  rc = proxystore_open(L, err, sizeof err);
  check(rc == PROXYSTORE_OK && lua_rawequal(L, -1, -2),
        "opening again pushes the same table", NULL);
  lua_pop(L, 1);
  lua_setglobal(L, "ps");
  lua(L, "return package.preload['proxystore.url'] ~= nil");
  check(lua_toboolean(L, -1), "the Lua modules are preloaded", NULL);
  lua_pop(L, 1);

  /* ---- put_url, isproxy, extract ---- */
  static const char bytes[] = "binary\0safe\xff bytes";
  top = lua_gettop(L);
  rc = proxystore_put_url(L, url, bytes, sizeof bytes, NULL, 0, err, sizeof err);
  check(rc == PROXYSTORE_OK && lua_gettop(L) == top + 1,
        "put_url pushes one value", rc ? err : NULL);
  check(proxystore_isproxy(L, -1), "which is a proxy", NULL);
  lua_getglobal(L, "ps");
  lua_getfield(L, -1, "is_resolved");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 1);
  check(!lua_toboolean(L, -1), "not yet resolved", NULL);
  lua_pop(L, 2);
  rc = proxystore_extract(L, -1, err, sizeof err);
  size_t len = 0;
  const char *got = lua_tolstring(L, -1, &len);
  check(rc == PROXYSTORE_OK && len == sizeof bytes &&
        memcmp(got, bytes, len) == 0, "extract gives the same bytes",
        rc ? err : NULL);
  check(!proxystore_isproxy(L, -1), "a string is not a proxy", NULL);
  check(!proxystore_isproxy(L, 1000), "an index off the stack is not a proxy",
        NULL);
  rc = proxystore_extract(L, -1, err, sizeof err);
  check(rc == PROXYSTORE_OK && lua_rawequal(L, -1, -2),
        "extract of a non-proxy pushes it unchanged", NULL);
  lua_settop(L, top);

  /* the store is registered under the URL and reused */
  rc = proxystore_put_url(L, url, "k", 1, "fixed-key", 0, err, sizeof err);
  snprintf(code, sizeof code,
           "local s = ps.get_store('%s'); return s and s:get('fixed-key')", url);
  lua(L, code);
  check(rc == PROXYSTORE_OK && lua_isstring(L, -1) &&
        strcmp(lua_tostring(L, -1), "k") == 0,
        "put_url registers the store under its URL and uses the key", NULL);
  lua_settop(L, top);

  /* ---- put with a store on the stack; evict flag ---- */
  snprintf(code, sizeof code,
           "return ps.init_store('file', {name = 'embed-file', dir = '%s/s2'})", dir);
  lua(L, code);
  int store = lua_gettop(L);
  rc = proxystore_put(L, store, "once", 4, "evict-me", PROXYSTORE_EVICT,
                      err, sizeof err);
  check(rc == PROXYSTORE_OK && proxystore_isproxy(L, -1),
        "put with a store object pushes a proxy", rc ? err : NULL);
  rc = proxystore_extract(L, -1, err, sizeof err);
  check(rc == PROXYSTORE_OK && strcmp(lua_tostring(L, -1), "once") == 0,
        "an evict proxy resolves", rc ? err : NULL);
  lua(L, "return ps.get_store('embed-file'):exists('evict-me')");
  check(!lua_toboolean(L, -1), "and its object is gone from the store", NULL);
  lua_settop(L, store);

  /* ---- error paths ---- */
  rc = proxystore_put(L, store, "x", 1, "gone", 0, err, sizeof err);
  lua(L, "ps.get_store('embed-file'):evict('gone'); return true");
  lua_pop(L, 1);
  top = lua_gettop(L);
  rc = proxystore_extract(L, -1, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "proxystore: no object under key 'gone'"),
        "extract of a proxy whose object is gone fails with missing_key", err);
  check(lua_gettop(L) == top, "and pushes nothing", NULL);
  lua_settop(L, store);

  lua_pushinteger(L, 7);
  rc = proxystore_put(L, -1, "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "is a number, not a store"),
        "put into a value that is not a store fails", err);
  lua_pop(L, 1);

  rc = proxystore_put(L, 99, "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "no stack index 99"),
        "put with an index off the stack fails", err);
  rc = proxystore_extract(L, -99, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "no stack index -99"),
        "extract with an index off the stack fails", err);

  lua(L, "ps.get_store('embed-file'):close(); return true");
  lua_pop(L, 1);
  top = lua_gettop(L);
  rc = proxystore_put(L, store, "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "proxystore: store 'embed-file' is closed"),
        "put into a closed store fails with a message", err);
  check(lua_gettop(L) == top, "and leaves the stack as it was", NULL);

  rc = proxystore_put_url(L, "nosuch://x", "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "proxystore: bad store URL 'nosuch://x'"),
        "put_url with a bad URL fails with a message", err);
  rc = proxystore_put_url(L, "file://relative", "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strncmp(err, "proxystore: ", 12) == 0,
        "put_url with a relative file URL fails", err);
  rc = proxystore_put_url(L, "redis://user:s3cret@127.0.0.1:1/0", "x", 1, NULL,
                          0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "proxystore:") && !strstr(err, "s3cret"),
        "a Redis URL that cannot connect fails without showing the password", err);
  lua(L, "return ps.get_store('redis://user@127.0.0.1:1/0') == nil");
  check(lua_toboolean(L, -1), "and registers no store", NULL);
  lua_pop(L, 1);
  rc = proxystore_put_url(L, "unix:///nonexistent.sock?password=hunter2&db=1",
                          "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "proxystore:") && !strstr(err, "hunter2") &&
        strstr(err, "unix:///nonexistent.sock?db=1"),
        "a unix:// URL's password= stays out of the store name and message", err);
  rc = proxystore_put_url(L, NULL, "x", 1, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "url is NULL"), "a NULL URL fails", err);
  rc = proxystore_put_url(L, url, NULL, 5, NULL, 0, err, sizeof err);
  check(rc == LUA_ERRRUN && strstr(err, "data is NULL"), "NULL data fails", err);
  rc = proxystore_put_url(L, url, NULL, 0, NULL, 0, err, sizeof err);
  check(rc == PROXYSTORE_OK && proxystore_isproxy(L, -1),
        "NULL data of length 0 is allowed", rc ? err : NULL);
  rc = proxystore_extract(L, -1, err, sizeof err);
  check(rc == PROXYSTORE_OK && lua_type(L, -1) == LUA_TSTRING &&
        lua_rawlen(L, -1) == 0, "and stands for the empty string", NULL);
  lua_settop(L, store);

  char small[16];
  rc = proxystore_put_url(L, "nosuch://x", "x", 1, NULL, 0, small, sizeof small);
  check(rc == LUA_ERRRUN && strlen(small) == sizeof small - 1,
        "a message is truncated to the caller's buffer", small);
  rc = proxystore_put_url(L, "nosuch://x", "x", 1, NULL, 0, NULL, 0);
  check(rc == LUA_ERRRUN, "a NULL message buffer is allowed", NULL);
  check(lua_gettop(L) == store, "the stack is balanced after all failures", NULL);

  lua_close(L);

  /* Two states in one host share nothing: each opens, puts and extracts. */
  lua_State *a = newstate(), *b = newstate();
  int ok_a = proxystore_open(a, err, sizeof err) == PROXYSTORE_OK &&
             proxystore_put_url(a, "local:", "A", 1, NULL, 0, err, sizeof err) ==
               PROXYSTORE_OK;
  int ok_b = proxystore_open(b, err, sizeof err) == PROXYSTORE_OK &&
             proxystore_put_url(b, "local:", "B", 1, NULL, 0, err, sizeof err) ==
               PROXYSTORE_OK;
  lua_close(a);   /* closing one leaves the other working */
  check(ok_b && ok_a && proxystore_extract(b, -1, err, sizeof err) ==
        PROXYSTORE_OK && strcmp(lua_tostring(b, -1), "B") == 0,
        "two states each have their own stores", err);
  lua_close(b);

  printf("1..%d\n", n);
  return failures ? 1 : 0;
}
