/*
 * groups.h: Redis streams and consumer groups, from C, without Lua.
 *
 * The one module that speaks XADD, XREADGROUP, XACK, XAUTOCLAIM and
 * friends: the queue pool (tasks are entries of a stream, workers are the
 * consumers of one group) and streams of proxies (topics are streams,
 * consumers read alone or in groups) both build on it.
 *
 * A handle talks to one server over two connections (ps_rconn): one for
 * ordinary commands, one for the reads the server holds on purpose
 * (XREADGROUP BLOCK, XREAD BLOCK, BLPOP...), so that a blocked read never
 * holds up a command. Neither is opened before it is needed; after fork a
 * child's calls open connections of its own.
 *
 * Errors: every function returns PS_BOK or a PS_B* code with err set
 * (backend.h). PS_BCONN: cannot reach or lost the server; PS_BTIMEOUT: it
 * stopped answering (a held read's wait does not count); PS_BCONFIG:
 * authentication or a bad db; PS_BNOTFOUND: NOGROUP, the stream or the
 * group does not exist (a server restarted without persistence loses
 * both: create the group again); PS_BPROTO: any other error reply (the
 * server's text is in err->msg) or a malformed reply. A command that fails
 * with PS_BCONN on a connection that had served before (the server
 * restarted since) is sent once more on a new connection, as the Redis
 * store does, so a restart costs one call no error; the price is that an
 * XADD the old server ran just before dying may be added twice. Consumers
 * see every entry at least once anyway, so they must be idempotent.
 *
 * A handle is used by one thread at a time.
 */
#ifndef PS_GROUPS_H
#define PS_GROUPS_H

#include <stddef.h>

#include "redis_conn.h"

/* Room for any stream id ("<ms>-<seq>", 20 digits each) and its NUL. */
#define PS_RID_MAX 48

typedef struct ps_rgroups ps_rgroups;

/* A field or value of an entry to add: bytes, not NUL-terminated. */
typedef struct ps_rbytes {
  const char *p;
  size_t len;
} ps_rbytes;

/* An entry to add: nfields name/value pairs, names at even indices. */
typedef struct ps_rnew {
  size_t nfields;
  const ps_rbytes *fv;       /* 2 * nfields */
} ps_rnew;

/* How XADD or XTRIM trims the stream. */
enum { PS_RTRIM_NONE = 0, PS_RTRIM_MAXLEN, PS_RTRIM_MINID };
typedef struct ps_rtrim {
  int how;                   /* PS_RTRIM_* */
  int approx;                /* "~": whole radix nodes only, much cheaper;
                                the stream may keep a few more entries */
  long long maxlen;          /* PS_RTRIM_MAXLEN: entries kept */
  const char *minid;         /* PS_RTRIM_MINID: entries below it go */
} ps_rtrim;

/* An entry read from a stream; its strings live in the ps_rentries. */
typedef struct ps_rentry {
  const char *id;            /* NUL-terminated */
  size_t nfields;
  const ps_rvalue *fv;       /* 2 * nfields bulk values: name, value, ... */
  int deleted;               /* pending but no longer in the stream: no
                                fields (XREADGROUP of pending entries,
                                XAUTOCLAIM on Redis 6.2) */
  long long deliveries;      /* times delivered, once ps_rg_deliveries
                                has filled it; else 0 */
} ps_rentry;

typedef struct ps_rentries {
  size_t n;
  ps_rentry *e;
  char next[PS_RID_MAX];     /* XAUTOCLAIM: start of the next scan, "0-0"
                                when the scan reached the end */
  size_t ndeleted;           /* XAUTOCLAIM on Redis 7: pending entries that */
  const ps_rvalue *deleted;  /* no longer exist, removed from the pending
                                list by the server (their ids, bulk) */
  ps_rvalue reply;           /* owns the bytes */
} ps_rentries;

/* One entry of a pending list (XPENDING's extended form). */
typedef struct ps_rpending {
  const char *id;
  const char *consumer;
  long long idle_ms;
  long long deliveries;
} ps_rpending;

typedef struct ps_rpendings {
  size_t n;
  ps_rpending *p;
  ps_rvalue reply;
} ps_rpendings;

/* A group as XINFO GROUPS describes it. */
typedef struct ps_rgroup_info {
  long long consumers;
  long long pending;         /* delivered, not acknowledged */
  long long entries_read;    /* -1 when the server does not say (6.2) */
  long long lag;             /* entries not delivered yet; -1: unknown
                                (6.2, or entries were deleted) */
  char last_delivered[PS_RID_MAX];
} ps_rgroup_info;

