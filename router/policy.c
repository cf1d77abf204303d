#include "config.h"

#include "router/policy.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define MIN_SHARES      2
#define SHARES_PER_CORE 1024
#define MIN_QUOTA       1000
#define DEFAULT_PERIOD  100000

/* a * b / c, rounded down, clamped to int64: every input here may come from
 * a client, and a product that wraps could make a huge limit look small. */
static int64_t mul_div(int64_t a, int64_t b, int64_t c)
{
	__int128 q = (__int128)a * b / c;
	return q > INT64_MAX ? INT64_MAX : q < INT64_MIN ? INT64_MIN : (int64_t)q;
}

int64_t cpu_milli_to_shares(int64_t milli)
{
	int64_t shares = mul_div(milli, SHARES_PER_CORE, MILLI_PER_CORE);
	return shares < MIN_SHARES ? MIN_SHARES : shares;
}

int64_t cpu_milli_to_quota(int64_t milli, int64_t period)
{
	if (milli == 0)
		return 0;
	int64_t quota = mul_div(milli, period, MILLI_PER_CORE);
	return quota < MIN_QUOTA ? MIN_QUOTA : quota;
}

/* Shares back to milli-CPU, to the nearest milli (the kubelet rounded down). */
int64_t cpu_shares_to_milli(int64_t shares)
{
	__int128 m = ((__int128)shares * MILLI_PER_CORE + SHARES_PER_CORE / 2) / SHARES_PER_CORE;
	return m > INT64_MAX ? INT64_MAX : m < INT64_MIN ? INT64_MIN : (int64_t)m;
}

int64_t cpu_limit_milli(const Runtime__V1__LinuxContainerResources *r)
{
	if (r->cpu_quota <= 0)
		return 0;
	int64_t period = r->cpu_period > 0 ? r->cpu_period : DEFAULT_PERIOD;
	return mul_div(r->cpu_quota, MILLI_PER_CORE, period);
}

/* "256Mi" when exact, else plain bytes. */
static const char *fmt_bytes(int64_t n, char *buf, size_t size)
{
	static const char *const units[] = {"Ki", "Mi", "Gi", "Ti"};
	int unit = -1;
	while (unit < 3 && n != 0 && n % 1024 == 0) {
		n /= 1024;
		unit++;
	}
	snprintf(buf, size, "%lld%s", (long long)n, unit < 0 ? "" : units[unit]);
	return buf;
}

static const char *fmt_cpu(int64_t milli, char *buf, size_t size)
{
	snprintf(buf, size, "%lldm", (long long)milli);
	return buf;
}

/* cgroup v2 files that `unified` could write over the values the rules
 * checked. */
static const char *const unified_overrides[] = {"cpu.max", "cpu.weight", "cpu.weight.nice",
						"memory.max"};

static int check_unified(const char *handler, const char *what,
			 const Runtime__V1__LinuxContainerResources *r, struct crx_err *err)
{
	for (size_t i = 0; i < r->n_unified; i++)
		for (size_t j = 0; j < ARRAY_SIZE(unified_overrides); j++)
			if (streq(r->unified[i]->key, unified_overrides[j]))
				return crx_err_set(
					err, -EINVAL,
					"handler \"%s\": %s sets the cgroup file \"%s\" in "
					"resources.unified, which would override the CPU and "
					"memory "
					"limits Kata Containers checked",
					handler, what, unified_overrides[j]);
	return 0;
}

/* CPU request equal to the limit, and a memory limit; *cpu is the limit. */
static int check_equal_resources(const char *handler, const char *what,
				 const Runtime__V1__LinuxContainerResources *r, int64_t *cpu,
				 struct crx_err *err)
{
	char a[32], b[32];
	int64_t limit = cpu_limit_milli(r);
	if (limit == 0)
		return crx_err_set(err, -EINVAL,
				   "handler \"%s\": %s has no CPU limit; Kata Containers needs "
				   "the CPU limit set and equal to the CPU request (%s)",
				   handler, what,
				   fmt_cpu(cpu_shares_to_milli(r->cpu_shares), a, sizeof(a)));
	/* Compare as the kubelet computed them: shares from the request, quota
	 * from the limit, each with its floor (2 shares, a 1000 quota), so
	 * below 10m either side may have been rounded up. */
	int64_t period = r->cpu_period > 0 ? r->cpu_period : DEFAULT_PERIOD;
	if (r->cpu_shares != cpu_milli_to_shares(limit) &&
	    r->cpu_quota != cpu_milli_to_quota(cpu_shares_to_milli(r->cpu_shares), period))
		return crx_err_set(err, -EINVAL,
				   "handler \"%s\": %s CPU request (%s) must equal its CPU limit "
				   "(%s) for Kata Containers",
				   handler, what,
				   fmt_cpu(cpu_shares_to_milli(r->cpu_shares), a, sizeof(a)),
				   fmt_cpu(limit, b, sizeof(b)));
	if (r->memory_limit_in_bytes <= 0)
		return crx_err_set(err, -EINVAL,
				   "handler \"%s\": %s has no memory limit; Kata Containers needs "
				   "the memory limit set and equal to the memory request",
				   handler, what);
	int ret = check_unified(handler, what, r, err);
	if (ret < 0)
		return ret;
	*cpu = limit;
	return 0;
}

