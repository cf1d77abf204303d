/* The configuration model: what crimux.conf says, as plain data. daemon/
 * reads the file into it (daemon/conf.c); the router and the backends take
 * their settings from it. No file I/O here. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "common/err.h"

#define CRX_DEFAULT_SOCKET "/run/crimux/crimux.sock"

#define MILLI_PER_CORE 1000
#define GIB            (1024ll * 1024 * 1024)

/* The limits of the `kata` policy profile (router/policy.c applies them). */
struct kata_policy {
	int64_t min_cpu_milli;      /* smallest pod: CPU */
	int64_t min_memory;         /* smallest pod: memory, bytes */
	int64_t min_memory_per_cpu; /* bytes of memory per core, at least */
	int64_t max_memory_per_cpu; /* bytes of memory per core, at most */
	int64_t overhead_cpu_milli; /* added when a pod declares no overhead */
	int64_t overhead_memory;
	/* Annotation prefixes the runtime reserves for itself, and the keys (or
	 * prefixes ending in '*') a pod may set all the same. */
	char **reserved_annotations;
	size_t n_reserved_annotations;
	char **allowed_annotations;
	size_t n_allowed_annotations;
};

/* The documented defaults: 0.25 CPU / 256 MiB at least, 1 to 8 GiB per core,
 * 0.1 CPU / 100 MiB overhead, io.katacontainers. and the CRI runtimes'
 * internal annotations reserved. */
int kata_policy_init(struct kata_policy *p);
void kata_policy_clear(struct kata_policy *p);

/* "250m", "0.5", "2" → milli-CPU; "256Mi", "1Gi", "1e9", "1G" → bytes. */
int parse_cpu_milli(const char *s, int64_t *out);
int parse_bytes(const char *s, int64_t *out);

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
	/* Where /metrics is served (see struct crx_metrics_address); NULL: nowhere. */
	char *metrics_address;
	bool metrics_allow_remote; /* a non-loopback metrics_address is allowed */
};

void crx_config_clear(struct crx_config *cfg);

const struct crx_backend_config *crx_config_backend(const struct crx_config *cfg, const char *name);
const struct crx_handler_config *crx_config_handler(const struct crx_config *cfg, const char *name);
/* The value of a backend-specific key, or NULL when it is not set. */
const char *crx_backend_option(const struct crx_backend_config *b, const char *key);

/* A metrics_address: "127.0.0.1:PORT" (any IPv4 address), "[::1]:PORT" (any
 * IPv6 address) or "unix:/PATH". Numeric addresses only: the daemon must
 * not depend on name resolution to start. */
struct crx_metrics_address {
	struct sockaddr_storage addr; /* sockaddr_in, sockaddr_in6 or sockaddr_un */
	socklen_t len;
	bool loopback; /* 127.0.0.0/8, ::1 or a unix socket */
};
int crx_metrics_address_parse(const char *s, struct crx_metrics_address *out, struct crx_err *err);
