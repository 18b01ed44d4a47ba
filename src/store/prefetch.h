/*
 * prefetch.h: fetching a key's bytes on a background thread
 * (ps.resolve_async), for any backend.
 *
 * One long-lived worker thread per process runs the jobs in order, with
 * backend contexts of its own (one per distinct config, kept open), so a
 * prefetch never shares a connection with the Lua thread and never
 * touches a lua_State. Survives fork: a job the parent's worker was
 * running is run again by the child's own worker when the child waits
 * (a waiting job's thread, by the child itself).
 */
#ifndef PS_PREFETCH_H
#define PS_PREFETCH_H

#include "backend.h"

typedef struct ps_prefetch ps_prefetch;

/*
 * Queues a fetch of key (cfg strings and key are copied). Returns NULL
 * with err set only when out of memory or no thread can be started.
 */
ps_prefetch *ps_prefetch_start(const ps_backend_ops *ops,
                               const ps_bconfig *cfg, ps_key key,
                               ps_berr *err);
/*
 * The same for a future's proxy: waits until key is set (within timeout
 * seconds, < 0: no limit; ops->wait), then fetches. A wait may last long,
 * so each such job runs on a thread of its own with a backend context of
 * its own, never holding up the shared worker's queue.
 */
ps_prefetch *ps_prefetch_start_wait(const ps_backend_ops *ops,
                                    const ps_bconfig *cfg, ps_key key,
                                    double timeout, ps_berr *err);
/* True once the fetch has finished (never blocks). */
int ps_prefetch_done(ps_prefetch *pf);
/*
 * Blocks until the fetch is done; returns its PS_B* code. On PS_BOK the
 * bytes are moved to *out (the caller releases them) and *version (if not
 * NULL) is set; otherwise err holds the message. Call at most once.
 */
int ps_prefetch_wait(ps_prefetch *pf, ps_blob *out, ps_version *version,
                     ps_berr *err);
/* Frees pf; safe while the fetch runs (the worker frees it at the end). */
void ps_prefetch_free(ps_prefetch *pf);
/*
 * Closes the background contexts (sockets, directory fds) kept for cfg,
 * once the fetches already queued for it have run, and returns when they
 * are closed. For store:close(): a closed store holds no fd. Another open
 * store with the same config simply gets a new context at its next fetch.
 */
void ps_prefetch_forget(const ps_backend_ops *ops, const ps_bconfig *cfg);

#endif
