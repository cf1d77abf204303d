#include "config.h"

#include "daemon/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

atomic_int log_max_level = LOG_INFO;
static bool to_journal;

static const char *const level_names[] = {
	"EMERG", "ALERT", "CRIT", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
};

/* systemd sets JOURNAL_STREAM to "dev:ino" of the stream it gave us. */
static bool stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long dev, ino;
	struct stat st;
	if (!e || sscanf(e, "%lu:%lu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return false;
	return st.st_dev == dev && st.st_ino == ino;
}

void log_open(int max_level)
{
	to_journal = stderr_is_journal();
	log_set_level(max_level);
}

void log_set_level(int level)
{
	atomic_store(&log_max_level, level);
}

void log_msg(int level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	va_list ap;
	va_start(ap, fmt);
	if (to_journal) {
		sd_journal_printv(level, fmt, ap);
	} else {
		char line[4096];
		vsnprintf(line, sizeof(line), fmt, ap);
		fprintf(stderr, "%s: %s\n", level_names[level & 7], line);
	}
	va_end(ap);
}
