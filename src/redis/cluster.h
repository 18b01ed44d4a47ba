/*
 * cluster.h: a Redis Cluster client, under the connection API.
 *
 * The Redis backend asks for "the connection for this slot" and gets the
 * node that serves it; everything it does on that connection is what it
 * does on a single server. This layer owns what is particular to a
 * cluster:
 *
 *   - the slot map, read from CLUSTER SHARDS (Redis 7), or CLUSTER SLOTS
 *     where SHARDS is unknown, from any node that answers (seeds included;
 *     dead ones are skipped); cluster_map.c;
 *   - the slot of a key: CRC16 of the key, or of its {hash tag};
 *   - one ps_rconn per node, opened on first use;
 *   - what the nodes answer about slots: MOVED updates the map and the call
 *     is tried again there; ASK sends the call once to the importing node,
 *     every command behind an ASKING, without touching the map; TRYAGAIN,
 *     CLUSTERDOWN and a node that cannot be reached are tried again after
 *     a bounded backoff (the map read anew) for as long as the call's
 *     timeout allows, then the call fails with kind "connection" (or
 *     "timeout").
 *
 * A call is a series of attempts: ps_rcluster_begin_call, then for each
 * attempt ps_rcluster_conn for the key's slot, the backend's commands on
 * that connection, and ps_rcluster_again to tell whether to try again.
 * Every attempt of a call shares the call's one deadline (the timeout,
 * plus what the connections add for the bytes they move), on every node.
 *
 * The connection layer notes which replies redirect (c->redirect): an
 * attempt whose replies redirected is tried again only when it failed; an
 * attempt that succeeded is the call's result, so a caller never sees
 * another key's bytes, and every operation retried here must be safe to
 * repeat (the backend's are).
 */
#ifndef PS_CLUSTER_H
#define PS_CLUSTER_H

#include <stdint.h>

#include "redis_conn.h"

#define PS_CLUSTER_SLOTS 16384
/* Nodes one client knows at most: bounds what a hostile topology reply or
   a stream of redirections can make it allocate. */
#define PS_CLUSTER_MAX_NODES 1024
#define PS_CLUSTER_NONE 0xFFFF

typedef struct ps_rnode {
  char *host;
  int port;
  ps_rconn *c;           /* NULL until first used */
  double down_at;        /* monotonic time of its last failed connect */
} ps_rnode;

typedef struct ps_rcluster {
  ps_bconfig cfg;        /* username, password, timeout for every node */
  char *username, *password, *seeds;
  ps_rnode *nodes;
  size_t n, cap, nseeds; /* the seeds are nodes[0 .. nseeds) */
  uint16_t slot[PS_CLUSTER_SLOTS];   /* node index, or PS_CLUSTER_NONE */
  double refreshed;      /* when the map was last read; 0: never */
  int stale;             /* a MOVED said the map is out of date */
  /* the current call */
  double started;
  double deadline;       /* 0: no timeout */
  double retry_until;    /* retries stop here (the deadline, or 5 s) */
  double backoff;        /* the next pause, seconds */
  int hops;              /* MOVED and ASK followed */
  int cur;               /* node of the current attempt */
  int reused, retried;   /* its connection was open before; retried once */
  int ask_node;          /* the next attempt goes there with ASKING, or -1 */
  unsigned ask_slot;
  char why[160];         /* the last redirection of the call, for messages */
} ps_rcluster;

/* The slot of a key: CRC16 (XMODEM) of its hash tag (the bytes between
   the first '{' and the next '}', when not empty) or of all of it. */
unsigned ps_rcluster_key_slot(const char *key, size_t len);
unsigned ps_rcluster_crc16(const char *p, size_t len);
/* The CRC16 of bytes that follow those that gave crc. */
unsigned ps_rcluster_crc16_update(unsigned crc, const char *p, size_t len);

/*
 * Opens a client over the seeds cfg->cluster ("host:port,host:port...")
 * and reads the slot map from the first seed that answers. NULL and err
 * set (PS_BCONFIG for bad seeds, auth failures and servers that are not
 * cluster nodes; PS_BCONN when no seed answers) on failure.
 */
ps_rcluster *ps_rcluster_open(const ps_bconfig *cfg, ps_berr *err);
void ps_rcluster_free(ps_rcluster *cl);
/* The seeds, as given: for messages. */
const char *ps_rcluster_address(const ps_rcluster *cl);

/* Starts a call: its deadline, and no redirection followed yet. */
void ps_rcluster_begin_call(ps_rcluster *cl);
/*
 * The connection of the node serving slot (or of the node an ASK named,
 * for the attempt right after it), connected, within the call's bounds,
 * its reply counts reset. *c is set even on failure (the node that could
 * not be reached), for ps_rcluster_again.
 */
int ps_rcluster_conn(ps_rcluster *cl, unsigned slot, ps_rconn **c,
                     ps_berr *err);
/* For batches: the node serving slot (the map read again first when a
   MOVED made it stale), and that node's connection, as ps_rcluster_conn. */
int ps_rcluster_pick(ps_rcluster *cl, unsigned slot);
int ps_rcluster_open_node(ps_rcluster *cl, int i, ps_rconn **c,
                          ps_berr *err);
/*
 * After an attempt that ended with *code: 1 when the call should try again
 * (the map updated, a pause made), 0 when *code and err are its result
 * (a failure that came from the cluster's state says so in err).
 */
int ps_rcluster_again(ps_rcluster *cl, int *code, ps_berr *err);
/*
 * For batches, after a round on connection c of node i (from
 * ps_rcluster_conn): applies the MOVED it met to the map and takes the
 * time its transfers added to the call's deadline.
 */
void ps_rcluster_learn(ps_rcluster *cl, ps_rconn *c);

/* cluster_map.c */
/* The index of node host:port, added when new; -1 when there are
   PS_CLUSTER_MAX_NODES already or no memory. */
int ps_rcluster_node(ps_rcluster *cl, const char *host, size_t hostlen,
                     int port);
/* The node's connection, made (not connected) on first use; NULL: no memory. */
ps_rconn *ps_rcluster_node_conn(ps_rcluster *cl, int i);
/* Reads the slot map from node i (CLUSTER SHARDS, else CLUSTER SLOTS). */
int ps_rcluster_read_map(ps_rcluster *cl, int i, ps_berr *err);
/* Reads the map from the first node that answers, known masters first,
   nodes that failed to connect a moment ago last. */
int ps_rcluster_refresh(ps_rcluster *cl, ps_berr *err);
/* Gives connection c the current call's bounds (and resets its counts). */
void ps_rcluster_join(ps_rcluster *cl, ps_rconn *c);
/* Takes back into the call's deadline the time c's transfers added. */
void ps_rcluster_absorb(ps_rcluster *cl, ps_rconn *c);
double ps_rcluster_now(void);

#endif
