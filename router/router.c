#include "config.h"

#include "router/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/merge.h"
#include "cri/wire.h"

#define FANOUT_THREADS     64
#define REBUILD_TIMEOUT_MS 10000
/* A create goes on this long after its client gave up (the kubelet's
 * runtime request timeout), so that the retry gets what it made. */
#define CREATE_DETACH_MS 120000

/* Methods whose route is not just "the owner of the ID it names". */
static const struct {
	const char *name;
	enum route route;
} named_routes[] = {
	{"Version", ROUTE_VERSION},
	{"RunPodSandbox", ROUTE_RUN_SANDBOX},
	{"CreateContainer", ROUTE_CREATE_CONTAINER},
	{"ListPodSandbox", ROUTE_LIST},
	{"ListContainers", ROUTE_LIST},
	{"ListContainerStats", ROUTE_LIST},
	{"ListPodSandboxStats", ROUTE_LIST},
	{"ListPodSandboxMetrics", ROUTE_LIST},
	{"StreamPodSandboxes", ROUTE_STREAM_LIST},
	{"StreamContainers", ROUTE_STREAM_LIST},
	{"StreamContainerStats", ROUTE_STREAM_LIST},
	{"StreamPodSandboxStats", ROUTE_STREAM_LIST},
	{"StreamPodSandboxMetrics", ROUTE_STREAM_LIST},
	{"GetContainerEvents", ROUTE_EVENTS},
	{"Status", ROUTE_STATUS},
	{"UpdateRuntimeConfig", ROUTE_ALL},
	{"RuntimeConfig", ROUTE_DEFAULT},
	{"ListMetricDescriptors", ROUTE_METRIC_DESCRIPTORS},
	{"PullImage", ROUTE_IMAGE_PULL},
	{"ImageStatus", ROUTE_IMAGE_STATUS},
	{"RemoveImage", ROUTE_IMAGE_REMOVE},
	{"ListImages", ROUTE_IMAGE_LIST},
	{"StreamImages", ROUTE_IMAGE_STREAM},
	{"ImageFsInfo", ROUTE_IMAGE_FS},
};

/* Every other method that names a container or a sandbox goes to its owner:
 * the route follows from the request's fields, so a new method of that kind
 * is routed without a change here. */
static enum route route_of(const struct cri_method *m, uint32_t *id_field)
{
	*id_field = 0;
	const ProtobufCFieldDescriptor *f;
	if ((f = protobuf_c_message_descriptor_get_field_by_name(m->request, "container_id")))
		*id_field = f->id;
	else if ((f = protobuf_c_message_descriptor_get_field_by_name(m->request,
								      "pod_sandbox_id")))
		*id_field = f->id;
	for (size_t i = 0; i < ARRAY_SIZE(named_routes);
	     i++) /* names are unique across both services */
		if (streq(named_routes[i].name, m->name))
			return named_routes[i].route;
	if (!*id_field || f->type != PROTOBUF_C_TYPE_STRING) {
		*id_field = 0;
		return ROUTE_DEFAULT;
	}
	return streq(f->name, "container_id") ? ROUTE_CONTAINER : ROUTE_SANDBOX;
}

/* prev's backend configured as cfg, or NULL. */
static struct backend *carried(struct router *prev, const struct crx_backend_config *cfg)
{
	for (size_t i = 0; prev && i < prev->n_backends; i++)
		if (backend_config_same(&prev->cfg->backends[i], cfg))
			return prev->backends[i];
	return NULL;
}

int router_new(const struct crx_config *cfg, struct router **out, struct crx_err *err)
{
	return router_renew(cfg, NULL, out, err);
}

