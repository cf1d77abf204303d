/* The calls that concern every backend: merged lists, streams and events,
 * Status, image rules. All of it runs on worker threads. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/merge.h"

/* ---------------------------------------------------------------- fan-out */

/* Grace after the deadline for a leg to report its own end (its backend's
 * DEADLINE_EXCEEDED, or crimux's own bound on the leg). */
#define FANOUT_GRACE_MS 250

/* One fan-out, shared by the caller and the legs on workers: the caller may
 * stop waiting at the deadline, and a leg still running or queued then
 * finishes into this, which the last one out frees. */
struct fanout {
	struct router *r;
	const char *method;
	struct rpc_buf req;      /* a copy: the caller's may be gone */
	struct rpc_call *parent; /* held while a leg may use it */
	unsigned timeout_ms;
	pthread_mutex_t lock;
	pthread_cond_t done;
	size_t pending, refs;
	bool abandoned;
	bool *finished;
	struct rpc_result results[];
};

struct fanout_job {
	struct fanout *f;
	size_t backend;
};

static void fanout_unref(struct fanout *f)
{
	pthread_mutex_lock(&f->lock);
	bool last = --f->refs == 0;
	pthread_mutex_unlock(&f->lock);
	if (!last)
		return;
	for (size_t i = 0; i < f->r->n_backends; i++)
		rpc_result_clear(&f->results[i]);
	if (f->parent)
		rpc_call_release(f->parent);
	rpc_buf_clear(&f->req);
	free(f->finished);
	pthread_cond_destroy(&f->done);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

static void fanout_one(struct fanout *f, size_t i)
{
	struct backend *b = f->r->backends[i];
	struct rpc_result res = {0};
	pthread_mutex_lock(&f->lock);
	bool skip = f->abandoned; /* queued past the deadline: nobody waits */
	pthread_mutex_unlock(&f->lock);
	int ret = skip ? -ETIMEDOUT
		       : b->ops->call(b, f->method, &f->req, f->parent, f->timeout_ms, &res);
	if (ret < 0) { /* no call was made: say why, as its status */
		res.code = rpc_code_from_errno(ret);
		if (asprintf(&res.details, "backend %s: %s", b->name, strerror(-ret)) < 0)
			res.details = NULL;
	}
	pthread_mutex_lock(&f->lock);
	f->results[i] = res;
	f->finished[i] = true;
	if (--f->pending == 0)
		pthread_cond_signal(&f->done);
	pthread_mutex_unlock(&f->lock);
}

static void fanout_run(void *arg)
{
	struct fanout_job *job = arg;
	fanout_one(job->f, job->backend);
	fanout_unref(job->f);
	free(job);
}

/* How long the caller waits: the client's deadline or the call's own bound,
 * whichever comes first; -1 for neither. */
static int64_t fanout_wait_ms(struct rpc_call *parent, unsigned timeout_ms)
{
	int64_t left = parent ? rpc_call_time_left_ms(parent) : -1;
	if (timeout_ms && (left < 0 || timeout_ms < left))
		left = timeout_ms;
	return left < 0 ? -1 : left + FANOUT_GRACE_MS;
}

void fanout_call(struct router *r, const char *method, const struct rpc_buf *req,
		 struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *results)
{
	size_t n = r->n_backends;
	memset(results, 0, n * sizeof(*results));
	struct fanout *f = calloc(1, sizeof(*f) + n * sizeof(struct rpc_result));
	if (f && (!(f->finished = calloc(n, sizeof(bool))) ||
		  !(f->req.data = malloc(req->len ? req->len : 1)))) {
		free(f->finished);
		free(f);
		f = NULL;
	}
	if (!f) {
		for (size_t i = 0; i < n; i++) {
			results[i].code = RPC_RESOURCE_EXHAUSTED;
			results[i].details = strdup("out of memory");
		}
		return;
	}
	memcpy(f->req.data, req->data, req->len);
	f->req.len = req->len;
	f->r = r;
	f->method = method;
	f->parent = parent;
	f->timeout_ms = timeout_ms;
	f->pending = n;
	f->refs = 1;
	if (parent)
		rpc_call_hold(parent);
	pthread_mutex_init(&f->lock, NULL);
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&f->done, &attr);
	pthread_condattr_destroy(&attr);
	struct timespec until;
	int64_t wait_ms = fanout_wait_ms(parent, timeout_ms);
	clock_gettime(CLOCK_MONOTONIC, &until);
	if (wait_ms >= 0) {
		until.tv_sec += wait_ms / 1000;
		until.tv_nsec += (wait_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
	}
	/* Every leg on a worker: a backend that hangs holds its leg, not the
	 * caller, who stops waiting at the deadline. */
	for (size_t i = 0; i < n; i++) {
		struct fanout_job *job = malloc(sizeof(*job));
		if (job)
			*job = (struct fanout_job){f, i};
		pthread_mutex_lock(&f->lock);
		f->refs++;
		pthread_mutex_unlock(&f->lock);
		if (!job || workers_submit(r->fanout, fanout_run, job) < 0) {
			free(job);
			fanout_one(f, i);
			fanout_unref(f);
		}
	}
	pthread_mutex_lock(&f->lock);
	int waited = 0;
	while (f->pending > 0 && waited != ETIMEDOUT)
		waited = wait_ms >= 0 ? pthread_cond_timedwait(&f->done, &f->lock, &until)
				      : pthread_cond_wait(&f->done, &f->lock);
	for (size_t i = 0; i < n; i++) {
		if (f->finished[i]) {
			results[i] = f->results[i];
			f->results[i] = (struct rpc_result){0};
			continue;
		}
		results[i].code = RPC_DEADLINE_EXCEEDED;
		if (asprintf(&results[i].details, "backend %s did not answer within %lld ms",
			     r->backends[i]->name, (long long)wait_ms) < 0)
			results[i].details = NULL;
	}
	f->abandoned = true;
	pthread_mutex_unlock(&f->lock);
	fanout_unref(f);
}

void results_clear(struct router *r, struct rpc_result *results)
{
	for (size_t i = 0; i < r->n_backends; i++)
		rpc_result_clear(&results[i]);
}

struct fan_out_job {
	struct router *r;
	rpc_combine_fn combine;
	unsigned timeout_ms;
};

static void fan_out_on_worker(struct rpc_call *call, void *arg)
{
	struct fan_out_job job = *(struct fan_out_job *)arg;
	free(arg);
	struct router *r = job.r;
	const struct cri_method *m = cri_method_find(rpc_call_method(call));
	struct rpc_buf req = {0};
	req.data = (uint8_t *)rpc_call_request(call, &req.len);
	struct rpc_result out = {0};
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	if (!results) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	fanout_call(r, m->path, &req, call, job.timeout_ms, results);
	job.combine(call, results, r->n_backends, &out, r);
	if (out.code != RPC_HANDED_ON)
		rpc_call_complete(call, &out);
	rpc_result_clear(&out);
	results_clear(r, results);
}

void fan_out(struct router *r, struct rpc_call *call, rpc_combine_fn combine, unsigned timeout_ms)
{
	if (r->channels) {
		rpc_call_fanout(call, r->channels, r->n_backends, timeout_ms, combine, r);
		return;
	}
	struct fan_out_job *job = malloc(sizeof(*job));
	if (!job) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	*job = (struct fan_out_job){r, combine, timeout_ms};
	if (rpc_call_defer(call, fan_out_on_worker, job) < 0)
		free(job);
}

/* Does the message already begin "backend <name>" (crimux's own words)? */
static bool names_backend(const char *details, const char *name)
{
	size_t n = strlen(name);
	return details && strncmp(details, "backend ", 8) == 0 &&
	       strncmp(details + 8, name, n) == 0 &&
	       (details[8 + n] == ' ' || details[8 + n] == ':');
}

/* A backend's failure as the client should see it: its status, its message,
 * and its name when the message does not already say it. */
static void failed_result(struct router *r, size_t backend, const struct rpc_result *reply,
			  struct rpc_result *out)
{
	const char *name = r->backends[backend]->name;
	out->code = reply->code;
	if (names_backend(reply->details, name))
		out->details = strdup(reply->details);
	else if (asprintf(&out->details, "backend %s: %s", name,
			  reply->details ? reply->details : rpc_code_name(reply->code)) < 0)
		out->details = NULL;
}

/* The first backend that failed (skipping unavailable ones when asked):
 * true and *out set to its failure. */
static bool first_failure(struct router *r, const struct rpc_result *replies, bool skip_unavailable,
			  struct rpc_result *out)
{
	for (size_t i = 0; i < r->n_backends; i++)
		if (replies[i].code != RPC_OK &&
		    !(skip_unavailable && replies[i].code == RPC_UNAVAILABLE)) {
			failed_result(r, i, &replies[i], out);
			return true;
		}
	return false;
}

static void out_of_memory(struct rpc_result *out)
{
	out->code = RPC_RESOURCE_EXHAUSTED;
	out->details = strdup("out of memory");
}

/* ---------------------------------------------------------------- renaming */

const char *router_handler_name(struct router *r, size_t backend, const char *backend_handler)
{
	for (size_t i = 0; i < r->n_handlers; i++)
		if (r->handlers[i].backend == backend &&
		    streq(r->handlers[i].runtime_handler, backend_handler))
			return r->handlers[i].name;
	return NULL;
}

/* Replaces *field with the crimux name; the old string belongs to protobuf-c,
 * so the new one is swapped in only for packing and swapped back after. */
struct swap {
	char **field;
	char *old;
};

static void rename_field(struct router *r, size_t backend, char **field, struct swap *s)
{
	const char *name = router_handler_name(r, backend, *field ? *field : "");
	*s = (struct swap){.field = field, .old = *field};
	if (name)
		*field = (char *)name;
}

static int repack(const ProtobufCMessage *msg, struct rpc_buf *out)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *data = malloc(n ? n : 1);
	if (!data)
		return -ENOMEM;
	protobuf_c_message_pack(msg, data);
	rpc_buf_clear(out);
	out->data = data;
	out->len = n;
	return 0;
}

