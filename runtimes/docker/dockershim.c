/* The "docker" backend type: crimux answers the CRI itself for pods on
 * Docker Engine. serve() runs on gRPC's event thread, so every call is
 * deferred to a worker, where its request is decoded with the method's
 * descriptor, handled, and the reply packed and sent. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/status.h"
#include "stream/stream.h"
#include "runtimes/backend.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/cgcache.h"
#include "runtimes/docker/model/logs.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/state.h"
#include "runtimes/docker/model/stats.h"
#include "runtimes/docker/shim.h"
#include "runtimes/docker/container.h"
#include "runtimes/docker/cstats.h"
#include "runtimes/docker/events.h"
#include "runtimes/docker/image.h"
#include "runtimes/docker/runtime.h"
#include "runtimes/docker/sandbox.h"
#include "runtimes/docker/streaming.h"

#define DEFAULT_STATE_DIR    "/var/lib/crimux/docker"
#define DEFAULT_CNI_CONF_DIR "/etc/cni/net.d"
#define DEFAULT_CNI_BIN_PATH "/opt/cni/bin:/usr/lib/cni"
#define DEFAULT_PAUSE_IMAGE  "registry.k8s.io/pause:3.9"
#define DEFAULT_HANDLER      "docker"

static void *recovery_thread(void *arg);

/* --- configuration --- */

/* "10", "2.5s", "500ms" → milliseconds. */
static int parse_ms(const char *value, int64_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(value, &end);
	if (errno || end == value || v < 0)
		return -EINVAL;
	if (streq(end, "ms"))
		v /= 1000;
	else if (streq(end, "m") || streq(end, "min"))
		v *= 60;
	else if (*end && !streq(end, "s"))
		return -EINVAL;
	if (v > 7 * 24 * 3600)
		return -ERANGE;
	*out = (int64_t)(v * 1000 + 0.5);
	return 0;
}

/* Docker's json-file max-size: a number with an optional k, m or g. */
static bool valid_size(const char *v)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || end == v || n == 0)
		return false;
	return !*end || ((strchr("kmgKMG", *end) && !end[1]));
}

static const char *const keys[] = {
	"state_dir",
	"cni_conf_dir",
	"cni_bin_dir",
	"pause_image",
	"pause_binary",
	"runtime_handler",
	"log_max_size",
	"log_max_files",
	"log_poll_interval",
	"stats_layer_ttl",
	"restrict_oom_score_adj",
	"stream_address",
	"state_reconcile_interval",
};

static int check_option(const char *key, const char *value, struct crx_err *err)
{
	int64_t ms;
	if (streq(key, "state_dir") || streq(key, "cni_conf_dir") || streq(key, "pause_binary")) {
		if (value[0] != '/')
			return crx_err_set(err, -EINVAL, "must be an absolute path, not \"%s\"",
					   value);
		return 0;
	}
	if (streq(key, "cni_bin_dir")) {
		if (value[0] != '/')
			return crx_err_set(err, -EINVAL,
					   "must be absolute paths separated by ':', not \"%s\"",
					   value);
		return 0;
	}
	if (streq(key, "pause_image")) {
		if (!*value || strchr(value, ' '))
			return crx_err_set(err, -EINVAL, "\"%s\" is not an image reference", value);
		return 0;
	}
	if (streq(key, "runtime_handler"))
		return *value ? 0 : crx_err_set(err, -EINVAL, "must not be empty");
	if (streq(key, "log_max_size"))
		return valid_size(value)
			       ? 0
			       : crx_err_set(err, -EINVAL, "\"%s\" is not a size like 10m or 512k",
					     value);
	if (streq(key, "log_max_files")) {
		char *end;
		long n = strtol(value, &end, 10);
		if (*end || end == value || n < 1 || n > 9)
			return crx_err_set(err, -EINVAL, "\"%s\" is not a number from 1 to 9",
					   value);
		return 0;
	}
	if (streq(key, "log_poll_interval") || streq(key, "stats_layer_ttl") ||
	    streq(key, "state_reconcile_interval")) {
		if (parse_ms(value, &ms) < 0 ||
		    (streq(key, "log_poll_interval") && (ms < 10 || ms > 10000)) ||
		    (streq(key, "state_reconcile_interval") && (ms < 100 || ms > 86400000)))
			return crx_err_set(err, -EINVAL,
					   "\"%s\" is not a duration like 100ms or 60s", value);
		return 0;
	}
	if (streq(key, "stream_address")) {
		/* IP:PORT or [IPv6]:PORT; the server checks it when it binds. */
		const char *colon = strrchr(value, ':');
		if (!colon || colon == value || !colon[1])
			return crx_err_set(err, -EINVAL, "\"%s\" is not IP:PORT or [IPv6]:PORT",
					   value);
		return 0;
	}
	if (streq(key, "restrict_oom_score_adj")) {
		if (!streq(value, "auto") && !streq(value, "true") && !streq(value, "false"))
			return crx_err_set(err, -EINVAL, "\"%s\" is not auto, true or false",
					   value);
		return 0;
	}
	char known[512] = "";
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s",
			 i ? ", " : "", keys[i]);
	return crx_err_set(err, -EINVAL, "unknown key (docker backends know: %s)", known);
}

