/* CRI stats for Docker pods, read from the cgroups and the pod's network
 * namespace by crimux itself: dockerd's stats endpoint samples for a second
 * and its size option walks the disk, neither of which a kubelet polling
 * every few seconds should cause. */
#include "config.h"

#include "runtimes/docker/cstats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/cgcache.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/netns.h"
#include "runtimes/docker/model/stats.h"

/* memory.limit_in_bytes of an unlimited v1 cgroup is near 2^63. */
#define NO_LIMIT (1ULL << 62)

static Runtime__V1__UInt64Value *u64(struct dk_arena *a, uint64_t v)
{
	Runtime__V1__UInt64Value *m = dk_msg_new(a, &runtime__v1__uint64_value__descriptor);
	if (m)
		m->value = v;
	return m;
}

static Runtime__V1__CpuUsage *cpu_usage(struct dk_ctx *c, const char *key, int64_t ts,
					const struct dk_cgroup_sample *s)
{
	Runtime__V1__CpuUsage *cpu = dk_msg_new(&c->arena, &runtime__v1__cpu_usage__descriptor);
	if (!cpu)
		return NULL;
	cpu->timestamp = ts;
	if (s->has_cpu) {
		cpu->usage_core_nano_seconds = u64(&c->arena, s->cpu_ns);
		uint64_t rate;
		if (dk_stats_cpu_rate(c->ds->stats, key, ts, s->cpu_ns, &rate))
			cpu->usage_nano_cores = u64(&c->arena, rate);
	}
	return cpu;
}

static Runtime__V1__MemoryUsage *memory_usage(struct dk_ctx *c, int64_t ts,
					      const struct dk_cgroup_sample *s)
{
	struct dk_arena *a = &c->arena;
	Runtime__V1__MemoryUsage *m = dk_msg_new(a, &runtime__v1__memory_usage__descriptor);
	if (!m)
		return NULL;
	m->timestamp = ts;
	if (s->has_memory) {
		m->working_set_bytes = u64(a, s->mem_working_set);
		m->usage_bytes = u64(a, s->mem_usage);
		m->rss_bytes = u64(a, s->mem_rss);
		m->page_faults = u64(a, s->pgfault);
		m->major_page_faults = u64(a, s->pgmajfault);
		if (s->mem_limit && s->mem_limit < NO_LIMIT)
			m->available_bytes = u64(a, s->mem_limit > s->mem_working_set
							    ? s->mem_limit - s->mem_working_set
							    : 0);
	}
	return m;
}

/* What stats need of a container, from an inspect or from the state
 * cache's list (which carries Pid and UpperDir too): no Docker call per
 * container when the cache is live. */
struct cinfo {
	const char *id, *name, *upper, *netmode;
	json_object *labels;
	int pid;
};

static struct cinfo from_inspect(json_object *inspect)
{
	return (struct cinfo){
		.id = dk_json_str(inspect, "Id"),
		.name = dk_json_str(inspect, "Name"),
		.upper = dk_json_str(dk_json_get(inspect, "GraphDriver", "Data", NULL), "UpperDir"),
		.netmode = dk_json_str(dk_json_get(inspect, "HostConfig", NULL), "NetworkMode"),
		.labels = dk_json_get(inspect, "Config", "Labels", NULL),
		.pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0),
	};
}

/* An entry of dk_list(); *inspect holds a Docker inspect when the list
 * came from Docker (no Pid in it). -ENOENT: gone meanwhile. */
static int info_of(struct dk_ctx *c, json_object *e, json_object **inspect, struct cinfo *out)
{
	if (json_object_object_get_ex(e, "Pid", NULL)) {
		json_object *names = dk_json_get(e, "Names", NULL);
		*out = (struct cinfo){
			.id = dk_json_str(e, "Id"),
			.name = names && json_object_array_length(names)
					? json_object_get_string(
						  json_object_array_get_idx(names, 0))
					: NULL,
			.upper = dk_json_str(e, "UpperDir"),
			.netmode = dk_json_str(e, "NetworkMode"),
			.labels = dk_json_get(e, "Labels", NULL),
			.pid = (int)dk_json_int(e, "Pid", 0),
		};
		return out->id ? 0 : -ENOENT;
	}
	const char *id = dk_json_str(e, "Id");
	if (!id || dk_container_inspect(c->ds->sock, id, &c->dl, inspect, NULL) < 0)
		return -ENOENT;
	*out = from_inspect(*inspect);
	return 0;
}