int rename_reply(struct router *r, const struct cri_method *m, size_t backend,
		 struct rpc_buf *reply)
{
	ProtobufCMessage *msg =
		protobuf_c_message_unpack(m->response, NULL, reply->len, reply->data);
	if (!msg)
		return -EBADMSG;
	size_t n = 0;
	Runtime__V1__PodSandbox **items = NULL;
	struct swap single = {0}, *swaps = NULL;
	if (m->response == &runtime__v1__list_pod_sandbox_response__descriptor) {
		Runtime__V1__ListPodSandboxResponse *resp = (void *)msg;
		items = resp->items, n = resp->n_items;
	} else if (m->response == &runtime__v1__stream_pod_sandboxes_response__descriptor) {
		Runtime__V1__StreamPodSandboxesResponse *resp = (void *)msg;
		items = resp->pod_sandboxes, n = resp->n_pod_sandboxes;
	} else if (m->response == &runtime__v1__pod_sandbox_status_response__descriptor) {
		Runtime__V1__PodSandboxStatusResponse *resp = (void *)msg;
		if (resp->status)
			rename_field(r, backend, &resp->status->runtime_handler, &single);
	} else if (m->response == &runtime__v1__container_event_response__descriptor) {
		Runtime__V1__ContainerEventResponse *resp = (void *)msg;
		if (resp->pod_sandbox_status)
			rename_field(r, backend, &resp->pod_sandbox_status->runtime_handler,
				     &single);
	}
	int ret = 0;
	if (n && !(swaps = calloc(n, sizeof(*swaps))))
		ret = -ENOMEM;
	for (size_t i = 0; ret == 0 && i < n; i++)
		rename_field(r, backend, &items[i]->runtime_handler, &swaps[i]);
	if (ret == 0)
		ret = repack(msg, reply);
	for (size_t i = 0; swaps && i < n; i++)
		*swaps[i].field = swaps[i].old;
	if (single.field)
		*single.field = single.old;
	free(swaps);
	protobuf_c_message_free_unpacked(msg, NULL);
	return ret;
}

static bool renames_method(const struct cri_method *m)
{
	return m->response == &runtime__v1__list_pod_sandbox_response__descriptor ||
	       m->response == &runtime__v1__stream_pod_sandboxes_response__descriptor ||
	       m->response == &runtime__v1__pod_sandbox_status_response__descriptor ||
	       m->response == &runtime__v1__container_event_response__descriptor;
}

/* ---------------------------------------------------------------- lists */

static const struct cri_method *method_of(struct rpc_call *call)
{
	return cri_method_find(rpc_call_method(call));
}

static struct rpc_buf request_of(struct rpc_call *call)
{
	struct rpc_buf req = {0};
	req.data = (uint8_t *)rpc_call_request(call, &req.len);
	return req;
}

/* Lists have only repeated fields, so replies concatenated on the wire are
 * the merged list: no backend's reply needs decoding unless it is renamed. */
