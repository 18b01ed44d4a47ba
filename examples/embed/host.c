/*
 * host.c: a C program that embeds Lua 5.4 and proxystore.
 *
 * It puts a buffer into a file store in a fresh temporary directory, hands
 * a proxy for it to summarize() of script.lua, prints the result, then
 * shows the C API's error reporting on a bad URL.
 *
 *   make examples && examples/embed/host [examples/embed/script.lua]
 *   cc host.c $(pkg-config --cflags --libs proxystore) -o host   (installed)
 */
#define _POSIX_C_SOURCE 200809L   /* mkdtemp */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include <proxystore.h>

static const char text[] =
  "a proxy stands for an object\n"
  "and fetches it from its store\n"
  "the first time it is used\n";

/* Runs a script file and leaves its one result (the module table) on top. */
static int load_script(lua_State *L, const char *path) {
  if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  const char *script = argc > 1 ? argv[1] : "examples/embed/script.lua";
  char err[256];
  char dir[] = "/tmp/proxystore-host.XXXXXX";
  char url[64];
  int status = EXIT_FAILURE;

  if (mkdtemp(dir) == NULL) {
    perror("host: mkdtemp");
    return EXIT_FAILURE;
  }
  snprintf(url, sizeof url, "file://%s", dir);

  lua_State *L = luaL_newstate();
  if (L == NULL) return EXIT_FAILURE;
  luaL_openlibs(L);
  if (proxystore_open(L, err, sizeof err) != PROXYSTORE_OK) {
    fprintf(stderr, "host: %s\n", err);
    goto done;
  }
  lua_setglobal(L, "ps");            /* optional: scripts may require it */

  if (!load_script(L, script)) goto done;
  lua_getfield(L, -1, "summarize");  /* module, summarize */

  /* The bytes are copied into the store; the proxy carries only the key. */
  if (proxystore_put_url(L, url, text, sizeof text - 1, NULL, 0,
                         err, sizeof err) != PROXYSTORE_OK) {
    fprintf(stderr, "host: %s\n", err);
    goto done;
  }
  printf("pushed a proxy: %s\n", proxystore_isproxy(L, -1) ? "yes" : "no");
  lua_pushvalue(L, -1);              /* keep one for extract below */
  lua_insert(L, -3);                 /* module, proxy, summarize, proxy */
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    goto done;
  }
  printf("summarize: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);                     /* module, proxy */

  if (proxystore_extract(L, -1, err, sizeof err) != PROXYSTORE_OK) {
    fprintf(stderr, "host: %s\n", err);
    goto done;
  }
  size_t len;
  const char *target = lua_tolstring(L, -1, &len);
  printf("extracted %zu bytes, same as put: %s\n", len,
         len == sizeof text - 1 && memcmp(target, text, len) == 0 ? "yes" : "no");
  lua_pop(L, 2);                     /* module */

  /* Failures come back as a code and a message, never as a longjmp. */
  int rc = proxystore_put_url(L, "nosuch://x", "x", 1, NULL, 0, err, sizeof err);
  printf("bad URL: code %d, %s\n", rc, err);
  status = EXIT_SUCCESS;

done:
  lua_close(L);                      /* closes the store */
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "host: could not remove %s\n", dir);
  return status;
}
