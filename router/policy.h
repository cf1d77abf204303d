/* Admission rules for handlers with the `kata` policy profile, checked on the
 * decoded request before anything reaches a backend. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "cri/api.pb-c.h"

#define MILLI_PER_CORE 1000
#define GIB            (1024ll * 1024 * 1024)

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

/* The kubelet's conversions between milli-CPU and cgroup values. */
int64_t cpu_milli_to_shares(int64_t milli);
int64_t cpu_milli_to_quota(int64_t milli, int64_t period);

/* RunPodSandbox: refuses host namespaces, unequal CPU request and limit, a
 * missing memory limit, a pod below the minimum or outside the CPU:memory
 * ratio, reserved annotations, and a declared overhead below the minimum.
 * When the pod declares no overhead, the configured one is written into
 * config and *changed is set. */
int kata_check_sandbox(const struct kata_policy *p, const char *handler,
		       Runtime__V1__PodSandboxConfig *config, bool *changed, struct crx_err *err);

/* CreateContainer in a pod of such a handler: equal CPU request and limit, a
 * memory limit, no reserved annotations. */
int kata_check_container(const struct kata_policy *p, const char *handler,
			 const Runtime__V1__ContainerConfig *config, struct crx_err *err);

/* "250m", "0.5", "2" → milli-CPU; "256Mi", "1Gi", "1e9", "1G" → bytes. */
int parse_cpu_milli(const char *s, int64_t *out);
int parse_bytes(const char *s, int64_t *out);