void combine_list(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		  struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	const struct cri_method *m = method_of(call);
	if (first_failure(r, replies, false, out))
		return;
	bool rename = r->renames && renames_method(m);
	struct rpc_buf *bufs = calloc(n, sizeof(*bufs));
	size_t total = 0;
	if (!bufs) {
		out_of_memory(out);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		bufs[i] = replies[i].reply;
		if (rename) { /* renamed copies replace the backends' bytes */
			struct rpc_buf copy = {malloc(bufs[i].len ? bufs[i].len : 1), bufs[i].len};
			if (copy.data)
				memcpy(copy.data, bufs[i].data, bufs[i].len);
			if (!copy.data || rename_reply(r, m, i, &copy) < 0) {
				rpc_buf_clear(&copy);
				out->code = RPC_INTERNAL;
				if (asprintf(&out->details,
					     "backend %s sent a %s reply crimux cannot decode",
					     r->backends[i]->name, m->name) < 0)
					out->details = NULL;
				n = i; /* free what was renamed so far */
				break;
			}
			bufs[i] = copy;
		}
		total += bufs[i].len;
	}
	if (out->code == RPC_OK) {
		uint8_t *all = malloc(total ? total : 1);
		size_t at = 0;
		for (size_t i = 0; all && i < n; i++) {
			memcpy(all + at, bufs[i].data, bufs[i].len);
			at += bufs[i].len;
		}
		if (all)
			out->reply = (struct rpc_buf){all, total};
		else
			out_of_memory(out);
	}
	for (size_t i = 0; rename && i < n; i++)
		rpc_buf_clear(&bufs[i]);
	free(bufs);
}

/* UpdateRuntimeConfig, RemoveImage: every backend must take it. */
void combine_all(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		 struct rpc_result *out, void *arg)
{
	if (first_failure(arg, replies, false, out))
		return;
	out->reply.data = malloc(replies[0].reply.len ? replies[0].reply.len : 1);
	if (!out->reply.data) {
		out_of_memory(out);
		return;
	}
	memcpy(out->reply.data, replies[0].reply.data, replies[0].reply.len);
	out->reply.len = replies[0].reply.len;
}

/* A reply from one backend that must be renamed on its way (PodSandboxStatus). */
void serve_renamed(struct rpc_call *call, void *arg)
{
	struct backend_job *job = arg;
	struct router *r = job->r;
	size_t backend = job->backend;
	free(job);
	const struct cri_method *m = method_of(call);
	struct rpc_buf req = request_of(call);
	struct backend *b = r->backends[backend];
	struct rpc_result res = {0}, out = {0};
	int ret = b->ops->call(b, m->path, &req, call, 0, &res);
	if (ret < 0) {
		rpc_call_fail(call, rpc_code_from_errno(ret), "backend %s: %s", b->name,
			      strerror(-ret));
	} else if (res.code != RPC_OK) {
		failed_result(r, backend, &res, &out);
		rpc_call_complete(call, &out);
	} else if (rename_reply(r, m, backend, &res.reply) < 0) {
		rpc_call_fail(call, RPC_INTERNAL, "backend %s sent a %s reply crimux cannot decode",
			      b->name, m->name);
	} else {
		rpc_call_reply(call, res.reply.data, res.reply.len);
	}
	rpc_result_clear(&res);
	rpc_result_clear(&out);
}

/* Stream* lists: each backend's stream in turn, renamed where needed. The
 * kubelet discards a stream that ends in error, so a failing backend fails
 * the whole stream. */
void serve_stream_list(struct rpc_call *call, void *arg)
{
	struct router *r = arg;
	const struct cri_method *m = method_of(call);
	struct rpc_buf req = request_of(call);
	for (size_t i = 0; i < r->n_backends; i++) {
		struct backend *b = r->backends[i];
		struct backend_stream *s;
		struct rpc_result end = {0}, out = {0};
		int ret = b->ops->stream_open(b, m->path, &req, call, &s);
		if (ret < 0) {
			rpc_call_fail(call, rpc_code_from_errno(ret), "backend %s: %s", b->name,
				      strerror(-ret));
			return;
		}
		struct rpc_buf msg = {0};
		while ((ret = b->ops->stream_next(s, &msg, &end)) > 0) {
			if (r->renames && renames_method(m))
				rename_reply(r, m, i, &msg);
			ret = rpc_call_send(call, msg.data, msg.len);
			rpc_buf_clear(&msg);
			if (ret < 0)
				break;
		}
		b->ops->stream_free(s);
		bool failed = ret < 0 || end.code != RPC_OK;
		if (ret == -ECANCELED) { /* the client left; nobody hears the rest */
			rpc_call_finish(call, RPC_CANCELLED, NULL);
		} else if (ret < 0) {
			rpc_call_fail(call, rpc_code_from_errno(ret), "backend %s: %s", b->name,
				      strerror(-ret));
		} else if (end.code != RPC_OK) {
			failed_result(r, i, &end, &out);
			rpc_call_finish(call, out.code, out.details);
		}
		rpc_result_clear(&end);
		rpc_result_clear(&out);
		if (failed) /* the call is complete: nothing more may be sent */
			return;
	}
	rpc_call_finish(call, RPC_OK, NULL);
}

/* ---------------------------------------------------------------- status */

static Runtime__V1__RuntimeCondition *find_condition(Runtime__V1__StatusResponse *s,
						     const char *type)
{
	for (size_t i = 0; s && s->status && i < s->status->n_conditions; i++)
		if (streq(s->status->conditions[i]->type, type))
			return s->status->conditions[i];
	return NULL;
}

/* Everything one Status reply is built from, freed together. */
struct status_build {
	Runtime__V1__StatusResponse resp;
	Runtime__V1__RuntimeStatus status;
	Runtime__V1__RuntimeCondition *conditions;
	Runtime__V1__RuntimeCondition **condition_ptrs;
	Runtime__V1__RuntimeHandler *handlers;
	Runtime__V1__RuntimeHandler **handler_ptrs;
	Runtime__V1__RuntimeHandlerFeatures *features;
	Runtime__V1__StatusResponse__InfoEntry *info;
	Runtime__V1__StatusResponse__InfoEntry **info_ptrs;
	Runtime__V1__RuntimeFeatures runtime_features;
	char **strings; /* owned texts */
	size_t n_strings;
};

static char *keep(struct status_build *sb, char *s)
{
	if (s)
		sb->strings[sb->n_strings++] = s;
	return s;
}