int router_renew(const struct crx_config *cfg, struct router *prev, struct router **out,
		 struct crx_err *err)
{
	struct router *r = calloc(1, sizeof(*r));
	size_t n_methods = cri_method_count();
	if (!r || !(r->backends = calloc(cfg->n_backends, sizeof(*r->backends))) ||
	    !(r->handlers = calloc(cfg->n_handlers + 1, sizeof(*r->handlers))) ||
	    !(r->routes = calloc(n_methods, sizeof(*r->routes))) ||
	    !(r->id_fields = calloc(n_methods, sizeof(*r->id_fields))) ||
	    owners_new(&r->owners) < 0 ||
	    (prev ? !(r->creates = creates_ref(prev->creates)) : creates_new(&r->creates) < 0) ||
	    workers_new(FANOUT_THREADS, &r->fanout) < 0) {
		router_free(r);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	r->cfg = cfg;
	for (size_t i = 0; i < n_methods; i++)
		r->routes[i] = route_of(cri_method_at(i), &r->id_fields[i]);
	for (size_t i = 0; i < cfg->n_backends; i++) {
		struct backend *same = carried(prev, &cfg->backends[i]);
		if (same) {
			r->backends[i] = backend_ref(same);
			r->n_backends++;
			continue;
		}
		int ret = backend_open(&cfg->backends[i], &r->backends[i], err);
		if (ret < 0) {
			router_free(r);
			return ret;
		}
		r->n_backends++;
	}
	r->default_handler = -1;
	for (size_t i = 0; i < cfg->n_handlers; i++) {
		const struct crx_handler_config *h = &cfg->handlers[i];
		unsigned backend = 0;
		while (!streq(cfg->backends[backend].name, h->backend))
			backend++; /* the configuration was validated */
		r->handlers[i] = (struct route_handler){
			.name = h->name,
			.backend = backend,
			.runtime_handler = h->runtime_handler,
			.policy = h->policy,
			.kata = &h->kata,
		};
		r->renames |= !streq(h->name, h->runtime_handler);
		r->tracks_owners |= h->policy != CRX_POLICY_NONE;
		if (streq(h->name, cfg->default_handler)) {
			r->default_handler = (int)i;
			r->default_backend = backend;
		}
		r->n_handlers++;
	}
	r->tracks_owners |= r->n_backends > 1;
	if (event_hub_new(r, &r->events) < 0) {
		router_free(r);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	/* When every backend relays over gRPC, fan-outs run on the event thread. */
	r->channels = calloc(r->n_backends, sizeof(*r->channels));
	for (size_t i = 0; r->channels && i < r->n_backends; i++) {
		struct backend *b = r->backends[i];
		if (!b->ops->channel || !(r->channels[i] = b->ops->channel(b))) {
			free(r->channels);
			r->channels = NULL;
		}
	}
	*out = r;
	return 0;
}

void router_free(struct router *r)
{
	if (!r)
		return;
	event_hub_free(r->events); /* its streams before their backends */
	workers_free(r->fanout);
	for (size_t i = 0; i < r->n_backends; i++)
		backend_free(r->backends[i]);
	owners_free(r->owners);
	creates_free(r->creates);
	free(r->backends);
	free(r->channels);
	free(r->handlers);
	free(r->routes);
	free(r->id_fields);
	free(r);
}

static void serve(struct router *r, size_t backend, struct rpc_call *call,
		  const struct cri_method *m, const struct backend_serve *how)
{
	struct backend *b = r->backends[backend];
	rpc_call_tag_backend(call, b->name);
	b->ops->serve(b, call, m, how);
}

static int find_handler(struct router *r, const char *name)
{
	for (size_t i = 0; i < r->n_handlers; i++)
		if (streq(r->handlers[i].name, name))
			return (int)i;
	return -1;
}

static void fail_unknown_handler(struct router *r, struct rpc_call *call, const char *what,
				 const char *name)
{
	char names[512] = "";
	for (size_t i = 0; i < r->n_handlers; i++)
		snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s%s",
			 i ? ", " : "", r->handlers[i].name,
			 (int)i == r->default_handler ? " (default)" : "");
	rpc_call_fail(call, RPC_INVALID_ARGUMENT,
		      "%s: RuntimeClass handler \"%s\" is not configured in crimux; the handlers "
		      "are: %s",
		      what, name, names);
}

/* ---------------------------------------------------------------- learning */

struct learn {
	struct router *r;
	struct rpc_call *call; /* a create: tagged with the new ID */
	enum owner_kind kind;
	uint32_t id_field; /* of the new object's ID in a create's reply */
	struct owner owner;
	char *id;      /* a create: the new container's pod; a remove: the object */
	char *pod_uid; /* a new sandbox's pod UID */
};

static struct learn *learn_new(struct router *r, enum owner_kind kind, uint32_t id_field,
			       struct owner owner, const char *id)
{
	struct learn *l = calloc(1, sizeof(*l));
	if (!l || (id && !(l->id = strdup(id)))) {
		free(l);
		return NULL;
	}
	l->r = r;
	l->kind = kind;
	l->id_field = id_field;
	l->owner = owner;
	return l;
}

static void learn_free(struct learn *l)
{
	free(l->id);
	free(l->pod_uid);
	free(l);
}

/* The reply to a create names the new object: remember its owner. */
static void learn_created(int code, const uint8_t *reply, size_t len, void *arg)
{
	struct learn *l = arg;
	_cleanup_free_ char *id = NULL;
	if (code == RPC_OK && wire_find_string(reply, len, l->id_field, &id) > 0 && *id) {
		owners_add(l->r->owners, l->kind, id, l->id, l->owner);
		if (l->kind == OWNER_SANDBOX)
			rpc_call_tag(l->call, NULL, id, NULL);
		else
			rpc_call_tag(l->call, NULL, NULL, id);
		if (l->pod_uid && *l->pod_uid)
			owners_add(l->r->owners, OWNER_POD_UID, l->pod_uid, NULL, l->owner);
	}
	learn_free(l);
}

/* A successful remove: forget the object (a pod takes its containers). */
static void learn_removed(int code, const uint8_t *reply, size_t len, void *arg)
{
	struct learn *l = arg;
	if (code == RPC_OK) {
		owners_remove(l->r->owners, l->kind, l->id);
		creates_forget(l->r->creates, l->id);
	}
	learn_free(l);
}

static uint32_t reply_field(const struct cri_method *m, const char *name)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->response, name);
	return f ? f->id : 0;
}

static void learn_sandboxes(struct router *r, size_t backend,
			    const Runtime__V1__ListPodSandboxResponse *list)
{
	for (size_t i = 0; i < list->n_items; i++) {
		const Runtime__V1__PodSandbox *p = list->items[i];
		const char *name = router_handler_name(r, backend, p->runtime_handler);
		struct owner o = {.backend = (unsigned)backend,
				  .handler = name ? find_handler(r, name) : -1};
		owners_add(r->owners, OWNER_SANDBOX, p->id, NULL, o);
		if (p->metadata && p->metadata->uid && *p->metadata->uid)
			owners_add(r->owners, OWNER_POD_UID, p->metadata->uid, NULL, o);
		if (p->metadata) {
			_cleanup_free_ char *key =
				creates_sandbox_key(p->metadata->namespace_, p->metadata->name,
						    p->metadata->uid, p->metadata->attempt);
			if (key)
				creates_learn(r->creates, key, p->id);
		}
	}
}

static int resolve(struct router *r, enum owner_kind kind, const char *id, struct rpc_call *parent,
		   unsigned timeout_ms, struct crx_err *err);

/* A container runs under its pod's handler, and one learned without it
 * would escape its pod's policy. At start-up (no parent call) a container of
 * a pod crimux does not know (its backend did not answer that list) is left
 * to be looked up when a call names it; then its pod is asked for first, and
 * if no backend can say, the container is kept with no handler, which
 * admit_owned() does not let through. */
static void learn_containers(struct router *r, size_t backend,
			     const Runtime__V1__ListContainersResponse *list,
			     struct rpc_call *parent)
{
	for (size_t i = 0; i < list->n_containers; i++) {
		const Runtime__V1__Container *c = list->containers[i];
		struct owner o = {.backend = (unsigned)backend, .handler = -1}, pod;
		struct crx_err ignored;
		bool known =
			owners_find(r->owners, OWNER_SANDBOX, c->pod_sandbox_id, &pod, NULL) == 0;
		if (!known && !parent)
			continue;
		if (!known && *c->pod_sandbox_id &&
		    resolve(r, OWNER_SANDBOX, c->pod_sandbox_id, parent, 0, &ignored) == 0)
			known = owners_find(r->owners, OWNER_SANDBOX, c->pod_sandbox_id, &pod,
					    NULL) == 0;
		if (known)
			o.handler = pod.handler;
		owners_add(r->owners, OWNER_CONTAINER, c->id, c->pod_sandbox_id, o);
		if (c->metadata) {
			_cleanup_free_ char *key = creates_container_key(
				c->pod_sandbox_id, c->metadata->name, c->metadata->attempt);
			if (key)
				creates_learn(r->creates, key, c->id);
		}
	}
}

