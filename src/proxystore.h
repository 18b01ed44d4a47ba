/*
 * proxystore.h: the public C interface of proxystore, for hosts that embed
 * Lua 5.4.
 *
 * Link with libproxystore (pkg-config --cflags --libs proxystore). The
 * library carries the C core and the Lua modules (compiled in as strings),
 * so a host needs no Lua search path and no installed proxystore.core.
 *
 * Conventions of the functions below (all but luaopen_proxystore_core):
 *   - They may be called by a host outside any Lua call: they never raise
 *     (never longjmp). The work runs under lua_pcall inside; a failure is
 *     reported by the return value and, when err is not NULL, a message
 *     (NUL-terminated, truncated to errlen bytes) in the caller's buffer.
 *     Library errors read "proxystore: ..." as tostring() of the error
 *     object gives them in Lua.
 *   - They return PROXYSTORE_OK (0) on success, or a Lua status code
 *     (LUA_ERRRUN, LUA_ERRMEM, ...) on failure. On failure the stack is as
 *     it was before the call.
 *   - Stack indices may be relative (negative) or absolute; pseudo-indices
 *     are not accepted.
 *   - proxystore_open must have been called on the state (or on the main
 *     state of a thread) first: the others rely on the module it loads.
 *   - The library never replaces the state's allocator (the host's: it may
 *     cap memory with it). ps.use_big_allocator() is the opt-in, from Lua.
 *
 * C++ hosts include it as it is: the declarations, lua.h's included, have
 * C linkage.
 */
#ifndef PROXYSTORE_H
#define PROXYSTORE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include <lua.h>

/* The version, defined once: the numbers; the string and
 * PROXYSTORE_VERSION_NUM (10000 * major + 100 * minor + patch, for #if:
 * 0.1.0 is 100) come from them. */
#define PROXYSTORE_VERSION_MAJOR 0
#define PROXYSTORE_VERSION_MINOR 1
#define PROXYSTORE_VERSION_PATCH 0

#define PROXYSTORE_VERSION_NUM                                        \
  (PROXYSTORE_VERSION_MAJOR * 10000 + PROXYSTORE_VERSION_MINOR * 100 + \
   PROXYSTORE_VERSION_PATCH)
#define PROXYSTORE_STR_(x) #x
#define PROXYSTORE_STR(x) PROXYSTORE_STR_(x)
#define PROXYSTORE_VERSION                                  \
  PROXYSTORE_STR(PROXYSTORE_VERSION_MAJOR) "."              \
  PROXYSTORE_STR(PROXYSTORE_VERSION_MINOR) "."              \
  PROXYSTORE_STR(PROXYSTORE_VERSION_PATCH)

#define PROXYSTORE_OK 0

/* Flags for proxystore_put / proxystore_put_url (as store:proxy's opts). */
#define PROXYSTORE_EVICT  0x01u  /* delete the object once the proxy resolves */
#define PROXYSTORE_STRICT 0x02u  /* never serve a stale cached copy */

/* The Lua module proxystore.core; require "proxystore" is the public face. */
int luaopen_proxystore_core(lua_State *L);

/*
 * Opens proxystore into L: registers the linked-in core as
 * package.preload["proxystore.core"] and the compiled-in Lua modules
 * ("proxystore", "proxystore.url", ...) in package.preload, then runs
 * require "proxystore". (libproxystore always carries the modules; the
 * project's src/host/embed.c compiled on its own finds them on package.path.)
 * On success pushes the module table (the value of require "proxystore");
 * the host may set it as a global or pop it.
 * Needs the standard libraries (luaL_openlibs, at least package, string,
 * table, math, os and io) opened on L. Calling it again is harmless and
 * pushes the same table.
 */
int proxystore_open(lua_State *L, char *err, size_t errlen);

/*
 * Puts len bytes from data into the store at stack index store (a store
 * object, as ps.init_store returns) and pushes a proxy for them: the
 * proxy's target is a Lua string holding a copy of the bytes. key is the
 * store key to use, or NULL for a random one; flags are PROXYSTORE_*.
 * The data is copied before the call returns. Fails (pushing nothing) when
 * the value is not a store, the store is closed, or the backend fails.
 */
int proxystore_put(lua_State *L, int store, const void *data, size_t len,
                   const char *key, unsigned flags, char *err, size_t errlen);

/*
 * As proxystore_put, for the store a URL names ("file:///abs/dir",
 * "redis://host:port/db", "unix:///path.sock", "local:"). The store is
 * registered under the URL (with any password left out of the name) and
 * reused by later calls with the same URL; close it from Lua with
 * ps.get_store(name):close(), or leave it to lua_close.
 */
int proxystore_put_url(lua_State *L, const char *url, const void *data,
                       size_t len, const char *key, unsigned flags,
                       char *err, size_t errlen);

/*
 * True (1) if the value at idx is a proxystore proxy, 0 otherwise. Never
 * resolves the proxy and never fails.
 */
int proxystore_isproxy(lua_State *L, int idx);

/*
 * Pushes the target of the proxy at idx, resolving it first if needed (this
 * may fetch from its store); a value that is not a proxy is pushed
 * unchanged. Fails (pushing nothing) when resolution fails, e.g. with a
 * "missing_key" error when the proxy's object is gone from its store.
 */
int proxystore_extract(lua_State *L, int idx, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
