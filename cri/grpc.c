/* The gRPC core adapter: the only file that includes grpc.h.
 *
 * One completion queue and one event loop carry every incoming call and
 * every relayed call; a relay is a small state machine advanced by the
 * completions of its batches, so the fast path never changes threads. The
 * loop runs on one thread at a time (event_loop_run). */
#include "config.h"

#include "cri/rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/utf8.h"
#include "common/util.h"
#include "common/workers.h"

/* Incoming calls requested from gRPC ahead of time. */
#define PENDING_REQUESTS 8
/* Threads for rpc_call_defer() unless the options say otherwise. */
#define DEFAULT_WORKERS 64

/* What one client of the CRI socket may hold. Each open stream is a call in
 * gRPC core and in crimux (about 13 KiB), so without a bound one connection
 * opening streams it never sends a message on grows crimuxd by gigabytes.
 * The kubelet multiplexes every CRI call on one connection, but its gRPC
 * client queues calls beyond the peer's limit instead of failing them.
 * gRPC core 1.51 holds a client to it only once the client acknowledged
 * the setting (a connection that opens more is closed); see below for the
 * client that never does. */
#define MAX_STREAMS_PER_CONNECTION 1024
/* A connection must send the HTTP/2 preface and its SETTINGS in this time
 * (gRPC's default is two minutes); on a unix socket they arrive at once. */
#define HANDSHAKE_TIMEOUT_MS 10000
/* A connection without a call for this long is closed with a GOAWAY; a
 * client such as the kubelet reconnects on its next call. */
#define MAX_CONNECTION_IDLE_MS (5 * 60 * 1000)
/* Calls whose request message has not arrived: gRPC core 1.51 enforces a
 * connection's stream limit only once the client acknowledged it, so a
 * client that never does can open streams without end. crimux bounds them
 * itself: at most this many at once on the whole socket, each for at most
 * REQUEST_TIMEOUT_MS. A new call past the bound pushes out the oldest with
 * RESOURCE_EXHAUSTED: the kubelet sends its request with the call's headers,
 * so its calls wait for microseconds and are never the oldest for long. */
#define MAX_WAITING_CALLS  1024
#define REQUEST_TIMEOUT_MS 10000
/* How often the event loop looks for calls past REQUEST_TIMEOUT_MS. */
#define SWEEP_INTERVAL_MS 1000

/* Reconnect quickly after a backend restarts: the kubelet retries every
 * second, and gRPC's default backoff grows to two minutes. */
#define RECONNECT_BACKOFF_MS     100
#define MAX_RECONNECT_BACKOFF_MS 1000

struct posted {
	struct posted *next;
	grpc_byte_buffer *bb;
};

/* A completion: what to run, and on which object. */
struct tag {
	void (*fn)(void *obj, bool ok);
	void *obj;
};

struct rpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	struct rpc_server_options opts;
	char *address;
	pthread_t event_thread;
	struct workers *workers;
	/* an adopted listener: accepted by a thread of ours, handed to gRPC */
	int listen_fd, stop_fd;
	pthread_t accept_thread;
	grpc_server_credentials *creds;
	bool started;
	atomic_bool stopping;

	pthread_mutex_t lock;
	pthread_cond_t changed; /* calls reached zero, or shutdown completed */
	unsigned calls;         /* accepted and not yet freed */
	bool shutdown_done;
	struct rpc_call *detached; /* relays whose backend call outlives the client's */
	struct tag shutdown_tag;

	/* Calls waiting for their request message, oldest first; touched on
	 * the event loop only. */
	struct rpc_call *waiting_head, *waiting_tail;
	unsigned n_waiting;
	struct timespec last_sweep;
};

struct rpc_channel {
	grpc_channel *channel;
	char *name;
	char *target;
};

struct rpc_call {
	struct rpc_server *server;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array request_md;
	grpc_byte_buffer *request_bb;
	char *method;
	struct rpc_buf request; /* flattened on demand */
	struct timespec start;

	/* Batches in flight plus one for the owner, who must still complete
	 * the call; the call is freed when the count drops to zero. */
	atomic_int refs;
	atomic_bool closed;
	int cancelled; /* written by RECV_CLOSE_ON_SERVER */

	struct tag t_new, t_request, t_close, t_final, t_send;
	bool initial_md_sent;
	/* in the server's waiting list (event thread only) */
	bool waiting;
	int refused; /* the status crimux cancelled it with before its request came */
	struct rpc_call *wait_prev, *wait_next;

	/* rpc_call_send(): one message in flight at a time, across threads */
	pthread_mutex_t send_serial;
	pthread_mutex_t send_lock;
	pthread_cond_t send_done;
	bool send_pending, send_ok;
	/* rpc_call_post(): messages waiting their turn behind the one in
	 * flight; on_send starts the next, and a final status asked for
	 * meanwhile goes out once they are sent. Under send_lock. */
	struct posted *post_head, *post_tail;
	grpc_byte_buffer *post_inflight;
	bool headers_inflight;
	size_t posted; /* bytes waiting */
	bool post_failed, final_pending;
	int final_code;
	char *final_details;
	void (*on_close)(void *arg);
	void *on_close_arg;
	grpc_byte_buffer *reply_bb;
	grpc_slice status_details;
	int code;
	char *message; /* the final status message, for the summary */
	size_t request_bytes, response_bytes;
	char *tag_handler, *tag_sandbox, *tag_container;
	const char *tag_backend; /* borrowed: outlives the call */
	void (*on_free)(void *arg);
	void *on_free_arg;

	/* relay state, touched only on the event loop once relaying */
	struct rpc_relay relay;
	struct rpc_call *detached_next, **detached_prev; /* under server->lock */
	grpc_call *up;
	grpc_byte_buffer *up_request;
	grpc_metadata_array up_md, up_trailers;
	grpc_byte_buffer *up_msg;
	grpc_status_code up_status;
	grpc_slice up_details;
	bool up_eos, up_status_done;
	struct tag t_up_first, t_up_status, t_up_msg, t_down_msg;
	struct timespec up_start; /* a unary relay's backend leg, for the metrics */
	uint64_t backend_ns;
	bool engine_timed;
	uint64_t engine_ns;
};

void rpc_buf_clear(struct rpc_buf *buf)
{
	free(buf->data);
	buf->data = NULL;
	buf->len = 0;
}

void rpc_result_clear(struct rpc_result *res)
{
	free(res->details);
	res->details = NULL;
	rpc_buf_clear(&res->reply);
	res->code = RPC_OK;
}

static uint64_t elapsed_ns(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - since->tv_sec) * 1000000000u + (uint64_t)now.tv_nsec -
	       (uint64_t)since->tv_nsec;
}

static char *slice_strdup(grpc_slice s)
{
	size_t n = GRPC_SLICE_LENGTH(s);
	char *str = malloc(n + 1);
	if (str) {
		memcpy(str, GRPC_SLICE_START_PTR(s), n);
		str[n] = '\0';
	}
	return str;
}

static grpc_byte_buffer *byte_buffer_from(const void *data, size_t len)
{
	grpc_slice slice = grpc_slice_from_copied_buffer(data, len);
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice);
	return bb;
}

static int byte_buffer_flatten(grpc_byte_buffer *bb, struct rpc_buf *out)
{
	grpc_byte_buffer_reader reader;
	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return -EBADMSG;
	grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	size_t n = GRPC_SLICE_LENGTH(all);
	uint8_t *data = malloc(n ? n : 1);
	if (!data) {
		grpc_slice_unref(all);
		return -ENOMEM;
	}
	memcpy(data, GRPC_SLICE_START_PTR(all), n);
	grpc_slice_unref(all);
	out->data = data;
	out->len = n;
	return 0;
}