/* Asks every backend for the object, and learns whatever they list. */
static int resolve(struct router *r, enum owner_kind kind, const char *id, struct rpc_call *parent,
		   unsigned timeout_ms, struct crx_err *err)
{
	bool sandbox = kind == OWNER_SANDBOX;
	Runtime__V1__PodSandboxFilter sf = RUNTIME__V1__POD_SANDBOX_FILTER__INIT;
	Runtime__V1__ContainerFilter cf = RUNTIME__V1__CONTAINER_FILTER__INIT;
	Runtime__V1__ListPodSandboxRequest sreq = RUNTIME__V1__LIST_POD_SANDBOX_REQUEST__INIT;
	Runtime__V1__ListContainersRequest creq = RUNTIME__V1__LIST_CONTAINERS_REQUEST__INIT;
	sf.id = cf.id = (char *)id;
	sreq.filter = *id ? &sf : NULL;
	creq.filter = *id ? &cf : NULL;
	const ProtobufCMessage *msg = sandbox ? &sreq.base : &creq.base;
	uint8_t buf[512];
	struct rpc_buf req = {buf, protobuf_c_message_get_packed_size(msg)};
	if (req.len > sizeof(buf))
		return crx_err_set(err, -EINVAL, "ID \"%.64s...\" is too long", id);
	protobuf_c_message_pack(msg, buf);
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	if (!results)
		return crx_err_set(err, -ENOMEM, "out of memory");
	fanout_call(r,
		    sandbox ? "/runtime.v1.RuntimeService/ListPodSandbox"
			    : "/runtime.v1.RuntimeService/ListContainers",
		    &req, parent, timeout_ms, results);
	int ret = -ENOENT;
	for (size_t i = 0; i < r->n_backends; i++) {
		const struct rpc_result *res = &results[i];
		if (res->code != RPC_OK) {
			if (ret == -ENOENT)
				ret = crx_err_set(
					err, -EHOSTDOWN,
					"backend %s, which may hold %s \"%s\", did not answer: %s",
					r->backends[i]->name, sandbox ? "pod sandbox" : "container",
					id, res->details ? res->details : rpc_code_name(res->code));
			continue;
		}
		if (sandbox) {
			Runtime__V1__ListPodSandboxResponse *l =
				runtime__v1__list_pod_sandbox_response__unpack(NULL, res->reply.len,
									       res->reply.data);
			if (l && l->n_items && *id)
				ret = 0;
			if (l)
				learn_sandboxes(r, i, l);
			runtime__v1__list_pod_sandbox_response__free_unpacked(l, NULL);
		} else {
			Runtime__V1__ListContainersResponse *l =
				runtime__v1__list_containers_response__unpack(NULL, res->reply.len,
									      res->reply.data);
			if (l && l->n_containers && *id)
				ret = 0;
			if (l)
				learn_containers(r, i, l, parent);
			runtime__v1__list_containers_response__free_unpacked(l, NULL);
		}
	}
	results_clear(r, results);
	return ret;
}

int router_rebuild(struct router *r, struct router_census *census, struct crx_err *err)
{
	*census = (struct router_census){0};
	if (r->tracks_owners) {
		struct crx_err ignored;
		resolve(r, OWNER_SANDBOX, "", NULL, REBUILD_TIMEOUT_MS, &ignored);
		resolve(r, OWNER_CONTAINER, "", NULL, REBUILD_TIMEOUT_MS, &ignored);
		census->sandboxes = owners_count(r->owners, OWNER_SANDBOX);
		census->containers = owners_count(r->owners, OWNER_CONTAINER);
	}

	/* The kubelet reads one cgroup driver for the node: backends must agree.
	 * Backends too old for RuntimeConfig say nothing and are not counted. */
	Runtime__V1__RuntimeConfigRequest creq = RUNTIME__V1__RUNTIME_CONFIG_REQUEST__INIT;
	uint8_t buf[16];
	struct rpc_buf req = {buf, runtime__v1__runtime_config_request__pack(&creq, buf)};
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	if (!results)
		return crx_err_set(err, -ENOMEM, "out of memory");
	fanout_call(r, "/runtime.v1.RuntimeService/RuntimeConfig", &req, NULL, REBUILD_TIMEOUT_MS,
		    results);
	int driver = -1, ret = 0;
	size_t first = 0;
	char *unreachable = NULL;
	size_t size = 0;
	FILE *names = open_memstream(&unreachable, &size);
	for (size_t i = 0; i < r->n_backends; i++) {
		const struct rpc_result *f = &results[i];
		if (f->code == RPC_UNAVAILABLE || f->code == RPC_DEADLINE_EXCEEDED) {
			if (names)
				fprintf(names, "%s%s", ftell(names) ? ", " : "",
					r->backends[i]->name);
			continue;
		}
		if (f->code != RPC_OK)
			continue;
		Runtime__V1__RuntimeConfigResponse *rc =
			runtime__v1__runtime_config_response__unpack(NULL, f->reply.len,
								     f->reply.data);
		if (rc && rc->linux) {
			int d = rc->linux->cgroup_driver;
			if (driver < 0) {
				driver = d;
				first = i;
			} else if (d != driver && ret == 0) {
				const ProtobufCEnumDescriptor *e =
					&runtime__v1__cgroup_driver__descriptor;
				ret = crx_err_set(
					err, -EINVAL,
					"backends disagree on the cgroup driver: %s uses %s, %s "
					"uses %s; "
					"the kubelet can follow only one",
					r->backends[first]->name,
					protobuf_c_enum_descriptor_get_value(e, driver)->name,
					r->backends[i]->name,
					protobuf_c_enum_descriptor_get_value(e, d)->name);
			}
		}
		runtime__v1__runtime_config_response__free_unpacked(rc, NULL);
	}
	if (names)
		fclose(names);
	if (unreachable && !*unreachable) {
		free(unreachable);
		unreachable = NULL;
	}
	census->unreachable = unreachable;
	results_clear(r, results);
	return ret;
}

