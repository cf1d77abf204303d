/* The configuration reader (daemon/conf.c, inih underneath, and the checks
 * of each backend type's own keys). The input is crimux.conf; when it holds
 * a line "%%", what follows is a drop-in, crimux.conf.d/50-fuzz.conf. Both
 * are written to a temporary directory made once and removed at exit. Properties, beyond "no
 * crash, no leak, no UB":
 * - a refusal returns the error it records, and the message names a file;
 * - what loads holds what the rest of crimux relies on without checking
 *   again: an absolute socket path that fits sun_path, unix endpoints, each
 *   once, a backend for every handler, a runtime_handler, a default handler
 *   that exists, Kata thresholds with min <= max;
 * - the Kata rules of every handler run on a sized pod without UB, whatever
 *   the thresholds (overflow-safe arithmetic against configured extremes). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "daemon/conf.h"
#include "router/policy.h"
#include "runtimes/backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* In tmpfs when there is one: ext4 flushes a file rewritten with O_TRUNC on
 * close, which made each run wait for the disk. */
static char dir[64];
static char main_path[128], dropin_dir[128], dropin_path[160];

static void cleanup(void)
{
	unlink(dropin_path);
	rmdir(dropin_dir);
	unlink(main_path);
	rmdir(dir);
}

static void setup(void)
{
	struct stat st;
	snprintf(dir, sizeof(dir), "%s/crimux-fuzz-config.XXXXXX",
		 stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp");
	if (!mkdtemp(dir))
		abort();
	snprintf(main_path, sizeof(main_path), "%s/crimux.conf", dir);
	snprintf(dropin_dir, sizeof(dropin_dir), "%s/crimux.conf.d", dir);
	snprintf(dropin_path, sizeof(dropin_path), "%s/50-fuzz.conf", dropin_dir);
	if (mkdir(dropin_dir, 0700) < 0)
		abort();
	atexit(cleanup);
}

static void write_file(const char *path, const uint8_t *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) < 0)
		abort();
}

/* A pod the default thresholds admit: 1 CPU, 2 GiB, and its container. */
static void run_rules(const struct crx_handler_config *h)
{
	Runtime__V1__LinuxContainerResources res = RUNTIME__V1__LINUX_CONTAINER_RESOURCES__INIT;
	res.cpu_shares = 1024;
	res.cpu_period = 100000;
	res.cpu_quota = 100000;
	res.memory_limit_in_bytes = 2 * GIB;
	Runtime__V1__LinuxPodSandboxConfig linux = RUNTIME__V1__LINUX_POD_SANDBOX_CONFIG__INIT;
	linux.resources = &res;
	Runtime__V1__PodSandboxConfig config = RUNTIME__V1__POD_SANDBOX_CONFIG__INIT;
	config.linux = &linux;
	bool changed = false;
	struct crx_err err = {0};
	int r = kata_check_sandbox(&h->kata, h->name, &config, &changed, &err);
	if (r != 0 && r != -EINVAL)
		__builtin_trap();
	if (changed)
		free(linux.overhead); /* the filled-in overhead */
	Runtime__V1__LinuxContainerConfig clinux = RUNTIME__V1__LINUX_CONTAINER_CONFIG__INIT;
	clinux.resources = &res;
	Runtime__V1__ContainerConfig container = RUNTIME__V1__CONTAINER_CONFIG__INIT;
	container.linux = &clinux;
	r = kata_check_container(&h->kata, h->name, &container, &err);
	if (r != 0 && r != -EINVAL)
		__builtin_trap();
}

static void check_loaded(const struct crx_config *cfg)
{
	if (!cfg->socket_path || cfg->socket_path[0] != '/' ||
	    strlen(cfg->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path) ||
	    cfg->socket_mode > 07777 || cfg->log_level < LOG_ERR || cfg->log_level > LOG_DEBUG ||
	    cfg->n_backends == 0)
		__builtin_trap();
	for (size_t i = 0; i < cfg->n_backends; i++) {
		const struct crx_backend_config *b = &cfg->backends[i];
		if (!b->name || !b->endpoint || strncmp(b->endpoint, "unix:///", 8) != 0 ||
		    !backend_type_find(b->type))
			__builtin_trap();
		for (size_t j = 0; j < i; j++)
			if (streq(cfg->backends[j].endpoint, b->endpoint) ||
			    streq(cfg->backends[j].name, b->name))
				__builtin_trap();
	}
	for (size_t i = 0; i < cfg->n_handlers; i++) {
		const struct crx_handler_config *h = &cfg->handlers[i];
		if (!h->backend || !crx_config_backend(cfg, h->backend) || !h->runtime_handler ||
		    crx_config_handler(cfg, h->name) != h)
			__builtin_trap();
		if (h->kata.min_memory_per_cpu > h->kata.max_memory_per_cpu)
			__builtin_trap();
		if (h->policy == CRX_POLICY_KATA)
			run_rules(h);
	}
	if (cfg->n_handlers &&
	    (!cfg->default_handler || !crx_config_handler(cfg, cfg->default_handler)))
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	if (!ready) {
		setup();
		ready = true;
	}
	static const char mark[] = "\n%%\n";
	const uint8_t *split = memmem(data, size, mark, sizeof(mark) - 1);
	if (split) {
		size_t head = (size_t)(split - data) + 1;
		size_t skip = head + sizeof(mark) - 2;
		write_file(main_path, data, head);
		write_file(dropin_path, data + skip, size - skip);
	} else {
		write_file(main_path, data, size);
		unlink(dropin_path);
	}

	struct crx_config cfg;
	struct crx_err err = {0};
	int r = crx_config_load(main_path, NULL, &cfg, &err);
	if (r < 0) {
		/* The error it returns is the one it recorded, and names the file
		 * (each message starts with the file's path, or "file:line"). */
		if (err.code != r || strncmp(err.msg, dir, strlen(dir)) != 0)
			__builtin_trap();
		return 0;
	}
	if (r != 0)
		__builtin_trap();
	check_loaded(&cfg);
	crx_config_clear(&cfg);
	return 0;
}