static int set(char **field, const char *value, const char *def)
{
	*field = strdup(value ? value : def);
	return *field ? 0 : -ENOMEM;
}

/* The lowest oom_score_adj this kernel lets a process set: a child tries
 * -1000; if that is refused, nothing below our own value is allowed (what
 * containerd's restrict_oom_score_adj assumes). */
static int own_oom_score_adj(void)
{
	int own = 0;
	_cleanup_fclose_ FILE *f = fopen("/proc/self/oom_score_adj", "re");
	if (!f || fscanf(f, "%d", &own) != 1)
		own = 0;
	return own;
}

static int probe_oom_min(void)
{
	int own = own_oom_score_adj();
	pid_t pid = fork();
	if (pid == 0) {
		/* Only async-signal-safe calls between fork and _exit. */
		int fd = open("/proc/self/oom_score_adj", O_WRONLY);
		_exit(fd >= 0 && write(fd, "-1000", 5) == 5 ? 0 : 1);
	}
	int status = 1;
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return own;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? INT_MIN : own;
}

/* Whether this process's bounding set lacks capabilities the kernel knows
 * (then Docker's privileged mode, asking for all, cannot work). */
static bool restricted_caps(uint64_t *set)
{
	unsigned last = 40;
	_cleanup_fclose_ FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
	if (f && fscanf(f, "%u", &last) != 1)
		last = 40;
	_cleanup_fclose_ FILE *st = fopen("/proc/self/status", "re");
	char line[256];
	unsigned long long bnd = 0;
	bool found = false;
	while (st && fgets(line, sizeof(line), st))
		if (sscanf(line, "CapBnd: %llx", &bnd) == 1)
			found = true;
	uint64_t all = last >= 63 ? UINT64_MAX : (1ULL << (last + 1)) - 1;
	*set = bnd;
	return found && (bnd & all) != all;
}

static void shim_free(struct dk_shim *ds)
{
	if (!ds)
		return;
	if (ds->recovery_started) {
		pthread_mutex_lock(&ds->lock);
		ds->closing = true;
		pthread_cond_broadcast(&ds->wake);
		pthread_mutex_unlock(&ds->lock);
		pthread_join(ds->recovery, NULL);
	}
	dk_state_free(ds->state);
	stream_server_free(ds->stream);
	dk_logs_free(ds->logs);
	if (ds->corrupt)
		json_object_put(ds->corrupt);
	dk_stats_cache_free(ds->stats);
	dk_cgroup_cache_free(ds->cgroups);
	free(ds->name);
	free(ds->sock);
	free(ds->handler);
	free(ds->state_dir);
	free(ds->checkpoint_dir);
	free(ds->log_state_dir);
	free(ds->cni_conf_dir);
	free(ds->cni_bin_path);
	free(ds->pause_image);
	free(ds->pause_binary);
	free(ds->log_max_size);
	free(ds->pod_cidr);
	free(ds->docker_root);
	pthread_cond_destroy(&ds->wake);
	pthread_mutex_destroy(&ds->lock);
	pthread_mutex_destroy(&ds->pause_lock);
	dk_keylocks_destroy(&ds->sandbox_locks);
	dk_keylocks_destroy(&ds->name_locks);
	free(ds);
}

