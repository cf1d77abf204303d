/* One interface for every backend: a const table of operations, filled with
 * named fields. A "cri" backend relays calls to a CRI endpoint (containerd);
 * other kinds answer calls themselves. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>

#include "common/err.h"
#include "cri/methods.h"
#include "cri/rpc.h"
#include "common/crx-config.h"

struct backend;
struct backend_stream;

/* How the router wants an incoming call served. */
struct backend_serve {
	/* Replaces the client's request bytes (a policy rewrite); NULL keeps them. */
	const struct rpc_buf *request;
	/* Hears the final status and, for a unary reply, its bytes, exactly once
	 * and before the client does: the router learns and forgets which backend
	 * owns which object there. Must not block. */
	void (*observe)(int code, const uint8_t *reply, size_t len, void *arg);
	void *observe_arg;
	/* Non-zero: the work goes on when the client gives up, for at least this
	 * long (see rpc_relay.detach_ms): creates the kubelet may retry. */
	unsigned detach_ms;
};

struct backend_ops {
	const char *type;
	/* Checks a key of this backend type's own (NULL: it has none). */
	int (*check_option)(const char *key, const char *value, struct crx_err *err);
	int (*open)(struct backend *b, const struct crx_backend_config *cfg, struct crx_err *err);
	void (*close)(struct backend *b);
	/* Completes an incoming call: relays it or answers it. m is NULL for a
	 * method the schema does not know; how may be NULL. */
	void (*serve)(struct backend *b, struct rpc_call *call, const struct cri_method *m,
		      const struct backend_serve *how);
	/* The gRPC channel calls are relayed on, for backends that relay (NULL
	 * otherwise): crimux then fans out to them on its event thread. */
	struct rpc_channel *(*channel)(struct backend *b);
	/* A unary call crimux makes itself (merged lists, status, lookups).
	 * Blocking; parent passes on the client's deadline and cancellation,
	 * timeout_ms bounds calls that have no client behind them. Returns 0
	 * when the backend answered, whatever the status. */
	int (*call)(struct backend *b, const char *method, const struct rpc_buf *req,
		    struct rpc_call *parent, unsigned timeout_ms, struct rpc_result *res);
	/* A server stream crimux reads itself: next() gives 1 and a message, or 0
	 * and the final status; cancel() may come from another thread. */
	int (*stream_open)(struct backend *b, const char *method, const struct rpc_buf *req,
			   struct rpc_call *parent, struct backend_stream **out);
	int (*stream_next)(struct backend_stream *s, struct rpc_buf *msg, struct rpc_result *end);
	void (*stream_cancel)(struct backend_stream *s);
	void (*stream_free)(struct backend_stream *s);
};

/* Counted: a reload carries a backend whose configuration did not change
 * into the new generation, so the old and the new share it (one log pump,
 * one streaming server, one connection) instead of running two. */
struct backend {
	const struct backend_ops *ops;
	char *name;
	void *priv;
	atomic_int refs;
};

extern const struct backend_ops cri_backend_ops;
extern const struct backend_ops docker_backend_ops;

#define BACKEND_TYPE_NAMES "cri, docker"
const struct backend_ops *backend_type_find(const char *type);

int backend_open(const struct crx_backend_config *cfg, struct backend **out, struct crx_err *err);
struct backend *backend_ref(struct backend *b);
/* Drops a reference; the last one closes the backend. */
void backend_free(struct backend *b);
/* Whether two configurations describe the same backend: name, type,
 * endpoint and every option's value (in any order). */
bool backend_config_same(const struct crx_backend_config *a, const struct crx_backend_config *b);
