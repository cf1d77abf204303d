/* Pod sandboxes on Docker: a pause container with NetworkMode=none whose
 * network namespace CNI sets up, and a checkpoint file for what Docker does
 * not keep. Run is idempotent by name; Stop and Remove succeed when the
 * sandbox is already gone, and tear the network down from the checkpoint
 * even when the pause container vanished. */
#include "config.h"

#include "runtimes/docker/sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/file.h"
#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/cgcache.h"
#include "runtimes/docker/model/cni.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/logs.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/netns.h"
#include "runtimes/docker/model/state.h"
#include "runtimes/docker/container.h"
#include "runtimes/docker/image.h"

#define POD_IFNAME           "eth0"
#define SANDBOX_STOP_TIMEOUT 10

int dk_cni_ready(struct dk_shim *ds, struct crx_err *err)
{
	_cleanup_json_ json_object *conf = NULL;
	_cleanup_free_ char *file = NULL;
	return dk_cni_load(ds->cni_conf_dir, &conf, &file, err);
}

static json_object *ports_json(const struct dk_checkpoint *cp)
{
	static const char *const protos[] = {"tcp", "udp", "sctp"};
	json_object *a = json_object_new_array();
	for (size_t i = 0; a && i < cp->n_ports; i++) {
		const struct dk_port *p = &cp->ports[i];
		if (p->host_port <= 0)
			continue; /* not published on the node */
		json_object *e = json_object_new_object();
		int r = e && json_object_array_add(a, e) == 0 ? 0 : -ENOMEM;
		r |= dk_json_add_int(e, "hostPort", p->host_port);
		r |= dk_json_add_int(e, "containerPort", p->container_port);
		r |= dk_json_add_str(e, "protocol",
				     p->protocol >= 0 && p->protocol < 3 ? protos[p->protocol]
									 : "tcp");
		if (p->host_ip[0])
			r |= dk_json_add_str(e, "hostIP", p->host_ip);
		if (r) {
			json_object_put(a);
			return NULL;
		}
	}
	return a;
}

static struct dk_cni_args cni_args(struct dk_shim *ds, const struct dk_checkpoint *cp,
				   const char *netns, json_object *ports)
{
	return (struct dk_cni_args){
		.container_id = cp->sandbox_id,
		.netns = netns,
		.ifname = POD_IFNAME,
		.pod_name = cp->name,
		.pod_namespace = cp->ns,
		.pod_uid = cp->uid,
		.bin_path = ds->cni_bin_path,
		.port_mappings = ports,
	};
}

/* CNI DEL with what ADD used; the namespace may be gone (pid 0). */
static int teardown_network(struct dk_ctx *c, struct dk_checkpoint *cp, int pid,
			    struct crx_err *err)
{
	if (cp->host_network || !cp->network_ready)
		return 0;
	char netns[64] = "";
	if (pid > 0)
		snprintf(netns, sizeof(netns), "/proc/%d/ns/net", pid);
	_cleanup_json_ json_object *ports = ports_json(cp);
	_cleanup_json_ json_object *current = NULL;
	json_object *conf = cp->cni_conf;
	if (!conf) {
		_cleanup_free_ char *file = NULL;
		int r = dk_cni_load(c->ds->cni_conf_dir, &current, &file, err);
		if (r < 0)
			return crx_err_prefix(err, "tearing down the network of sandbox %s",
					      cp->sandbox_id);
		conf = current;
	}
	struct dk_cni_args args = cni_args(c->ds, cp, netns, ports);
	int r = dk_cni_del(conf, &args, cp->cni_result, err);
	if (r < 0)
		return crx_err_prefix(err, "tearing down the network of sandbox %s",
				      cp->sandbox_id);
	cp->network_ready = false;
	r = dk_checkpoint_save(c->ds->checkpoint_dir, cp, err);
	/* The cache reads the new file's flags now, so RemovePodSandbox
	 * right after the stop finds them with a stat. */
	struct dk_checkpoint_flags flags;
	if (r == 0 && c->ds->state)
		dk_state_checkpoint(c->ds->state, cp->sandbox_id, &flags);
	return r;
}

static int write_resolv_conf(const char *path, const Runtime__V1__DNSConfig *dns,
			     struct crx_err *err)
{
	if (!dns || (!dns->n_servers && !dns->n_searches && !dns->n_options))
		return 0; /* keep what Docker wrote */
	if (!path || !*path)
		return crx_err_set(err, -EINVAL, "Docker gave the sandbox no resolv.conf");
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < dns->n_servers; i++)
		fprintf(f, "nameserver %s\n", dns->servers[i]);
	if (dns->n_searches) {
		fputs("search", f);
		for (size_t i = 0; i < dns->n_searches; i++)
			fprintf(f, " %s", dns->searches[i]);
		fputc('\n', f);
	}
	if (dns->n_options) {
		fputs("options", f);
		for (size_t i = 0; i < dns->n_options; i++)
			fprintf(f, " %s", dns->options[i]);
		fputc('\n', f);
	}
	if (fclose(f) != 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	/* Replaced whole, never rewritten in place: a container starting
	 * meanwhile binds the old file or the new one, never a torn one (the
	 * pod's containers are created after this; the pause does not care). */
	return crx_write_file_atomic(path, text, len, 0644, err);
}

