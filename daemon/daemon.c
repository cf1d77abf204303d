#include "config.h"

#include "daemon/daemon.h"

#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "common/metrics.h"
#include "common/util.h"
#include "router/census.h"
#include "router/router.h"
#include "cri/methods.h"
#include "cri/rpc.h"
#include "daemon/log.h"
#include "daemon/metrics-http.h"

static const int handled_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};

/* A configuration and the router built from it. Every call holds the
 * generation it was dispatched under, so a reload can put a new one in
 * place while calls in flight finish on the old one. */
struct generation {
	atomic_int refs;
	struct crx_config cfg;
	struct router *router;
};

struct daemon {
	const char *config_path;
	pthread_mutex_t lock;
	struct generation *current;
	char *socket_path; /* where crimux serves */
	bool activated;    /* the socket came from systemd */
	struct rpc_channel *self;
	uint64_t watchdog_usec;
	bool ready;
	struct crx_metrics_server *metrics;
	char *metrics_address; /* what it serves on; a reload does not move it */
};

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
	/* A peer that goes away mid-write (a streaming client, a CNI plugin,
	 * dockerd) costs that write an EPIPE, never the node's CRI. Sockets
	 * are written with MSG_NOSIGNAL anyway; this covers every other
	 * descriptor. Children get the default back (cni.c resets them all). */
	struct sigaction ign = {.sa_handler = SIG_IGN};
	sigemptyset(&ign.sa_mask);
	sigaction(SIGPIPE, &ign, NULL);
}

static void generation_unref(void *arg)
{
	struct generation *g = arg;
	if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	router_free(g->router);
	crx_config_clear(&g->cfg);
	free(g);
}

/* Opens the backends of cfg (taken over), sharing those of prev (may be
 * NULL) whose configuration is unchanged, and learns what they hold. */
