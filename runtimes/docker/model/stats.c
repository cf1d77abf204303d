#include "config.h"

#include "runtimes/docker/model/stats.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/http.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/du.h"

int dk_cgroup_stat_value(const char *text, const char *key, uint64_t *out)
{
	size_t klen = strlen(key);
	for (const char *p = text; p && *p;) {
		if (strncmp(p, key, klen) == 0 && p[klen] == ' ') {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(p + klen + 1, &end, 10);
			if (errno || end == p + klen + 1)
				return -EINVAL;
			*out = v;
			return 0;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -ENOENT;
}

int dk_cgroup_path(const char *proc_cgroup, const char *controller, char *out, size_t size)
{
	for (const char *p = proc_cgroup; p && *p;) {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		const char *c1 = memchr(p, ':', len);
		const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - p)) : NULL;
		if (c2) {
			/* "id:ctrl1,ctrl2:path"; "0::path" is the v2 hierarchy. */
			const char *ctrls = c1 + 1;
			size_t clen = (size_t)(c2 - ctrls);
			bool match = false;
			if (!*controller) {
				match = clen == 0;
			} else {
				size_t want = strlen(controller);
				for (const char *c = ctrls; c < c2;) {
					const char *comma = memchr(c, ',', (size_t)(c2 - c));
					size_t n = comma ? (size_t)(comma - c) : (size_t)(c2 - c);
					if (n == want && strncmp(c, controller, n) == 0)
						match = true;
					c += n + 1;
				}
			}
			size_t plen = len - (size_t)(c2 + 1 - p);
			if (match) {
				if (plen >= size)
					return -ENAMETOOLONG;
				memcpy(out, c2 + 1, plen);
				out[plen] = '\0';
				return 0;
			}
		}
		p = eol ? eol + 1 : NULL;
	}
	return -ENOENT;
}

/* Where each hierarchy is mounted, from /proc/self/mountinfo. */
struct mount_point {
	char ctrl[32]; /* "memory", "cpuacct", "pids"; "" for cgroup2 */
	char root[256], dir[256];
};
static struct mount_point mounts[16];
static size_t n_mounts;
static pthread_once_t mounts_once = PTHREAD_ONCE_INIT;

static void add_mount(const char *ctrl, const char *root, const char *dir)
{
	if (n_mounts == ARRAY_SIZE(mounts))
		return;
	struct mount_point *m = &mounts[n_mounts++];
	snprintf(m->ctrl, sizeof(m->ctrl), "%s", ctrl);
	snprintf(m->root, sizeof(m->root), "%s", root);
	snprintf(m->dir, sizeof(m->dir), "%s", dir);
}

static void read_mounts(void)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096];
	while (f && fgets(line, sizeof(line), f)) {
		char root[256], dir[256], fstype[64], super[1024];
		/* id parent major:minor root mountpoint options ... - fstype source super */
		char *dash = strstr(line, " - ");
		if (!dash || sscanf(line, "%*s %*s %*s %255s %255s", root, dir) != 2 ||
		    sscanf(dash + 3, "%63s %*s %1023s", fstype, super) != 2)
			continue;
		if (streq(fstype, "cgroup2")) {
			add_mount("", root, dir);
		} else if (streq(fstype, "cgroup")) {
			static const char *const wanted[] = {"cpuacct", "memory", "pids"};
			for (size_t i = 0; i < ARRAY_SIZE(wanted); i++) {
				char *save, opts[1024];
				snprintf(opts, sizeof(opts), "%s", super);
				for (char *o = strtok_r(opts, ",", &save); o;
				     o = strtok_r(NULL, ",", &save))
					if (streq(o, wanted[i]))
						add_mount(wanted[i], root, dir);
			}
		}
	}
}

/* The directory of controller's cgroup for a /proc/PID/cgroup text. */
static int cgroup_dir(const char *proc_cgroup, const char *ctrl, char *out, size_t size)
{
	pthread_once(&mounts_once, read_mounts);
	char path[1024];
	if (dk_cgroup_path(proc_cgroup, ctrl, path, sizeof(path)) < 0)
		return -ENOENT;
	for (size_t i = 0; i < n_mounts; i++) {
		const struct mount_point *m = &mounts[i];
		if (!streq(m->ctrl, ctrl))
			continue;
		size_t rlen = streq(m->root, "/") ? 0 : strlen(m->root);
		if (rlen && strncmp(path, m->root, rlen) != 0)
			continue;
		snprintf(out, size, "%s%s", m->dir, path + rlen);
		return 0;
	}
	return -ENOENT;
}

/* Reads a whole small file from offset 0 (cgroup files make their text
 * afresh on every read). */
static int pread_all(int fd, char *buf, size_t size)
{
	if (fd < 0)
		return -ENOENT;
	size_t n = 0;
	for (;;) {
		ssize_t got = pread(fd, buf + n, size - 1 - n, (off_t)n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0 || (n += (size_t)got) == size - 1)
			break;
	}
	buf[n] = '\0';
	return 0;
}

