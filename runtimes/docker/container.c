/* Containers of Docker pods: create, start, stop, remove, status, list,
 * resource updates, logs and ExecSync. */
#include "config.h"

#include "runtimes/docker/container.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/cgcache.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/logs.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/state.h"
#include "runtimes/docker/model/stats.h"

/* ExecSync keeps this much of stdout and stderr together, as CRI-O does
 * (CVE-2022-1708): with the arena copy and the encoded reply, a call holds
 * about three times this, not the ~96 MiB of 16 MiB per stream. */
#define EXEC_OUTPUT_CAP (16 * MIB)

/* The CRI log path of container id (malloc'd), NULL when none. */
static char *log_path_of(struct dk_ctx *c, const char *id, json_object *labels)
{
	_cleanup_free_ char *dir = NULL, *rel = NULL;
	return dk_logs_location(c->ds->logs, id, labels, &dir, &rel) == 0 ? dk_log_join(dir, rel)
									  : NULL;
}

int dk_follow_log(struct dk_ctx *c, json_object *inspect, struct crx_err *err)
{
	const char *id = dk_json_str(inspect, "Id");
	const char *docker = dk_json_str(inspect, "LogPath");
	if (!id)
		return 0;
	_cleanup_free_ char *dir = NULL, *rel = NULL;
	int r = dk_logs_location(c->ds->logs, id, dk_json_get(inspect, "Config", "Labels", NULL),
				 &dir, &rel);
	if (r == -ENOENT)
		return 0; /* the kubelet asked for no log file */
	if (r < 0)
		return crx_err_set(err, r, "cannot tell where container %s logs: %s", id,
				   strerror(-r));
	if (!docker || !*docker)
		return crx_err_set(err, -EIO, "Docker keeps no json-file log for container %s", id);
	return dk_logs_track(c->ds->logs, id, dir, rel, docker, err);
}

