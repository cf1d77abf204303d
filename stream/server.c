/* The listener: accepts connections, reads one HTTP request each (with a
 * size and time limit), trades its token for the registered request and
 * hands the connection to a session thread.
 *
 * Anyone who can reach the port can connect, so a connection counts as a
 * session only once its token was valid. Until then it waits in a small
 * room of its own (max_pending, header_timeout_ms): when the room is full
 * the connection that has waited longest is dropped, so idle or slow
 * connections can neither take the sessions' slots nor keep a real client
 * out for long. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/metrics.h"
#include "common/util.h"
#include "stream/http.h"
#include "stream/proto.h"
#include "stream/session.h"
#include "stream/tokens.h"

struct stream_server {
	struct stream_server_options opts;
	struct session_config cfg;
	struct token_cache *tokens;
	int listen_fd;
	int stop[2]; /* closing stop[1] wakes the acceptor and every session */
	pthread_t acceptor;
	bool acceptor_started;
	char base_url[96];
	pthread_mutex_t lock;
	pthread_cond_t idle;
	unsigned conns;    /* connection threads (what stream_server_free waits for) */
	unsigned sessions; /* ... whose token was valid */
	unsigned pending;  /* ... not (yet): still reading, refused or dropped */
	/* The waiting room: connections still reading their request, oldest
	 * first; `waiting` of them, not counting those dropped already. */
	struct conn *wait_head, *wait_tail;
	unsigned waiting;
};

struct conn {
	struct stream_server *s;
	int fd;
	bool in_room, dropped, session;
	struct conn *prev, *next;
};

/* Under s->lock. */
static void room_unlink(struct stream_server *s, struct conn *c)
{
	if (!c->in_room)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->wait_head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		s->wait_tail = c->prev;
	c->prev = c->next = NULL;
	c->in_room = false;
	s->waiting--;
}

/* Under s->lock: makes room for one more by dropping the connection that
 * waited longest. Its thread sees EOF and ends; the shutdown also tells the
 * client, which had its chance to send a request. */
static void room_evict_oldest(struct stream_server *s)
{
	struct conn *old = s->wait_head;
	if (!old)
		return;
	room_unlink(s, old);
	old->dropped = true;
	shutdown(old->fd, SHUT_RDWR);
}

/* The request was read (or not): leave the waiting room. false if the
 * connection was dropped meanwhile. */
static bool room_leave(struct stream_server *s, struct conn *c)
{
	pthread_mutex_lock(&s->lock);
	room_unlink(s, c);
	bool dropped = c->dropped;
	pthread_mutex_unlock(&s->lock);
	return !dropped;
}

/* Reads the request; leftover bytes (the client may start talking at once)
 * stay in buf after *used. 1 on success, or an HTTP status already sent. */
static int read_request(struct stream_server *s, int fd, char *buf, size_t *len,
			struct http_request *req, size_t *used)
{
	unsigned timeout = s->opts.header_timeout_ms < s->opts.request_timeout_ms
				   ? s->opts.header_timeout_ms
				   : s->opts.request_timeout_ms;
	uint64_t deadline = monotonic_ms() + timeout;
	*len = 0;
	for (;;) {
		int r = http_request_parse(buf, *len, req, used);
		if (r == 1)
			return 1;
		if (r == -E2BIG) {
			http_reply_error(fd, 431, "Request Header Fields Too Large", NULL,
					 "request header larger than 8192 bytes");
			return -E2BIG;
		}
		if (r < 0) {
			http_reply_error(fd, 400, "Bad Request", NULL, "malformed HTTP request");
			return r;
		}
		uint64_t now = monotonic_ms();
		if (now >= deadline) {
			/* A slow or silent client does not keep a thread forever. */
			http_reply_error(fd, 408, "Request Timeout", NULL,
					 "timed out waiting for the request");
			return -ETIMEDOUT;
		}
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
				      {.fd = s->stop[0], .events = POLLIN}};
		if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR)
			return -errno;
		if (p[1].revents)
			return -ECANCELED;
		if (!p[0].revents)
			continue;
		ssize_t got = read(fd, buf + *len, HTTP_MAX - *len);
		if (got == 0)
			return -ECONNRESET;
		if (got < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		if (got > 0)
			*len += (size_t)got;
	}
}

