/* A minimal TAP producer for the unit tests (automake's tap-driver reads it). */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_count, tap_failed;

static inline bool tap_ok(bool pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline bool tap_ok(bool pass, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%sok %d - ", pass ? "" : "not ", ++tap_count);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	if (!pass)
		tap_failed++;
	fflush(stdout);
	return pass;
}

#define ok(cond, ...) tap_ok((cond), __VA_ARGS__)
#define is_int(got, want, name)                                          \
	do {                                                             \
		long long _g = (long long)(got), _w = (long long)(want); \
		if (!tap_ok(_g == _w, "%s", name))                       \
			printf("#   got %lld, want %lld\n", _g, _w);     \
	} while (0)
#define is_str(got, want, name)                                                     \
	do {                                                                        \
		const char *_g = (got), *_w = (want);                               \
		if (!tap_ok(_g && _w && strcmp(_g, _w) == 0, "%s", name))           \
			printf("#   got \"%s\", want \"%s\"\n", _g ? _g : "(null)", \
			       _w ? _w : "(null)");                                 \
	} while (0)
#define has_str(hay, needle, name)                                                              \
	do {                                                                                    \
		const char *_h = (hay), *_n = (needle);                                         \
		if (!tap_ok(_h && strstr(_h, _n), "%s", name))                                  \
			printf("#   \"%s\" does not contain \"%s\"\n", _h ? _h : "(null)", _n); \
	} while (0)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_count);
	return tap_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
