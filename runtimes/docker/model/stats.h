/* Resource usage read straight from a container's cgroups (v1 or v2), and
 * caches that keep stats cheap: the previous CPU sample (for the rate in
 * nanocores) and the writable layer's size, measured by crimux at most once
 * per TTL instead of asking dockerd to walk the disk on every call. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct dk_cgroup_sample {
	bool has_cpu, has_memory, has_pids;
	uint64_t cpu_ns;
	uint64_t mem_usage, mem_working_set, mem_rss, mem_limit, pgfault, pgmajfault;
	uint64_t pids;
};

/* The cgroups of process pid (a container's init). */
int dk_cgroup_read(int pid, struct dk_cgroup_sample *s, struct crx_err *err);

/* A container's cgroup files, opened once and read many times (pread):
 * at many containers a stats call then costs one read per file instead of
 * a path walk and an open each. -1 where a file is missing. */
struct dk_cgroup_files {
	int cpu; /* cpuacct.usage (v1) or cpu.stat (v2) */
	int mem_usage, mem_limit, mem_stat, pids;
	bool v2_cpu, v2_mem;
};
int dk_cgroup_open(int pid, struct dk_cgroup_files *f, struct crx_err *err);
void dk_cgroup_close(struct dk_cgroup_files *f);
/* -ENODEV when the cgroup is gone (the sample is then empty). */
int dk_cgroup_read_files(const struct dk_cgroup_files *f, struct dk_cgroup_sample *s);

/* Parsers, exposed for the unit tests: one value of a "key value" file,
 * and the path of a controller in a /proc/PID/cgroup text ("" for v2). */
int dk_cgroup_stat_value(const char *text, const char *key, uint64_t *out);
int dk_cgroup_path(const char *proc_cgroup, const char *controller, char *out, size_t size);

struct dk_stats_cache;
int dk_stats_cache_new(struct dk_stats_cache **out);
void dk_stats_cache_free(struct dk_stats_cache *c);
/* Records a CPU sample of id and gives the rate since the previous one. */
bool dk_stats_cpu_rate(struct dk_stats_cache *c, const char *id, int64_t now_ns, uint64_t cpu_ns,
		       uint64_t *nano_cores);
/* Bytes and inodes under upperdir, measured again when older than ttl_ms;
 * *at_ns is when they were measured. */
int dk_stats_layer(struct dk_stats_cache *c, const char *id, const char *upperdir, int64_t ttl_ms,
		   uint64_t *bytes, uint64_t *inodes, int64_t *at_ns, struct crx_err *err);
void dk_stats_forget(struct dk_stats_cache *c, const char *id);
