/* Admission rules for handlers with the `kata` policy profile, checked on the
 * decoded request before anything reaches a backend. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/crx-config.h"
#include "cri/api.pb-c.h"

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
