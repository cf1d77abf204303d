/* A small HTTP/1.1 client for Docker Engine's unix socket: one connection
 * per request, bodies framed by Content-Length, chunked encoding or the end
 * of the connection, and connection upgrade for exec's raw streams.
 *
 * Every wait honours a deadline and a cancellation callback, so a call whose
 * client went away stops waiting for dockerd. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/err.h"

struct dk_deadline {
	int64_t at_ms; /* CLOCK_MONOTONIC milliseconds; 0: no deadline */
	bool (*cancelled)(void *arg);
	void *arg;
	/* If set, each exchange adds the time from its start until its
	 * answer was read to the end (or it was closed): how long a CRI
	 * call waited for dockerd. */
	_Atomic uint64_t *engine_ns;
};

int64_t dk_now_ms(void);
/* The deadline timeout_ms from now (0: none), with the cancellation of dl. */
struct dk_deadline dk_deadline_in(const struct dk_deadline *dl, int64_t timeout_ms);

struct dk_http_request {
	const char *method;
	const char *target;       /* "/v1.41/containers/json?all=1" */
	const char *content_type; /* NULL: no body */
	const void *body;
	size_t body_len;
	const char *const *headers; /* extra "Name: value" lines, NULL-terminated */
	bool upgrade;               /* ask for a raw, hijacked stream */
	/* Local work done while dockerd handles the request: once it is
	 * sent, before its answer is read. */
	void (*meanwhile)(void *arg);
	void *meanwhile_arg;
};

struct dk_http_conn;

/* Connects, sends the request and reads the response head. */
int dk_http_open(const char *socket_path, const struct dk_http_request *req,
		 const struct dk_deadline *dl, struct dk_http_conn **out, struct crx_err *err);
void dk_http_close(struct dk_http_conn *c);
static inline void dk_http_closep(struct dk_http_conn **c)
{
	dk_http_close(*c);
}
#define _cleanup_http_ __attribute__((cleanup(dk_http_closep)))

int dk_http_status(const struct dk_http_conn *c);
/* A response header's value (case-insensitive name), or NULL. */
const char *dk_http_header(const struct dk_http_conn *c, const char *name);
bool dk_http_upgraded(const struct dk_http_conn *c);
void dk_http_set_deadline(struct dk_http_conn *c, const struct dk_deadline *dl);

/* Body bytes (raw stream bytes once upgraded): > 0 read, 0 at the end. */
ssize_t dk_http_read(struct dk_http_conn *c, void *buf, size_t n, struct crx_err *err);
/* Exactly n bytes; -EPIPE if the body ends first. */
int dk_http_read_full(struct dk_http_conn *c, void *buf, size_t n, struct crx_err *err);
/* The rest of the body, NUL-terminated; -EMSGSIZE beyond max bytes. */
int dk_http_read_all(struct dk_http_conn *c, size_t max, char **out, size_t *len,
		     struct crx_err *err);
/* The next '\n'-terminated line of the body (without it): 1, or 0 at the
 * end. A line longer than max is an error. *line is owned by c and valid
 * until the next read. */
int dk_http_read_line(struct dk_http_conn *c, size_t max, char **line, size_t *len,
		      struct crx_err *err);
/* Writes to an upgraded stream (stdin), honouring the deadline. Safe
 * beside a reader in another thread: writing touches no read state. */
int dk_http_write(struct dk_http_conn *c, const void *data, size_t len, struct crx_err *err);
/* Ends our side of an upgraded stream (no more stdin). */
int dk_http_close_write(struct dk_http_conn *c);

/* Percent-encodes s for a query value or path segment; keeps "/:@" when
 * keep_path_chars is true (image references in paths). */
char *dk_http_escape(const char *s, bool keep_path_chars);