static int shim_open(struct backend *b, const struct crx_backend_config *cfg, struct crx_err *err)
{
	if (!cfg->endpoint || strncmp(cfg->endpoint, "unix://", 7) != 0)
		return crx_err_set(err, -EINVAL, "backend %s: endpoint must be unix:///path",
				   cfg->name);
	struct dk_shim *ds = calloc(1, sizeof(*ds));
	if (!ds)
		return crx_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&ds->lock, NULL);
	pthread_mutex_init(&ds->pause_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ds->wake, &ca);
	pthread_condattr_destroy(&ca);
	dk_keylocks_init(&ds->sandbox_locks);
	dk_keylocks_init(&ds->name_locks);

	const char *opt_ttl = crx_backend_option(cfg, "stats_layer_ttl");
	const char *opt_reconcile = crx_backend_option(cfg, "state_reconcile_interval");
	const char *opt_poll = crx_backend_option(cfg, "log_poll_interval");
	const char *opt_files = crx_backend_option(cfg, "log_max_files");
	const char *opt_oom = crx_backend_option(cfg, "restrict_oom_score_adj");
	const char *pause_binary = crx_backend_option(cfg, "pause_binary");
	int r = set(&ds->name, cfg->name, "");
	r |= set(&ds->sock, cfg->endpoint + 7, "");
	r |= set(&ds->handler, crx_backend_option(cfg, "runtime_handler"), DEFAULT_HANDLER);
	r |= set(&ds->state_dir, crx_backend_option(cfg, "state_dir"), DEFAULT_STATE_DIR);
	r |= set(&ds->cni_conf_dir, crx_backend_option(cfg, "cni_conf_dir"), DEFAULT_CNI_CONF_DIR);
	r |= set(&ds->cni_bin_path, crx_backend_option(cfg, "cni_bin_dir"), DEFAULT_CNI_BIN_PATH);
	/* crimux's own image when it can make it, else the usual pause. */
	r |= set(&ds->pause_image, crx_backend_option(cfg, "pause_image"),
		 pause_binary ? "crimux/pause:" PACKAGE_VERSION : DEFAULT_PAUSE_IMAGE);
	if (pause_binary)
		r |= set(&ds->pause_binary, pause_binary, "");
	r |= set(&ds->log_max_size, crx_backend_option(cfg, "log_max_size"), "10m");
	if (r || asprintf(&ds->checkpoint_dir, "%s/sandboxes", ds->state_dir) < 0 ||
	    asprintf(&ds->log_state_dir, "%s/logs", ds->state_dir) < 0) {
		shim_free(ds);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	ds->log_max_files = opt_files ? (unsigned)atoi(opt_files) : 3;
	int64_t ms = 100;
	if (opt_poll)
		parse_ms(opt_poll, &ms);
	ds->log_interval_ms = (unsigned)ms;
	ds->layer_ttl_ms = 60000;
	if (opt_ttl)
		parse_ms(opt_ttl, &ds->layer_ttl_ms);
	int64_t reconcile_ms = 0; /* the cache's default */
	if (opt_reconcile)
		parse_ms(opt_reconcile, &reconcile_ms);
	if (!opt_oom || streq(opt_oom, "auto"))
		ds->oom_score_adj_min = probe_oom_min();
	else if (streq(opt_oom, "true"))
		ds->oom_score_adj_min = own_oom_score_adj();
	else
		ds->oom_score_adj_min = INT_MIN;

	ds->caps_restricted = restricted_caps(&ds->cap_bounding);

	r = dk_mkdir_p(ds->checkpoint_dir, 0700);
	if (r < 0) {
		crx_err_set(err, r, "backend %s: cannot create %s: %s", cfg->name,
			    ds->checkpoint_dir, strerror(-r));
		shim_free(ds);
		return r;
	}
	r = dk_logs_new(ds->log_state_dir, ds->log_interval_ms, &ds->logs, err);
	if (r == 0) {
		/* Loopback unless the admin says otherwise. */
		struct stream_server_options so = {
			.address = crx_backend_option(cfg, "stream_address"),
			.ops = &dk_stream_ops,
			.userdata = ds,
		};
		r = stream_server_new(&so, &ds->stream, err);
	}
	if (r == 0 && (dk_stats_cache_new(&ds->stats) < 0 || dk_cgroup_cache_new(&ds->cgroups) < 0))
		r = crx_err_set(err, -ENOMEM, "out of memory");
	if (r == 0)
		r = dk_state_new(ds->sock, ds->checkpoint_dir, (unsigned)reconcile_ms, &ds->state,
				 err);
	if (r == 0)
		r = dk_state_start(ds->state, err);
	if (r < 0) {
		shim_free(ds);
		return crx_err_prefix(err, "backend %s", cfg->name);
	}
	/* dockerd need not be up yet: what survived a restart is picked up
	 * as soon as it answers, by a thread of its own or the first call. */
	int e = pthread_create(&ds->recovery, NULL, recovery_thread, ds);
	if (e) {
		shim_free(ds);
		return crx_err_set(err, -e, "backend %s: cannot start a thread: %s", cfg->name,
				   strerror(e));
	}
	ds->recovery_started = true;
	b->priv = ds;
	return 0;
}