/* A command for ps_rg_call: argc arguments of lens[i] bytes. */
typedef struct ps_rcmd {
  size_t argc;
  const char *const *argv;
  const size_t *lens;
} ps_rcmd;

/* ---- the handle ------------------------------------------------------- */

/* Copies cfg (host/port or path, db, username, password, timeout) and
   checks the server answers (PING). NULL with err set on failure. */
ps_rgroups *ps_rg_open(const ps_bconfig *cfg, ps_berr *err);
/* Closes both connections and frees the handle; NULL is fine. */
void ps_rg_close(ps_rgroups *g);
/* "host:port" or the socket path, for messages. */
const char *ps_rg_address(const ps_rgroups *g);
/*
 * How many connections the handle has opened so far, both kinds, first
 * ones included. A caller that keeps state on the server (a key that must
 * exist, a group) checks it again when this changed: calls reconnect by
 * themselves after a restart, and a server restarted without persistence
 * has lost that state.
 */
unsigned long ps_rg_connects(const ps_rgroups *g);
/*
 * What one reply may make the reader allocate (strings, elements,
 * depth). The default bounds a reply at 1 GiB of strings and 4M
 * elements: a read of a batch of large entries fits, a broken or hostile
 * server cannot make the reader allocate without limit.
 */
void ps_rg_set_limits(ps_rgroups *g, const ps_rlimits *lim);
/*
 * Blocking calls (block_ms >= 0, ps_rg_call_blocking) also end as soon as
 * fd is readable (a self-pipe a signal handler writes to, a socket whose
 * peer closed): they set *woken and return PS_BOK with nothing read. The
 * server cannot be told to drop a held read, so the blocking connection
 * is closed; entries it had already delivered stay pending for the
 * consumer (they are claimed again after their idle time). -1: none.
 */
void ps_rg_set_wake_fd(ps_rgroups *g, int fd);
/* True when the wake fd is readable now (never waits). */
int ps_rg_woken(const ps_rgroups *g);
/*
 * Waits up to seconds, or until the wake fd is readable (returns 1 then,
 * else 0): a pause between retries that a stop request cuts short.
 */
int ps_rg_sleep(const ps_rgroups *g, double seconds);

/* ---- groups --------------------------------------------------------------- */

/*
 * XGROUP CREATE stream group start MKSTREAM: start "$" delivers only
 * entries added from now on, "0" every entry in the stream. A group that
 * exists already is left as it is (not an error), so every producer and
 * consumer may call it at start.
 */
int ps_rg_create_group(ps_rgroups *g, const char *stream, const char *group,
                       const char *start, ps_berr *err);
/* XGROUP DESTROY; *existed (may be NULL) tells whether it did. */
int ps_rg_destroy_group(ps_rgroups *g, const char *stream, const char *group,
                        int *existed, ps_berr *err);
/* XGROUP DELCONSUMER: forgets a consumer and its pending entries (which
   are then never delivered again); *dropped gets their count. */
int ps_rg_delete_consumer(ps_rgroups *g, const char *stream,
                          const char *group, const char *consumer,
                          long long *dropped, ps_berr *err);
/* XINFO GROUPS, the entry of one group; PS_BNOTFOUND when the stream or
   the group does not exist. */
int ps_rg_group_info(ps_rgroups *g, const char *stream, const char *group,
                     ps_rgroup_info *out, ps_berr *err);

/* ---- adding and trimming --------------------------------------------------- */

/*
 * XADD of n entries in one round trip (pipelined), ids chosen by the
 * server; trim (may be NULL) trims the stream with each. ids (may be
 * NULL) gets the new ids in order. A failure part way leaves the entries
 * before it added; err says which one failed.
 */
int ps_rg_add(ps_rgroups *g, const char *stream, const ps_rtrim *trim,
              size_t n, const ps_rnew *entries, char (*ids)[PS_RID_MAX],
              ps_berr *err);
/* XTRIM; *removed (may be NULL) gets the number of entries removed. */
int ps_rg_trim(ps_rgroups *g, const char *stream, const ps_rtrim *trim,
               long long *removed, ps_berr *err);
/* XDEL of n ids; *deleted (may be NULL) gets how many existed. */
int ps_rg_delete(ps_rgroups *g, const char *stream, size_t n,
                 const char *const *ids, long long *deleted, ps_berr *err);
/* XLEN. */
int ps_rg_length(ps_rgroups *g, const char *stream, long long *len,
                 ps_berr *err);

/* ---- reading -------------------------------------------------------------- */

