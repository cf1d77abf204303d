/* Exec, Attach and PortForward for Docker pods. The calls register the
 * request with crimux's streaming server (stream/) and answer its URL; the
 * server then calls the runtime operations here, which carry the client's
 * descriptors to Docker's hijacked exec and attach connections and, for
 * port-forward, to a socket made inside the pod's network namespace. */
#include "config.h"

#include "runtimes/docker/streaming.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/stream.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/netns.h"

/* True once fd is readable or closed: the client is gone. */
static bool fd_ready(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return fd >= 0 && poll(&p, 1, 0) > 0;
}

static bool cancel_fd_fired(void *arg)
{
	return fd_ready(*(const int *)arg);
}

/* One exec or attach session: Docker's raw stream and the client's fds. */
struct session {
	struct dk_shim *ds;
	struct dk_http_conn *conn;
	const struct stream_io *io;
	char resize_target[256]; /* "/exec/<id>/resize" or "/containers/<id>/resize" */
	int wake[2];             /* ends the input thread */
};

/* stdin to Docker (half-closing at EOF), resize records as API calls. */
static void *input(void *arg)
{
	struct session *s = arg;
	const struct stream_io *io = s->io;
	int in = io->stdin_fd, resize = io->resize_fd;
	char buf[32768];
	for (;;) {
		struct pollfd p[4] = {{.fd = in, .events = POLLIN},
				      {.fd = resize, .events = POLLIN},
				      {.fd = io->cancel_fd, .events = POLLIN},
				      {.fd = s->wake[0], .events = POLLIN}};
		if (poll(p, 4, -1) < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		if (p[2].revents || p[3].revents)
			return NULL;
		if (in >= 0 && p[0].revents) {
			ssize_t n = read(in, buf, sizeof(buf));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				/* The client closed stdin: so does the process's. */
				dk_http_close_write(s->conn);
				in = -1;
			} else if (dk_http_write(s->conn, buf, (size_t)n, NULL) < 0) {
				in = -1;
			}
		}
		if (resize >= 0 && p[1].revents) {
			struct stream_winsize ws;
			ssize_t n = read(resize, &ws, sizeof(ws));
			if (n == (ssize_t)sizeof(ws)) {
				struct dk_deadline dl = dk_deadline_in(NULL, 5000);
				dk_callf(s->ds->sock, "POST", NULL, &dl, NULL, NULL, NULL,
					 "%s?h=%u&w=%u", s->resize_target, ws.height, ws.width);
			} else if (n == 0 || (n < 0 && errno != EINTR)) {
				resize = -1;
			}
		}
	}
}

/* Docker's output to the client's stdout and stderr until the end. */
static int output(struct session *s, bool tty, struct crx_err *err)
{
	const struct stream_io *io = s->io;
	char buf[32768];
	if (tty) {
		for (;;) {
			ssize_t n = dk_http_read(s->conn, buf, sizeof(buf), err);
			if (n <= 0)
				return (int)n;
			if (io->stdout_fd >= 0 && sock_write_all(io->stdout_fd, buf, (size_t)n) < 0)
				return crx_err_set(err, -ECANCELED, "the client went away");
		}
	}
	for (;;) {
		int stream;
		size_t left;
		int r = dk_frame_header(s->conn, &stream, &left, err);
		if (r <= 0)
			return r;
		int fd = stream == 1 ? io->stdout_fd : stream == 2 ? io->stderr_fd : -1;
		while (left) {
			size_t want = left < sizeof(buf) ? left : sizeof(buf);
			r = dk_http_read_full(s->conn, buf, want, err);
			if (r < 0)
				return r;
			if (fd >= 0 && sock_write_all(fd, buf, want) < 0)
				return crx_err_set(err, -ECANCELED, "the client went away");
			left -= want;
		}
	}
}

/* Runs a session to its end: 0, or -ECANCELED when the client left. */
static int run_session(struct session *s, bool tty, struct crx_err *err)
{
	if (pipe2(s->wake, O_CLOEXEC) < 0)
		return crx_err_set(err, -errno, "pipe: %s", strerror(errno));
	pthread_t t;
	bool started = false;
	if (s->io->stdin_fd >= 0 || s->io->resize_fd >= 0) {
		int e = pthread_create(&t, NULL, input, s);
		if (e) {
			close(s->wake[0]);
			close(s->wake[1]);
			return crx_err_set(err, -e, "cannot start a thread: %s", strerror(e));
		}
		started = true;
	} else {
		/* Nothing to send: Docker's side of stdin is done. */
		dk_http_close_write(s->conn);
	}
	int r = output(s, tty, err);
	if (started) {
		if (write(s->wake[1], "x", 1) < 0) {
			/* the thread also ends on cancel_fd */
		}
		pthread_join(t, NULL);
	}
	close(s->wake[0]);
	close(s->wake[1]);
	return r;
}