static char *json_escape(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(n * 6 + 1), *p = out;
	if (!out)
		return NULL;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			p += sprintf(p, "\\%c", c);
		else if (c < 0x20)
			p += sprintf(p, "\\u%04x", c);
		else
			*p++ = (char)c;
	}
	*p = '\0';
	return out;
}

/* crimux's own verbose info: its backends and handlers, as JSON. */
static char *crimux_info(struct router *r, Runtime__V1__StatusResponse **replies)
{
	char *json = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&json, &size);
	if (!f)
		return NULL;
	fprintf(f, "{\"version\":\"%s\",\"backends\":[", PACKAGE_VERSION);
	for (size_t i = 0; i < r->n_backends; i++) {
		_cleanup_free_ char *name = json_escape(r->backends[i]->name);
		_cleanup_free_ char *type = json_escape(r->backends[i]->ops->type);
		fprintf(f, "%s{\"name\":\"%s\",\"type\":\"%s\",\"reachable\":%s}", i ? "," : "",
			name ? name : "", type ? type : "", replies[i] ? "true" : "false");
	}
	fprintf(f, "],\"handlers\":[");
	for (size_t i = 0; i < r->n_handlers; i++) {
		const struct route_handler *h = &r->handlers[i];
		_cleanup_free_ char *name = json_escape(h->name);
		_cleanup_free_ char *rh = json_escape(h->runtime_handler);
		fprintf(f,
			"%s{\"name\":\"%s\",\"backend\":\"%s\",\"runtime_handler\":\"%s\","
			"\"policy\":\"%s\",\"default\":%s}",
			i ? "," : "", name ? name : "", r->backends[h->backend]->name, rh ? rh : "",
			h->policy == CRX_POLICY_KATA ? "kata" : "none",
			(int)i == r->default_handler ? "true" : "false");
	}
	fprintf(f, "]}");
	fclose(f);
	return json;
}

static void status_build_free(struct status_build *sb)
{
	for (size_t i = 0; i < sb->n_strings; i++)
		free(sb->strings[i]);
	free(sb->strings);
	free(sb->conditions);
	free(sb->condition_ptrs);
	free(sb->handlers);
	free(sb->handler_ptrs);
	free(sb->features);
	free(sb->info);
	free(sb->info_ptrs);
}

/* Node readiness is the default backend's; every other backend adds its own
 * conditions, named "<backend>/RuntimeReady" and so on, so that a backend
 * that is down shows without making the node NotReady. */
static int build_status(struct router *r, Runtime__V1__StatusResponse **replies,
			const struct rpc_result *results, bool verbose, struct rpc_buf *out)
{
	struct status_build sb = {0};
	size_t max_conditions = 2, max_info = 1, max_strings = 8;
	for (size_t i = 0; i < r->n_backends; i++) {
		max_conditions +=
			2 +
			(replies[i] && replies[i]->status ? replies[i]->status->n_conditions : 0);
		max_info += replies[i] ? replies[i]->n_info : 0;
	}
	max_strings += 3 * max_conditions + max_info;
	size_t n_handlers = r->n_handlers ? r->n_handlers + 1 : 0;
	sb.conditions = calloc(max_conditions, sizeof(*sb.conditions));
	sb.condition_ptrs = calloc(max_conditions, sizeof(*sb.condition_ptrs));
	sb.handlers = calloc(n_handlers + 1, sizeof(*sb.handlers));
	sb.handler_ptrs = calloc(n_handlers + 1, sizeof(*sb.handler_ptrs));
	sb.features = calloc(n_handlers + 1, sizeof(*sb.features));
	sb.info = calloc(max_info, sizeof(*sb.info));
	sb.info_ptrs = calloc(max_info, sizeof(*sb.info_ptrs));
	sb.strings = calloc(max_strings, sizeof(char *));
	if (!sb.conditions || !sb.condition_ptrs || !sb.handlers || !sb.handler_ptrs ||
	    !sb.features || !sb.info || !sb.info_ptrs || !sb.strings) {
		status_build_free(&sb);
		return -ENOMEM;
	}
	runtime__v1__status_response__init(&sb.resp);
	runtime__v1__runtime_status__init(&sb.status);
	sb.resp.status = &sb.status;
	sb.status.conditions = sb.condition_ptrs;

	static const char *const node_conditions[] = {"RuntimeReady", "NetworkReady"};
	for (size_t i = 0; i < r->n_backends; i++) {
		bool node = i == r->default_backend;
		const char *name = r->backends[i]->name;
		for (size_t c = 0; c < ARRAY_SIZE(node_conditions); c++) {
			Runtime__V1__RuntimeCondition *cond =
				&sb.conditions[sb.status.n_conditions];
			runtime__v1__runtime_condition__init(cond);
			const Runtime__V1__RuntimeCondition *theirs =
				find_condition(replies[i], node_conditions[c]);
			if (node) {
				cond->type = (char *)node_conditions[c];
			} else {
				char *type;
				if (asprintf(&type, "%s/%s", name, node_conditions[c]) < 0)
					continue;
				cond->type = keep(&sb, type);
			}
			if (theirs) {
				cond->status = theirs->status;
				cond->reason = theirs->reason;
				cond->message = theirs->message;
			} else if (!replies[i]) {
				struct rpc_result failed = {0};
				cond->reason = (char *)"BackendUnavailable";
				failed_result(r, i, &results[i], &failed);
				cond->message = keep(&sb, failed.details);
			}
			sb.condition_ptrs[sb.status.n_conditions++] = cond;
		}
	}

	/* Every handler under crimux's name, with its backend's features, and ""
	 * for the default one. */
	for (size_t i = 0; i < n_handlers; i++) {
		const struct route_handler *h =
			&r->handlers[i < r->n_handlers ? i : (size_t)r->default_handler];
		Runtime__V1__RuntimeHandler *rh = &sb.handlers[i];
		runtime__v1__runtime_handler__init(rh);
		runtime__v1__runtime_handler_features__init(&sb.features[i]);
		rh->name = (char *)(i < r->n_handlers ? h->name : "");
		rh->features = &sb.features[i];
		Runtime__V1__StatusResponse *theirs = replies[h->backend];
		for (size_t j = 0; theirs && j < theirs->n_runtime_handlers; j++) {
			Runtime__V1__RuntimeHandler *t = theirs->runtime_handlers[j];
			if (streq(t->name, h->runtime_handler) && t->features)
				sb.features[i] = *t->features;
		}
		sb.handler_ptrs[sb.resp.n_runtime_handlers++] = rh;
	}
	sb.resp.runtime_handlers = sb.handler_ptrs;

	/* A feature is there only if every backend that answered has it. */
	runtime__v1__runtime_features__init(&sb.runtime_features);
	bool first = true;
	for (size_t i = 0; i < r->n_backends; i++) {
		if (!replies[i])
			continue;
		const Runtime__V1__RuntimeFeatures *f = replies[i]->features;
		sb.runtime_features.supplemental_groups_policy =
			(first || sb.runtime_features.supplemental_groups_policy) && f &&
			f->supplemental_groups_policy;
		sb.runtime_features.user_namespaces_host_network =
			(first || sb.runtime_features.user_namespaces_host_network) && f &&
			f->user_namespaces_host_network;
		first = false;
	}
	sb.resp.features = &sb.runtime_features;

	if (verbose) {
		sb.resp.info = sb.info_ptrs;
		Runtime__V1__StatusResponse__InfoEntry *e = &sb.info[sb.resp.n_info];
		runtime__v1__status_response__info_entry__init(e);
		e->key = (char *)"crimux";
		e->value = keep(&sb, crimux_info(r, replies));
		if (e->value)
			sb.info_ptrs[sb.resp.n_info++] = e;
		for (size_t i = 0; i < r->n_backends; i++)
			for (size_t j = 0; replies[i] && j < replies[i]->n_info; j++) {
				e = &sb.info[sb.resp.n_info];
				runtime__v1__status_response__info_entry__init(e);
				if (asprintf(&e->key, "%s/%s", r->backends[i]->name,
					     replies[i]->info[j]->key) < 0)
					continue;
				keep(&sb, e->key);
				e->value = replies[i]->info[j]->value;
				sb.info_ptrs[sb.resp.n_info++] = e;
			}
	}
	int ret = repack(&sb.resp.base, out);
	status_build_free(&sb);
	return ret;
}