/* Stats of one container; *sample gets its cgroup reading for pod totals. */
static Runtime__V1__ContainerStats *container_stats(struct dk_ctx *c, const struct cinfo *ci,
						    struct dk_cgroup_sample *sample)
{
	struct dk_arena *a = &c->arena;
	int64_t ts = dk_realtime_ns();
	const char *id = ci->id;
	json_object *labels = ci->labels;
	Runtime__V1__ContainerStats *st = dk_msg_new(a, &runtime__v1__container_stats__descriptor);
	Runtime__V1__ContainerAttributes *at =
		dk_msg_new(a, &runtime__v1__container_attributes__descriptor);
	Runtime__V1__ContainerMetadata *md =
		dk_msg_new(a, &runtime__v1__container_metadata__descriptor);
	if (!st || !at || !md || !id)
		return NULL;
	at->id = dk_arena_strdup(a, id);
	if (dk_meta_parse(a, labels, ci->name, &md->name, NULL, NULL, &md->attempt) < 0)
		return NULL;
	at->metadata = md;
	if (dk_labels_to_cri(a, labels,
			     &runtime__v1__container_attributes__labels_entry__descriptor,
			     &at->n_labels, (void ***)&at->labels,
			     &runtime__v1__container_attributes__annotations_entry__descriptor,
			     &at->n_annotations, (void ***)&at->annotations) < 0)
		return NULL;
	st->attributes = at;

	struct dk_cgroup_sample s = {0};
	if (ci->pid > 0)
		dk_cgroup_cache_read(c->ds->cgroups, id, ci->pid, &s);
	if (sample)
		*sample = s;
	st->cpu = cpu_usage(c, id, ts, &s);
	st->memory = memory_usage(c, ts, &s);
	if (!st->cpu || !st->memory)
		return NULL;

	const char *upper = ci->upper && *ci->upper ? ci->upper : NULL;
	uint64_t bytes, inodes;
	int64_t at_ns;
	if (upper && dk_stats_layer(c->ds->stats, id, upper, c->ds->layer_ttl_ms, &bytes, &inodes,
				    &at_ns, NULL) == 0) {
		Runtime__V1__FilesystemUsage *fs =
			dk_msg_new(a, &runtime__v1__filesystem_usage__descriptor);
		Runtime__V1__FilesystemIdentifier *fid =
			dk_msg_new(a, &runtime__v1__filesystem_identifier__descriptor);
		if (!fs || !fid)
			return NULL;
		fid->mountpoint = dk_arena_strdup(a, upper);
		fs->fs_id = fid;
		fs->timestamp = at_ns;
		fs->used_bytes = u64(a, bytes);
		fs->inodes_used = u64(a, inodes);
		st->writable_layer = fs;
	}
	return st;
}

int dk_container_stats(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		       struct crx_err *err)
{
	const Runtime__V1__ContainerStatsRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->container_id, DK_TYPE_CONTAINER, &inspect, err);
	if (r < 0)
		return r;
	Runtime__V1__ContainerStatsResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__container_stats_response__descriptor);
	struct cinfo ci = from_inspect(inspect);
	if (!out || !(out->stats = container_stats(c, &ci, NULL)))
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

static bool id_matches(const char *id, const char *filter)
{
	return !filter || !*filter || (id && strncmp(id, filter, strlen(filter)) == 0);
}

/* Running containers (optionally of one sandbox) passing the filters. */
static int running_containers(struct dk_ctx *c, const char *sandbox_id, const char *id_prefix,
			      size_t n_sel, void *const *sel, json_object **out,
			      struct crx_err *err)
{
	_cleanup_json_ json_object *list = NULL;
	int r = dk_list(c, DK_TYPE_CONTAINER, sandbox_id, &list, err);
	if (r < 0)
		return r;
	json_object *keep = json_object_new_array();
	if (!keep)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *e = json_object_array_get_idx(list, i);
		if (streq(dk_json_str(e, "State"), "running") &&
		    id_matches(dk_json_str(e, "Id"), id_prefix) &&
		    dk_labels_match(dk_json_get(e, "Labels", NULL), n_sel, sel))
			json_object_array_add(keep, json_object_get(e));
	}
	*out = keep;
	return 0;
}

int dk_list_container_stats(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			    struct crx_err *err)
{
	const Runtime__V1__ListContainerStatsRequest *in = (const void *)req;
	const Runtime__V1__ContainerStatsFilter *f = in->filter;
	_cleanup_json_ json_object *list = NULL;
	int r = running_containers(c, f ? f->pod_sandbox_id : NULL, f ? f->id : NULL,
				   f ? f->n_label_selector : 0,
				   f ? (void *const *)f->label_selector : NULL, &list, err);
	if (r < 0)
		return r;
	Runtime__V1__ListContainerStatsResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__list_container_stats_response__descriptor);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		_cleanup_json_ json_object *inspect = NULL;
		struct cinfo ci;
		if (info_of(c, json_object_array_get_idx(list, i), &inspect, &ci) < 0)
			continue; /* gone meanwhile */
		Runtime__V1__ContainerStats *st = container_stats(c, &ci, NULL);
		if (!st || DK_PUSH(&c->arena, &out->n_stats, &out->stats, st) < 0)
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}

