#include "config.h"

#include "runtimes/docker/engine/http.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "common/util.h"

#define HEAD_MAX   (64 * 1024)
#define BUF_SIZE   (64 * 1024)
#define POLL_SLICE 200 /* ms between cancellation checks */

enum framing { FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE, FRAME_RAW };

struct dk_http_conn {
	int fd;
	struct dk_deadline dl;
	int status;
	char *head; /* status line and headers, NUL-separated lines */
	size_t head_len;
	enum framing framing;
	uint64_t left; /* bytes left in the body or the current chunk */
	bool chunk_trailer_pending, done;
	char *buf; /* read buffer: buf[pos..len) not yet consumed */
	size_t pos, len;
	char *line; /* dk_http_read_line's result */
	size_t line_cap;
	_Atomic uint64_t *engine_ns; /* the opener's, counted once */
	struct timespec opened;
};

int64_t dk_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct dk_deadline dk_deadline_in(const struct dk_deadline *dl, int64_t timeout_ms)
{
	struct dk_deadline d = dl ? *dl : (struct dk_deadline){0};
	if (timeout_ms > 0) {
		int64_t at = dk_now_ms() + timeout_ms;
		if (!d.at_ms || at < d.at_ms)
			d.at_ms = at;
	}
	return d;
}

/* Waits for fd to be ready for events; -ETIMEDOUT or -ECANCELED otherwise. */
static int wait_fd(struct dk_http_conn *c, short events, struct crx_err *err)
{
	for (;;) {
		int slice = POLL_SLICE;
		if (c->dl.at_ms) {
			int64_t left = c->dl.at_ms - dk_now_ms();
			if (left <= 0)
				return crx_err_set(err, -ETIMEDOUT,
						   "dockerd did not answer in time");
			if (left < slice)
				slice = (int)left;
		}
		if (c->dl.cancelled && c->dl.cancelled(c->dl.arg))
			return crx_err_set(err, -ECANCELED, "the call was cancelled");
		struct pollfd p = {.fd = c->fd, .events = events};
		int r = poll(&p, 1, slice);
		if (r < 0 && errno != EINTR)
			return crx_err_set(err, -errno, "poll: %s", strerror(errno));
		if (r > 0)
			return 0;
	}
}

static int send_all(struct dk_http_conn *c, const void *data, size_t len, struct crx_err *err)
{
	const char *p = data;
	while (len) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN) {
				int r = wait_fd(c, POLLOUT, err);
				if (r < 0)
					return r;
				continue;
			}
			if (errno == EINTR)
				continue;
			return crx_err_set(err, -errno, "writing to dockerd: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads more bytes into the buffer: > 0, 0 at EOF. */
static ssize_t fill(struct dk_http_conn *c, struct crx_err *err)
{
	if (c->pos == c->len)
		c->pos = c->len = 0;
	if (c->len == BUF_SIZE) {
		if (c->pos == 0)
			return crx_err_set(err, -EMSGSIZE, "dockerd sent a line that is too long");
		memmove(c->buf, c->buf + c->pos, c->len - c->pos);
		c->len -= c->pos;
		c->pos = 0;
	}
	for (;;) {
		ssize_t n = recv(c->fd, c->buf + c->len, BUF_SIZE - c->len, MSG_DONTWAIT);
		if (n >= 0) {
			c->len += (size_t)n;
			return n;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return crx_err_set(err, -errno, "reading from dockerd: %s",
					   strerror(errno));
		int r = wait_fd(c, POLLIN, err);
		if (r < 0)
			return r;
	}
}

/* One CRLF- or LF-terminated line from the raw stream (chunk sizes). */
static int raw_line(struct dk_http_conn *c, char *out, size_t size, struct crx_err *err)
{
	for (;;) {
		char *nl = memchr(c->buf + c->pos, '\n', c->len - c->pos);
		if (nl) {
			size_t n = (size_t)(nl - (c->buf + c->pos));
			if (n && c->buf[c->pos + n - 1] == '\r')
				n--;
			if (n >= size)
				return crx_err_set(err, -EPROTO, "dockerd sent a malformed chunk");
			memcpy(out, c->buf + c->pos, n);
			out[n] = '\0';
			c->pos = (size_t)(nl - c->buf) + 1;
			return 0;
		}
		ssize_t r = fill(c, err);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return crx_err_set(err, -EPROTO, "dockerd closed the connection mid-chunk");
	}
}

static int connect_unix(const char *path, struct dk_http_conn *c, struct crx_err *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return crx_err_set(err, -ENAMETOOLONG, "socket path %s is too long", path);
	strcpy(sa.sun_path, path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->fd < 0)
		return crx_err_set(err, -errno, "socket: %s", strerror(errno));
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINPROGRESS || errno == EAGAIN) {
			int r = wait_fd(c, POLLOUT, err);
			if (r < 0)
				return r;
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
			if (!soerr)
				return 0;
			errno = soerr;
		}
		/* A missing socket means dockerd is not running: unavailable. */
		int e = errno == ENOENT ? ECONNREFUSED : errno;
		return crx_err_set(err, -e, "cannot connect to dockerd at %s: %s", path,
				   strerror(errno));
	}
	return 0;
}

