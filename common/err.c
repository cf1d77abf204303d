#include "config.h"

#include "common/err.h"

#include <stdio.h>
#include <string.h>

int crx_err_setv(struct crx_err *err, int code, const char *fmt, va_list ap)
{
	if (err) {
		err->code = code;
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	}
	return code;
}

int crx_err_set(struct crx_err *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	crx_err_setv(err, code, fmt, ap);
	va_end(ap);
	return code;
}

static void append(char *dst, size_t size, const char *src)
{
	size_t used = strlen(dst), n = strlen(src);
	if (used + n >= size)
		n = size - used - 1;
	memcpy(dst + used, src, n);
	dst[used + n] = '\0';
}

int crx_err_prefix(struct crx_err *err, const char *fmt, ...)
{
	if (!err)
		return 0;
	char old[sizeof(err->msg)];
	memcpy(old, err->msg, sizeof(old));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	append(err->msg, sizeof(err->msg), ": ");
	append(err->msg, sizeof(err->msg), old);
	return err->code;
}