static void shim_close(struct backend *b)
{
	shim_free(b->priv);
}

static bool shim_closing(void *arg)
{
	struct dk_shim *ds = arg;
	pthread_mutex_lock(&ds->lock);
	bool closing = ds->closing;
	pthread_mutex_unlock(&ds->lock);
	return closing;
}

/* After a crimuxd restart: distrust torn checkpoints (the others are read
 * when used) and follow the logs of every container again. Each Docker
 * request has a deadline of its own, so a node with many containers still
 * recovers. < 0: dockerd did not answer; 1: it did, but not about every
 * container, which is left for another try; 0: all done. */
static int recover_now(struct dk_ctx *c)
{
	struct dk_shim *ds = c->ds;
	const struct dk_deadline base = c->dl;
	_cleanup_json_ json_object *filters = dk_filters(DK_TYPE_CONTAINER, NULL, NULL, NULL);
	_cleanup_json_ json_object *list = NULL;
	c->dl = dk_deadline_in(&base, 10000);
	if (!filters || dk_container_list(ds->sock, filters, &c->dl, &list, NULL) < 0)
		return -EAGAIN;
	bool done = dk_sandbox_recover_checkpoints(c, &base) == 0;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *e = json_object_array_get_idx(list, i);
		const char *id = dk_json_str(e, "Id");
		const char *state = dk_json_str(e, "State");
		if (!id || streq(state, "created"))
			continue;
		_cleanup_free_ char *dir = NULL, *rel = NULL;
		if (dk_logs_location(ds->logs, id, dk_json_get(e, "Labels", NULL), &dir, &rel) < 0)
			continue; /* logs nowhere */
		_cleanup_json_ json_object *inspect = NULL;
		c->dl = dk_deadline_in(&base, 10000);
		int r = dk_container_inspect(ds->sock, id, &c->dl, &inspect, NULL);
		if (r == 0)
			dk_follow_log(c, inspect, NULL); /* following twice is harmless */
		else if (r != -ENOENT)
			done = false;
	}
	return done ? 0 : 1;
}

/* The recovery thread alone recovers, so a call never sees one half done
 * and none is cut short by a call's deadline or cancellation. Until
 * dockerd answers it tries every second, or at once when a call asks.
 * What one pass could not do (a container dockerd did not answer about)
 * is tried again, after 1, 2, 4 ... 60 s, while calls no longer wait. */