/* ---------------------------------------------------------------- calls */

static void on_new_call(void *obj, bool ok);
static void on_request(void *obj, bool ok);
static void on_close(void *obj, bool ok);
static void on_final(void *obj, bool ok);
static void on_send(void *obj, bool ok);

static struct rpc_call *call_alloc(struct rpc_server *server)
{
	struct rpc_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->server = server;
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->request_md);
	grpc_metadata_array_init(&c->up_md);
	grpc_metadata_array_init(&c->up_trailers);
	c->status_details = grpc_empty_slice();
	c->up_details = grpc_empty_slice();
	c->t_new = (struct tag){on_new_call, c};
	c->t_request = (struct tag){on_request, c};
	c->t_close = (struct tag){on_close, c};
	c->t_final = (struct tag){on_final, c};
	c->t_send = (struct tag){on_send, c};
	pthread_mutex_init(&c->send_serial, NULL);
	pthread_mutex_init(&c->send_lock, NULL);
	pthread_cond_init(&c->send_done, NULL);
	return c;
}

static void undetach(struct rpc_call *c)
{
	struct rpc_server *s = c->server;
	pthread_mutex_lock(&s->lock);
	if (c->detached_prev) {
		*c->detached_prev = c->detached_next;
		if (c->detached_next)
			c->detached_next->detached_prev = c->detached_prev;
		c->detached_prev = NULL;
	}
	pthread_mutex_unlock(&s->lock);
}

static void call_free(struct rpc_call *c)
{
	undetach(c);
	if (c->call)
		grpc_call_unref(c->call);
	if (c->up)
		grpc_call_unref(c->up);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->request_md);
	grpc_metadata_array_destroy(&c->up_md);
	grpc_metadata_array_destroy(&c->up_trailers);
	if (c->request_bb)
		grpc_byte_buffer_destroy(c->request_bb);
	if (c->up_request)
		grpc_byte_buffer_destroy(c->up_request);
	if (c->reply_bb)
		grpc_byte_buffer_destroy(c->reply_bb);
	if (c->up_msg)
		grpc_byte_buffer_destroy(c->up_msg);
	grpc_slice_unref(c->status_details);
	grpc_slice_unref(c->up_details);
	rpc_buf_clear(&c->request);
	free(c->method);
	free(c->message);
	free(c->tag_handler);
	free(c->tag_sandbox);
	free(c->tag_container);
	for (struct posted *p = c->post_head, *next; p; p = next) {
		next = p->next;
		grpc_byte_buffer_destroy(p->bb);
		free(p);
	}
	if (c->post_inflight)
		grpc_byte_buffer_destroy(c->post_inflight);
	free(c->final_details);
	pthread_mutex_destroy(&c->send_serial);
	pthread_mutex_destroy(&c->send_lock);
	pthread_cond_destroy(&c->send_done);
	free(c);
}

/* The last reference is gone: report the call and release it. */
static void call_unref(struct rpc_call *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	struct rpc_server *s = c->server;
	if (s->opts.finished) {
		struct rpc_call_summary summary = {
			.method = c->method,
			.handler = c->tag_handler,
			.sandbox_id = c->tag_sandbox,
			.container_id = c->tag_container,
			.code = c->code,
			.details = c->message,
			.backend = c->relay.channel ? c->relay.channel->name : c->tag_backend,
			.duration_ns = elapsed_ns(&c->start),
			.backend_ns = c->backend_ns,
			.engine_timed = c->engine_timed,
			.engine_ns = c->engine_ns,
			.request_bytes = c->request_bytes,
			.response_bytes = c->response_bytes,
		};
		s->opts.finished(&summary, s->opts.userdata);
	}
	void (*on_free)(void *) = c->on_free;
	void *on_free_arg = c->on_free_arg;
	call_free(c);
	if (on_free)
		on_free(on_free_arg);
	pthread_mutex_lock(&s->lock);
	if (--s->calls == 0)
		pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->lock);
}

static bool start_batch(struct rpc_call *c, grpc_call *on, const grpc_op *ops, size_t n,
			struct tag *tag)
{
	atomic_fetch_add(&c->refs, 1);
	if (grpc_call_start_batch(on, ops, n, tag, NULL) != GRPC_CALL_OK) {
		call_unref(c);
		return false;
	}
	return true;
}

static int request_call(struct rpc_server *s)
{
	struct rpc_call *c = call_alloc(s);
	if (!c)
		return -ENOMEM;
	if (grpc_server_request_call(s->server, &c->call, &c->details, &c->request_md, s->cq, s->cq,
				     &c->t_new) != GRPC_CALL_OK) {
		call_free(c);
		return -EIO;
	}
	return 0;
}

static void waiting_add(struct rpc_server *s, struct rpc_call *c)
{
	c->waiting = true;
	c->wait_prev = s->waiting_tail;
	c->wait_next = NULL;
	if (s->waiting_tail)
		s->waiting_tail->wait_next = c;
	else
		s->waiting_head = c;
	s->waiting_tail = c;
	s->n_waiting++;
}

static void waiting_remove(struct rpc_server *s, struct rpc_call *c)
{
	if (!c->waiting)
		return;
	if (c->wait_prev)
		c->wait_prev->wait_next = c->wait_next;
	else
		s->waiting_head = c->wait_next;
	if (c->wait_next)
		c->wait_next->wait_prev = c->wait_prev;
	else
		s->waiting_tail = c->wait_prev;
	c->waiting = false;
	c->wait_prev = c->wait_next = NULL;
	s->n_waiting--;
}

/* Answers a call that is still waiting for its request with a status of
 * crimux's; it completes through on_request, which reports that status. */
static void refuse(struct rpc_call *c, int code, const char *why)
{
	c->refused = code;
	free(c->message);
	c->message = strdup(why);
	grpc_call_cancel_with_status(c->call, (grpc_status_code)code, why, NULL);
}

/* Refuses the calls that waited REQUEST_TIMEOUT_MS for their request. The
 * list is in arrival order, so the first one still in time ends the walk. */
static void sweep_waiting(struct rpc_server *s)
{
	while (s->waiting_head &&
	       elapsed_ns(&s->waiting_head->start) >= (uint64_t)REQUEST_TIMEOUT_MS * 1000000) {
		struct rpc_call *c = s->waiting_head;
		waiting_remove(s, c);
		refuse(c, RPC_DEADLINE_EXCEEDED,
		       "crimux: no request message within the time allowed");
	}
}

static void on_new_call(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	struct rpc_server *s = c->server;
	if (!ok) { /* the server is shutting down; this slot was never used */
		call_free(c);
		return;
	}
	if (!atomic_load(&s->stopping))
		request_call(s);

	clock_gettime(CLOCK_MONOTONIC, &c->start);
	pthread_mutex_lock(&s->lock);
	s->calls++;
	pthread_mutex_unlock(&s->lock);
	atomic_store(&c->refs, 1); /* the owner's */
	c->method = slice_strdup(c->details.method);

	grpc_op recv = {.op = GRPC_OP_RECV_MESSAGE};
	recv.data.recv_message.recv_message = &c->request_bb;
	grpc_op close_op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
	close_op.data.recv_close_on_server.cancelled = &c->cancelled;
	if (!c->method || !start_batch(c, c->call, &close_op, 1, &c->t_close) ||
	    !start_batch(c, c->call, &recv, 1, &c->t_request)) {
		grpc_call_cancel(c->call, NULL);
		call_unref(c);
	} else if (strlen(c->method) != GRPC_SLICE_LENGTH(c->details.method)) {
		/* Routed by the C string, relayed with the whole path: the two
		 * must be one name. */
		refuse(c, RPC_UNIMPLEMENTED, "crimux: the method name contains a NUL byte");
	} else {
		if (s->n_waiting >= MAX_WAITING_CALLS) {
			struct rpc_call *oldest = s->waiting_head;
			waiting_remove(s, oldest);
			refuse(oldest, RPC_RESOURCE_EXHAUSTED,
			       "crimux: too many calls are waiting for their request message");
		}
		waiting_add(s, c);
	}
}

