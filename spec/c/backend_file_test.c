/*
 * backend_file_test.c: the file backend driven from plain C, without Lua.
 * Usage: backend_file_test DIR   (DIR must not exist; it is created and,
 * with clear, removed). Prints "ok N - what" lines and exits non-zero on
 * the first failure.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"

static int n_ok;

#define CHECK(cond, what) do {                                          \
    if (!(cond)) {                                                      \
      fprintf(stderr, "not ok - %s (%s:%d) [%s]\n", what, __FILE__,    \
              __LINE__, err.msg);                                       \
      exit(1);                                                          \
    }                                                                   \
    printf("ok %d - %s\n", ++n_ok, what);                               \
  } while (0)

static ps_key K(const char *s) { return ps_key_of(s, strlen(s)); }

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  const char *dir = argv[1];
  char path[4096];
  ps_berr err = {0};
  const ps_backend_ops *ops = &ps_backend_file;
  ps_bconfig cfg = {.dir = dir, .clear = 1};
  struct stat st;

  void *ctx = ops->open(&cfg, &err);
  CHECK(ctx != NULL, "open creates the directory");
  CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) &&
        (st.st_mode & 07777) == 0700, "directory mode is 0700");

  ps_version v1, v2, v3;
  CHECK(ops->put(ctx, K("a"), "hello", 5, &v1, &err) == PS_BOK, "put");
  snprintf(path, sizeof path, "%s/a", dir);
  CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600,
        "file mode is 0600");

  ps_blob b = {0};
  CHECK(ops->get(ctx, K("a"), NULL, &b, &v2, &err) == PS_BOK && b.len == 5 &&
        memcmp(b.data, "hello", 5) == 0, "get returns the bytes");
  ps_blob_release(&b);
  CHECK(memcmp(&v1, &v2, sizeof v1) == 0, "put and get agree on the version");
  CHECK(ops->get(ctx, K("a"), &v1, &b, NULL, &err) == PS_BUNCHANGED &&
        b.data == NULL, "get with the current version is unchanged");
  CHECK(ops->put(ctx, K("a"), "hellp", 5, &v3, &err) == PS_BOK &&
        memcmp(&v1, &v3, sizeof v1) != 0, "same-size rewrite changes version");
  CHECK(ops->get(ctx, K("a"), &v1, &b, &v2, &err) == PS_BOK &&
        memcmp(b.data, "hellp", 5) == 0 && memcmp(&v2, &v3, sizeof v2) == 0,
        "get with a stale version reads the new bytes");
  ps_blob_release(&b);

  CHECK(ops->put(ctx, K("empty"), "", 0, NULL, &err) == PS_BOK, "put empty");
  CHECK(ops->get(ctx, K("empty"), NULL, &b, NULL, &err) == PS_BOK &&
        b.len == 0, "get empty");
  ps_blob_release(&b);

  size_t big = 9u << 20;
  char *data = malloc(big);
  for (size_t i = 0; i < big; i++) data[i] = (char)(i * 7 + (i >> 12));
  CHECK(ops->put(ctx, K("big"), data, big, NULL, &err) == PS_BOK, "put 9 MiB");
  CHECK(ops->get(ctx, K("big"), NULL, &b, NULL, &err) == PS_BOK &&
        b.len == big && memcmp(b.data, data, big) == 0 && b.release != NULL,
        "get 9 MiB (mapped)");
  ps_blob_release(&b);

  /* Mapped blobs are unmapped by a background thread; a forked child has
   * none until it needs one, and both sides keep working. */
  ps_blob b2 = {0};
  CHECK(ops->get(ctx, K("big"), NULL, &b, NULL, &err) == PS_BOK, "get again");
  pid_t child = fork();
  if (child == 0) {
    int ok = ops->get(ctx, K("big"), NULL, &b2, NULL, &err) == PS_BOK &&
             b2.len == big && memcmp(b2.data, data, big) == 0 &&
             b.len == big && memcmp(b.data, data, big) == 0;
    ps_blob_release(&b2);
    ps_blob_release(&b);
    _exit(ok ? 0 : 1);
  }
  int status = -1;
  waitpid(child, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a forked child reads and releases mapped blobs");
  CHECK(memcmp(b.data, data, big) == 0, "the parent's blob is intact");
  ps_blob_release(&b);
  for (int i = 0; i < 20; i++) {
    if (ops->get(ctx, K("big"), NULL, &b, NULL, &err) != PS_BOK) break;
    ps_blob_release(&b);
  }
  CHECK(b.data == NULL, "many mapped reads released in a row");
  free(data);

  int found = -1;
  CHECK(ops->exists(ctx, K("a"), &found, &err) == PS_BOK && found == 1,
        "exists finds a key");
  CHECK(ops->evict(ctx, K("a"), &err) == PS_BOK, "evict");
  CHECK(ops->exists(ctx, K("a"), &found, &err) == PS_BOK && found == 0,
        "exists after evict");
  CHECK(ops->evict(ctx, K("a"), &err) == PS_BOK, "evict of absent is ok");
  CHECK(ops->get(ctx, K("a"), NULL, &b, NULL, &err) == PS_BNOTFOUND,
        "get of absent is not found");

  const char *bad[] = {"", ".", "..", "../x", "a/b", ".hidden", "a..b"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err.code = 0;
    CHECK(ops->put(ctx, K(bad[i]), "x", 1, NULL, &err) == PS_BCONFIG &&
          strstr(err.msg, "refused key"), "refuses a key that could escape");
    CHECK(ops->get(ctx, K(bad[i]), NULL, &b, NULL, &err) == PS_BCONFIG,
          "get refuses it too");
  }
  ps_key nul = ps_key_of("a\0b", 3);
  CHECK(ops->put(ctx, nul, "x", 1, NULL, &err) == PS_BCONFIG, "refuses NUL");

  /* A second context on the same directory sees the first one's data and
   * does not own the directory. */
  ps_bconfig cfg2 = {.dir = dir, .clear = 1};
  void *ctx2 = ops->open(&cfg2, &err);
  CHECK(ctx2 != NULL, "second open of an existing directory");
  CHECK(ops->get(ctx2, K("empty"), NULL, &b, NULL, &err) == PS_BOK,
        "second context reads the first one's object");
  ps_blob_release(&b);
  CHECK(ops->put(ctx2, K("mine"), "m", 1, NULL, &err) == PS_BOK, "put 2");
  ops->close(ctx2);
  snprintf(path, sizeof path, "%s/mine", dir);
  CHECK(stat(path, &st) != 0 && errno == ENOENT,
        "clear removes what a non-owning store wrote");
  snprintf(path, sizeof path, "%s/big", dir);
  CHECK(stat(path, &st) == 0, "and leaves what others wrote");

  /* No temporary file is left behind by any of this. */
  snprintf(path, sizeof path, "ls -A '%s' | grep -c '^\\.' >/dev/null", dir);
  CHECK(system(path) != 0, "no temporary files left");

  /* A regular file in place of the directory. */
  snprintf(path, sizeof path, "%s/big", dir);
  ps_bconfig cfg3 = {.dir = path};
  CHECK(ops->open(&cfg3, &err) == NULL && err.code == PS_BIO &&
        strstr(err.msg, "big"), "a file in place of the directory is an error");

  ops->close(ctx);
  CHECK(stat(dir, &st) != 0 && errno == ENOENT,
        "clear removes the directory its process created");
  return 0;
}
