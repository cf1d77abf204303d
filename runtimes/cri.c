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
		      const struct backend_serve *how)
{
	struct rpc_relay relay = {
		.channel = b->priv,
		/* An unknown method may stream: the streaming relay handles both. */
		.server_streaming = !m || m->server_streaming,
	};
	if (how) {
		relay.request = how->request;
		relay.observe = how->observe;
		relay.observe_arg = how->observe_arg;
		relay.detach_ms = how->detach_ms;
	}
	rpc_call_relay(call, &relay);
}

static struct rpc_channel *cri_channel(struct backend *b)
{
	return b->priv;
}

static int cri_call(struct backend *b, const char *method, const struct rpc_buf *req,
		    struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *res)
{
	return rpc_channel_call(b->priv, method, req->data, req->len, parent, timeout_ms, res);
}

/* A backend stream here is gRPC's own stream reader. */
static int cri_stream_open(struct backend *b, const char *method, const struct rpc_buf *req,
			   struct rpc_call *parent, struct backend_stream **out)
{
	return rpc_stream_open(b->priv, method, req->data, req->len, parent, 0,
			       (struct rpc_stream **)out);
}

static int cri_stream_next(struct backend_stream *s, struct rpc_buf *msg, struct rpc_result *end)
{
	return rpc_stream_next((struct rpc_stream *)s, msg, end);
}

static void cri_stream_cancel(struct backend_stream *s)
{
	rpc_stream_cancel((struct rpc_stream *)s);
}

static void cri_stream_free(struct backend_stream *s)
{
	rpc_stream_free((struct rpc_stream *)s);
}

const struct backend_ops cri_backend_ops = {
	.type = "cri",
	.open = cri_open,
	.close = cri_close,
	.serve = cri_serve,
	.channel = cri_channel,
	.call = cri_call,
	.stream_open = cri_stream_open,
	.stream_next = cri_stream_next,
	.stream_cancel = cri_stream_cancel,
	.stream_free = cri_stream_free,
};