static int read_head(struct dk_http_conn *c, const struct dk_http_request *req, struct crx_err *err)
{
	for (;;) {
		/* Look for the blank line that ends the head. */
		char *end = NULL;
		for (size_t i = c->pos; i + 1 < c->len && !end; i++) {
			if (c->buf[i] == '\n' && c->buf[i + 1] == '\n')
				end = c->buf + i + 2;
			else if (i + 3 < c->len && memcmp(c->buf + i, "\r\n\r\n", 4) == 0)
				end = c->buf + i + 4;
		}
		if (end) {
			size_t n = (size_t)(end - c->buf);
			c->head = malloc(n + 1);
			if (!c->head)
				return crx_err_set(err, -ENOMEM, "out of memory");
			/* Split into NUL-terminated lines without CRs. */
			size_t o = 0;
			for (size_t i = 0; i < n; i++) {
				char ch = c->buf[i];
				if (ch == '\r')
					continue;
				c->head[o++] = ch == '\n' ? '\0' : ch;
			}
			c->head_len = o;
			c->pos = n;
			break;
		}
		if (c->len >= HEAD_MAX)
			return crx_err_set(err, -EPROTO, "dockerd sent an oversized response head");
		ssize_t r = fill(c, err);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return crx_err_set(err, -ECONNRESET,
					   "dockerd closed the connection without answering");
	}
	int major, minor;
	if (sscanf(c->head, "HTTP/%d.%d %d", &major, &minor, &c->status) != 3)
		return crx_err_set(err, -EPROTO, "dockerd sent a malformed status line");

	const char *te = dk_http_header(c, "Transfer-Encoding");
	const char *cl = dk_http_header(c, "Content-Length");
	if (c->status == 101 || (req->upgrade && c->status == 200 && !cl && !te)) {
		c->framing = FRAME_RAW;
	} else if (streq(req->method, "HEAD") || c->status == 204 || c->status == 304 ||
		   c->status < 200) {
		c->framing = FRAME_NONE;
		c->done = true;
	} else if (te && strcasestr(te, "chunked")) {
		c->framing = FRAME_CHUNKED;
	} else if (cl) {
		char *e;
		errno = 0;
		unsigned long long v = strtoull(cl, &e, 10);
		if (errno || *e || e == cl)
			return crx_err_set(err, -EPROTO, "dockerd sent a bad Content-Length");
		c->framing = FRAME_LENGTH;
		c->left = v;
		c->done = v == 0;
	} else {
		c->framing = FRAME_CLOSE;
	}
	return 0;
}

/* The exchange is over: its answer read to the end, or given up. */
static void count_engine_time(struct dk_http_conn *c)
{
	if (!c->engine_ns)
		return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t ns = (int64_t)(now.tv_sec - c->opened.tv_sec) * 1000000000 +
		     (now.tv_nsec - c->opened.tv_nsec);
	atomic_fetch_add(c->engine_ns, ns > 0 ? (uint64_t)ns : 0);
	c->engine_ns = NULL;
}

