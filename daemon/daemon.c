#include "config.h"

#include "daemon/daemon.h"

#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "common/util.h"
#include "cri/router.h"
#include "cri/rpc.h"
#include "daemon/log.h"

static const int handled_signals[] = {SIGTERM, SIGINT, SIGHUP};

static sigset_t signal_set(void)
{
	sigset_t set;
	sigemptyset(&set);
	for (size_t i = 0; i < ARRAY_SIZE(handled_signals); i++)
		sigaddset(&set, handled_signals[i]);
	return set;
}

void crx_daemon_block_signals(void)
{
	sigset_t set = signal_set();
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static int mkdir_parents(const char *path, mode_t mode)
{
	_cleanup_free_ char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	for (char *p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

/* gRPC unlinks whatever sits at the socket path, even a live socket: a lock
 * beside it keeps a second crimuxd from stealing the first one's socket. */
static int lock_socket(const char *socket_path, int *out_fd, struct crx_err *err)
{
	_cleanup_free_ char *lock_path = NULL;
	if (asprintf(&lock_path, "%s.lock", socket_path) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	_cleanup_close_ int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return crx_err_set(err, -errno, "cannot open %s: %s", lock_path, strerror(errno));
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			return crx_err_set(err, -EBUSY,
					   "another crimuxd is serving %s (it holds %s)",
					   socket_path, lock_path);
		return crx_err_set(err, -errno, "cannot lock %s: %s", lock_path, strerror(errno));
	}
	*out_fd = TAKE_FD(fd);
	return 0;
}

static void log_call(const struct rpc_call_summary *s, void *userdata)
{
	int level = s->code == RPC_OK || s->code == RPC_NOT_FOUND ? LOG_DEBUG : LOG_INFO;
	if (!log_enabled(level))
		return;
	log_msg(level, "%s -> %s: %s%s%s (%.3f ms, %zu/%zu bytes)", s->method,
		s->backend ? s->backend : "crimux", rpc_code_name(s->code), s->details ? ": " : "",
		s->details ? s->details : "", (double)s->duration_ns / 1e6, s->request_bytes,
		s->response_bytes);
}

static int wait_for_stop(void)
{
	sigset_t set = signal_set();
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);
		if (sig < 0 && errno == EINTR)
			continue;
		if (sig == SIGHUP) {
			log_notice("SIGHUP: configuration reload is not supported yet; ignored");
			continue;
		}
		return sig;
	}
}

int crx_daemon_run(const struct crx_config *cfg, struct crx_err *err)
{
	_cleanup_close_ int lock_fd = -1;
	struct router *router = NULL;
	struct rpc_server *server = NULL;
	_cleanup_free_ char *address = NULL;

	int r = mkdir_parents(cfg->socket_path, 0755);
	if (r < 0)
		return crx_err_set(err, r, "cannot create the directory of %s: %s",
				   cfg->socket_path, strerror(-r));
	r = lock_socket(cfg->socket_path, &lock_fd, err);
	if (r < 0)
		return r;
	r = router_new(cfg, &router, err);
	if (r < 0)
		return r;
	/* Before serving: who owns what, from the backends themselves. */
	struct router_census census;
	r = router_rebuild(router, &census, err);
	if (census.unreachable)
		log_warning("backends not answering at start: %s; their pods are found once they "
			    "answer",
			    census.unreachable);
	free(census.unreachable);
	if (r < 0)
		goto out;
	log_info("found %u pod sandboxes and %u containers on the backends", census.sandboxes,
		 census.containers);
	if (asprintf(&address, "unix://%s", cfg->socket_path) < 0) {
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	struct rpc_server_options opts = {
		.address = address,
		.max_message = 16 * MIB,
		.dispatch = router_dispatch,
		.finished = log_call,
		.userdata = router,
	};
	/* Created without group or world access, then opened up to socket_mode. */
	mode_t old_umask = umask(0177);
	r = rpc_server_new(&opts, &server, err);
	umask(old_umask);
	if (r < 0)
		goto out;
	if (chmod(cfg->socket_path, cfg->socket_mode) < 0) {
		r = crx_err_set(err, -errno, "cannot set the mode of %s: %s", cfg->socket_path,
				strerror(errno));
		goto out;
	}
	r = rpc_server_start(server, err);
	if (r < 0)
		goto out;
	log_info("crimuxd %s serving CRI v1 on %s", PACKAGE_VERSION, cfg->socket_path);
	for (size_t i = 0; i < cfg->n_backends; i++)
		log_info("backend %s (%s) at %s", cfg->backends[i].name, cfg->backends[i].type,
			 cfg->backends[i].endpoint);

	int sig = wait_for_stop();
	log_info("%s: stopping; calls in flight get %.1f s to finish", strsignal(sig),
		 cfg->shutdown_timeout_ms / 1000.0);
	unsigned cancelled = rpc_server_shutdown(server, cfg->shutdown_timeout_ms);
	if (cancelled)
		log_notice("cancelled %u call(s) still running at the shutdown deadline",
			   cancelled);
	r = 0;
out:
	rpc_server_free(server);
	if (server || r == 0)
		unlink(cfg->socket_path);
	router_free(router);
	return r;
}
