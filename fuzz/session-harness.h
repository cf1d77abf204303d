/* Runs one streaming session (stream/session.c under SPDY or WebSocket) on
 * a socketpair, the fuzz input being everything the client sends after the
 * upgrade. The first two input bytes choose the request (exec, attach or
 * port-forward; tty; which streams) and the subprotocol; a runtime answers
 * from memory: exec and attach greet on stdout and stderr, echo stdin to
 * stdout and exit 3; a forwarded connection echoes, port 81 refuses.
 *
 * A client thread writes the input and reads everything the server sends,
 * so the session is never stuck on a full socket; the session ends on the
 * client's EOF. Properties beyond "no crash, no leak, no UB": the session
 * returns (libFuzzer's -timeout catches a hang), and every descriptor it
 * opened is closed when it does. */
#pragma once

#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/proto.h"
#include "stream/session.h"
#include "stream/tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_wait(int fd, int cancel_fd)
{
	struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = cancel_fd, .events = POLLIN}};
	if (poll(p, 2, -1) < 0)
		return -errno;
	return p[1].revents ? -ECANCELED : 0;
}

static int fuzz_exec(void *userdata, const struct stream_request *req, const struct stream_io *io,
		     struct crx_err *err)
{
	(void)userdata;
	(void)req;
	if (io->stdout_fd >= 0 && sock_write_all(io->stdout_fd, "out\n", 4) < 0)
		return crx_err_set(err, -ECANCELED, "the client went away");
	if (io->stderr_fd >= 0 && sock_write_all(io->stderr_fd, "err\n", 4) < 0)
		return crx_err_set(err, -ECANCELED, "the client went away");
	char buf[4096];
	int in = io->stdin_fd, resize = io->resize_fd;
	while (in >= 0 || resize >= 0) {
		struct pollfd p[3] = {{.fd = in, .events = POLLIN},
				      {.fd = resize, .events = POLLIN},
				      {.fd = io->cancel_fd, .events = POLLIN}};
		if (poll(p, 3, -1) < 0)
			return crx_err_set(err, -errno, "poll");
		if (p[2].revents)
			return crx_err_set(err, -ECANCELED, "the client went away");
		if (in >= 0 && p[0].revents) {
			ssize_t n = read(in, buf, sizeof(buf));
			if (n <= 0)
				in = -1;
			else if (io->stdout_fd >= 0 &&
				 sock_write_all(io->stdout_fd, buf, (size_t)n) < 0)
				return crx_err_set(err, -ECANCELED, "the client went away");
		}
		if (resize >= 0 && p[1].revents) {
			struct stream_winsize ws;
			if (read(resize, &ws, sizeof(ws)) <= 0)
				resize = -1;
		}
	}
	return 3;
}

static int fuzz_forward(void *userdata, const char *sandbox_id, uint16_t port, int fd,
			int cancel_fd, struct crx_err *err)
{
	(void)userdata;
	(void)sandbox_id;
	if (port == 81)
		return crx_err_set(err, -ECONNREFUSED, "connection refused");
	char buf[4096];
	for (;;) {
		int r = fuzz_wait(fd, cancel_fd);
		if (r < 0)
			return 0;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0) {
			shutdown(fd, SHUT_WR);
			return 0;
		}
		if (sock_write_all(fd, buf, (size_t)n) < 0)
			return 0;
	}
}

static const struct stream_runtime_ops fuzz_ops = {
	.exec = fuzz_exec,
	.attach = fuzz_exec,
	.port_forward = fuzz_forward,
};

struct fuzz_client {
	int fd;
	const uint8_t *data;
	size_t size;
};

/* Sends the input, then EOF; reads until the server is done. */
static void *fuzz_client_main(void *arg)
{
	struct fuzz_client *c = arg;
	size_t sent = 0;
	bool shut = false;
	char buf[65536];
	for (;;) {
		if (!shut && sent == c->size) {
			shutdown(c->fd, SHUT_WR);
			shut = true;
		}
		struct pollfd p = {.fd = c->fd, .events = POLLIN | (shut ? 0 : POLLOUT)};
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			break;
		if (p.revents & POLLIN || p.revents & (POLLHUP | POLLERR)) {
			ssize_t n = read(c->fd, buf, sizeof(buf));
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break;
		}
		if (!shut && (p.revents & POLLOUT)) {
			ssize_t n = send(c->fd, c->data + sent, c->size - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				shut = true;
		}
	}
	return NULL;
}

static int fuzz_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static int fuzz_session(bool websocket, const uint8_t *data, size_t size)
{
	static const char *const ws_protocols[] = {
		"v5.channel.k8s.io", "v4.channel.k8s.io",     "v4.base64.channel.k8s.io",
		"channel.k8s.io",    "base64.channel.k8s.io", "",
	};
	static const char *const spdy_protocols[] = {
		"v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
		"v2.channel.k8s.io", "channel.k8s.io",    "portforward.k8s.io",
	};
	static const char *const cmd[] = {"cat", NULL};
	static const uint16_t ports[] = {80, 81};
	static int stop[2] = {-1, -1};
	if (stop[0] < 0 && pipe2(stop, O_CLOEXEC) < 0)
		abort();
	if (size < 2)
		return 0;
	uint8_t how = data[0], proto = data[1];
	data += 2, size -= 2;

	struct stream_request r = {
		.kind = (how & 3) == 1   ? STREAM_ATTACH
			: (how & 3) == 2 ? STREAM_PORT_FORWARD
					 : STREAM_EXEC,
		.id = "c1",
		.cmd = cmd,
		.tty = how & 4,
		.use_stdin = how & 8,
		.use_stdout = how & 16,
		.use_stderr = (how & 32) && !(how & 4),
		.ports = ports,
		.n_ports = (how >> 6) % 3,
	};
	if (!r.use_stdin && !r.use_stdout && !r.use_stderr)
		r.use_stdout = true;
	struct stream_request *req = stream_request_dup(&r);
	if (!req)
		abort();

	struct http_request h = {.method = "GET"};
	if (websocket) {
		strcpy(h.upgrade, "websocket");
		strcpy(h.ws_version, "13");
		strcpy(h.ws_key, "dGhlIHNhbXBsZSBub25jZQ==");
		strcpy(h.ws_protocols, ws_protocols[proto % ARRAY_SIZE(ws_protocols)]);
	} else {
		strcpy(h.upgrade, "SPDY/3.1");
		strcpy(h.protocols, spdy_protocols[proto % ARRAY_SIZE(spdy_protocols)]);
	}

	int before = fuzz_fd_count();
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
		abort();
	struct fuzz_client client = {.fd = sv[1], .data = data, .size = size};
	pthread_t t;
	if (pthread_create(&t, NULL, fuzz_client_main, &client) != 0)
		abort();
	struct session_config cfg = {
		.ops = &fuzz_ops,
		.request_timeout_ms = 1000,
		.idle_timeout_ms = 2000,
		.stop_fd = stop[0],
	};
	session_run(&cfg, websocket ? &ws_proto : &spdy_proto, sv[0], &h, req, NULL, 0);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(t, NULL);
	close(sv[0]);
	close(sv[1]);
	if (fuzz_fd_count() != before)
		__builtin_trap(); /* the session left a descriptor open */
	return 0;
}
