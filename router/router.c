#include "config.h"

#include "router/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/merge.h"
#include "cri/wire.h"

#define FANOUT_THREADS     64
#define REBUILD_TIMEOUT_MS 10000

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

int router_new(const struct crx_config *cfg, struct router **out, struct crx_err *err)
{
	struct router *r = calloc(1, sizeof(*r));
	size_t n_methods = cri_method_count();
	if (!r || !(r->backends = calloc(cfg->n_backends, sizeof(*r->backends))) ||
	    !(r->handlers = calloc(cfg->n_handlers + 1, sizeof(*r->handlers))) ||
	    !(r->routes = calloc(n_methods, sizeof(*r->routes))) ||
	    !(r->id_fields = calloc(n_methods, sizeof(*r->id_fields))) ||
	    owners_new(&r->owners) < 0 || workers_new(FANOUT_THREADS, &r->fanout) < 0) {
		router_free(r);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_methods; i++)
		r->routes[i] = route_of(cri_method_at(i), &r->id_fields[i]);
	for (size_t i = 0; i < cfg->n_backends; i++) {
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
	if (code == RPC_OK)
		owners_remove(l->r->owners, l->kind, l->id);
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
	}
}

static void learn_containers(struct router *r, size_t backend,
			     const Runtime__V1__ListContainersResponse *list)
{
	for (size_t i = 0; i < list->n_containers; i++) {
		const Runtime__V1__Container *c = list->containers[i];
		struct owner o = {.backend = (unsigned)backend, .handler = -1}, pod;
		if (owners_find(r->owners, OWNER_SANDBOX, c->pod_sandbox_id, &pod, NULL) == 0)
			o.handler = pod.handler; /* a container runs under its pod's handler */
		owners_add(r->owners, OWNER_CONTAINER, c->id, c->pod_sandbox_id, o);
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
				learn_containers(r, i, l);
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

static void run_sandbox(struct router *r, struct rpc_call *call, const struct cri_method *m)
{
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__RunPodSandboxRequest *req =
		runtime__v1__run_pod_sandbox_request__unpack(NULL, len, data);
	if (!req || !req->config) {
		runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
		rpc_call_fail(call, RPC_INVALID_ARGUMENT,
			      "RunPodSandbox: the request has no valid sandbox config");
		return;
	}
	const char *asked = req->runtime_handler ? req->runtime_handler : "";
	int hi = -1;
	if (r->default_handler >= 0) {
		hi = *asked ? find_handler(r, asked) : r->default_handler;
		if (hi < 0) {
			fail_unknown_handler(r, call, "RunPodSandbox", asked);
			runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
			return;
		}
	}
	const struct route_handler *h = hi >= 0 ? &r->handlers[hi] : NULL;
	rpc_call_tag(call, h ? h->name : asked, NULL, NULL);
	bool changed = false;
	struct crx_err err = {0};
	if (h && h->policy == CRX_POLICY_KATA &&
	    kata_check_sandbox(h->kata, h->name, req->config, &changed, &err) < 0) {
		rpc_call_fail_err(call, &err);
		runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
		return;
	}
	char *theirs = req->runtime_handler;
	if (h && !streq(asked, h->runtime_handler)) {
		req->runtime_handler = (char *)h->runtime_handler;
		changed = true;
	}
	struct rpc_buf rewritten = {0};
	int ret = changed ? pack_to(&req->base, &rewritten) : 0;
	req->runtime_handler = theirs; /* protobuf-c frees what it allocated */

	struct owner owner = {.backend = h ? h->backend : r->default_backend, .handler = hi};

	struct backend_serve how = {.request = changed ? &rewritten : NULL};
	const char *uid = req->config->metadata ? req->config->metadata->uid : NULL;
	struct learn *l = NULL;
	if (ret == 0 && r->tracks_owners) {
		l = learn_new(r, OWNER_SANDBOX, reply_field(m, "pod_sandbox_id"), owner, NULL);
		if (!l || (uid && !(l->pod_uid = strdup(uid))))
			ret = -ENOMEM;
		else
			l->call = call;
		how.observe = learn_created;
		how.observe_arg = l;
	}
	if (ret < 0) {
		if (l)
			learn_free(l);
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
	} else {
		serve(r, owner.backend, call, m, &how);
	}
	rpc_buf_clear(&rewritten);
	runtime__v1__run_pod_sandbox_request__free_unpacked(req, NULL);
}

/* CreateContainer in a pod of a policy handler: check the container. */
static int check_container(struct router *r, struct rpc_call *call, struct owner owner,
			   struct crx_err *err)
{
	const struct route_handler *h = owner.handler >= 0 ? &r->handlers[owner.handler] : NULL;
	if (!h || h->policy != CRX_POLICY_KATA)
		return 0;
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__CreateContainerRequest *req =
		runtime__v1__create_container_request__unpack(NULL, len, data);
	int ret =
		!req || !req->config
			? crx_err_set(err, -EINVAL,
				      "CreateContainer: the request has no valid container config")
			: kata_check_container(h->kata, h->name, req->config, err);
	runtime__v1__create_container_request__free_unpacked(req, NULL);
	return ret;
}

/* The call names an object whose owner is known. */
static void serve_owned(struct router *r, struct rpc_call *call, const struct cri_method *m,
			enum route route, const char *full_id, struct owner owner)
{
	struct backend_serve how = {0};
	bool remove = m->request == &runtime__v1__remove_container_request__descriptor ||
		      m->request == &runtime__v1__remove_pod_sandbox_request__descriptor;
	const char *handler = owner.handler >= 0 ? r->handlers[owner.handler].name : NULL;
	if (route == ROUTE_CONTAINER)
		rpc_call_tag(call, handler, NULL, full_id);
	else if (*full_id)
		rpc_call_tag(call, handler, full_id, NULL);
	if (route == ROUTE_CREATE_CONTAINER) {
		struct crx_err err = {0};
		if (check_container(r, call, owner, &err) < 0) {
			rpc_call_fail_err(call, &err);
			return;
		}
		if (r->tracks_owners) {
			struct learn *l =
				learn_new(r, OWNER_CONTAINER, reply_field(m, "container_id"), owner,
					  full_id); /* under its pod's handler */
			if (l)
				l->call = call;
			how.observe = learn_created;
			how.observe_arg = l;
		}
	} else if (remove && r->tracks_owners) {
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
	if (how.observe && !how.observe_arg) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	serve(r, owner.backend, call, m, &how);
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

/* Pull onto the backend of the pod the image is for: named by the image's
 * runtime_handler, or found by the pod's UID; else the default backend. */
static void pull_image(struct router *r, struct rpc_call *call, const struct cri_method *m)
{
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__PullImageRequest *req =
		runtime__v1__pull_image_request__unpack(NULL, len, data);
	if (!req) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT,
			      "PullImage: the request cannot be decoded");
		return;
	}
	size_t backend = r->default_backend;
	struct rpc_buf rewritten = {0};
	const char *asked = req->image ? req->image->runtime_handler : NULL;
	struct owner o;
	int ret = 0;
	if (asked && *asked && r->n_handlers) {
		int hi = find_handler(r, asked);
		if (hi < 0) {
			fail_unknown_handler(r, call, "PullImage", asked);
			runtime__v1__pull_image_request__free_unpacked(req, NULL);
			return;
		}
		backend = r->handlers[hi].backend;
		if (!streq(asked, r->handlers[hi].runtime_handler)) {
			req->image->runtime_handler = (char *)r->handlers[hi].runtime_handler;
			ret = pack_to(&req->base, &rewritten);
			req->image->runtime_handler = (char *)asked;
		}
	} else if (req->sandbox_config && req->sandbox_config->metadata &&
		   req->sandbox_config->metadata->uid &&
		   owners_find(r->owners, OWNER_POD_UID, req->sandbox_config->metadata->uid, &o,
			       NULL) == 0) {
		backend = o.backend;
	}
	runtime__v1__pull_image_request__free_unpacked(req, NULL);
	if (ret < 0) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	struct backend_serve how = {.request = rewritten.data ? &rewritten : NULL};
	serve(r, backend, call, m, &how);
	rpc_buf_clear(&rewritten);
}

/* ImageStatus for a named handler goes to its backend; otherwise every
 * backend is asked (see serve_image_status). */
static void image_status(struct router *r, struct rpc_call *call, const struct cri_method *m)
{
	size_t len;
	const uint8_t *data = rpc_call_request(call, &len);
	Runtime__V1__ImageStatusRequest *req =
		runtime__v1__image_status_request__unpack(NULL, len, data);
	const char *asked = req && req->image ? req->image->runtime_handler : NULL;
	int hi = asked && *asked ? find_handler(r, asked) : -1;
	if (asked && *asked && r->n_handlers && hi < 0)
		fail_unknown_handler(r, call, "ImageStatus", asked);
	else if (hi >= 0)
		serve(r, r->handlers[hi].backend, call, m, NULL);
	else
		fan_out(r, call, combine_image_status, 0);
	runtime__v1__image_status_request__free_unpacked(req, NULL);
}

void router_dispatch(struct rpc_call *call, void *userdata)
{
	struct router *r = userdata;
	const struct cri_method *m = cri_method_find(rpc_call_method(call));
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
		run_sandbox(r, call, m);
		return;
	case ROUTE_CREATE_CONTAINER:
	case ROUTE_SANDBOX:
	case ROUTE_CONTAINER:
		route_by_owner(r, call, m, route);
		return;
	case ROUTE_IMAGE_PULL:
		pull_image(r, call, m);
		return;
	case ROUTE_IMAGE_STATUS:
		if (merge || r->n_handlers) {
			image_status(r, call, m);
			return;
		}
		break;
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
	case ROUTE_IMAGE_REMOVE:
		combine = merge ? combine_all : NULL;
		break;
	case ROUTE_IMAGE_LIST:
		combine = merge ? combine_images : NULL;
		break;
	case ROUTE_IMAGE_STREAM:
		worker = merge ? serve_image_stream : NULL;
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
