/* A streaming server with a local runtime, for the protocol tests.
 *
 * exec runs the command as a local process (on a pty when tty is set),
 * attach runs `sh -c 'echo attached to <id>; exec cat'`, port-forward
 * connects to 127.0.0.1:<port>. Container id "missing" fails with ENOENT.
 *
 * Prints {"base_url": ...} on stdout, then reads one JSON request a line:
 *   {"op":"exec","id":"c","cmd":["sh","-c","..."],"tty":false,"stdin":true,
 *    "stdout":true,"stderr":true}
 *   {"op":"attach",...}  {"op":"portforward","id":"sb","ports":[8080]}
 *   {"op":"stats"}
 * and answers each with one line: {"url":...}, {"error":...,"code":-errno}
 * or {"tokens":N,"sessions":N,"pending":N}. Stops the server on EOF and exits. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common/util.h"
#include "stream/stream.h"

/* Waits for the child or the client's departure, whichever comes first. */
static int wait_child(pid_t pid, int cancel_fd, struct crx_err *err)
{
	_cleanup_close_ int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (;;) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		struct pollfd p[2] = {{.fd = cancel_fd, .events = POLLIN},
				      {.fd = pidfd, .events = POLLIN}};
		if (poll(p, 2, pidfd >= 0 ? -1 : 20) > 0 && p[0].revents) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return crx_err_set(err, -ECANCELED, "client went away");
		}
	}
}

static int devnull_or(int fd, int flags)
{
	return fd >= 0 ? fd : open("/dev/null", flags | O_CLOEXEC);
}

