/* The Kata admission rules, each accepted and refused, with its message. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/metrics.h"
#include "common/util.h"
#include "router/policy.h"
#include "tap.h"

/* A pod as the kubelet describes it: requests and limits in milli-CPU and
 * bytes, turned into cgroup values the kubelet's way. */
struct pod {
	Runtime__V1__PodSandboxConfig config;
	Runtime__V1__LinuxPodSandboxConfig linux;
	Runtime__V1__LinuxSandboxSecurityContext security;
	Runtime__V1__NamespaceOption ns;
	Runtime__V1__LinuxContainerResources resources, overhead;
	Runtime__V1__PodSandboxConfig__AnnotationsEntry annotation, *annotations[1];
};

static void resources(Runtime__V1__LinuxContainerResources *r, int64_t request, int64_t limit,
		      int64_t memory)
{
	runtime__v1__linux_container_resources__init(r);
	r->cpu_shares = cpu_milli_to_shares(request ? request : limit);
	r->cpu_period = 100000;
	r->cpu_quota = cpu_milli_to_quota(limit, 100000);
	r->memory_limit_in_bytes = memory;
}

static void pod_init(struct pod *p, int64_t request, int64_t limit, int64_t memory)
{
	runtime__v1__pod_sandbox_config__init(&p->config);
	runtime__v1__linux_pod_sandbox_config__init(&p->linux);
	runtime__v1__linux_sandbox_security_context__init(&p->security);
	runtime__v1__namespace_option__init(&p->ns);
	p->config.linux = &p->linux;
	p->linux.security_context = &p->security;
	p->security.namespace_options = &p->ns;
	resources(&p->resources, request, limit, memory);
	runtime__v1__linux_container_resources__init(
		&p->overhead); /* "none", as the kubelet sends it */
	p->linux.resources = &p->resources;
	p->linux.overhead = &p->overhead;
}

static int check(const struct kata_policy *k, struct pod *p, bool *changed, struct crx_err *err)
{
	*changed = false;
	memset(err, 0, sizeof(*err));
	return kata_check_sandbox(k, "kata", &p->config, changed, err);
}

/* Refusals are counted for the metrics, by handler and rule. */
static const char *const rules[] = {
	"host_namespace",         "reserved_annotation",  "resources_missing", "cpu_limit_missing",
	"cpu_request_not_limit",  "memory_limit_missing", "below_minimum",     "memory_cpu_ratio",
	"overhead_below_minimum", "unified_override",     "config_missing",
};

static int64_t refusals(const char *rule)
{
	int64_t n = 0;
	for (size_t i = 0; i < ARRAY_SIZE(rules); i++)
		if (!rule || streq(rule, rules[i]))
			n += crx_metric_get(CRX_M_KATA_REFUSALS,
					    (const char *[]){"kata", rules[i]});
	return n;
}

static void refused(const struct kata_policy *k, struct pod *p, const char *needle,
		    const char *name)
{
	bool changed;
	struct crx_err err;
	int64_t before = refusals(NULL);
	int r = check(k, p, &changed, &err);
	ok(r == -EINVAL, "%s: refused", name);
	has_str(err.msg, needle, name);
	is_int(refusals(NULL), before + 1, "and counted once");
}