static void serve(struct stream_server *s, struct conn *conn)
{
	int fd = conn->fd;
	char buf[HTTP_MAX];
	size_t len, used;
	struct http_request h;
	int got = read_request(s, fd, buf, &len, &h, &used);
	if (!room_leave(s, conn) || got != 1)
		return;

	static const struct {
		const char *prefix;
		enum stream_kind kind;
	} routes[] = {
		{"/exec/", STREAM_EXEC},
		{"/attach/", STREAM_ATTACH},
		{"/portforward/", STREAM_PORT_FORWARD},
	};
	const char *token = NULL;
	enum stream_kind kind = STREAM_EXEC;
	for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
		size_t l = strlen(routes[i].prefix);
		if (strncmp(h.path, routes[i].prefix, l) == 0) {
			token = h.path + l;
			kind = routes[i].kind;
		}
	}
	if (!token || !*token || strchr(token, '/')) {
		http_reply_error(fd, 404, "Not Found", NULL, "404 page not found");
		return;
	}
	if (strcmp(h.method, "GET") != 0 && strcmp(h.method, "POST") != 0) {
		http_reply_error(fd, 405, "Method Not Allowed", "Allow: GET, POST\r\n",
				 "only GET and POST are served");
		return;
	}
	bool ws = strcasecmp(h.upgrade, "websocket") == 0;
	bool spdy = strcasecmp(h.upgrade, "SPDY/3.1") == 0;
	if (!http_list_has(h.connection, "upgrade") || (!ws && !spdy)) {
		http_reply_error(fd, 400, "Bad Request", NULL,
				 "unable to upgrade: missing upgrade headers in request "
				 "(Connection: Upgrade with Upgrade: SPDY/3.1 or websocket)");
		return;
	}
	/* A slot first, so that a full server leaves the token for a retry. */
	pthread_mutex_lock(&s->lock);
	bool full = s->sessions >= s->opts.max_sessions;
	if (!full)
		s->sessions++;
	pthread_mutex_unlock(&s->lock);
	if (full) {
		http_reply_error(fd, 503, "Service Unavailable", NULL,
				 "too many streaming sessions");
		return;
	}
	/* Used once, even when it turns out to be the wrong kind. */
	struct stream_request *req = token_cache_consume(s->tokens, token, monotonic_ms());
	pthread_mutex_lock(&s->lock);
	if (req && req->kind == kind) {
		conn->session = true;
		s->pending--;
	} else {
		s->sessions--;
	}
	pthread_mutex_unlock(&s->lock);
	if (!conn->session) {
		stream_request_free(req);
		http_reply_error(fd, 404, "Not Found", NULL,
				 "streaming token not found: unknown, already used or expired");
		return;
	}
	static const char *const kind_names[] = {
		[STREAM_EXEC] = "exec",
		[STREAM_ATTACH] = "attach",
		[STREAM_PORT_FORWARD] = "port_forward",
	};
	const char *labels[] = {kind_names[kind]};
	crx_metric_add(CRX_M_STREAM_TOTAL, 1, labels);
	crx_metric_add(CRX_M_STREAM_OPEN, 1, labels);
	session_run(&s->cfg, ws ? &ws_proto : &spdy_proto, fd, &h, req, (const uint8_t *)buf + used,
		    len - used);
	crx_metric_add(CRX_M_STREAM_OPEN, -1, labels);
}

/* Closing a socket with unread input resets the connection, and a reset can
 * destroy the error response still on its way: stop writing, then read and
 * drop what the client still sends, briefly and boundedly. */
