#include "config.h"

#include "cri/router.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/methods.h"
#include "runtimes/backend.h"

struct router {
	struct backend **backends;
	size_t n_backends;
	struct backend *fallback; /* the first backend: gets what no rule claims */
};

int router_new(const struct crx_config *cfg, struct router **out, struct crx_err *err)
{
	struct router *r = calloc(1, sizeof(*r));
	if (!r || !(r->backends = calloc(cfg->n_backends, sizeof(*r->backends)))) {
		free(r);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < cfg->n_backends; i++) {
		int ret = backend_open(&cfg->backends[i], &r->backends[i], err);
		if (ret < 0) {
			router_free(r);
			return ret;
		}
		r->n_backends++;
	}
	r->fallback = r->backends[0];
	*out = r;
	return 0;
}

void router_free(struct router *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n_backends; i++)
		backend_free(r->backends[i]);
	free(r->backends);
	free(r);
}

/* Version describes crimux, the runtime the kubelet talks to. */
static void reply_version(struct rpc_call *call)
{
	Runtime__V1__VersionResponse resp = RUNTIME__V1__VERSION_RESPONSE__INIT;
	resp.version = (char *)"0.1.0";
	resp.runtime_name = (char *)PACKAGE_NAME;
	resp.runtime_version = (char *)PACKAGE_VERSION;
	resp.runtime_api_version = (char *)"v1";
	uint8_t buf[256];
	size_t len = runtime__v1__version_response__pack(&resp, buf);
	rpc_call_reply(call, buf, len);
}

void router_dispatch(struct rpc_call *call, void *userdata)
{
	struct router *r = userdata;
	const struct cri_method *m = cri_method_find(rpc_call_method(call));
	if (m && m->response == &runtime__v1__version_response__descriptor) {
		reply_version(call);
		return;
	}
	r->fallback->ops->serve(r->fallback, call, m, NULL);
}