static bool annotation_allowed(const struct kata_policy *p, const char *key)
{
	for (size_t i = 0; i < p->n_allowed_annotations; i++) {
		const char *allow = p->allowed_annotations[i];
		size_t n = strlen(allow);
		if (n && allow[n - 1] == '*' ? strncmp(key, allow, n - 1) == 0 : streq(key, allow))
			return true;
	}
	return false;
}

/* Every map<string, string> entry of the schema has the same shape; read the
 * key through the descriptor rather than one entry type per map. */
static const char *entry_key(const ProtobufCMessage *entry)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(entry->descriptor, "key");
	return *(char *const *)((const char *)entry + f->offset);
}

static int check_annotations(const struct kata_policy *p, const char *handler, const char *what,
			     const void *entries, size_t n, struct crx_err *err)
{
	ProtobufCMessage *const *e = entries;
	for (size_t i = 0; i < n; i++) {
		const char *key = entry_key(e[i]);
		for (size_t j = 0; j < p->n_reserved_annotations; j++) {
			const char *prefix = p->reserved_annotations[j];
			if (strncmp(key, prefix, strlen(prefix)) == 0 &&
			    !annotation_allowed(p, key))
				return crx_err_set(
					err, -EINVAL,
					"handler \"%s\": %s annotation \"%s\" is in the "
					"runtime-reserved namespace \"%s\"; the handler's "
					"kata_allowed_annotations can allow it",
					handler, what, key, prefix);
		}
	}
	return 0;
}

/* who: NULL for the pod (the message the kubelet's event shows for a pod),
 * else the container. */
static int check_host_namespaces(const char *handler, const char *who,
				 const Runtime__V1__NamespaceOption *ns, struct crx_err *err)
{
	static const struct {
		size_t offset;
		const char *name, *field;
	} host_namespaces[] = {
		{offsetof(Runtime__V1__NamespaceOption, network), "network", "network"},
		{offsetof(Runtime__V1__NamespaceOption, pid), "PID", "pid"},
		{offsetof(Runtime__V1__NamespaceOption, ipc), "IPC", "ipc"},
	};
	for (size_t i = 0; ns && i < ARRAY_SIZE(host_namespaces); i++) {
		Runtime__V1__NamespaceMode mode =
			*(const Runtime__V1__NamespaceMode *)((const char *)ns +
							      host_namespaces[i].offset);
		if (mode == RUNTIME__V1__NAMESPACE_MODE__NODE)
			return crx_err_set(
				err, -EINVAL,
				"handler \"%s\": %s%sKata Containers does not support the host "
				"%s namespace (namespace_options.%s = NODE); run the pod "
				"with another RuntimeClass",
				handler, who ? who : "", who ? ": " : "", host_namespaces[i].name,
				host_namespaces[i].field);
	}
	return 0;
}

static bool resources_empty(const Runtime__V1__LinuxContainerResources *r)
{
	return !r || (r->cpu_shares == 0 && r->cpu_quota <= 0 && r->memory_limit_in_bytes <= 0);
}