static void lingering_close(int fd)
{
	char buf[4096];
	size_t total = 0;
	uint64_t deadline = monotonic_ms() + 500;
	shutdown(fd, SHUT_WR);
	while (total < 256 * 1024) {
		uint64_t now = monotonic_ms();
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (now >= deadline || poll(&p, 1, (int)(deadline - now)) <= 0)
			break;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0 && !(n < 0 && errno == EINTR))
			break;
		total += n > 0 ? (size_t)n : 0;
	}
	close(fd);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct stream_server *s = c->s;
	serve(s, c);
	if (c->dropped)
		close(c->fd); /* nothing to say to it */
	else
		lingering_close(c->fd);
	pthread_mutex_lock(&s->lock);
	room_unlink(s, c);
	if (c->session)
		s->sessions--;
	else
		s->pending--;
	if (--s->conns == 0)
		pthread_cond_broadcast(&s->idle);
	pthread_mutex_unlock(&s->lock);
	free(c);
	return NULL;
}

static void *acceptor_main(void *arg)
{
	struct stream_server *s = arg;
	for (;;) {
		struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
				      {.fd = s->stop[0], .events = POLLIN}};
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			continue; /* EMFILE and friends: the client retries */
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		*c = (struct conn){.s = s, .fd = fd};
		pthread_mutex_lock(&s->lock);
		/* Dropped connections still count until their thread ends: past
		 * twice the room's size, refuse rather than drop more. */
		bool full = s->pending >= 2 * s->opts.max_pending;
		if (!full) {
			if (s->waiting >= s->opts.max_pending)
				room_evict_oldest(s);
			s->pending++;
			s->conns++;
			c->in_room = true;
			c->prev = s->wait_tail;
			if (s->wait_tail)
				s->wait_tail->next = c;
			else
				s->wait_head = c;
			s->wait_tail = c;
			s->waiting++;
		}
		pthread_mutex_unlock(&s->lock);
		if (full) {
			free(c);
			http_reply_error(fd, 503, "Service Unavailable", NULL,
					 "too many connections waiting to send a request");
			close(fd);
			continue;
		}
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, conn_main, c) != 0) {
			pthread_mutex_lock(&s->lock);
			room_unlink(s, c);
			s->pending--;
			if (--s->conns == 0)
				pthread_cond_broadcast(&s->idle);
			pthread_mutex_unlock(&s->lock);
			/* A dropped connection's fd was only shut down: ours to close. */
			http_reply_error(fd, 503, "Service Unavailable", NULL,
					 "no thread for the connection");
			close(fd);
			free(c);
		}
		pthread_attr_destroy(&attr);
	}
	return NULL;
}

/* --- the public face --- */

static int parse_address(const char *address, char *host, size_t hsize, char *port, size_t psize)
{
	const char *colon;
	if (address[0] == '[') {
		const char *close_br = strchr(address, ']');
		if (!close_br || (size_t)(close_br - address - 1) >= hsize)
			return -EINVAL;
		snprintf(host, hsize, "%.*s", (int)(close_br - address - 1), address + 1);
		colon = close_br[1] == ':' ? close_br + 1 : NULL;
		if (close_br[1] && !colon)
			return -EINVAL;
	} else {
		colon = strrchr(address, ':');
		size_t hl = colon ? (size_t)(colon - address) : strlen(address);
		if (hl >= hsize)
			return -EINVAL;
		snprintf(host, hsize, "%.*s", (int)hl, address);
	}
	snprintf(port, psize, "%s", colon ? colon + 1 : "0");
	return 0;
}

