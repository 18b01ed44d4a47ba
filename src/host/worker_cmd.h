/*
 * worker_cmd.h: `proxystore worker`, the queue worker command of the host
 * binary (worker_cmd.c).
 */
#ifndef PS_WORKER_CMD_H
#define PS_WORKER_CMD_H

#include <lua.h>

/*
 * Runs `proxystore worker ...`: argv[0] is "worker", the rest its
 * arguments. L has its libraries and proxystore set up. Returns the exit
 * status: 0 after a stop asked for by SIGTERM (or --help), 1 otherwise.
 */
int ps_host_worker(lua_State *L, int argc, char **argv);

#endif
