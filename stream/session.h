/* A streaming session: its channels, forwarded connections and runtime
 * threads (stream/session.c). The protocols (stream/spdy.c, stream/ws.c)
 * sit above it and plug in through struct stream_proto; the server above
 * them picks one per connection. Private to stream/.
 *
 * Each stream the protocol carries is a `chan`. A chan with a runtime
 * descriptor owns a socketpair: `fd` is the server's non-blocking end, `rt`
 * the runtime's blocking end. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "stream/codec.h"
#include "stream/http.h"
#include "stream/stream.h"

#define IO_MAX       (256 * 1024) /* socket buffers, a chan's pending bytes */
#define FRAME_MAX    (128 * 1024) /* the largest frame accepted */
#define CHUNK        (32 * 1024)  /* the largest frame sent */
#define OUT_HEADROOM (CHUNK + 4096)
#define MAX_CHANS    160
#define MAX_FORWARDS 64 /* concurrent forwarded connections per session */
#define DRAIN_MS     2000
#define LINGER_MS    2000

struct session;
struct chan;

/* What differs between SPDY/3.1 and WebSocket, for the session core. */
struct stream_proto {
	/* WebSocket: the channels exist from the start and live as long as the
	 * connection. SPDY: the client opens streams one by one, and each one
	 * ends on its own. */
	bool fixed_channels;
	/* Answers the upgrade request. */
	int (*handshake)(struct session *s, const struct http_request *h);
	/* Creates the channels known at once and starts the runtime (NULL: the
	 * client's streams do that). */
	int (*open)(struct session *s);
	/* Handles the client's bytes in s->in. */
	void (*input)(struct session *s);
	/* Data for the client on c; fin ends c where the protocol can. */
	int (*send)(struct session *s, struct chan *c, const void *p, size_t n, bool fin);
	/* Says goodbye: a GOAWAY with goaway_status, or a close frame. */
	void (*close)(struct session *s, uint32_t goaway_status, uint16_t ws_code, const char *why);
};

struct session_config {
	const struct stream_runtime_ops *ops;
	void *userdata;
	unsigned request_timeout_ms, idle_timeout_ms;
	int stop_fd; /* readable when the server shuts down */
};
/* Serves one upgraded connection for req (taken) in protocol proto, starting with the bytes
 * already read after the HTTP request; returns when the session is over.
 * Closes nothing it did not create: the caller closes sock. */
void session_run(const struct session_config *cfg, const struct stream_proto *proto, int sock,
		 const struct http_request *http, struct stream_request *req, const uint8_t *early,
		 size_t n_early);

enum chan_kind { CH_STDIN, CH_STDOUT, CH_STDERR, CH_ERROR, CH_RESIZE, CH_PF_DATA, CH_PF_ERROR };

struct forward;

struct chan {
	enum chan_kind kind;
	uint32_t id;         /* SPDY stream id or WebSocket channel */
	int fd, rt;          /* server end, runtime end; -1 when none */
	bool in_fin;         /* the client finished sending */
	bool in_shut;        /* ... and fd's write side is shut */
	bool out_eof;        /* fd has nothing more to read */
	bool out_fin;        /* we finished sending */
	bool discard;        /* the client reset it: read fd, send nothing */
	struct sbuf pending; /* client bytes not yet written to fd */
	struct forward *fw;
};

struct session;

/* One forwarded connection: a data and an error chan and a runtime thread. */
struct forward {
	struct session *s;
	char request_id[32];
	uint16_t port;
	struct chan *data, *error;
	pthread_t thread;
	bool started, joined, reported;
	int result;
	struct crx_err err;
	uint64_t created_ms;
};

struct session {
	const struct session_config *cfg;
	struct stream_request *req;
	int sock;
	const struct stream_proto *proto;
	bool b64;
	int version; /* remote command protocol 1..5 */
	struct sbuf in, out, wsmsg;
	uint8_t wsop;
	struct spdy_zlib z;
	bool z_ok;
	uint32_t last_stream;
	struct chan *chans[MAX_CHANS];
	size_t n_chans;
	struct forward *fws[MAX_FORWARDS];
	size_t n_fws;
	int cancel[2], done[2];
	/* exec and attach */
	bool rt_started, rt_joined;
	pthread_t rt;
	struct stream_io io; /* the runtime's ends, fixed before its thread starts */
	int rt_result;
	struct crx_err rt_err;
	int resize[2];
	struct resize_parser rp;
	/* life cycle */
	uint64_t streams_deadline, drain_deadline, linger_deadline, last_io;
	bool goaway_in, closing, shut_wr, finished;
	const char *abort_reason;
	uint8_t iobuf[CHUNK];                             /* one read from a runtime fd */
	char b64buf[1 + (CHUNK * 3 / 4 + 2) / 3 * 4 + 8]; /* ...as a base64 message */
};

/* --- the core (session.c) --- */
struct chan *sess_chan_find(struct session *s, uint32_t id);
struct chan *sess_chan_of_kind(struct session *s, enum chan_kind kind);
struct chan *sess_chan_new(struct session *s, enum chan_kind kind, uint32_t id);
/* Free room in c for client bytes (SIZE_MAX when they are dropped anyway). */
size_t sess_chan_room(struct chan *c);
/* Client bytes for c; 1 taken, 0 no room yet. */
int sess_deliver(struct session *s, struct chan *c, const uint8_t *p, size_t n);
/* Data for the client on c; fin ends c (SPDY; WebSocket channels end with
 * the connection). */
int sess_send_data(struct session *s, struct chan *c, const void *p, size_t n, bool fin);
/* Says goodbye (GOAWAY or a close frame) and starts the lingering close. */
void sess_begin_close(struct session *s, uint32_t goaway_status, uint16_t ws_code, const char *why);
int sess_start_exec(struct session *s);
struct forward *sess_forward_new(struct session *s, const char *request_id, uint16_t port);
void sess_forward_start(struct session *s, struct forward *f);
void sess_forward_free(struct session *s, struct forward *f);
/* The first of the client's comma-separated protocols the server supports. */
const char *sess_negotiate(const char *client, const char *const *supported, size_t n);
/* 4 for "v4.channel.k8s.io"; 1 for "channel.k8s.io". */
int sess_protocol_version(const char *p);