static int run_plain(const char *const *argv, const struct stream_io *io, struct crx_err *err)
{
	pid_t pid = fork();
	if (pid < 0)
		return crx_err_set(err, -errno, "fork: %m");
	if (pid == 0) {
		int in = devnull_or(io->stdin_fd, O_RDONLY),
		    out = devnull_or(io->stdout_fd, O_WRONLY),
		    er = devnull_or(io->stderr_fd, O_WRONLY);
		dup2(in, 0);
		dup2(out, 1);
		dup2(er, 2);
		signal(SIGPIPE, SIG_DFL);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return wait_child(pid, io->cancel_fd, err);
}

/* A terminal: the child on the pty's slave, the master relayed here. */
static int run_tty(const char *const *argv, const struct stream_io *io, struct crx_err *err)
{
	int master;
	struct winsize ws = {.ws_row = 24, .ws_col = 80};
	pid_t pid = forkpty(&master, NULL, NULL, &ws);
	if (pid < 0)
		return crx_err_set(err, -errno, "forkpty: %m");
	if (pid == 0) {
		signal(SIGPIPE, SIG_DFL);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	fcntl(master, F_SETFD, FD_CLOEXEC);
	bool in_open = io->stdin_fd >= 0, out_open = true;
	char buf[4096];
	while (out_open) {
		struct pollfd p[4] = {
			{.fd = master, .events = POLLIN},
			{.fd = in_open ? io->stdin_fd : -1, .events = POLLIN},
			{.fd = io->resize_fd, .events = POLLIN},
			{.fd = io->cancel_fd, .events = POLLIN},
		};
		if (poll(p, 4, -1) < 0 && errno != EINTR)
			break;
		if (p[3].revents)
			break;
		if (p[0].revents) {
			ssize_t n = read(master, buf, sizeof(buf));
			if (n <= 0)
				out_open = false; /* EIO: every slave descriptor is closed */
			else if (io->stdout_fd >= 0)
				(void)!send(io->stdout_fd, buf, n, MSG_NOSIGNAL);
		}
		if (p[1].revents) {
			ssize_t n = read(io->stdin_fd, buf, sizeof(buf));
			if (n <= 0) {
				in_open = false;
				(void)!write(master, "\x04", 1); /* a terminal's EOF */
			} else {
				(void)!write(master, buf, n);
			}
		}
		if (p[2].revents) {
			struct stream_winsize sz;
			if (read(io->resize_fd, &sz, sizeof(sz)) == sizeof(sz)) {
				struct winsize w = {.ws_row = sz.height, .ws_col = sz.width};
				ioctl(master, TIOCSWINSZ, &w);
			}
		}
	}
	int r = wait_child(pid, io->cancel_fd, err);
	close(master);
	return r;
}

static int local_exec(void *userdata, const struct stream_request *req, const struct stream_io *io,
		      struct crx_err *err)
{
	if (streq(req->id, "missing"))
		return crx_err_set(err, -ENOENT, "container \"missing\" not found");
	return req->tty ? run_tty(req->cmd, io, err) : run_plain(req->cmd, io, err);
}

static int local_attach(void *userdata, const struct stream_request *req,
			const struct stream_io *io, struct crx_err *err)
{
	if (streq(req->id, "missing"))
		return crx_err_set(err, -ENOENT, "container \"missing\" not found");
	const char *argv[] = {"sh", "-c", "echo attached to $0; exec cat", req->id, NULL};
	int r = req->tty ? run_tty(argv, io, err) : run_plain(argv, io, err);
	return r < 0 ? r : 0;
}

static int local_port_forward(void *userdata, const char *sandbox_id, uint16_t port, int fd,
			      int cancel_fd, struct crx_err *err)
{
	_cleanup_close_ int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (sock < 0 || connect(sock, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		return crx_err_set(err, -errno, "connecting to 127.0.0.1:%u in sandbox %s: %m",
				   port, sandbox_id);
	bool from_client = true, from_pod = true;
	char buf[16384];
	while (from_client || from_pod) {
		struct pollfd p[3] = {
			{.fd = from_client ? fd : -1, .events = POLLIN},
			{.fd = from_pod ? sock : -1, .events = POLLIN},
			{.fd = cancel_fd, .events = POLLIN},
		};
		if (poll(p, 3, -1) < 0 && errno != EINTR)
			return crx_err_set(err, -errno, "poll: %m");
		if (p[2].revents)
			return crx_err_set(err, -ECANCELED, "client went away");
		if (p[0].revents) {
			ssize_t n = read(fd, buf, sizeof(buf));
			if (n <= 0) {
				from_client = false;
				shutdown(sock, SHUT_WR);
			} else if (send(sock, buf, n, MSG_NOSIGNAL) != n) {
				return crx_err_set(err, -EPIPE, "writing to port %u: %m", port);
			}
		}
		if (p[1].revents) {
			ssize_t n = read(sock, buf, sizeof(buf));
			if (n < 0)
				return crx_err_set(err, -errno, "reading from port %u: %m", port);
			if (n == 0) {
				from_pod = false;
				shutdown(fd, SHUT_WR);
			} else if (send(fd, buf, n, MSG_NOSIGNAL) != n) {
				return crx_err_set(err, -EPIPE, "client side of port %u closed",
						   port);
			}
		}
	}
	return 0;
}

static const struct stream_runtime_ops local_ops = {
	.exec = local_exec,
	.attach = local_attach,
	.port_forward = local_port_forward,
};

static bool get_bool(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static void answer(struct stream_server *s, const char *line)
{
	json_object *o = json_tokener_parse(line), *v, *reply = json_object_new_object();
	struct crx_err err = {0};
	const char *op =
		o && json_object_object_get_ex(o, "op", &v) ? json_object_get_string(v) : "";
	if (streq(op, "stats")) {
		unsigned tokens, sessions, pending;
		stream_server_stats(s, &tokens, &sessions, &pending);
		json_object_object_add(reply, "tokens", json_object_new_int(tokens));
		json_object_object_add(reply, "sessions", json_object_new_int(sessions));
		json_object_object_add(reply, "pending", json_object_new_int(pending));
	} else {
		struct stream_request req = {
			.kind = streq(op, "attach")        ? STREAM_ATTACH
				: streq(op, "portforward") ? STREAM_PORT_FORWARD
							   : STREAM_EXEC,
			.id = json_object_object_get_ex(o, "id", &v) ? json_object_get_string(v)
								     : "",
			.tty = get_bool(o, "tty"),
			.use_stdin = get_bool(o, "stdin"),
			.use_stdout = get_bool(o, "stdout"),
			.use_stderr = get_bool(o, "stderr"),
		};
		const char *cmd[64] = {0};
		uint16_t ports[64];
		if (json_object_object_get_ex(o, "cmd", &v))
			for (size_t i = 0; i < json_object_array_length(v) && i < 63; i++)
				cmd[i] = json_object_get_string(json_object_array_get_idx(v, i));
		if (json_object_object_get_ex(o, "ports", &v))
			for (size_t i = 0; i < json_object_array_length(v) && i < 64; i++)
				ports[req.n_ports++] = (uint16_t)json_object_get_int(
					json_object_array_get_idx(v, i));
		req.cmd = cmd[0] ? cmd : NULL;
		req.ports = ports;
		char *url = NULL;
		int r = stream_server_register(s, &req, &url, &err);
		if (r < 0) {
			json_object_object_add(reply, "error", json_object_new_string(err.msg));
			json_object_object_add(reply, "code", json_object_new_int(r));
		} else {
			json_object_object_add(reply, "url", json_object_new_string(url));
		}
		free(url);
	}
	printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN));
	fflush(stdout);
	json_object_put(reply);
	json_object_put(o);
}

int main(int argc, char **argv)
{
	struct stream_server_options opts = {.ops = &local_ops};
	static const struct option longopts[] = {
		{"address", required_argument, NULL, 'a'},
		{"max-tokens", required_argument, NULL, 't'},
		{"token-ttl-ms", required_argument, NULL, 'l'},
		{"max-sessions", required_argument, NULL, 's'},
		{"request-timeout-ms", required_argument, NULL, 'r'},
		{"max-pending", required_argument, NULL, 'p'},
		{"header-timeout-ms", required_argument, NULL, 'h'},
		{"idle-timeout-ms", required_argument, NULL, 'i'},
		{0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'a':
			opts.address = optarg;
			break;
		case 't':
			opts.max_tokens = (unsigned)atoi(optarg);
			break;
		case 'l':
			opts.token_ttl_ms = (unsigned)atoi(optarg);
			break;
		case 's':
			opts.max_sessions = (unsigned)atoi(optarg);
			break;
		case 'r':
			opts.request_timeout_ms = (unsigned)atoi(optarg);
			break;
		case 'i':
			opts.idle_timeout_ms = (unsigned)atoi(optarg);
			break;
		case 'p':
			opts.max_pending = (unsigned)atoi(optarg);
			break;
		case 'h':
			opts.header_timeout_ms = (unsigned)atoi(optarg);
			break;
		default:
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	struct stream_server *s;
	struct crx_err err = {0};
	if (stream_server_new(&opts, &s, &err) < 0) {
		fprintf(stderr, "stream-testd: %s\n", err.msg);
		return 1;
	}
	printf("{\"base_url\": \"%s\"}\n", stream_server_base_url(s));
	fflush(stdout);
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, stdin) > 0)
		answer(s, line);
	free(line);
	stream_server_free(s);
	return 0;
}
