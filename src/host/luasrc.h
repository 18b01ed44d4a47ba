/*
 * luasrc.h: the Lua modules compiled into libproxystore (for embedding
 * hosts). The Makefile generates the list from the files of lua/proxystore
 * with tools/luasrc.lua and compiles embed.c with -DPS_LUASRC="<that file>";
 * embed.c registers each entry in package.preload. Without PS_LUASRC (e.g.
 * a spec compiling every C file of src) the list is empty and proxystore_open
 * finds the Lua modules on package.path.
 */
#ifndef PS_LUASRC_H
#define PS_LUASRC_H

#include <stddef.h>

typedef struct ps_luasrc {
  const char *name;       /* module name, e.g. "proxystore.url" */
  const char *chunkname;  /* "@proxystore/url.lua", for messages */
  const char *code;
  size_t len;
} ps_luasrc;

/* ps_luasrc_list, static in embed.c, ends with an entry whose name is NULL. */

#endif