int dk_http_open(const char *socket_path, const struct dk_http_request *req,
		 const struct dk_deadline *dl, struct dk_http_conn **out, struct crx_err *err)
{
	struct dk_http_conn *c = calloc(1, sizeof(*c));
	if (!c || !(c->buf = malloc(BUF_SIZE))) {
		free(c);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	c->fd = -1;
	if (dl) {
		c->dl = *dl;
		c->engine_ns = dl->engine_ns;
		clock_gettime(CLOCK_MONOTONIC, &c->opened);
	}

	/* One allocation of the exact size, wiped before it is freed: extra
	 * headers carry registry credentials, and a growing memstream would
	 * leave copies of them in the buffers it frees. */
	char *head = NULL;
	size_t hlen = 0;
	int r = 0;
	for (;;) {
		size_t o = 0, cap = head ? hlen + 1 : 0;
#define PUT(...)                                                                            \
	do {                                                                                \
		int n_ = snprintf(head ? head + o : NULL, head ? cap - o : 0, __VA_ARGS__); \
		if (n_ < 0)                                                                 \
			r = -ENOMEM;                                                        \
		else                                                                        \
			o += (size_t)n_;                                                    \
	} while (0)
		PUT("%s %s HTTP/1.1\r\nHost: docker\r\nUser-Agent: crimux/%s\r\n", req->method,
		    req->target, PACKAGE_VERSION);
		PUT("%s", req->upgrade ? "Connection: Upgrade\r\nUpgrade: tcp\r\n"
				       : "Connection: close\r\n");
		if (req->content_type)
			PUT("Content-Type: %s\r\nContent-Length: %zu\r\n", req->content_type,
			    req->body_len);
		else if (!streq(req->method, "GET") && !streq(req->method, "HEAD"))
			PUT("Content-Length: 0\r\n");
		for (const char *const *h = req->headers; h && *h; h++)
			PUT("%s\r\n", *h);
		PUT("\r\n");
#undef PUT
		if (r < 0 || head)
			break;
		hlen = o;
		if (!(head = malloc(hlen + 1))) {
			r = -ENOMEM;
			break;
		}
	}
	if (r < 0)
		r = crx_err_set(err, r, "out of memory");
	if (r == 0)
		r = connect_unix(socket_path, c, err);
	if (r == 0)
		r = send_all(c, head, hlen, err);
	if (r == 0 && req->content_type && req->body_len)
		r = send_all(c, req->body, req->body_len, err);
	if (head) {
		explicit_bzero(head, hlen);
		free(head);
	}
	if (r == 0 && req->meanwhile)
		req->meanwhile(req->meanwhile_arg);
	if (r == 0)
		r = read_head(c, req, err);
	if (r < 0) {
		dk_http_close(c);
		return r;
	}
	*out = c;
	return 0;
}

void dk_http_close(struct dk_http_conn *c)
{
	if (!c)
		return;
	count_engine_time(c);
	if (c->fd >= 0)
		close(c->fd);
	free(c->head);
	free(c->buf);
	free(c->line);
	free(c);
}

int dk_http_status(const struct dk_http_conn *c)
{
	return c->status;
}

bool dk_http_upgraded(const struct dk_http_conn *c)
{
	return c->framing == FRAME_RAW;
}

void dk_http_set_deadline(struct dk_http_conn *c, const struct dk_deadline *dl)
{
	c->dl = dl ? *dl : (struct dk_deadline){0};
}

const char *dk_http_header(const struct dk_http_conn *c, const char *name)
{
	size_t nlen = strlen(name);
	/* Skip the status line. */
	for (const char *p = c->head + strlen(c->head) + 1; p < c->head + c->head_len;
	     p += strlen(p) + 1) {
		if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
			const char *v = p + nlen + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			return v;
		}
	}
	return NULL;
}

/* Makes sure the current chunk has bytes left; false at the end of the body. */
static int next_chunk(struct dk_http_conn *c, struct crx_err *err)
{
	char line[128];
	int r;
	if (c->chunk_trailer_pending) {
		r = raw_line(c, line, sizeof(line), err); /* CRLF after chunk data */
		if (r < 0)
			return r;
		c->chunk_trailer_pending = false;
	}
	r = raw_line(c, line, sizeof(line), err);
	if (r < 0)
		return r;
	char *e;
	errno = 0;
	unsigned long long size = strtoull(line, &e, 16);
	if (errno || e == line)
		return crx_err_set(err, -EPROTO, "dockerd sent a bad chunk size");
	if (size == 0) {
		/* Trailers up to the blank line. */
		do {
			r = raw_line(c, line, sizeof(line), err);
			if (r < 0)
				return r;
		} while (line[0]);
		c->done = true;
		return 0;
	}
	c->left = size;
	c->chunk_trailer_pending = true;
	return 1;
}