static int pread_u64(int fd, uint64_t *out)
{
	char buf[64];
	int r = pread_all(fd, buf, sizeof(buf));
	if (r < 0)
		return r;
	if (strncmp(buf, "max", 3) == 0) {
		*out = UINT64_MAX;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf)
		return -EINVAL;
	*out = v;
	return 0;
}

static int open_in(const char *dir, const char *file)
{
	char path[1300];
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
		return -1;
	return open(path, O_RDONLY | O_CLOEXEC);
}

int dk_cgroup_open(int pid, struct dk_cgroup_files *f, struct crx_err *err)
{
	*f = (struct dk_cgroup_files){
		.cpu = -1, .mem_usage = -1, .mem_limit = -1, .mem_stat = -1, .pids = -1};
	char path[64], text[4096], dir[1200];
	snprintf(path, sizeof(path), "/proc/%d/cgroup", pid);
	_cleanup_fclose_ FILE *p = fopen(path, "re");
	if (!p)
		return crx_err_set(err, errno == ENOENT ? -ESRCH : -errno, "cannot read %s: %s",
				   path, strerror(errno));
	size_t n = fread(text, 1, sizeof(text) - 1, p);
	text[n] = '\0';
	/* cgroup v1 controllers where they are, else the v2 hierarchy. */
	if (cgroup_dir(text, "cpuacct", dir, sizeof(dir)) == 0) {
		f->cpu = open_in(dir, "cpuacct.usage");
	} else if (cgroup_dir(text, "", dir, sizeof(dir)) == 0) {
		f->cpu = open_in(dir, "cpu.stat");
		f->v2_cpu = true;
	}
	if (cgroup_dir(text, "memory", dir, sizeof(dir)) == 0) {
		f->mem_usage = open_in(dir, "memory.usage_in_bytes");
		f->mem_limit = open_in(dir, "memory.limit_in_bytes");
		f->mem_stat = open_in(dir, "memory.stat");
	} else if (cgroup_dir(text, "", dir, sizeof(dir)) == 0) {
		f->mem_usage = open_in(dir, "memory.current");
		f->mem_limit = open_in(dir, "memory.max");
		f->mem_stat = open_in(dir, "memory.stat");
		f->v2_mem = true;
	}
	if (cgroup_dir(text, "pids", dir, sizeof(dir)) == 0 ||
	    cgroup_dir(text, "", dir, sizeof(dir)) == 0)
		f->pids = open_in(dir, "pids.current");
	return 0;
}