static void on_request(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	waiting_remove(c->server, c);
	if (c->refused) { /* answered already, by refuse() */
		c->code = c->refused;
		call_unref(c); /* the owner's reference */
	} else if (!ok) {      /* cancelled before the request arrived: nobody to answer */
		c->code = RPC_CANCELLED;
		call_unref(c); /* the owner's reference */
	} else if (!c->request_bb) {
		rpc_call_fail(c, RPC_INVALID_ARGUMENT, "%s: the request carried no message",
			      c->method);
	} else {
		c->request_bytes = grpc_byte_buffer_length(c->request_bb);
		c->server->opts.dispatch(c, c->server->opts.userdata);
	}
	call_unref(c);
}

static void on_close(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	atomic_store(&c->closed, true);
	if (c->on_close)
		c->on_close(c->on_close_arg);
	call_unref(c);
}

static void on_final(void *obj, bool ok)
{
	call_unref(obj);
}

const char *rpc_call_method(const struct rpc_call *call)
{
	return call->method;
}

const uint8_t *rpc_call_request(struct rpc_call *call, size_t *len)
{
	if (!call->request.data && call->request_bb &&
	    byte_buffer_flatten(call->request_bb, &call->request) < 0) {
		*len = 0;
		return NULL;
	}
	*len = call->request.len;
	return call->request.data;
}

bool rpc_call_cancelled(const struct rpc_call *call)
{
	return atomic_load(&call->closed) && call->cancelled;
}

static void set_tag(char **tag, const char *value)
{
	if (!value)
		return;
	free(*tag);
	*tag = strdup(value);
}

void rpc_call_tag(struct rpc_call *call, const char *handler, const char *sandbox_id,
		  const char *container_id)
{
	set_tag(&call->tag_handler, handler);
	set_tag(&call->tag_sandbox, sandbox_id);
	set_tag(&call->tag_container, container_id);
}

void rpc_call_tag_backend(struct rpc_call *call, const char *name)
{
	call->tag_backend = name;
}

void rpc_call_engine_time(struct rpc_call *call, uint64_t ns)
{
	call->engine_ns = ns;
	call->engine_timed = true;
}

void rpc_call_on_free(struct rpc_call *call, void (*fn)(void *arg), void *arg)
{
	call->on_free = fn;
	call->on_free_arg = arg;
}

void rpc_call_hold(struct rpc_call *call)
{
	atomic_fetch_add(&call->refs, 1);
}

void rpc_call_release(struct rpc_call *call)
{
	call_unref(call);
}

void rpc_call_on_close(struct rpc_call *call, void (*fn)(void *arg), void *arg)
{
	/* dispatch() and on_close() both run on the event loop */
	if (atomic_load(&call->closed)) {
		fn(arg);
		return;
	}
	call->on_close = fn;
	call->on_close_arg = arg;
}

int64_t rpc_call_time_left_ms(const struct rpc_call *call)
{
	gpr_timespec deadline = call->details.deadline;
	if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
		return -1;
	gpr_timespec left = gpr_time_sub(deadline, gpr_now(deadline.clock_type));
	int64_t ms = gpr_time_to_millis(left);
	return ms < 0 ? 0 : ms;
}

/* Sends the final status (with an optional message and trailers) and drops the
 * owner's reference. */
static void send_final(struct rpc_call *c, const grpc_metadata_array *md, grpc_byte_buffer *msg,
		       int code, grpc_slice details, const grpc_metadata_array *trailers)
{
	grpc_op ops[3];
	size_t n = 0;
	c->code = code;
	if (!c->message && GRPC_SLICE_LENGTH(details))
		c->message = slice_strdup(details);
	grpc_slice_unref(c->status_details);
	c->status_details = details;
	if (!c->initial_md_sent) {
		ops[n] = (grpc_op){.op = GRPC_OP_SEND_INITIAL_METADATA};
		if (md) {
			ops[n].data.send_initial_metadata.count = md->count;
			ops[n].data.send_initial_metadata.metadata = md->metadata;
		}
		n++;
		c->initial_md_sent = true;
	}
	if (msg) {
		ops[n] = (grpc_op){.op = GRPC_OP_SEND_MESSAGE};
		ops[n++].data.send_message.send_message = msg;
		c->response_bytes += grpc_byte_buffer_length(msg);
	}
	ops[n] = (grpc_op){.op = GRPC_OP_SEND_STATUS_FROM_SERVER};
	ops[n].data.send_status_from_server.status = (grpc_status_code)code;
	ops[n].data.send_status_from_server.status_details = &c->status_details;
	if (trailers) {
		ops[n].data.send_status_from_server.trailing_metadata_count = trailers->count;
		ops[n].data.send_status_from_server.trailing_metadata = trailers->metadata;
	}
	n++;
	start_batch(c, c->call, ops, n, &c->t_final);
	call_unref(c);
}

void rpc_call_reply(struct rpc_call *call, const void *msg, size_t len)
{
	call->reply_bb = byte_buffer_from(msg, len);
	send_final(call, NULL, call->reply_bb, RPC_OK, grpc_empty_slice(), NULL);
}

static void call_failv(struct rpc_call *call, int code, const char *fmt, va_list ap)
{
	char *details = NULL;
	if (vasprintf(&details, fmt, ap) < 0)
		details = NULL;
	/* Messages quote what clients sent (a handler name, an ID); gRPC
	 * clients refuse a status message that is not UTF-8. */
	if (details && !utf8_valid((const uint8_t *)details, strlen(details))) {
		char *repaired = utf8_repair(details);
		free(details);
		details = repaired;
	}
	free(call->message);
	call->message = details;
	send_final(call, NULL, NULL, code,
		   details ? grpc_slice_from_copied_string(details) : grpc_empty_slice(), NULL);
}

void rpc_call_fail(struct rpc_call *call, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	call_failv(call, code, fmt, ap);
	va_end(ap);
}

void rpc_call_fail_err(struct rpc_call *call, const struct crx_err *err)
{
	rpc_call_fail(call, rpc_code_from_errno(err->code), "%s", err->msg);
}

struct deferred {
	struct rpc_call *call;
	void (*fn)(struct rpc_call *call, void *arg);
	void *arg;
};

static void run_deferred(void *arg)
{
	struct deferred *d = arg;
	d->fn(d->call, d->arg);
	free(d);
}

/* The event loop a thread runs, and a job deferred by one of its
 * completions, which that thread runs itself once another took the loop
 * over (see event_loop_run). */
static __thread struct rpc_server *loop_of;
static __thread struct deferred *loop_job;

int rpc_call_defer(struct rpc_call *call, void (*fn)(struct rpc_call *call, void *arg), void *arg)
{
	struct deferred *d = malloc(sizeof(*d));
	int r = d ? 0 : -ENOMEM;
	if (d) {
		*d = (struct deferred){call, fn, arg};
		if (loop_of == call->server && !loop_job)
			loop_job = d;
		else
			r = workers_submit(call->server->workers, run_deferred, d);
	}
	if (r < 0) {
		free(d);
		rpc_call_fail(call, RPC_UNAVAILABLE, "crimux cannot take more work now: %s",
			      strerror(-r));
	}
	return r;
}