bool router_health(struct router *r, unsigned timeout_ms, char **summary)
{
	Runtime__V1__VersionRequest vreq = RUNTIME__V1__VERSION_REQUEST__INIT;
	uint8_t buf[16];
	struct rpc_buf req = {buf, runtime__v1__version_request__pack(&vreq, buf)};
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	*summary = NULL;
	if (!results)
		return false;
	fanout_call(r, "/runtime.v1.RuntimeService/Version", &req, NULL, timeout_ms, results);
	for (size_t i = 0; i < r->n_backends; i++)
		crx_metrics_backend_health(r->backends[i]->name, results[i].code == RPC_OK);
	crx_metric_set(CRX_M_OWNERS, owners_count(r->owners, OWNER_SANDBOX),
		       (const char *[]){"sandbox"});
	crx_metric_set(CRX_M_OWNERS, owners_count(r->owners, OWNER_CONTAINER),
		       (const char *[]){"container"});
	size_t size = 0;
	FILE *f = open_memstream(summary, &size);
	for (int up = 1; f && up >= 0; up--) {
		bool first = true;
		for (size_t i = 0; i < r->n_backends; i++) {
			if ((results[i].code == RPC_OK) != up)
				continue;
			if (first)
				fprintf(f, "%s%s: ", ftell(f) ? "; " : "", up ? "up" : "down");
			fprintf(f, "%s%s%s", first ? "" : ", ", r->backends[i]->name,
				i == r->default_backend ? " (default)" : "");
			first = false;
		}
	}
	if (f)
		fclose(f);
	bool ok = results[r->default_backend].code == RPC_OK;
	results_clear(r, results);
	return ok;
}

/* ---------------------------------------------------------------- retries */

/* A create in flight under its key (creates.h): when it ends, the calls
 * that waited for it get its answer. */
struct making {
	struct router *r;
	char *key;
	bool sandbox;
	uint32_t id_field;
	struct learn *learn; /* NULL when owners are not tracked */
};

static void router_dispatch_again(struct router *r, struct rpc_call *call);
static int pack_to(const ProtobufCMessage *msg, struct rpc_buf *out);

/* The create they waited for ended: its reply is theirs too; if it failed,
 * each goes again, as a retry after it would have. */
static void answer_waiters(struct router *r, struct creates_waiter *w, bool sandbox, const char *id,
			   const uint8_t *reply, size_t len)
{
	while (w) {
		struct creates_waiter *next = w->next;
		if (id) {
			rpc_call_tag(w->call, NULL, sandbox ? id : NULL, sandbox ? NULL : id);
			rpc_call_reply(w->call, reply, len);
		} else if (rpc_call_cancelled(w->call)) {
			rpc_call_fail(w->call, RPC_CANCELLED, "the call was cancelled");
		} else {
			router_dispatch_again(w->arg, w->call); /* its own router */
		}
		free(w);
		w = next;
	}
}

/* A create this call held the key of ends here, without making anything. */
static void abandon_create(struct router *r, const char *key, bool sandbox)
{
	if (key)
		answer_waiters(r, creates_end(r->creates, key, NULL, false), sandbox, NULL, NULL,
			       0);
}

static void made_observed(int code, const uint8_t *reply, size_t len, void *arg)
{
	struct making *mk = arg;
	_cleanup_free_ char *id = NULL;
	if (code != RPC_OK || wire_find_string(reply, len, mk->id_field, &id) <= 0 || !*id) {
		free(id);
		id = NULL;
	}
	if (mk->learn)
		learn_created(code, reply, len, mk->learn);
	struct creates_waiter *w = creates_end(mk->r->creates, mk->key, id, mk->r->tracks_owners);
	answer_waiters(mk->r, w, mk->sandbox, id, reply, len);
	free(mk->key);
	free(mk);
}

static struct making *making_new(struct router *r, char *key, bool sandbox, uint32_t id_field,
				 struct learn *l)
{
	struct making *mk = calloc(1, sizeof(*mk));
	if (mk)
		*mk = (struct making){r, key, sandbox, id_field, l};
	return mk;
}

/* A retry of a create that finished: is what it made still as the first
 * call left it (a ready pod, a container not started)? */
static bool still_made(struct router *r, struct rpc_call *call, unsigned backend, bool sandbox,
		       const char *id)
{
	Runtime__V1__PodSandboxStatusRequest sreq = RUNTIME__V1__POD_SANDBOX_STATUS_REQUEST__INIT;
	Runtime__V1__ContainerStatusRequest creq = RUNTIME__V1__CONTAINER_STATUS_REQUEST__INIT;
	sreq.pod_sandbox_id = creq.container_id = (char *)id;
	const ProtobufCMessage *msg = sandbox ? &sreq.base : &creq.base;
	uint8_t buf[512];
	struct rpc_buf req = {buf, protobuf_c_message_get_packed_size(msg)};
	if (req.len > sizeof(buf))
		return false;
	protobuf_c_message_pack(msg, buf);
	struct backend *b = r->backends[backend];
	struct rpc_result res = {0};
	bool same = false;
	if (b->ops->call(b,
			 sandbox ? "/runtime.v1.RuntimeService/PodSandboxStatus"
				 : "/runtime.v1.RuntimeService/ContainerStatus",
			 &req, call, 10000, &res) == 0 &&
	    res.code == RPC_OK) {
		if (sandbox) {
			Runtime__V1__PodSandboxStatusResponse *st =
				runtime__v1__pod_sandbox_status_response__unpack(
					NULL, res.reply.len, res.reply.data);
			same = st && st->status &&
			       st->status->state == RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY;
			runtime__v1__pod_sandbox_status_response__free_unpacked(st, NULL);
		} else {
			Runtime__V1__ContainerStatusResponse *st =
				runtime__v1__container_status_response__unpack(NULL, res.reply.len,
									       res.reply.data);
			same = st && st->status &&
			       st->status->state == RUNTIME__V1__CONTAINER_STATE__CONTAINER_CREATED;
			runtime__v1__container_status_response__free_unpacked(st, NULL);
		}
	}
	rpc_result_clear(&res);
	return same;
}

struct recheck {
	struct router *r;
	const struct cri_method *m;
	char *key, *id;
	struct owner owner;
	bool sandbox;
	char *sandbox_id; /* a container's pod */
};

static void run_sandbox(struct router *r, struct rpc_call *call, const struct cri_method *m,
			char *held);
static void create_container(struct router *r, struct rpc_call *call, const struct cri_method *m,
			     const char *sandbox_id, struct owner owner, char *held);

/* On a worker: the answer is the object made before, or the create goes
 * ahead (still holding its key). With no ID, the last try failed at its
 * backend, which may have made the object all the same (containerd goes on
 * when its client went away, a crimuxd killed half-way included): the
 * backends' lists say. */
