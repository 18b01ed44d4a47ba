/*
 * unmapper.h: munmap(2) off the caller's thread.
 *
 * Tearing down a large file mapping costs one page-table entry per 4 KiB
 * page (about 4 ms for 100 MiB on tmpfs), paid by whoever releases the
 * blob, typically right after the bytes were copied into a Lua string.
 * Handing the mapping to a background thread takes that out of the
 * resolve. Safe across fork: a child starts its own thread on first use
 * and unmaps what its parent had queued (its copies of those mappings).
 */
#ifndef PS_UNMAPPER_H
#define PS_UNMAPPER_H

#include <stddef.h>

/* Unmaps [p, p+len) soon; unmaps it at once when no thread can be used. */
void ps_unmap_later(void *p, size_t len);

#endif
