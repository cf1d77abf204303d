/* crimux's dockershim: the CRI served on Docker Engine. Internal header of
 * runtimes/docker/: the backend's state and the handlers of each area. */
#pragma once

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "cri/api.pb-c.h"
#include "cri/rpc.h"
#include "runtimes/docker/model/arena.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/engine/http.h"
#include "runtimes/docker/model/spec.h"

#define DK_LOCKS 64

struct dk_shim {
	char *name;    /* the backend's name in crimux.conf */
	char *sock;    /* dockerd's socket path */
	char *handler; /* the RuntimeClass handler these pods report */
	char *state_dir, *checkpoint_dir, *log_state_dir;
	char *cni_conf_dir, *cni_bin_path;
	char *pause_image, *pause_binary;
	char *log_max_size;
	unsigned log_max_files;
	unsigned log_interval_ms;
	int64_t layer_ttl_ms;
	int oom_score_adj_min; /* INT_MIN: no restriction */
	uint64_t cap_bounding; /* our bounding set, when it lacks capabilities */
	bool caps_restricted;

	struct dk_logs *logs;
	struct dk_stats_cache *stats;
	struct stream_server *stream; /* exec, attach and port-forward URLs */

	pthread_mutex_t lock; /* the fields below */
	char cgroup_driver[16];
	char *pod_cidr;
	bool recovered;
	bool closing;
	pthread_cond_t wake; /* for the recovery thread */
	pthread_t recovery;
	bool recovery_started;
	pthread_mutex_t pause_lock; /* one pause image load at a time */

	/* Sandbox operations on one ID (run, stop, remove, CNI) are
	 * serialised; IDs hash onto these. */
	pthread_mutex_t sandbox_locks[DK_LOCKS];
	/* RunPodSandbox per sandbox name (a retry waits for the first try);
	 * separate, so a name and an ID never share a mutex. */
	pthread_mutex_t name_locks[DK_LOCKS];
};

/* One CRI call being answered. */
struct dk_ctx {
	struct dk_shim *ds;
	struct rpc_call *call; /* NULL for crimux's own work */
	struct dk_arena arena;
	struct dk_deadline dl;
};

typedef int (*dk_handler)(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			  struct crx_err *err);

/* --- shared helpers (dockershim.c) --- */
struct dk_spec_opts dk_spec_opts(struct dk_shim *ds, int64_t created_ns);
/* Docker's cgroup driver, asked once. */
const char *dk_cgroup_driver(struct dk_ctx *c);
void dk_sandbox_lock(struct dk_shim *ds, const char *id);
void dk_sandbox_unlock(struct dk_shim *ds, const char *id);
void dk_name_lock(struct dk_shim *ds, const char *name);
void dk_name_unlock(struct dk_shim *ds, const char *name);
/* Inspects id and checks it is one of ours of the given type
 * (DK_TYPE_SANDBOX or DK_TYPE_CONTAINER): -ENOENT otherwise. */
int dk_inspect_typed(struct dk_ctx *c, const char *id, const char *type, json_object **out,
		     struct crx_err *err);
/* Docker filters for our containers of one type, plus extra label=value
 * pairs and an ID. */
json_object *dk_filters(const char *type, const char *id, const char *label, const char *value);
/* Created time of a container: our label, else Docker's. */
int64_t dk_created_ns(json_object *labels, json_object *inspect_or_list);

/* --- runtime.c --- */
int dk_version(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_runtime_config(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
int dk_update_runtime_config(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			     struct crx_err *);

/* --- sandbox.c --- */
int dk_run_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_stop_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_remove_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			  struct crx_err *);
int dk_pod_sandbox_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			  struct crx_err *);
int dk_list_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
/* The pod's IPs (primary first) for a sandbox: as recorded in its
 * checkpoint at set-up, else read from its namespace. */
int dk_sandbox_ips(struct dk_ctx *c, json_object *inspect, const struct dk_checkpoint *cp,
		   char ***ips, size_t *n);
/* Loads the CNI configuration: 0 when a valid one exists. */
int dk_cni_ready(struct dk_shim *ds, struct crx_err *err);

/* --- container.c --- */
int dk_create_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_start_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_stop_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
int dk_remove_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_list_containers(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_container_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_update_container_resources(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
				  struct crx_err *);
int dk_reopen_container_log(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			    struct crx_err *);
int dk_exec_sync_call(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
/* Removes a container and what crimux keeps for it (log position, stats). */
int dk_remove_container_id(struct dk_ctx *c, const char *id, struct crx_err *err);
/* Starts following a container's log (after start, and at recovery). */
int dk_follow_log(struct dk_ctx *c, json_object *inspect, struct crx_err *err);
Runtime__V1__ContainerStatus *dk_container_status_msg(struct dk_ctx *c, json_object *inspect);

/* --- cstats.c --- */
int dk_container_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_list_container_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			    struct crx_err *);
int dk_pod_sandbox_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			 struct crx_err *);
int dk_list_pod_sandbox_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			      struct crx_err *);

/* --- streaming.c --- */
extern const struct stream_runtime_ops dk_stream_ops;
int dk_exec_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_attach_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_port_forward_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);

/* --- events.c --- */
struct dk_events;
int dk_events_open(struct dk_shim *ds, struct rpc_call *parent, struct dk_events **out,
		   struct crx_err *err);
/* 1 and a packed ContainerEventResponse, or 0 and how the stream ended. */
int dk_events_next(struct dk_events *e, struct rpc_buf *msg, struct rpc_result *end);
void dk_events_cancel(struct dk_events *e);
void dk_events_free(struct dk_events *e);

/* --- image.c --- */
int dk_list_images(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		   struct crx_err *);
int dk_image_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		    struct crx_err *);
int dk_pull_image(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_remove_image(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		    struct crx_err *);
int dk_image_fs_info(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		     struct crx_err *);
/* Makes sure the sandbox image is there: loaded from pause_binary when
 * configured, else pulled. */
int dk_ensure_pause_image(struct dk_ctx *c, struct crx_err *err);