static int check_overhead(const struct kata_policy *p, const char *handler,
			  Runtime__V1__LinuxContainerResources **overhead, bool *changed,
			  struct crx_err *err)
{
	char a[32], b[32], c[32], d[32];
	Runtime__V1__LinuxContainerResources *o = *overhead;
	if (resources_empty(o)) {
		if (!o) {
			/* protobuf_c_message_free_unpacked() frees it with the request */
			o = malloc(sizeof(*o));
			if (!o)
				return crx_err_set(err, -ENOMEM, "out of memory");
			runtime__v1__linux_container_resources__init(o);
			*overhead = o;
		}
		o->cpu_shares = cpu_milli_to_shares(p->overhead_cpu_milli);
		o->cpu_period = DEFAULT_PERIOD;
		o->cpu_quota = cpu_milli_to_quota(p->overhead_cpu_milli, DEFAULT_PERIOD);
		o->memory_limit_in_bytes = p->overhead_memory;
		*changed = true;
		return 0;
	}
	/* Overhead is "guaranteed": the kubelet sets request == limit. */
	int64_t cpu = cpu_limit_milli(o) ? cpu_limit_milli(o) : cpu_shares_to_milli(o->cpu_shares);
	if (cpu < p->overhead_cpu_milli || o->memory_limit_in_bytes < p->overhead_memory)
		return crx_err_set(err, -EINVAL,
				   "handler \"%s\": the pod overhead (%s CPU, %s memory) is below "
				   "the minimum for Kata Containers (%s CPU, %s memory); set the "
				   "RuntimeClass overhead to at least that",
				   handler, fmt_cpu(cpu, a, sizeof(a)),
				   fmt_bytes(o->memory_limit_in_bytes, b, sizeof(b)),
				   fmt_cpu(p->overhead_cpu_milli, c, sizeof(c)),
				   fmt_bytes(p->overhead_memory, d, sizeof(d)));
	return check_unified(handler, "the pod overhead", o, err);
}

/* The pod's size: RunPodSandbox and UpdatePodSandboxResources. */
static int check_pod_resources(const struct kata_policy *p, const char *handler,
			       const Runtime__V1__LinuxContainerResources *res,
			       Runtime__V1__LinuxContainerResources **overhead, bool *changed,
			       struct crx_err *err)
{
	char a[32], b[32], c[32], d[32];
	if (resources_empty(res))
		return crx_err_set(
			err, -EINVAL,
			"handler \"%s\": the pod's resources are missing "
			"(PodSandboxConfig.linux.resources); Kata Containers needs CPU and "
			"memory limits equal to the requests",
			handler);
	int64_t cpu;
	int r = check_equal_resources(handler, "the pod", res, &cpu, err);
	if (r < 0)
		return r;
	int64_t memory = res->memory_limit_in_bytes;
	if (cpu < p->min_cpu_milli || memory < p->min_memory)
		return crx_err_set(
			err, -EINVAL,
			"handler \"%s\": the pod (%s CPU, %s memory) is smaller than the "
			"Kata Containers minimum of %s CPU and %s memory",
			handler, fmt_cpu(cpu, a, sizeof(a)), fmt_bytes(memory, b, sizeof(b)),
			fmt_cpu(p->min_cpu_milli, c, sizeof(c)),
			fmt_bytes(p->min_memory, d, sizeof(d)));
	int64_t low = mul_div(cpu, p->min_memory_per_cpu, MILLI_PER_CORE);
	int64_t high = mul_div(cpu, p->max_memory_per_cpu, MILLI_PER_CORE);
	if (memory < low || memory > high) {
		char e[32], f[32];
		return crx_err_set(
			err, -EINVAL,
			"handler \"%s\": the pod's memory (%s) does not fit its CPU (%s): "
			"Kata Containers needs %s to %s of memory per CPU, %s to %s here",
			handler, fmt_bytes(memory, a, sizeof(a)), fmt_cpu(cpu, b, sizeof(b)),
			fmt_bytes(p->min_memory_per_cpu, c, sizeof(c)),
			fmt_bytes(p->max_memory_per_cpu, d, sizeof(d)),
			fmt_bytes(low, e, sizeof(e)), fmt_bytes(high, f, sizeof(f)));
	}
	return check_overhead(p, handler, overhead, changed, err);
}

int kata_check_sandbox(const struct kata_policy *p, const char *handler,
		       Runtime__V1__PodSandboxConfig *config, bool *changed, struct crx_err *err)
{
	Runtime__V1__LinuxPodSandboxConfig *linux = config->linux;
	const Runtime__V1__NamespaceOption *ns =
		linux && linux->security_context ? linux->security_context->namespace_options
						 : NULL;
	int r = check_host_namespaces(handler, NULL, ns, err);
	if (r < 0)
		return r;
	r = check_annotations(p, handler, "pod", config->annotations, config->n_annotations, err);
	if (r < 0)
		return r;
	if (!linux)
		return check_pod_resources(p, handler, NULL, NULL, changed, err);
	return check_pod_resources(p, handler, linux->resources, &linux->overhead, changed, err);
}