int dk_create_container(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__CreateContainerRequest *in = (const void *)req;
	const Runtime__V1__ContainerConfig *cfg = in->config;
	if (!cfg || !cfg->metadata)
		return crx_err_set(err, -EINVAL, "CreateContainer needs a config with metadata");
	_cleanup_json_ json_object *sandbox = NULL;
	int r = dk_inspect_typed(c, in->pod_sandbox_id, DK_TYPE_SANDBOX, &sandbox, err);
	if (r < 0)
		return r;
	const char *sandbox_id = dk_json_str(sandbox, "Id");
	json_object *slabels = dk_json_get(sandbox, "Config", "Labels", NULL);

	/* The pod's identity: as the sandbox was created. */
	char *pname = NULL, *puid = NULL, *pns = NULL;
	uint32_t pattempt = 0;
	if (dk_meta_parse(&c->arena, slabels, dk_json_str(sandbox, "Name"), &pname, &puid, &pns,
			  &pattempt) < 0)
		return crx_err_set(err, -EIO, "sandbox %s has no CRI metadata", sandbox_id);
	struct dk_sandbox_meta smeta = {.name = pname, .uid = puid, .ns = pns, .attempt = pattempt};
	struct dk_container_meta cmeta = {.name = cfg->metadata->name,
					  .attempt = cfg->metadata->attempt};
	_cleanup_free_ char *name = NULL;
	r = dk_container_name(&cmeta, &smeta, &name, err);
	if (r < 0)
		return r;

	/* The log file stays inside the pod's log directory. */
	const char *log_dir = in->sandbox_config ? in->sandbox_config->log_directory : NULL;
	bool want_log = cfg->log_path && *cfg->log_path;
	_cleanup_free_ char *log_path = NULL;
	if (want_log) {
		r = dk_log_path_check(log_dir, cfg->log_path, err);
		if (r < 0)
			return r;
		size_t n = strlen(log_dir);
		if (asprintf(&log_path, "%s%s%s", log_dir, log_dir[n - 1] == '/' ? "" : "/",
			     cfg->log_path) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	/* The log location goes into the container's labels, which Docker
	 * stores with it: no record of crimux's own to write and sync here. */
	struct dk_container_ctx ctx = {
		.sandbox_id = sandbox_id,
		.log_dir = want_log ? log_dir : NULL,
		.cgroup_parent =
			dk_json_str(dk_json_get(sandbox, "HostConfig", NULL), "CgroupParent"),
		.log_path = log_path,
	};
	dk_cgroup_driver(c);
	struct dk_spec_opts opts = dk_spec_opts(c->ds, dk_realtime_ns());
	_cleanup_json_ json_object *spec = NULL;
	r = dk_container_spec(cfg, &ctx, &opts, &spec, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *id = NULL;
	/* One create per name at a time: a retry waits for the first try,
	 * then finds what it made (Docker cannot show a name it is still
	 * creating). */
	dk_name_lock(c->ds, name);
	r = dk_container_create(c->ds->sock, name, spec, &c->dl, &id, err);
	if (r == -EEXIST) {
		/* A retry of a create that worked: the same container, not
		 * started yet, in the same sandbox. */
		_cleanup_json_ json_object *old = NULL;
		struct crx_err e2 = {0};
		if (dk_inspect_typed(c, name, DK_TYPE_CONTAINER, &old, &e2) == 0 &&
		    streq(dk_json_str(dk_json_get(old, "Config", "Labels", NULL),
				      DK_LABEL_SANDBOX_ID),
			  sandbox_id) &&
		    dk_container_state(dk_json_get(old, "State", NULL)) ==
			    RUNTIME__V1__CONTAINER_STATE__CONTAINER_CREATED) {
			id = strdup(dk_json_str(old, "Id"));
			r = id ? 0 : crx_err_set(err, -ENOMEM, "out of memory");
		} else {
			r = crx_err_set(err, -EEXIST,
					"container %s (attempt %u) already exists in sandbox %s",
					cfg->metadata->name, cfg->metadata->attempt, sandbox_id);
		}
	} else if (r == -ENOENT || (r < 0 && err && strstr(err->msg, "No such image"))) {
		r = crx_err_set(err, -ENOENT, "image %s not found: pull it first",
				cfg->image ? cfg->image->image : "");
	}
	dk_name_unlock(c->ds, name);
	if (r < 0)
		return r;
	dk_state_created(c->ds->state, id);
	Runtime__V1__CreateContainerResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__create_container_response__descriptor);
	if (!out || !(out->container_id = dk_arena_strdup(&c->arena, id)))
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

int dk_start_container(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		       struct crx_err *err)
{
	const Runtime__V1__StartContainerRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_ident(c, in->container_id, DK_TYPE_CONTAINER, &inspect, err);
	if (r < 0)
		return r;
	const char *id = dk_json_str(inspect, "Id");
	r = dk_container_start(c->ds->sock, id, &c->dl, err);
	if (r < 0)
		return crx_err_prefix(err, "starting container %s", id);
	/* Running from now on, for lists; lookups ask Docker until its start
	 * event is in (the process, its pid). */
	dk_state_started(c->ds->state, id);
	/* Docker created its json-file log with the start, where it always
	 * does: no inspect needed to find it. */
	_cleanup_free_ char *log = dk_json_log_path(c, id);
	if (log && dk_json_add_str(inspect, "LogPath", log) == 0) {
		r = dk_follow_log(c, inspect, err);
	} else {
		_cleanup_json_ json_object *now = NULL;
		r = dk_container_inspect(c->ds->sock, id, &c->dl, &now, err);
		if (r == 0)
			r = dk_follow_log(c, now, err);
	}
	if (r < 0)
		return r;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__start_container_response__descriptor);
	if (!out)
		return -ENOMEM;
	*resp = out;
	return 0;
}

int dk_stop_container(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		      struct crx_err *err)
{
	const Runtime__V1__StopContainerRequest *in = (const void *)req;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__stop_container_response__descriptor);
	if (!out)
		return -ENOMEM;
	const char *id;
	int r = dk_full_id(c, in->container_id, DK_TYPE_CONTAINER, &id, err);
	if (r == -ENOENT) {
		*resp = out;
		return 0;
	}
	if (r < 0)
		return r;
	r = dk_container_stop(c->ds->sock, id, (long)in->timeout, &c->dl, err);
	if (r < 0)
		return crx_err_prefix(err, "stopping container %s", id);
	dk_state_stopped(c->ds->state, id);
	dk_logs_drain(c->ds->logs, id);
	*resp = out;
	return 0;
}

struct log_state {
	struct dk_logs *logs;
	const char *id;
	bool copied;
};

/* While dockerd deletes the container, the log's last lines are copied
 * (from the open file, which outlives Docker's unlink) and its position
 * file goes: nobody waits for either (0.05 ms, and 0.2 ms on ext4). */
static void let_go_of_log(void *arg)
{
	struct log_state *s = arg;
	dk_logs_forget(s->logs, s->id);
	s->copied = true;
	dk_logs_drop_state(s->logs, s->id);
}

int dk_remove_container_id(struct dk_ctx *c, const char *id, struct crx_err *err)
{
	/* Kill first, so the last lines reach the CRI log before Docker
	 * deletes its own file with the container. */
	int r = dk_state_not_running(c->ds->state, id)
			? 0 /* nothing to kill: the stop would be a round trip for nothing */
			: dk_container_stop(c->ds->sock, id, 0, &c->dl, err);
	if (r < 0 && r != -ENOENT)
		return r;
	dk_state_stopped(c->ds->state, id);
	dk_stats_forget(c->ds->stats, id);
	dk_cgroup_cache_forget(c->ds->cgroups, id);
	/* Should the delete fail, the container has exited and its log needs
	 * following no more. */
	struct log_state s = {c->ds->logs, id, false};
	r = dk_container_remove(c->ds->sock, id, &c->dl, let_go_of_log, &s, err);
	if (!s.copied) /* the request never reached dockerd */
		dk_logs_forget(c->ds->logs, id);
	if (r == 0)
		dk_state_removed(c->ds->state, id);
	return r;
}

int dk_remove_container(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__RemoveContainerRequest *in = (const void *)req;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__remove_container_response__descriptor);
	if (!out)
		return -ENOMEM;
	const char *id;
	int r = dk_full_id(c, in->container_id, DK_TYPE_CONTAINER, &id, err);
	if (r == -ENOENT) {
		*resp = out;
		return 0;
	}
	if (r == 0)
		r = dk_remove_container_id(c, id, err);
	if (r < 0)
		return r;
	*resp = out;
	return 0;
}

