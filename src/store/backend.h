/*
 * backend.h: the byte-level storage interface.
 *
 * A backend moves bytes under keys. It never sees a lua_State, so it can
 * run on a background thread (ps.resolve_async) and be tested from plain C.
 * Failures are reported as a PS_B* code plus a message in ps_berr; nothing
 * aborts or longjmps.
 *
 * Each backend context belongs to the process that opened it: after fork
 * a backend must not reuse its parent's sockets. The Redis backend tells
 * by a fork generation counter that a pthread_atfork child handler bumps
 * (no getpid() per call); see redis_conn.c.
 * A context is used by one thread at a time.
 */
#ifndef PS_BACKEND_H
#define PS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

enum {
  PS_BOK = 0,
  PS_BNOTFOUND,   /* key absent */
  PS_BUNCHANGED,  /* get with have_version: stored version is the same */
  PS_BCONN,       /* cannot reach or lost the server */
  PS_BTIMEOUT,    /* connect or command timed out */
  PS_BPROTO,      /* wrong type under key, corrupt data, bad reply */
  PS_BCONFIG,     /* bad option, refused key, auth failure */
  PS_BIO,         /* filesystem or other I/O failure */
  PS_BNOMEM,
  PS_BEXISTS      /* put_ex with if_absent: the key already holds an object */
};

typedef struct ps_berr {
  int code;
  char msg[256];
} ps_berr;

/* Opaque object version: equal versions mean equal bytes. */
#define PS_VERSION_LEN 16
typedef struct ps_version {
  unsigned char bytes[PS_VERSION_LEN];
} ps_version;

/*
 * Bytes handed out by a backend. release frees them; NULL release means
 * data came from malloc and free(data) releases it.
 */
typedef struct ps_blob {
  char *data;
  size_t len;
  void (*release)(struct ps_blob *);
  void *opaque;
} ps_blob;

void ps_blob_release(ps_blob *b);

/* A piece of a value written by put_parts: len bytes at data. */
typedef struct ps_part {
  const char *data;
  size_t len;
} ps_part;

/*
 * A blob for the n stored bytes of an object (the envelope byte, then the
 * encoding), from bigalloc.c: warm or huge-page memory from 64 KiB on, and
 * placed so that an object that is one string becomes a Lua string in the
 * blob's own block, without a copy (ps_blob_push_string). 0, or -1.
 */
int ps_blob_alloc_object(ps_blob *b, size_t n);
/* The bytes of n parts laid end to end. */
size_t ps_parts_len(const ps_part *parts, size_t n);

/* Options a store passes to its backend, already validated by Lua. */
typedef struct ps_bconfig {
  const char *host;      /* redis */
  int port;
  const char *path;      /* redis unix socket */
  int db;
  const char *username;
  const char *password;
  double timeout;        /* seconds; 0 = none */
  const char *prefix;    /* key prefix */
  const char *cluster;   /* redis: "host:port,host:port" seeds of a Redis
                            Cluster (host, port and path unused), or NULL */
  const char *dir;       /* file */
  int recycle;           /* file: evicted files kept as spares to reuse */
  int clear;             /* file: close removes the objects this store
                            wrote (while still the files it wrote), then
                            dir if this process created it and it is empty */
  int no_create;         /* file: dir must exist (a prefetch context must
                            not bring back a directory someone removed) */
} ps_bconfig;

typedef struct ps_key {
  const char *data;
  size_t len;
  int fresh;   /* the store made this key for this put (128 random bits):
                  nothing can be stored under it yet, so a backend may skip
                  what it does to replace an old object */
} ps_key;

/* The key of len bytes at data (not fresh). Every ps_key is made by this
 * or a designated initializer: a field left unset could read as fresh,
 * and a put under it would leave an old object's chunks behind. */
static inline ps_key ps_key_of(const char *data, size_t len) {
  return (ps_key){.data = data, .len = len, .fresh = 0};
}

/* What put_ex does besides storing the bytes. */
typedef struct ps_bput {
  int64_t ttl_ms;   /* > 0: a lease the store keeps: every key of the
                       object is gone ttl_ms from now, whoever is alive */
  int if_absent;    /* store only if key holds no object (an expired one
                       counts as none): PS_BEXISTS otherwise, nothing written */
  int wake;         /* wake every process waiting on key (ops->wait) */
  int fresh_key;    /* the store made the key for this put (ps_key.fresh);
                       alone, it leaves the put a plain one */
} ps_bput;

