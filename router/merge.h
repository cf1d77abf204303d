/* The router's state, the fan-out of one call to every backend and how
 * their replies merge (merge.c); router.c dispatches on top of it. Private
 * to router/. */
#pragma once

#include "common/workers.h"
#include "cri/methods.h"
#include "cri/rpc.h"
#include "runtimes/backend.h"
#include "router/creates.h"
#include "router/owners.h"
#include "router/policy.h"

/* Where each method goes. */
enum route {
	ROUTE_DEFAULT, /* the default backend, unchanged */
	ROUTE_VERSION, /* crimux answers */
	ROUTE_RUN_SANDBOX,
	ROUTE_CREATE_CONTAINER,
	ROUTE_SANDBOX,     /* the owner of the pod_sandbox_id */
	ROUTE_CONTAINER,   /* the owner of the container_id */
	ROUTE_LIST,        /* every backend; replies are lists, concatenated */
	ROUTE_STREAM_LIST, /* every backend's stream, one after the other */
	ROUTE_EVENTS,      /* every backend's events, interleaved */
	ROUTE_STATUS,
	ROUTE_ALL, /* every backend must accept it (UpdateRuntimeConfig) */
	ROUTE_IMAGE_PULL,
	ROUTE_IMAGE_STATUS,
	ROUTE_IMAGE_REMOVE,
	ROUTE_IMAGE_LIST,
	ROUTE_IMAGE_STREAM,
	ROUTE_IMAGE_FS,
	ROUTE_METRIC_DESCRIPTORS,
};

/* A handler as the router uses it; the strings belong to the configuration,
 * which outlives the router. */
struct route_handler {
	const char *name;
	unsigned backend;
	const char *runtime_handler; /* the backend's name for it */
	enum crx_policy policy;
	const struct kata_policy *kata;
};

struct router {
	const struct crx_config *cfg;
	struct backend **backends;
	size_t n_backends;
	struct route_handler *handlers;
	size_t n_handlers;
	int default_handler; /* -1: no handlers; runtime_handler passes through */
	unsigned default_backend;
	bool renames;       /* a handler runs under another name on its backend */
	bool tracks_owners; /* several backends, or a policy that needs the pod's handler */
	struct rpc_channel **channels; /* every backend's, when all relay over gRPC */
	struct owners *owners;
	struct creates *creates; /* creates in flight and made, for the kubelet's retries */
	struct workers *fanout;  /* fanout_call()'s legs; never a long stream */
	struct event_hub *events;
	enum route *routes;  /* per method, by cri_method_index() */
	uint32_t *id_fields; /* field number of the ID a method names, or 0 */
};

/* Work on one backend's behalf, handed to a worker. */
struct backend_job {
	struct router *r;
	size_t backend;
};

/* Calls method on every backend at once, each on a fan-out worker, and waits
 * for all (worker threads only), but not past the client's deadline or
 * timeout_ms: a backend that has not answered by then shows as
 * DEADLINE_EXCEEDED naming it. results[i] is backend i's answer, a local
 * failure included. */
void fanout_call(struct router *r, const char *method, const struct rpc_buf *req,
		 struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *results);
void results_clear(struct router *r, struct rpc_result *results);

/* Sends the call to every backend and completes it with combine(): on the
 * event thread when every backend relays over gRPC, else on a worker. */
void fan_out(struct router *r, struct rpc_call *call, rpc_combine_fn combine, unsigned timeout_ms);

/* GetContainerEvents (events.c): one stream per backend, opened while
 * anyone subscribes and read by a thread of its own, copied to every
 * subscriber without waiting on any (no thread per subscriber). */
struct event_hub;
int event_hub_new(struct router *r, struct event_hub **out);
/* Stops the backends' streams; no subscriber may be left. */
void event_hub_free(struct event_hub *hub);
/* From dispatch(), on the event thread: completes the call eventually. */
void event_hub_subscribe(struct event_hub *hub, struct rpc_call *call);

/* The crimux handler a backend's handler name belongs to, or NULL. */
const char *router_handler_name(struct router *r, size_t backend, const char *backend_handler);

/* Rewrites runtime_handler names in a reply from `backend`, in place. */
int rename_reply(struct router *r, const struct cri_method *m, size_t backend,
		 struct rpc_buf *reply);

/* How replies merge (rpc_combine_fn; the argument is the router). */
void combine_list(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		  struct rpc_result *out, void *arg);
void combine_all(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		 struct rpc_result *out, void *arg);
void combine_status(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		    struct rpc_result *out, void *arg);
void combine_pull(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		  struct rpc_result *out, void *arg);
void combine_image_status(struct rpc_call *call, const struct rpc_result *replies, size_t n,
			  struct rpc_result *out, void *arg);
void combine_images(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		    struct rpc_result *out, void *arg);
void combine_image_fs(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		      struct rpc_result *out, void *arg);
void combine_metric_descriptors(struct rpc_call *call, const struct rpc_result *replies, size_t n,
				struct rpc_result *out, void *arg);

/* StreamImages for one backend; request: the call's own if empty. */
struct image_stream_job {
	struct router *r;
	size_t backend;
	struct rpc_buf request;
};

/* Worker bodies for what streams, or needs one backend's reply renamed. */
void serve_stream_list(struct rpc_call *call, void *arg);
void serve_image_stream(struct rpc_call *call, void *arg);
void serve_image_stream_from(struct rpc_call *call, void *arg);
void serve_image_remove(struct rpc_call *call, void *arg);
void serve_renamed(struct rpc_call *call, void *arg);