static Runtime__V1__ContainerMetadata *container_meta(struct dk_ctx *c, json_object *labels,
						      const char *docker_name)
{
	Runtime__V1__ContainerMetadata *m =
		dk_msg_new(&c->arena, &runtime__v1__container_metadata__descriptor);
	if (!m ||
	    dk_meta_parse(&c->arena, labels, docker_name, &m->name, NULL, NULL, &m->attempt) < 0)
		return NULL;
	return m;
}

static Runtime__V1__ImageSpec *image_spec(struct dk_ctx *c, const char *image, json_object *labels)
{
	Runtime__V1__ImageSpec *s = dk_msg_new(&c->arena, &runtime__v1__image_spec__descriptor);
	if (s) {
		s->image = dk_arena_strdup(&c->arena, image);
		s->user_specified_image =
			dk_arena_strdup(&c->arena, dk_json_str(labels, DK_LABEL_USER_IMAGE));
	}
	return s;
}

/* The identity the container's first process has, from /proc. */
static Runtime__V1__ContainerUser *process_user(struct dk_ctx *c, int pid)
{
	char path[64], line[1024];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f)
		return NULL;
	struct dk_arena *a = &c->arena;
	Runtime__V1__ContainerUser *u = dk_msg_new(a, &runtime__v1__container_user__descriptor);
	Runtime__V1__LinuxContainerUser *l =
		dk_msg_new(a, &runtime__v1__linux_container_user__descriptor);
	if (!u || !l)
		return NULL;
	u->linux = l;
	while (fgets(line, sizeof(line), f)) {
		long long v;
		if (sscanf(line, "Uid: %lld", &v) == 1)
			l->uid = v;
		else if (sscanf(line, "Gid: %lld", &v) == 1)
			l->gid = v;
		else if (strncmp(line, "Groups:", 7) == 0) {
			char *p = line + 7, *end;
			size_t n = 0;
			for (char *q = p; (v = strtoll(q, &end, 10)), end != q; q = end)
				n++;
			l->supplemental_groups = dk_arena_alloc(a, (n ? n : 1) * sizeof(int64_t));
			if (!l->supplemental_groups)
				return NULL;
			for (char *q = p; (v = strtoll(q, &end, 10)), end != q; q = end)
				l->supplemental_groups[l->n_supplemental_groups++] = v;
		}
	}
	return u;
}

