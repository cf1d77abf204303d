/* The HTTP/1.1 request that opens every streaming connection, and the
 * plain replies sent when it cannot be upgraded. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX 8192 /* the largest request accepted */

struct http_request {
	char method[8];
	char path[256]; /* without the query */
	char query[512];
	char upgrade[64];
	char connection[128];
	char protocols[512]; /* X-Stream-Protocol-Version values, comma-joined */
	char ws_key[64];
	char ws_version[8];
	char ws_protocols[512]; /* Sec-WebSocket-Protocol values, comma-joined */
};
/* 1: a whole request parsed (*used bytes); 0: need more; -E2BIG: too long;
 * -EINVAL: malformed. */
int http_request_parse(const char *buf, size_t len, struct http_request *r, size_t *used);

/* A plain-text HTTP error response, best effort (the client may be gone). */
void http_reply_error(int fd, int code, const char *reason, const char *extra, const char *body);
/* Writes everything to a non-blocking socket within timeout_ms. */
int stream_send_all(int fd, const char *p, size_t n, unsigned timeout_ms);
/* Whether a comma-separated header value (Connection: keep-alive, Upgrade)
 * lists word, ignoring case. */
bool http_list_has(const char *list, const char *word);
