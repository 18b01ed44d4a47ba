/*
 * luasrc.h: the Lua modules compiled into libproxystore (for embedding
 * hosts). The list is generated at build time from the files of lua/proxystore by
 * tools/luasrc.lua; embed.c registers each entry in package.preload.
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

/* Terminated by an entry whose name is NULL. */
extern const ps_luasrc ps_luasrc_list[];

#endif
