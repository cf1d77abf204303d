/* Errors with context. Library code returns a negative errno and, when the
 * caller passed a struct crx_err, a sentence saying what failed; only the
 * daemon layer decides whether and how to log it. */
#pragma once

#include <stdarg.h>

struct crx_err {
	int code; /* negative errno, 0 when nothing failed */
	char msg[1024];
};

/* Records the error (if err is not NULL) and returns code, so call sites can
 * write `return crx_err_set(err, -EINVAL, "...")`. */
int crx_err_set(struct crx_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int crx_err_setv(struct crx_err *err, int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* Adds a prefix to an error already recorded ("loading X: <old message>"). */
int crx_err_prefix(struct crx_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