static void on_send(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	bool final = false;
	pthread_mutex_lock(&c->send_lock);
	c->send_ok = ok;
	c->send_pending = false;
	if (c->post_inflight || c->headers_inflight) { /* posted, went out or failed */
		if (c->post_inflight)
			grpc_byte_buffer_destroy(c->post_inflight);
		c->post_inflight = NULL;
		c->headers_inflight = false;
		if (!ok)
			c->post_failed = true;
		struct posted *p = c->post_head;
		if (p && !c->post_failed) {
			c->post_head = p->next;
			if (!c->post_head)
				c->post_tail = NULL;
			c->posted -= grpc_byte_buffer_length(p->bb);
			grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
			op.data.send_message.send_message = p->bb;
			c->post_inflight = p->bb;
			c->send_pending = start_batch(c, c->call, &op, 1, &c->t_send);
			if (!c->send_pending) {
				c->post_inflight = NULL;
				grpc_byte_buffer_destroy(p->bb);
				c->post_failed = true;
			}
			free(p);
		}
		if (c->post_failed) /* the client is gone: nobody reads the rest */
			while ((p = c->post_head)) {
				c->post_head = p->next;
				grpc_byte_buffer_destroy(p->bb);
				free(p);
			}
		if (c->post_failed) {
			c->post_tail = NULL;
			c->posted = 0;
		}
		final = c->final_pending && !c->send_pending;
		if (final)
			c->final_pending = false;
	}
	pthread_cond_broadcast(&c->send_done);
	pthread_mutex_unlock(&c->send_lock);
	if (final) {
		char *details = TAKE_PTR(c->final_details);
		send_final(c, NULL, NULL, c->final_code,
			   details ? grpc_slice_from_copied_string(details) : grpc_empty_slice(),
			   NULL);
		free(details);
	}
	call_unref(c);
}

int rpc_call_post_headers(struct rpc_call *c)
{
	pthread_mutex_lock(&c->send_lock);
	int r = 0;
	if (c->post_failed || c->final_pending || rpc_call_cancelled(c)) {
		r = -ECANCELED;
	} else if (!c->initial_md_sent && !c->send_pending) {
		grpc_op op = {.op = GRPC_OP_SEND_INITIAL_METADATA};
		c->initial_md_sent = true;
		c->headers_inflight = c->send_pending = start_batch(c, c->call, &op, 1, &c->t_send);
		if (!c->send_pending) {
			c->post_failed = true;
			r = -ECANCELED;
		}
	}
	pthread_mutex_unlock(&c->send_lock);
	return r;
}

int rpc_call_post(struct rpc_call *c, const void *msg, size_t len, size_t max_queued_bytes)
{
	pthread_mutex_lock(&c->send_lock);
	int r = 0;
	if (c->post_failed || c->final_pending || rpc_call_cancelled(c)) {
		r = -ECANCELED;
	} else if (c->posted && c->posted + len > max_queued_bytes) {
		r = -ENOBUFS;
	} else if (!c->send_pending) {
		grpc_op ops[2];
		size_t n = 0;
		if (!c->initial_md_sent) {
			ops[n++] = (grpc_op){.op = GRPC_OP_SEND_INITIAL_METADATA};
			c->initial_md_sent = true;
		}
		ops[n] = (grpc_op){.op = GRPC_OP_SEND_MESSAGE};
		c->post_inflight = byte_buffer_from(msg, len);
		ops[n++].data.send_message.send_message = c->post_inflight;
		c->send_pending = start_batch(c, c->call, ops, n, &c->t_send);
		if (!c->send_pending) {
			grpc_byte_buffer_destroy(c->post_inflight);
			c->post_inflight = NULL;
			c->post_failed = true;
			r = -ECANCELED;
		}
	} else {
		struct posted *p = malloc(sizeof(*p));
		if (!p) {
			r = -ENOMEM;
		} else {
			*p = (struct posted){.bb = byte_buffer_from(msg, len)};
			if (c->post_tail)
				c->post_tail->next = p;
			else
				c->post_head = p;
			c->post_tail = p;
			c->posted += len;
		}
	}
	if (r == 0)
		c->response_bytes += len;
	pthread_mutex_unlock(&c->send_lock);
	return r;
}

int rpc_call_send(struct rpc_call *c, const void *msg, size_t len)
{
	pthread_mutex_lock(&c->send_serial);
	grpc_byte_buffer *bb = byte_buffer_from(msg, len);
	grpc_op ops[2];
	size_t n = 0;
	if (!c->initial_md_sent) {
		ops[n++] = (grpc_op){.op = GRPC_OP_SEND_INITIAL_METADATA};
		c->initial_md_sent = true;
	}
	ops[n] = (grpc_op){.op = GRPC_OP_SEND_MESSAGE};
	ops[n++].data.send_message.send_message = bb;
	c->send_pending = true;
	bool ok = start_batch(c, c->call, ops, n, &c->t_send);
	if (ok) {
		pthread_mutex_lock(&c->send_lock);
		while (c->send_pending)
			pthread_cond_wait(&c->send_done, &c->send_lock);
		ok = c->send_ok;
		pthread_mutex_unlock(&c->send_lock);
		c->response_bytes += len;
	}
	grpc_byte_buffer_destroy(bb);
	pthread_mutex_unlock(&c->send_serial);
	return ok ? 0 : -ECANCELED;
}

void rpc_call_finish(struct rpc_call *call, int code, const char *details)
{
	pthread_mutex_lock(&call->send_serial); /* after any send still in flight */
	pthread_mutex_unlock(&call->send_serial);
	pthread_mutex_lock(&call->send_lock);
	if (call->post_inflight || call->headers_inflight) { /* after them, from on_send */
		call->final_pending = true;
		call->final_code = code;
		free(call->final_details);
		call->final_details = details ? strdup(details) : NULL;
		pthread_mutex_unlock(&call->send_lock);
		return;
	}
	pthread_mutex_unlock(&call->send_lock);
	send_final(call, NULL, NULL, code,
		   details ? grpc_slice_from_copied_string(details) : grpc_empty_slice(), NULL);
}

/* ---------------------------------------------------------------- relay */

static void on_up_first(void *obj, bool ok);
static void on_up_status(void *obj, bool ok);
static void on_up_msg(void *obj, bool ok);
static void on_down_msg(void *obj, bool ok);

/* A failure to reach the backend reads better with the backend's name: the
 * backend's own UNAVAILABLE arrives over a READY channel and is kept as is.
 * Returns a new slice. */
static grpc_slice backend_details(struct rpc_channel *ch, grpc_status_code code, grpc_slice details)
{
	if (code != GRPC_STATUS_UNAVAILABLE ||
	    grpc_channel_check_connectivity_state(ch->channel, 0) == GRPC_CHANNEL_READY)
		return grpc_slice_ref(details);
	_cleanup_free_ char *orig = slice_strdup(details);
	char *msg = NULL;
	if (asprintf(&msg, "backend %s (%s) is unavailable: %s", ch->name, ch->target,
		     orig ? orig : "") < 0)
		return grpc_slice_ref(details);
	grpc_slice s = grpc_slice_from_copied_string(msg);
	free(msg);
	return s;
}

static char *backend_details_str(struct rpc_channel *ch, grpc_status_code code, grpc_slice details)
{
	grpc_slice s = backend_details(ch, code, details);
	char *str = GRPC_SLICE_LENGTH(s) ? slice_strdup(s) : NULL;
	grpc_slice_unref(s);
	return str;
}