int dk_sandbox_ips(struct dk_ctx *c, json_object *inspect, const struct dk_checkpoint *cp,
		   char ***ips, size_t *n)
{
	*ips = NULL;
	*n = 0;
	/* Read from the namespace when the network was set up (and kept):
	 * addresses do not change under a running pod, and Status is frequent. */
	if (cp && cp->n_ips) {
		char **list = calloc(cp->n_ips, sizeof(*list));
		for (size_t i = 0; list && i < cp->n_ips; i++) {
			if (!(list[i] = strdup(cp->ips[i]))) {
				dk_strv_free(list, i);
				return -ENOMEM;
			}
		}
		if (!list)
			return -ENOMEM;
		*ips = list;
		*n = cp->n_ips;
		return 0;
	}
	int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
	if (pid > 0) {
		char netns[64];
		snprintf(netns, sizeof(netns), "/proc/%d/ns/net", pid);
		if (dk_netns_ips(netns, POD_IFNAME, ips, n, NULL) == 0 && *n)
			return 0;
		dk_strv_free(*ips, *n);
		*ips = NULL;
		*n = 0;
	}
	return 0;
}

struct checkpoint_drop {
	const char *dir, *id;
	struct dk_checkpoint *keep; /* read before the unlink unless kept already */
	bool kept;
	struct crx_err err;
	int r;
};

static void drop_checkpoint(void *arg)
{
	struct checkpoint_drop *d = arg;
	if (d->keep && !d->kept)
		d->kept = dk_checkpoint_load(d->dir, d->id, d->keep, NULL) == 0;
	d->r = dk_checkpoint_remove(d->dir, d->id, &d->err);
}

/* Removes a sandbox entirely: containers, network, pause container and
 * checkpoint. Called with the sandbox locked. */
static int remove_sandbox(struct dk_ctx *c, const char *id, bool in_docker, struct crx_err *err)
{
	_cleanup_json_ json_object *list = NULL;
	int r = dk_list(c, DK_TYPE_CONTAINER, id, &list, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		const char *cid = dk_json_str(json_object_array_get_idx(list, i), "Id");
		if (cid && (r = dk_remove_container_id(c, cid, err)) < 0)
			return r;
	}
	/* The checkpoint (even a torn one) goes while dockerd deletes the
	 * pause container, so nobody waits for the unlink (0.2 ms on ext4),
	 * when the pod was stopped: a list made meanwhile shows it not ready
	 * either way. It is read just before, to be put back should the
	 * delete fail. A running pause container would list as ready without
	 * one: its checkpoint goes after the delete. */
	bool overlap = in_docker && dk_state_not_running(c->ds->state, id);
	struct dk_checkpoint cp = {0};
	struct checkpoint_drop drop = {
		.dir = c->ds->checkpoint_dir, .id = id, .keep = overlap ? &cp : NULL};
	/* Only a network still set up needs the whole checkpoint first; the
	 * cache has its flags (a stat), and a stopped pod's is torn down. */
	struct dk_checkpoint_flags flags = {.network_ready = true};
	if (c->ds->state && dk_state_checkpoint(c->ds->state, id, &flags) != 1)
		flags.network_ready = false; /* none, or torn: no network to speak of */
	if (flags.network_ready && !flags.host_network)
		drop.kept = dk_checkpoint_load(c->ds->checkpoint_dir, id, &cp, NULL) == 0;
	if (drop.kept) {
		/* The pid names the network namespace DEL enters: Docker's
		 * own, not what the cache last saw (a reused pid is another
		 * pod's namespace). Only a pod never stopped needs it. */
		_cleanup_json_ json_object *now = NULL;
		if (in_docker && cp.network_ready && !cp.host_network)
			dk_inspect_typed(c, id, DK_TYPE_SANDBOX, &now, NULL);
		int pid = (int)dk_json_int(dk_json_get(now, "State", NULL), "Pid", 0);
		r = teardown_network(c, &cp, pid, err);
		if (r < 0) {
			dk_checkpoint_clear(&cp);
			return r;
		}
	}
	if (in_docker) {
		r = dk_container_remove(c->ds->sock, id, &c->dl, overlap ? drop_checkpoint : NULL,
					&drop, err);
		if (r < 0 && overlap && drop.kept)
			dk_checkpoint_save(c->ds->checkpoint_dir, &cp, NULL);
	}
	if (r == 0 && !overlap)
		drop_checkpoint(&drop);
	dk_checkpoint_clear(&cp);
	if (r < 0)
		return r;
	dk_state_removed(c->ds->state, id);
	dk_cgroup_cache_forget(c->ds->cgroups, id);
	if (drop.r < 0)
		return crx_err_set(err, drop.r, "%s", drop.err.msg);
	return 0;
}

