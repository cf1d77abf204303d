/* Cgroup files of containers kept open between stats calls (see
 * dk_cgroup_files): keyed by container ID and its init's pid, opened again
 * when the pid changes (a restart) or the cgroup is gone, closed when the
 * container is forgotten or has not been read for a while. */
#pragma once

#include "runtimes/docker/model/stats.h"

struct dk_cgroup_cache;
int dk_cgroup_cache_new(struct dk_cgroup_cache **out);
void dk_cgroup_cache_free(struct dk_cgroup_cache *c);
/* As dk_cgroup_read(pid), through the files kept for id. */
int dk_cgroup_cache_read(struct dk_cgroup_cache *c, const char *id, int pid,
			 struct dk_cgroup_sample *s);
void dk_cgroup_cache_forget(struct dk_cgroup_cache *c, const char *id);