static void container_what(char *buf, size_t size, const Runtime__V1__ContainerConfig *config)
{
	snprintf(buf, size, "container \"%.200s\"",
		 config->metadata && config->metadata->name ? config->metadata->name : "");
}

static int check_container_resources(const char *handler, const char *what,
				     const Runtime__V1__LinuxContainerResources *res,
				     struct crx_err *err)
{
	if (resources_empty(res))
		return crx_err_set(err, -EINVAL,
				   "handler \"%s\": %s has no resources; Kata Containers needs CPU "
				   "and memory limits equal to the requests",
				   handler, what);
	int64_t cpu;
	return check_equal_resources(handler, what, res, &cpu, err);
}

int kata_check_container(const struct kata_policy *p, const char *handler,
			 const Runtime__V1__ContainerConfig *config, struct crx_err *err)
{
	char what[300];
	container_what(what, sizeof(what), config);
	const Runtime__V1__LinuxContainerConfig *linux = config->linux;
	int r = check_host_namespaces(handler, what,
				      linux && linux->security_context
					      ? linux->security_context->namespace_options
					      : NULL,
				      err);
	if (r < 0)
		return r;
	r = check_annotations(p, handler, what, config->annotations, config->n_annotations, err);
	if (r < 0)
		return r;
	return check_container_resources(handler, what, linux ? linux->resources : NULL, err);
}

/* Inserts `where` after the 'handler "NAME": ' every message starts with. */
static int say_where(struct crx_err *err, const char *where)
{
	char *rest = strstr(err->msg, "\": ");
	if (!rest)
		return err->code;
	rest += 3;
	char tail[sizeof(err->msg)];
	snprintf(tail, sizeof(tail), "%s", rest);
	snprintf(rest, sizeof(err->msg) - (size_t)(rest - err->msg), "%s: %s", where, tail);
	return err->code;
}

int kata_check_request(const struct kata_policy *p, const char *handler, ProtobufCMessage *req,
		       bool *changed, struct crx_err *err)
{
	char what[300];
	const ProtobufCMessageDescriptor *d = req->descriptor;
	if (d == &runtime__v1__run_pod_sandbox_request__descriptor) {
		Runtime__V1__RunPodSandboxRequest *r = (Runtime__V1__RunPodSandboxRequest *)req;
		if (!r->config)
			return crx_err_set(err, -EINVAL,
					   "handler \"%s\": the request has no pod config",
					   handler);
		return kata_check_sandbox(p, handler, r->config, changed, err);
	}
	if (d == &runtime__v1__create_container_request__descriptor) {
		Runtime__V1__CreateContainerRequest *r = (Runtime__V1__CreateContainerRequest *)req;
		if (!r->config)
			return crx_err_set(err, -EINVAL,
					   "handler \"%s\": the request has no container config",
					   handler);
		int ret = kata_check_container(p, handler, r->config, err);
		/* containerd reads the pod's annotations (to pass some on to the
		 * shim), cgroup parent, hostname and privileged flag from this copy:
		 * it must pass what the pod itself had to. */
		if (ret == 0 && r->sandbox_config &&
		    kata_check_sandbox(p, handler, r->sandbox_config, changed, err) < 0)
			ret = say_where(err, "CreateContainer's sandbox_config");
		return ret;
	}
	if (d == &runtime__v1__update_container_resources_request__descriptor) {
		Runtime__V1__UpdateContainerResourcesRequest *r =
			(Runtime__V1__UpdateContainerResourcesRequest *)req;
		snprintf(what, sizeof(what), "container \"%.64s\"",
			 r->container_id ? r->container_id : "");
		int ret =
			check_annotations(p, handler, what, r->annotations, r->n_annotations, err);
		if (ret < 0)
			return ret;
		return check_container_resources(handler, what, r->linux, err);
	}
	if (d == &runtime__v1__update_pod_sandbox_resources_request__descriptor) {
		Runtime__V1__UpdatePodSandboxResourcesRequest *r =
			(Runtime__V1__UpdatePodSandboxResourcesRequest *)req;
		return check_pod_resources(p, handler, r->resources, &r->overhead, changed, err);
	}
	return 0;
}

bool kata_checks(const ProtobufCMessageDescriptor *request)
{
	return request == &runtime__v1__run_pod_sandbox_request__descriptor ||
	       request == &runtime__v1__create_container_request__descriptor ||
	       request == &runtime__v1__update_container_resources_request__descriptor ||
	       request == &runtime__v1__update_pod_sandbox_resources_request__descriptor;
}
