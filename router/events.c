/* GetContainerEvents for many subscribers: one stream per backend, shared.
 *
 * A subscriber costs no thread: while anyone subscribes, each backend's
 * event stream is open and read by one thread of its own (never a fan-out
 * worker), which posts every event to every subscriber without waiting
 * (rpc_call_post). The backends' streams are opened at once, so a backend
 * that is slow to answer delays nobody else's events.
 *
 * A merged stream missing one backend's events would leave the kubelet blind
 * to that backend's pods: when a backend's stream ends, every subscriber's
 * stream ends with that backend's status (UNAVAILABLE naming it when it went
 * away), and the next subscriber opens it afresh. A subscriber that falls
 * too far behind (1 MiB of events queued) is ended (RESOURCE_EXHAUSTED)
 * rather than let queue without bound or silently miss events. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/merge.h"

#define EVENTS_METHOD "/runtime.v1.RuntimeService/GetContainerEvents"
/* Events waiting for one subscriber (beyond what gRPC's flow control
 * holds) before it counts as stuck: a bound on memory per subscriber. */
#define SUBSCRIBER_QUEUE_MAX  (1024 * 1024)
#define SUBSCRIBER_QUEUE_TEXT "1 MiB"

struct subscriber {
	struct subscriber *prev, *next;
	struct event_hub *hub;
	struct rpc_call *call;
	bool listed; /* in the hub: whoever unlists it completes the call */
};

/* One backend's stream. */
struct feed {
	struct backend_stream *stream; /* while open */
	bool reading;                  /* its thread runs */
	bool stop;                     /* nobody listens: end the stream */
	bool cancelled;                /* this stream was ended by crimux */
};

struct event_hub {
	struct router *r;
	const struct cri_method *m;
	pthread_mutex_t lock;
	pthread_cond_t gone; /* a feed's thread left */
	struct subscriber *subs;
	size_t n_subs;
	struct feed *feeds;
	size_t readers;
	bool stopping;
};

static void unlist(struct event_hub *hub, struct subscriber *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		hub->subs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	s->listed = false;
	hub->n_subs--;
}

/* With nobody left to hear them, the backends' streams end (lock held). */
static void stop_feeds_if_idle(struct event_hub *hub)
{
	if (hub->n_subs && !hub->stopping)
		return;
	for (size_t i = 0; i < hub->r->n_backends; i++) {
		struct feed *f = &hub->feeds[i];
		if (!f->reading || f->stop)
			continue;
		f->stop = true;
		if (f->stream) {
			hub->r->backends[i]->ops->stream_cancel(f->stream);
			f->cancelled = true;
		}
	}
}

/* Ends every subscriber's stream (lock held). */
static void finish_all(struct event_hub *hub, int code, const char *details)
{
	while (hub->subs) {
		struct subscriber *s = hub->subs;
		unlist(hub, s);
		rpc_call_finish(s->call, code, details);
	}
	stop_feeds_if_idle(hub);
}

/* Copies one event to every subscriber (lock held). */
static void deliver(struct event_hub *hub, const struct rpc_buf *msg)
{
	for (struct subscriber *s = hub->subs, *next; s; s = next) {
		next = s->next;
		int ret = rpc_call_post(s->call, msg->data, msg->len, SUBSCRIBER_QUEUE_MAX);
		if (ret == -ENOBUFS || ret == -ENOMEM) {
			unlist(hub, s);
			rpc_call_finish(s->call, RPC_RESOURCE_EXHAUSTED,
					"the subscriber fell more than " SUBSCRIBER_QUEUE_TEXT
					" of events behind");
		} /* -ECANCELED: it has gone; its close unlists it */
	}
	stop_feeds_if_idle(hub);
}

struct feed_arg {
	struct event_hub *hub;
	size_t backend;
};

/* One backend's stream, opened whenever someone subscribes, until the hub
 * stops. */