static void recheck_made(struct rpc_call *call, void *arg)
{
	struct recheck *rc = arg;
	struct router *r = rc->r;
	if (!rc->id) {
		struct crx_err ignored;
		resolve(r, rc->sandbox ? OWNER_SANDBOX : OWNER_CONTAINER, "", call, 0, &ignored);
		rc->id = creates_made(r->creates, rc->key);
	}
	if (rc->id && still_made(r, call, rc->owner.backend, rc->sandbox, rc->id)) {
		Runtime__V1__RunPodSandboxResponse sresp =
			RUNTIME__V1__RUN_POD_SANDBOX_RESPONSE__INIT;
		Runtime__V1__CreateContainerResponse cresp =
			RUNTIME__V1__CREATE_CONTAINER_RESPONSE__INIT;
		sresp.pod_sandbox_id = cresp.container_id = rc->id;
		struct rpc_buf reply = {0};
		if (pack_to(rc->sandbox ? &sresp.base : &cresp.base, &reply) < 0) {
			rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
			answer_waiters(r, creates_end(r->creates, rc->key, NULL, false),
				       rc->sandbox, NULL, NULL, 0);
		} else {
			rpc_call_tag(call, NULL, rc->sandbox ? rc->id : NULL,
				     rc->sandbox ? NULL : rc->id);
			rpc_call_reply(call, reply.data, reply.len);
			answer_waiters(r, creates_end(r->creates, rc->key, rc->id, true),
				       rc->sandbox, rc->id, reply.data, reply.len);
		}
		rpc_buf_clear(&reply);
		free(rc->key);
	} else if (rc->sandbox) {
		run_sandbox(r, call, rc->m, rc->key); /* takes the key */
	} else {
		create_container(r, call, rc->m, rc->sandbox_id, rc->owner, rc->key);
	}
	free(rc->id);
	free(rc->sandbox_id);
	free(rc);
}

/* Before a create goes to its backend: 1 when the call is handled here (it
 * waits for the same create in flight, or a retry is checked against what
 * the first call made), 0 to go ahead, holding the key. */
static int begin_create(struct router *r, struct rpc_call *call, const struct cri_method *m,
			const char *key, struct owner owner, bool sandbox, const char *sandbox_id)
{
	int b = creates_begin(r->creates, key, call, r);
	if (b < 0) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return 1;
	}
	if (b == 1)
		return 1; /* answered when the first one ends */
	char *made = r->tracks_owners ? creates_made(r->creates, key) : NULL;
	if (!made && !(r->tracks_owners && creates_unsure(r->creates, key)))
		return 0;
	struct recheck *rc = calloc(1, sizeof(*rc));
	if (!rc || !(rc->key = strdup(key)) ||
	    (sandbox_id && !(rc->sandbox_id = strdup(sandbox_id)))) {
		if (rc)
			free(rc->key);
		free(rc);
		free(made);
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		abandon_create(r, key, sandbox);
		return 1;
	}
	rc->r = r;
	rc->m = m;
	rc->id = made;
	rc->owner = owner;
	rc->sandbox = sandbox;
	if (rpc_call_defer(call, recheck_made, rc) < 0) {
		abandon_create(r, key, sandbox);
		free(rc->key);
		free(rc->id);
		free(rc->sandbox_id);
		free(rc);
	}
	return 1;
}

/* ---------------------------------------------------------------- dispatch */

/* Version describes crimux, the runtime the kubelet talks to. */
static void reply_version(struct rpc_call *call)
{
	size_t n;
	const uint8_t *data = rpc_call_request(call, &n);
	Runtime__V1__VersionRequest *req = runtime__v1__version_request__unpack(NULL, n, data);
	if (!req) { /* crimux answers, but not to bytes that are no request */
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "Version: the request cannot be decoded");
		return;
	}
	runtime__v1__version_request__free_unpacked(req, NULL);
	Runtime__V1__VersionResponse resp = RUNTIME__V1__VERSION_RESPONSE__INIT;
	resp.version = (char *)"0.1.0";
	resp.runtime_name = (char *)PACKAGE_NAME;
	resp.runtime_version = (char *)PACKAGE_VERSION;
	resp.runtime_api_version = (char *)"v1";
	uint8_t buf[256];
	size_t len = runtime__v1__version_response__pack(&resp, buf);
	rpc_call_reply(call, buf, len);
}

static int pack_to(const ProtobufCMessage *msg, struct rpc_buf *out)
{
	out->len = protobuf_c_message_get_packed_size(msg);
	out->data = malloc(out->len ? out->len : 1);
	if (!out->data)
		return -ENOMEM;
	protobuf_c_message_pack(msg, out->data);
	return 0;
}

/* A call a policy decides on. The backend gets the request re-encoded from
 * the reading that was checked, never the client's bytes: a reader that
 * merges repeated fields (Go, so containerd) could find in those a request
 * that was never checked. Before that, input that two readers could read two
 * ways is refused outright (wire_check_strict). msg is protobuf-c's reading
 * of the call's request; *forward receives the encoding to send. */
static int admit(const struct route_handler *h, struct rpc_call *call, const struct cri_method *m,
		 ProtobufCMessage *msg, struct rpc_buf *forward, struct crx_err *err)
{
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	int ret = wire_check_strict(data, len, m->request, err);
	if (ret < 0)
		return crx_err_prefix(err, "%s", m->name);
	bool changed = false;
	if (h->policy == CRX_POLICY_KATA)
		ret = kata_check_request(h->kata, h->name, msg, &changed, err);
	if (ret == 0 && pack_to(msg, forward) < 0)
		ret = crx_err_set(err, -ENOMEM, "out of memory");
	return ret;
}

/* held: the key of this create, when this call already holds it (a retry
 * whose first object is gone); NULL on first dispatch. Takes held. */
