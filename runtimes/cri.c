/* A backend that is itself a CRI endpoint (containerd's CRI plugin, or any
 * other runtime): calls are relayed to it unchanged. */
#include "config.h"

#include "runtimes/backend.h"

#include "common/util.h"

static int cri_open(struct backend *b, const struct crx_backend_config *cfg, struct crx_err *err)
{
	struct rpc_channel_options opts = {
	    .name = cfg->name,
	    .target = cfg->endpoint,
	    .max_message = 16 * MIB,
	};
	struct rpc_channel *ch;
	int r = rpc_channel_new(&opts, &ch, err);
	if (r < 0)
		return r;
	b->priv = ch;
	return 0;
}

static void cri_close(struct backend *b)
{
	rpc_channel_free(b->priv);
}

static void cri_serve(struct backend *b, struct rpc_call *call, const struct cri_method *m,
                      const struct rpc_buf *request)
{
	struct rpc_relay relay = {
	    .channel = b->priv,
	    /* An unknown method may stream: the streaming relay handles both. */
	    .server_streaming = !m || m->server_streaming,
	    .request = request,
	};
	rpc_call_relay(call, &relay);
}

const struct backend_ops cri_backend_ops = {
    .type = "cri",
    .open = cri_open,
    .close = cri_close,
    .serve = cri_serve,
};
