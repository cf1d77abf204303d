#include "config.h"

#include "stream/http.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/util.h"

static char *trim(char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	size_t l = strlen(p);
	while (l && (p[l - 1] == ' ' || p[l - 1] == '\t'))
		p[--l] = '\0';
	return p;
}

static void add_value(char *dst, size_t size, const char *v)
{
	size_t l = strlen(dst);
	snprintf(dst + l, size - l, "%s%s", l ? "," : "", v);
}

bool http_list_has(const char *list, const char *word)
{
	/* Connection: keep-alive, Upgrade */
	char copy[128], *save = NULL;
	snprintf(copy, sizeof(copy), "%s", list);
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		if (strcasecmp(trim(t), word) == 0)
			return true;
	return false;
}

int http_request_parse(const char *buf, size_t len, struct http_request *r, size_t *used)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4);
	if (!end)
		return len >= HTTP_MAX ? -E2BIG : 0;
	size_t n = (size_t)(end - buf) + 4;
	if (n > HTTP_MAX)
		return -E2BIG;
	char copy[HTTP_MAX + 1];
	memcpy(copy, buf, n - 2);
	copy[n - 2] = '\0';
	memset(r, 0, sizeof(*r));

	char *save = NULL, *line = strtok_r(copy, "\r\n", &save);
	char method[16], target[1024], version[16];
	if (!line || sscanf(line, "%15s %1023s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0 || strlen(method) >= sizeof(r->method))
		return -EINVAL;
	strcpy(r->method, method);
	char *q = strchr(target, '?');
	if (q) {
		*q++ = '\0';
		snprintf(r->query, sizeof(r->query), "%s", q);
	}
	if (strlen(target) >= sizeof(r->path))
		return -E2BIG;
	strcpy(r->path, target);

	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *colon = strchr(line, ':');
		if (!colon)
			return -EINVAL;
		*colon = '\0';
		const char *name = line;
		char *value = trim(colon + 1);
		if (strcasecmp(name, "Upgrade") == 0)
			snprintf(r->upgrade, sizeof(r->upgrade), "%s", value);
		else if (strcasecmp(name, "Connection") == 0)
			add_value(r->connection, sizeof(r->connection), value);
		else if (strcasecmp(name, "X-Stream-Protocol-Version") == 0)
			add_value(r->protocols, sizeof(r->protocols), value);
		else if (strcasecmp(name, "Sec-WebSocket-Key") == 0)
			snprintf(r->ws_key, sizeof(r->ws_key), "%s", value);
		else if (strcasecmp(name, "Sec-WebSocket-Version") == 0)
			snprintf(r->ws_version, sizeof(r->ws_version), "%s", value);
		else if (strcasecmp(name, "Sec-WebSocket-Protocol") == 0)
			add_value(r->ws_protocols, sizeof(r->ws_protocols), value);
	}
	*used = n;
	return 1;
}

int stream_send_all(int fd, const char *p, size_t n, unsigned timeout_ms)
{
	uint64_t deadline = monotonic_ms() + timeout_ms;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		uint64_t now = monotonic_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, (int)(deadline - now));
	}
	return 0;
}

void http_reply_error(int fd, int code, const char *reason, const char *extra, const char *body)
{
	char buf[2048];
	int n = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "X-Content-Type-Options: nosniff\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n%s\r\n%s\n",
			 code, reason, strlen(body) + 1, extra ? extra : "", body);
	if (n > 0)
		stream_send_all(fd, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1,
				1000);
}