static int generation_new(struct crx_config *cfg, struct generation *prev, struct generation **out,
			  struct crx_err *err)
{
	struct generation *g = calloc(1, sizeof(*g));
	if (!g) {
		crx_config_clear(cfg);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	atomic_init(&g->refs, 1);
	g->cfg = *cfg;
	*cfg = (struct crx_config){0};
	int r = router_renew(&g->cfg, prev ? prev->router : NULL, &g->router, err);
	struct router_census census = {0};
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (r == 0)
		r = router_rebuild(g->router, &census, err);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (r == 0) {
		crx_metric_set(CRX_M_OWNERS_REBUILD,
			       (t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec),
			       NULL);
		crx_metric_set(CRX_M_OWNERS, census.sandboxes, (const char *[]){"sandbox"});
		crx_metric_set(CRX_M_OWNERS, census.containers, (const char *[]){"container"});
	}
	if (census.unreachable)
		log_warning("backends not answering: %s; their pods are found once they answer",
			    census.unreachable);
	free(census.unreachable);
	if (r < 0) {
		generation_unref(g);
		return r;
	}
	/* How long a restarted crimuxd takes to know who owns what. */
	log_info("found %u pod sandboxes and %u containers on the backends in %.3f s",
		 census.sandboxes, census.containers,
		 (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	for (size_t i = 0; i < g->cfg.n_backends; i++)
		log_info("backend %s (%s) at %s", g->cfg.backends[i].name, g->cfg.backends[i].type,
			 g->cfg.backends[i].endpoint);
	for (size_t i = 0; i < g->cfg.n_handlers; i++) {
		const struct crx_handler_config *h = &g->cfg.handlers[i];
		log_info("handler %s%s -> backend %s as \"%s\"%s", h->name,
			 streq(h->name, g->cfg.default_handler) ? " (default)" : "", h->backend,
			 h->runtime_handler, h->policy == CRX_POLICY_KATA ? ", kata policy" : "");
	}
	*out = g;
	return 0;
}

static struct generation *generation_get(struct daemon *d)
{
	pthread_mutex_lock(&d->lock);
	struct generation *g = d->current;
	atomic_fetch_add(&g->refs, 1);
	pthread_mutex_unlock(&d->lock);
	return g;
}

static void dispatch(struct rpc_call *call, void *userdata)
{
	struct generation *g = generation_get(userdata);
	rpc_call_on_free(call, generation_unref, g);
	router_dispatch(call, g->router);
}

/* One record per call: a debug line when it went well, an info line when
 * not; in the journal with fields to search by (CRI_HANDLER=kata, ...). */
static void log_call(const struct rpc_call_summary *s, void *userdata)
{
	const struct daemon *d = userdata;
	if (d->metrics) {
		/* Method names come from clients: only the schema's are labels. */
		const struct cri_method *m = cri_method_find(s->method);
		crx_metrics_cri_call(m ? m->name : "unknown", s->handler, s->backend,
				     rpc_code_name(s->code), s->duration_ns, s->backend_ns);
		if (s->engine_timed)
			crx_metrics_docker_call(m ? m->name : "unknown", s->backend, s->duration_ns,
						s->engine_ns);
	}
	int level = s->code == RPC_OK || s->code == RPC_NOT_FOUND ? LOG_DEBUG : LOG_INFO;
	if (!log_enabled(level))
		return;
	char buf[7][320];
	const char *fields[8];
	size_t n = 0;
	const struct {
		const char *key, *value;
	} tags[] = {
		{"CRI_METHOD", s->method},
		{"CRI_HANDLER", s->handler},
		{"CRI_BACKEND", s->backend},
		{"CRI_POD_SANDBOX_ID", s->sandbox_id},
		{"CRI_CONTAINER_ID", s->container_id},
		{"CRI_CODE", rpc_code_name(s->code)},
	};
	for (size_t i = 0; i < ARRAY_SIZE(tags); i++)
		if (tags[i].value) {
			snprintf(buf[n], sizeof(buf[n]), "%s=%s", tags[i].key, tags[i].value);
			fields[n] = buf[n];
			n++;
		}
	snprintf(buf[n], sizeof(buf[n]), "CRI_DURATION_MS=%.3f", (double)s->duration_ns / 1e6);
	fields[n] = buf[n];
	fields[++n] = NULL;
	log_fields(level, fields, "%s%s%s -> %s: %s%s%s (%.3f ms, %zu/%zu bytes)", s->method,
		   s->handler ? " handler=" : "", s->handler ? s->handler : "",
		   s->backend ? s->backend : "crimux", rpc_code_name(s->code),
		   s->details ? ": " : "", s->details ? s->details : "",
		   (double)s->duration_ns / 1e6, s->request_bytes, s->response_bytes);
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

/* The listening socket systemd passed (crimux.socket), if any. */
static int activated_socket(char **path, struct crx_err *err)
{
	int n = sd_listen_fds(1);
	if (n < 0)
		return crx_err_set(err, n, "cannot read the sockets systemd passed: %s",
				   strerror(-n));
	if (n == 0)
		return -ENOENT;
	if (n > 1)
		return crx_err_set(err, -EINVAL, "systemd passed %d sockets; crimux serves one", n);
	int fd = SD_LISTEN_FDS_START;
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0 ||
	    getsockname(fd, (struct sockaddr *)&addr, &len) < 0 || len <= sizeof(sa_family_t) ||
	    addr.sun_path[0] == '\0')
		return crx_err_set(
			err, -EINVAL,
			"the socket systemd passed is not a listening unix stream socket "
			"with a path");
	if (!(*path = strndup(addr.sun_path, len - offsetof(struct sockaddr_un, sun_path))))
		return crx_err_set(err, -ENOMEM, "out of memory");
	return fd;
}

static void notify_status(struct daemon *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void notify_status(struct daemon *d, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	sd_notifyf(0, "STATUS=%s", text);
}

/* Is the default backend there, and how are the others? Becomes ready the
 * first time the default backend answers. */
static void check_health(struct daemon *d)
{
	struct generation *g = generation_get(d);
	_cleanup_free_ char *summary = NULL;
	bool up = router_health(g->router, 2000, &summary);
	if (d->metrics)
		router_count_objects(g->router, 2000);
	if (up && !d->ready) {
		d->ready = true;
		sd_notify(0, "READY=1");
		log_info("ready: the default backend answers");
	}
	if (d->ready)
		notify_status(d, "Serving CRI on %s; backends %s", d->socket_path,
			      summary ? summary : "?");
	else
		notify_status(d, "Waiting for the default backend; backends %s",
			      summary ? summary : "?");
	generation_unref(g);
}

/* The watchdog is fed only when a Version call through crimux's own socket
 * comes back: that proves the whole serving path, not just this thread. */
static void feed_watchdog(struct daemon *d)
{
	unsigned timeout_ms = (unsigned)(d->watchdog_usec / 2000);
	struct rpc_result res = {0};
	int r = rpc_channel_call(d->self, "/runtime.v1.RuntimeService/Version", "", 0, NULL,
				 timeout_ms > 5000 ? 5000 : timeout_ms, &res);
	if (r == 0 && res.code == RPC_OK)
		sd_notify(0, "WATCHDOG=1");
	else
		log_warning("self-check through %s failed (%s); not feeding the watchdog",
			    d->socket_path, res.details ? res.details : rpc_code_name(res.code));
	rpc_result_clear(&res);
}

static void reload(struct daemon *d)
{
	sd_notify(0, "RELOADING=1\nSTATUS=Reloading the configuration");
	log_info("reloading %s", d->config_path);
	struct crx_config cfg;
	struct generation *g = NULL;
	struct crx_err err = {0};
	int r = crx_config_load(d->config_path, NULL, &cfg, &err);
	struct generation *prev = generation_get(d);
	if (r == 0)
		r = generation_new(&cfg, prev, &g, &err);
	generation_unref(prev);
	crx_metric_add(CRX_M_RELOADS, 1, (const char *[]){r < 0 ? "failure" : "success"});
	if (r < 0) {
		log_error("reload failed, still serving the previous configuration: %s", err.msg);
	} else {
		pthread_mutex_lock(&d->lock);
		struct generation *old = d->current;
		d->current = g;
		pthread_mutex_unlock(&d->lock);
		if (!streq(old->cfg.socket_path, g->cfg.socket_path) ||
		    old->cfg.socket_mode != g->cfg.socket_mode)
			log_warning(
				"socket settings changed; they take effect when crimuxd restarts");
		if (!streq(d->metrics_address ? d->metrics_address : "",
			   g->cfg.metrics_address ? g->cfg.metrics_address : ""))
			log_warning("metrics_address changed; it takes effect when crimuxd "
				    "restarts");
		log_set_level(g->cfg.log_level);
		generation_unref(old); /* freed once its last call is done */
		log_info("configuration reloaded");
	}
	sd_notify(0, "READY=1");
	check_health(d);
}

static int serve(struct daemon *d)
{
	sigset_t set = signal_set();
	for (;;) {
		/* Not ready: look for the default backend every second. */
		uint64_t tick_ms = d->ready ? 10000 : 1000;
		if (d->watchdog_usec && d->watchdog_usec / 3000 < tick_ms)
			tick_ms = d->watchdog_usec / 3000;
		struct timespec wait = {(time_t)(tick_ms / 1000), (long)(tick_ms % 1000) * 1000000};
		int sig = sigtimedwait(&set, NULL, &wait);
		if (sig < 0) {
			if (errno != EAGAIN && errno != EINTR)
				return -errno;
			if (d->watchdog_usec)
				feed_watchdog(d);
			check_health(d);
			/* glibc keeps what a burst of calls or sessions freed in
			 * its arenas; give whole free pages back to the system, so
			 * that RSS follows the load down. */
			malloc_trim(0);
			continue;
		}
		switch (sig) {
		case SIGHUP:
			reload(d);
			break;
		case SIGUSR1:
			log_set_level(LOG_DEBUG);
			log_notice("SIGUSR1: debug logging on");
			break;
		case SIGUSR2: {
			struct generation *g = generation_get(d);
			log_set_level(g->cfg.log_level);
			log_notice("SIGUSR2: logging back to the configured level");
			generation_unref(g);
			break;
		}
		default:
			return sig;
		}
	}
}

int crx_daemon_run(const char *config_path, struct crx_config *cfg, struct crx_err *err)
{
	struct daemon d = {.config_path = config_path};
	pthread_mutex_init(&d.lock, NULL);
	_cleanup_close_ int lock_fd = -1;
	struct rpc_server *server = NULL;
	/* Declared before the first goto: cleanups run on every exit. */
	_cleanup_free_ char *address = NULL, *target = NULL;
	mode_t socket_mode = cfg->socket_mode;
	unsigned shutdown_ms;

	int listen_fd = activated_socket(&d.socket_path, err);
	int r = listen_fd == -ENOENT ? 0 : listen_fd;
	if (r < 0)
		goto out;
	d.activated = listen_fd >= 0;
	if (d.activated && !streq(d.socket_path, cfg->socket_path))
		log_notice("serving on %s, the socket systemd passed (the configuration names %s)",
			   d.socket_path, cfg->socket_path);
	if (!d.activated && !(d.socket_path = strdup(cfg->socket_path))) {
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	r = mkdir_parents(d.socket_path, 0755);
	if (r < 0) {
		r = crx_err_set(err, r, "cannot create the directory of %s: %s", d.socket_path,
				strerror(-r));
		goto out;
	}
	r = lock_socket(d.socket_path, &lock_fd, err);
	if (r < 0)
		goto out;
	if (!d.activated && asprintf(&address, "unix://%s", d.socket_path) < 0) {
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	struct rpc_server_options opts = {
		.address = address,
		.max_message = 16 * MIB,
		.dispatch = dispatch,
		.finished = log_call,
		.userdata = &d,
	};
	/* Created without group or world access, then opened up to socket_mode.
	 * umask is the process's: changed only here, before any backend starts
	 * a thread that creates files (the dockershim's logs, state and CNI
	 * plugins would get 0600 otherwise). */
	mode_t old_umask = umask(0177);
	r = rpc_server_new(&opts, &server, err);
	umask(old_umask);
	if (r < 0)
		goto out;
	/* Before the backends are asked anything: their first answers count. */
	if (cfg->metrics_address) {
		crx_metrics_enable();
		crx_metric_add(CRX_M_RELOADS, 0, (const char *[]){"success"});
		crx_metric_add(CRX_M_RELOADS, 0, (const char *[]){"failure"});
		if (!(d.metrics_address = strdup(cfg->metrics_address))) {
			r = crx_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		r = crx_metrics_server_start(d.metrics_address, &d.metrics, err);
		if (r < 0)
			goto out;
		log_info("serving metrics on %s/metrics", d.metrics_address);
	}
	notify_status(&d, "Finding the pods on the backends");
	r = generation_new(cfg, NULL, &d.current, err);
	if (r == 0 && d.activated)
		r = rpc_server_adopt_listener(server, listen_fd, err);
	if (r == 0 && !d.activated && chmod(d.socket_path, socket_mode) < 0)
		r = crx_err_set(err, -errno, "cannot set the mode of %s: %s", d.socket_path,
				strerror(errno));
	if (r == 0)
		r = rpc_server_start(server, err);
	if (r < 0)
		goto out;
	struct rpc_channel_options self = {
		.name = "crimuxd", .target = NULL, .max_message = 16 * MIB};
	if (asprintf(&target, "unix://%s", d.socket_path) < 0) {
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	self.target = target;
	r = rpc_channel_new(&self, &d.self, err);
	if (r < 0)
		goto out;
	if (sd_watchdog_enabled(0, &d.watchdog_usec) <= 0)
		d.watchdog_usec = 0;
	log_info("crimuxd %s serving CRI v1 on %s%s", PACKAGE_VERSION, d.socket_path,
		 d.activated ? " (from systemd)" : "");
	check_health(&d);

	r = serve(&d);
	if (r < 0) {
		crx_err_set(err, r, "waiting for signals: %s", strerror(-r));
		goto out;
	}
	shutdown_ms = d.current->cfg.shutdown_timeout_ms;
	sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
	log_info("%s: stopping; calls in flight get %.1f s to finish", strsignal(r),
		 shutdown_ms / 1000.0);
	unsigned cancelled = rpc_server_shutdown(server, shutdown_ms);
	if (cancelled)
		log_notice("cancelled %u call(s) still running at the shutdown deadline",
			   cancelled);
	r = 0;
out:
	crx_metrics_server_stop(d.metrics);
	free(d.metrics_address);
	rpc_channel_free(d.self);
	rpc_server_free(server);
	if (server && !d.activated) /* systemd's socket stays for the next start */
		unlink(d.socket_path);
	generation_unref(d.current);
	crx_config_clear(cfg);
	free(d.socket_path);
	pthread_mutex_destroy(&d.lock);
	return r;
}
