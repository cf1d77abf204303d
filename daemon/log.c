#include "config.h"

#include "daemon/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
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

static void log_fieldsv(int level, const char *const *fields, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* Control characters written as \xNN: messages carry what clients sent (a
 * method path, a handler name, a backend's error about them), and a newline
 * there would start a forged record on stderr, an escape sequence rewrite a
 * terminal. */
static void escape_controls(const char *in, char *out, size_t size)
{
	size_t n = 0;
	for (; *in && n + 5 < size; in++) {
		unsigned char ch = (unsigned char)*in;
		if (ch < 0x20 || ch == 0x7f)
			n += (size_t)snprintf(out + n, size - n, "\\x%02x", ch);
		else
			out[n++] = (char)ch;
	}
	out[n] = '\0';
}

static void log_fieldsv(int level, const char *const *fields, const char *fmt, va_list ap)
{
	char raw[4096], message[4096];
	vsnprintf(raw, sizeof(raw), fmt, ap);
	escape_controls(raw, message, sizeof(message));
	if (!to_journal) {
		fprintf(stderr, "%s: %s\n", level_names[level & 7], message);
		return;
	}
	char text[sizeof(message) + 8], priority[16];
	snprintf(text, sizeof(text), "MESSAGE=%s", message);
	snprintf(priority, sizeof(priority), "PRIORITY=%d", level);
	struct iovec iov[2 + 16];
	size_t n = 0;
	iov[n++] = (struct iovec){text, strlen(text)};
	iov[n++] = (struct iovec){priority, strlen(priority)};
	for (size_t i = 0; fields && fields[i] && n < sizeof(iov) / sizeof(iov[0]); i++)
		iov[n++] = (struct iovec){(void *)fields[i], strlen(fields[i])};
	sd_journal_sendv(iov, (int)n);
}

void log_fields(int level, const char *const *fields, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	va_list ap;
	va_start(ap, fmt);
	log_fieldsv(level, fields, fmt, ap);
	va_end(ap);
}

void log_msg(int level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	va_list ap;
	va_start(ap, fmt);
	log_fieldsv(level, NULL, fmt, ap);
	va_end(ap);
}
