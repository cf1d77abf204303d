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

/* Stats of one inspected container; *sample gets its cgroup reading for
 * pod totals. */
static Runtime__V1__ContainerStats *container_stats(struct dk_ctx *c, json_object *inspect,
						    struct dk_cgroup_sample *sample)
{
	struct dk_arena *a = &c->arena;
	int64_t ts = dk_realtime_ns();
	const char *id = dk_json_str(inspect, "Id");
	json_object *labels = dk_json_get(inspect, "Config", "Labels", NULL);
	Runtime__V1__ContainerStats *st = dk_msg_new(a, &runtime__v1__container_stats__descriptor);
	Runtime__V1__ContainerAttributes *at =
		dk_msg_new(a, &runtime__v1__container_attributes__descriptor);
	Runtime__V1__ContainerMetadata *md =
		dk_msg_new(a, &runtime__v1__container_metadata__descriptor);
	if (!st || !at || !md || !id)
		return NULL;
	at->id = dk_arena_strdup(a, id);
	if (dk_meta_parse(a, labels, dk_json_str(inspect, "Name"), &md->name, NULL, NULL,
			  &md->attempt) < 0)
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
	int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
	if (pid > 0)
		dk_cgroup_read(pid, &s, NULL);
	if (sample)
		*sample = s;
	st->cpu = cpu_usage(c, id, ts, &s);
	st->memory = memory_usage(c, ts, &s);
	if (!st->cpu || !st->memory)
		return NULL;

	const char *upper =
		dk_json_str(dk_json_get(inspect, "GraphDriver", "Data", NULL), "UpperDir");
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
	if (!out || !(out->stats = container_stats(c, inspect, NULL)))
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
	_cleanup_json_ json_object *filters =
		sandbox_id && *sandbox_id
			? dk_filters(DK_TYPE_CONTAINER, NULL, DK_LABEL_SANDBOX_ID, sandbox_id)
			: dk_filters(DK_TYPE_CONTAINER, NULL, NULL, NULL);
	_cleanup_json_ json_object *list = NULL;
	int r = filters ? dk_container_list(c->ds->sock, filters, &c->dl, &list, err)
			: crx_err_set(err, -ENOMEM, "out of memory");
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
		const char *id = dk_json_str(json_object_array_get_idx(list, i), "Id");
		if (!id || dk_container_inspect(c->ds->sock, id, &c->dl, &inspect, NULL) < 0)
			continue; /* gone meanwhile */
		Runtime__V1__ContainerStats *st = container_stats(c, inspect, NULL);
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

static Runtime__V1__PodSandboxStats *pod_stats(struct dk_ctx *c, json_object *sandbox)
{
	struct dk_arena *a = &c->arena;
	const char *id = dk_json_str(sandbox, "Id");
	json_object *labels = dk_json_get(sandbox, "Config", "Labels", NULL);
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
	if (dk_meta_parse(a, labels, dk_json_str(sandbox, "Name"), &md->name, &md->uid,
			  &md->namespace_, &md->attempt) < 0 ||
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
	int pid = (int)dk_json_int(dk_json_get(sandbox, "State", NULL), "Pid", 0);
	if (pid > 0 && dk_cgroup_read(pid, &total, NULL) < 0)
		total = (struct dk_cgroup_sample){0};
	_cleanup_json_ json_object *list = NULL;
	if (running_containers(c, id, NULL, 0, NULL, &list, NULL) == 0) {
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			_cleanup_json_ json_object *inspect = NULL;
			const char *cid = dk_json_str(json_object_array_get_idx(list, i), "Id");
			if (!cid ||
			    dk_container_inspect(c->ds->sock, cid, &c->dl, &inspect, NULL) < 0)
				continue;
			Runtime__V1__ContainerStats *cs = container_stats(c, inspect, &s);
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

	if (pid > 0 &&
	    !streq(dk_json_str(dk_json_get(sandbox, "HostConfig", NULL), "NetworkMode"), "host")) {
		char netns[64];
		snprintf(netns, sizeof(netns), "/proc/%d/ns/net", pid);
		struct dk_if_stats *ifs = NULL;
		size_t n = 0;
		if (dk_netns_if_stats(netns, &ifs, &n, NULL) == 0) {
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
	if (!out || !(out->stats = pod_stats(c, inspect)))
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

int dk_list_pod_sandbox_stats(struct dk_ctx *c, const ProtobufCMessage *req,
			      ProtobufCMessage **resp, struct crx_err *err)
{
	const Runtime__V1__ListPodSandboxStatsRequest *in = (const void *)req;
	const Runtime__V1__PodSandboxStatsFilter *f = in->filter;
	_cleanup_json_ json_object *filters = dk_filters(DK_TYPE_SANDBOX, NULL, NULL, NULL);
	_cleanup_json_ json_object *list = NULL;
	int r = filters ? dk_container_list(c->ds->sock, filters, &c->dl, &list, err)
			: crx_err_set(err, -ENOMEM, "out of memory");
	if (r < 0)
		return r;
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
		if (dk_container_inspect(c->ds->sock, id, &c->dl, &inspect, NULL) < 0)
			continue;
		Runtime__V1__PodSandboxStats *st = pod_stats(c, inspect);
		if (!st || DK_PUSH(&c->arena, &out->n_stats, &out->stats, st) < 0)
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}