void dk_cgroup_close(struct dk_cgroup_files *f)
{
	int *fds[] = {&f->cpu, &f->mem_usage, &f->mem_limit, &f->mem_stat, &f->pids};
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

int dk_cgroup_read_files(const struct dk_cgroup_files *f, struct dk_cgroup_sample *s)
{
	*s = (struct dk_cgroup_sample){0};
	_cleanup_free_ char *stat = malloc(16384);
	if (!stat)
		return -ENOMEM;
	int gone = 0;
	if (!f->v2_cpu) {
		int r = pread_u64(f->cpu, &s->cpu_ns);
		s->has_cpu = r == 0;
		gone = r == -ENODEV ? r : gone;
	} else if (pread_all(f->cpu, stat, 16384) == 0) {
		uint64_t usec;
		if (dk_cgroup_stat_value(stat, "usage_usec", &usec) == 0) {
			s->cpu_ns = usec * 1000;
			s->has_cpu = true;
		}
	}
	int r = pread_u64(f->mem_usage, &s->mem_usage);
	s->has_memory = r == 0;
	gone = r == -ENODEV ? r : gone;
	if (s->has_memory) {
		uint64_t inactive = 0;
		pread_u64(f->mem_limit, &s->mem_limit);
		if (pread_all(f->mem_stat, stat, 16384) == 0) {
			bool v2 = f->v2_mem;
			dk_cgroup_stat_value(stat, v2 ? "inactive_file" : "total_inactive_file",
					     &inactive);
			dk_cgroup_stat_value(stat, v2 ? "anon" : "total_rss", &s->mem_rss);
			dk_cgroup_stat_value(stat, v2 ? "pgfault" : "total_pgfault", &s->pgfault);
			dk_cgroup_stat_value(stat, v2 ? "pgmajfault" : "total_pgmajfault",
					     &s->pgmajfault);
		}
		s->mem_working_set = s->mem_usage > inactive ? s->mem_usage - inactive : 0;
	}
	s->has_pids = pread_u64(f->pids, &s->pids) == 0;
	return gone;
}

int dk_cgroup_read(int pid, struct dk_cgroup_sample *s, struct crx_err *err)
{
	*s = (struct dk_cgroup_sample){0};
	struct dk_cgroup_files f;
	int r = dk_cgroup_open(pid, &f, err);
	if (r < 0)
		return r;
	r = dk_cgroup_read_files(&f, s);
	dk_cgroup_close(&f);
	return r == -ENOMEM ? crx_err_set(err, r, "out of memory") : 0;
}

struct cache_entry {
	struct cache_entry *next;
	char *id;
	int64_t cpu_at_ns;
	uint64_t cpu_ns;
	bool has_cpu;
	char *upperdir;
	int64_t layer_at_ns, layer_at_ms;
	uint64_t layer_bytes, layer_inodes;
	bool has_layer;
};

struct dk_stats_cache {
	pthread_mutex_t lock;
	struct cache_entry *entries;
};

int dk_stats_cache_new(struct dk_stats_cache **out)
{
	struct dk_stats_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	*out = c;
	return 0;
}

static void entry_free(struct cache_entry *e)
{
	free(e->id);
	free(e->upperdir);
	free(e);
}

void dk_stats_cache_free(struct dk_stats_cache *c)
{
	if (!c)
		return;
	while (c->entries) {
		struct cache_entry *e = c->entries;
		c->entries = e->next;
		entry_free(e);
	}
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Called with the lock held. */
static struct cache_entry *get_entry(struct dk_stats_cache *c, const char *id)
{
	for (struct cache_entry *e = c->entries; e; e = e->next)
		if (streq(e->id, id))
			return e;
	struct cache_entry *e = calloc(1, sizeof(*e));
	if (!e || !(e->id = strdup(id))) {
		free(e);
		return NULL;
	}
	e->next = c->entries;
	c->entries = e;
	return e;
}

bool dk_stats_cpu_rate(struct dk_stats_cache *c, const char *id, int64_t now_ns, uint64_t cpu_ns,
		       uint64_t *nano_cores)
{
	pthread_mutex_lock(&c->lock);
	struct cache_entry *e = get_entry(c, id);
	bool have = false;
	if (e) {
		if (e->has_cpu && now_ns > e->cpu_at_ns && cpu_ns >= e->cpu_ns) {
			/* core-ns per second: ns of CPU over ns of wall clock, scaled by 1e9. */
			double rate = (double)(cpu_ns - e->cpu_ns) * 1e9 /
				      (double)(now_ns - e->cpu_at_ns);
			*nano_cores = (uint64_t)rate;
			have = true;
		}
		/* Keep the older sample when two calls come close together, so
		 * the rate has a window to average over. */
		if (!e->has_cpu || now_ns - e->cpu_at_ns >= 1000000000 || cpu_ns < e->cpu_ns) {
			e->cpu_at_ns = now_ns;
			e->cpu_ns = cpu_ns;
			e->has_cpu = true;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return have;
}

/* A layer is the pod's to shape: the walk is budgeted (model/du.h). A
 * second is well under the kubelet's stats period; a million entries take
 * about that long on a warm cache. */
static const struct dk_du_budget layer_budget = {.max_entries = 1000000, .max_ms = 1000};

int dk_stats_layer(struct dk_stats_cache *c, const char *id, const char *upperdir, int64_t ttl_ms,
		   uint64_t *bytes, uint64_t *inodes, int64_t *at_ns, struct crx_err *err)
{
	int64_t now = dk_now_ms();
	pthread_mutex_lock(&c->lock);
	struct cache_entry *e = get_entry(c, id);
	if (e && e->has_layer && now - e->layer_at_ms < ttl_ms && streq(e->upperdir, upperdir)) {
		*bytes = e->layer_bytes;
		*inodes = e->layer_inodes;
		*at_ns = e->layer_at_ns;
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	pthread_mutex_unlock(&c->lock);

	/* Measured without the lock: a large layer takes a while. */
	struct dk_du du;
	int r = dk_disk_usage(upperdir, &layer_budget, &du);
	if (r < 0)
		return crx_err_set(err, r, "cannot measure %s: %s", upperdir, strerror(-r));
	/* An incomplete walk is a lower bound, cached like a complete one:
	 * walking again at every call is what the budget prevents. */
	uint64_t walk_bytes = du.bytes, walk_inodes = du.inodes;
	int64_t at = dk_realtime_ns();
	pthread_mutex_lock(&c->lock);
	e = get_entry(c, id);
	if (e) {
		free(e->upperdir);
		e->upperdir = strdup(upperdir);
		e->layer_bytes = walk_bytes;
		e->layer_inodes = walk_inodes;
		e->layer_at_ms = now;
		e->layer_at_ns = at;
		e->has_layer = e->upperdir != NULL;
	}
	pthread_mutex_unlock(&c->lock);
	*bytes = walk_bytes;
	*inodes = walk_inodes;
	*at_ns = at;
	return 0;
}

void dk_stats_forget(struct dk_stats_cache *c, const char *id)
{
	pthread_mutex_lock(&c->lock);
	for (struct cache_entry **p = &c->entries; *p; p = &(*p)->next) {
		if (streq((*p)->id, id)) {
			struct cache_entry *e = *p;
			*p = e->next;
			entry_free(e);
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
}