static int stream_exec(void *userdata, const struct stream_request *req, const struct stream_io *io,
		       struct crx_err *err)
{
	struct dk_shim *ds = userdata;
	size_t argc = 0;
	while (req->cmd && req->cmd[argc])
		argc++;
	struct dk_exec_opts o = {.in = io->stdin_fd >= 0,
				 .out = io->stdout_fd >= 0,
				 .err = io->stderr_fd >= 0,
				 .tty = req->tty};
	int cancel = io->cancel_fd;
	struct dk_deadline dl = {.cancelled = cancel_fd_fired, .arg = &cancel};
	_cleanup_free_ char *exec_id = NULL;
	int r = dk_exec_create(ds->sock, req->id, (char *const *)req->cmd, argc, &o, &dl, &exec_id,
			       err);
	if (r < 0)
		return r;
	struct session s = {.ds = ds, .io = io};
	snprintf(s.resize_target, sizeof(s.resize_target), "/exec/%s/resize", exec_id);
	/* Once asked, Docker starts the exec even if we hang up: the start is
	 * bounded rather than cancelled midway, and when the client has gone by
	 * then, or goes later, the process is killed as soon as it runs. */
	struct dk_deadline start_dl = dk_deadline_in(NULL, 30000);
	r = dk_exec_start(ds->sock, exec_id, req->tty, &start_dl, &s.conn, err);
	if (r < 0) {
		dk_exec_abandon(ds->sock, exec_id);
		return r;
	}
	dk_http_set_deadline(s.conn, &dl);
	r = cancel_fd_fired(&cancel) ? crx_err_set(err, -ECANCELED, "the client went away")
				     : run_session(&s, req->tty, err);
	dk_http_close(s.conn);
	if (r < 0) {
		/* The client left, or the stream broke: nothing may keep running. */
		dk_exec_abandon(ds->sock, exec_id);
		return r;
	}
	int code = 0;
	struct dk_deadline quick = dk_deadline_in(NULL, 10000);
	r = dk_exec_exit_code(ds->sock, exec_id, &quick, &code, err);
	return r < 0 ? r : code;
}

static int stream_attach(void *userdata, const struct stream_request *req,
			 const struct stream_io *io, struct crx_err *err)
{
	struct dk_shim *ds = userdata;
	int cancel = io->cancel_fd;
	struct dk_deadline dl = {.cancelled = cancel_fd_fired, .arg = &cancel};
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_container_inspect(ds->sock, req->id, &dl, &inspect, err);
	if (r < 0)
		return r;
	/* Docker multiplexes unless the container has a tty. */
	bool tty = dk_json_bool(dk_json_get(inspect, "Config", NULL), "Tty");
	char target[256];
	snprintf(target, sizeof(target),
		 "/containers/%s/attach?stream=1&stdin=%d&stdout=%d&stderr=%d", req->id,
		 io->stdin_fd >= 0, io->stdout_fd >= 0, io->stderr_fd >= 0);
	struct session s = {.ds = ds, .io = io};
	snprintf(s.resize_target, sizeof(s.resize_target), "/containers/%s/resize", req->id);
	r = dk_hijack(ds->sock, target, NULL, &dl, &s.conn, err);
	if (r < 0)
		return r;
	r = run_session(&s, tty, err);
	dk_http_close(s.conn);
	return r == -ECANCELED ? 0 : r; /* the client leaving ends an attach */
}

/* Connects to port on the pod's loopback, IPv4 first. */
static int pod_connect(const char *netns, uint16_t port, int *out, struct crx_err *err)
{
	int r = -ECONNREFUSED;
	for (int v6 = 0; v6 < 2; v6++) {
		int fd;
		r = dk_netns_socket(netns, v6 ? AF_INET6 : AF_INET, SOCK_STREAM, &fd, err);
		if (r < 0)
			return r;
		struct sockaddr_in a4 = {.sin_family = AF_INET,
					 .sin_port = htons(port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		struct sockaddr_in6 a6 = {.sin6_family = AF_INET6,
					  .sin6_port = htons(port),
					  .sin6_addr = IN6ADDR_LOOPBACK_INIT};
		if (connect(fd, v6 ? (struct sockaddr *)&a6 : (struct sockaddr *)&a4,
			    v6 ? sizeof(a6) : sizeof(a4)) == 0) {
			*out = fd;
			return 0;
		}
		r = -errno;
		close(fd);
	}
	return crx_err_set(err, r, "cannot connect to port %u in the pod: %s", port, strerror(-r));
}

static int stream_port_forward(void *userdata, const char *sandbox_id, uint16_t port, int fd,
			       int cancel_fd, struct crx_err *err)
{
	struct dk_shim *ds = userdata;
	struct dk_deadline dl = {.cancelled = cancel_fd_fired, .arg = &cancel_fd};
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_container_inspect(ds->sock, sandbox_id, &dl, &inspect, err);
	if (r < 0)
		return r;
	int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
	if (pid <= 0)
		return crx_err_set(err, -EBUSY, "sandbox %s is not running", sandbox_id);
	char netns[64];
	snprintf(netns, sizeof(netns), "/proc/%d/ns/net", pid);
	_cleanup_close_ int pod = -1;
	r = pod_connect(netns, port, &pod, err);
	if (r < 0)
		return r;
	/* Both directions until each has ended; a half-close passes through. */
	bool from_client = true, from_pod = true;
	char buf[32768];
	while (from_client || from_pod) {
		struct pollfd p[3] = {{.fd = from_client ? fd : -1, .events = POLLIN},
				      {.fd = from_pod ? pod : -1, .events = POLLIN},
				      {.fd = cancel_fd, .events = POLLIN}};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return crx_err_set(err, -errno, "poll: %s", strerror(errno));
		}
		if (p[2].revents)
			return 0;
		for (int k = 0; k < 2; k++) {
			if (!p[k].revents)
				continue;
			int src = k ? pod : fd, dst = k ? fd : pod;
			ssize_t n = read(src, buf, sizeof(buf));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0 || sock_write_all(dst, buf, (size_t)n) < 0) {
				shutdown(dst, SHUT_WR);
				if (k)
					from_pod = false;
				else
					from_client = false;
			}
		}
	}
	return 0;
}

