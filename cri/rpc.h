/* crimux's view of gRPC: a server that hands each incoming call to a dispatch
 * function, and channels to backends over which calls are relayed or made.
 *
 * This header hides gRPC core; cri/grpc.c is the only file that includes
 * grpc.h, because its API changes between minor releases.
 *
 * Threading: the server runs one event loop that owns every completion, on
 * one thread at a time. dispatch() runs on it and must not block: it
 * answers, relays, or defers the call to a worker thread (the loop moves to
 * another thread and the one that had it runs the job). Each incoming call
 * is completed exactly once, with rpc_call_reply(), rpc_call_fail(),
 * rpc_call_relay() or, for a server stream crimux produces itself,
 * rpc_call_send()... rpc_call_finish(); these may be called from any
 * thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "cri/status.h"

struct rpc_server;
struct rpc_channel;
struct rpc_call;

/* An owned byte string (a serialized protobuf message). */
struct rpc_buf {
	uint8_t *data;
	size_t len;
};
void rpc_buf_clear(struct rpc_buf *buf);

/* The outcome of a call: status, message and, when OK, the unary reply. */
struct rpc_result {
	int code;
	char *details;        /* owned, may be NULL */
	struct rpc_buf reply; /* unary reply; empty unless code == RPC_OK */
};
void rpc_result_clear(struct rpc_result *res);

/* What a finished incoming call looked like, for the daemon's request log. */
struct rpc_call_summary {
	const char *method;
	const char *handler;      /* the RuntimeClass handler involved, if known */
	const char *sandbox_id;   /* the pod sandbox named or created, if any */
	const char *container_id; /* the container named or created, if any */
	int code;
	const char *details;
	const char *backend; /* NULL when crimux answered itself */
	uint64_t duration_ns;
	uint64_t backend_ns; /* a relayed call: from the backend leg's start to its status */
	/* a call a backend inside crimux served (the dockershim): how long it
	 * waited for the engine behind it */
	bool engine_timed;
	uint64_t engine_ns;
	size_t request_bytes;
	size_t response_bytes;
};

struct rpc_server_options {
	const char *address; /* "unix:///run/crimux/crimux.sock"; NULL: adopt a listener */
	size_t max_message;  /* largest message received, bytes */
	unsigned workers;    /* most threads for rpc_call_defer(); 0: default */
	void (*dispatch)(struct rpc_call *call, void *userdata);
	void (*finished)(const struct rpc_call_summary *summary, void *userdata);
	void *userdata;
};

int rpc_server_new(const struct rpc_server_options *opts, struct rpc_server **out,
		   struct crx_err *err);
/* Serves the connections accepted on listen_fd, a listening socket someone
 * else made (systemd's socket activation); call before rpc_server_start().
 * crimux never closes or unlinks it. */
int rpc_server_adopt_listener(struct rpc_server *server, int listen_fd, struct crx_err *err);
/* Starts serving; the event and worker threads run until rpc_server_shutdown(). */
int rpc_server_start(struct rpc_server *server, struct crx_err *err);
/* Stops accepting calls, lets calls in flight finish for up to grace_ms, then
 * cancels what is left (long streams) and waits until every call is freed.
 * Returns the number of calls that had to be cancelled. */
unsigned rpc_server_shutdown(struct rpc_server *server, unsigned grace_ms);
void rpc_server_free(struct rpc_server *server);
/* Calls started and not yet freed. */
unsigned rpc_server_calls_in_flight(struct rpc_server *server);

/* --- an incoming call --- */
const char *rpc_call_method(const struct rpc_call *call);
/* The request message, flattened on first use. NULL with *len 0 if empty. */
const uint8_t *rpc_call_request(struct rpc_call *call, size_t *len);
/* True once the client cancelled or the deadline passed. */
bool rpc_call_cancelled(const struct rpc_call *call);
/* What the call is about, for the request log (copies; NULL leaves a tag). */
void rpc_call_tag(struct rpc_call *call, const char *handler, const char *sandbox_id,
		  const char *container_id);
/* The backend that serves the call itself (not by relay), for the request
 * log and the metrics; name must outlive the call. */
void rpc_call_tag_backend(struct rpc_call *call, const char *name);
/* Served inside crimux, by a backend that waited ns for its engine. */
void rpc_call_engine_time(struct rpc_call *call, uint64_t ns);
/* Runs fn(arg) once the call is freed (after the request log). */
void rpc_call_on_free(struct rpc_call *call, void (*fn)(void *arg), void *arg);
/* Keeps the call's memory (not the call: it is still completed once) until
 * the matching release, for work that may outlive its completion. */
void rpc_call_hold(struct rpc_call *call);
void rpc_call_release(struct rpc_call *call);
/* Milliseconds left before the client's deadline; -1 if there is none. */
int64_t rpc_call_time_left_ms(const struct rpc_call *call);