static void *recovery_thread(void *arg)
{
	struct dk_shim *ds = arg;
	unsigned backoff_s = 1;
	pthread_mutex_lock(&ds->lock);
	while (!ds->closing) {
		ds->recovering = true;
		pthread_mutex_unlock(&ds->lock);
		struct dk_ctx c = {.ds = ds, .dl = {.cancelled = shim_closing, .arg = ds}};
		int r = recover_now(&c);
		dk_arena_clear(&c.arena);
		pthread_mutex_lock(&ds->lock);
		ds->recovering = false;
		ds->recovered |= r >= 0;
		ds->attempts++;
		pthread_cond_broadcast(&ds->wake);
		if (r == 0 || ds->closing)
			break;
		unsigned wait_s = r < 0 ? 1 : backoff_s;
		if (r > 0 && backoff_s < 60)
			backoff_s = backoff_s * 2 > 60 ? 60 : backoff_s * 2;
		if (!ds->retry_now) {
			struct timespec ts = monotonic_in(wait_s * 1000);
			pthread_cond_timedwait(&ds->wake, &ds->lock, &ts);
		}
		ds->retry_now = false;
	}
	pthread_mutex_unlock(&ds->lock);
	return NULL;
}

static bool given_up(const struct dk_ctx *c)
{
	return (c->dl.at_ms && dk_now_ms() >= c->dl.at_ms) ||
	       (c->dl.cancelled && c->dl.cancelled(c->dl.arg));
}

/* Until a recovery succeeded, a call waits for the end of the attempt in
 * flight, or of one it asks for, each until its own deadline: it then
 * goes on, and a dockerd that is not there fails it quickly. */
static void await_recovery(struct dk_ctx *c)
{
	struct dk_shim *ds = c->ds;
	pthread_mutex_lock(&ds->lock);
	uint64_t seen = ds->attempts;
	if (!ds->recovered && !ds->recovering) {
		ds->retry_now = true;
		pthread_cond_broadcast(&ds->wake);
	}
	while (!ds->recovered && ds->attempts == seen && !ds->closing && !given_up(c)) {
		struct timespec ts = monotonic_in(50); /* a look at the call's cancellation */
		pthread_cond_timedwait(&ds->wake, &ds->lock, &ts);
	}
	pthread_mutex_unlock(&ds->lock);
}

/* --- dispatch --- */

/* Metrics are optional in the CRI: none are offered, so empty answers. */
static int list_metric_descriptors(struct dk_ctx *c, const ProtobufCMessage *req,
				   ProtobufCMessage **resp, struct crx_err *err)
{
	*resp = dk_msg_new(&c->arena, &runtime__v1__list_metric_descriptors_response__descriptor);
	return *resp ? 0 : -ENOMEM;
}

static int list_pod_sandbox_metrics(struct dk_ctx *c, const ProtobufCMessage *req,
				    ProtobufCMessage **resp, struct crx_err *err)
{
	*resp = dk_msg_new(&c->arena, &runtime__v1__list_pod_sandbox_metrics_response__descriptor);
	return *resp ? 0 : -ENOMEM;
}

/* The Stream* methods carry the same fields, with the same numbers, as
 * their List* twins: a List answer is a valid single-batch stream. */