static void *feed_main(void *arg)
{
	struct feed_arg fa = *(struct feed_arg *)arg;
	free(arg);
	struct event_hub *hub = fa.hub;
	struct router *r = hub->r;
	struct backend *b = r->backends[fa.backend];
	struct feed *f = &hub->feeds[fa.backend];
	struct rpc_buf req = {0}; /* GetContainerEventsRequest has no fields */
	pthread_mutex_lock(&hub->lock);
	while (hub->n_subs && !hub->stopping) {
		f->stop = f->cancelled = false;
		pthread_mutex_unlock(&hub->lock);
		struct backend_stream *s = NULL;
		struct rpc_result end = {0};
		struct rpc_buf msg = {0};
		int ret = b->ops->stream_open(b, EVENTS_METHOD, &req, NULL, &s);
		pthread_mutex_lock(&hub->lock);
		f->stream = s;
		if (s && (f->stop || hub->stopping)) {
			b->ops->stream_cancel(s);
			f->cancelled = true;
		}
		pthread_mutex_unlock(&hub->lock);
		while (ret >= 0 && (ret = b->ops->stream_next(s, &msg, &end)) > 0) {
			if (r->renames)
				rename_reply(r, hub->m, fa.backend, &msg);
			pthread_mutex_lock(&hub->lock);
			deliver(hub, &msg);
			pthread_mutex_unlock(&hub->lock);
			rpc_buf_clear(&msg);
		}
		pthread_mutex_lock(&hub->lock);
		f->stream = NULL;
		if (!f->cancelled && !hub->stopping) { /* the backend ended it */
			_cleanup_free_ char *details = NULL;
			int code = ret < 0 ? (int)rpc_code_from_errno(ret) : end.code;
			if (code == RPC_OK || code == RPC_CANCELLED)
				code = RPC_UNAVAILABLE; /* an event stream has no natural end */
			const char *why = ret < 0       ? strerror(-ret)
					  : end.details ? end.details
							: "the event stream ended";
			size_t n = strlen(b->name);
			bool named = strncmp(why, "backend ", 8) == 0 &&
				     strncmp(why + 8, b->name, n) == 0;
			if (named) /* crimux's own words for an unreachable backend */
				details = strdup(why);
			else if (asprintf(&details, "backend %s: %s", b->name, why) < 0)
				details = NULL;
			finish_all(hub, code, details);
		}
		pthread_mutex_unlock(&hub->lock);
		rpc_result_clear(&end);
		if (s)
			b->ops->stream_free(s);
		pthread_mutex_lock(&hub->lock);
	}
	f->reading = false;
	hub->readers--;
	pthread_cond_broadcast(&hub->gone);
	pthread_mutex_unlock(&hub->lock);
	return NULL;
}

/* Starts the threads of the backends' streams not yet running (lock held). */
static int start_feeds(struct event_hub *hub)
{
	for (size_t i = 0; i < hub->r->n_backends; i++) {
		struct feed *f = &hub->feeds[i];
		if (f->reading) {
			f->stop = false; /* a stream winding down is opened again */
			continue;
		}
		struct feed_arg *fa = malloc(sizeof(*fa));
		if (!fa)
			return -ENOMEM;
		*fa = (struct feed_arg){hub, i};
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_t t;
		int ret = pthread_create(&t, &attr, feed_main, fa);
		pthread_attr_destroy(&attr);
		if (ret != 0) {
			free(fa);
			return -ret;
		}
		f->reading = true;
		hub->readers++;
	}
	return 0;
}

/* The client left, or its call is complete: on the event thread, once. */
static void subscriber_closed(void *arg)
{
	struct subscriber *s = arg;
	struct event_hub *hub = s->hub;
	pthread_mutex_lock(&hub->lock);
	if (s->listed) {
		unlist(hub, s);
		rpc_call_finish(s->call, RPC_CANCELLED, NULL);
		stop_feeds_if_idle(hub);
	}
	pthread_mutex_unlock(&hub->lock);
	free(s);
}

void event_hub_subscribe(struct event_hub *hub, struct rpc_call *call)
{
	/* The request has no fields, but bytes that are no GetEventsRequest
	 * are a client's mistake, not a subscription. */
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__GetEventsRequest *req =
		runtime__v1__get_events_request__unpack(NULL, len, data);
	if (!req) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT,
			      "GetContainerEvents: the request cannot be decoded");
		return;
	}
	runtime__v1__get_events_request__free_unpacked(req, NULL);
	struct subscriber *s = calloc(1, sizeof(*s));
	if (!s) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	*s = (struct subscriber){.hub = hub, .call = call, .listed = true};
	pthread_mutex_lock(&hub->lock);
	int ret = hub->stopping ? -ESHUTDOWN : start_feeds(hub);
	if (ret < 0) {
		pthread_mutex_unlock(&hub->lock);
		free(s);
		rpc_call_fail(call, rpc_code_from_errno(ret),
			      "cannot follow the backends' events: %s", strerror(-ret));
		return;
	}
	s->next = hub->subs;
	if (hub->subs)
		hub->subs->prev = s;
	hub->subs = s;
	hub->n_subs++;
	/* Headers now: a client that has them knows it hears every event from
	 * here on. */
	rpc_call_post_headers(call);
	pthread_mutex_unlock(&hub->lock);
	rpc_call_on_close(call, subscriber_closed, s);
}

int event_hub_new(struct router *r, struct event_hub **out)
{
	struct event_hub *hub = calloc(1, sizeof(*hub));
	if (!hub ||
	    !(hub->feeds = calloc(r->n_backends ? r->n_backends : 1, sizeof(*hub->feeds)))) {
		free(hub);
		return -ENOMEM;
	}
	hub->r = r;
	hub->m = cri_method_find(EVENTS_METHOD);
	pthread_mutex_init(&hub->lock, NULL);
	pthread_cond_init(&hub->gone, NULL);
	*out = hub;
	return 0;
}

void event_hub_free(struct event_hub *hub)
{
	if (!hub)
		return;
	pthread_mutex_lock(&hub->lock);
	hub->stopping = true;
	finish_all(hub, RPC_UNAVAILABLE, "crimux is stopping");
	while (hub->readers)
		pthread_cond_wait(&hub->gone, &hub->lock);
	pthread_mutex_unlock(&hub->lock);
	pthread_cond_destroy(&hub->gone);
	pthread_mutex_destroy(&hub->lock);
	free(hub->feeds);
	free(hub);
}
