/* The dockershim's state shared by its CRI handlers: locks, the cgroup
 * driver, and the lookups every handler makes. */
#include "config.h"

#include "runtimes/docker/shim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/state.h"

struct dk_spec_opts dk_spec_opts(struct dk_shim *ds, int64_t created_ns)
{
	return (struct dk_spec_opts){
		.cgroup_driver = ds->cgroup_driver[0] ? ds->cgroup_driver : "cgroupfs",
		.oom_score_adj_min = ds->oom_score_adj_min,
		.cap_bounding = ds->cap_bounding,
		.caps_restricted = ds->caps_restricted,
		.log_max_size = ds->log_max_size,
		.log_max_files = ds->log_max_files,
		.created_ns = created_ns,
	};
}

const char *dk_cgroup_driver(struct dk_ctx *c)
{
	struct dk_shim *ds = c->ds;
	pthread_mutex_lock(&ds->lock);
	bool known = ds->cgroup_driver[0] != '\0';
	pthread_mutex_unlock(&ds->lock);
	if (!known) {
		_cleanup_json_ json_object *info = NULL;
		if (dk_call(ds->sock, "GET", "/info", NULL, &c->dl, &info, NULL, NULL) == 0) {
			const char *d = dk_json_str(info, "CgroupDriver");
			const char *root = dk_json_str(info, "DockerRootDir");
			pthread_mutex_lock(&ds->lock);
			snprintf(ds->cgroup_driver, sizeof(ds->cgroup_driver), "%s",
				 d && *d ? d : "cgroupfs");
			if (!ds->docker_root && root && root[0] == '/')
				ds->docker_root = strdup(root);
			pthread_mutex_unlock(&ds->lock);
		}
	}
	return ds->cgroup_driver[0] ? ds->cgroup_driver : "cgroupfs";
}

char *dk_json_log_path(struct dk_ctx *c, const char *id)
{
	dk_cgroup_driver(c);
	struct dk_shim *ds = c->ds;
	char *path = NULL;
	pthread_mutex_lock(&ds->lock);
	if (ds->docker_root &&
	    asprintf(&path, "%s/containers/%s/%s-json.log", ds->docker_root, id, id) < 0)
		path = NULL;
	pthread_mutex_unlock(&ds->lock);
	return path;
}

struct dk_held {
	struct dk_held *next;
	char key[];
};

void dk_keylocks_init(struct dk_keylocks *k)
{
	pthread_mutex_init(&k->lock, NULL);
	pthread_cond_init(&k->released, NULL);
	k->held = NULL;
}

void dk_keylocks_destroy(struct dk_keylocks *k)
{
	while (k->held) {
		struct dk_held *h = k->held;
		k->held = h->next;
		free(h);
	}
	pthread_cond_destroy(&k->released);
	pthread_mutex_destroy(&k->lock);
}

static struct dk_held **find_held(struct dk_keylocks *k, const char *key)
{
	struct dk_held **p = &k->held;
	while (*p && !streq((*p)->key, key))
		p = &(*p)->next;
	return p;
}

static void key_lock(struct dk_keylocks *k, const char *key)
{
	size_t len = strlen(key);
	struct dk_held *h;
	while (!(h = malloc(sizeof(*h) + len + 1)))
		usleep(1000); /* out of memory: a lock cannot fail, so wait */
	memcpy(h->key, key, len + 1);
	pthread_mutex_lock(&k->lock);
	while (*find_held(k, key))
		pthread_cond_wait(&k->released, &k->lock);
	h->next = k->held;
	k->held = h;
	pthread_mutex_unlock(&k->lock);
}

static void key_unlock(struct dk_keylocks *k, const char *key)
{
	pthread_mutex_lock(&k->lock);
	struct dk_held **p = find_held(k, key), *h = *p;
	if (h) {
		*p = h->next;
		free(h);
	}
	pthread_cond_broadcast(&k->released);
	pthread_mutex_unlock(&k->lock);
}

void dk_sandbox_lock(struct dk_shim *ds, const char *id)
{
	key_lock(&ds->sandbox_locks, id);
}

void dk_sandbox_unlock(struct dk_shim *ds, const char *id)
{
	key_unlock(&ds->sandbox_locks, id);
}

void dk_name_lock(struct dk_shim *ds, const char *name)
{
	key_lock(&ds->name_locks, name);
}

void dk_name_unlock(struct dk_shim *ds, const char *name)
{
	key_unlock(&ds->name_locks, name);
}

int dk_inspect_typed(struct dk_ctx *c, const char *id, const char *type, json_object **out,
		     struct crx_err *err)
{
	const char *what = streq(type, DK_TYPE_SANDBOX) ? "sandbox" : "container";
	if (!id || !*id)
		return crx_err_set(err, -EINVAL, "no %s ID given", what);
	if (!dk_valid_id(id))
		return crx_err_set(err, -ENOENT, "%s %s not found", what, id);
	json_object *o = NULL;
	if (c->ds->state && dk_state_inspect(c->ds->state, id, type, &o) == 0) {
		*out = o;
		return 0;
	}
	int r = dk_container_inspect(c->ds->sock, id, &c->dl, &o, err);
	if (r == -ENOENT)
		return crx_err_set(err, -ENOENT, "%s %s not found", what, id);
	if (r < 0)
		return r;
	if (!streq(dk_json_str(dk_json_get(o, "Config", "Labels", NULL), DK_LABEL_TYPE), type)) {
		json_object_put(o);
		return crx_err_set(err, -ENOENT, "%s %s not found", what, id);
	}
	*out = o;
	return 0;
}

