/*
 * redis_conn.h: one connection to a Redis server, speaking RESP on its fd.
 *
 * hiredis 0.14 makes the connection (TCP or Unix socket, within the time
 * left); after that the fd is ours, non-blocking, and every wait is a poll
 * bounded by the call's time bounds (ps_rconn_begin_call). AUTH and
 * SELECT are sent like any other command. Replies are read with a small buffered reader that can drop a
 * large bulk string straight into a caller's buffer (hiredis' reader grows
 * and copies: 4 ms for a 1 MiB GET where 0.2 ms is possible). Commands
 * are written with sendmsg, large arguments by reference, never copied.
 *
 * Any I/O or protocol failure closes the connection; the next call
 * reconnects. The connection counts the replies it is owed: a call that
 * ends with any unread (an error in the middle of a pipeline) must have
 * read them or closed the connection, or the next call would take a stale
 * reply for its own; ps_rconn_settle enforces that. A connection opened
 * by another process (after fork) is closed in the child, without a word
 * to the server, and reopened.
 */
#ifndef PS_REDIS_CONN_H
#define PS_REDIS_CONN_H

#include <stddef.h>
#include <sys/types.h>

#include "backend.h"

typedef struct ps_rconn {
  int fd;                /* -1: not connected */
  unsigned gen;          /* fork generation of the process that opened fd */
  char *rbuf;            /* read buffer */
  size_t rpos, rlen, rcap;
  size_t rtouched;       /* how far reads have ever filled rbuf (fill) */
  /* config, owned copies */
  char *host, *path, *username, *password;
  int port, db;
  double timeout;
  /* The current call's bounds (monotonic seconds; 0: no timeout): its
   * deadline, moved on by every byte it sends or is promised (see
   * PS_RCONN_MIN_RATE), and the last time a byte moved. */
  double deadline, last_io;
  char addr[300];        /* "host:port" or the socket path */
  /* the command being built */
  char *wbuf;            /* small argument bytes */
  size_t wlen, wcap;
  struct ps_rseg { const char *p; size_t off, len; } *segs;
  size_t nsegs, segcap;
  int oom;               /* an append failed while building */
  size_t queued;         /* commands built, not yet sent */
  size_t pending;        /* replies the server owes us */
  size_t discards;       /* the oldest of them, wanted by no one */
  /* Redis Cluster (cluster.c). With asking set, every command built is
   * preceded by ASKING, whose +OK the reader takes before each reply. With
   * cluster set, the reader counts the replies it reads and notes those
   * that redirect (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): the first one's
   * text is kept in redirect, until the counts are reset. */
  int cluster, asking;
  size_t asks_owed;      /* ASKING replies not read yet */
  unsigned replies, redirects;
  char redirect[160];
} ps_rconn;

/* Reply types (RESP2 first bytes). */
enum { PS_R_STATUS = '+', PS_R_ERROR = '-', PS_R_INT = ':',
       PS_R_BULK = '$', PS_R_ARRAY = '*' };

/* A small reply: status/error/bulk text in buf (NUL-terminated). */
typedef struct ps_rreply {
  int type;
  long long n;           /* integer, bulk length (-1: nil), array count */
  char *str;             /* malloc'ed text for status/error/bulk */
  size_t len;
} ps_rreply;

/* Copies cfg; does not connect. Returns 0 or a PS_B* code. */
int ps_rconn_init(ps_rconn *c, const ps_bconfig *cfg, ps_berr *err);
void ps_rconn_free(ps_rconn *c);
/* Connects if not connected or connected by another process (fork). */
int ps_rconn_ensure(ps_rconn *c, ps_berr *err);
/*
 * Starts a call. From now on it fails with PS_BTIMEOUT when nothing has
 * moved for c->timeout seconds (a hanging server), or when it has taken
 * longer than c->timeout plus one second for every PS_RCONN_MIN_RATE bytes
 * it sends and is sent (a server whose bytes trickle in): a large object
 * that moves at any sane speed is never cut off by the timeout meant for
 * hangs, and no call can be stretched without bound. A retry is part of
 * the call.
 */
#define PS_RCONN_MIN_RATE (8.0 * 1024 * 1024)
void ps_rconn_begin_call(ps_rconn *c);
/* True when connected, by this process (not inherited across fork). */
int ps_rconn_owned(const ps_rconn *c);
/* Closes the connection (after an error); the next ensure reconnects. */
void ps_rconn_drop(ps_rconn *c);
/*
 * Ends a call: a connection with replies still owed (but the discarded
 * ones) or commands built but not sent is closed, so no later call can
 * read a reply meant for this one.
 */
void ps_rconn_settle(ps_rconn *c);