void rpc_call_reply(struct rpc_call *call, const void *msg, size_t len);
void rpc_call_fail(struct rpc_call *call, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Fails with the status code that err->code maps to and err's message. */
void rpc_call_fail_err(struct rpc_call *call, const struct crx_err *err);

/* Relays the call to a backend: request metadata and bytes out, response
 * metadata, messages, status and trailers back, byte for byte. */
struct rpc_relay {
	struct rpc_channel *channel;
	bool server_streaming;
	/* Send these bytes instead of the client's request (policy rewrites). */
	const struct rpc_buf *request;
	/* Sees the backend's status and unary reply before the client does (to
	 * learn the IDs of created objects). Called exactly once, on the event
	 * thread or the caller's; must not block. */
	void (*observe)(int code, const uint8_t *msg, size_t len, void *arg);
	void *observe_arg;
	/* Unary only. 0: the backend's call ends with the client's (deadline,
	 * cancellation). Otherwise it is not cancelled when the client gives
	 * up and gets the client's deadline but at least detach_ms: a create
	 * the kubelet timed out on still completes, and observe hears how, so
	 * its retry can be given the same object. */
	unsigned detach_ms;
};
void rpc_call_relay(struct rpc_call *call, const struct rpc_relay *relay);

/* Sends the call's request to every channel at once, on the event loop,
 * and completes the call with what combine() makes of the replies, given in
 * channel order (a backend that cannot be reached shows as UNAVAILABLE with
 * its name). timeout_ms bounds each leg (0: only the client's deadline).
 * combine runs on the event loop and must not block; when the replies
 * call for more work, it may hand the call to a worker (rpc_call_defer())
 * and set out->code to RPC_HANDED_ON: the worker completes it. */
typedef void (*rpc_combine_fn)(struct rpc_call *call, const struct rpc_result *replies, size_t n,
			       struct rpc_result *out, void *arg);
#define RPC_HANDED_ON (-1)
void rpc_call_fanout(struct rpc_call *call, struct rpc_channel *const *channels, size_t n,
		     unsigned timeout_ms, rpc_combine_fn combine, void *arg);

/* Completes the call with a result: its reply when OK, else its status. */
void rpc_call_complete(struct rpc_call *call, const struct rpc_result *res);

/* Runs fn(call, arg) on a worker thread; fn completes the call. On failure
 * the call has been failed already. */
int rpc_call_defer(struct rpc_call *call, void (*fn)(struct rpc_call *call, void *arg), void *arg);

/* A server stream from crimux itself: rpc_call_send() blocks until the
 * message is on its way (one at a time, from any number of threads) and
 * returns -ECANCELED once the client has gone; rpc_call_finish() ends it. */
int rpc_call_send(struct rpc_call *call, const void *msg, size_t len);
void rpc_call_finish(struct rpc_call *call, int code, const char *details);
/* Queues a message of such a stream without waiting (the event-driven path
 * for long streams: no thread waits on a slow client): 0, -ENOBUFS when the
 * messages waiting would exceed max_queued_bytes (one always may), or
 * -ECANCELED once the client has gone.
 * Not to be mixed with rpc_call_send() on one call; rpc_call_finish() sends
 * the status after what was posted. */
int rpc_call_post(struct rpc_call *call, const void *msg, size_t len, size_t max_queued_bytes);
/* Sends the response headers now, without waiting: the client learns that
 * the stream is established before its first message. */
int rpc_call_post_headers(struct rpc_call *call);
/* Runs fn(arg) on the event loop when the call ends for the client:
 * cancelled, past its deadline, or complete (then after its status is
 * out). Call from dispatch(); runs at once if that has happened already. */
void rpc_call_on_close(struct rpc_call *call, void (*fn)(void *arg), void *arg);

/* --- channels to backends --- */
struct rpc_channel_options {
	const char *name;   /* the backend's name, used in error messages */
	const char *target; /* "unix:///run/containerd/containerd.sock" */
	size_t max_message;
};
int rpc_channel_new(const struct rpc_channel_options *opts, struct rpc_channel **out,
		    struct crx_err *err);
void rpc_channel_free(struct rpc_channel *channel);
const char *rpc_channel_name(const struct rpc_channel *channel);
const char *rpc_channel_target(const struct rpc_channel *channel);

/* A blocking unary call, for worker threads and start-up. parent (may be
 * NULL) passes on the client's deadline and cancellation; timeout_ms bounds
 * the call (0: no bound of its own). Returns 0 when the backend answered,
 * whatever the status, or a negative errno when no call could be made. */
int rpc_channel_call(struct rpc_channel *channel, const char *method, const void *req, size_t len,
		     struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *res);

/* A server stream read by crimux from a backend (blocking, for workers).
 * Opening does not wait for the backend: the first rpc_stream_next() does,
 * and rpc_stream_cancel() ends that wait. */
struct rpc_stream;
int rpc_stream_open(struct rpc_channel *channel, const char *method, const void *req, size_t len,
		    struct rpc_call *parent, unsigned timeout_ms, struct rpc_stream **out);
/* 1 and the next message, or 0 at the end of the stream, when res holds the
 * status; negative errno when reading failed. */
int rpc_stream_next(struct rpc_stream *stream, struct rpc_buf *msg, struct rpc_result *res);
/* Makes a pending rpc_stream_next() return; safe from any thread. */
void rpc_stream_cancel(struct rpc_stream *stream);
void rpc_stream_free(struct rpc_stream *stream);