static Runtime__V1__ContainerResources *resources_of(struct dk_ctx *c, json_object *host)
{
	struct dk_arena *a = &c->arena;
	Runtime__V1__ContainerResources *res =
		dk_msg_new(a, &runtime__v1__container_resources__descriptor);
	Runtime__V1__LinuxContainerResources *l =
		dk_msg_new(a, &runtime__v1__linux_container_resources__descriptor);
	if (!res || !l)
		return NULL;
	l->cpu_period = dk_json_int(host, "CpuPeriod", 0);
	l->cpu_quota = dk_json_int(host, "CpuQuota", 0);
	l->cpu_shares = dk_json_int(host, "CpuShares", 0);
	l->memory_limit_in_bytes = dk_json_int(host, "Memory", 0);
	l->memory_swap_limit_in_bytes = dk_json_int(host, "MemorySwap", 0);
	l->oom_score_adj = dk_json_int(host, "OomScoreAdj", 0);
	l->cpuset_cpus = dk_arena_strdup(a, dk_json_str(host, "CpusetCpus"));
	l->cpuset_mems = dk_arena_strdup(a, dk_json_str(host, "CpusetMems"));
	res->linux = l;
	return res;
}

Runtime__V1__ContainerStatus *dk_container_status_msg(struct dk_ctx *c, json_object *inspect)
{
	struct dk_arena *a = &c->arena;
	Runtime__V1__ContainerStatus *st =
		dk_msg_new(a, &runtime__v1__container_status__descriptor);
	if (!st)
		return NULL;
	json_object *state = dk_json_get(inspect, "State", NULL);
	json_object *config = dk_json_get(inspect, "Config", NULL);
	json_object *labels = dk_json_get(config, "Labels", NULL);
	json_object *host = dk_json_get(inspect, "HostConfig", NULL);
	st->id = dk_arena_strdup(a, dk_json_str(inspect, "Id"));
	st->metadata = container_meta(c, labels, dk_json_str(inspect, "Name"));
	st->state = dk_container_state(state);
	st->created_at = dk_created_ns(labels, inspect);
	st->started_at = dk_parse_time(dk_json_str(state, "StartedAt"));
	st->finished_at = dk_parse_time(dk_json_str(state, "FinishedAt"));
	/* Docker stamps the start after a quick process may have ended. */
	if (st->finished_at && st->finished_at < st->started_at)
		st->finished_at = st->started_at;
	if (st->state == RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED)
		st->exit_code = (int32_t)dk_json_int(state, "ExitCode", 0);
	st->image = image_spec(c, dk_json_str(config, "Image"), labels);
	st->image_ref = dk_arena_strdup(a, dk_json_str(inspect, "Image"));
	st->image_id = st->image_ref;
	st->reason = (char *)dk_exit_reason(state);
	st->message = dk_arena_strdup(a, dk_json_str(state, "Error"));
	_cleanup_free_ char *log_path = st->id ? log_path_of(c, st->id, labels) : NULL;
	st->log_path = dk_arena_strdup(a, log_path ? log_path : "");
	st->resources = resources_of(c, host);
	const char *stop = dk_json_str(config, "StopSignal");
	st->stop_signal = dk_signal_from_number(stop ? atoi(stop) : 0);
	int pid = (int)dk_json_int(state, "Pid", 0);
	if (st->state == RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING && pid > 0)
		st->user = process_user(c, pid);
	json_object *mounts = dk_json_get(inspect, "Mounts", NULL);
	for (size_t i = 0; mounts && i < json_object_array_length(mounts); i++) {
		json_object *m = json_object_array_get_idx(mounts, i);
		if (!streq(dk_json_str(m, "Type"), "bind"))
			continue;
		Runtime__V1__Mount *cm = dk_msg_new(a, &runtime__v1__mount__descriptor);
		if (!cm)
			return NULL;
		cm->container_path = dk_arena_strdup(a, dk_json_str(m, "Destination"));
		cm->host_path = dk_arena_strdup(a, dk_json_str(m, "Source"));
		cm->readonly = !dk_json_bool(m, "RW");
		const char *prop = dk_json_str(m, "Propagation");
		cm->propagation =
			streq(prop, "rshared") || streq(prop, "shared")
				? RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_BIDIRECTIONAL
			: streq(prop, "rslave") || streq(prop, "slave")
				? RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_HOST_TO_CONTAINER
				: RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_PRIVATE;
		if (DK_PUSH(a, &st->n_mounts, &st->mounts, cm) < 0)
			return NULL;
	}
	if (dk_labels_to_cri(a, labels, &runtime__v1__container_status__labels_entry__descriptor,
			     &st->n_labels, (void ***)&st->labels,
			     &runtime__v1__container_status__annotations_entry__descriptor,
			     &st->n_annotations, (void ***)&st->annotations) < 0)
		return NULL;
	if (!st->metadata || !st->image || !st->resources)
		return NULL;
	return st;
}