/*
 * XREADGROUP GROUP group consumer COUNT count [BLOCK block_ms] STREAMS
 * stream from. from ">": entries never delivered to the group; "0" (or an
 * id): the consumer's own pending entries after it, so a consumer that
 * restarts under the same name gets back what it had not acknowledged.
 * block_ms < 0: no BLOCK (answers at once); otherwise the server holds
 * the read up to block_ms (at least 1; Redis' "0 = forever" is not
 * offered: loop instead). *out is filled (n = 0 when nothing came) and
 * must be freed with ps_rentries_free, also after a failure. woken (may
 * be NULL unless a wake fd is set) as ps_rg_set_wake_fd says.
 */
int ps_rg_read_group(ps_rgroups *g, const char *stream, const char *group,
                     const char *consumer, const char *from, long count,
                     long block_ms, ps_rentries *out, int *woken,
                     ps_berr *err);
/*
 * ps_rg_read_group with the command pre sent first in the same round
 * trip (a queue worker's "store these results" script): its reply goes to
 * *pre_out whatever it is (an error reply too; the caller frees it), even
 * when the read was woken, since it is read before the held read is
 * waited for. A worker that answers as it asks for more pays one write
 * and one server wake-up, not two.
 */
int ps_rg_read_group_after(ps_rgroups *g, const ps_rcmd *pre,
                           ps_rvalue *pre_out, const char *stream,
                           const char *group, const char *consumer,
                           const char *from, long count, long block_ms,
                           ps_rentries *out, int *woken, ps_berr *err);
/*
 * XREAD COUNT count [BLOCK block_ms] STREAMS stream from, outside any
 * group (every reader sees every entry): from "$" only entries added
 * after the call, "0" from the start, or an id: the entries after it.
 * Pass the last id read as the next from ("$" again would skip what was
 * added in between).
 */
int ps_rg_read(ps_rgroups *g, const char *stream, const char *from,
               long count, long block_ms, ps_rentries *out, int *woken,
               ps_berr *err);
/* XRANGE stream start end COUNT count ("-" and "+" for the ends). */
int ps_rg_range(ps_rgroups *g, const char *stream, const char *start,
                const char *end, long count, ps_rentries *out, ps_berr *err);
/* XREVRANGE stream end start COUNT count: the newest entries first (count
   1: the last entry, say to find whether a topic has ended). */
int ps_rg_revrange(ps_rgroups *g, const char *stream, const char *end,
                   const char *start, long count, ps_rentries *out,
                   ps_berr *err);
/*
 * ps_rg_read_group after acknowledging nack ids (XACK) in the same round
 * trip: a consumer that acknowledges what it finished as it asks for more
 * pays one round trip, not two. *acked (may be NULL) as ps_rg_ack. With a
 * wake fd and block_ms >= 0 the XACK goes first on its own (a held read
 * must be the only reply waited for, so that the wake fd can cut it
 * short).
 */
int ps_rg_ack_read_group(ps_rgroups *g, const char *stream, const char *group,
                         const char *consumer, size_t nack,
                         const char *const *ack_ids, long long *acked,
                         const char *from, long count, long block_ms,
                         ps_rentries *out, int *woken, ps_berr *err);
void ps_rentries_free(ps_rentries *es);
/* The value of field name in e, or NULL. */
const ps_rvalue *ps_rentry_field(const ps_rentry *e, const char *name);

/* ---- acknowledging, claiming, pending ---------------------------------------- */

/* XACK of n ids in one command; *acked (may be NULL) gets how many were
   pending. */
int ps_rg_ack(ps_rgroups *g, const char *stream, const char *group, size_t n,
              const char *const *ids, long long *acked, ps_berr *err);
/*
 * XAUTOCLAIM stream group consumer min_idle_ms start COUNT count: entries
 * that have been pending for at least min_idle_ms (their consumer died,
 * or stopped touching them) become consumer's, each one more delivery.
 * out->next is where the next scan starts ("0-0": the end was reached).
 * Needs Redis 6.2.
 */
int ps_rg_autoclaim(ps_rgroups *g, const char *stream, const char *group,
                    const char *consumer, long long min_idle_ms,
                    const char *start, long count, ps_rentries *out,
                    ps_berr *err);
/*
 * Fills each entry's deliveries from XPENDING (one round trip for all),
 * for a max-attempts rule after a claim. An entry no longer pending gets 0.
 */
int ps_rg_deliveries(ps_rgroups *g, const char *stream, const char *group,
                     ps_rentries *es, ps_berr *err);
/*
 * XPENDING stream group [IDLE min_idle_ms] start end count [consumer]:
 * pending entries with their consumer, idle time and delivery count.
 * min_idle_ms <= 0: any; consumer NULL: every consumer's.
 */
