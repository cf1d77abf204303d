#include "config.h"

#include "router/policy.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "common/util.h"

#define MIN_SHARES      2
#define SHARES_PER_CORE 1024
#define MIN_QUOTA       1000
#define DEFAULT_PERIOD  100000

/* A refusal: the error, and a count by handler and rule for the metrics
 * (crimux_kata_refusals_total). */
static int refuse(struct crx_err *err, const char *handler, const char *rule, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int refuse(struct crx_err *err, const char *handler, const char *rule, const char *fmt, ...)
{
	crx_metric_add(CRX_M_KATA_REFUSALS, 1, (const char *[]){handler, rule});
	va_list ap;
	va_start(ap, fmt);
	int r = crx_err_setv(err, -EINVAL, fmt, ap);
	va_end(ap);
	return r;
}

int64_t cpu_milli_to_shares(int64_t milli)
{
	int64_t shares = milli * SHARES_PER_CORE / MILLI_PER_CORE;
	return shares < MIN_SHARES ? MIN_SHARES : shares;
}

int64_t cpu_milli_to_quota(int64_t milli, int64_t period)
{
	if (milli == 0)
		return 0;
	int64_t quota = milli * period / MILLI_PER_CORE;
	return quota < MIN_QUOTA ? MIN_QUOTA : quota;
}

/* Shares back to milli-CPU, to the nearest milli (the kubelet rounded down). */
static int64_t shares_to_milli(int64_t shares)
{
	return (shares * MILLI_PER_CORE + SHARES_PER_CORE / 2) / SHARES_PER_CORE;
}

static int64_t limit_milli(const Runtime__V1__LinuxContainerResources *r)
{
	if (r->cpu_quota <= 0)
		return 0;
	int64_t period = r->cpu_period > 0 ? r->cpu_period : DEFAULT_PERIOD;
	return r->cpu_quota * MILLI_PER_CORE / period;
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

/* CPU request equal to the limit, and a memory limit; *cpu is the limit. */
static int check_equal_resources(const char *handler, const char *what,
				 const Runtime__V1__LinuxContainerResources *r, int64_t *cpu,
				 struct crx_err *err)
{
	char a[32], b[32];
	int64_t limit = limit_milli(r);
	if (limit == 0)
		return refuse(err, handler, "cpu_limit_missing",
			      "handler \"%s\": %s has no CPU limit; Kata Containers needs "
			      "the CPU limit set and equal to the CPU request (%s)",
			      handler, what, fmt_cpu(shares_to_milli(r->cpu_shares), a, sizeof(a)));
	/* Compare as the kubelet computed them: shares from the request, quota
	 * from the limit, each with its floor (2 shares, a 1000 quota), so
	 * below 10m either side may have been rounded up. */
	int64_t period = r->cpu_period > 0 ? r->cpu_period : DEFAULT_PERIOD;
	if (r->cpu_shares != cpu_milli_to_shares(limit) &&
	    r->cpu_quota != cpu_milli_to_quota(shares_to_milli(r->cpu_shares), period))
		return refuse(err, handler, "cpu_request_not_limit",
			      "handler \"%s\": %s CPU request (%s) must equal its CPU limit "
			      "(%s) for Kata Containers",
			      handler, what, fmt_cpu(shares_to_milli(r->cpu_shares), a, sizeof(a)),
			      fmt_cpu(limit, b, sizeof(b)));
	if (r->memory_limit_in_bytes <= 0)
		return refuse(err, handler, "memory_limit_missing",
			      "handler \"%s\": %s has no memory limit; Kata Containers needs "
			      "the memory limit set and equal to the memory request",
			      handler, what);
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

static int check_annotations(const struct kata_policy *p, const char *handler, const char *what,
			     Runtime__V1__PodSandboxConfig__AnnotationsEntry *const *pod_entries,
			     Runtime__V1__ContainerConfig__AnnotationsEntry *const *ctr_entries,
			     size_t n, struct crx_err *err)
{
	for (size_t i = 0; i < n; i++) {
		const char *key = pod_entries ? pod_entries[i]->key : ctr_entries[i]->key;
		for (size_t j = 0; j < p->n_reserved_annotations; j++) {
			const char *prefix = p->reserved_annotations[j];
			if (strncmp(key, prefix, strlen(prefix)) == 0 &&
			    !annotation_allowed(p, key))
				return refuse(err, handler, "reserved_annotation",
					      "handler \"%s\": %s annotation \"%s\" is in the "
					      "runtime-reserved namespace \"%s\"; the handler's "
					      "kata_allowed_annotations can allow it",
					      handler, what, key, prefix);
		}
	}
	return 0;
}

static bool resources_empty(const Runtime__V1__LinuxContainerResources *r)
{
	return !r || (r->cpu_shares == 0 && r->cpu_quota <= 0 && r->memory_limit_in_bytes <= 0);
}

static int check_overhead(const struct kata_policy *p, const char *handler,
			  Runtime__V1__LinuxPodSandboxConfig *linux, bool *changed,
			  struct crx_err *err)
{
	char a[32], b[32], c[32], d[32];
	Runtime__V1__LinuxContainerResources *o = linux->overhead;
	if (resources_empty(o)) {
		if (!o) {
			o = malloc(sizeof(*o));
			if (!o)
				return crx_err_set(err, -ENOMEM, "out of memory");
			runtime__v1__linux_container_resources__init(o);
			linux->overhead = o;
		}
		o->cpu_shares = cpu_milli_to_shares(p->overhead_cpu_milli);
		o->cpu_period = DEFAULT_PERIOD;
		o->cpu_quota = cpu_milli_to_quota(p->overhead_cpu_milli, DEFAULT_PERIOD);
		o->memory_limit_in_bytes = p->overhead_memory;
		*changed = true;
		return 0;
	}
	/* Overhead is "guaranteed": the kubelet sets request == limit. */
	int64_t cpu = limit_milli(o) ? limit_milli(o) : shares_to_milli(o->cpu_shares);
	if (cpu < p->overhead_cpu_milli || o->memory_limit_in_bytes < p->overhead_memory)
		return refuse(err, handler, "overhead_below_minimum",
			      "handler \"%s\": the pod overhead (%s CPU, %s memory) is below "
			      "the minimum for Kata Containers (%s CPU, %s memory); set the "
			      "RuntimeClass overhead to at least that",
			      handler, fmt_cpu(cpu, a, sizeof(a)),
			      fmt_bytes(o->memory_limit_in_bytes, b, sizeof(b)),
			      fmt_cpu(p->overhead_cpu_milli, c, sizeof(c)),
			      fmt_bytes(p->overhead_memory, d, sizeof(d)));
	return 0;
}

int kata_check_sandbox(const struct kata_policy *p, const char *handler,
		       Runtime__V1__PodSandboxConfig *config, bool *changed, struct crx_err *err)
{
	char a[32], b[32], c[32], d[32];
	Runtime__V1__LinuxPodSandboxConfig *linux = config->linux;
	const Runtime__V1__NamespaceOption *ns =
		linux && linux->security_context ? linux->security_context->namespace_options
						 : NULL;
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
			return refuse(err, handler, "host_namespace",
				      "handler \"%s\": Kata Containers does not support the host "
				      "%s namespace (namespace_options.%s = NODE); run the pod "
				      "with another RuntimeClass",
				      handler, host_namespaces[i].name, host_namespaces[i].field);
	}

	int r = check_annotations(p, handler, "pod", config->annotations, NULL,
				  config->n_annotations, err);
	if (r < 0)
		return r;

	if (!linux || resources_empty(linux->resources))
		return refuse(err, handler, "resources_missing",
			      "handler \"%s\": the pod's resources are missing "
			      "(PodSandboxConfig.linux.resources); Kata Containers needs CPU and "
			      "memory limits equal to the requests",
			      handler);
	int64_t cpu;
	r = check_equal_resources(handler, "the pod", linux->resources, &cpu, err);
	if (r < 0)
		return r;
	int64_t memory = linux->resources->memory_limit_in_bytes;
	if (cpu < p->min_cpu_milli || memory < p->min_memory)
		return refuse(err, handler, "below_minimum",
			      "handler \"%s\": the pod (%s CPU, %s memory) is smaller than the "
			      "Kata Containers minimum of %s CPU and %s memory",
			      handler, fmt_cpu(cpu, a, sizeof(a)), fmt_bytes(memory, b, sizeof(b)),
			      fmt_cpu(p->min_cpu_milli, c, sizeof(c)),
			      fmt_bytes(p->min_memory, d, sizeof(d)));
	int64_t low = cpu * p->min_memory_per_cpu / MILLI_PER_CORE;
	int64_t high = cpu * p->max_memory_per_cpu / MILLI_PER_CORE;
	if (memory < low || memory > high) {
		char e[32], f[32];
		return refuse(err, handler, "memory_cpu_ratio",
			      "handler \"%s\": the pod's memory (%s) does not fit its CPU (%s): "
			      "Kata Containers needs %s to %s of memory per CPU, %s to %s here",
			      handler, fmt_bytes(memory, a, sizeof(a)), fmt_cpu(cpu, b, sizeof(b)),
			      fmt_bytes(p->min_memory_per_cpu, c, sizeof(c)),
			      fmt_bytes(p->max_memory_per_cpu, d, sizeof(d)),
			      fmt_bytes(low, e, sizeof(e)), fmt_bytes(high, f, sizeof(f)));
	}
	return check_overhead(p, handler, linux, changed, err);
}

int kata_check_container(const struct kata_policy *p, const char *handler,
			 const Runtime__V1__ContainerConfig *config, struct crx_err *err)
{
	char what[300];
	snprintf(what, sizeof(what), "container \"%s\"",
		 config->metadata && config->metadata->name ? config->metadata->name : "");
	int r = check_annotations(p, handler, what, NULL, config->annotations,
				  config->n_annotations, err);
	if (r < 0)
		return r;
	const Runtime__V1__LinuxContainerResources *res =
		config->linux ? config->linux->resources : NULL;
	if (resources_empty(res))
		return refuse(err, handler, "resources_missing",
			      "handler \"%s\": %s has no resources; Kata Containers needs CPU "
			      "and memory limits equal to the requests",
			      handler, what);
	int64_t cpu;
	return check_equal_resources(handler, what, res, &cpu, err);
}