static Runtime__V1__NetworkInterfaceUsage *if_usage(struct dk_arena *a, const struct dk_if_stats *s)
{
	Runtime__V1__NetworkInterfaceUsage *u =
		dk_msg_new(a, &runtime__v1__network_interface_usage__descriptor);
	if (!u)
		return NULL;
	u->name = dk_arena_strdup(a, s->name);
	u->rx_bytes = u64(a, s->rx_bytes);
	u->rx_errors = u64(a, s->rx_errors);
	u->tx_bytes = u64(a, s->tx_bytes);
	u->tx_errors = u64(a, s->tx_errors);
	return u;
}

/* Stats of a pod; list: its running containers (entries of dk_list()). */
static Runtime__V1__PodSandboxStats *pod_stats(struct dk_ctx *c, const struct cinfo *si,
					       json_object *const *list, size_t n_list)
{
	struct dk_arena *a = &c->arena;
	const char *id = si->id;
	json_object *labels = si->labels;
	Runtime__V1__PodSandboxStats *st =
		dk_msg_new(a, &runtime__v1__pod_sandbox_stats__descriptor);
	Runtime__V1__PodSandboxAttributes *at =
		dk_msg_new(a, &runtime__v1__pod_sandbox_attributes__descriptor);
	Runtime__V1__PodSandboxMetadata *md =
		dk_msg_new(a, &runtime__v1__pod_sandbox_metadata__descriptor);
	Runtime__V1__LinuxPodSandboxStats *ls =
		dk_msg_new(a, &runtime__v1__linux_pod_sandbox_stats__descriptor);
	if (!st || !at || !md || !ls || !id)
		return NULL;
	at->id = dk_arena_strdup(a, id);
	if (dk_meta_parse(a, labels, si->name, &md->name, &md->uid, &md->namespace_, &md->attempt) <
		    0 ||
	    dk_labels_to_cri(a, labels,
			     &runtime__v1__pod_sandbox_attributes__labels_entry__descriptor,
			     &at->n_labels, (void ***)&at->labels,
			     &runtime__v1__pod_sandbox_attributes__annotations_entry__descriptor,
			     &at->n_annotations, (void ***)&at->annotations) < 0)
		return NULL;
	at->metadata = md;
	st->attributes = at;
	st->linux = ls;

	/* The pod's usage: the pause container's plus its containers'. */
	int64_t ts = dk_realtime_ns();
	struct dk_cgroup_sample total = {0}, s = {0};
	int pid = si->pid;
	if (pid > 0 && dk_cgroup_cache_read(c->ds->cgroups, id, pid, &total) < 0)
		total = (struct dk_cgroup_sample){0};
	{
		for (size_t i = 0; i < n_list; i++) {
			_cleanup_json_ json_object *inspect = NULL;
			struct cinfo ci;
			if (info_of(c, list[i], &inspect, &ci) < 0)
				continue;
			Runtime__V1__ContainerStats *cs = container_stats(c, &ci, &s);
			if (!cs || DK_PUSH(a, &ls->n_containers, &ls->containers, cs) < 0)
				return NULL;
			total.has_cpu |= s.has_cpu;
			total.has_memory |= s.has_memory;
			total.has_pids |= s.has_pids;
			total.cpu_ns += s.cpu_ns;
			total.mem_usage += s.mem_usage;
			total.mem_working_set += s.mem_working_set;
			total.mem_rss += s.mem_rss;
			total.pgfault += s.pgfault;
			total.pgmajfault += s.pgmajfault;
			total.pids += s.pids;
		}
	}
	total.mem_limit = 0; /* containers' limits do not add up to the pod's */
	char key[96];
	snprintf(key, sizeof(key), "pod:%s", id);
	ls->cpu = cpu_usage(c, key, ts, &total);
	ls->memory = memory_usage(c, ts, &total);
	Runtime__V1__ProcessUsage *pu = dk_msg_new(a, &runtime__v1__process_usage__descriptor);
	if (!ls->cpu || !ls->memory || !pu)
		return NULL;
	pu->timestamp = ts;
	if (total.has_pids)
		pu->process_count = u64(a, total.pids);
	ls->process = pu;

	if (pid > 0 && !streq(si->netmode, "host")) {
		struct dk_if_stats *ifs = NULL;
		size_t n = 0;
		if (dk_proc_net_dev(pid, &ifs, &n, NULL) == 0) {
			Runtime__V1__NetworkUsage *nu =
				dk_msg_new(a, &runtime__v1__network_usage__descriptor);
			if (!nu) {
				free(ifs);
				return NULL;
			}
			nu->timestamp = ts;
			for (size_t i = 0; i < n; i++) {
				Runtime__V1__NetworkInterfaceUsage *u = if_usage(a, &ifs[i]);
				if (!u)
					break;
				if (streq(ifs[i].name, "eth0"))
					nu->default_interface = u;
				else
					DK_PUSH(a, &nu->n_interfaces, &nu->interfaces, u);
			}
			free(ifs);
			ls->network = nu;
		}
	}
	return st;
}