int ps_rg_pending(ps_rgroups *g, const char *stream, const char *group,
                  long long min_idle_ms, const char *start, const char *end,
                  long count, const char *consumer, ps_rpendings *out,
                  ps_berr *err);
void ps_rpendings_free(ps_rpendings *ps);
/*
 * XPENDING's summary: how many entries are pending, and the lowest id
 * among them (lowest[0] == '\0' when none is).
 */
int ps_rg_pending_summary(ps_rgroups *g, const char *stream,
                          const char *group, long long *count,
                          char lowest[PS_RID_MAX], ps_berr *err);
/*
 * A heartbeat: resets the idle time of those of ids that are still
 * pending for consumer (XCLAIM ... JUSTID, which is not a delivery), and
 * leaves alone the ones another consumer has claimed meanwhile; owned[i]
 * (may be NULL) says which were still consumer's. One round trip (a
 * server-side script, so no claim can slip in between check and touch).
 */
int ps_rg_touch(ps_rgroups *g, const char *stream, const char *group,
                const char *consumer, size_t n, const char *const *ids,
                int *owned, ps_berr *err);
/*
 * Reclaiming: what other consumers of group have held for at least
 * min_idle_ms without acknowledging it (they died, or went silent) becomes
 * consumer's, at most count entries, each with its delivery count filled
 * (one more than before: the claim is a delivery). This is the one piece
 * of "hand a dead consumer's work to a live one" that the queue pool and
 * streams of proxies share; each decides what to do with the entries.
 * Pending entries no longer in the stream (trimmed or deleted while
 * pending: Redis 6.2 returns them without fields, Redis 7 reports their
 * ids) are acknowledged and left out, so nothing is left pending forever
 * for a consumer that cannot read it. cursor (PS_RID_MAX bytes, "0-0" for
 * the start of the pending list) is where the scan starts; it is moved on
 * to where the next call should start, "0-0" once the scan reached the end.
 * XAUTOCLAIM (Redis 6.2), then XACK and XPENDING when needed.
 */
int ps_rg_reclaim(ps_rgroups *g, const char *stream, const char *group,
                  const char *consumer, long long min_idle_ms, long count,
                  char cursor[PS_RID_MAX], ps_rentries *out, ps_berr *err);

/* ---- any command -------------------------------------------------------------- */

/*
 * n commands in one round trip on the command connection; out[0..n-1]
 * get their replies, error replies included (a PS_R_ERROR value is an
 * answer, not a failure). For what the functions above do not cover:
 * lists, scripts, keys. out must be freed with ps_rvalue_free, also after
 * a failure.
 */
int ps_rg_call(ps_rgroups *g, size_t n, const ps_rcmd *cmds, ps_rvalue *out,
               ps_berr *err);
/*
 * The same on the blocking connection, for commands the server may hold
 * up to wait_s seconds (BLPOP key wait_s, and whatever follows it in the
 * same round trip). Woken as the reads are; a pop woken that way may
 * still take a value pushed in the moment the server had not yet seen
 * the connection close, and that value is lost with it: wake list pops
 * only when stopping.
 */
int ps_rg_call_blocking(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                        double wait_s, ps_rvalue *out, int *woken,
                        ps_berr *err);
/*
 * A held call whose replies are read later, by another call: a pool
 * sends its BLPOP for replies before it waits for its XADD's reply, so a
 * result pushed meanwhile is answered at once, whenever the pool reads
 * it. ps_rg_send_held sends the n commands on the blocking connection
 * (one held call at a time; until its replies are read, the connection
 * serves nothing else: ps_rg_call_blocking and held reads fail with
 * PS_BCONFIG). ps_rg_recv_held waits up to wait_s (< 0: no limit) for
 * them: *ready 1 and the n replies in out, or *ready 0 when nothing came
 * yet (the call stays held, for a later ps_rg_recv_held). A server
 * silent past the call's wait_s plus the connection's timeout fails it
 * with PS_BTIMEOUT; a failure drops the connection and ends the call.
 * ps_rg_held: the number of replies held (0: none).
 */
int ps_rg_send_held(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                    double wait_s, ps_berr *err);
/* ps_rg_send_held, the commands sent right after the next command on the
   ordinary connection (or by ps_rg_recv_held, if none is sent first): a
   pool's BLPOP goes just after its XADD, not before it. */
int ps_rg_queue_held(ps_rgroups *g, size_t n, const ps_rcmd *cmds,
                     double wait_s, ps_berr *err);
int ps_rg_recv_held(ps_rgroups *g, double wait_s, ps_rvalue *out, int *ready,
                    ps_berr *err);
size_t ps_rg_held(const ps_rgroups *g);

#endif