static void relay_finish(struct rpc_call *c)
{
	undetach(c);
	grpc_byte_buffer *msg = c->relay.server_streaming ? NULL : c->up_msg;
	if (c->relay.observe) {
		struct rpc_buf reply = {0};
		if (msg && c->up_status == GRPC_STATUS_OK)
			byte_buffer_flatten(msg, &reply);
		c->relay.observe((int)c->up_status, reply.data, reply.len, c->relay.observe_arg);
		rpc_buf_clear(&reply);
	}
	send_final(c, &c->up_md, msg, (int)c->up_status,
		   backend_details(c->relay.channel, c->up_status, c->up_details), &c->up_trailers);
}

/* The relay could not even start; the observer still hears of it, once. */
static void relay_fail(struct rpc_call *c)
{
	if (c->relay.observe)
		c->relay.observe(RPC_INTERNAL, NULL, 0, c->relay.observe_arg);
	rpc_call_fail(c, RPC_INTERNAL, "cannot start a call to backend %s", c->relay.channel->name);
}

void rpc_call_relay(struct rpc_call *c, const struct rpc_relay *relay)
{
	struct rpc_server *s = c->server;
	c->relay = *relay;
	c->relay.request = NULL; /* copied below; the caller's buffer may go */
	/* Not while stopping: shutdown cancels detached calls only once. */
	bool detach = relay->detach_ms && !relay->server_streaming && !atomic_load(&s->stopping);
	gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	if (detach) {
		/* The client's deadline, but no less than detach_ms from now. */
		gpr_timespec floor =
			gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				     gpr_time_from_millis((int64_t)relay->detach_ms, GPR_TIMESPAN));
		deadline = gpr_time_max(
			gpr_convert_clock_type(c->details.deadline, GPR_CLOCK_MONOTONIC), floor);
	}
	c->up = grpc_channel_create_call(relay->channel->channel, detach ? NULL : c->call,
					 detach ? 0 : GRPC_PROPAGATE_DEFAULTS, s->cq,
					 c->details.method, NULL, deadline, NULL);
	if (!c->up) {
		relay_fail(c);
		return;
	}
	if (detach) { /* cancelled by rpc_server_shutdown() if still running */
		pthread_mutex_lock(&s->lock);
		c->detached_next = s->detached;
		if (s->detached)
			s->detached->detached_prev = &c->detached_next;
		c->detached_prev = &s->detached;
		s->detached = c;
		pthread_mutex_unlock(&s->lock);
	}
	/* Sending moves a buffer's slices out: the backend gets a copy, and the
	 * request stays readable for whoever looks at it later. */
	grpc_byte_buffer *request = c->up_request =
		relay->request ? byte_buffer_from(relay->request->data, relay->request->len)
			       : grpc_byte_buffer_copy(c->request_bb);

	c->t_up_first = (struct tag){on_up_first, c};
	c->t_up_status = (struct tag){on_up_status, c};
	c->t_up_msg = (struct tag){on_up_msg, c};
	c->t_down_msg = (struct tag){on_down_msg, c};

	grpc_op ops[6] = {
		{.op = GRPC_OP_SEND_INITIAL_METADATA},  {.op = GRPC_OP_SEND_MESSAGE},
		{.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT}, {.op = GRPC_OP_RECV_INITIAL_METADATA},
		{.op = GRPC_OP_RECV_MESSAGE},           {.op = GRPC_OP_RECV_STATUS_ON_CLIENT},
	};
	ops[0].data.send_initial_metadata.count = c->request_md.count;
	ops[0].data.send_initial_metadata.metadata = c->request_md.metadata;
	ops[1].data.send_message.send_message = request;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->up_md;
	ops[4].data.recv_message.recv_message = &c->up_msg;
	ops[5].data.recv_status_on_client.trailing_metadata = &c->up_trailers;
	ops[5].data.recv_status_on_client.status = &c->up_status;
	ops[5].data.recv_status_on_client.status_details = &c->up_details;

	/* Unary: one batch, one completion. A stream receives its status in a
	 * batch of its own, while the messages go through one by one. */
	bool stream = relay->server_streaming;
	clock_gettime(CLOCK_MONOTONIC, &c->up_start);
	if (stream && !start_batch(c, c->up, &ops[5], 1, &c->t_up_status)) {
		relay_fail(c);
		return;
	}
	if (!start_batch(c, c->up, ops, stream ? 5 : 6, &c->t_up_first)) {
		grpc_call_cancel(c->up, NULL);
		if (stream)
			c->up_eos = true; /* the status batch completes and finishes */
		else
			relay_fail(c);
	}
}

/* Stream: hand the backend's message to the client, or finish after the last. */
static void relay_forward(struct rpc_call *c, bool have_msg)
{
	if (!have_msg) {
		c->up_eos = true;
		if (c->up_status_done)
			relay_finish(c);
		return;
	}
	grpc_op ops[2];
	size_t n = 0;
	if (!c->initial_md_sent) {
		ops[n] = (grpc_op){.op = GRPC_OP_SEND_INITIAL_METADATA};
		ops[n].data.send_initial_metadata.count = c->up_md.count;
		ops[n++].data.send_initial_metadata.metadata = c->up_md.metadata;
		c->initial_md_sent = true;
	}
	ops[n] = (grpc_op){.op = GRPC_OP_SEND_MESSAGE};
	ops[n++].data.send_message.send_message = c->up_msg;
	c->response_bytes += grpc_byte_buffer_length(c->up_msg);
	if (!start_batch(c, c->call, ops, n, &c->t_down_msg)) {
		grpc_call_cancel(c->up, NULL);
		relay_forward(c, false);
	}
}

static void on_up_first(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	if (c->relay.server_streaming) {
		relay_forward(c, ok && c->up_msg);
	} else {
		c->backend_ns = elapsed_ns(&c->up_start);
		relay_finish(c);
	}
	call_unref(c);
}

static void on_up_status(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	c->up_status_done = true;
	if (c->up_eos)
		relay_finish(c);
	call_unref(c);
}

static void on_down_msg(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	grpc_byte_buffer_destroy(c->up_msg);
	c->up_msg = NULL;
	if (!ok) { /* the client went away: stop the backend's stream too */
		grpc_call_cancel(c->up, NULL);
		relay_forward(c, false);
	} else {
		grpc_op recv = {.op = GRPC_OP_RECV_MESSAGE};
		recv.data.recv_message.recv_message = &c->up_msg;
		if (!start_batch(c, c->up, &recv, 1, &c->t_up_msg)) {
			grpc_call_cancel(c->up, NULL);
			relay_forward(c, false);
		}
	}
	call_unref(c);
}

static void on_up_msg(void *obj, bool ok)
{
	struct rpc_call *c = obj;
	relay_forward(c, ok && c->up_msg);
	call_unref(c);
}

/* ---------------------------------------------------------------- fan-out */

struct leg {
	struct fanout *f;
	struct rpc_channel *channel;
	grpc_call *call;
	grpc_byte_buffer *request; /* a copy each: sending empties a buffer */
	grpc_metadata_array md, trailers;
	grpc_byte_buffer *msg;
	grpc_status_code status;
	grpc_slice details;
	struct tag tag;
};

struct fanout {
	struct rpc_call *call;
	rpc_combine_fn combine;
	void *arg;
	size_t n, pending;
	struct leg legs[];
};

