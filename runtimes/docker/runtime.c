/* Version, Status and runtime configuration of the docker backend. */
#include "config.h"

#include "runtimes/docker/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/sandbox.h"

int dk_version(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
	       struct crx_err *err)
{
	_cleanup_json_ json_object *v = NULL;
	int r = dk_call(c->ds->sock, "GET", "/version", NULL, &c->dl, &v, NULL, err);
	if (r < 0)
		return r;
	Runtime__V1__VersionResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__version_response__descriptor);
	if (!out)
		return -ENOMEM;
	out->version = (char *)"0.1.0";
	out->runtime_name = (char *)"docker";
	out->runtime_version = dk_arena_strdup(&c->arena, dk_json_str(v, "Version"));
	out->runtime_api_version = (char *)"v1";
	*resp = &out->base;
	return 0;
}

static int add_condition(struct dk_ctx *c, Runtime__V1__RuntimeStatus *st, const char *type,
			 bool ok, const char *reason, const char *message)
{
	Runtime__V1__RuntimeCondition *cond =
		dk_msg_new(&c->arena, &runtime__v1__runtime_condition__descriptor);
	if (!cond)
		return -ENOMEM;
	cond->type = (char *)type;
	cond->status = ok;
	if (!ok) {
		cond->reason = (char *)reason;
		cond->message = dk_arena_strdup(&c->arena, message);
	}
	return DK_PUSH(&c->arena, &st->n_conditions, &st->conditions, cond);
}

int dk_status(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
	      struct crx_err *err)
{
	const Runtime__V1__StatusRequest *in = (const void *)req;
	struct dk_arena *a = &c->arena;
	Runtime__V1__StatusResponse *out = dk_msg_new(a, &runtime__v1__status_response__descriptor);
	Runtime__V1__RuntimeStatus *st = dk_msg_new(a, &runtime__v1__runtime_status__descriptor);
	Runtime__V1__RuntimeHandler *h = dk_msg_new(a, &runtime__v1__runtime_handler__descriptor);
	Runtime__V1__RuntimeHandlerFeatures *hf =
		dk_msg_new(a, &runtime__v1__runtime_handler_features__descriptor);
	Runtime__V1__RuntimeFeatures *f = dk_msg_new(a, &runtime__v1__runtime_features__descriptor);
	if (!out || !st || !h || !hf || !f)
		return -ENOMEM;
	out->status = st;
	out->features = f;

	/* Runtime: dockerd answers its ping. */
	struct crx_err derr = {0};
	struct dk_deadline dl = dk_deadline_in(&c->dl, 5000);
	int r = dk_call(c->ds->sock, "GET", "/_ping", NULL, &dl, NULL, NULL, &derr);
	char msg[1200];
	snprintf(msg, sizeof(msg), "docker: %s", derr.msg);
	if (add_condition(c, st, "RuntimeReady", r == 0, "DockerDaemonNotReady", msg) < 0)
		return -ENOMEM;

	/* Network: a valid CNI configuration exists. */
	struct crx_err nerr = {0};
	r = dk_cni_ready(c->ds, &nerr);
	snprintf(msg, sizeof(msg), "docker: network plugin is not ready: %s", nerr.msg);
	if (add_condition(c, st, "NetworkReady", r == 0, "NetworkPluginNotReady", msg) < 0)
		return -ENOMEM;

	h->name = c->ds->handler;
	h->features = hf;
	if (DK_PUSH(a, &out->n_runtime_handlers, &out->runtime_handlers, h) < 0)
		return -ENOMEM;

	if (in->verbose) {
		_cleanup_json_ json_object *info = json_object_new_object();
		if (!info || dk_json_add_str(info, "backend", c->ds->name) < 0 ||
		    dk_json_add_str(info, "endpoint", c->ds->sock) < 0 ||
		    dk_json_add_str(info, "cgroupDriver", dk_cgroup_driver(c)) < 0 ||
		    dk_json_add_str(info, "sandboxImage", c->ds->pause_image) < 0 ||
		    dk_json_add_str(info, "cniConfDir", c->ds->cni_conf_dir) < 0 ||
		    dk_json_add_str(info, "cniBinDir", c->ds->cni_bin_path) < 0 ||
		    dk_json_add_str(info, "stateDir", c->ds->state_dir) < 0 ||
		    DK_MAP_ADD(a, &runtime__v1__status_response__info_entry__descriptor,
			       &out->n_info, &out->info, "config", dk_json_text(info)) < 0)
			return -ENOMEM;
		_cleanup_json_ json_object *rec = json_object_new_object();
		pthread_mutex_lock(&c->ds->lock);
		json_object *corrupt =
			c->ds->corrupt ? json_object_get(c->ds->corrupt) : json_object_new_array();
		pthread_mutex_unlock(&c->ds->lock);
		if (!rec || dk_json_add(rec, "corruptCheckpoints", corrupt) < 0 ||
		    DK_MAP_ADD(a, &runtime__v1__status_response__info_entry__descriptor,
			       &out->n_info, &out->info, "recovery", dk_json_text(rec)) < 0)
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}

int dk_runtime_config(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		      struct crx_err *err)
{
	_cleanup_json_ json_object *info = NULL;
	int r = dk_call(c->ds->sock, "GET", "/info", NULL, &c->dl, &info, NULL, err);
	if (r < 0)
		return r;
	Runtime__V1__RuntimeConfigResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__runtime_config_response__descriptor);
	Runtime__V1__LinuxRuntimeConfiguration *l =
		dk_msg_new(&c->arena, &runtime__v1__linux_runtime_configuration__descriptor);
	if (!out || !l)
		return -ENOMEM;
	l->cgroup_driver = streq(dk_json_str(info, "CgroupDriver"), "systemd")
				   ? RUNTIME__V1__CGROUP_DRIVER__SYSTEMD
				   : RUNTIME__V1__CGROUP_DRIVER__CGROUPFS;
	out->linux = l;
	*resp = &out->base;
	return 0;
}

int dk_update_runtime_config(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			     struct crx_err *err)
{
	const Runtime__V1__UpdateRuntimeConfigRequest *in = (const void *)req;
	/* Only the pod CIDR exists; CNI plugins get theirs from their own
	 * configuration, so it is kept for Status only. */
	const char *cidr = in->runtime_config && in->runtime_config->network_config
				   ? in->runtime_config->network_config->pod_cidr
				   : NULL;
	if (cidr && *cidr) {
		char *copy = strdup(cidr);
		if (!copy)
			return crx_err_set(err, -ENOMEM, "out of memory");
		pthread_mutex_lock(&c->ds->lock);
		free(c->ds->pod_cidr);
		c->ds->pod_cidr = copy;
		pthread_mutex_unlock(&c->ds->lock);
	}
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__update_runtime_config_response__descriptor);
	if (!out)
		return -ENOMEM;
	*resp = out;
	return 0;
}
