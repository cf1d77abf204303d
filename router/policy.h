/* Admission rules for handlers with the `kata` policy profile, checked on the
 * decoded request before anything reaches a backend. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/crx-config.h"
#include "cri/api.pb-c.h"

/* The kubelet's conversions between milli-CPU and cgroup values. Any int64
 * goes in (they come from clients); results are clamped to int64, never
 * wrapped. */
int64_t cpu_milli_to_shares(int64_t milli);
int64_t cpu_milli_to_quota(int64_t milli, int64_t period);
int64_t cpu_shares_to_milli(int64_t shares);
/* The CPU limit cpu_quota / cpu_period stands for (period 0: 100000); 0 for
 * no quota. */
int64_t cpu_limit_milli(const Runtime__V1__LinuxContainerResources *r);

/* RunPodSandbox: refuses host namespaces, unequal CPU request and limit, a
 * missing memory limit, a pod below the minimum or outside the CPU:memory
 * ratio, reserved annotations, a declared overhead below the minimum, and
 * resources.unified entries that would override the checked limits.
 * When the pod declares no overhead, the configured one is written into
 * config and *changed is set. */
int kata_check_sandbox(const struct kata_policy *p, const char *handler,
		       Runtime__V1__PodSandboxConfig *config, bool *changed, struct crx_err *err);

/* CreateContainer in a pod of such a handler: no host namespaces, equal CPU
 * request and limit, a memory limit, no reserved annotations. */
int kata_check_container(const struct kata_policy *p, const char *handler,
			 const Runtime__V1__ContainerConfig *config, struct crx_err *err);

/* Every call that can change a pod of such a handler, decoded: RunPodSandbox
 * (kata_check_sandbox), CreateContainer (the container, and its
 * sandbox_config as a pod), UpdateContainerResources (as a container's
 * resources and annotations) and UpdatePodSandboxResources (as a pod's
 * resources and overhead). A missing overhead is filled in (*changed). Other
 * requests pass. */
int kata_check_request(const struct kata_policy *p, const char *handler, ProtobufCMessage *req,
		       bool *changed, struct crx_err *err);
/* Whether kata_check_request() decides on requests of this type. */
bool kata_checks(const ProtobufCMessageDescriptor *request);