static void fanout_finish(struct fanout *f)
{
	struct rpc_call *c = f->call;
	struct rpc_result *replies = calloc(f->n ? f->n : 1, sizeof(*replies));
	struct rpc_result out = {0};
	if (!replies) {
		out.code = RPC_RESOURCE_EXHAUSTED;
	} else {
		for (size_t i = 0; i < f->n; i++) {
			struct leg *l = &f->legs[i];
			replies[i].code = (int)l->status;
			replies[i].details = backend_details_str(l->channel, l->status, l->details);
			if (l->status == GRPC_STATUS_OK && l->msg &&
			    byte_buffer_flatten(l->msg, &replies[i].reply) < 0)
				replies[i].code = RPC_RESOURCE_EXHAUSTED;
		}
		f->combine(c, replies, f->n, &out, f->arg);
		for (size_t i = 0; i < f->n; i++)
			rpc_result_clear(&replies[i]);
		free(replies);
	}
	for (size_t i = 0; i < f->n; i++) {
		struct leg *l = &f->legs[i];
		if (l->call)
			grpc_call_unref(l->call);
		if (l->msg)
			grpc_byte_buffer_destroy(l->msg);
		if (l->request)
			grpc_byte_buffer_destroy(l->request);
		grpc_metadata_array_destroy(&l->md);
		grpc_metadata_array_destroy(&l->trailers);
		grpc_slice_unref(l->details);
	}
	free(f);
	if (out.code != RPC_HANDED_ON)
		rpc_call_complete(c, &out);
	rpc_result_clear(&out);
}

static void on_leg(void *obj, bool ok)
{
	struct leg *l = obj;
	struct fanout *f = l->f;
	struct rpc_call *c = f->call;
	if (--f->pending == 0)
		fanout_finish(f);
	call_unref(c);
}

void rpc_call_fanout(struct rpc_call *c, struct rpc_channel *const *channels, size_t n,
		     unsigned timeout_ms, rpc_combine_fn combine, void *arg)
{
	struct fanout *f = calloc(1, sizeof(*f) + n * sizeof(struct leg));
	if (!f) {
		rpc_call_fail(c, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	*f = (struct fanout){.call = c, .combine = combine, .arg = arg, .n = n, .pending = n + 1};
	gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	if (timeout_ms)
		deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
					gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	for (size_t i = 0; i < n; i++) {
		struct leg *l = &f->legs[i];
		*l = (struct leg){.f = f, .channel = channels[i], .tag = {on_leg, l}};
		grpc_metadata_array_init(&l->md);
		grpc_metadata_array_init(&l->trailers);
		l->details = grpc_empty_slice();
		l->status = GRPC_STATUS_UNAVAILABLE;
		l->call = grpc_channel_create_call(channels[i]->channel, c->call,
						   GRPC_PROPAGATE_DEFAULTS, c->server->cq,
						   c->details.method, NULL, deadline, NULL);
		grpc_op ops[6] = {
			{.op = GRPC_OP_SEND_INITIAL_METADATA},
			{.op = GRPC_OP_SEND_MESSAGE},
			{.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT},
			{.op = GRPC_OP_RECV_INITIAL_METADATA},
			{.op = GRPC_OP_RECV_MESSAGE},
			{.op = GRPC_OP_RECV_STATUS_ON_CLIENT},
		};
		ops[0].data.send_initial_metadata.count = c->request_md.count;
		ops[0].data.send_initial_metadata.metadata = c->request_md.metadata;
		l->request = grpc_byte_buffer_copy(c->request_bb);
		ops[1].data.send_message.send_message = l->request;
		ops[3].data.recv_initial_metadata.recv_initial_metadata = &l->md;
		ops[4].data.recv_message.recv_message = &l->msg;
		ops[5].data.recv_status_on_client.trailing_metadata = &l->trailers;
		ops[5].data.recv_status_on_client.status = &l->status;
		ops[5].data.recv_status_on_client.status_details = &l->details;
		if (!l->call || !start_batch(c, l->call, ops, ARRAY_SIZE(ops), &l->tag))
			f->pending--; /* stays UNAVAILABLE */
	}
	/* The extra count keeps f alive until every leg has started. */
	if (--f->pending == 0)
		fanout_finish(f);
}

void rpc_call_complete(struct rpc_call *call, const struct rpc_result *res)
{
	if (res->code == RPC_OK)
		rpc_call_reply(call, res->reply.data, res->reply.len);
	else
		rpc_call_fail(call, res->code, "%s", res->details ? res->details : "");
}

/* ---------------------------------------------------------------- server */

static void on_shutdown(void *obj, bool ok)
{
	struct rpc_server *s = obj;
	pthread_mutex_lock(&s->lock);
	s->shutdown_done = true;
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->lock);
}

static void loop_on_worker(void *arg);

/* Runs the server's completions until the queue shuts down, or until one of
 * them deferred a job: then a free pool thread takes the loop over and this
 * thread runs the job itself, so the call goes on where it arrived instead
 * of waiting for a sleeping worker to wake. One thread at a time runs the
 * loop, so what the loop owns needs no lock. */
static void event_loop_run(struct rpc_server *s)
{
	loop_of = s;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			s->cq,
			gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				     gpr_time_from_millis(SWEEP_INTERVAL_MS, GPR_TIMESPAN)),
			NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE) {
			struct tag *tag = ev.tag;
			tag->fn(tag->obj, ev.success != 0);
		}
		if (elapsed_ns(&s->last_sweep) >= (uint64_t)SWEEP_INTERVAL_MS * 1000000) {
			clock_gettime(CLOCK_MONOTONIC, &s->last_sweep);
			sweep_waiting(s);
		}
		struct deferred *d = loop_job;
		if (!d)
			continue;
		loop_job = NULL;
		if (workers_submit_now(s->workers, loop_on_worker, s) == 0) {
			loop_of = NULL;
			run_deferred(d);
			return;
		}
		/* No thread free to take the loop over: the job waits its turn. */
		if (workers_submit(s->workers, run_deferred, d) < 0)
			run_deferred(d); /* shutting down: nobody else would run it */
	}
	loop_of = NULL;
}

static void loop_on_worker(void *arg)
{
	event_loop_run(arg);
}

static void *event_loop(void *arg)
{
	event_loop_run(arg);
	return NULL;
}

/* Channel arguments shared by the server and the backend channels. Retries
 * are off: the kubelet retries itself, and the retry filter would buffer
 * every message in case it had to send it again. BDP probing and channelz
 * add frames and bookkeeping to every call and buy nothing on a local socket. */
static grpc_arg int_arg(const char *key, int value)
{
	return (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (char *)key, .value.integer = value};
}

static size_t common_args(grpc_arg *args, size_t max_message)
{
	size_t n = 0;
	args[n++] = int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (int)max_message);
	args[n++] = int_arg(GRPC_ARG_ENABLE_RETRIES, 0);
	args[n++] = int_arg(GRPC_ARG_HTTP2_BDP_PROBE, 0);
	args[n++] = int_arg(GRPC_ARG_ENABLE_CHANNELZ, 0);
	return n;
}

int rpc_server_new(const struct rpc_server_options *opts, struct rpc_server **out,
		   struct crx_err *err)
{
	struct rpc_server *s = calloc(1, sizeof(*s));
	if (!s || (opts->address && !(s->address = strdup(opts->address)))) {
		free(s);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	s->listen_fd = s->stop_fd = -1;
	grpc_init();
	s->opts = *opts;
	s->opts.address = s->address;
	pthread_mutex_init(&s->lock, NULL);
	/* Shutdown's grace is a duration: a clock step must not stretch it. */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->changed, &ca);
	pthread_condattr_destroy(&ca);
	s->shutdown_tag = (struct tag){on_shutdown, s};