const struct stream_runtime_ops dk_stream_ops = {
	.exec = stream_exec,
	.attach = stream_attach,
	.port_forward = stream_port_forward,
};

static int reply_url(struct dk_ctx *c, const struct stream_request *sr,
		     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp,
		     struct crx_err *err)
{
	if (!c->ds->stream)
		return crx_err_set(err, -EOPNOTSUPP, "the streaming server is not running");
	char *url = NULL;
	int r = stream_server_register(c->ds->stream, sr, &url, err);
	if (r < 0)
		return r;
	/* ExecResponse, AttachResponse and PortForwardResponse: url is field 1. */
	Runtime__V1__ExecResponse *out = dk_msg_new(&c->arena, desc);
	if (out)
		out->url = dk_arena_strdup(&c->arena, url);
	free(url);
	if (!out)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

/* The running container an exec or attach is for; its full ID. */
static int running_container(struct dk_ctx *c, const char *id, json_object **inspect,
			     struct crx_err *err)
{
	int r = dk_inspect_typed(c, id, DK_TYPE_CONTAINER, inspect, err);
	if (r < 0)
		return r;
	if (!dk_json_bool(dk_json_get(*inspect, "State", NULL), "Running"))
		return crx_err_set(err, -EBUSY, "container %s is not running",
				   dk_json_str(*inspect, "Id"));
	return 0;
}

int dk_exec_url(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		struct crx_err *err)
{
	const Runtime__V1__ExecRequest *in = (const void *)req;
	if (in->n_cmd == 0)
		return crx_err_set(err, -EINVAL, "Exec needs a command");
	_cleanup_json_ json_object *inspect = NULL;
	int r = running_container(c, in->container_id, &inspect, err);
	if (r < 0)
		return r;
	const char **cmd = dk_arena_alloc(&c->arena, (in->n_cmd + 1) * sizeof(*cmd));
	if (!cmd)
		return -ENOMEM;
	for (size_t i = 0; i < in->n_cmd; i++)
		cmd[i] = in->cmd[i];
	struct stream_request sr = {
		.kind = STREAM_EXEC,
		.id = dk_json_str(inspect, "Id"),
		.cmd = cmd,
		.tty = in->tty,
		.use_stdin = in->stdin,
		.use_stdout = in->stdout,
		.use_stderr = in->stderr,
	};
	return reply_url(c, &sr, &runtime__v1__exec_response__descriptor, resp, err);
}

int dk_attach_url(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		  struct crx_err *err)
{
	const Runtime__V1__AttachRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = running_container(c, in->container_id, &inspect, err);
	if (r < 0)
		return r;
	struct stream_request sr = {
		.kind = STREAM_ATTACH,
		.id = dk_json_str(inspect, "Id"),
		.tty = in->tty,
		.use_stdin = in->stdin,
		.use_stdout = in->stdout,
		.use_stderr = in->stderr,
	};
	return reply_url(c, &sr, &runtime__v1__attach_response__descriptor, resp, err);
}

int dk_port_forward_url(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__PortForwardRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->pod_sandbox_id, DK_TYPE_SANDBOX, &inspect, err);
	if (r < 0)
		return r;
	uint16_t *ports = dk_arena_alloc(&c->arena, (in->n_port ? in->n_port : 1) * sizeof(*ports));
	if (!ports)
		return -ENOMEM;
	for (size_t i = 0; i < in->n_port; i++) {
		if (in->port[i] <= 0 || in->port[i] > 65535)
			return crx_err_set(err, -EINVAL, "port %d is out of range", in->port[i]);
		ports[i] = (uint16_t)in->port[i];
	}
	struct stream_request sr = {
		.kind = STREAM_PORT_FORWARD,
		.id = dk_json_str(inspect, "Id"),
		.ports = ports,
		.n_ports = in->n_port,
	};
	return reply_url(c, &sr, &runtime__v1__port_forward_response__descriptor, resp, err);
}
