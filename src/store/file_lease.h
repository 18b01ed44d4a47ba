/*
 * file_lease.h: leases on the file store, kept in the directory itself so
 * that they hold whoever dies.
 *
 * A leased object's file has the owner's execute bit set (mode 0700;
 * other objects are 0600), and its lease ends at the modification time
 * (wall clock) of an empty mark file PS_FLEASE_DIR/<name>. Reads of a
 * leased object whose mark has passed, or is gone, find nothing; any
 * process that opens or closes the store sweeps: it removes the objects
 * whose lease has ended and their marks. Only objects with the bit pay a
 * second stat on read. Names are the object's file names (prefix and key):
 * the functions here take the store's directory fd and never see a key.
 */
#ifndef PS_FILE_LEASE_H
#define PS_FILE_LEASE_H

#include <stdint.h>
#include <sys/stat.h>

/* Starts with '.', which no object name does. */
#define PS_FLEASE_DIR ".ps-leases"
#define PS_FLEASE_MODE 0700

/* True when st (of an object file) says it is leased. */
#define PS_FLEASE_MARKED(st) (((st)->st_mode & S_IXUSR) != 0)

/* Sets name's lease to end ttl_ms from now (before the object is renamed
   into place, or to push a lease back). 0, or -1 with errno. */
int ps_flease_set(int dirfd, const char *name, int64_t ttl_ms);
/* For a leased object: 1 when its lease has ended or its mark is gone. */
int ps_flease_ended(int dirfd, const char *name);
/* 1 when name is a regular file that is not past its lease. */
int ps_flease_present(int dirfd, const char *name);
/* Removes name's mark; 1 if there was one (the object was leased). */
int ps_flease_drop(int dirfd, const char *name);
/*
 * Removes name if it is a leased object whose lease has ended. It is moved
 * aside first and checked again there, so an object written under the
 * name meanwhile is put back, never lost.
 */
void ps_flease_reap(int dirfd, const char *name);
/* Reaps every object whose lease has ended and drops their marks. */
void ps_flease_sweep(int dirfd);

#endif