int dk_pod_sandbox_stats(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			 struct crx_err *err)
{
	const Runtime__V1__PodSandboxStatsRequest *in = (const void *)req;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->pod_sandbox_id, DK_TYPE_SANDBOX, &inspect, err);
	if (r < 0)
		return r;
	Runtime__V1__PodSandboxStatsResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__pod_sandbox_stats_response__descriptor);
	struct cinfo si = from_inspect(inspect);
	_cleanup_json_ json_object *list = NULL;
	r = running_containers(c, si.id, NULL, 0, NULL, &list, err);
	if (r < 0)
		return r;
	size_t n = json_object_array_length(list);
	json_object **mine = dk_arena_alloc(&c->arena, (n ? n : 1) * sizeof(*mine));
	for (size_t i = 0; mine && i < n; i++)
		mine[i] = json_object_array_get_idx(list, i);
	if (!out || !mine || !(out->stats = pod_stats(c, &si, mine, n)))
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

struct by_pod {
	const char *sandbox;
	json_object *entry;
};

static int by_pod_cmp(const void *a, const void *b)
{
	return strcmp(((const struct by_pod *)a)->sandbox, ((const struct by_pod *)b)->sandbox);
}

int dk_list_pod_sandbox_stats(struct dk_ctx *c, const ProtobufCMessage *req,
			      ProtobufCMessage **resp, struct crx_err *err)
{
	const Runtime__V1__ListPodSandboxStatsRequest *in = (const void *)req;
	const Runtime__V1__PodSandboxStatsFilter *f = in->filter;
	_cleanup_json_ json_object *list = NULL, *containers = NULL;
	int r = dk_list(c, DK_TYPE_SANDBOX, NULL, &list, err);
	if (r == 0)
		r = running_containers(c, NULL, NULL, 0, NULL, &containers, err);
	if (r < 0)
		return r;
	/* Every running container once, sorted by its sandbox: each pod finds
	 * its own by binary search, not by a walk over all of them. */
	size_t n_c = json_object_array_length(containers);
	struct by_pod *idx = dk_arena_alloc(&c->arena, (n_c ? n_c : 1) * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < n_c; i++) {
		json_object *e = json_object_array_get_idx(containers, i);
		idx[i] = (struct by_pod){
			dk_json_str(dk_json_get(e, "Labels", NULL), DK_LABEL_SANDBOX_ID) ?: "", e};
	}
	qsort(idx, n_c, sizeof(*idx), by_pod_cmp);
	Runtime__V1__ListPodSandboxStatsResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__list_pod_sandbox_stats_response__descriptor);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *e = json_object_array_get_idx(list, i);
		const char *id = dk_json_str(e, "Id");
		if (!id || !streq(dk_json_str(e, "State"), "running") ||
		    !id_matches(id, f ? f->id : NULL) ||
		    (f && !dk_labels_match(dk_json_get(e, "Labels", NULL), f->n_label_selector,
					   (void *const *)f->label_selector)))
			continue;
		_cleanup_json_ json_object *inspect = NULL;
		struct cinfo si;
		if (info_of(c, e, &inspect, &si) < 0)
			continue;
		size_t lo = 0, hi = n_c;
		while (lo < hi) { /* the first container of this pod */
			size_t mid = (lo + hi) / 2;
			if (strcmp(idx[mid].sandbox, id) < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		size_t end = lo;
		while (end < n_c && streq(idx[end].sandbox, id))
			end++;
		json_object **mine = dk_arena_alloc(&c->arena, (end - lo + 1) * sizeof(*mine));
		for (size_t k = lo; mine && k < end; k++)
			mine[k - lo] = idx[k].entry;
		Runtime__V1__PodSandboxStats *st = mine ? pod_stats(c, &si, mine, end - lo) : NULL;
		if (!st || DK_PUSH(&c->arena, &out->n_stats, &out->stats, st) < 0)
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}