int stream_server_new(const struct stream_server_options *opts, struct stream_server **out,
		      struct crx_err *err)
{
	struct stream_server *s = calloc(1, sizeof(*s));
	if (!s)
		return crx_err_set(err, -ENOMEM, "out of memory");
	s->opts = *opts;
	s->listen_fd = s->stop[0] = s->stop[1] = -1;
	if (!s->opts.address || !*s->opts.address)
		s->opts.address = "127.0.0.1:0";
	if (!s->opts.max_tokens)
		s->opts.max_tokens = 1000;
	if (!s->opts.token_ttl_ms)
		s->opts.token_ttl_ms = 60000;
	if (!s->opts.max_sessions)
		s->opts.max_sessions = 256;
	if (!s->opts.max_pending)
		s->opts.max_pending = 64;
	if (!s->opts.header_timeout_ms)
		s->opts.header_timeout_ms = 5000;
	if (!s->opts.request_timeout_ms)
		s->opts.request_timeout_ms = 30000;
	if (!s->opts.idle_timeout_ms)
		s->opts.idle_timeout_ms = 4 * 3600 * 1000;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->idle, NULL);
	int r;

	char host[64], port[16];
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
				 .ai_socktype = SOCK_STREAM},
			*ai = NULL;
	if (parse_address(s->opts.address, host, sizeof(host), port, sizeof(port)) < 0 ||
	    getaddrinfo(host, port, &hints, &ai) != 0) {
		r = crx_err_set(err, -EINVAL,
				"streaming address \"%s\" is not IP:PORT or [IPv6]:PORT",
				s->opts.address);
		goto fail;
	}
	s->listen_fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (s->listen_fd < 0 ||
	    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(s->listen_fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(s->listen_fd, 128) < 0) {
		r = crx_err_set(err, -errno, "binding the streaming server to %s: %s",
				s->opts.address, strerror(errno));
		freeaddrinfo(ai);
		goto fail;
	}
	freeaddrinfo(ai);

	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[INET6_ADDRSTRLEN];
	getsockname(s->listen_fd, (struct sockaddr *)&ss, &sl);
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &a6->sin6_addr, addr, sizeof(addr));
		snprintf(s->base_url, sizeof(s->base_url), "http://[%s]:%u", addr,
			 ntohs(a6->sin6_port));
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &a4->sin_addr, addr, sizeof(addr));
		snprintf(s->base_url, sizeof(s->base_url), "http://%s:%u", addr,
			 ntohs(a4->sin_port));
	}

	r = token_cache_new(s->opts.max_tokens, s->opts.token_ttl_ms, &s->tokens);
	if (r < 0 || pipe2(s->stop, O_CLOEXEC) < 0) {
		r = crx_err_set(err, r < 0 ? r : -errno, "setting up the streaming server");
		goto fail;
	}
	s->cfg = (struct session_config){
		.ops = s->opts.ops,
		.userdata = s->opts.userdata,
		.request_timeout_ms = s->opts.request_timeout_ms,
		.idle_timeout_ms = s->opts.idle_timeout_ms,
		.stop_fd = s->stop[0],
	};
	if (pthread_create(&s->acceptor, NULL, acceptor_main, s) != 0) {
		r = crx_err_set(err, -EAGAIN, "starting the streaming server's thread");
		goto fail;
	}
	s->acceptor_started = true;
	*out = s;
	return 0;
fail:
	stream_server_free(s);
	return r;
}

void stream_server_free(struct stream_server *s)
{
	if (!s)
		return;
	if (s->stop[1] >= 0)
		close(s->stop[1]);
	s->stop[1] = -1;
	if (s->acceptor_started)
		pthread_join(s->acceptor, NULL);
	pthread_mutex_lock(&s->lock);
	while (s->conns)
		pthread_cond_wait(&s->idle, &s->lock);
	pthread_mutex_unlock(&s->lock);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->stop[0] >= 0)
		close(s->stop[0]);
	token_cache_free(s->tokens);
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

const char *stream_server_base_url(const struct stream_server *s)
{
	return s->base_url;
}

int stream_server_register(struct stream_server *s, const struct stream_request *req, char **url,
			   struct crx_err *err)
{
	static const char *const paths[] = {"exec", "attach", "portforward"};
	int r = stream_request_validate(req, err);
	if (r < 0)
		return r;
	struct stream_request *copy = stream_request_dup(req);
	if (!copy)
		return crx_err_set(err, -ENOMEM, "out of memory");
	char token[TOKEN_CHARS + 1];
	r = token_cache_insert(s->tokens, copy, monotonic_ms(), token, err);
	if (r < 0)
		return r;
	char *u = NULL;
	if (asprintf(&u, "%s/%s/%s", s->base_url, paths[req->kind], token) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	*url = u;
	return 0;
}

void stream_server_stats(struct stream_server *s, unsigned *tokens, unsigned *sessions,
			 unsigned *pending)
{
	if (tokens)
		*tokens = token_cache_count(s->tokens, monotonic_ms());
	pthread_mutex_lock(&s->lock);
	if (sessions)
		*sessions = s->sessions;
	if (pending)
		*pending = s->pending;
	pthread_mutex_unlock(&s->lock);
}
