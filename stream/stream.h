/* The streaming server behind the URLs that Exec, Attach and PortForward
 * return for pods crimux runs itself (the Docker backend).
 *
 * A CRI call registers a request and gets back a single-use URL
 * (http://127.0.0.1:<port>/exec/<token>); the kubelet or crictl then
 * connects to it and speaks SPDY/3.1 or WebSocket. The server speaks both
 * protocols and hands the actual work to a runtime through plain file
 * descriptors, so a backend never sees a protocol frame.
 *
 * Threading: one acceptor thread; one thread per client connection; one
 * thread per runtime call (exec, attach, each forwarded connection). Runtime
 * calls block and run on their own thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct stream_server;

enum stream_kind {
	STREAM_EXEC,
	STREAM_ATTACH,
	STREAM_PORT_FORWARD,
};

/* What a CRI Exec, Attach or PortForward call asked for. */
struct stream_request {
	enum stream_kind kind;
	const char *id;         /* container id (exec, attach) or sandbox id (port-forward) */
	const char *const *cmd; /* exec: the command, NULL-terminated */
	bool tty;
	bool use_stdin, use_stdout, use_stderr;
	const uint16_t *ports; /* port-forward: the ports a WebSocket client may use; */
	size_t n_ports;        /* SPDY clients name a port per connection */
};

/* A terminal size, as carried on resize_fd. */
struct stream_winsize {
	uint16_t width, height;
};

/* The descriptors of one exec or attach. They belong to the server: the
 * runtime reads and writes them (and may shutdown() them), never closes them.
 * Every one is blocking and close-on-exec. The three data descriptors are
 * AF_UNIX stream sockets whose peer goes away with the client: write them
 * with send(MSG_NOSIGNAL) (sock_write_all) and take EPIPE as "the client left". */
struct stream_io {
	int stdin_fd;  /* client input; EOF when the client closed stdin; -1 if not requested */
	int stdout_fd; /* output to the client; -1 if not requested */
	int stderr_fd; /* -1 if not requested (always with a tty) */
	int resize_fd; /* struct stream_winsize records, one read() each; -1 without a tty */
	int cancel_fd; /* readable (EOF) once the client is gone: stop and return soon */
};

/* The work behind the protocols: a backend (the Docker backend, the tests'
 * local runtime) fills this with named fields. Each call blocks on its own
 * thread until the work is done or cancel_fd fires. */
struct stream_runtime_ops {
	/* Runs req->cmd in container req->id. Returns the exit code (>= 0), or a
	 * negative errno with err set: the message reaches the client in the
	 * error stream's Status. */
	int (*exec)(void *userdata, const struct stream_request *req, const struct stream_io *io,
		    struct crx_err *err);
	/* Attaches to the main process of container req->id. Returns 0 when the
	 * stream ended (a Success status, as the kubelet reports), or a
	 * negative errno. */
	int (*attach)(void *userdata, const struct stream_request *req, const struct stream_io *io,
		      struct crx_err *err);
	/* Carries one forwarded connection to `port` inside sandbox `sandbox_id`:
	 * bytes read from fd go to the port and back. EOF on fd means the client
	 * half-closed (shutdown(fd, SHUT_WR) passes the pod's half-close back).
	 * Returns 0 when both directions are done, or a negative errno with err
	 * set (sent to the client on the connection's error stream). fd is a
	 * blocking AF_UNIX stream socket that belongs to the server. */
	int (*port_forward)(void *userdata, const char *sandbox_id, uint16_t port, int fd,
			    int cancel_fd, struct crx_err *err);
};

struct stream_server_options {
	const char *address;   /* "127.0.0.1:0" (default): loopback, the kernel picks the port */
	unsigned max_tokens;   /* outstanding URLs, default 1000; beyond: -ENOSPC */
	unsigned token_ttl_ms; /* default 60000 */
	unsigned max_sessions; /* concurrent sessions (token accepted), default 256 */
	/* Connections still sending their request (no valid token yet) have a
	 * budget of their own: past max_pending (default 64) the one that has
	 * waited longest is dropped; past twice that, new ones get 503. */
	unsigned max_pending;
	unsigned header_timeout_ms;  /* the whole request, default 5000 */
	unsigned request_timeout_ms; /* stream creation (and a cap on the request), default 30000 */
	unsigned idle_timeout_ms;    /* no traffic on an open session, default 4 h */
	const struct stream_runtime_ops *ops;
	void *userdata;
};

/* Binds the address and starts serving. */
int stream_server_new(const struct stream_server_options *opts, struct stream_server **out,
		      struct crx_err *err);
/* Stops accepting, cancels open sessions, waits for every thread; NULL is fine. */
void stream_server_free(struct stream_server *s);

/* The absolute base URL, "http://127.0.0.1:41234". */
const char *stream_server_base_url(const struct stream_server *s);

/* Registers req (copied) and returns the URL the client must use, a
 * malloc'd string. -EINVAL for an invalid request, -ENOSPC when max_tokens
 * URLs are outstanding. */
int stream_server_register(struct stream_server *s, const struct stream_request *req, char **url,
			   struct crx_err *err);

/* Counters for tests and Status: tokens outstanding, sessions open,
 * connections without a session yet (each may be NULL). */
void stream_server_stats(struct stream_server *s, unsigned *tokens, unsigned *sessions,
			 unsigned *pending);