void combine_status(struct rpc_call *call, const struct rpc_result *results, size_t n,
		    struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	struct rpc_buf req = request_of(call);
	Runtime__V1__StatusRequest *sreq =
		runtime__v1__status_request__unpack(NULL, req.len, req.data);
	bool verbose = sreq && sreq->verbose;
	runtime__v1__status_request__free_unpacked(sreq, NULL);
	Runtime__V1__StatusResponse **replies = calloc(n, sizeof(*replies));
	if (!replies) {
		out_of_memory(out);
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (results[i].code == RPC_OK)
			replies[i] = runtime__v1__status_response__unpack(
				NULL, results[i].reply.len, results[i].reply.data);
	if (build_status(r, replies, results, verbose, &out->reply) < 0)
		out_of_memory(out);
	for (size_t i = 0; i < n; i++)
		runtime__v1__status_response__free_unpacked(replies[i], NULL);
	free(replies);
}

/* ---------------------------------------------------------------- images */

/* The rules are in docs/routing.md ("Images"). Two handlers on one backend
 * share its store, so stores are backends here. A store that cannot be
 * reached is left out where that is safe (pulls, status, lists,
 * filesystems), never where it is not (removal). */

#define IMAGE_STATUS_PATH "/runtime.v1.ImageService/ImageStatus"
#define REMOVE_IMAGE_PATH "/runtime.v1.ImageService/RemoveImage"

/* The k-th backend in the order whose answers win when stores describe one
 * image differently (Docker's size is unpacked, containerd's compressed):
 * the default backend's first, the node's own store, whose filesystem the
 * kubelet watches; then the configuration's order. */
static size_t preferred(const struct router *r, size_t k)
{
	if (k == 0)
		return r->default_backend;
	return k <= r->default_backend ? k - 1 : k;
}

/* Every failure but "unreachable" as one status, each backend named, the
 * first one's code; or, when no backend answered at all, UNAVAILABLE naming
 * them all. false when some answered and none failed. */
static bool image_failures(struct router *r, const struct rpc_result *replies,
			   struct rpc_result *out)
{
	bool answered = false, failed = false;
	for (size_t i = 0; i < r->n_backends; i++) {
		answered |= replies[i].code == RPC_OK;
		failed |= replies[i].code != RPC_OK && replies[i].code != RPC_UNAVAILABLE;
	}
	if (answered && !failed)
		return false;
	size_t size = 0;
	FILE *f = open_memstream(&out->details, &size);
	out->code = RPC_OK;
	for (size_t i = 0; i < r->n_backends; i++) {
		if (replies[i].code == RPC_OK || (failed && replies[i].code == RPC_UNAVAILABLE))
			continue;
		struct rpc_result one = {0};
		failed_result(r, i, &replies[i], &one);
		if (out->code == RPC_OK)
			out->code = one.code;
		if (f)
			fprintf(f, "%s%s", ftell(f) ? "; " : "", one.details ? one.details : "");
		rpc_result_clear(&one);
	}
	if (f)
		fclose(f);
	else
		out->details = NULL;
	return true;
}

static void copy_reply(const struct rpc_buf *from, struct rpc_result *out)
{
	out->reply.data = malloc(from->len ? from->len : 1);
	if (!out->reply.data) {
		out_of_memory(out);
		return;
	}
	memcpy(out->reply.data, from->data, from->len);
	out->reply.len = from->len;
}

static void merge_failed(int ret, const char *what, struct rpc_result *out)
{
	rpc_result_clear(out);
	out->code = rpc_code_from_errno(ret);
	if (asprintf(&out->details, "cannot merge the backends' %s: %s", what, strerror(-ret)) < 0)
		out->details = NULL;
}

/* PullImage onto every store: done when every store that answered has the
 * image; any failure names its backend. The reply is the preferred store's
 * (every store reports the image's config digest as its ID). */
void combine_pull(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		  struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	if (image_failures(r, replies, out))
		return;
	for (size_t k = 0; k < n; k++)
		if (replies[preferred(r, k)].code == RPC_OK) {
			copy_reply(&replies[preferred(r, k)].reply, out);
			return;
		}
}

static int add_unique(char ***list, size_t *n, char *s)
{
	for (size_t i = 0; i < *n; i++)
		if (streq((*list)[i], s))
			return 0;
	char **more = realloc(*list, (*n + 1) * sizeof(*more));
	if (!more)
		return -ENOMEM;
	more[(*n)++] = s;
	*list = more;
	return 0;
}

/* One image as every store that has it describes it: the preferred store's
 * copy, with the tags and digests of all and pinned if any store pins it.
 * Strings stay owned by the unpacked replies; only the arrays are new. */
static void start_image(Runtime__V1__Image *merged, const Runtime__V1__Image *base)
{
	*merged = *base;
	merged->repo_tags = NULL, merged->n_repo_tags = 0;
	merged->repo_digests = NULL, merged->n_repo_digests = 0;
	merged->pinned = false;
}

static int join_image(Runtime__V1__Image *merged, const Runtime__V1__Image *img)
{
	int ret = 0;
	merged->pinned |= img->pinned;
	for (size_t k = 0; ret == 0 && k < img->n_repo_tags; k++)
		ret = add_unique(&merged->repo_tags, &merged->n_repo_tags, img->repo_tags[k]);
	for (size_t k = 0; ret == 0 && k < img->n_repo_digests; k++)
		ret = add_unique(&merged->repo_digests, &merged->n_repo_digests,
				 img->repo_digests[k]);
	return ret;
}

static void clear_image(Runtime__V1__Image *merged)
{
	free(merged->repo_tags);
	free(merged->repo_digests);
}

/* Is id the image ID the client asked for ("sha256:" may be left out)? */
static bool asked_for_id(const char *asked, const char *id)
{
	return streq(asked, id) || (strncmp(id, "sha256:", 7) == 0 && streq(asked, id + 7));
}

/* ImageStatus without a handler. The image is there when every store that
 * answers has it under the same ID: the kubelet then skips the pull and
 * creates the container by that ID on whichever store runs the pod. A name
 * some stores do not know may still be an image they hold under other
 * names: then *again is that ID, for a second round by ID (asked is NULL in
 * that round). */
static int image_status_verdict(struct router *r, const struct rpc_result *replies,
				const char *asked, struct rpc_result *out, char **again)
{
	*again = NULL;
	if (image_failures(r, replies, out))
		return 0;
	Runtime__V1__ImageStatusResponse **resp = calloc(r->n_backends, sizeof(*resp));
	if (!resp)
		return -ENOMEM;
	const char *id = NULL;
	bool everywhere = true, ambiguous = false;
	int ret = 0;
	for (size_t i = 0; ret == 0 && i < r->n_backends; i++) {
		if (replies[i].code != RPC_OK)
			continue; /* unreachable */
		resp[i] = runtime__v1__image_status_response__unpack(NULL, replies[i].reply.len,
								     replies[i].reply.data);
		const Runtime__V1__Image *img = resp[i] ? resp[i]->image : NULL;
		if (!resp[i])
			ret = -EBADMSG;
		else if (!img || !img->id || !*img->id)
			everywhere = false;
		else if (!id)
			id = img->id;
		else
			ambiguous |= !streq(id, img->id);
	}
	if (ret == 0 && id && !ambiguous && !everywhere && asked && !asked_for_id(asked, id)) {
		*again = strdup(id);
		ret = *again ? 0 : -ENOMEM;
	} else if (ret == 0 && id && !ambiguous && everywhere) {
		Runtime__V1__ImageStatusResponse *base = NULL;
		Runtime__V1__Image merged, *theirs = NULL;
		for (size_t k = 0; ret == 0 && k < r->n_backends; k++) {
			Runtime__V1__ImageStatusResponse *s = resp[preferred(r, k)];
			if (!s)
				continue;
			if (!base) {
				base = s;
				start_image(&merged, s->image);
			}
			ret = join_image(&merged, s->image);
		}
		theirs = base->image;
		base->image = &merged; /* their info (verbose) goes with it */
		if (ret == 0)
			ret = repack(&base->base, &out->reply);
		base->image = theirs;
		clear_image(&merged);
	} else if (ret == 0) {
		Runtime__V1__ImageStatusResponse none = RUNTIME__V1__IMAGE_STATUS_RESPONSE__INIT;
		ret = repack(&none.base, &out->reply);
	}
	for (size_t i = 0; i < r->n_backends; i++)
		runtime__v1__image_status_response__free_unpacked(resp[i], NULL);
	free(resp);
	return ret;
}

struct status_by_id {
	struct router *r;
	char *id;
	bool verbose;
};

/* The second round of ImageStatus, by the ID a name stands for. */
static void image_status_by_id(struct rpc_call *call, void *arg)
{
	struct status_by_id job = *(struct status_by_id *)arg;
	free(arg);
	struct router *r = job.r;
	Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
	Runtime__V1__ImageStatusRequest sreq = RUNTIME__V1__IMAGE_STATUS_REQUEST__INIT;
	spec.image = job.id;
	sreq.image = &spec;
	sreq.verbose = job.verbose;
	struct rpc_buf req = {0};
	struct rpc_result out = {0};
	char *again = NULL;
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	int ret = results ? repack(&sreq.base, &req) : -ENOMEM;
	if (ret == 0) {
		fanout_call(r, IMAGE_STATUS_PATH, &req, call, 0, results);
		ret = image_status_verdict(r, results, NULL, &out, &again);
		results_clear(r, results);
	}
	if (ret < 0)
		merge_failed(ret, "image status", &out);
	rpc_call_complete(call, &out);
	rpc_result_clear(&out);
	rpc_buf_clear(&req);
	free(job.id);
}

void combine_image_status(struct rpc_call *call, const struct rpc_result *replies, size_t n,
			  struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	struct rpc_buf req = request_of(call);
	Runtime__V1__ImageStatusRequest *sreq =
		runtime__v1__image_status_request__unpack(NULL, req.len, req.data);
	const char *asked = sreq && sreq->image && sreq->image->image ? sreq->image->image : "";
	char *again = NULL;
	int ret = image_status_verdict(r, replies, asked, out, &again);
	struct status_by_id *job = NULL;
	if (ret == 0 && again && !(job = malloc(sizeof(*job))))
		ret = -ENOMEM;
	if (ret < 0) {
		merge_failed(ret, "image status", out);
		free(again);
	} else if (job) { /* more calls: not on the event thread */
		*job = (struct status_by_id){r, again, sreq && sreq->verbose};
		if (rpc_call_defer(call, image_status_by_id, job) < 0) {
			free(job->id);
			free(job);
		}
		out->code = RPC_HANDED_ON;
	}
	runtime__v1__image_status_request__free_unpacked(sreq, NULL);
}

/* RemoveImage without a handler by a name (a tag, a digest reference, a
 * short ID): each store says which image the name means to it, then every
 * store removes each of those images by ID, as one store would remove the
 * image with all its names. A store that cannot be asked fails the call
 * (after the others' copies are gone): no image is reported removed while
 * a copy may remain. */
void serve_image_remove(struct rpc_call *call, void *arg)
{
	struct router *r = arg;
	struct rpc_buf req = request_of(call), status_req = {0}, rm_req = {0};
	struct rpc_result out = {0};
	Runtime__V1__RemoveImageRequest *rreq =
		runtime__v1__remove_image_request__unpack(NULL, req.len, req.data);
	Runtime__V1__ImageStatusRequest sreq = RUNTIME__V1__IMAGE_STATUS_REQUEST__INIT;
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	char **ids = NULL;
	size_t n_ids = 0;
	int ret = rreq && results ? 0 : -ENOMEM;
	if (ret == 0) {
		sreq.image = rreq->image;
		ret = repack(&sreq.base, &status_req);
	}
	if (ret == 0) {
		fanout_call(r, IMAGE_STATUS_PATH, &status_req, call, 0, results);
		for (size_t i = 0; ret == 0 && i < r->n_backends; i++) {
			if (results[i].code != RPC_OK) {
				if (out.code == RPC_OK)
					failed_result(r, i, &results[i], &out);
				continue;
			}
			Runtime__V1__ImageStatusResponse *s =
				runtime__v1__image_status_response__unpack(
					NULL, results[i].reply.len, results[i].reply.data);
			char *id = s && s->image && s->image->id && *s->image->id
					   ? strdup(s->image->id)
					   : NULL;
			size_t had = n_ids;
			if (!s)
				ret = -EBADMSG;
			else if (id)
				ret = add_unique(&ids, &n_ids, id);
			if (n_ids == had)
				free(id); /* none, or one the list had already */
			runtime__v1__image_status_response__free_unpacked(s, NULL);
		}
		results_clear(r, results);
	}
	/* Unknown everywhere: the stores' own answer (success, or their
	 * error for a reference they refuse). */
	if (ret == 0 && n_ids == 0 && out.code == RPC_OK) {
		fanout_call(r, REMOVE_IMAGE_PATH, &req, call, 0, results);
		if (!first_failure(r, results, false, &out))
			copy_reply(&results[r->default_backend].reply, &out);
		results_clear(r, results);
	}
	for (size_t k = 0; ret == 0 && k < n_ids; k++) {
		Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
		Runtime__V1__RemoveImageRequest one = RUNTIME__V1__REMOVE_IMAGE_REQUEST__INIT;
		spec.image = ids[k];
		one.image = &spec;
		if ((ret = repack(&one.base, &rm_req)) < 0)
			break;
		fanout_call(r, REMOVE_IMAGE_PATH, &rm_req, call, 0, results);
		struct rpc_result failed = {0};
		if (first_failure(r, results, false, &failed) && out.code == RPC_OK)
			out = failed;
		else
			rpc_result_clear(&failed);
		results_clear(r, results);
	}
	if (ret < 0)
		merge_failed(ret, "answers to RemoveImage", &out);
	rpc_call_complete(call, &out); /* OK: RemoveImageResponse is empty */
	rpc_result_clear(&out);
	for (size_t k = 0; k < n_ids; k++)
		free(ids[k]);
	free(ids);
	rpc_buf_clear(&status_req);
	rpc_buf_clear(&rm_req);
	runtime__v1__remove_image_request__free_unpacked(rreq, NULL);
}

/* One entry per image ID across the stores that answered, each built as
 * ImageStatus builds it. An image holds one ID on every store (its config
 * digest); content that two stores converted differently (a schema 1
 * manifest) keeps one entry per ID, since the kubelet's containers and its
 * garbage collection name images by the ID of their own store. */
static int merge_images(struct router *r, const struct rpc_result *results,
			const ProtobufCMessageDescriptor *desc, struct rpc_buf *out)
{
	ProtobufCMessage **replies = calloc(r->n_backends, sizeof(*replies));
	Runtime__V1__Image **merged = NULL, *copies = NULL;
	size_t n = 0, max = 0;
	int ret = replies ? 0 : -ENOMEM;
	for (size_t i = 0; ret == 0 && i < r->n_backends; i++) {
		if (results[i].code != RPC_OK)
			continue; /* unreachable */
		replies[i] = protobuf_c_message_unpack(desc, NULL, results[i].reply.len,
						       results[i].reply.data);
		if (!replies[i])
			ret = -EBADMSG;
		else
			max += ((Runtime__V1__ListImagesResponse *)replies[i])->n_images;
	}
	if (ret == 0 && max &&
	    (!(merged = calloc(max, sizeof(*merged))) || !(copies = calloc(max, sizeof(*copies)))))
		ret = -ENOMEM;
	for (size_t k = 0; ret == 0 && k < r->n_backends; k++) {
		/* ListImagesResponse and StreamImagesResponse share their layout. */
		Runtime__V1__ListImagesResponse *list = (void *)replies[preferred(r, k)];
		for (size_t j = 0; list && ret == 0 && j < list->n_images; j++) {
			Runtime__V1__Image *img = list->images[j], *same = NULL;
			for (size_t e = 0; e < n && !same; e++)
				if (streq(merged[e]->id, img->id))
					same = merged[e];
			if (!same) {
				start_image(&copies[n], img);
				same = merged[n] = &copies[n];
				n++;
			}
			ret = join_image(same, img);
		}
	}
	if (ret == 0) {
		Runtime__V1__ListImagesResponse list = RUNTIME__V1__LIST_IMAGES_RESPONSE__INIT;
		list.base.descriptor = desc;
		list.images = merged, list.n_images = n;
		ret = repack(&list.base, out);
	}
	for (size_t e = 0; e < n; e++)
		clear_image(&copies[e]);
	free(merged);
	free(copies);
	for (size_t i = 0; replies && i < r->n_backends; i++)
		if (replies[i])
			protobuf_c_message_free_unpacked(replies[i], NULL);
	free(replies);
	return ret;
}

void combine_images(struct rpc_call *call, const struct rpc_result *replies, size_t n,
		    struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	if (image_failures(r, replies, out))
		return;
	int ret = merge_images(r, replies, &runtime__v1__list_images_response__descriptor,
			       &out->reply);
	if (ret < 0)
		merge_failed(ret, "image lists", out);
}

/* StreamImages merges the unary lists: duplicates across backends can only be
 * told apart once every list is in. */
void serve_image_stream(struct rpc_call *call, void *arg)
{
	struct router *r = arg;
	struct rpc_buf req = request_of(call), merged = {0};
	struct rpc_result out = {0};
	_cleanup_free_ struct rpc_result *results = calloc(r->n_backends, sizeof(*results));
	if (!results) {
		rpc_call_fail(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	/* ListImagesRequest and StreamImagesRequest share their layout. */
	fanout_call(r, "/runtime.v1.ImageService/ListImages", &req, call, 0, results);
	int ret = 0;
	if (!image_failures(r, results, &out) &&
	    (ret = merge_images(r, results, &runtime__v1__stream_images_response__descriptor,
				&merged)) < 0)
		merge_failed(ret, "image lists", &out);
	if (out.code != RPC_OK)
		rpc_call_finish(call, out.code, out.details);
	else /* a client that left is told nothing more */
		rpc_call_finish(call,
				rpc_call_send(call, merged.data, merged.len) == 0 ? RPC_OK
										  : RPC_CANCELLED,
				NULL);
	rpc_buf_clear(&merged);
	rpc_result_clear(&out);
	results_clear(r, results);
}

/* StreamImages for one handler: its store's ListImages as one message
 * (containerd 1.6 has no StreamImages of its own), answered as that store
 * answers. */
void serve_image_stream_from(struct rpc_call *call, void *arg)
{
	struct image_stream_job *job = arg;
	struct router *r = job->r;
	struct backend *b = r->backends[job->backend];
	struct rpc_buf req = job->request.data ? job->request : request_of(call);
	struct rpc_result res = {0};
	/* ListImagesRequest and StreamImagesRequest share their layout. */
	int ret = b->ops->call(b, "/runtime.v1.ImageService/ListImages", &req, call, 0, &res);
	if (ret < 0)
		rpc_call_fail(call, rpc_code_from_errno(ret), "backend %s: %s", b->name,
			      strerror(-ret));
	else if (res.code != RPC_OK)
		rpc_call_finish(call, res.code, res.details);
	else /* a client that left is told nothing more */
		rpc_call_finish(call,
				rpc_call_send(call, res.reply.data, res.reply.len) == 0
					? RPC_OK
					: RPC_CANCELLED,
				NULL);
	rpc_result_clear(&res);
	rpc_buf_clear(&job->request);
	free(job);
}

/* Filesystems of every store that answered, each mountpoint once, the
 * default backend's first: the kubelet's image GC and eviction read the
 * first entry only. */
void combine_image_fs(struct rpc_call *call, const struct rpc_result *results, size_t n,
		      struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	if (image_failures(r, results, out))
		return;
	Runtime__V1__ImageFsInfoResponse **replies = calloc(n, sizeof(*replies));
	Runtime__V1__ImageFsInfoResponse merged = RUNTIME__V1__IMAGE_FS_INFO_RESPONSE__INIT;
	size_t max_image = 0, max_container = 0;
	for (size_t i = 0; replies && i < n; i++) {
		if (results[i].code != RPC_OK)
			continue;
		replies[i] = runtime__v1__image_fs_info_response__unpack(NULL, results[i].reply.len,
									 results[i].reply.data);
		if (replies[i]) {
			max_image += replies[i]->n_image_filesystems;
			max_container += replies[i]->n_container_filesystems;
		}
	}
	merged.image_filesystems = calloc(max_image + 1, sizeof(void *));
	merged.container_filesystems = calloc(max_container + 1, sizeof(void *));
	bool ok = replies && merged.image_filesystems && merged.container_filesystems;
	for (size_t k = 0; ok && k < n; k++) {
		Runtime__V1__ImageFsInfoResponse *reply = replies[preferred(r, k)];
		if (!reply)
			continue;
		struct {
			Runtime__V1__FilesystemUsage **from, **to;
			size_t n, *count;
		} lists[] = {
			{reply->image_filesystems, merged.image_filesystems,
			 reply->n_image_filesystems, &merged.n_image_filesystems},
			{reply->container_filesystems, merged.container_filesystems,
			 reply->n_container_filesystems, &merged.n_container_filesystems},
		};
		for (size_t l = 0; l < ARRAY_SIZE(lists); l++)
			for (size_t j = 0; j < lists[l].n; j++) {
				Runtime__V1__FilesystemUsage *u = lists[l].from[j];
				bool seen = false;
				for (size_t e = 0; e < *lists[l].count && !seen; e++)
					seen = u->fs_id && lists[l].to[e]->fs_id &&
					       streq(u->fs_id->mountpoint,
						     lists[l].to[e]->fs_id->mountpoint);
				if (!seen)
					lists[l].to[(*lists[l].count)++] = u;
			}
	}
	if (!ok || repack(&merged.base, &out->reply) < 0)
		out_of_memory(out);
	free(merged.image_filesystems);
	free(merged.container_filesystems);
	for (size_t i = 0; replies && i < n; i++)
		runtime__v1__image_fs_info_response__free_unpacked(replies[i], NULL);
	free(replies);
}

/* Metric descriptors of every backend, each name once. */
void combine_metric_descriptors(struct rpc_call *call, const struct rpc_result *results, size_t n,
				struct rpc_result *out, void *arg)
{
	struct router *r = arg;
	if (first_failure(r, results, false, out))
		return;
	Runtime__V1__ListMetricDescriptorsResponse **replies = calloc(n, sizeof(*replies));
	Runtime__V1__ListMetricDescriptorsResponse merged =
		RUNTIME__V1__LIST_METRIC_DESCRIPTORS_RESPONSE__INIT;
	size_t max = 0;
	for (size_t i = 0; replies && i < n; i++) {
		replies[i] = runtime__v1__list_metric_descriptors_response__unpack(
			NULL, results[i].reply.len, results[i].reply.data);
		max += replies[i] ? replies[i]->n_descriptors : 0;
	}
	merged.descriptors = calloc(max + 1, sizeof(void *));
	for (size_t i = 0; replies && merged.descriptors && i < n; i++)
		for (size_t j = 0; replies[i] && j < replies[i]->n_descriptors; j++) {
			Runtime__V1__MetricDescriptor *d = replies[i]->descriptors[j];
			bool seen = false;
			for (size_t k = 0; k < merged.n_descriptors && !seen; k++)
				seen = streq(merged.descriptors[k]->name, d->name);
			if (!seen)
				merged.descriptors[merged.n_descriptors++] = d;
		}
	if (!replies || !merged.descriptors || repack(&merged.base, &out->reply) < 0)
		out_of_memory(out);
	free(merged.descriptors);
	for (size_t i = 0; replies && i < n; i++)
		runtime__v1__list_metric_descriptors_response__free_unpacked(replies[i], NULL);
	free(replies);
}
