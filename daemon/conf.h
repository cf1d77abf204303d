/* crimux.conf: INI sections read with inih. The main file comes first, then
 * every *.conf of its drop-in directory in name order; later values win. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

#include "common/err.h"
#include "router/policy.h"

#define CRX_DEFAULT_CONFIG "/etc/crimux/crimux.conf"
#define CRX_DEFAULT_SOCKET "/run/crimux/crimux.sock"

/* A key only one kind of backend understands, kept with where it was set so
 * that the backend's own check can point at the line. */
struct crx_option {
	char *key;
	char *value;
	char *file;
	unsigned line;
};

struct crx_backend_config {
	char *name;
	char *type;     /* "cri": any CRI endpoint, containerd first of all */
	char *endpoint; /* "unix:///run/containerd/containerd.sock" */
	struct crx_option *options;
	size_t n_options;
};

enum crx_policy {
	CRX_POLICY_NONE,
	CRX_POLICY_KATA,
};

/* A RuntimeClass handler: which backend runs its pods, under which name. */
struct crx_handler_config {
	char *name;
	char *backend;
	char *runtime_handler; /* the backend's name for it */
	enum crx_policy policy;
	struct kata_policy kata;
	char *where;      /* "file:line" of the section, for errors */
	char *kata_where; /* where a kata_* key was first set */
};

struct crx_config {
	char *socket_path;
	mode_t socket_mode;
	int log_level; /* syslog priority: LOG_ERR .. LOG_DEBUG */
	unsigned shutdown_timeout_ms;
	struct crx_backend_config *backends;
	size_t n_backends;
	/* With no [handler] section, the one backend gets every pod and
	 * runtime_handler passes through unchanged. */
	struct crx_handler_config *handlers;
	size_t n_handlers;
	char *default_handler; /* for runtime_handler ""; the first handler if unset */
};

/* Loads path and then its drop-ins (dropin_dir, or "<path>.d" when NULL).
 * On error, err names the file, the line and the key. */
int crx_config_load(const char *path, const char *dropin_dir, struct crx_config *out,
		    struct crx_err *err);
void crx_config_clear(struct crx_config *cfg);

const struct crx_backend_config *crx_config_backend(const struct crx_config *cfg, const char *name);
const struct crx_handler_config *crx_config_handler(const struct crx_config *cfg, const char *name);
/* The value of a backend-specific key, or NULL when it is not set. */
const char *crx_backend_option(const struct crx_backend_config *b, const char *key);
