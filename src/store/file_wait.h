/*
 * file_wait.h: waiting for an object to appear in a file store's
 * directory (futures), woken by inotify rather than by polling.
 */
#ifndef PS_FILE_WAIT_H
#define PS_FILE_WAIT_H

#include "backend.h"

/*
 * Blocks until name (a file name in the directory open as dirfd, whose
 * path is dir) holds an object that is not past its lease, or timeout
 * seconds pass (timeout < 0: no limit): PS_BOK or PS_BTIMEOUT. shown is
 * the key as messages print it.
 */
int ps_fwait(int dirfd, const char *dir, const char *name, const char *shown,
             double timeout, ps_berr *err);

#endif