static void run_sandbox(struct router *r, struct rpc_call *call, const struct cri_method *m,
			char *held)
{
	_cleanup_free_ char *key = held;
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__RunPodSandboxRequest *req =
		runtime__v1__run_pod_sandbox_request__unpack(NULL, len, data);
	if (!req || !req->config) {
		runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
		rpc_call_fail(call, RPC_INVALID_ARGUMENT,
			      "RunPodSandbox: the request has no valid sandbox config");
		abandon_create(r, key, true);
		return;
	}
	const char *asked = req->runtime_handler ? req->runtime_handler : "";
	int hi = -1;
	if (r->default_handler >= 0) {
		hi = *asked ? find_handler(r, asked) : r->default_handler;
		if (hi < 0) {
			fail_unknown_handler(r, call, "RunPodSandbox", asked);
			runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
			abandon_create(r, key, true);
			return;
		}
	}
	const struct route_handler *h = hi >= 0 ? &r->handlers[hi] : NULL;
	rpc_call_tag(call, h ? h->name : asked, NULL, NULL);
	struct rpc_buf forward = {0};
	int ret = 0;
	if (h && h->policy != CRX_POLICY_NONE) {
		char *theirs = req->runtime_handler;
		req->runtime_handler = (char *)h->runtime_handler;
		struct crx_err err = {0};
		ret = admit(h, call, m, &req->base, &forward, &err);
		req->runtime_handler = theirs; /* protobuf-c frees what it allocated */
		if (ret < 0) {
			rpc_call_fail_err(call, &err);
			runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
			abandon_create(r, key, true);
			return;
		}
	} else if (h && !streq(asked, h->runtime_handler)) {
		/* No policy: the client's bytes stay as they are, with the
		 * backend's name as the last runtime_handler, which every reader
		 * takes. */
		const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(
			m->request, "runtime_handler");
		ret = wire_append_string(data, len, f->id, h->runtime_handler, &forward.data,
					 &forward.len);
	}

	struct owner owner = {.backend = h ? h->backend : r->default_backend, .handler = hi};

	/* The kubelet's retries of this pod (same metadata, same attempt). */
	const Runtime__V1__PodSandboxMetadata *md = req->config->metadata;
	if (ret == 0 && !key && md) {
		key = creates_sandbox_key(md->namespace_, md->name, md->uid, md->attempt);
		if (!key)
			ret = -ENOMEM;
		else if (begin_create(r, call, m, key, owner, true, NULL)) {
			rpc_buf_clear(&forward);
			runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
			return;
		}
	}

	struct backend_serve how = {.request = forward.data ? &forward : NULL,
				    .detach_ms = key ? CREATE_DETACH_MS : 0};
	const char *uid = md ? md->uid : NULL;
	struct learn *l = NULL;
	struct making *mk = NULL;
	if (ret == 0 && r->tracks_owners) {
		l = learn_new(r, OWNER_SANDBOX, reply_field(m, "pod_sandbox_id"), owner, NULL);
		if (!l || (uid && !(l->pod_uid = strdup(uid))))
			ret = -ENOMEM;
		else
			l->call = call;
		how.observe = learn_created;
		how.observe_arg = l;
	}
	if (ret == 0 && key) {
		if (!(mk = making_new(r, key, true, reply_field(m, "pod_sandbox_id"), l))) {
			ret = -ENOMEM;
		} else {
			key = NULL; /* the observer's now */
			l = NULL;
			how.observe = made_observed;
			how.observe_arg = mk;
		}
	}
	if (ret < 0) {
		if (l)
			learn_free(l);
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		abandon_create(r, key, true);
	} else {
		serve(r, owner.backend, call, m, &how);
	}
	rpc_buf_clear(&forward);
	runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
}

static bool backend_has_policy(const struct router *r, unsigned backend)
{
	for (size_t i = 0; i < r->n_handlers; i++)
		if (r->handlers[i].backend == backend && r->handlers[i].policy != CRX_POLICY_NONE)
			return true;
	return false;
}

/* A call on an object of a pod with a policy (CreateContainer, the Update*
 * calls): admitted as RunPodSandbox was. *forward is left empty for calls the
 * policy has nothing to say about. */
static int admit_owned(struct router *r, struct rpc_call *call, const struct cri_method *m,
		       struct owner owner, struct rpc_buf *forward, struct crx_err *err)
{
	const struct route_handler *h = owner.handler >= 0 ? &r->handlers[owner.handler] : NULL;
	if (!h && kata_checks(m->request) && backend_has_policy(r, owner.backend))
		return crx_err_set(err, -EHOSTDOWN,
				   "%s: crimux cannot tell which RuntimeClass handler runs the pod "
				   "this call is for, and backend %s runs a handler with a policy; "
				   "try again when the backend lists its pods",
				   m->name, r->backends[owner.backend]->name);
	if (!h || h->policy == CRX_POLICY_NONE || !kata_checks(m->request))
		return 0;
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	ProtobufCMessage *msg = protobuf_c_message_unpack(m->request, NULL, len, data);
	if (!msg)
		return crx_err_set(err, -EINVAL, "%s: the request cannot be decoded", m->name);
	int ret = admit(h, call, m, msg, forward, err);
	protobuf_c_message_free_unpacked(msg, NULL);
	return ret;
}

/* CreateContainer in the pod sandbox_id ("" when owners are not tracked),
 * owned as owner says. held: as for run_sandbox. */
static void create_container(struct router *r, struct rpc_call *call, const struct cri_method *m,
			     const char *sandbox_id, struct owner owner, char *held)
{
	_cleanup_free_ char *key = held;
	struct crx_err err = {0};
	struct rpc_buf forward = {0};
	int ret = admit_owned(r, call, m, owner, &forward, &err);
	if (ret == 0 && !key) {
		/* The kubelet's retries of this container (same pod, name, attempt). */
		size_t len;
		const uint8_t *data = rpc_call_request(call, &len);
		Runtime__V1__CreateContainerRequest *req =
			runtime__v1__create_container_request__unpack(NULL, len, data);
		const char *pod = *sandbox_id ? sandbox_id : req ? req->pod_sandbox_id : NULL;
		if (req && req->config && req->config->metadata && pod && *pod &&
		    !(key = creates_container_key(pod, req->config->metadata->name,
						  req->config->metadata->attempt)))
			ret = crx_err_set(&err, -ENOMEM, "out of memory");
		runtime__v1__create_container_request__free_unpacked(req, NULL);
		if (key && begin_create(r, call, m, key, owner, false, sandbox_id)) {
			rpc_buf_clear(&forward);
			return;
		}
	}
	struct backend_serve how = {.request = forward.data ? &forward : NULL,
				    .detach_ms = key ? CREATE_DETACH_MS : 0};
	struct learn *l = NULL;
	if (ret == 0 && r->tracks_owners) {
		/* under its pod's handler */
		l = learn_new(r, OWNER_CONTAINER, reply_field(m, "container_id"), owner,
			      sandbox_id);
		if (!l)
			ret = crx_err_set(&err, -ENOMEM, "out of memory");
		else
			l->call = call;
		how.observe = learn_created;
		how.observe_arg = l;
	}
	if (ret == 0 && key) {
		struct making *mk = making_new(r, key, false, reply_field(m, "container_id"), l);
		if (!mk) {
			ret = crx_err_set(&err, -ENOMEM, "out of memory");
		} else {
			key = NULL; /* the observer's now */
			l = NULL;
			how.observe = made_observed;
			how.observe_arg = mk;
		}
	}
	if (ret < 0) {
		if (l)
			learn_free(l);
		rpc_call_fail_err(call, &err);
		abandon_create(r, key, false);
	} else {
		serve(r, owner.backend, call, m, &how);
	}
	rpc_buf_clear(&forward);
}