ssize_t dk_http_read(struct dk_http_conn *c, void *buf, size_t n, struct crx_err *err)
{
	if (c->done)
		count_engine_time(c);
	if (c->done || n == 0)
		return 0;
	if (c->framing == FRAME_CHUNKED && c->left == 0) {
		int r = next_chunk(c, err);
		if (r == 0)
			count_engine_time(c);
		if (r <= 0)
			return r;
	}
	if (c->pos == c->len) {
		ssize_t r = fill(c, err);
		if (r < 0)
			return r;
		if (r == 0) {
			if (c->framing == FRAME_CLOSE || c->framing == FRAME_RAW) {
				c->done = true;
				count_engine_time(c);
				return 0;
			}
			return crx_err_set(
				err, -ECONNRESET,
				"dockerd closed the connection before the end of the body");
		}
	}
	size_t avail = c->len - c->pos;
	if (avail > n)
		avail = n;
	if ((c->framing == FRAME_LENGTH || c->framing == FRAME_CHUNKED) && avail > c->left)
		avail = (size_t)c->left;
	memcpy(buf, c->buf + c->pos, avail);
	c->pos += avail;
	if (c->framing == FRAME_LENGTH || c->framing == FRAME_CHUNKED) {
		c->left -= avail;
		if (c->framing == FRAME_LENGTH && c->left == 0)
			c->done = true;
	}
	return (ssize_t)avail;
}

int dk_http_read_full(struct dk_http_conn *c, void *buf, size_t n, struct crx_err *err)
{
	char *p = buf;
	while (n) {
		ssize_t r = dk_http_read(c, p, n, err);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return crx_err_set(err, -EPIPE, "the stream from dockerd ended early");
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int dk_http_read_all(struct dk_http_conn *c, size_t max, char **out, size_t *len,
		     struct crx_err *err)
{
	size_t cap = 4096, used = 0;
	char *data = malloc(cap);
	if (!data)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (;;) {
		if (cap - used < 4096) {
			char *more = realloc(data, cap * 2);
			if (!more) {
				free(data);
				return crx_err_set(err, -ENOMEM, "out of memory");
			}
			data = more;
			cap *= 2;
		}
		ssize_t n = dk_http_read(c, data + used, cap - used - 1, err);
		if (n < 0) {
			free(data);
			return (int)n;
		}
		if (n == 0)
			break;
		used += (size_t)n;
		if (used > max) {
			free(data);
			return crx_err_set(err, -EMSGSIZE, "dockerd's answer exceeds %zu bytes",
					   max);
		}
	}
	data[used] = '\0';
	*out = data;
	if (len)
		*len = used;
	return 0;
}

int dk_http_read_line(struct dk_http_conn *c, size_t max, char **line, size_t *len,
		      struct crx_err *err)
{
	size_t used = 0;
	for (;;) {
		char ch;
		/* Byte by byte through the buffer: cheap, and framing stays exact. */
		ssize_t n = dk_http_read(c, &ch, 1, err);
		if (n < 0)
			return (int)n;
		if (n == 0 && used == 0)
			return 0;
		if (n == 0 || ch == '\n')
			break;
		if (used + 2 > c->line_cap) {
			size_t cap = c->line_cap ? c->line_cap * 2 : 256;
			char *more = realloc(c->line, cap);
			if (!more)
				return crx_err_set(err, -ENOMEM, "out of memory");
			c->line = more;
			c->line_cap = cap;
		}
		if (used >= max)
			return crx_err_set(err, -EMSGSIZE, "dockerd sent a line over %zu bytes",
					   max);
		c->line[used++] = ch;
	}
	if (!c->line) {
		c->line = malloc(1);
		if (!c->line)
			return crx_err_set(err, -ENOMEM, "out of memory");
		c->line_cap = 1;
	}
	c->line[used] = '\0';
	*line = c->line;
	if (len)
		*len = used;
	return 1;
}

int dk_http_write(struct dk_http_conn *c, const void *data, size_t len, struct crx_err *err)
{
	return send_all(c, data, len, err);
}

int dk_http_close_write(struct dk_http_conn *c)
{
	return shutdown(c->fd, SHUT_WR) < 0 ? -errno : 0;
}

char *dk_http_escape(const char *s, bool keep_path_chars)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = malloc(strlen(s) * 3 + 1), *o = out;
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (isalnum(*p) || strchr("-._~", *p) || (keep_path_chars && strchr("/:@", *p))) {
			*o++ = (char)*p;
		} else {
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	*o = '\0';
	return out;
}
