/* backends.c: the byte backends a store can be built on, by kind. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bigalloc.h"
#include "codec.h"
#include "ps_backends.h"

static const ps_backend_ops *const all_backends[] = {
  &ps_backend_redis,
  &ps_backend_file,
  NULL
};

const ps_backend_ops *ps_backend_find(const char *kind) {
  for (size_t i = 0; all_backends[i] != NULL; i++)
    if (strcmp(all_backends[i]->kind, kind) == 0) return all_backends[i];
  return NULL;
}

int ps_berr_set(ps_berr *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return code;
}

void ps_blob_release(ps_blob *b) {
  if (b->data == NULL && b->release == NULL) return;
  if (b->release) b->release(b);
  else free(b->data);
  b->data = NULL;
  b->len = 0;
  b->release = NULL;
  b->opaque = NULL;
}

int ps_blob_alloc_object(ps_blob *b, size_t n) {
  /* One envelope byte, then what the codec puts before a string's bytes. */
  size_t head = n > 1 ? ps_codec_string_head(n - 1) : 0;
  return ps_blob_alloc_lead(b, n, head ? 1 + head : 0);
}

size_t ps_parts_len(const ps_part *parts, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) len += parts[i].len;
  return len;
}