/* The call names an object whose owner is known. */
static void serve_owned(struct router *r, struct rpc_call *call, const struct cri_method *m,
			enum route route, const char *full_id, struct owner owner)
{
	struct backend_serve how = {0};
	struct rpc_buf forward = {0};
	bool remove = m->request == &runtime__v1__remove_container_request__descriptor ||
		      m->request == &runtime__v1__remove_pod_sandbox_request__descriptor;
	const char *handler = owner.handler >= 0 ? r->handlers[owner.handler].name : NULL;
	if (route == ROUTE_CONTAINER)
		rpc_call_tag(call, handler, NULL, full_id);
	else if (*full_id)
		rpc_call_tag(call, handler, full_id, NULL);
	if (route == ROUTE_CREATE_CONTAINER) {
		create_container(r, call, m, full_id, owner, NULL);
		return;
	}
	struct crx_err err = {0};
	if (admit_owned(r, call, m, owner, &forward, &err) < 0) {
		rpc_call_fail_err(call, &err);
		return;
	}
	how.request = forward.data ? &forward : NULL;
	if (remove && r->tracks_owners) {
		how.observe = learn_removed;
		how.observe_arg =
			learn_new(r, route == ROUTE_CONTAINER ? OWNER_CONTAINER : OWNER_SANDBOX, 0,
				  owner, full_id);
	} else if (r->renames &&
		   m->response == &runtime__v1__pod_sandbox_status_response__descriptor) {
		struct backend_job *job = malloc(sizeof(*job));
		if (!job) {
			rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
			return;
		}
		*job = (struct backend_job){r, owner.backend};
		if (rpc_call_defer(call, serve_renamed, job) < 0)
			free(job);
		return;
	}
	if (how.observe && !how.observe_arg)
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
	else
		serve(r, owner.backend, call, m, &how);
	rpc_buf_clear(&forward);
}

struct lookup {
	struct router *r;
	const struct cri_method *m;
	enum route route;
	char *id;
};

/* A miss: ask the backends on a worker, then route as usual. Nobody knows the
 * ID: the default backend answers, as it would for any unknown ID (NotFound,
 * or success for an idempotent remove). */
static void lookup_and_serve(struct rpc_call *call, void *arg)
{
	struct lookup *lk = arg;
	struct router *r = lk->r;
	enum owner_kind kind = lk->route == ROUTE_CONTAINER ? OWNER_CONTAINER : OWNER_SANDBOX;
	struct crx_err err = {0};
	struct owner o;
	_cleanup_free_ char *full = NULL;
	int ret = resolve(r, kind, lk->id, call, 0, &err);
	if (ret == 0 && owners_find(r->owners, kind, lk->id, &o, &full) == 0)
		serve_owned(r, call, lk->m, lk->route, full, o);
	else if (ret == -ENOENT)
		serve(r, r->default_backend, call, lk->m, NULL);
	else
		rpc_call_fail_err(call, &err);
	free(lk->id);
	free(lk);
}

static void route_by_owner(struct router *r, struct rpc_call *call, const struct cri_method *m,
			   enum route route)
{
	if (!r->tracks_owners) {
		serve_owned(r, call, m, route, "", (struct owner){0, r->default_handler});
		return;
	}
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	char *id = NULL;
	if (wire_find_string(data, len, r->id_fields[cri_method_index(m)], &id) < 0) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "%s: the request cannot be decoded",
			      m->name);
		return;
	}
	enum owner_kind kind = route == ROUTE_CONTAINER ? OWNER_CONTAINER : OWNER_SANDBOX;
	struct owner o;
	_cleanup_free_ char *full = NULL;
	int ret = id && *id ? owners_find(r->owners, kind, id, &o, &full) : -ENOENT;
	if (ret == 0) {
		serve_owned(r, call, m, route, full, o);
	} else if (ret == -ENOTUNIQ) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "%s: ID prefix \"%s\" matches several %s",
			      m->name, id,
			      kind == OWNER_CONTAINER ? "containers" : "pod sandboxes");
	} else if (!id || !*id) {
		serve(r, r->default_backend, call, m, NULL); /* its own error for no ID */
	} else {
		struct lookup *lk = malloc(sizeof(*lk));
		if (!lk) {
			rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		} else {
			*lk = (struct lookup){r, m, route, id};
			id = NULL;
			if (rpc_call_defer(call, lookup_and_serve, lk) < 0) {
				free(lk->id);
				free(lk);
			}
		}
	}
	free(id);
}

/* The ImageSpec an image call names a handler in: the request's own
 * (PullImage, ImageStatus, RemoveImage) or its filter's (ListImages,
 * StreamImages). */
static Runtime__V1__ImageSpec *image_spec_of(ProtobufCMessage *msg)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, "image");
	if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
	    f->descriptor == &runtime__v1__image_spec__descriptor)
		return *(Runtime__V1__ImageSpec **)((char *)msg + f->offset);
	f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, "filter");
	ProtobufCMessage *filter =
		f && f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED
			? *(ProtobufCMessage **)((char *)msg + f->offset)
			: NULL;
	return filter ? image_spec_of(filter) : NULL;
}

/* A full image ID ("sha256:" and 64 hex digits, or the digits alone) names
 * one image on every store: removing it needs no lookup first. */
static bool full_image_id(const char *ref)
{
	if (strncmp(ref, "sha256:", 7) == 0)
		ref += 7;
	return strlen(ref) == 64 && strspn(ref, "0123456789abcdef") == 64;
}

/* The backend of the pod a pull is for, when crimux knows that pod (the
 * kubelet pulls after RunPodSandbox; critest names pods it never runs). */
static bool pull_for_known_pod(struct router *r, const ProtobufCMessage *msg, struct owner *o)
{
	if (msg->descriptor != &runtime__v1__pull_image_request__descriptor)
		return false;
	const Runtime__V1__PullImageRequest *req = (const void *)msg;
	const char *uid = req->sandbox_config && req->sandbox_config->metadata
				  ? req->sandbox_config->metadata->uid
				  : NULL;
	return uid && *uid && owners_find(r->owners, OWNER_POD_UID, uid, o, NULL) == 0;
}