static int setup_network(struct dk_ctx *c, struct dk_checkpoint *cp, int pid, struct crx_err *err)
{
	_cleanup_json_ json_object *conf = NULL;
	_cleanup_free_ char *file = NULL;
	int r = dk_cni_load(c->ds->cni_conf_dir, &conf, &file, err);
	if (r < 0)
		return crx_err_prefix(err, "network plugin is not ready");
	char netns[64];
	snprintf(netns, sizeof(netns), "/proc/%d/ns/net", pid);
	_cleanup_json_ json_object *ports = ports_json(cp);
	if (!ports)
		return crx_err_set(err, -ENOMEM, "out of memory");
	/* Recorded before ADD, so a crash half-way still leads to DEL. */
	cp->cni_conf = json_object_get(conf);
	cp->netns = strdup(netns);
	cp->network_ready = true;
	if (!cp->netns)
		return crx_err_set(err, -ENOMEM, "out of memory");
	r = dk_checkpoint_save(c->ds->checkpoint_dir, cp, err);
	if (r < 0)
		return r;
	struct dk_cni_args args = cni_args(c->ds, cp, netns, ports);
	json_object *result = NULL;
	r = dk_cni_add(conf, &args, &result, err);
	if (r < 0) {
		/* dk_cni_add has run DEL already. */
		cp->network_ready = false;
		dk_checkpoint_save(c->ds->checkpoint_dir, cp, NULL);
		return crx_err_prefix(err, "setting up the pod network (%s)", file);
	}
	cp->cni_result = result;
	/* The addresses as the namespace has them (both families), else as
	 * the plugins reported them. */
	if (dk_netns_ips(netns, POD_IFNAME, &cp->ips, &cp->n_ips, NULL) < 0 || cp->n_ips == 0) {
		dk_strv_free(cp->ips, cp->n_ips);
		cp->ips = NULL;
		cp->n_ips = 0;
		if (dk_cni_result_ips(result, &cp->ips, &cp->n_ips) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	return dk_checkpoint_save(c->ds->checkpoint_dir, cp, err);
}

static int fill_checkpoint(struct dk_checkpoint *cp, const char *id,
			   const Runtime__V1__PodSandboxConfig *cfg, bool host_net, int64_t created,
			   json_object *labels)
{
	const Runtime__V1__PodSandboxMetadata *md = cfg->metadata;
	cp->sandbox_id = strdup(id);
	cp->name = strdup(md->name);
	cp->ns = strdup(md->namespace_);
	cp->uid = strdup(md->uid);
	cp->attempt = md->attempt;
	cp->created_ns = created;
	cp->host_network = host_net;
	cp->labels = json_object_get(labels);
	if (!cp->sandbox_id || !cp->name || !cp->ns || !cp->uid)
		return -ENOMEM;
	if (cfg->n_port_mappings && !(cp->ports = calloc(cfg->n_port_mappings, sizeof(*cp->ports))))
		return -ENOMEM;
	for (size_t i = 0; i < cfg->n_port_mappings; i++) {
		const Runtime__V1__PortMapping *pm = cfg->port_mappings[i];
		struct dk_port *p = &cp->ports[cp->n_ports++];
		p->protocol = (int)pm->protocol;
		p->container_port = pm->container_port;
		p->host_port = pm->host_port;
		snprintf(p->host_ip, sizeof(p->host_ip), "%s", pm->host_ip ? pm->host_ip : "");
	}
	return 0;
}

/* READY: the pause container runs and, unless on the host network, its
 * network was set up; never once its checkpoint was torn. No checkpoint
 * (f NULL) is a pod removed without a stop, between delete and unlink. */
static bool sandbox_ready(bool running, const struct dk_checkpoint_flags *f)
{
	return running && (!f || (!f->distrusted && (f->host_network || f->network_ready)));
}

/* A sandbox of this name exists: ready ones are the answer to a retried
 * call; anything half-made is removed so the call can start over. */
static int reuse_existing(struct dk_ctx *c, const char *name, char **reuse_id, struct crx_err *err)
{
	*reuse_id = NULL;
	_cleanup_json_ json_object *old = NULL;
	int r = dk_inspect_typed(c, name, DK_TYPE_SANDBOX, &old, NULL);
	if (r == -ENOENT) {
		/* Something else of that name (not a sandbox) would make create
		 * fail with a clear conflict. */
		return 0;
	}
	if (r < 0)
		return dk_inspect_typed(c, name, DK_TYPE_SANDBOX, &old, err);
	const char *id = dk_json_str(old, "Id");
	if (!id || !dk_valid_id(id))
		return crx_err_set(err, -EBADMSG, "dockerd sent a sandbox without ID");
	struct dk_checkpoint cp = {0};
	bool loaded = dk_checkpoint_load(c->ds->checkpoint_dir, id, &cp, NULL) == 0;
	struct dk_checkpoint_flags flags = dk_checkpoint_flags(&cp);
	bool running = dk_json_bool(dk_json_get(old, "State", NULL), "Running");
	bool ready = loaded && sandbox_ready(running, &flags);
	dk_checkpoint_clear(&cp);
	if (ready) {
		*reuse_id = strdup(id);
		return *reuse_id ? 0 : crx_err_set(err, -ENOMEM, "out of memory");
	}
	dk_sandbox_lock(c->ds, id);
	r = remove_sandbox(c, id, true, err);
	dk_sandbox_unlock(c->ds, id);
	return r < 0 ? crx_err_prefix(err, "removing the unfinished sandbox %s", name) : 0;
}

static int run_locked(struct dk_ctx *c, const Runtime__V1__PodSandboxConfig *cfg,
		      const char *handler, const char *name, char **out_id, struct crx_err *err)
{
	struct dk_shim *ds = c->ds;
	/* The state cache knows of no container of that name and the pause
	 * image was there before: try the create straight away. Docker says
	 * so if either is wrong (a conflict, no such image), and then the
	 * checks run and the create is tried once more. */
	bool optimistic = dk_state_name_absent(ds->state, name);
	pthread_mutex_lock(&ds->lock);
	bool have_pause = ds->pause_present;
	pthread_mutex_unlock(&ds->lock);
	int r = 0;
	if (!optimistic) {
		r = reuse_existing(c, name, out_id, err);
		if (r < 0 || *out_id)
			return r;
	}
	if (!have_pause) {
		r = dk_ensure_pause_image(c, err);
		if (r < 0)
			return r;
		pthread_mutex_lock(&ds->lock);
		ds->pause_present = true;
		pthread_mutex_unlock(&ds->lock);
	}

	const Runtime__V1__LinuxPodSandboxConfig *lc = cfg->linux;
	const Runtime__V1__NamespaceOption *ns =
		lc && lc->security_context ? lc->security_context->namespace_options : NULL;
	bool host_net = ns && ns->network == RUNTIME__V1__NAMESPACE_MODE__NODE;
	int64_t created = dk_realtime_ns();
	dk_cgroup_driver(c);
	struct dk_spec_opts opts = dk_spec_opts(ds, created);
	opts.runtime_handler = handler;
	_cleanup_json_ json_object *spec = NULL;
	r = dk_sandbox_spec(cfg, ds->pause_image, &opts, &spec, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *id = NULL;
	r = dk_container_create(ds->sock, name, spec, &c->dl, &id, err);
	bool no_image = r == -ENOENT || (r < 0 && err && strstr(err->msg, "No such image"));
	if ((r == -EEXIST && optimistic) || (no_image && have_pause)) {
		if (no_image) {
			pthread_mutex_lock(&ds->lock);
			ds->pause_present = false;
			pthread_mutex_unlock(&ds->lock);
		}
		r = r == -EEXIST ? reuse_existing(c, name, out_id, err)
				 : dk_ensure_pause_image(c, err);
		if (r < 0 || *out_id)
			return r;
		r = dk_container_create(ds->sock, name, spec, &c->dl, &id, err);
	}
	if (r < 0)
		return crx_err_prefix(err, "creating the sandbox container %s", name);

	struct dk_checkpoint cp = {0};
	dk_sandbox_lock(ds, id);
	r = fill_checkpoint(&cp, id, cfg, host_net, created, dk_json_get(spec, "Labels", NULL));
	if (r < 0)
		r = crx_err_set(err, -ENOMEM, "out of memory");
	if (r == 0)
		r = dk_checkpoint_save(ds->checkpoint_dir, &cp, err);
	if (r == 0) {
		r = dk_container_start(ds->sock, id, &c->dl, err);
		if (r < 0)
			crx_err_prefix(err, "starting the sandbox container %s", name);
	}
	_cleanup_json_ json_object *inspect = NULL;
	if (r == 0)
		r = dk_container_inspect(ds->sock, id, &c->dl, &inspect, err);
	if (r == 0)
		dk_state_put(ds->state, inspect);
	if (r == 0)
		r = write_resolv_conf(dk_json_str(inspect, "ResolvConfPath"), cfg->dns_config, err);
	if (r == 0 && !host_net) {
		int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
		r = pid > 0 ? setup_network(c, &cp, pid, err)
			    : crx_err_set(err, -EIO, "the sandbox container %s is not running",
					  name);
	}
	dk_checkpoint_clear(&cp);
	if (r < 0) {
		/* Leave nothing half-made behind; the call's error is the news. */
		struct dk_ctx bg = *c;
		bg.dl = dk_deadline_in(NULL, 60000);
		remove_sandbox(&bg, id, inspect || spec, NULL);
		dk_sandbox_unlock(ds, id);
		return r;
	}
	dk_sandbox_unlock(ds, id);
	*out_id = TAKE_PTR(id);
	return 0;
}

/* The handler the sandbox was run under, or this backend's default. */
static char *sandbox_handler(struct dk_ctx *c, json_object *labels)
{
	const char *h = labels ? dk_json_str(labels, DK_LABEL_HANDLER) : NULL;
	return h && *h ? dk_arena_strdup(&c->arena, h) : c->ds->handler;
}

int dk_run_pod_sandbox(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		       struct crx_err *err)
{
	const Runtime__V1__RunPodSandboxRequest *in = (const void *)req;
	const Runtime__V1__PodSandboxConfig *cfg = in->config;
	if (!cfg || !cfg->metadata)
		return crx_err_set(err, -EINVAL, "RunPodSandbox needs a config with metadata");
	const Runtime__V1__PodSandboxMetadata *md = cfg->metadata;
	struct dk_sandbox_meta meta = {
		.name = md->name, .uid = md->uid, .ns = md->namespace_, .attempt = md->attempt};
	_cleanup_free_ char *name = NULL;
	int r = dk_sandbox_name(&meta, &name, err);
	if (r < 0)
		return r;
	char *id = NULL;
	/* One run per name at a time: a retry waits for the first attempt. */
	dk_name_lock(c->ds, name);
	r = run_locked(c, cfg, in->runtime_handler, name, &id, err);
	dk_name_unlock(c->ds, name);
	if (r < 0)
		return r;
	Runtime__V1__RunPodSandboxResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__run_pod_sandbox_response__descriptor);
	if (out)
		out->pod_sandbox_id = dk_arena_strdup(&c->arena, id);
	free(id);
	if (!out)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

/* Stops every container of the sandbox (the CRI wants them terminated). */
static int stop_containers(struct dk_ctx *c, const char *id, struct crx_err *err)
{
	_cleanup_json_ json_object *list = NULL;
	int r = dk_list(c, DK_TYPE_CONTAINER, id, &list, err);
	for (size_t i = 0; r == 0 && i < json_object_array_length(list); i++) {
		json_object *e = json_object_array_get_idx(list, i);
		const char *cid = dk_json_str(e, "Id");
		if (!cid || !streq(dk_json_str(e, "State"), "running"))
			continue;
		r = dk_container_stop(c->ds->sock, cid, 0, &c->dl, err);
		if (r == 0)
			dk_state_stopped(c->ds->state, cid);
		dk_logs_drain(c->ds->logs, cid);
	}
	return r;
}

/* Stop and remove are idempotent: a sandbox Docker no longer has may still
 * have a checkpoint (its network to tear down). *full is NULL when there is
 * nothing of that name at all. */
static int find_sandbox(struct dk_ctx *c, const char *id, json_object **inspect, const char **full,
			struct crx_err *err)
{
	int r = dk_inspect_typed(c, id, DK_TYPE_SANDBOX, inspect, err);
	if (r < 0 && r != -ENOENT)
		return r;
	*full = *inspect ? dk_json_str(*inspect, "Id") : id;
	if (!*full || !dk_valid_id(*full))
		*full = NULL;
	return 0;
}

int dk_stop_pod_sandbox(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__StopPodSandboxRequest *in = (const void *)req;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__stop_pod_sandbox_response__descriptor);
	if (!out)
		return -ENOMEM;
	_cleanup_json_ json_object *inspect = NULL;
	const char *full;
	int r = find_sandbox(c, in->pod_sandbox_id, &inspect, &full, err);
	if (r < 0)
		return r;
	if (!full) {
		*resp = out; /* nothing of that name: stopped as far as anyone can tell */
		return 0;
	}
	dk_sandbox_lock(c->ds, full);
	r = inspect ? stop_containers(c, full, err) : 0;
	struct dk_checkpoint cp = {0};
	if (r == 0 && dk_checkpoint_load(c->ds->checkpoint_dir, full, &cp, NULL) == 0) {
		/* DEL while the namespace still exists, then stop the pause. */
		int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
		r = teardown_network(c, &cp, pid, err);
		dk_checkpoint_clear(&cp);
	}
	if (r == 0 && inspect)
		r = dk_container_stop(c->ds->sock, full, SANDBOX_STOP_TIMEOUT, &c->dl, err);
	if (r == 0 && inspect)
		dk_state_stopped(c->ds->state, full);
	dk_sandbox_unlock(c->ds, full);
	if (r < 0)
		return r;
	*resp = out;
	return 0;
}

int dk_remove_pod_sandbox(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			  struct crx_err *err)
{
	const Runtime__V1__RemovePodSandboxRequest *in = (const void *)req;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__remove_pod_sandbox_response__descriptor);
	if (!out)
		return -ENOMEM;
	/* Its identity is all removal needs: no inspect for the kubelet's
	 * RemovePodSandbox right after StopPodSandbox, before the event. */
	const char *full;
	int r = dk_full_id(c, in->pod_sandbox_id, DK_TYPE_SANDBOX, &full, err);
	bool in_docker = r == 0;
	if (r == -ENOENT) /* a checkpoint may be all that is left of it */
		full = dk_valid_id(in->pod_sandbox_id) ? in->pod_sandbox_id : NULL;
	else if (r < 0)
		return r;
	if (!full) {
		*resp = out; /* already gone */
		return 0;
	}
	dk_sandbox_lock(c->ds, full);
	r = remove_sandbox(c, full, in_docker, err);
	dk_sandbox_unlock(c->ds, full);
	if (r < 0)
		return r;
	*resp = out;
	return 0;
}

static Runtime__V1__PodSandboxMetadata *sandbox_meta(struct dk_ctx *c, json_object *labels,
						     const char *docker_name)
{
	Runtime__V1__PodSandboxMetadata *m =
		dk_msg_new(&c->arena, &runtime__v1__pod_sandbox_metadata__descriptor);
	if (!m || dk_meta_parse(&c->arena, labels, docker_name, &m->name, &m->uid, &m->namespace_,
				&m->attempt) < 0)
		return NULL;
	return m;
}

static Runtime__V1__PodSandboxMetadata *checkpoint_meta(struct dk_ctx *c,
							const struct dk_checkpoint *cp)
{
	Runtime__V1__PodSandboxMetadata *m =
		dk_msg_new(&c->arena, &runtime__v1__pod_sandbox_metadata__descriptor);
	if (!m)
		return NULL;
	m->name = dk_arena_strdup(&c->arena, cp->name);
	m->uid = dk_arena_strdup(&c->arena, cp->uid);
	m->namespace_ = dk_arena_strdup(&c->arena, cp->ns);
	m->attempt = cp->attempt;
	return m;
}

int dk_pod_sandbox_status(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			  struct crx_err *err)
{
	const Runtime__V1__PodSandboxStatusRequest *in = (const void *)req;
	struct dk_arena *a = &c->arena;
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_inspect_typed(c, in->pod_sandbox_id, DK_TYPE_SANDBOX, &inspect, err);
	const char *id = inspect ? dk_json_str(inspect, "Id") : in->pod_sandbox_id;
	bool running = true;
	struct dk_checkpoint cp = {0};
	int cpr = dk_valid_id(id) ? dk_checkpoint_load(c->ds->checkpoint_dir, id, &cp, NULL)
				  : -ENOENT;
	bool have_cp = cpr == 0;
	if (cpr < 0 && cpr != -ENOENT)
		running = false; /* a checkpoint that does not read is no ready network */
	if (r < 0 && !(r == -ENOENT && have_cp)) {
		dk_checkpoint_clear(&cp);
		return r; /* a checkpoint alone is a sandbox whose container vanished */
	}
	Runtime__V1__PodSandboxStatusResponse *out =
		dk_msg_new(a, &runtime__v1__pod_sandbox_status_response__descriptor);
	Runtime__V1__PodSandboxStatus *st =
		dk_msg_new(a, &runtime__v1__pod_sandbox_status__descriptor);
	Runtime__V1__LinuxPodSandboxStatus *ls =
		dk_msg_new(a, &runtime__v1__linux_pod_sandbox_status__descriptor);
	Runtime__V1__Namespace *nsmsg = dk_msg_new(a, &runtime__v1__namespace__descriptor);
	Runtime__V1__NamespaceOption *nso =
		dk_msg_new(a, &runtime__v1__namespace_option__descriptor);
	if (!out || !st || !ls || !nsmsg || !nso) {
		dk_checkpoint_clear(&cp);
		return -ENOMEM;
	}
	out->status = st;
	out->timestamp = dk_realtime_ns();
	st->id = dk_arena_strdup(a, id);
	json_object *labels = inspect ? dk_json_get(inspect, "Config", "Labels", NULL) : cp.labels;
	st->runtime_handler = sandbox_handler(c, labels);
	json_object *host = dk_json_get(inspect, "HostConfig", NULL);
	running = running && dk_json_bool(dk_json_get(inspect, "State", NULL), "Running");
	st->metadata = inspect ? sandbox_meta(c, labels, dk_json_str(inspect, "Name"))
			       : checkpoint_meta(c, &cp);
	struct dk_checkpoint_flags flags = dk_checkpoint_flags(&cp);
	st->state = sandbox_ready(running, have_cp ? &flags : NULL)
			    ? RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY
			    : RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_NOTREADY;
	st->created_at = inspect ? dk_created_ns(labels, inspect) : cp.created_ns;
	if (st->created_at <= 0)
		st->created_at = 1;
	bool host_net = have_cp ? cp.host_network : streq(dk_json_str(host, "NetworkMode"), "host");
	nso->network =
		host_net ? RUNTIME__V1__NAMESPACE_MODE__NODE : RUNTIME__V1__NAMESPACE_MODE__POD;
	nso->pid = streq(dk_json_str(host, "PidMode"), "host")
			   ? RUNTIME__V1__NAMESPACE_MODE__NODE
			   : RUNTIME__V1__NAMESPACE_MODE__CONTAINER;
	nso->ipc = streq(dk_json_str(host, "IpcMode"), "host") ? RUNTIME__V1__NAMESPACE_MODE__NODE
							       : RUNTIME__V1__NAMESPACE_MODE__POD;
	nsmsg->options = nso;
	ls->namespaces = nsmsg;
	st->linux = ls;
	if (!host_net) {
		char **ips = NULL;
		size_t n = 0;
		if (dk_sandbox_ips(c, inspect, have_cp ? &cp : NULL, &ips, &n) == 0 && n) {
			Runtime__V1__PodSandboxNetworkStatus *net =
				dk_msg_new(a, &runtime__v1__pod_sandbox_network_status__descriptor);
			if (net) {
				net->ip = dk_arena_strdup(a, ips[0]);
				for (size_t i = 1; i < n; i++) {
					Runtime__V1__PodIP *ip =
						dk_msg_new(a, &runtime__v1__pod_ip__descriptor);
					if (ip) {
						ip->ip = dk_arena_strdup(a, ips[i]);
						DK_PUSH(a, &net->n_additional_ips,
							&net->additional_ips, ip);
					}
				}
				st->network = net;
			}
		}
		dk_strv_free(ips, n);
	}
	r = dk_labels_to_cri(a, labels, &runtime__v1__pod_sandbox_status__labels_entry__descriptor,
			     &st->n_labels, (void ***)&st->labels,
			     &runtime__v1__pod_sandbox_status__annotations_entry__descriptor,
			     &st->n_annotations, (void ***)&st->annotations);
	if (r == 0 && in->verbose) {
		_cleanup_json_ json_object *info = json_object_new_object();
		_cleanup_json_ json_object *cpj = NULL;
		if (have_cp)
			dk_checkpoint_to_json(&cp, &cpj);
		if (!info ||
		    (inspect && dk_json_add(info, "docker", json_object_get(inspect)) < 0) ||
		    (cpj && dk_json_add(info, "checkpoint", json_object_get(cpj)) < 0) ||
		    DK_MAP_ADD(a, &runtime__v1__pod_sandbox_status_response__info_entry__descriptor,
			       &out->n_info, &out->info, "info", dk_json_text(info)) < 0)
			r = -ENOMEM;
	}
	dk_checkpoint_clear(&cp);
	if (r < 0 || !st->metadata)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

static bool id_matches(const char *id, const char *filter)
{
	return !filter || !*filter || (id && strncmp(id, filter, strlen(filter)) == 0);
}

static int by_string(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* One sandbox as the CRI lists it: from an entry of dk_list() (e), or
 * from its checkpoint alone when Docker lost its container (e NULL). NULL
 * when the filter leaves it out (*r < 0 on failure). flags: the
 * checkpoint's, NULL when there is none; torn: a checkpoint is there but
 * cannot be read, and the pod is not ready. */
static Runtime__V1__PodSandbox *sandbox_item(struct dk_ctx *c, json_object *e, const char *id,
					     const struct dk_checkpoint *cp,
					     const struct dk_checkpoint_flags *flags, bool torn,
					     const Runtime__V1__PodSandboxFilter *f, int *r)
{
	struct dk_arena *a = &c->arena;
	json_object *labels = e ? dk_json_get(e, "Labels", NULL) : cp->labels;
	Runtime__V1__PodSandbox *p = dk_msg_new(a, &runtime__v1__pod_sandbox__descriptor);
	if (!p) {
		*r = -ENOMEM;
		return NULL;
	}
	p->id = dk_arena_strdup(a, id);
	p->runtime_handler = sandbox_handler(c, labels);
	const char *name = NULL;
	json_object *names = dk_json_get(e, "Names", NULL);
	if (names && json_object_array_length(names))
		name = json_object_get_string(json_object_array_get_idx(names, 0));
	p->metadata = e ? sandbox_meta(c, labels, name) : checkpoint_meta(c, cp);
	p->state = sandbox_ready(e && !torn && streq(dk_json_str(e, "State"), "running"), flags)
			   ? RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_READY
			   : RUNTIME__V1__POD_SANDBOX_STATE__SANDBOX_NOTREADY;
	p->created_at = e ? dk_created_ns(labels, e) : cp->created_ns;
	if (p->created_at <= 0)
		p->created_at = 1;
	bool keep = p->metadata && (!f || !f->state || f->state->state == p->state) &&
		    (!f || dk_labels_match(labels, f->n_label_selector,
					   (void *const *)f->label_selector));
	if (!keep)
		return NULL;
	*r = dk_labels_to_cri(a, labels, &runtime__v1__pod_sandbox__labels_entry__descriptor,
			      &p->n_labels, (void ***)&p->labels,
			      &runtime__v1__pod_sandbox__annotations_entry__descriptor,
			      &p->n_annotations, (void ***)&p->annotations);
	return *r < 0 ? NULL : p;
}

struct sandbox_walk {
	struct dk_packed packed;
	const char **ids; /* every sandbox the cache has (arena) */
	size_t n_ids, cap_ids;
};

/* The kubelet's relist asks for everything: from the cache's memos, which
 * carry the checkpoint's flags too. */
static int sandbox_visit(struct dk_state_view *v, void *arg)
{
	struct sandbox_walk *w = arg;
	struct dk_ctx *c = w->packed.c;
	if (w->n_ids == w->cap_ids) {
		size_t cap = w->cap_ids ? w->cap_ids * 2 : 128;
		const char **more = dk_arena_alloc(&c->arena, cap * sizeof(*more));
		if (!more)
			return -ENOMEM;
		if (w->n_ids)
			memcpy(more, w->ids, w->n_ids * sizeof(*more));
		w->ids = more;
		w->cap_ids = cap;
	}
	if (!(w->ids[w->n_ids++] = dk_arena_strdup(&c->arena, v->id)))
		return -ENOMEM;
	if (v->memo)
		return v->memo_len ? dk_packed_add(&w->packed, v->memo, v->memo_len) : 0;
	_cleanup_json_ json_object *e = dk_state_view_item(v);
	int r = e ? 0 : -ENOMEM;
	Runtime__V1__PodSandbox *p =
		e ? sandbox_item(c, e, v->id, NULL, v->have_checkpoint ? &v->checkpoint : NULL,
				 v->checkpoint_torn, NULL, &r)
		  : NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	if (r == 0 && p)
		r = dk_packed_make(c, &p->base, &data, &len);
	if (r < 0)
		return r;
	dk_state_memo(v, data, len); /* empty: not one to list */
	return len ? dk_packed_add(&w->packed, data, len) : 0;
}

static bool no_sandbox_filter(const Runtime__V1__PodSandboxFilter *f)
{
	return !f || ((!f->id || !*f->id) && !f->state && !f->n_label_selector);
}

int dk_list_pod_sandbox(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
			struct crx_err *err)
{
	const Runtime__V1__ListPodSandboxRequest *in = (const void *)req;
	const Runtime__V1__PodSandboxFilter *f = in->filter;
	struct dk_arena *a = &c->arena;
	Runtime__V1__ListPodSandboxResponse *out =
		dk_msg_new(a, &runtime__v1__list_pod_sandbox_response__descriptor);
	if (!out)
		return -ENOMEM;
	struct sandbox_walk w = {.packed = {.c = c, .tag = 1}}; /* items */
	int r = no_sandbox_filter(f)
			? dk_state_each(c->ds->state, DK_TYPE_SANDBOX, sandbox_visit, &w)
			: -EAGAIN;
	if (r == 0)
		r = dk_packed_finish(&w.packed, &out->base);
	dk_packed_clear(&w.packed);
	if (r < 0 && r != -EAGAIN)
		return r;
	bool cached = r == 0;
	_cleanup_json_ json_object *list = NULL;
	if (!cached) {
		r = dk_list(c, DK_TYPE_SANDBOX, NULL, &list, err);
		if (r < 0)
			return r;
		size_t n = json_object_array_length(list);
		w.ids = dk_arena_alloc(a, (n ? n : 1) * sizeof(*w.ids));
		if (!w.ids)
			return -ENOMEM;
		for (size_t i = 0; i < n; i++) {
			const char *id = dk_json_str(json_object_array_get_idx(list, i), "Id");
			if (id)
				w.ids[w.n_ids++] = id;
		}
	}
	char **cp_ids = NULL;
	size_t n_cp = 0;
	dk_checkpoint_list(c->ds->checkpoint_dir, &cp_ids, &n_cp, NULL);
	/* Listed IDs, sorted: a checkpoint whose container Docker still has is
	 * listed once, and finding that out stays cheap at many pods. */
	if (w.n_ids)
		qsort(w.ids, w.n_ids, sizeof(*w.ids), by_string);
	size_t n = cached ? 0 : json_object_array_length(list);
	r = 0;
	for (size_t i = 0; i < n + n_cp; i++) {
		json_object *e = i < n ? json_object_array_get_idx(list, i) : NULL;
		const char *id = e ? dk_json_str(e, "Id") : cp_ids[i - n];
		if (!id || !dk_valid_id(id) || !id_matches(id, f ? f->id : NULL))
			continue;
		if (!e && w.n_ids && bsearch(&id, w.ids, w.n_ids, sizeof(*w.ids), by_string))
			continue;
		/* A listed container needs only the checkpoint's flags (cached by
		 * file); one Docker lost needs the whole checkpoint. */
		struct dk_checkpoint cp = {0};
		struct dk_checkpoint_flags flags = {0};
		int cpr = e ? dk_state_checkpoint(c->ds->state, id, &flags)
			    : dk_checkpoint_load(c->ds->checkpoint_dir, id, &cp, NULL);
		if (!e)
			flags = dk_checkpoint_flags(&cp);
		bool have_cp = e ? cpr == 1 : cpr == 0, torn = cpr < 0 && cpr != -ENOENT;
		const struct dk_checkpoint_flags *known = have_cp ? &flags : NULL;
		Runtime__V1__PodSandbox *p =
			e || have_cp ? sandbox_item(c, e, id, &cp, known, torn, f, &r) : NULL;
		if (r == 0 && p)
			r = DK_PUSH(a, &out->n_items, &out->items, p);
		dk_checkpoint_clear(&cp);
		if (r < 0)
			break;
	}
	dk_strv_free(cp_ids, n_cp);
	if (r < 0)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

static void report_corrupt(struct dk_shim *ds, const char *id, const char *msg)
{
	json_object *e = json_object_new_object();
	if (!e || dk_json_add_str(e, "sandbox", id) < 0 || dk_json_add_str(e, "error", msg) < 0) {
		if (e)
			json_object_put(e);
		return;
	}
	pthread_mutex_lock(&ds->lock);
	if (!ds->corrupt)
		ds->corrupt = json_object_new_array();
	bool known = false; /* a recovery tried again finds it again */
	for (size_t i = 0; ds->corrupt && i < json_object_array_length(ds->corrupt); i++) {
		json_object *old = json_object_array_get_idx(ds->corrupt, i);
		known |= streq(dk_json_str(old, "sandbox"), id) &&
			 streq(dk_json_str(old, "error"), msg);
	}
	if (known || !ds->corrupt || json_object_array_add(ds->corrupt, e) < 0)
		json_object_put(e);
	pthread_mutex_unlock(&ds->lock);
}

/* Leftovers of writes a crash interrupted (common/file.h's temporaries). */
static void remove_temporaries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (strstr(e->d_name, ".tmp-"))
			unlinkat(dirfd(d), e->d_name, 0);
	if (d)
		closedir(d);
}

/* Not trusted: torn down from what Docker says, and marked not ready.
 * Left torn for another try when Docker cannot say (< 0). */
static int distrust(struct dk_ctx *c, const char *id)
{
	_cleanup_json_ json_object *inspect = NULL;
	int r = dk_container_inspect(c->ds->sock, id, &c->dl, &inspect, NULL);
	if (r < 0 && r != -ENOENT)
		return r; /* no answer is not "no container": that would lose a pod */
	json_object *labels = dk_json_get(inspect, "Config", "Labels", NULL);
	if (inspect && !streq(dk_json_str(labels, DK_LABEL_TYPE), DK_TYPE_SANDBOX)) {
		json_object_put(inspect);
		inspect = NULL;
		labels = NULL;
	}
	struct dk_checkpoint cp = {0};
	struct dk_arena *a = &c->arena;
	char *name = NULL, *uid = NULL, *ns = NULL;
	uint32_t attempt = 0;
	if (inspect)
		dk_meta_parse(a, labels, dk_json_str(inspect, "Name"), &name, &uid, &ns, &attempt);
	cp.sandbox_id = strdup(id);
	cp.name = strdup(name ? name : "");
	cp.ns = strdup(ns ? ns : "");
	cp.uid = strdup(uid ? uid : "");
	cp.attempt = attempt;
	cp.created_ns = inspect ? dk_created_ns(labels, inspect) : 0;
	cp.host_network =
		streq(dk_json_str(dk_json_get(inspect, "HostConfig", NULL), "NetworkMode"), "host");
	cp.labels = labels ? json_object_get(labels) : NULL;
	cp.distrusted = true;
	/* DEL is idempotent: run it whether or not ADD had happened. */
	cp.network_ready = true;
	if (!cp.sandbox_id || !cp.name || !cp.ns || !cp.uid) {
		dk_checkpoint_clear(&cp);
		return -ENOMEM;
	}
	int pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
	struct crx_err err = {0};
	/* Each way saves the checkpoint anew over the torn one: the pod lists
	 * NOTREADY until the kubelet removes it (teardown_network saves it
	 * with network_ready false). */
	if (teardown_network(c, &cp, pid, &err) < 0) {
		report_corrupt(c->ds, id, err.msg);
		dk_checkpoint_save(c->ds->checkpoint_dir, &cp, NULL); /* DEL again on removal */
	} else if (cp.host_network) {
		cp.network_ready = false;
		dk_checkpoint_save(c->ds->checkpoint_dir, &cp, NULL);
	}
	if (!inspect)
		dk_checkpoint_remove(c->ds->checkpoint_dir, id, NULL);
	dk_checkpoint_clear(&cp);
	return 0;
}

int dk_sandbox_recover_checkpoints(struct dk_ctx *c, const struct dk_deadline *base)
{
	struct dk_shim *ds = c->ds;
	remove_temporaries(ds->checkpoint_dir);
	remove_temporaries(ds->log_state_dir);
	char **ids = NULL;
	size_t n = 0;
	int left = dk_checkpoint_list(ds->checkpoint_dir, &ids, &n, NULL);
	for (size_t i = 0; i < n; i++) {
		const char *id = ids[i];
		struct dk_checkpoint cp = {0};
		struct crx_err err = {0};
		dk_sandbox_lock(ds, id);
		int r = dk_checkpoint_load(ds->checkpoint_dir, id, &cp, &err);
		dk_checkpoint_clear(&cp);
		if (r == -ENOMEM)
			left = r;
		if (r == 0 || r == -ENOENT || r == -ENOMEM) {
			dk_sandbox_unlock(ds, id);
			continue;
		}
		report_corrupt(ds, id, err.msg);
		/* A copy is kept for a post-mortem. The torn file stays until
		 * distrust replaces it: until then the pod lists as not ready,
		 * and a crash finds it torn again on the next start. */
		_cleanup_free_ char *from = NULL, *to = NULL;
		if (asprintf(&from, "%s/%s.json", ds->checkpoint_dir, id) >= 0 &&
		    asprintf(&to, "%s/%s.json.corrupt", ds->checkpoint_dir, id) >= 0 &&
		    (unlink(to) == 0 || errno == ENOENT) &&
		    (dk_valid_id(id) ? link(from, to) : rename(from, to)) == 0)
			crx_fsync_parent(to);
		c->dl = dk_deadline_in(base, 10000);
		if (dk_valid_id(id) && distrust(c, id) < 0)
			left = -EAGAIN;
		dk_sandbox_unlock(ds, id);
	}
	dk_strv_free(ids, n);
	return left;
}
