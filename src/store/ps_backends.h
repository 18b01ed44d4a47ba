/* ps_backends.h: finding a backend by kind. */
#ifndef PS_BACKENDS_H
#define PS_BACKENDS_H
#include "backend.h"
/* The ops for kind ("redis", "file"), or NULL. */
const ps_backend_ops *ps_backend_find(const char *kind);
#endif
