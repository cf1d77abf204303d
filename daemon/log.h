/* Logging, for the daemon layer only: library code returns errors instead.
 * Records go to the journal when stderr is connected to it (JOURNAL_STREAM),
 * otherwise to stderr as "LEVEL: message". */
#pragma once

#include <stdatomic.h>
#include <syslog.h>

extern atomic_int log_max_level;

void log_open(int max_level);
void log_set_level(int level);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A record with journal fields: `fields` holds "KEY=value" strings, NULL
 * ended; they go to the journal as fields and are left out on stderr. */
void log_fields(int level, const char *const *fields, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_enabled(level) ((level) <= atomic_load_explicit(&log_max_level, memory_order_relaxed))
#define log_error(...)     log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...)   log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)    log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)      log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                   \
	do {                                             \
		if (log_enabled(LOG_DEBUG))              \
			log_msg(LOG_DEBUG, __VA_ARGS__); \
	} while (0)