static const struct handler {
	const char *name;
	dk_handler fn;
	const ProtobufCMessageDescriptor *request; /* NULL: the method's own */
} handlers[] = {
	{"Version", dk_version, NULL},
	{"Status", dk_status, NULL},
	{"RuntimeConfig", dk_runtime_config, NULL},
	{"UpdateRuntimeConfig", dk_update_runtime_config, NULL},
	{"RunPodSandbox", dk_run_pod_sandbox, NULL},
	{"StopPodSandbox", dk_stop_pod_sandbox, NULL},
	{"RemovePodSandbox", dk_remove_pod_sandbox, NULL},
	{"PodSandboxStatus", dk_pod_sandbox_status, NULL},
	{"ListPodSandbox", dk_list_pod_sandbox, NULL},
	{"CreateContainer", dk_create_container, NULL},
	{"StartContainer", dk_start_container, NULL},
	{"StopContainer", dk_stop_container, NULL},
	{"RemoveContainer", dk_remove_container, NULL},
	{"ListContainers", dk_list_containers, NULL},
	{"ContainerStatus", dk_container_status, NULL},
	{"UpdateContainerResources", dk_update_container_resources, NULL},
	{"ReopenContainerLog", dk_reopen_container_log, NULL},
	{"ExecSync", dk_exec_sync_call, NULL},
	{"Exec", dk_exec_url, NULL},
	{"Attach", dk_attach_url, NULL},
	{"PortForward", dk_port_forward_url, NULL},
	{"ContainerStats", dk_container_stats, NULL},
	{"ListContainerStats", dk_list_container_stats, NULL},
	{"PodSandboxStats", dk_pod_sandbox_stats, NULL},
	{"ListPodSandboxStats", dk_list_pod_sandbox_stats, NULL},
	{"ListMetricDescriptors", list_metric_descriptors, NULL},
	{"ListPodSandboxMetrics", list_pod_sandbox_metrics, NULL},
	{"ListImages", dk_list_images, NULL},
	{"ImageStatus", dk_image_status, NULL},
	{"PullImage", dk_pull_image, NULL},
	{"RemoveImage", dk_remove_image, NULL},
	{"ImageFsInfo", dk_image_fs_info, NULL},
	{"StreamPodSandboxes", dk_list_pod_sandbox,
	 &runtime__v1__list_pod_sandbox_request__descriptor},
	{"StreamContainers", dk_list_containers, &runtime__v1__list_containers_request__descriptor},
	{"StreamContainerStats", dk_list_container_stats,
	 &runtime__v1__list_container_stats_request__descriptor},
	{"StreamPodSandboxStats", dk_list_pod_sandbox_stats,
	 &runtime__v1__list_pod_sandbox_stats_request__descriptor},
	{"StreamImages", dk_list_images, &runtime__v1__list_images_request__descriptor},
	{"StreamPodSandboxMetrics", list_pod_sandbox_metrics,
	 &runtime__v1__list_pod_sandbox_metrics_request__descriptor},
};

static const struct handler *find_handler(const struct cri_method *m)
{
	for (size_t i = 0; m && i < ARRAY_SIZE(handlers); i++)
		if (streq(handlers[i].name, m->name))
			return &handlers[i];
	return NULL;
}

/* Why a method has no handler, as a status. */
static void unimplemented(const struct cri_method *m, const char *path, struct rpc_result *res)
{
	res->code = RPC_UNIMPLEMENTED;
	int n;
	if (!m)
		n = asprintf(&res->details, "%s is not a CRI v1 method the docker backend knows",
			     path ? path : "(none)");
	else
		n = asprintf(&res->details, "%s is not implemented for docker pods", m->name);
	if (n < 0)
		res->details = NULL;
}

static bool call_cancelled(void *arg)
{
	return rpc_call_cancelled(arg);
}

/* Decodes, handles and packs one call; the outcome as a result. */
/* detach_ms: the work goes on when the client gives up, for the client's
 * deadline but at least that long (creates a retry may come for).
 * engine_ns, if set, gets the time the call's Docker Engine calls took. */
