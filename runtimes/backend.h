/* One interface for every backend: a const table of operations, filled with
 * named fields. A "cri" backend relays calls to a CRI endpoint (containerd);
 * other kinds answer calls themselves. */
#pragma once

#include "common/err.h"
#include "cri/methods.h"
#include "cri/rpc.h"
#include "daemon/conf.h"

struct backend;

struct backend_ops {
	const char *type;
	/* Checks a key of this backend type's own (NULL: it has none). */
	int (*check_option)(const char *key, const char *value, struct crx_err *err);
	int (*open)(struct backend *b, const struct crx_backend_config *cfg, struct crx_err *err);
	void (*close)(struct backend *b);
	/* Completes an incoming call: relays it or answers it. m is NULL for a
	 * method the schema does not know; request, when set, replaces the
	 * client's request bytes. */
	void (*serve)(struct backend *b, struct rpc_call *call, const struct cri_method *m,
	              const struct rpc_buf *request);
};

struct backend {
	const struct backend_ops *ops;
	char *name;
	void *priv;
};

extern const struct backend_ops cri_backend_ops;

#define BACKEND_TYPE_NAMES "cri"
const struct backend_ops *backend_type_find(const char *type);

int backend_open(const struct crx_backend_config *cfg, struct backend **out, struct crx_err *err);
void backend_free(struct backend *b);
