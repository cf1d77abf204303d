/* crimux's dockershim: the CRI served on Docker Engine. The backend's state
 * and what every CRI handler of runtimes/docker/ shares; each handler file
 * declares its own calls in its own header, and dockershim.c, the backend
 * table, sits on top of them all. */
#pragma once

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "cri/api.pb-c.h"
#include "cri/rpc.h"
#include "runtimes/docker/engine/http.h"
#include "runtimes/docker/model/arena.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/spec.h"

/* Locks by key (a sandbox ID, a name): calls on the same key take turns,
 * calls on different keys never wait for one another. */
struct dk_held;
struct dk_keylocks {
	pthread_mutex_t lock; /* held only to look at the set */
	pthread_cond_t released;
	struct dk_held *held;
};
void dk_keylocks_init(struct dk_keylocks *k);
void dk_keylocks_destroy(struct dk_keylocks *k);

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
	struct dk_cgroup_cache *cgroups; /* cgroup files kept open */
	struct dk_state *state;          /* what Docker holds of our containers */
	struct stream_server *stream;    /* exec, attach and port-forward URLs */

	pthread_mutex_t lock; /* the fields below */
	char cgroup_driver[16];
	char *docker_root; /* Docker's DockerRootDir, asked with the driver */
	char *pod_cidr;
	bool recovered;     /* a recovery went through: calls wait no more */
	bool recovering;    /* an attempt is in flight */
	bool retry_now;     /* a call waits for another attempt */
	uint64_t attempts;  /* ended */
	bool pause_present; /* the sandbox image was there at the last look */
	bool closing;
	/* Checkpoints found torn or corrupt at start: [{"sandbox","error"}],
	 * reported in the verbose Status. */
	json_object *corrupt;
	pthread_cond_t wake; /* the recovery thread's, and a recovery's end */
	pthread_t recovery;
	bool recovery_started;
	pthread_mutex_t pause_lock; /* one pause image load at a time */

	/* Sandbox operations on one ID (run, stop, remove, CNI) are
	 * serialised. */
	struct dk_keylocks sandbox_locks;
	/* RunPodSandbox per sandbox name (a retry waits for the first try);
	 * separate, so a name and an ID never share a lock. */
	struct dk_keylocks name_locks;
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

/* --- shared helpers (shim.c) --- */
struct dk_spec_opts dk_spec_opts(struct dk_shim *ds, int64_t created_ns);
/* Docker's cgroup driver, asked once. */
const char *dk_cgroup_driver(struct dk_ctx *c);
/* Where Docker keeps the json-file log of container id (it is always
 * <DockerRootDir>/containers/<id>/<id>-json.log), NULL if unknown. */
char *dk_json_log_path(struct dk_ctx *c, const char *id);
void dk_sandbox_lock(struct dk_shim *ds, const char *id);
void dk_sandbox_unlock(struct dk_shim *ds, const char *id);
void dk_name_lock(struct dk_shim *ds, const char *name);
void dk_name_unlock(struct dk_shim *ds, const char *name);
/* Inspects id and checks it is one of ours of the given type
 * (DK_TYPE_SANDBOX or DK_TYPE_CONTAINER): -ENOENT otherwise. Answered
 * from the state cache when it can. */
int dk_inspect_typed(struct dk_ctx *c, const char *id, const char *type, json_object **out,
		     struct crx_err *err);
/* Our containers of one type (of one sandbox if sandbox_id), shaped as
 * Docker lists them: from the state cache when it is live (with Pid,
 * UpperDir, NetworkMode, CgroupParent too), else from Docker. */
int dk_list(struct dk_ctx *c, const char *type, const char *sandbox_id, json_object **out,
	    struct crx_err *err);
/* A list reply made of packed items (repeated field `tag`) as the state
 * cache's memos keep them: protobuf-c sends unknown fields verbatim, so a
 * reply of N unchanged containers is N copies, not N conversions. */
struct dk_packed {
	struct dk_ctx *c;
	uint32_t tag;
	ProtobufCMessageUnknownField *fields;
	size_t n, cap;
};
/* Adds one item, copied into the call's arena. */
int dk_packed_add(struct dk_packed *p, const void *data, size_t len);
/* Packs msg (a message built in the call's arena) for a memo. */
int dk_packed_make(struct dk_ctx *c, const ProtobufCMessage *msg, uint8_t **data, size_t *len);
/* Hands the items to reply (which owns them then) and empties p. */
int dk_packed_finish(struct dk_packed *p, ProtobufCMessage *reply);
void dk_packed_clear(struct dk_packed *p);

/* Docker filters for our containers of one type, plus extra label=value
 * pairs and an ID. */
/* As dk_inspect_typed, for callers that need only what never changes of
 * a container (its ID, name, labels, config). */
int dk_inspect_ident(struct dk_ctx *c, const char *id, const char *type, json_object **out,
		     struct crx_err *err);
/* Only the full ID (kept in c's arena), for calls that need no more:
 * -ENOENT when Docker has no such object of that type. */
int dk_full_id(struct dk_ctx *c, const char *id, const char *type, const char **out,
	       struct crx_err *err);
json_object *dk_filters(const char *type, const char *id, const char *label, const char *value);
/* Created time of a container: our label, else Docker's. */
int64_t dk_created_ns(json_object *labels, json_object *inspect_or_list);