	/* Only a receive limit: crimux relays whatever its backends send. The
	 * rest bounds what a client can make crimuxd hold. */
	grpc_arg args[12];
	size_t n = common_args(args, opts->max_message);
	args[n++] = int_arg(GRPC_ARG_MAX_CONCURRENT_STREAMS, MAX_STREAMS_PER_CONNECTION);
	args[n++] = int_arg(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS);
	args[n++] = int_arg(GRPC_ARG_MAX_CONNECTION_IDLE_MS, MAX_CONNECTION_IDLE_MS);
	grpc_channel_args chargs = {.num_args = n, .args = args};
	s->server = grpc_server_create(&chargs, NULL);
	s->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->cq, NULL);
	s->creds = grpc_insecure_server_credentials_create();
	if (opts->address && grpc_server_add_http2_port(s->server, opts->address, s->creds) == 0) {
		rpc_server_free(s);
		return crx_err_set(err, -EADDRNOTAVAIL, "cannot listen on %s", opts->address);
	}
	*out = s;
	return 0;
}

/* gRPC core cannot listen on a socket it did not create; it can serve a
 * connected one, so a thread of ours accepts and hands each connection over. */
static void *accept_loop(void *arg)
{
	struct rpc_server *s = arg;
	struct pollfd fds[2] = {{.fd = s->listen_fd, .events = POLLIN},
				{.fd = s->stop_fd, .events = POLLIN}};
	for (;;) {
		if (poll(fds, 2, -1) < 0 && errno != EINTR)
			break;
		if (fds[1].revents)
			break;
		if (!(fds[0].revents & POLLIN))
			continue;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0)
			grpc_server_add_channel_from_fd(s->server, fd, s->creds);
		else if (errno == EMFILE || errno == ENFILE)
			poll(NULL, 0, 100); /* let calls finish and give fds back */
	}
	return NULL;
}

int rpc_server_adopt_listener(struct rpc_server *s, int listen_fd, struct crx_err *err)
{
	s->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (s->stop_fd < 0)
		return crx_err_set(err, -errno, "cannot create an eventfd: %s", strerror(errno));
	s->listen_fd = listen_fd;
	return 0;
}

int rpc_server_start(struct rpc_server *s, struct crx_err *err)
{
	grpc_server_start(s->server);
	for (int i = 0; i < PENDING_REQUESTS; i++)
		if (request_call(s) < 0)
			return crx_err_set(err, -EIO, "cannot request calls from gRPC");
	/* one more thread than jobs: the event loop runs on the pool too */
	int r = workers_new((s->opts.workers ? s->opts.workers : DEFAULT_WORKERS) + 1, &s->workers);
	if (r < 0)
		return crx_err_set(err, r, "cannot create the worker pool");
	clock_gettime(CLOCK_MONOTONIC, &s->last_sweep);
	r = pthread_create(&s->event_thread, NULL, event_loop, s);
	if (r != 0)
		return crx_err_set(err, -r, "cannot start the event thread: %s", strerror(r));
	if (s->listen_fd >= 0 &&
	    (r = pthread_create(&s->accept_thread, NULL, accept_loop, s)) != 0) {
		s->listen_fd = -1;
		return crx_err_set(err, -r, "cannot start the accept thread: %s", strerror(r));
	}
	s->started = true;
	return 0;
}

static bool wait_until(struct rpc_server *s, bool (*done)(struct rpc_server *), unsigned ms)
{
	struct timespec until = monotonic_in(ms);
	pthread_mutex_lock(&s->lock);
	int r = 0;
	while (!done(s) && r == 0)
		r = pthread_cond_timedwait(&s->changed, &s->lock, &until);
	bool ok = done(s);
	pthread_mutex_unlock(&s->lock);
	return ok;
}

static bool no_calls(struct rpc_server *s)
{
	return s->calls == 0;
}

static bool all_done(struct rpc_server *s)
{
	return s->calls == 0 && s->shutdown_done;
}

unsigned rpc_server_shutdown(struct rpc_server *s, unsigned grace_ms)
{
	if (!s->started)
		return 0;
	if (s->listen_fd >= 0) { /* no new connections from the adopted socket */
		eventfd_write(s->stop_fd, 1);
		pthread_join(s->accept_thread, NULL);
		s->listen_fd = -1;
	}
	atomic_store(&s->stopping, true);
	grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
	unsigned cancelled = 0;
	if (!wait_until(s, no_calls, grace_ms)) {
		cancelled = rpc_server_calls_in_flight(s);
		grpc_server_cancel_all_calls(s->server);
		/* Backend calls that outlive their client's end here too. */
		pthread_mutex_lock(&s->lock);
		for (struct rpc_call *c = s->detached; c; c = c->detached_next)
			grpc_call_cancel(c->up, NULL);
		pthread_mutex_unlock(&s->lock);
	}
	/* Cancelled calls finish promptly; the bound only guards against a bug. */
	wait_until(s, all_done, 10000);
	grpc_completion_queue_shutdown(s->cq);
	pthread_join(s->event_thread, NULL);
	workers_free(s->workers);
	s->workers = NULL;
	s->started = false;
	return cancelled;
}

