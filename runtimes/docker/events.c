/* GetContainerEvents for Docker pods: Docker's event stream for crimux's
 * containers, each event turned into the CRI's with the pod's status and
 * its containers' statuses (what the kubelet's evented PLEG reads). */
#include "config.h"

#include "runtimes/docker/events.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/status.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/container.h"
#include "runtimes/docker/sandbox.h"

struct dk_events {
	struct dk_shim *ds;
	struct rpc_call *parent;
	char *target;
	struct dk_http_conn *conn; /* NULL until the first read */
	atomic_bool cancelled;
};

static bool events_cancelled(void *arg)
{
	struct dk_events *e = arg;
	return atomic_load(&e->cancelled) || (e->parent && rpc_call_cancelled(e->parent));
}

int dk_events_open(struct dk_shim *ds, struct rpc_call *parent, struct dk_events **out,
		   struct crx_err *err)
{
	struct dk_events *e = calloc(1, sizeof(*e));
	if (!e)
		return crx_err_set(err, -ENOMEM, "out of memory");
	e->ds = ds;
	e->parent = parent;
	_cleanup_json_ json_object *f = json_object_new_object();
	json_object *type = json_object_new_array(), *label = json_object_new_array(),
		    *ev = json_object_new_array();
	int r = dk_json_add(f, "type", type);
	r |= dk_json_append_str(type, "container");
	r |= dk_json_add(f, "label", label);
	r |= dk_json_append_str(label, DK_LABEL_TYPE "=" DK_TYPE_CONTAINER);
	r |= dk_json_add(f, "event", ev);
	static const char *const actions[] = {"create", "start", "die", "destroy"};
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		r |= dk_json_append_str(ev, actions[i]);
	_cleanup_free_ char *esc = r ? NULL : dk_http_escape(dk_json_text(f), false);
	if (!esc || asprintf(&e->target, DK_API_PREFIX "/events?filters=%s", esc) < 0) {
		free(e);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	*out = e;
	return 0;
}

/* Connects on the first read, which dk_events_cancel() can end: a dockerd
 * that accepts and never answers must not hold whoever opened the stream. */
static int events_connect(struct dk_events *e, struct crx_err *err)
{
	struct dk_http_request req = {.method = "GET", .target = e->target};
	/* No deadline: the stream lasts until the subscriber leaves. */
	struct dk_deadline dl = {.cancelled = events_cancelled, .arg = e};
	int r = dk_http_open(e->ds->sock, &req, &dl, &e->conn, err);
	if (r == 0 && dk_http_status(e->conn) >= 400)
		r = crx_err_set(err, dk_status_errno(dk_http_status(e->conn)),
				"docker refused the event stream (HTTP %d)",
				dk_http_status(e->conn));
	if (r < 0) {
		dk_http_close(e->conn);
		e->conn = NULL;
	}
	return r;
}

static Runtime__V1__ContainerEventType event_type(const char *action)
{
	if (streq(action, "start"))
		return RUNTIME__V1__CONTAINER_EVENT_TYPE__CONTAINER_STARTED_EVENT;
	if (streq(action, "die"))
		return RUNTIME__V1__CONTAINER_EVENT_TYPE__CONTAINER_STOPPED_EVENT;
	if (streq(action, "destroy"))
		return RUNTIME__V1__CONTAINER_EVENT_TYPE__CONTAINER_DELETED_EVENT;
	return RUNTIME__V1__CONTAINER_EVENT_TYPE__CONTAINER_CREATED_EVENT;
}

/* The CRI event for one of Docker's, packed. */
static int make_event(struct dk_events *e, json_object *ev, struct rpc_buf *msg)
{
	const char *id = dk_json_str(ev, "id");
	json_object *attrs = dk_json_get(ev, "Actor", "Attributes", NULL);
	const char *sandbox = dk_json_str(attrs, DK_LABEL_SANDBOX_ID);
	if (!id || !dk_valid_id(id))
		return 0;
	struct dk_ctx c = {.ds = e->ds, .call = e->parent};
	c.dl = dk_deadline_in(NULL, 10000);
	struct dk_arena *a = &c.arena;
	Runtime__V1__ContainerEventResponse *out =
		dk_msg_new(a, &runtime__v1__container_event_response__descriptor);
	if (!out)
		return -ENOMEM;
	out->container_id = dk_arena_strdup(a, id);
	out->container_event_type = event_type(dk_json_str(ev, "Action"));
	out->created_at = dk_json_int(ev, "timeNano", 0);
	if (sandbox && dk_valid_id(sandbox)) {
		Runtime__V1__PodSandboxStatusRequest sreq =
			RUNTIME__V1__POD_SANDBOX_STATUS_REQUEST__INIT;
		sreq.pod_sandbox_id = (char *)sandbox;
		ProtobufCMessage *sresp = NULL;
		if (dk_pod_sandbox_status(&c, &sreq.base, &sresp, NULL) == 0)
			out->pod_sandbox_status =
				((Runtime__V1__PodSandboxStatusResponse *)sresp)->status;
		/* Asked of Docker, not the state cache: the event stream is
		 * its own, and each status must be as of this event. */
		_cleanup_json_ json_object *filters =
			dk_filters(DK_TYPE_CONTAINER, NULL, DK_LABEL_SANDBOX_ID, sandbox);
		_cleanup_json_ json_object *list = NULL;
		if (filters && dk_container_list(e->ds->sock, filters, &c.dl, &list, NULL) == 0) {
			for (size_t i = 0; i < json_object_array_length(list); i++) {
				_cleanup_json_ json_object *inspect = NULL;
				const char *cid =
					dk_json_str(json_object_array_get_idx(list, i), "Id");
				if (!cid || dk_container_inspect(e->ds->sock, cid, &c.dl, &inspect,
								 NULL) < 0)
					continue;
				Runtime__V1__ContainerStatus *st =
					dk_container_status_msg(&c, inspect);
				if (st)
					DK_PUSH(a, &out->n_containers_statuses,
						&out->containers_statuses, st);
			}
		}
	}
	int r = a->failed ? -ENOMEM : dk_pack(&out->base, &msg->data, &msg->len);
	dk_arena_clear(a);
	return r < 0 ? r : 1;
}

int dk_events_next(struct dk_events *e, struct rpc_buf *msg, struct rpc_result *end)
{
	if (!e->conn) {
		struct crx_err err = {0};
		int r = events_connect(e, &err);
		if (r < 0) {
			end->code = rpc_code_from_errno(r);
			end->details = strdup(err.msg);
			return 0;
		}
	}
	for (;;) {
		char *line;
		size_t len;
		struct crx_err err = {0};
		int r = dk_http_read_line(e->conn, 1 * MIB, &line, &len, &err);
		if (r == 0 || r == -ECANCELED) {
			end->code = r == 0 ? RPC_UNAVAILABLE : RPC_CANCELLED;
			if (r == 0 && asprintf(&end->details, "docker ended its event stream") < 0)
				end->details = NULL;
			return 0;
		}
		if (r < 0) { /* a stream cut short: dockerd went away */
			end->code = r == -ENOMEM ? RPC_RESOURCE_EXHAUSTED : RPC_UNAVAILABLE;
			end->details = strdup(err.msg);
			return 0;
		}
		_cleanup_json_ json_object *ev = NULL;
		if (!len || dk_json_parse(line, len, &ev, NULL) < 0)
			continue;
		r = make_event(e, ev, msg);
		if (r < 0)
			return r;
		if (r > 0)
			return 1;
	}
}

void dk_events_cancel(struct dk_events *e)
{
	atomic_store(&e->cancelled, true);
}

void dk_events_free(struct dk_events *e)
{
	if (!e)
		return;
	dk_http_close(e->conn);
	free(e->target);
	free(e);
}
