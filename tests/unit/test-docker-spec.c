/* CRI configurations as Docker create bodies: sandbox and container specs,
 * security context, namespaces, resources, clamps and conversions. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/spec.h"
#include "tap.h"

static const struct dk_spec_opts opts = {
	.cgroup_driver = "cgroupfs",
	.oom_score_adj_min = 0,
	.log_max_size = "10m",
	.log_max_files = 3,
	.created_ns = 42,
};

static bool has(json_object *arr, const char *s)
{
	for (size_t i = 0; arr && i < json_object_array_length(arr); i++)
		if (streq(json_object_get_string(json_object_array_get_idx(arr, i)), s))
			return true;
	return false;
}

static const char *hstr(json_object *spec, const char *key)
{
	return dk_json_str(dk_json_get(spec, "HostConfig", NULL), key);
}

static int64_t hint(json_object *spec, const char *key)
{
	return dk_json_int(dk_json_get(spec, "HostConfig", NULL), key, -12345);
}

static json_object *hget(json_object *spec, const char *key)
{
	return dk_json_get(spec, "HostConfig", key, NULL);
}

static void sysctls(void)
{
	struct crx_err err = {0};
	is_int(dk_sysctl_check("net.ipv4.ip_forward", "1", false, false, &err), 0, "net.*");
	is_int(dk_sysctl_check("net/ipv4/conf/eth0.100/forwarding", "1", false, false, &err), 0,
	       "slash form");
	is_int(dk_sysctl_check("kernel.shm_rmid_forced", "1", false, false, &err), 0, "IPC");
	is_int(dk_sysctl_check("net.ipv4.ip_local_port_range", "1024 65000", false, false, &err), 0,
	       "a value with a space");
	is_int(dk_sysctl_check("kernel.shm_rmid_forced", "1+kernel.core_pattern=|/x", false, false,
			       &err),
	       -EINVAL, "CVE-2022-0811: '+' and '='");
	is_int(dk_sysctl_check("net.ipv4.ip_forward", "1\nx", false, false, &err), -EINVAL,
	       "a newline");
	is_int(dk_sysctl_check("kernel.core_pattern", "|/tmp/x", false, false, &err), -EINVAL,
	       "not namespaced");
	ok(strstr(err.msg, "kernel.core_pattern") != NULL, "named: %s", err.msg);
	is_int(dk_sysctl_check("net.ipv4.ip_forward", "1", true, false, &err), -EINVAL,
	       "net.* with the host network");
	is_int(dk_sysctl_check("kernel.msgmax", "1", false, true, &err), -EINVAL,
	       "IPC with the host IPC");
	is_int(dk_sysctl_check("Net.ipv4", "1", false, false, &err), -EINVAL, "upper case");
	is_int(dk_sysctl_check("net..x", "1", false, false, &err), -EINVAL, "empty part");
	is_int(dk_sysctl_check("net.x=y", "1", false, false, &err), -EINVAL, "'=' in the name");
	is_int(dk_sysctl_check("", "1", false, false, &err), -EINVAL, "empty");
}

static void sandbox(void)
{
	Runtime__V1__PodSandboxConfig cfg = RUNTIME__V1__POD_SANDBOX_CONFIG__INIT;
	Runtime__V1__PodSandboxMetadata md = RUNTIME__V1__POD_SANDBOX_METADATA__INIT;
	Runtime__V1__LinuxPodSandboxConfig lc = RUNTIME__V1__LINUX_POD_SANDBOX_CONFIG__INIT;
	Runtime__V1__LinuxSandboxSecurityContext sc =
		RUNTIME__V1__LINUX_SANDBOX_SECURITY_CONTEXT__INIT;
	Runtime__V1__NamespaceOption ns = RUNTIME__V1__NAMESPACE_OPTION__INIT;
	Runtime__V1__LinuxPodSandboxConfig__SysctlsEntry sysctl =
		RUNTIME__V1__LINUX_POD_SANDBOX_CONFIG__SYSCTLS_ENTRY__INIT;
	Runtime__V1__LinuxPodSandboxConfig__SysctlsEntry *sysctls[] = {&sysctl};
	md.name = "web";
	md.namespace_ = "prod";
	md.uid = "u1";
	cfg.metadata = &md;
	cfg.hostname = "web-host";
	cfg.linux = &lc;
	lc.security_context = &sc;
	lc.cgroup_parent = "/kubepods/burstable/pod-u1";
	lc.n_sysctls = 1;
	lc.sysctls = sysctls;
	sysctl.key = "net.ipv4.ip_forward";
	sysctl.value = "1";
	sc.namespace_options = &ns;

	json_object *spec = NULL;
	struct crx_err err = {0};
	is_int(dk_sandbox_spec(&cfg, "pause:1", &opts, &spec, &err), 0, "sandbox spec");
	is_str(dk_json_str(spec, "Image"), "pause:1", "pause image");
	is_str(dk_json_str(spec, "Hostname"), "web-host", "hostname");
	is_str(hstr(spec, "NetworkMode"), "none", "CNI networking: none");
	is_str(hstr(spec, "IpcMode"), "shareable", "IPC shareable for the pod");
	ok(!hstr(spec, "PidMode"), "own PID namespace");
	is_int(hint(spec, "OomScoreAdj"), 0, "-998 clamped to the minimum");
	is_str(hstr(spec, "CgroupParent"), "/kubepods/burstable/pod-u1", "cgroup parent");
	is_str(dk_json_str(hget(spec, "Sysctls"), "net.ipv4.ip_forward"), "1", "sysctls");
	json_object *labels = dk_json_get(spec, "Labels", NULL);
	is_str(dk_json_str(labels, DK_LABEL_TYPE), DK_TYPE_SANDBOX, "type label");
	is_str(dk_json_str(labels, DK_LABEL_CREATED), "42", "created label");
	has_str(dk_json_str(labels, DK_LABEL_METADATA), "\"namespace\":\"prod\"", "metadata label");
	ok(has(hget(spec, "SecurityOpt"), "seccomp=unconfined"), "no seccomp asked: unconfined");
	json_object_put(spec);

	ns.network = RUNTIME__V1__NAMESPACE_MODE__NODE;
	ns.pid = RUNTIME__V1__NAMESPACE_MODE__NODE;
	ns.ipc = RUNTIME__V1__NAMESPACE_MODE__NODE;
	struct dk_spec_opts unclamped = opts;
	unclamped.oom_score_adj_min = INT_MIN;
	unclamped.cgroup_driver = "systemd";
	is_int(dk_sandbox_spec(&cfg, "pause:1", &unclamped, &spec, &err), -EINVAL,
	       "a net.* sysctl with the host network is the node's");
	lc.n_sysctls = 0;
	is_int(dk_sandbox_spec(&cfg, "pause:1", &unclamped, &spec, &err), 0, "host-network spec");
	is_str(hstr(spec, "NetworkMode"), "host", "host network");
	is_str(hstr(spec, "PidMode"), "host", "host PID");
	is_str(hstr(spec, "IpcMode"), "host", "host IPC");
	ok(!dk_json_str(spec, "Hostname"), "no hostname of its own on the host network");
	is_int(hint(spec, "OomScoreAdj"), -998, "no clamp where the kernel allows it");
	is_str(hstr(spec, "CgroupParent"), "kubepods-burstable-pod_u1.slice",
	       "systemd driver: a slice");
	json_object_put(spec);

	Runtime__V1__UserNamespace userns = RUNTIME__V1__USER_NAMESPACE__INIT;
	userns.mode = RUNTIME__V1__NAMESPACE_MODE__POD;
	ns.userns_options = &userns;
	is_int(dk_sandbox_spec(&cfg, "pause:1", &opts, &spec, &err), -EOPNOTSUPP,
	       "user namespaces refused");
	ns.userns_options = NULL;
	cfg.metadata = NULL;
	is_int(dk_sandbox_spec(&cfg, "pause:1", &opts, &spec, &err), -EINVAL, "metadata required");
}

static void cgroups(void)
{
	char *out;
	struct crx_err err = {0};
	dk_cgroup_parent("systemd",
			 "/kubepods.slice/kubepods-besteffort.slice/"
			 "kubepods-besteffort-pod1.slice",
			 &out, &err);
	is_str(out, "kubepods-besteffort-pod1.slice", "a slice path keeps its last slice");
	free(out);
	dk_cgroup_parent("systemd", "/kubepods/pod-2", &out, &err);
	is_str(out, "kubepods-pod_2.slice", "a cgroupfs path becomes a slice, '-' escaped");
	free(out);
	dk_cgroup_parent("cgroupfs", "/kubepods/pod-2", &out, &err);
	is_str(out, "/kubepods/pod-2", "cgroupfs: unchanged");
	free(out);
	dk_cgroup_parent("systemd", "", &out, &err);
	ok(out == NULL, "no parent: none");
	is_int(dk_clamp_oom_score_adj(-997, 0), 0, "clamped");
	is_int(dk_clamp_oom_score_adj(-997, INT_MIN), -997, "not clamped");
	is_int(dk_clamp_oom_score_adj(5000, INT_MIN), 1000, "upper bound");
	is_int(dk_signal_number(RUNTIME__V1__SIGNAL__SIGTERM), SIGTERM, "SIGTERM");
	is_int(dk_signal_number(RUNTIME__V1__SIGNAL__SIGRTMINPLUS3), SIGRTMIN + 3, "SIGRTMIN+3");
	is_int(dk_signal_number(RUNTIME__V1__SIGNAL__SIGRTMAXMINUS1), SIGRTMAX - 1, "SIGRTMAX-1");
	is_int(dk_signal_from_number(SIGINT), RUNTIME__V1__SIGNAL__SIGINT, "back from SIGINT");
	is_int(dk_signal_from_number(SIGRTMAX), RUNTIME__V1__SIGNAL__SIGRTMAX,
	       "back from SIGRTMAX");
	is_int(dk_signal_from_number(0), RUNTIME__V1__SIGNAL__RUNTIME_DEFAULT, "0: default");
	is_str(dk_cap_name(12), "NET_ADMIN", "capability names by number");
}

struct container {
	Runtime__V1__ContainerConfig cfg;
	Runtime__V1__ContainerMetadata md;
	Runtime__V1__ImageSpec image;
	Runtime__V1__LinuxContainerConfig lc;
	Runtime__V1__LinuxContainerSecurityContext sc;
	Runtime__V1__NamespaceOption ns;
	Runtime__V1__LinuxContainerResources res;
	Runtime__V1__Capability caps;
};

static void container_init(struct container *c)
{
	*c = (struct container){
		.cfg = RUNTIME__V1__CONTAINER_CONFIG__INIT,
		.md = RUNTIME__V1__CONTAINER_METADATA__INIT,
		.image = RUNTIME__V1__IMAGE_SPEC__INIT,
		.lc = RUNTIME__V1__LINUX_CONTAINER_CONFIG__INIT,
		.sc = RUNTIME__V1__LINUX_CONTAINER_SECURITY_CONTEXT__INIT,
		.ns = RUNTIME__V1__NAMESPACE_OPTION__INIT,
		.res = RUNTIME__V1__LINUX_CONTAINER_RESOURCES__INIT,
		.caps = RUNTIME__V1__CAPABILITY__INIT,
	};
	c->md.name = "app";
	c->image.image = "busybox:1";
	c->cfg.metadata = &c->md;
	c->cfg.image = &c->image;
	c->cfg.linux = &c->lc;
	c->lc.security_context = &c->sc;
	c->lc.resources = &c->res;
	c->sc.namespace_options = &c->ns;
	c->sc.capabilities = &c->caps;
}

static const struct dk_container_ctx ctx = {
	.sandbox_id = "sb1",
	.cgroup_parent = "/kubepods/pod1",
	.log_dir = "/var/log/pods/x",
	.log_path = "/var/log/pods/x/app/0.log",
};

static void container(void)
{
	struct container c;
	container_init(&c);
	char *cmd[] = {"sh", "-c"}, *args[] = {"echo hi"}, *add[] = {"NET_ADMIN"},
	     *drop[] = {"ALL"}, *masked[] = {"/proc/kcore"};
	Runtime__V1__KeyValue env = RUNTIME__V1__KEY_VALUE__INIT;
	Runtime__V1__KeyValue *envs[] = {&env};
	Runtime__V1__Int64Value uid = RUNTIME__V1__INT64_VALUE__INIT, gid = uid;
	int64_t groups[] = {10, 20};
	env.key = "A";
	env.value = "b=c";
	c.cfg.n_command = 2;
	c.cfg.command = cmd;
	c.cfg.n_args = 1;
	c.cfg.args = args;
	c.cfg.n_envs = 1;
	c.cfg.envs = envs;
	c.cfg.working_dir = "/w";
	c.cfg.stop_signal = RUNTIME__V1__SIGNAL__SIGINT;
	uid.value = 1000;
	gid.value = 2000;
	c.sc.run_as_user = &uid;
	c.sc.run_as_group = &gid;
	c.sc.n_supplemental_groups = 2;
	c.sc.supplemental_groups = groups;
	c.sc.readonly_rootfs = true;
	c.sc.no_new_privs = true;
	c.sc.n_masked_paths = 1;
	c.sc.masked_paths = masked;
	c.caps.n_add_capabilities = 1;
	c.caps.add_capabilities = add;
	c.caps.n_drop_capabilities = 1;
	c.caps.drop_capabilities = drop;
	c.ns.pid = RUNTIME__V1__NAMESPACE_MODE__POD;
	c.res.cpu_shares = 256;
	c.res.cpu_quota = 50000;
	c.res.cpu_period = 100000;
	c.res.memory_limit_in_bytes = 1 << 26;
	c.res.oom_score_adj = -500;
	c.res.cpuset_cpus = "0-1";

	json_object *spec = NULL;
	struct crx_err err = {0};
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), 0, "container spec");
	ok(has(dk_json_get(spec, "Entrypoint", NULL), "sh") &&
		   has(dk_json_get(spec, "Cmd", NULL), "echo hi"),
	   "command is the entrypoint, args the cmd");
	ok(has(dk_json_get(spec, "Env", NULL), "A=b=c"), "environment");
	is_str(dk_json_str(spec, "WorkingDir"), "/w", "working directory");
	is_str(dk_json_str(spec, "User"), "1000:2000", "user and group");
	is_str(dk_json_str(spec, "StopSignal"), "2", "stop signal as a number");
	ok(has(hget(spec, "GroupAdd"), "10") && has(hget(spec, "GroupAdd"), "20"),
	   "supplemental groups");
	is_str(hstr(spec, "NetworkMode"), "container:sb1", "the pod's network");
	is_str(hstr(spec, "IpcMode"), "container:sb1", "the pod's IPC");
	is_str(hstr(spec, "PidMode"), "container:sb1", "PID mode POD: the sandbox's");
	is_str(hstr(spec, "CgroupParent"), "/kubepods/pod1", "the sandbox's cgroup parent");
	ok(dk_json_bool(dk_json_get(spec, "HostConfig", NULL), "ReadonlyRootfs"), "read-only root");
	ok(has(hget(spec, "CapAdd"), "NET_ADMIN") && has(hget(spec, "CapDrop"), "ALL"),
	   "capabilities");
	ok(has(hget(spec, "SecurityOpt"), "no-new-privileges"), "no_new_privs");
	ok(has(hget(spec, "MaskedPaths"), "/proc/kcore"), "masked paths");
	ok(!hget(spec, "ReadonlyPaths"), "empty list: Docker's defaults");
	is_int(hint(spec, "CpuShares"), 256, "shares");
	is_int(hint(spec, "CpuQuota"), 50000, "quota");
	is_int(hint(spec, "CpuPeriod"), 100000, "period");
	is_int(hint(spec, "Memory"), 1 << 26, "memory");
	is_int(hint(spec, "MemorySwap"), 1 << 26, "no swap beyond the limit");
	is_int(hint(spec, "OomScoreAdj"), 0, "clamped oom_score_adj");
	is_str(hstr(spec, "CpusetCpus"), "0-1", "cpuset");
	is_str(dk_json_str(dk_json_get(spec, "HostConfig", "LogConfig", NULL), "Type"), "json-file",
	       "json-file log");
	is_str(dk_json_str(dk_json_get(spec, "HostConfig", "LogConfig", "Config", NULL),
			   "max-size"),
	       "10m", "bounded");
	json_object *labels = dk_json_get(spec, "Labels", NULL);
	is_str(dk_json_str(labels, DK_LABEL_SANDBOX_ID), "sb1", "sandbox label");
	is_str(dk_json_str(labels, DK_LABEL_LOG_PATH), "/var/log/pods/x/app/0.log",
	       "log path label");
	is_str(dk_json_str(labels, DK_LABEL_LOG_DIRECTORY), "/var/log/pods/x",
	       "and its directory, what the path is confined to");
	ok(has(hget(spec, "SecurityOpt"), "seccomp=unconfined"), "unconfined without a profile");
	json_object_put(spec);
	/* No log: both labels still set, empty, so an image's cannot show
	 * through Docker's merge. */
	struct dk_container_ctx no_log = {.sandbox_id = "sb1", .cgroup_parent = "/kubepods/pod1"};
	is_int(dk_container_spec(&c.cfg, &no_log, &opts, &spec, &err), 0, "spec without a log");
	labels = dk_json_get(spec, "Labels", NULL);
	is_str(dk_json_str(labels, DK_LABEL_LOG_PATH), "", "an empty log path label");
	is_str(dk_json_str(labels, DK_LABEL_LOG_DIRECTORY), "", "an empty directory label");
	json_object_put(spec);

	/* Modes, profiles, privileged. */
	Runtime__V1__SecurityProfile sp = RUNTIME__V1__SECURITY_PROFILE__INIT;
	c.sc.seccomp = &sp;
	c.ns.pid = RUNTIME__V1__NAMESPACE_MODE__TARGET;
	c.ns.target_id = "abc123";
	c.ns.ipc = RUNTIME__V1__NAMESPACE_MODE__NODE;
	c.ns.network = RUNTIME__V1__NAMESPACE_MODE__NODE;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), 0, "TARGET spec");
	is_str(hstr(spec, "PidMode"), "container:abc123", "PID of the target");
	is_str(hstr(spec, "IpcMode"), "host", "host IPC");
	is_str(hstr(spec, "UTSMode"), "host", "host UTS with the host network");
	ok(!has(hget(spec, "SecurityOpt"), "seccomp=unconfined"), "RuntimeDefault: Docker's own");
	json_object_put(spec);

	char profile[] = "/tmp/crimux-seccomp-XXXXXX";
	int fd = mkstemp(profile);
	const char *text = "{ \"defaultAction\": \"SCMP_ACT_ALLOW\" }\n";
	ok(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text), "profile written");
	close(fd);
	sp.profile_type = RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__Localhost;
	sp.localhost_ref = profile;
	c.ns.pid = RUNTIME__V1__NAMESPACE_MODE__CONTAINER;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), 0, "localhost profile");
	ok(has(hget(spec, "SecurityOpt"), "seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"),
	   "the profile inline, compact");
	ok(!hstr(spec, "PidMode"), "PID mode CONTAINER: its own");
	json_object_put(spec);
	unlink(profile);
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -ENOENT, "a missing profile");

	c.sc.seccomp = NULL;
	c.sc.privileged = true;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), 0, "privileged");
	ok(dk_json_bool(dk_json_get(spec, "HostConfig", NULL), "Privileged"),
	   "Docker's privileged");
	ok(!hget(spec, "MaskedPaths"), "no masks for privileged");
	json_object_put(spec);
	struct dk_spec_opts restricted = opts;
	restricted.caps_restricted = true;
	restricted.cap_bounding = (1ULL << 38) - 1 - (1ULL << 24); /* no SYS_RESOURCE */
	is_int(dk_container_spec(&c.cfg, &ctx, &restricted, &spec, &err), 0,
	       "privileged with a short bounding set");
	ok(!dk_json_bool(dk_json_get(spec, "HostConfig", NULL), "Privileged"),
	   "not Docker's privileged");
	ok(has(hget(spec, "CapAdd"), "SYS_ADMIN") && !has(hget(spec, "CapAdd"), "SYS_RESOURCE"),
	   "the bounding set's capabilities");
	ok(has(hget(spec, "DeviceCgroupRules"), "a *:* rwm"), "every device allowed");
	ok(hget(spec, "MaskedPaths") && json_object_array_length(hget(spec, "MaskedPaths")) == 0,
	   "nothing masked");
	ok(has(hget(spec, "SecurityOpt"), "seccomp=unconfined"), "no seccomp");
	json_object_put(spec);
	c.sc.privileged = false;
	char *all[] = {"ALL"};
	c.caps.add_capabilities = all;
	is_int(dk_container_spec(&c.cfg, &ctx, &restricted, &spec, &err), 0, "add ALL");
	ok(has(hget(spec, "CapAdd"), "CHOWN") && !has(hget(spec, "CapAdd"), "ALL") &&
		   !has(hget(spec, "CapAdd"), "SYS_RESOURCE"),
	   "ALL means the bounding set where it is short");
	json_object_put(spec);
}