/* Building commands; errors are reported by ps_rconn_send. */
void ps_rcmd_begin(ps_rconn *c, size_t nargs);
void ps_rcmd_arg(ps_rconn *c, const void *p, size_t len);
void ps_rcmd_str(ps_rconn *c, const char *s);
/* Starts a bulk argument of total length len whose bytes follow in parts. */
void ps_rcmd_bulk_begin(ps_rconn *c, size_t len);
void ps_rcmd_bulk_part(ps_rconn *c, const void *p, size_t len);
void ps_rcmd_bulk_end(ps_rconn *c);
/* Writes every command built so far. */
int ps_rconn_send(ps_rconn *c, ps_berr *err);
/*
 * The reply of the command sent last is wanted by no one: it is read and
 * dropped before the next reply anyone reads (a command whose effect
 * matters but whose answer does not, such as a DEL of a value already
 * read, costs no wait of its own), and it does not count as owed when the
 * call settles. Only integer, status and error replies can be dropped so.
 */
void ps_rconn_discard_reply(ps_rconn *c);

/*
 * Reads a reply's first line: type and number (integer, bulk length,
 * array count); for status and error replies the text goes to r->str.
 * A reply counts as read once its head is (status, error, integer, nil)
 * or once the CRLF after its bulk body is. An array's elements are not
 * read here: whoever meets one reads it with ps_rconn_read_value or closes
 * the connection.
 */
int ps_rconn_read_head(ps_rconn *c, ps_rreply *r, ps_berr *err);
/* Reads exactly n bytes of a bulk body into dst. */
int ps_rconn_read_body(ps_rconn *c, void *dst, size_t n, ps_berr *err);
/* Reads the CRLF after a bulk body. */
int ps_rconn_read_crlf(ps_rconn *c, ps_berr *err);
/* Reads a whole small reply without arrays (bulk bodies of at most 64 KiB,
   malloc'ed into r->str). */
int ps_rconn_read_reply(ps_rconn *c, ps_rreply *r, ps_berr *err);
void ps_rreply_free(ps_rreply *r);

/*
 * A whole reply of any shape, nested arrays included (stream entries,
 * CLUSTER SLOTS, BLPOP...), read into a tree of malloc'ed nodes. Limits
 * bound what a broken or hostile server can make the reader allocate: a
 * reply past them fails with PS_BPROTO and closes the connection.
 */
typedef struct ps_rvalue {
  int type;                 /* PS_R_STATUS, _ERROR, _INT, _BULK, _ARRAY */
  long long n;              /* integer; bulk length or element count (-1: nil) */
  char *str;                /* status, error or bulk bytes, NUL-terminated */
  size_t len;
  struct ps_rvalue *elem;   /* an array's n elements */
} ps_rvalue;

typedef struct ps_rlimits {
  size_t max_bytes;         /* all strings of the reply together */
  size_t max_elems;         /* all array elements of the reply together */
  int max_depth;            /* arrays inside arrays */
} ps_rlimits;

/* Small replies: 1 MiB of strings, 64k elements, 8 levels. */
extern const ps_rlimits ps_rlimits_small;

/* Reads one whole reply into *v (freed by ps_rvalue_free, also after a
   failure). It counts as one reply read, whatever it holds. */
int ps_rconn_read_value(ps_rconn *c, ps_rvalue *v, const ps_rlimits *lim,
                        ps_berr *err);
void ps_rvalue_free(ps_rvalue *v);
/* The i-th element of an array value, or NULL (not an array, too short). */
const ps_rvalue *ps_rvalue_at(const ps_rvalue *v, size_t i);

/*
 * Inside a call, before waiting for the reply of a command the server
 * holds on purpose (BLPOP, XREADGROUP BLOCK): the server may stay silent
 * for seconds more, and the call's bounds move on by that much.
 */
void ps_rconn_allow_wait(ps_rconn *c, double seconds);

/* Redirection replies (cluster.c reads their details from c->redirect). */
enum { PS_RREDIR_NONE, PS_RREDIR_MOVED, PS_RREDIR_ASK, PS_RREDIR_TRYAGAIN,
       PS_RREDIR_CLUSTERDOWN };
/* Which kind of redirection an error reply's text is, or PS_RREDIR_NONE. */
int ps_rconn_redirect_kind(const char *msg);
/* Forgets the replies and redirections counted so far. */
void ps_rconn_reset_counts(ps_rconn *c);

/* A decimal integer argument (COUNT, BLOCK, MAXLEN...). */
void ps_rcmd_int(ps_rconn *c, long long v);

/* PS_BCONN for error replies meaning "cannot serve now" (maxclients,
   LOADING, BUSY), else otherwise. */
int ps_rconn_error_code(const char *msg, int otherwise);
/* Closes the connection and sets err: code, address, what, detail. */
int ps_rconn_fail(ps_rconn *c, ps_berr *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