typedef struct ps_backend_ops {
  const char *kind;
  /* Opens a context; on failure returns NULL with err set. */
  void *(*open)(const ps_bconfig *cfg, ps_berr *err);
  /* Releases everything; ctx may be half-open. */
  void (*close)(void *ctx);
  /* A description for errors: "127.0.0.1:6379", "/dev/shm/x". */
  const char *(*address)(void *ctx);

  /* Stores bytes; *version_out (if non-NULL) gets the new version. */
  int (*put)(void *ctx, ps_key key, const char *data, size_t len,
             ps_version *version_out, ps_berr *err);
  /*
   * Optional (NULL: the store joins the parts and calls put): put of the
   * bytes of parts[0..n) laid end to end, stored exactly as put would
   * store them joined. The parts are written where they lie (a large Lua
   * string goes to the socket straight from the string, never copied into
   * a buffer first).
   */
  int (*put_parts)(void *ctx, ps_key key, const ps_part *parts, size_t n,
                   ps_version *version_out, ps_berr *err);
  /*
   * Reads the bytes under key into *out. With have != NULL, returns
   * PS_BUNCHANGED (no bytes) when the stored version equals *have; the
   * check happens in the same round trip as the read. *version_out gets the
   * stored version when non-NULL.
   */
  int (*get)(void *ctx, ps_key key, const ps_version *have, ps_blob *out,
             ps_version *version_out, ps_berr *err);
  int (*exists)(void *ctx, ps_key key, int *found, ps_berr *err);
  /* Deletes every byte stored under key; an absent key is PS_BOK. */
  int (*evict)(void *ctx, ps_key key, ps_berr *err);
  /*
   * Optional (NULL: get, then evict): get (no have version) and evict of
   * the object under key, the delete in the same round trip as the read
   * where the backend can; PS_BNOTFOUND when there is none. Only an object
   * the backend wrote is deleted before it is read (anything else under
   * key stays, and the get's error says what it is); on any failure *out
   * holds nothing. The resolve of a single-use (evict) proxy.
   */
  int (*take)(void *ctx, ps_key key, ps_blob *out, ps_version *version_out,
              ps_berr *err);

  /*
   * Optional batch forms (NULL: the store loops over put/get).
   * get_batch fills codes[i] with PS_BOK or PS_BNOTFOUND per key and
   * returns PS_BOK, or an error code for the whole batch.
   */
  int (*put_batch)(void *ctx, size_t n, const ps_key *keys,
                   const ps_blob *values, ps_version *versions_out,
                   ps_berr *err);
  int (*get_batch)(void *ctx, size_t n, const ps_key *keys, ps_blob *out,
                   ps_version *versions_out, int *codes, ps_berr *err);

  /*
   * Optional, for futures and leases (NULL: the store says the backend
   * cannot). put_ex is put with the ps_bput options, each atomic with the
   * write: a process killed during put_ex leaves either nothing or the
   * object with its lease and its wake-up.
   */
  int (*put_ex)(void *ctx, ps_key key, const ps_part *parts, size_t n,
                const ps_bput *opts, ps_version *version_out, ps_berr *err);
  /*
   * Blocks until an object exists under key (PS_BOK), or timeout seconds
   * pass (PS_BTIMEOUT; timeout < 0: no limit). Woken by the store, not by
   * polling: a put_ex with wake (any write, on the file store) wakes every
   * waiter in every process, and a wait that starts after it returns at
   * once. With out != NULL it then reads the object as get does (no have
   * version; PS_BNOTFOUND when it went again at once), in the same round
   * trip where the backend can. It holds ctx for the whole wait: call it
   * on a context of its own, never on the one the store's other calls use.
   */
  int (*wait)(void *ctx, ps_key key, double timeout, ps_blob *out,
              ps_version *version_out, ps_berr *err);
  /*
   * Every key of the object under key (chunks and wake-up included) now
   * expires ttl_ms from now: a lease set or pushed back. PS_BNOTFOUND when
   * there is no object under key.
   */
  int (*expire)(void *ctx, ps_key key, int64_t ttl_ms, ps_berr *err);
} ps_backend_ops;

extern const ps_backend_ops ps_backend_redis;
extern const ps_backend_ops ps_backend_file;

/* Fills err and returns code (for "return ps_berr_set(err, PS_BIO, ...)"). */
int ps_berr_set(ps_berr *err, int code, const char *fmt, ...);

#endif