int dk_container_status(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__ContainerStatusRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->container_id, DK_TYPE_CONTAINER, &inspect, err);
	if (r < 0)
		return r;
	Runtime__V1__ContainerStatusResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__container_status_response__descriptor);
	if (!out || !(out->status = dk_container_status_msg(c, inspect)))
		return -ENOMEM;
	if (in->verbose &&
	    DK_MAP_ADD(&c->arena, &runtime__v1__container_status_response__info_entry__descriptor,
		       &out->n_info, &out->info, "info", dk_json_text(inspect)) < 0)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

static bool id_matches(const char *id, const char *filter)
{
	return !filter || !*filter || (id && strncmp(id, filter, strlen(filter)) == 0);
}

/* One entry of dk_list() as a CRI container; NULL when the filter leaves
 * it out or no CRI runtime made it (*r < 0 on failure). */
static Runtime__V1__Container *container_item(struct dk_ctx *c, json_object *e,
					      const Runtime__V1__ContainerFilter *f, int *r)
{
	struct dk_arena *a = &c->arena;
	const char *id = dk_json_str(e, "Id");
	json_object *labels = dk_json_get(e, "Labels", NULL);
	Runtime__V1__ContainerState state = dk_container_state_word(dk_json_str(e, "State"));
	if (!id || !id_matches(id, f ? f->id : NULL) ||
	    (f && f->state && f->state->state != state) ||
	    (f && !dk_labels_match(labels, f->n_label_selector, (void *const *)f->label_selector)))
		return NULL;
	Runtime__V1__Container *ct = dk_msg_new(a, &runtime__v1__container__descriptor);
	if (!ct) {
		*r = -ENOMEM;
		return NULL;
	}
	const char *name = NULL;
	json_object *names = dk_json_get(e, "Names", NULL);
	if (names && json_object_array_length(names))
		name = json_object_get_string(json_object_array_get_idx(names, 0));
	ct->id = dk_arena_strdup(a, id);
	ct->pod_sandbox_id = dk_arena_strdup(a, dk_json_str(labels, DK_LABEL_SANDBOX_ID));
	ct->metadata = container_meta(c, labels, name);
	ct->image = image_spec(c, dk_json_str(e, "Image"), labels);
	ct->image_ref = dk_arena_strdup(a, dk_json_str(e, "ImageID"));
	ct->image_id = ct->image_ref;
	ct->state = state;
	ct->created_at = dk_created_ns(labels, e);
	if (!ct->metadata || !ct->image)
		return NULL; /* not made by a CRI runtime */
	if (dk_labels_to_cri(a, labels, &runtime__v1__container__labels_entry__descriptor,
			     &ct->n_labels, (void ***)&ct->labels,
			     &runtime__v1__container__annotations_entry__descriptor,
			     &ct->n_annotations, (void ***)&ct->annotations) < 0) {
		*r = -ENOMEM;
		return NULL;
	}
	return ct;
}

