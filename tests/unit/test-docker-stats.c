/* Stats without dockerd: cgroup file parsing, the CPU rate cache, the
 * writable-layer size cache; and the pause image archive crimux builds. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/pause.h"
#include "runtimes/docker/model/stats.h"
#include "tap.h"

static void parsers(void)
{
	const char *stat = "cache 10\ntotal_inactive_file 4096\ntotal_rss 123\n";
	uint64_t v = 0;
	is_int(dk_cgroup_stat_value(stat, "total_rss", &v), 0, "a key");
	is_int(v, 123, "its value");
	is_int(dk_cgroup_stat_value(stat, "total_inactive_file", &v), 0, "another");
	is_int(v, 4096, "value");
	is_int(dk_cgroup_stat_value(stat, "inactive_file", &v), -ENOENT, "no prefix matches");
	const char *cg = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"
			 "2:memory:/kubepods/pod1/abc\n0::/system.slice\n";
	char path[256];
	is_int(dk_cgroup_path(cg, "cpuacct", path, sizeof(path)), 0, "a controller in a list");
	is_str(path, "/docker/abc", "its path");
	is_int(dk_cgroup_path(cg, "memory", path, sizeof(path)), 0, "memory");
	is_str(path, "/kubepods/pod1/abc", "memory path");
	is_int(dk_cgroup_path(cg, "", path, sizeof(path)), 0, "the v2 hierarchy");
	is_str(path, "/system.slice", "v2 path");
	is_int(dk_cgroup_path(cg, "cpu,cpuacct", path, sizeof(path)), -ENOENT,
	       "a list is not a controller");

	struct dk_cgroup_sample s;
	struct crx_err err = {0};
	is_int(dk_cgroup_read(getpid(), &s, &err), 0, "our own cgroups");
	ok(s.has_cpu && s.cpu_ns > 0, "CPU time");
	ok(s.has_memory && s.mem_usage > 0 && s.mem_working_set <= s.mem_usage, "memory");
	is_int(dk_cgroup_read(999999999, &s, &err), -ESRCH, "no such process");
}

static void caches(void)
{
	struct dk_stats_cache *c = NULL;
	is_int(dk_stats_cache_new(&c), 0, "cache");
	uint64_t rate = 0;
	ok(!dk_stats_cpu_rate(c, "a", 1000000000, 5000000, &rate), "no rate from one sample");
	ok(dk_stats_cpu_rate(c, "a", 3000000000, 1005000000, &rate), "a rate from two");
	is_int(rate, 500000000, "half a core");
	ok(dk_stats_cpu_rate(c, "a", 3500000000, 1255000000, &rate), "a close sample");
	is_int(rate, 500000000, "measured against the older sample");
	ok(!dk_stats_cpu_rate(c, "b", 1, 1, &rate), "per container");

	char dir[] = "/tmp/crimux-layer-XXXXXX";
	if (!mkdtemp(dir))
		return;
	char file[300];
	snprintf(file, sizeof(file), "%s/data", dir);
	uint64_t bytes, inodes;
	int64_t at, at2;
	struct crx_err err = {0};
	is_int(dk_stats_layer(c, "a", dir, 60000, &bytes, &inodes, &at, &err), 0, "measured");
	is_int(inodes, 1, "just the directory");
	int fd = open(file, O_WRONLY | O_CREAT, 0600);
	char block[65536] = {1};
	for (int i = 0; i < 16; i++)
		if (write(fd, block, sizeof(block)) < 0)
			break;
	close(fd);
	uint64_t b2, i2;
	is_int(dk_stats_layer(c, "a", dir, 60000, &b2, &i2, &at2, &err), 0, "again");
	ok(b2 == bytes && i2 == inodes && at2 == at, "within the TTL: the cached size");
	nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
	is_int(dk_stats_layer(c, "a", dir, 10, &b2, &i2, &at2, &err), 0, "after the TTL");
	ok(b2 >= bytes + (1 << 20) && i2 == 2 && at2 > at, "measured anew");
	dk_stats_forget(c, "a");
	ok(!dk_stats_cpu_rate(c, "a", 9000000000, 1, &rate), "forgotten");
	unlink(file);
	rmdir(dir);
	dk_stats_cache_free(c);
}

/* Finds a member of a ustar archive. */
static const char *member(const char *tar, size_t len, const char *name, size_t *size,
			  unsigned *mode)
{
	for (size_t off = 0; off + 512 <= len;) {
		const char *h = tar + off;
		if (!h[0])
			return NULL;
		size_t sz = strtoul(h + 124, NULL, 8);
		if (streq(h, name)) {
			*size = sz;
			*mode = (unsigned)strtoul(h + 100, NULL, 8);
			return h + 512;
		}
		off += 512 + ((sz + 511) & ~(size_t)511);
	}
	return NULL;
}