static void refusals(void)
{
	struct container c;
	json_object *spec = NULL;
	struct crx_err err = {0};
	Runtime__V1__Int64Value gid = RUNTIME__V1__INT64_VALUE__INIT;

	container_init(&c);
	c.sc.run_as_group = &gid;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -EINVAL, "group without user");
	container_init(&c);
	c.sc.supplemental_groups_policy = RUNTIME__V1__SUPPLEMENTAL_GROUPS_POLICY__Strict;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -EOPNOTSUPP, "Strict");
	container_init(&c);
	char *amb[] = {"NET_RAW"};
	c.caps.n_add_ambient_capabilities = 1;
	c.caps.add_ambient_capabilities = amb;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -EOPNOTSUPP, "ambient");
	container_init(&c);
	c.image.image = "";
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -EINVAL, "no image");

	container_init(&c);
	Runtime__V1__Mount m = RUNTIME__V1__MOUNT__INIT;
	Runtime__V1__Mount *mounts[] = {&m};
	c.cfg.n_mounts = 1;
	c.cfg.mounts = mounts;
	m.container_path = "/data";
	m.host_path = "/nonexistent/crimux";
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -ENOENT,
	       "a missing mount source");
	m.host_path = "/tmp";
	m.readonly = true;
	m.propagation = RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_BIDIRECTIONAL;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), 0, "a mount");
	json_object *e = json_object_array_get_idx(hget(spec, "Mounts"), 0);
	ok(streq(dk_json_str(e, "Type"), "bind") && streq(dk_json_str(e, "Source"), "/tmp") &&
		   streq(dk_json_str(e, "Target"), "/data") && dk_json_bool(e, "ReadOnly"),
	   "bind mount");
	is_str(dk_json_str(dk_json_get(e, "BindOptions", NULL), "Propagation"), "rshared",
	       "bidirectional is rshared");
	json_object_put(spec);
	m.recursive_read_only = true;
	is_int(dk_container_spec(&c.cfg, &ctx, &opts, &spec, &err), -EOPNOTSUPP,
	       "recursive read-only needs a newer Docker");
}

int main(void)
{
	sysctls();
	sandbox();
	cgroups();
	container();
	refusals();
	return tap_done();
}