/* The kubelet's relist asks for everything: from the cache's memos. */
static int container_visit(struct dk_state_view *v, void *arg)
{
	struct dk_packed *p = arg;
	if (!v->memo) {
		_cleanup_json_ json_object *e = dk_state_view_item(v);
		int r = e ? 0 : -ENOMEM;
		Runtime__V1__Container *ct = e ? container_item(p->c, e, NULL, &r) : NULL;
		uint8_t *data = NULL;
		size_t len = 0;
		if (r == 0 && ct)
			r = dk_packed_make(p->c, &ct->base, &data, &len);
		if (r < 0)
			return r;
		dk_state_memo(v, data, len); /* empty: not one to list */
		return len ? dk_packed_add(p, data, len) : 0;
	}
	return v->memo_len ? dk_packed_add(p, v->memo, v->memo_len) : 0;
}

static bool no_container_filter(const Runtime__V1__ContainerFilter *f)
{
	return !f || ((!f->id || !*f->id) && !f->state &&
		      (!f->pod_sandbox_id || !*f->pod_sandbox_id) && !f->n_label_selector);
}

int dk_list_containers(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		       struct crx_err *err)
{
	const Runtime__V1__ListContainersRequest *in = (const void *)req;
	const Runtime__V1__ContainerFilter *f = in->filter;
	struct dk_arena *a = &c->arena;
	Runtime__V1__ListContainersResponse *out =
		dk_msg_new(a, &runtime__v1__list_containers_response__descriptor);
	if (!out)
		return -ENOMEM;
	if (no_container_filter(f)) {
		struct dk_packed p = {.c = c, .tag = 1}; /* containers */
		int r = dk_state_each(c->ds->state, DK_TYPE_CONTAINER, container_visit, &p);
		if (r == 0)
			r = dk_packed_finish(&p, &out->base);
		dk_packed_clear(&p);
		if (r == 0) {
			*resp = &out->base;
			return 0;
		}
		if (r != -EAGAIN)
			return r;
	}
	_cleanup_json_ json_object *list = NULL;
	int r = dk_list(c, DK_TYPE_CONTAINER, f ? f->pod_sandbox_id : NULL, &list, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		Runtime__V1__Container *ct =
			container_item(c, json_object_array_get_idx(list, i), f, &r);
		if (r < 0 || (ct && DK_PUSH(a, &out->n_containers, &out->containers, ct) < 0))
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}

int dk_update_container_resources(struct dk_ctx *c, const ProtobufCMessage *req,
				  ProtobufCMessage **resp, struct crx_err *err)
{
	const Runtime__V1__UpdateContainerResourcesRequest *in = (const void *)req;
	const char *id;
	int r = dk_full_id(c, in->container_id, DK_TYPE_CONTAINER, &id, err);
	if (r < 0)
		return r;
	struct dk_spec_opts opts = dk_spec_opts(c->ds, 0);
	_cleanup_json_ json_object *body = json_object_new_object();
	if (!body)
		return crx_err_set(err, -ENOMEM, "out of memory");
	r = dk_resources_json(in->linux, &opts, body, err);
	if (r < 0)
		return r;
	json_object_object_del(body, "OomScoreAdj"); /* fixed once the container runs */
	r = dk_callf(c->ds->sock, "POST", body, &c->dl, NULL, NULL, err, "/containers/%s/update",
		     id);
	dk_state_changed(c->ds->state, id);
	if (r < 0)
		return r;
	ProtobufCMessage *out = dk_msg_new(
		&c->arena, &runtime__v1__update_container_resources_response__descriptor);
	if (!out)
		return -ENOMEM;
	*resp = out;
	return 0;
}

int dk_reopen_container_log(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			    struct crx_err *err)
{
	const Runtime__V1__ReopenContainerLogRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->container_id, DK_TYPE_CONTAINER, &inspect, err);
	if (r < 0)
		return r;
	const char *id = dk_json_str(inspect, "Id");
	if (!dk_json_bool(dk_json_get(inspect, "State", NULL), "Running"))
		return crx_err_set(err, -EBUSY, "container %s is not running", id);
	_cleanup_free_ char *log_path =
		log_path_of(c, id, dk_json_get(inspect, "Config", "Labels", NULL));
	if (!log_path)
		return crx_err_set(err, -EBUSY, "container %s has no log path", id);
	r = dk_follow_log(c, inspect, err);
	if (r == 0)
		r = dk_logs_reopen(c->ds->logs, id, err);
	if (r < 0)
		return r;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__reopen_container_log_response__descriptor);
	if (!out)
		return -ENOMEM;
	*resp = out;
	return 0;
}