static void run_method(struct dk_shim *ds, const struct handler *h, const struct cri_method *m,
		       const uint8_t *data, size_t len, struct rpc_call *parent,
		       unsigned timeout_ms, unsigned detach_ms, struct rpc_result *res,
		       _Atomic uint64_t *engine_ns)
{
	*res = (struct rpc_result){0};
	struct dk_ctx c = {.ds = ds, .call = parent};
	if (parent) {
		int64_t left = rpc_call_time_left_ms(parent);
		if (!detach_ms) {
			c.dl.cancelled = call_cancelled;
			c.dl.arg = parent;
		} else if (left >= 0 && left < (int64_t)detach_ms) {
			left = detach_ms;
		}
		if (left >= 0)
			c.dl.at_ms = dk_now_ms() + left;
	}
	c.dl = dk_deadline_in(&c.dl, timeout_ms);
	c.dl.engine_ns = engine_ns;

	ProtobufCMessage *req =
		protobuf_c_message_unpack(h->request ? h->request : m->request, NULL, len, data);
	if (!req) {
		res->code = RPC_INVALID_ARGUMENT;
		if (asprintf(&res->details, "cannot decode the %s request", m->name) < 0)
			res->details = NULL;
		return;
	}
	await_recovery(&c);
	struct crx_err err = {0};
	ProtobufCMessage *resp = NULL;
	int r = h->fn(&c, req, &resp, &err);
	if (r == 0 && (!resp || c.arena.failed))
		r = crx_err_set(&err, -ENOMEM, "out of memory");
	if (r == 0 && dk_pack(resp, &res->reply.data, &res->reply.len) < 0)
		r = crx_err_set(&err, -ENOMEM, "out of memory");
	if (r < 0) {
		if (!err.code)
			crx_err_set(&err, r, "%s failed: %s", m->name, strerror(-r));
		res->code = rpc_code_from_errno(err.code);
		/* dockerd out of reach: say which backend, as for a relayed one */
		if (res->code == RPC_UNAVAILABLE || res->code == RPC_DEADLINE_EXCEEDED) {
			if (asprintf(&res->details, "backend %s: %s", ds->name, err.msg) < 0)
				res->details = NULL;
		} else {
			res->details = strdup(err.msg);
		}
	}
	protobuf_c_message_free_unpacked(req, NULL);
	dk_arena_clear(&c.arena);
}

struct job {
	struct dk_shim *ds;
	const struct cri_method *m;
	const struct handler *h;
	struct rpc_buf request; /* a replacement request, owned */
	bool replaced;
	void (*observe)(int code, const uint8_t *reply, size_t len, void *arg);
	void *observe_arg;
	unsigned detach_ms;
};

static void run_job(struct rpc_call *call, void *arg)
{
	struct job *j = arg;
	const uint8_t *data;
	size_t len;
	if (j->replaced) {
		data = j->request.data;
		len = j->request.len;
	} else {
		data = rpc_call_request(call, &len);
	}
	struct rpc_result res;
	_Atomic uint64_t engine_ns = 0;
	run_method(j->ds, j->h, j->m, data, len, call, 0, j->detach_ms, &res, &engine_ns);
	rpc_call_engine_time(call, atomic_load(&engine_ns));
	if (j->observe)
		j->observe(res.code, j->m->server_streaming ? NULL : res.reply.data,
			   j->m->server_streaming ? 0 : res.reply.len, j->observe_arg);
	if (j->m->server_streaming) {
		/* One batch, then the end of the stream. */
		if (res.code == RPC_OK && rpc_call_send(call, res.reply.data, res.reply.len) < 0)
			rpc_call_finish(call, RPC_CANCELLED, NULL);
		else
			rpc_call_finish(call, res.code, res.details);
	} else if (res.code == RPC_OK) {
		rpc_call_reply(call, res.reply.data, res.reply.len);
	} else {
		rpc_call_fail(call, res.code, "%s",
			      res.details ? res.details : rpc_code_name(res.code));
	}
	rpc_result_clear(&res);
	free(j->request.data);
	free(j);
}

