/* CRI configurations translated into Docker's container create bodies (API
 * 1.41): the sandbox's pause container and the pod's containers, security
 * context, namespaces, mounts, devices and resources. Pure functions apart
 * from reading seccomp profiles and resolving mount sources; unit tested. */
#pragma once

#include <json-c/json.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "cri/api.pb-c.h"

struct dk_spec_opts {
	const char *cgroup_driver; /* Docker's: "cgroupfs" or "systemd" */
	/* The lowest oom_score_adj the kernel lets containers have; INT_MIN
	 * when there is no restriction. */
	int oom_score_adj_min;
	/* Capabilities the processes here may have (the bounding set), when
	 * that is not every capability the kernel knows: Docker's privileged
	 * mode would ask for all and fail, so crimux grants these instead. */
	uint64_t cap_bounding;
	bool caps_restricted;
	const char *log_max_size; /* json-file max-size, e.g. "10m" */
	unsigned log_max_files;
	int64_t created_ns;          /* goes into the created label */
	const char *runtime_handler; /* a sandbox's, as RunPodSandbox named it */
};

/* The pause container's default oom_score_adj (kubelet's dockershim). */
#define DK_SANDBOX_OOM_SCORE_ADJ (-998)
#define DK_SANDBOX_CPU_SHARES    2

int dk_sandbox_spec(const Runtime__V1__PodSandboxConfig *cfg, const char *image,
		    const struct dk_spec_opts *o, json_object **out, struct crx_err *err);

struct dk_container_ctx {
	const char *sandbox_id;
	const char *cgroup_parent; /* the sandbox's, as Docker has it */
	const char *log_dir;       /* the sandbox's log_directory, or NULL */
	const char *log_path;      /* log_directory/log_path, or NULL */
};
int dk_container_spec(const Runtime__V1__ContainerConfig *cfg, const struct dk_container_ctx *ctx,
		      const struct dk_spec_opts *o, json_object **out, struct crx_err *err);

/* Adds Docker's resource fields for r to obj (a HostConfig or an update). */
int dk_resources_json(const Runtime__V1__LinuxContainerResources *r, const struct dk_spec_opts *o,
		      json_object *obj, struct crx_err *err);

/* The cgroup parent Docker expects for the kubelet's: unchanged with the
 * cgroupfs driver; a slice name with the systemd driver. NULL for "". */
int dk_cgroup_parent(const char *driver, const char *parent, char **out, struct crx_err *err);

/* Docker's name of capability number n ("CHOWN"), or NULL. */
const char *dk_cap_name(unsigned n);

/* oom_score_adj as the kernel will take it. */
int dk_clamp_oom_score_adj(int64_t value, int min);

/* CRI stop signal to the number Docker's StopSignal takes (0: default), and
 * back. */
int dk_signal_number(Runtime__V1__Signal s);
Runtime__V1__Signal dk_signal_from_number(int signo);

/* The kubelet's and CRI-O's rules for a pod sysctl: a valid name, a value
 * without '+', '=' or control characters, and only namespaced sysctls
 * (net.* without the host network; kernel.sem, kernel.shm*, kernel.msg*,
 * fs.mqueue.* without the host IPC namespace). -EINVAL naming the problem. */
int dk_sysctl_check(const char *key, const char *value, bool host_net, bool host_ipc,
		    struct crx_err *err);