int dk_exec_sync_call(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		      struct crx_err *err)
{
	const Runtime__V1__ExecSyncRequest *in = (const void *)req;
	if (in->n_cmd == 0)
		return crx_err_set(err, -EINVAL, "ExecSync needs a command");
	if (in->timeout < 0)
		return crx_err_set(err, -EINVAL, "ExecSync timeout %lld is negative",
				   (long long)in->timeout);
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->container_id, DK_TYPE_CONTAINER, &inspect, err);
	if (r < 0)
		return r;
	const char *id = dk_json_str(inspect, "Id");
	if (!dk_json_bool(dk_json_get(inspect, "State", NULL), "Running"))
		return crx_err_set(err, -EBUSY, "container %s is not running", id);
	struct dk_exec_result res = {0};
	r = dk_exec_sync(c->ds->sock, id, in->cmd, in->n_cmd, in->timeout * 1000, EXEC_OUTPUT_CAP,
			 &c->dl, &res, err);
	if (r < 0) {
		dk_exec_result_clear(&res);
		if (r == -ETIMEDOUT)
			return crx_err_set(err, -ETIMEDOUT, "command %s timed out after %lld s",
					   in->cmd[0], (long long)in->timeout);
		return r;
	}
	Runtime__V1__ExecSyncResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__exec_sync_response__descriptor);
	if (!out) {
		dk_exec_result_clear(&res);
		return -ENOMEM;
	}
	/* The reply owns copies in the arena; the result is freed here. */
	out->stdout.len = res.out_len;
	out->stdout.data = res.out_len ? dk_arena_alloc(&c->arena, res.out_len) : NULL;
	if (res.out_len && out->stdout.data)
		memcpy(out->stdout.data, res.out, res.out_len);
	out->stderr.len = res.err_len;
	out->stderr.data = res.err_len ? dk_arena_alloc(&c->arena, res.err_len) : NULL;
	if (res.err_len && out->stderr.data)
		memcpy(out->stderr.data, res.err, res.err_len);
	out->exit_code = res.exit_code;
	dk_exec_result_clear(&res);
	*resp = &out->base;
	return 0;
}