static void shim_serve(struct backend *b, struct rpc_call *call, const struct cri_method *m,
		       const struct backend_serve *how)
{
	struct dk_shim *ds = b->priv;
	/* GetContainerEvents never comes here: the router's event hub reads
	 * this backend's stream (stream_open), one for every subscriber. */
	const struct handler *h = find_handler(m);
	if (!h) {
		struct rpc_result res = {0};
		unimplemented(m, rpc_call_method(call), &res);
		if (how && how->observe)
			how->observe(res.code, NULL, 0, how->observe_arg);
		rpc_call_fail(call, res.code, "%s", res.details ? res.details : "unimplemented");
		rpc_result_clear(&res);
		return;
	}
	struct job *j = calloc(1, sizeof(*j));
	if (!j) {
		if (how && how->observe) /* it hears of every call, once */
			how->observe(RPC_RESOURCE_EXHAUSTED, NULL, 0, how->observe_arg);
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	*j = (struct job){.ds = ds, .m = m, .h = h};
	if (how) {
		j->observe = how->observe;
		j->observe_arg = how->observe_arg;
		j->detach_ms = how->detach_ms;
	}
	if (how && how->request) {
		j->replaced = true;
		j->request.len = how->request->len;
		j->request.data = malloc(how->request->len ? how->request->len : 1);
		if (!j->request.data) {
			if (j->observe)
				j->observe(RPC_RESOURCE_EXHAUSTED, NULL, 0, j->observe_arg);
			free(j);
			rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
			return;
		}
		memcpy(j->request.data, how->request->data, how->request->len);
	}
	if (rpc_call_defer(call, run_job, j) < 0) { /* the call has failed already */
		if (j->observe)
			j->observe(RPC_UNAVAILABLE, NULL, 0, j->observe_arg);
		free(j->request.data);
		free(j);
	}
}

/* A call crimux makes itself (merged lists, Status): answered right here,
 * on the caller's worker thread. */
static int shim_call(struct backend *b, const char *method, const struct rpc_buf *req,
		     struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *res)
{
	const struct cri_method *m = cri_method_find(method);
	const struct handler *h = find_handler(m);
	if (!h) {
		*res = (struct rpc_result){0};
		unimplemented(m, method, res);
		return 0;
	}
	run_method(b->priv, h, m, req ? req->data : NULL, req ? req->len : 0, parent, timeout_ms, 0,
		   res, NULL);
	return 0;
}

/* Server streams crimux reads: Stream* lists, one batch each; container
 * events as Docker reports them. */
struct backend_stream {
	struct rpc_result res;
	bool sent;
	struct dk_events *events;
};

static int shim_stream_open(struct backend *b, const char *method, const struct rpc_buf *req,
			    struct rpc_call *parent, struct backend_stream **out)
{
	const struct cri_method *m = cri_method_find(method);
	bool events = m && streq(m->name, "GetContainerEvents");
	const struct handler *h = find_handler(m);
	if (!events && (!h || !m->server_streaming))
		return -EOPNOTSUPP;
	struct backend_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (events) {
		int r = dk_events_open(b->priv, parent, &s->events, NULL);
		if (r < 0) {
			free(s);
			return r;
		}
	} else {
		run_method(b->priv, h, m, req ? req->data : NULL, req ? req->len : 0, parent, 0, 0,
			   &s->res, NULL);
	}
	*out = s;
	return 0;
}

static int shim_stream_next(struct backend_stream *s, struct rpc_buf *msg, struct rpc_result *end)
{
	if (s->events)
		return dk_events_next(s->events, msg, end);
	if (!s->sent && s->res.code == RPC_OK) {
		s->sent = true;
		*msg = s->res.reply;
		s->res.reply = (struct rpc_buf){0};
		return 1;
	}
	end->code = s->res.code;
	end->details = TAKE_PTR(s->res.details);
	return 0;
}

static void shim_stream_cancel(struct backend_stream *s)
{
	if (s->events)
		dk_events_cancel(s->events); /* a list's batch was made at open */
}

static void shim_stream_free(struct backend_stream *s)
{
	if (!s)
		return;
	dk_events_free(s->events);
	rpc_result_clear(&s->res);
	free(s);
}

const struct backend_ops docker_backend_ops = {
	.type = "docker",
	.check_option = check_option,
	.open = shim_open,
	.close = shim_close,
	.serve = shim_serve,
	.call = shim_call,
	.stream_open = shim_stream_open,
	.stream_next = shim_stream_next,
	.stream_cancel = shim_stream_cancel,
	.stream_free = shim_stream_free,
};