int main(void)
{
	struct kata_policy k;
	if (kata_policy_init(&k) < 0)
		return 99;
	crx_metrics_enable();
	struct pod p;
	bool changed;
	struct crx_err err;

	/* The kubelet's conversions. */
	is_int(cpu_milli_to_shares(500), 512, "500m is 512 shares");
	is_int(cpu_milli_to_shares(1), 2, "shares never go below 2");
	is_int(cpu_milli_to_quota(250, 100000), 25000, "250m is a 25000 quota");
	is_int(cpu_milli_to_quota(5, 100000), 1000, "quota never goes below 1000");

	/* A good pod passes, and gets the default overhead. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	is_int(check(&k, &p, &changed, &err), 0, "1 CPU, 2Gi, request == limit: accepted");
	ok(changed, "a pod without overhead is changed");
	is_int(p.overhead.cpu_shares, 102, "overhead: 100m as shares");
	is_int(p.overhead.cpu_quota, 10000, "overhead: 100m as quota");
	is_int(p.overhead.memory_limit_in_bytes, 100 * MIB, "overhead: 100Mi");

	/* No overhead message at all gets one too. */
	pod_init(&p, 500, 500, 1 * GIB);
	p.linux.overhead = NULL;
	is_int(check(&k, &p, &changed, &err), 0, "no overhead field: accepted");
	ok(changed && p.linux.overhead && p.linux.overhead->memory_limit_in_bytes == 100 * MIB,
	   "and an overhead is added");
	free(p.linux.overhead);

	/* The kubelet's rounding: 100m is 102 shares, and a 10000 quota. */
	pod_init(&p, 300, 300, 512 * MIB);
	is_int(check(&k, &p, &changed, &err), 0, "300m with 512Mi: accepted (shares rounded down)");

	/* Below 10m the kubelet's quota floor (1000) makes 5m look like 10m. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	Runtime__V1__ContainerConfig tiny = RUNTIME__V1__CONTAINER_CONFIG__INIT;
	Runtime__V1__LinuxContainerConfig tiny_linux = RUNTIME__V1__LINUX_CONTAINER_CONFIG__INIT;
	Runtime__V1__LinuxContainerResources tiny_res;
	resources(&tiny_res, 5, 5, 64 * MIB);
	tiny.linux = &tiny_linux;
	tiny_linux.resources = &tiny_res;
	is_int(kata_check_container(&k, "kata", &tiny, &err), 0,
	       "a guaranteed 5m container (quota raised to its floor): accepted");

	/* Host namespaces. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.ns.network = RUNTIME__V1__NAMESPACE_MODE__NODE;
	refused(&k, &p,
		"handler \"kata\": Kata Containers does not support the host network "
		"namespace (namespace_options.network = NODE)",
		"host network");
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.ns.pid = RUNTIME__V1__NAMESPACE_MODE__NODE;
	refused(&k, &p, "host PID namespace", "host PID");
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.ns.ipc = RUNTIME__V1__NAMESPACE_MODE__NODE;
	refused(&k, &p, "host IPC namespace", "host IPC");
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.ns.pid = RUNTIME__V1__NAMESPACE_MODE__CONTAINER;
	is_int(check(&k, &p, &changed, &err), 0, "a container PID namespace is fine");

	/* Requests and limits. */
	pod_init(&p, 500, 1000, 2 * GIB);
	refused(&k, &p, "the pod CPU request (500m) must equal its CPU limit (1000m)",
		"CPU request below the limit");
	pod_init(&p, 1000, 0, 2 * GIB);
	refused(&k, &p,
		"the pod has no CPU limit; Kata Containers needs the CPU limit set and "
		"equal to the CPU request (1000m)",
		"no CPU limit");
	pod_init(&p, 1000, 1000, 0);
	refused(&k, &p, "the pod has no memory limit", "no memory limit");
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.linux.resources = NULL;
	refused(&k, &p, "the pod's resources are missing", "no resources");

	/* Size and ratio. */
	pod_init(&p, 200, 200, 512 * MIB);
	refused(&k, &p,
		"the pod (200m CPU, 512Mi memory) is smaller than the Kata Containers "
		"minimum of 250m CPU and 256Mi memory",
		"below the minimum CPU");
	pod_init(&p, 250, 250, 128 * MIB);
	refused(&k, &p, "smaller than the Kata Containers minimum", "below the minimum memory");
	pod_init(&p, 250, 250, 256 * MIB);
	is_int(check(&k, &p, &changed, &err), 0, "exactly the minimum (250m, 256Mi): accepted");
	pod_init(&p, 500, 500, 8 * GIB);
	refused(&k, &p,
		"the pod's memory (8Gi) does not fit its CPU (500m): Kata Containers needs "
		"1Gi to 8Gi of memory per CPU, 512Mi to 4Gi here",
		"too much memory per CPU");
	pod_init(&p, 2000, 2000, 1 * GIB);
	refused(&k, &p, "1Gi to 8Gi of memory per CPU, 2Gi to 16Gi here",
		"too little memory per CPU");
	pod_init(&p, 500, 500, 4 * GIB);
	is_int(check(&k, &p, &changed, &err), 0, "0.5 CPU with 4Gi (the 1:8 edge): accepted");
	pod_init(&p, 500, 500, 512 * MIB);
	is_int(check(&k, &p, &changed, &err), 0, "0.5 CPU with 512Mi (the 1:1 edge): accepted");

	/* Declared overhead. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	resources(&p.overhead, 50, 50, 50 * MIB);
	refused(&k, &p,
		"the pod overhead (50m CPU, 50Mi memory) is below the minimum for Kata "
		"Containers (100m CPU, 100Mi memory)",
		"overhead below the minimum");
	pod_init(&p, 1000, 1000, 2 * GIB);
	resources(&p.overhead, 250, 250, 160 * MIB);
	is_int(check(&k, &p, &changed, &err), 0, "a sufficient overhead: accepted");
	ok(!changed && p.overhead.memory_limit_in_bytes == 160 * MIB, "and left as declared");

	/* Reserved annotations. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	runtime__v1__pod_sandbox_config__annotations_entry__init(&p.annotation);
	p.annotation.key = (char *)"io.katacontainers.config.hypervisor.path";
	p.annotation.value = (char *)"/tmp/evil";
	p.annotations[0] = &p.annotation;
	p.config.annotations = p.annotations;
	p.config.n_annotations = 1;
	refused(&k, &p,
		"pod annotation \"io.katacontainers.config.hypervisor.path\" is in the "
		"runtime-reserved namespace \"io.katacontainers.\"",
		"a Kata annotation");
	p.annotation.key = (char *)"io.kubernetes.cri.container-type";
	refused(&k, &p, "runtime-reserved namespace \"io.kubernetes.cri.\"",
		"a CRI runtime's own annotation");
	/* Kubernetes keys are lower case; a reader of annotations that folds
	 * case must not find a reserved key crimux let through. */
	p.annotation.key = (char *)"IO.KataContainers.config.hypervisor.path";
	refused(&k, &p, "runtime-reserved namespace \"io.katacontainers.\"",
		"a Kata annotation in other letter case");
	p.annotation.key = (char *)"example.com/harmless";
	is_int(check(&k, &p, &changed, &err), 0, "an ordinary annotation: accepted");
	k.allowed_annotations = (char *[]){(char *)"io.katacontainers.config.hypervisor.default_*"};
	k.n_allowed_annotations = 1;
	p.annotation.key = (char *)"io.katacontainers.config.hypervisor.default_vcpus";
	is_int(check(&k, &p, &changed, &err), 0, "an allowed prefix*: accepted");
	p.annotation.key = (char *)"io.katacontainers.config.hypervisor.path";
	refused(&k, &p, "io.katacontainers.config.hypervisor.path", "outside the allowed prefix");
	k.allowed_annotations = NULL;
	k.n_allowed_annotations = 0;

	/* Containers. */
	Runtime__V1__ContainerConfig c = RUNTIME__V1__CONTAINER_CONFIG__INIT;
	Runtime__V1__ContainerMetadata meta = RUNTIME__V1__CONTAINER_METADATA__INIT;
	Runtime__V1__LinuxContainerConfig clinux = RUNTIME__V1__LINUX_CONTAINER_CONFIG__INIT;
	Runtime__V1__LinuxContainerResources cres;
	meta.name = (char *)"app";
	c.metadata = &meta;
	c.linux = &clinux;
	clinux.resources = &cres;
	resources(&cres, 500, 500, 256 * MIB);
	is_int(kata_check_container(&k, "kata", &c, &err), 0, "an equal container: accepted");
	int64_t unequal = refusals("cpu_request_not_limit"), all = refusals(NULL);
	resources(&cres, 250, 500, 256 * MIB);
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL,
	       "an unequal container: refused");
	is_int(refusals("cpu_request_not_limit"), unequal + 1, "counted under its rule");
	has_str(err.msg, "container \"app\" CPU request (250m) must equal its CPU limit (500m)",
		"naming the container and the numbers");
	resources(&cres, 500, 500, 0);
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL,
	       "a container without a memory limit: refused");
	has_str(err.msg, "container \"app\" has no memory limit", "saying so");
	clinux.resources = NULL;
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL,
	       "a container without resources: refused");
	is_int(refusals(NULL), all + 3, "three container refusals counted");
	is_int(refusals("resources_missing") > 0 && refusals("memory_limit_missing") > 0, 1,
	       "each under its own rule");

	/* A container in the host's namespaces. */
	Runtime__V1__LinuxContainerSecurityContext csec =
		RUNTIME__V1__LINUX_CONTAINER_SECURITY_CONTEXT__INIT;
	Runtime__V1__NamespaceOption cns = RUNTIME__V1__NAMESPACE_OPTION__INIT;
	clinux.resources = &cres;
	resources(&cres, 500, 500, 256 * MIB);
	clinux.security_context = &csec;
	csec.namespace_options = &cns;
	cns.network = RUNTIME__V1__NAMESPACE_MODE__NODE;
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL,
	       "a container on the host network: refused");
	has_str(err.msg,
		"handler \"kata\": container \"app\": Kata Containers does not support the host "
		"network namespace (namespace_options.network = NODE)",
		"naming the container and the namespace");
	cns.network = RUNTIME__V1__NAMESPACE_MODE__POD;
	cns.pid = RUNTIME__V1__NAMESPACE_MODE__NODE;
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL, "host PID: refused");
	cns.pid = RUNTIME__V1__NAMESPACE_MODE__CONTAINER;
	is_int(kata_check_container(&k, "kata", &c, &err), 0, "its own PID namespace: accepted");
	clinux.security_context = NULL;

	/* resources.unified must not override what was checked. */
	Runtime__V1__LinuxContainerResources__UnifiedEntry cpu_max =
		RUNTIME__V1__LINUX_CONTAINER_RESOURCES__UNIFIED_ENTRY__INIT;
	Runtime__V1__LinuxContainerResources__UnifiedEntry *unified[] = {&cpu_max};
	cpu_max.key = (char *)"cpu.max";
	cpu_max.value = (char *)"max 100000";
	cres.unified = unified;
	cres.n_unified = 1;
	int64_t overrides_before = refusals("unified_override");
	is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL, "unified cpu.max: refused");
	has_str(err.msg, "sets the cgroup file \"cpu.max\" in resources.unified", "saying which");
	is_int(refusals("unified_override"), overrides_before + 1, "counted as unified_override");
	/* Every other file that raises a checked limit, and any key that is
	 * not a plain file name, is refused too. */
	static const char *const overrides[] = {
		"cpu.max.burst", "memory.swap.max", "./cpu.max",
		"../memory.max", "x/memory.max",    "Memory.Max",
	};
	for (size_t i = 0; i < ARRAY_SIZE(overrides); i++) {
		cpu_max.key = (char *)overrides[i];
		is_int(kata_check_container(&k, "kata", &c, &err), -EINVAL, overrides[i]);
	}
	cpu_max.key = (char *)"memory.min";
	is_int(kata_check_container(&k, "kata", &c, &err), 0, "unified memory.min: accepted");
	cpu_max.key = (char *)"memory.high";
	is_int(kata_check_container(&k, "kata", &c, &err), 0,
	       "unified memory.high (the kubelet's memory QoS): accepted");
	cres.n_unified = 0;
	cres.unified = NULL;

	/* Arithmetic on client numbers saturates; it never wraps. */
	is_int(cpu_milli_to_shares(INT64_MAX), INT64_MAX, "shares of INT64_MAX milli: clamped");
	is_int(cpu_milli_to_quota(INT64_MAX, 100000), INT64_MAX, "quota of INT64_MAX: clamped");
	is_int(cpu_milli_to_quota(INT64_MAX, INT64_MAX), INT64_MAX, "and with INT64_MAX period");
	is_int(cpu_shares_to_milli(INT64_MAX), 9007199254740991999, "INT64_MAX shares in milli");
	is_int(cpu_shares_to_milli(INT64_MIN), -9007199254740991999, "INT64_MIN shares in milli");
	Runtime__V1__LinuxContainerResources big;
	resources(&big, 1000, 1000, 2 * GIB);
	big.cpu_quota = INT64_MAX;
	is_int(cpu_limit_milli(&big), 92233720368547758, "INT64_MAX quota over 100000");
	big.cpu_period = 1;
	is_int(cpu_limit_milli(&big), INT64_MAX, "INT64_MAX quota over 1: clamped");
	big.cpu_period = -5;
	big.cpu_quota = 100000;
	is_int(cpu_limit_milli(&big), 1000, "a negative period counts as the default");
	big.cpu_quota = -1;
	is_int(cpu_limit_milli(&big), 0, "a negative quota is no limit");
	/* 2^61 + 100000: times 1000 it wraps to exactly 10^8, which over the
	 * 100000 period read as 1 CPU, equal to a 1 CPU request. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.resources.cpu_quota = 2305843009213793952;
	refused(&k, &p, "the pod CPU request (1000m) must equal its CPU limit (23058430092137939m)",
		"a quota that wrapped to 1 CPU: refused");
	/* A limit so large that memory per CPU overflowed: still measured. */
	pod_init(&p, 1000, 1000, 2 * GIB);
	p.resources.cpu_quota = INT64_MAX;
	p.resources.cpu_period = 1;
	p.resources.cpu_shares = INT64_MAX;
	refused(&k, &p, "does not fit its CPU", "INT64_MAX CPU with 2Gi: refused by the ratio");
	pod_init(&p, 1000, 1000, INT64_MAX);
	refused(&k, &p, "does not fit its CPU", "INT64_MAX memory for 1 CPU: refused");
	pod_init(&p, 1000, 1000, 2 * GIB);
	resources(&p.overhead, 100, 100, 100 * MIB);
	p.overhead.cpu_quota = 2305843009213793952; /* the wrapped one again */
	p.overhead.cpu_shares = 0;
	is_int(check(&k, &p, &changed, &err), 0, "a huge overhead quota is a big overhead");

	/* A create without its config. */
	Runtime__V1__RunPodSandboxRequest run = RUNTIME__V1__RUN_POD_SANDBOX_REQUEST__INIT;
	int64_t missing_before = refusals("config_missing");
	is_int(kata_check_request(&k, "kata", &run.base, &changed, &err), -EINVAL,
	       "RunPodSandbox without a config: refused");
	has_str(err.msg, "the request has no pod config", "saying so");
	is_int(refusals("config_missing"), missing_before + 1, "counted as config_missing");

	/* The other calls that change a Kata pod. */
	Runtime__V1__UpdateContainerResourcesRequest upd =
		RUNTIME__V1__UPDATE_CONTAINER_RESOURCES_REQUEST__INIT;
	upd.container_id = (char *)"c0ffee";
	resources(&cres, 250, 500, 256 * MIB);
	upd.linux = &cres;
	is_int(kata_check_request(&k, "kata", &upd.base, &changed, &err), -EINVAL,
	       "UpdateContainerResources, unequal: refused");
	has_str(err.msg, "container \"c0ffee\" CPU request (250m) must equal its CPU limit (500m)",
		"naming the container by ID");
	resources(&cres, 500, 500, 256 * MIB);
	is_int(kata_check_request(&k, "kata", &upd.base, &changed, &err), 0,
	       "UpdateContainerResources, equal: accepted");
	upd.linux = NULL;
	is_int(kata_check_request(&k, "kata", &upd.base, &changed, &err), -EINVAL,
	       "UpdateContainerResources without Linux resources: refused");

	Runtime__V1__UpdatePodSandboxResourcesRequest pupd =
		RUNTIME__V1__UPDATE_POD_SANDBOX_RESOURCES_REQUEST__INIT;
	Runtime__V1__LinuxContainerResources pres, pover;
	resources(&pres, 2000, 2000, 20 * GIB);
	resources(&pover, 100, 100, 100 * MIB);
	pupd.resources = &pres;
	pupd.overhead = &pover;
	is_int(kata_check_request(&k, "kata", &pupd.base, &changed, &err), -EINVAL,
	       "UpdatePodSandboxResources past 1:8: refused");
	has_str(err.msg, "the pod's memory (20Gi) does not fit its CPU (2000m)",
		"with the numbers");
	resources(&pres, 2000, 2000, 4 * GIB);
	resources(&pover, 50, 50, 100 * MIB);
	is_int(kata_check_request(&k, "kata", &pupd.base, &changed, &err), -EINVAL,
	       "UpdatePodSandboxResources with a small overhead: refused");
	pupd.overhead = NULL;
	changed = false;
	is_int(kata_check_request(&k, "kata", &pupd.base, &changed, &err), 0,
	       "UpdatePodSandboxResources without overhead: accepted");
	ok(changed && pupd.overhead && pupd.overhead->memory_limit_in_bytes == 100 * MIB,
	   "and given the configured one");
	free(pupd.overhead);

	Runtime__V1__CreateContainerRequest create = RUNTIME__V1__CREATE_CONTAINER_REQUEST__INIT;
	create.config = &c;
	clinux.resources = &cres;
	pod_init(&p, 1000, 1000, 2 * GIB);
	create.sandbox_config = &p.config;
	p.annotation.key = (char *)"io.katacontainers.config.hypervisor.path";
	p.annotation.value = (char *)"/tmp/evil";
	p.annotations[0] = &p.annotation;
	p.config.annotations = p.annotations;
	p.config.n_annotations = 1;
	is_int(kata_check_request(&k, "kata", &create.base, &changed, &err), -EINVAL,
	       "CreateContainer whose sandbox_config has a Kata annotation: refused");
	is_str(err.msg,
	       "handler \"kata\": CreateContainer's sandbox_config: pod annotation "
	       "\"io.katacontainers.config.hypervisor.path\" is in the runtime-reserved namespace "
	       "\"io.katacontainers.\"; the handler's kata_allowed_annotations can allow it",
	       "saying where");
	p.config.n_annotations = 0;
	p.ns.network = RUNTIME__V1__NAMESPACE_MODE__NODE;
	is_int(kata_check_request(&k, "kata", &create.base, &changed, &err), -EINVAL,
	       "CreateContainer whose sandbox_config is on the host network: refused");
	p.ns.network = RUNTIME__V1__NAMESPACE_MODE__POD;
	is_int(kata_check_request(&k, "kata", &create.base, &changed, &err), 0,
	       "CreateContainer with a pod's own sandbox_config: accepted");
	free(p.linux.overhead == &p.overhead ? NULL : p.linux.overhead);
	ok(kata_checks(&runtime__v1__update_pod_sandbox_resources_request__descriptor) &&
		   !kata_checks(&runtime__v1__start_container_request__descriptor),
	   "the calls the policy decides on");

	/* Quantities in the configuration. */
	int64_t v;
	ok(parse_cpu_milli("250m", &v) == 0 && v == 250, "250m");
	ok(parse_cpu_milli("0.25", &v) == 0 && v == 250, "0.25");
	ok(parse_cpu_milli("2", &v) == 0 && v == 2000, "2");
	ok(parse_cpu_milli("lots", &v) < 0, "not a CPU quantity");
	ok(parse_bytes("256Mi", &v) == 0 && v == 256 * MIB, "256Mi");
	ok(parse_bytes("1.5Gi", &v) == 0 && v == 3 * GIB / 2, "1.5Gi");
	ok(parse_bytes("1G", &v) == 0 && v == 1000000000, "1G");
	ok(parse_bytes("4096", &v) == 0 && v == 4096, "plain bytes");
	ok(parse_bytes("12 parsecs", &v) < 0, "not a size");

	kata_policy_clear(&k);
	return tap_done();
}