int dk_inspect_ident(struct dk_ctx *c, const char *id, const char *type, json_object **out,
		     struct crx_err *err)
{
	if (id && dk_valid_id(id) && dk_state_inspect_ident(c->ds->state, id, type, out) == 0)
		return 0;
	return dk_inspect_typed(c, id, type, out, err);
}

int dk_full_id(struct dk_ctx *c, const char *id, const char *type, const char **out,
	       struct crx_err *err)
{
	_cleanup_free_ char *cached = NULL;
	_cleanup_json_ json_object *inspect = NULL;
	if (!id || !dk_valid_id(id) || dk_state_full_id(c->ds->state, id, type, &cached) < 0) {
		int r = dk_inspect_typed(c, id, type, &inspect, err);
		if (r < 0)
			return r;
	}
	const char *full = cached ? cached : dk_json_str(inspect, "Id");
	if (!full || !dk_valid_id(full))
		return crx_err_set(err, -EPROTO, "dockerd gave no valid ID for %s", id);
	*out = dk_arena_strdup(&c->arena, full);
	return *out ? 0 : crx_err_set(err, -ENOMEM, "out of memory");
}

int dk_list(struct dk_ctx *c, const char *type, const char *sandbox_id, json_object **out,
	    struct crx_err *err)
{
	if (c->ds->state && dk_state_list(c->ds->state, type, sandbox_id, out) == 0)
		return 0;
	_cleanup_json_ json_object *filters =
		sandbox_id && *sandbox_id ? dk_filters(type, NULL, DK_LABEL_SANDBOX_ID, sandbox_id)
					  : dk_filters(type, NULL, NULL, NULL);
	if (!filters)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return dk_container_list(c->ds->sock, filters, &c->dl, out, err);
}

json_object *dk_filters(const char *type, const char *id, const char *label, const char *value)
{
	json_object *f = json_object_new_object(), *labels = json_object_new_array();
	_cleanup_free_ char *t = NULL, *extra = NULL;
	if (asprintf(&t, "%s=%s", DK_LABEL_TYPE, type) < 0)
		t = NULL;
	int r = dk_json_add(f, "label", labels);
	r |= t ? dk_json_append_str(labels, t) : -ENOMEM;
	if (label) {
		if (asprintf(&extra, "%s=%s", label, value) < 0)
			extra = NULL;
		r |= extra ? dk_json_append_str(labels, extra) : -ENOMEM;
	}
	if (id && *id) {
		json_object *ids = json_object_new_array();
		r |= dk_json_add(f, "id", ids);
		r |= dk_json_append_str(ids, id);
	}
	if (r && f) {
		json_object_put(f);
		f = NULL;
	}
	return f;
}

int64_t dk_created_ns(json_object *labels, json_object *container)
{
	const char *s = dk_json_str(labels, DK_LABEL_CREATED);
	if (s) {
		long long v = strtoll(s, NULL, 10);
		if (v > 0)
			return v;
	}
	json_object *created = dk_json_get(container, "Created", NULL);
	if (created && json_object_is_type(created, json_type_int))
		return json_object_get_int64(created) * 1000000000; /* list: seconds */
	return dk_parse_time(dk_json_str(container, "Created"));
}

int dk_packed_add(struct dk_packed *p, const void *data, size_t len)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 64;
		ProtobufCMessageUnknownField *more = realloc(p->fields, cap * sizeof(*more));
		if (!more)
			return -ENOMEM;
		p->fields = more;
		p->cap = cap;
	}
	/* protobuf-c keeps a length-delimited unknown field with its length
	 * prefix, and packs it back as it is. */
	uint8_t *copy = dk_arena_alloc(&p->c->arena, len + 10);
	if (!copy)
		return -ENOMEM;
	size_t k = 0;
	for (uint64_t v = len;; v >>= 7) {
		copy[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		if (v <= 0x7f)
			break;
	}
	memcpy(copy + k, data, len);
	p->fields[p->n++] =
		(ProtobufCMessageUnknownField){.tag = p->tag,
					       .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
					       .len = k + len,
					       .data = copy};
	return 0;
}

int dk_packed_make(struct dk_ctx *c, const ProtobufCMessage *msg, uint8_t **data, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(msg);
	*data = dk_arena_alloc(&c->arena, *len ? *len : 1);
	if (!*data)
		return -ENOMEM;
	protobuf_c_message_pack(msg, *data);
	return 0;
}

int dk_packed_finish(struct dk_packed *p, ProtobufCMessage *reply)
{
	ProtobufCMessageUnknownField *f =
		dk_arena_alloc(&p->c->arena, (p->n ? p->n : 1) * sizeof(*f));
	if (!f)
		return -ENOMEM;
	if (p->n)
		memcpy(f, p->fields, p->n * sizeof(*f));
	reply->n_unknown_fields = (unsigned)p->n;
	reply->unknown_fields = f;
	dk_packed_clear(p);
	return 0;
}

void dk_packed_clear(struct dk_packed *p)
{
	free(p->fields);
	p->fields = NULL;
	p->n = p->cap = 0;
}