static void pause_image(void)
{
	char bin[] = "/tmp/crimux-pause-XXXXXX";
	int fd = mkstemp(bin);
	const char *content = "\x7f"
			      "ELF pretend";
	if (fd < 0 || write(fd, content, strlen(content)) < 0)
		return;
	close(fd);
	char *tar = NULL, *tar2 = NULL;
	size_t len = 0, len2 = 0;
	struct crx_err err = {0};
	is_int(dk_pause_archive(bin, "crimux/pause:test", &tar, &len, &err), 0, "archive");
	is_int(dk_pause_archive(bin, "crimux/pause:test", &tar2, &len2, &err), 0, "twice");
	ok(len == len2 && memcmp(tar, tar2, len) == 0, "byte for byte the same");
	size_t size;
	unsigned mode;
	const char *man = member(tar, len, "manifest.json", &size, &mode);
	json_object *m = NULL;
	ok(man && dk_json_parse(man, size, &m, NULL) == 0, "manifest.json");
	json_object *entry = json_object_array_get_idx(m, 0);
	is_str(json_object_get_string(
		       json_object_array_get_idx(dk_json_get(entry, "RepoTags", NULL), 0)),
	       "crimux/pause:test", "tagged");
	const char *cfg_name = dk_json_str(entry, "Config");
	const char *layer_name = json_object_get_string(
		json_object_array_get_idx(dk_json_get(entry, "Layers", NULL), 0));
	size_t lsize, csize;
	const char *layer = member(tar, len, layer_name, &lsize, &mode);
	const char *cfg = member(tar, len, cfg_name, &csize, &mode);
	ok(layer && cfg, "config and layer present");
	json_object *c = NULL;
	dk_json_parse(cfg, csize, &c, NULL);
	is_str(json_object_get_string(
		       json_object_array_get_idx(dk_json_get(c, "config", "Entrypoint", NULL), 0)),
	       "/pause", "entrypoint /pause");
	char digest[72];
	dk_sha256(layer, lsize, digest);
	is_str(json_object_get_string(
		       json_object_array_get_idx(dk_json_get(c, "rootfs", "diff_ids", NULL), 0)),
	       digest, "the layer's digest in the config");
	char cdigest[72];
	dk_sha256(cfg, csize, cdigest);
	ok(strncmp(cfg_name, cdigest + 7, 64) == 0, "the config named by its digest (image ID)");
	size_t psize;
	const char *p = member(layer, lsize, "pause", &psize, &mode);
	ok(p && psize == strlen(content) && memcmp(p, content, psize) == 0, "the binary as /pause");
	is_int(mode, 0755, "executable");
	json_object_put(m);
	json_object_put(c);
	free(tar);
	free(tar2);
	unlink(bin);
	is_int(dk_pause_archive("/nonexistent/pause", "x:y", &tar, &len, &err), -ENOENT,
	       "no binary");
}

int main(void)
{
	parsers();
	caches();
	pause_image();
	return tap_done();
}