/* The image service (docs/routing.md, "Images"): a call that names a handler
 * goes to its backend, with the handler renamed to the backend's own name;
 * a pull for a pod crimux knows goes to that pod's backend; everything else
 * concerns every backend's store. */
static void route_image(struct router *r, struct rpc_call *call, const struct cri_method *m,
			enum route route)
{
	bool merge = r->n_backends > 1;
	if (!merge && !r->n_handlers) {
		serve(r, r->default_backend, call, m, NULL);
		return;
	}
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	ProtobufCMessage *req = protobuf_c_message_unpack(m->request, NULL, len, data);
	if (!req) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "%s: the request cannot be decoded",
			      m->name);
		return;
	}
	Runtime__V1__ImageSpec *spec = image_spec_of(req);
	const char *asked = spec && spec->runtime_handler ? spec->runtime_handler : "";
	const char *ref = spec && spec->image ? spec->image : "";
	struct rpc_buf rewritten = {0};
	struct owner o;
	if (*asked && r->n_handlers) {
		int hi = find_handler(r, asked);
		if (hi < 0) {
			fail_unknown_handler(r, call, m->name, asked);
		} else {
			const struct route_handler *h = &r->handlers[hi];
			rpc_call_tag(call, h->name, NULL, NULL);
			int ret = 0;
			if (!streq(asked, h->runtime_handler)) {
				spec->runtime_handler = (char *)h->runtime_handler;
				ret = pack_to(req, &rewritten);
				spec->runtime_handler = (char *)asked;
			}
			struct backend_serve how = {.request = rewritten.data ? &rewritten : NULL};
			struct image_stream_job *job = NULL;
			if (ret == 0 && route == ROUTE_IMAGE_STREAM &&
			    !(job = malloc(sizeof(*job))))
				ret = -ENOMEM;
			if (ret < 0) {
				rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
			} else if (job) { /* the store's list, streamed */
				*job = (struct image_stream_job){r, h->backend, rewritten};
				rewritten = (struct rpc_buf){0};
				if (rpc_call_defer(call, serve_image_stream_from, job) < 0) {
					rpc_buf_clear(&job->request);
					free(job);
				}
			} else {
				serve(r, h->backend, call, m, &how);
			}
		}
	} else if (pull_for_known_pod(r, req, &o)) {
		serve(r, o.backend, call, m, NULL);
	} else if (!merge) {
		serve(r, r->default_backend, call, m, NULL);
	} else if (route == ROUTE_IMAGE_PULL) {
		fan_out(r, call, combine_pull, 0);
	} else if (route == ROUTE_IMAGE_STATUS) {
		fan_out(r, call, combine_image_status, 0);
	} else if (route == ROUTE_IMAGE_REMOVE) {
		if (full_image_id(ref))
			fan_out(r, call, combine_all, 0);
		else /* a name first says which images it means, store by store */
			rpc_call_defer(call, serve_image_remove, r);
	} else if (route == ROUTE_IMAGE_LIST) {
		fan_out(r, call, combine_images, 0);
	} else {
		rpc_call_defer(call, serve_image_stream, r);
	}
	rpc_buf_clear(&rewritten);
	protobuf_c_message_free_unpacked(req, NULL);
}

void router_dispatch(struct rpc_call *call, void *userdata)
{
	struct router *r = userdata;
	const char *path = rpc_call_method(call);
	const struct cri_method *m = cri_method_find(path);
	/* A backend's socket serves more than CRI v1: containerd's is its whole
	 * API (and CRI v1alpha2, v1's messages under another name). Relaying
	 * those would let a client past every rule a handler has. */
	if (!m && !cri_method_in_v1(path)) {
		rpc_call_fail(call, RPC_UNIMPLEMENTED,
			      "%.200s is not a method of CRI v1 (runtime.v1.RuntimeService, "
			      "runtime.v1.ImageService); crimux relays nothing else",
			      path);
		return;
	}
	enum route route = m ? r->routes[cri_method_index(m)] : ROUTE_DEFAULT;
	bool merge = r->n_backends > 1;
	void (*worker)(struct rpc_call *, void *) = NULL;
	rpc_combine_fn combine = NULL;
	unsigned timeout_ms = 0;
	switch (route) {
	case ROUTE_VERSION:
		reply_version(call);
		return;
	case ROUTE_RUN_SANDBOX:
		run_sandbox(r, call, m, NULL);
		return;
	case ROUTE_CREATE_CONTAINER:
	case ROUTE_SANDBOX:
	case ROUTE_CONTAINER:
		route_by_owner(r, call, m, route);
		return;
	case ROUTE_IMAGE_PULL:
	case ROUTE_IMAGE_STATUS:
	case ROUTE_IMAGE_REMOVE:
	case ROUTE_IMAGE_LIST:
	case ROUTE_IMAGE_STREAM:
		route_image(r, call, m, route);
		return;
	case ROUTE_LIST:
		combine = merge || r->renames ? combine_list : NULL;
		break;
	case ROUTE_STREAM_LIST:
		worker = merge || r->renames ? serve_stream_list : NULL;
		break;
	case ROUTE_EVENTS: /* a long stream: never on a worker */
		if (merge || r->renames || !r->channels) {
			event_hub_subscribe(r->events, call);
			return;
		}
		break;
	case ROUTE_STATUS: /* lists crimux's handlers once there are any */
		combine = merge || r->n_handlers ? combine_status : NULL;
		timeout_ms = 5000; /* a backend that hangs must not hang Status */
		break;
	case ROUTE_ALL:
		combine = merge ? combine_all : NULL;
		break;
	case ROUTE_IMAGE_FS:
		combine = merge ? combine_image_fs : NULL;
		break;
	case ROUTE_METRIC_DESCRIPTORS:
		combine = merge ? combine_metric_descriptors : NULL;
		break;
	case ROUTE_DEFAULT:
		break;
	}
	if (combine)
		fan_out(r, call, combine, timeout_ms);
	else if (worker)
		rpc_call_defer(call, worker, r);
	else
		serve(r, r->default_backend, call, m, NULL);
}

/* A call that waited for a create that failed: routed as if it came now. */
static void router_dispatch_again(struct router *r, struct rpc_call *call)
{
	router_dispatch(call, r);
}