unsigned rpc_server_calls_in_flight(struct rpc_server *s)
{
	pthread_mutex_lock(&s->lock);
	unsigned n = s->calls;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void rpc_server_free(struct rpc_server *s)
{
	if (!s)
		return;
	if (s->started) {
		rpc_server_shutdown(s, 0);
	} else if (s->server && !atomic_load(&s->stopping)) {
		/* Never started (crimuxd gave up before serving): gRPC still
		 * wants a listener it was given shut down before the destroy. */
		grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
		grpc_event ev;
		do
			ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
							NULL);
		while (ev.type == GRPC_OP_COMPLETE && ev.tag != &s->shutdown_tag);
	}
	if (s->server)
		grpc_server_destroy(s->server);
	if (s->cq) {
		grpc_completion_queue_shutdown(s->cq);
		while (grpc_completion_queue_next(s->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL)
			       .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(s->cq);
	}
	if (s->creds)
		grpc_server_credentials_release(s->creds);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	pthread_cond_destroy(&s->changed);
	pthread_mutex_destroy(&s->lock);
	free(s->address);
	free(s);
	grpc_shutdown();
}

/* ---------------------------------------------------------------- channels */

int rpc_channel_new(const struct rpc_channel_options *opts, struct rpc_channel **out,
		    struct crx_err *err)
{
	struct rpc_channel *ch = calloc(1, sizeof(*ch));
	if (!ch || !(ch->name = strdup(opts->name)) || !(ch->target = strdup(opts->target))) {
		rpc_channel_free(ch);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	grpc_init();
	grpc_arg args[12];
	size_t n = common_args(args, opts->max_message);
	args[n++] = int_arg(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, (int)opts->max_message);
	args[n++] = int_arg(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, RECONNECT_BACKOFF_MS);
	args[n++] = int_arg(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, RECONNECT_BACKOFF_MS);
	args[n++] = int_arg(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, MAX_RECONNECT_BACKOFF_MS);
	args[n++] = (grpc_arg){.type = GRPC_ARG_STRING,
			       .key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING,
			       .value.string = (char *)PACKAGE_NAME "/" PACKAGE_VERSION};
	grpc_channel_args chargs = {.num_args = n, .args = args};
	grpc_channel_credentials *creds = grpc_insecure_credentials_create();
	ch->channel = grpc_channel_create(opts->target, creds, &chargs);
	grpc_channel_credentials_release(creds);
	if (!ch->channel) {
		rpc_channel_free(ch);
		return crx_err_set(err, -EINVAL, "backend %s: bad address %s", opts->name,
				   opts->target);
	}
	grpc_channel_check_connectivity_state(ch->channel, 1); /* connect now */
	*out = ch;
	return 0;
}

void rpc_channel_free(struct rpc_channel *ch)
{
	if (!ch)
		return;
	if (ch->channel) {
		grpc_channel_destroy(ch->channel);
		grpc_shutdown();
	}
	free(ch->name);
	free(ch->target);
	free(ch);
}

const char *rpc_channel_name(const struct rpc_channel *ch)
{
	return ch->name;
}

const char *rpc_channel_target(const struct rpc_channel *ch)
{
	return ch->target;
}

int rpc_channel_call(struct rpc_channel *ch, const char *method, const void *req, size_t len,
		     struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *res)
{
	gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	if (timeout_ms)
		deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
					gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
	grpc_slice method_slice = grpc_slice_from_static_string(method);
	grpc_call *call = grpc_channel_create_call(ch->channel, parent ? parent->call : NULL,
						   GRPC_PROPAGATE_DEFAULTS, cq, method_slice, NULL,
						   deadline, NULL);
	int r = 0;
	grpc_byte_buffer *request = byte_buffer_from(req, len), *reply = NULL;
	grpc_metadata_array md, trailers;
	grpc_metadata_array_init(&md);
	grpc_metadata_array_init(&trailers);
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_op ops[6] = {
		{.op = GRPC_OP_SEND_INITIAL_METADATA},  {.op = GRPC_OP_SEND_MESSAGE},
		{.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT}, {.op = GRPC_OP_RECV_INITIAL_METADATA},
		{.op = GRPC_OP_RECV_MESSAGE},           {.op = GRPC_OP_RECV_STATUS_ON_CLIENT},
	};
	ops[1].data.send_message.send_message = request;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &md;
	ops[4].data.recv_message.recv_message = &reply;
	ops[5].data.recv_status_on_client.trailing_metadata = &trailers;
	ops[5].data.recv_status_on_client.status = &status;
	ops[5].data.recv_status_on_client.status_details = &details;

	if (!call ||
	    grpc_call_start_batch(call, ops, ARRAY_SIZE(ops), call, NULL) != GRPC_CALL_OK) {
		r = -EIO;
	} else {
		grpc_completion_queue_pluck(cq, call, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		*res = (struct rpc_result){.code = (int)status};
		res->details = backend_details_str(ch, status, details);
		if (status == GRPC_STATUS_OK && reply)
			r = byte_buffer_flatten(reply, &res->reply);
		if (r < 0)
			rpc_result_clear(res);
	}
	if (call)
		grpc_call_unref(call);
	grpc_completion_queue_shutdown(cq);
	while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(cq);
	grpc_byte_buffer_destroy(request);
	if (reply)
		grpc_byte_buffer_destroy(reply);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&md);
	grpc_metadata_array_destroy(&trailers);
	return r;
}

/* ---------------------------------------------------------------- client streams */

struct rpc_stream {
	struct rpc_channel *channel;
	grpc_completion_queue *cq;
	grpc_call *call;
	grpc_byte_buffer *request, *msg;
	grpc_metadata_array md, trailers;
	grpc_status_code status;
	grpc_slice details;
	bool status_started, start_started, start_done, ended;
	int tag_start, tag_msg, tag_status; /* addresses used as tags */
};

static bool stream_pluck(struct rpc_stream *st, void *tag)
{
	grpc_event ev =
		grpc_completion_queue_pluck(st->cq, tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	return ev.type == GRPC_OP_COMPLETE && ev.success;
}

int rpc_stream_open(struct rpc_channel *ch, const char *method, const void *req, size_t len,
		    struct rpc_call *parent, unsigned timeout_ms, struct rpc_stream **out)
{
	struct rpc_stream *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	if (timeout_ms)
		deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
					gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	st->channel = ch;
	st->cq = grpc_completion_queue_create_for_pluck(NULL);
	grpc_metadata_array_init(&st->md);
	grpc_metadata_array_init(&st->trailers);
	st->details = grpc_empty_slice();
	st->request = byte_buffer_from(req, len);
	st->call = grpc_channel_create_call(
		ch->channel, parent ? parent->call : NULL, GRPC_PROPAGATE_DEFAULTS, st->cq,
		grpc_slice_from_static_string(method), NULL, deadline, NULL);
	grpc_op ops[4] = {
		{.op = GRPC_OP_SEND_INITIAL_METADATA},
		{.op = GRPC_OP_SEND_MESSAGE},
		{.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT},
		{.op = GRPC_OP_RECV_INITIAL_METADATA},
	};
	ops[1].data.send_message.send_message = st->request;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &st->md;
	grpc_op status = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
	status.data.recv_status_on_client.trailing_metadata = &st->trailers;
	status.data.recv_status_on_client.status = &st->status;
	status.data.recv_status_on_client.status_details = &st->details;
	if (!st->call ||
	    grpc_call_start_batch(st->call, &status, 1, &st->tag_status, NULL) != GRPC_CALL_OK) {
		rpc_stream_free(st);
		return -EIO;
	}
	st->status_started = true;
	if (grpc_call_start_batch(st->call, ops, ARRAY_SIZE(ops), &st->tag_start, NULL) !=
	    GRPC_CALL_OK) {
		rpc_stream_free(st);
		return -EIO;
	}
	/* The headers are awaited by the first rpc_stream_next(), which can be
	 * cancelled: a backend that never answers must not hold the opener. */
	st->start_started = true;
	*out = st;
	return 0;
}

static void stream_end(struct rpc_stream *st, struct rpc_result *res)
{
	if (!st->ended) {
		stream_pluck(st, &st->tag_status);
		st->ended = true;
	}
	*res = (struct rpc_result){.code = (int)st->status};
	res->details = backend_details_str(st->channel, st->status, st->details);
}

int rpc_stream_next(struct rpc_stream *st, struct rpc_buf *msg, struct rpc_result *res)
{
	if (st->ended) {
		stream_end(st, res);
		return 0;
	}
	if (st->start_started && !st->start_done) {
		st->start_done = true;
		stream_pluck(st, &st->tag_start); /* a failure shows in the status */
	}
	grpc_op recv = {.op = GRPC_OP_RECV_MESSAGE};
	recv.data.recv_message.recv_message = &st->msg;
	if (grpc_call_start_batch(st->call, &recv, 1, &st->tag_msg, NULL) != GRPC_CALL_OK)
		return -EIO;
	if (!stream_pluck(st, &st->tag_msg) || !st->msg) {
		stream_end(st, res);
		return 0;
	}
	int r = byte_buffer_flatten(st->msg, msg);
	grpc_byte_buffer_destroy(st->msg);
	st->msg = NULL;
	return r < 0 ? r : 1;
}

void rpc_stream_cancel(struct rpc_stream *st)
{
	grpc_call_cancel(st->call, NULL);
}

void rpc_stream_free(struct rpc_stream *st)
{
	if (!st)
		return;
	if (st->call) {
		if (st->status_started && !st->ended) {
			grpc_call_cancel(st->call, NULL);
			stream_pluck(st, &st->tag_status);
		}
		if (st->start_started && !st->start_done)
			stream_pluck(st, &st->tag_start);
		grpc_call_unref(st->call);
	}
	grpc_completion_queue_shutdown(st->cq);
	while (grpc_completion_queue_pluck(st->cq, NULL, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(st->cq);
	grpc_byte_buffer_destroy(st->request);
	grpc_metadata_array_destroy(&st->md);
	grpc_metadata_array_destroy(&st->trailers);
	grpc_slice_unref(st->details);
	free(st);
}
