/* crimux-bench-docker: what the Docker path costs (issue 12).
 *
 * Every figure is a pair measured in the same run, the two sides taking
 * turns step by step (who goes first alternates): the CRI call through
 * crimuxd's docker backend, and the Docker Engine calls that call cannot do
 * without (its floor), made directly. The floor of each step:
 *
 *   RunPodSandbox     create + start + inspect (for the pid) of the pause
 *                     container, CNI ADD of the same network list
 *   CreateContainer   create
 *   StartContainer    start
 *   StopContainer     stop?t=0
 *   RemoveContainer   DELETE ?force=1&v=1
 *   StopPodSandbox    CNI DEL, stop?t=10 of the pause container
 *   RemovePodSandbox  DELETE ?force=1&v=1 of the pause container
 *
 * The raw side goes through the same client stack crimux uses: the C
 * Engine API client of libcrimux (runtimes/docker/engine/), create bodies
 * made by the same model functions (runtimes/docker/model/spec.c) and the
 * same CNI code and plugins. So Docker does exactly the same work on both
 * sides and the ratio is what crimux adds, not a difference between
 * clients: the docker CLI would add a Go process start (≈100-300 ms on a
 * small VM) and calls of its own (run = create, attach, wait, start),
 * which is why a CLI floor can look slower than crimux. The raw side's
 * containers carry a type label of their own, so crimux never lists them.
 * The kubelet reaches Docker only through a CRI runtime, and a CRI call
 * costs a round trip before the runtime does anything. Each round times
 * that hop, each after 5 ms idle, as every step's call comes to an idle
 * daemon: Version on containerd and on crimuxd (which answers it in its
 * event loop), and PodSandboxStatus on crimuxd (a job of the dockershim,
 * as every docker call is, served from the state cache and the pod's
 * checkpoint file: a little work). The last column divides
 * crimux's p50 by the Docker floor plus containerd's hop.
 *
 * Then: N pods started at once on both sides; the lists and stats the
 * kubelet polls at 10 and 100 running containers, against one Docker list
 * call and against containerd with as many pods; the PLEG relist
 * (ListPodSandbox + ListContainers) at 110 pods against containerd.
 *
 * --control runs the life cycle with the raw calls on both sides: the
 * ratios it prints are the run's noise, what a difference must exceed.
 *
 * --bare-server adds a third pod to each round of the life cycle: the raw
 * calls, but its removals go through the least a CRI runtime can be, a
 * gRPC server (this program again, in a process of its own, on crimux's
 * gRPC module) that unpacks the request, makes the one DELETE on the
 * thread that received the call and replies: no state, no log, no
 * hand-off. crimux's removals against that server's are what crimux adds
 * beyond a CRI round trip; the bare server's against the raw DELETE are
 * what the round trip itself costs. */
#include "config.h"

#include <dirent.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/rpc.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/cni.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/names.h"
#include "runtimes/docker/model/spec.h"

#define RAW_SANDBOX_TYPE   "bench-raw-podsandbox"
#define RAW_CONTAINER_TYPE "bench-raw-container"
#define CALL_TIMEOUT_MS    120000

struct bench {
	const char *docker_sock;
	struct rpc_channel *crimux;      /* crimuxd, docker backend only */
	struct rpc_channel *containerd;  /* containerd's CRI, directly (optional) */
	struct rpc_channel *crimux_runc; /* crimuxd in front of containerd (optional) */
	struct rpc_channel *bare;        /* the bare CRI server (--bare-server) */
	const char *handler;             /* RuntimeClass handler of the docker pods */
	const char *image;
	const char *cni_conf_dir, *cni_bin_dir, *log_dir;
	char *pause_image; /* crimux's sandbox image, learned from a first pod */
	char cgroup_driver[16];
	struct dk_spec_opts opts;
	unsigned rounds, parallel, parallel_rounds, samples, pleg_pods;
	unsigned counts[8];
	size_t n_counts;
	unsigned seq;   /* pod names */
	bool control;   /* both sides make the raw calls (--control) */
	int crimux_pid; /* for its CPU time per call (0: not shown) */
	pthread_mutex_t lock;
};

/* One pod with one container, described once for both sides. The CRI
 * messages point into the struct: it must not move once made. */
struct pod {
	char name[64], uid[40], log_dir[512], cgroup[128];
	char *argv[2];
	Runtime__V1__PodSandboxMetadata md;
	Runtime__V1__NamespaceOption nso;
	Runtime__V1__LinuxSandboxSecurityContext sc;
	Runtime__V1__LinuxPodSandboxConfig linux;
	Runtime__V1__PodSandboxConfig cfg;
	Runtime__V1__ContainerMetadata cmd;
	Runtime__V1__ImageSpec image;
	Runtime__V1__ContainerConfig ccfg;
	char id[80], cid[80];
	/* raw side only */
	int pid;
	char cgroup_parent[256];
	json_object *cni_conf, *cni_result;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what, const char *why)
{
	fprintf(stderr, "crimux-bench-docker: %s: %s\n", what, why);
	exit(1);
}

/* --- a side: how a step is done --- */

struct side {
	const char *label;
	struct rpc_channel *ch; /* NULL: the raw Docker side */
	const char *handler;
};

/* The method's path; a literal, since gRPC keeps the pointer. */
#define RT(m) "/runtime.v1.RuntimeService/" m

/* One CRI call; *resp (if wanted) gets the unpacked reply. */
static int cri_call(struct rpc_channel *ch, const char *path, const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp)
{
	size_t len = protobuf_c_message_get_packed_size(req);
	_cleanup_free_ uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	protobuf_c_message_pack(req, buf);
	struct rpc_result res = {0};
	int r = rpc_channel_call(ch, path, buf, len, NULL, CALL_TIMEOUT_MS, &res);
	if (r == 0 && res.code != RPC_OK) {
		fprintf(stderr, "crimux-bench-docker: %s via %s: %s\n", path, rpc_channel_name(ch),
			res.details ? res.details : rpc_code_name(res.code));
		r = -EIO;
	}
	if (r == 0 && resp &&
	    !(*resp = protobuf_c_message_unpack(resp_desc, NULL, res.reply.len, res.reply.data)))
		r = -EBADMSG;
	rpc_result_clear(&res);
	return r;
}

static void pod_init(struct bench *b, struct pod *p, const char *prefix)
{
	pthread_mutex_lock(&b->lock);
	unsigned n = b->seq++;
	pthread_mutex_unlock(&b->lock);
	snprintf(p->name, sizeof(p->name), "%s-%u-%ld", prefix, n, (long)getpid());
	snprintf(p->uid, sizeof(p->uid), "%08x%08x%016" PRIx64, n, (unsigned)getpid(),
		 (uint64_t)dk_realtime_ns());
	snprintf(p->log_dir, sizeof(p->log_dir), "%s/%s", b->log_dir, p->name);
	runtime__v1__pod_sandbox_metadata__init(&p->md);
	p->md.name = p->name;
	p->md.uid = p->uid;
	p->md.namespace_ = "bench";
	runtime__v1__namespace_option__init(&p->nso);
	p->nso.network = RUNTIME__V1__NAMESPACE_MODE__POD;
	runtime__v1__linux_sandbox_security_context__init(&p->sc);
	p->sc.namespace_options = &p->nso;
	runtime__v1__linux_pod_sandbox_config__init(&p->linux);
	p->linux.security_context = &p->sc;
	/* The kubelet always names one; containerd's pod stats need it. */
	snprintf(p->cgroup, sizeof(p->cgroup), "/kubepods/besteffort/pod%s", p->uid);
	p->linux.cgroup_parent = p->cgroup;
	runtime__v1__pod_sandbox_config__init(&p->cfg);
	p->cfg.metadata = &p->md;
	p->cfg.hostname = p->name;
	p->cfg.log_directory = p->log_dir;
	p->cfg.linux = &p->linux;
	runtime__v1__container_metadata__init(&p->cmd);
	p->cmd.name = "main";
	runtime__v1__image_spec__init(&p->image);
	p->image.image = (char *)b->image;
	runtime__v1__container_config__init(&p->ccfg);
	p->ccfg.metadata = &p->cmd;
	p->ccfg.image = &p->image;
	p->argv[0] = "sleep";
	p->argv[1] = "3600";
	p->ccfg.command = p->argv;
	p->ccfg.n_command = 2;
	p->ccfg.log_path = "main.log";
}

static void pod_clear(struct pod *p)
{
	if (p->cni_conf)
		json_object_put(p->cni_conf);
	if (p->cni_result)
		json_object_put(p->cni_result);
	p->cni_conf = p->cni_result = NULL;
}

/* CRI side. */

static int crx_run_pod(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__RunPodSandboxRequest req = RUNTIME__V1__RUN_POD_SANDBOX_REQUEST__INIT;
	req.config = &p->cfg;
	req.runtime_handler = (char *)s->handler;
	ProtobufCMessage *resp = NULL;
	int r = cri_call(s->ch, RT("RunPodSandbox"), &req.base,
			 &runtime__v1__run_pod_sandbox_response__descriptor, &resp);
	if (r == 0)
		snprintf(p->id, sizeof(p->id), "%s",
			 ((Runtime__V1__RunPodSandboxResponse *)resp)->pod_sandbox_id);
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	return r;
}

static int crx_create(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__CreateContainerRequest req = RUNTIME__V1__CREATE_CONTAINER_REQUEST__INIT;
	req.pod_sandbox_id = p->id;
	req.config = &p->ccfg;
	req.sandbox_config = &p->cfg;
	ProtobufCMessage *resp = NULL;
	int r = cri_call(s->ch, RT("CreateContainer"), &req.base,
			 &runtime__v1__create_container_response__descriptor, &resp);
	if (r == 0)
		snprintf(p->cid, sizeof(p->cid), "%s",
			 ((Runtime__V1__CreateContainerResponse *)resp)->container_id);
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	return r;
}

static int crx_start(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__StartContainerRequest req = RUNTIME__V1__START_CONTAINER_REQUEST__INIT;
	req.container_id = p->cid;
	return cri_call(s->ch, RT("StartContainer"), &req.base, NULL, NULL);
}

static int crx_stop(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__StopContainerRequest req = RUNTIME__V1__STOP_CONTAINER_REQUEST__INIT;
	req.container_id = p->cid;
	req.timeout = 0;
	return cri_call(s->ch, RT("StopContainer"), &req.base, NULL, NULL);
}

static int crx_remove(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__RemoveContainerRequest req = RUNTIME__V1__REMOVE_CONTAINER_REQUEST__INIT;
	req.container_id = p->cid;
	return cri_call(s->ch, RT("RemoveContainer"), &req.base, NULL, NULL);
}

/* A call that makes no backend call, after 5 ms idle: the hop. */
static double cri_hop_ms(struct rpc_channel *ch, const char *who, const char *path,
			 const ProtobufCMessage *req)
{
	usleep(5000);
	double t0 = now_ms();
	if (cri_call(ch, path, req, NULL, NULL) < 0)
		die(path, who);
	return now_ms() - t0;
}

static int crx_stop_pod(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__StopPodSandboxRequest req = RUNTIME__V1__STOP_POD_SANDBOX_REQUEST__INIT;
	req.pod_sandbox_id = p->id;
	return cri_call(s->ch, RT("StopPodSandbox"), &req.base, NULL, NULL);
}

static int crx_remove_pod(struct bench *b, const struct side *s, struct pod *p)
{
	Runtime__V1__RemovePodSandboxRequest req = RUNTIME__V1__REMOVE_POD_SANDBOX_REQUEST__INIT;
	req.pod_sandbox_id = p->id;
	return cri_call(s->ch, RT("RemovePodSandbox"), &req.base, NULL, NULL);
}

/* Raw side: the Engine API calls each step needs, nothing else. */

static int raw_fail(const char *what, const struct crx_err *err)
{
	fprintf(stderr, "crimux-bench-docker: raw %s: %s\n", what, err->msg);
	return err->code ? err->code : -EIO;
}

/* Out of crimux's sight: its lists filter on this label. */
static int hide(json_object *spec, const char *type)
{
	json_object *labels = dk_json_get(spec, "Labels", NULL);
	return labels ? dk_json_add_str(labels, DK_LABEL_TYPE, type) : -EINVAL;
}

static struct dk_cni_args raw_cni_args(struct bench *b, struct pod *p, const char *netns,
				       json_object *ports)
{
	return (struct dk_cni_args){
		.container_id = p->id,
		.netns = netns,
		.ifname = "eth0",
		.pod_name = p->name,
		.pod_namespace = p->md.namespace_,
		.pod_uid = p->uid,
		.bin_path = b->cni_bin_dir,
		.port_mappings = ports,
	};
}

static int raw_run_pod(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	struct dk_spec_opts o = b->opts;
	o.created_ns = dk_realtime_ns();
	_cleanup_json_ json_object *spec = NULL;
	_cleanup_free_ char *name = NULL, *id = NULL;
	struct dk_sandbox_meta m = {.name = p->name, .uid = p->uid, .ns = p->md.namespace_};
	if (dk_sandbox_spec(&p->cfg, b->pause_image, &o, &spec, &err) < 0 ||
	    dk_sandbox_name(&m, &name, &err) < 0)
		return raw_fail("sandbox spec", &err);
	if (hide(spec, RAW_SANDBOX_TYPE) < 0)
		return -ENOMEM;
	if (dk_container_create(b->docker_sock, name, spec, &dl, &id, &err) < 0)
		return raw_fail("create pause", &err);
	snprintf(p->id, sizeof(p->id), "%s", id);
	_cleanup_json_ json_object *inspect = NULL;
	if (dk_container_start(b->docker_sock, id, &dl, &err) < 0 ||
	    dk_container_inspect(b->docker_sock, id, &dl, &inspect, &err) < 0)
		return raw_fail("start pause", &err);
	p->pid = (int)dk_json_int(dk_json_get(inspect, "State", NULL), "Pid", 0);
	snprintf(p->cgroup_parent, sizeof(p->cgroup_parent), "%s",
		 dk_json_str(dk_json_get(inspect, "HostConfig", NULL), "CgroupParent") ?: "");
	_cleanup_free_ char *file = NULL;
	if (dk_cni_load(b->cni_conf_dir, &p->cni_conf, &file, &err) < 0)
		return raw_fail("CNI configuration", &err);
	char netns[64];
	snprintf(netns, sizeof(netns), "/proc/%d/ns/net", p->pid);
	_cleanup_json_ json_object *ports = json_object_new_array(); /* as crimux passes */
	struct dk_cni_args args = raw_cni_args(b, p, netns, ports);
	if (dk_cni_add(p->cni_conf, &args, &p->cni_result, &err) < 0)
		return raw_fail("CNI ADD", &err);
	return 0;
}

static int raw_create(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	struct dk_spec_opts o = b->opts;
	o.created_ns = dk_realtime_ns();
	char log_path[600];
	snprintf(log_path, sizeof(log_path), "%s/%s", p->log_dir, p->ccfg.log_path);
	struct dk_container_ctx ctx = {
		.sandbox_id = p->id, .cgroup_parent = p->cgroup_parent, .log_path = log_path};
	struct dk_sandbox_meta sm = {.name = p->name, .uid = p->uid, .ns = p->md.namespace_};
	struct dk_container_meta cm = {.name = p->cmd.name};
	_cleanup_json_ json_object *spec = NULL;
	_cleanup_free_ char *name = NULL, *id = NULL;
	if (dk_container_spec(&p->ccfg, &ctx, &o, &spec, &err) < 0 ||
	    dk_container_name(&cm, &sm, &name, &err) < 0)
		return raw_fail("container spec", &err);
	if (hide(spec, RAW_CONTAINER_TYPE) < 0)
		return -ENOMEM;
	if (dk_container_create(b->docker_sock, name, spec, &dl, &id, &err) < 0)
		return raw_fail("create", &err);
	snprintf(p->cid, sizeof(p->cid), "%s", id);
	return 0;
}

static int raw_start(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	return dk_container_start(b->docker_sock, p->cid, &dl, &err) < 0 ? raw_fail("start", &err)
									 : 0;
}

static int raw_stop(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	return dk_container_stop(b->docker_sock, p->cid, 0, &dl, &err) < 0 ? raw_fail("stop", &err)
									   : 0;
}

static int raw_remove(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	return dk_container_remove(b->docker_sock, p->cid, &dl, NULL, NULL, &err) < 0
		       ? raw_fail("remove", &err)
		       : 0;
}

static int raw_stop_pod(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	char netns[64];
	snprintf(netns, sizeof(netns), "/proc/%d/ns/net", p->pid);
	_cleanup_json_ json_object *ports = json_object_new_array();
	struct dk_cni_args args = raw_cni_args(b, p, netns, ports);
	if (p->cni_conf && dk_cni_del(p->cni_conf, &args, p->cni_result, &err) < 0)
		return raw_fail("CNI DEL", &err);
	pod_clear(p);
	return dk_container_stop(b->docker_sock, p->id, 10, &dl, &err) < 0
		       ? raw_fail("stop pause", &err)
		       : 0;
}

static int raw_remove_pod(struct bench *b, const struct side *s, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	return dk_container_remove(b->docker_sock, p->id, &dl, NULL, NULL, &err) < 0
		       ? raw_fail("remove pause", &err)
		       : 0;
}

/* The raw side's removals through the bare CRI server. */

static int bare_remove(struct bench *b, const struct side *s, struct pod *p)
{
	const struct side bare = {.label = "bare server", .ch = b->bare};
	return crx_remove(b, &bare, p);
}

static int bare_remove_pod(struct bench *b, const struct side *s, struct pod *p)
{
	const struct side bare = {.label = "bare server", .ch = b->bare};
	return crx_remove_pod(b, &bare, p);
}

typedef int (*step_fn)(struct bench *b, const struct side *s, struct pod *p);

static const struct step {
	const char *name;
	step_fn raw, crx, bare; /* bare: NULL where the bare server has no part */
} steps[] = {
	{"RunPodSandbox", raw_run_pod, crx_run_pod, NULL},
	{"CreateContainer", raw_create, crx_create, NULL},
	{"StartContainer", raw_start, crx_start, NULL},
	{"StopContainer t=0", raw_stop, crx_stop, NULL},
	{"RemoveContainer", raw_remove, crx_remove, bare_remove},
	{"StopPodSandbox", raw_stop_pod, crx_stop_pod, NULL},
	{"RemovePodSandbox", raw_remove_pod, crx_remove_pod, bare_remove_pod},
};
#define N_STEPS ARRAY_SIZE(steps)

/* --- statistics --- */

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double p50(const double *v, size_t n)
{
	double s[n ? n : 1];
	memcpy(s, v, n * sizeof(double));
	qsort(s, n, sizeof(double), by_value);
	return n ? (n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2) : 0;
}

static double mean(const double *v, size_t n)
{
	double t = 0;
	for (size_t i = 0; i < n; i++)
		t += v[i];
	return n ? t / (double)n : 0;
}

/* --- the pod life cycle, step by step --- */

/* The CRI hops (see the top): crimuxd's Version, answered in its event
 * loop; crimuxd's PodSandboxStatus, a dockershim job as every docker call
 * is; containerd's Version. */
enum { HOP_CRIMUX, HOP_CRIMUX_DOCKER, HOP_CONTAINERD, N_HOPS };

/* Sides of the life cycle: the raw calls, crimux, and with --bare-server
 * the raw calls again with the removals through the bare server. */
enum { SIDE_RAW, SIDE_CRIMUX, SIDE_BARE, N_SIDES };

static step_fn step_of(const struct bench *b, size_t k, unsigned side)
{
	if (side == SIDE_CRIMUX && !b->control)
		return steps[k].crx;
	if (side == SIDE_BARE && steps[k].bare)
		return steps[k].bare;
	return steps[k].raw;
}

static void lifecycle_round(struct bench *b, const struct side *sides, unsigned round,
			    double t[N_SIDES][N_STEPS], double hop[N_HOPS])
{
	unsigned n_sides = b->bare ? 3 : 2;
	struct pod pods[N_SIDES] = {0};
	pod_init(b, &pods[SIDE_RAW], "raw");
	pod_init(b, &pods[SIDE_CRIMUX], "crx");
	pod_init(b, &pods[SIDE_BARE], "bare");
	for (size_t k = 0; k < N_STEPS; k++) {
		for (unsigned j = 0; j < n_sides; j++) {
			unsigned i = (round + k + j) % n_sides; /* who goes first rotates */
			const struct side *s = &sides[i == SIDE_CRIMUX ? SIDE_CRIMUX : SIDE_RAW];
			double t0 = now_ms();
			if (step_of(b, k, i)(b, s, &pods[i]) < 0)
				die(steps[k].name, i == SIDE_BARE ? "bare server" : s->label);
			t[i][k] = now_ms() - t0;
		}
		if (steps[k].crx == crx_start && !b->control) {
			Runtime__V1__VersionRequest version = RUNTIME__V1__VERSION_REQUEST__INIT;
			Runtime__V1__PodSandboxStatusRequest status =
				RUNTIME__V1__POD_SANDBOX_STATUS_REQUEST__INIT;
			status.pod_sandbox_id = pods[SIDE_CRIMUX].id;
			hop[HOP_CRIMUX] =
				cri_hop_ms(sides[SIDE_CRIMUX].ch, sides[SIDE_CRIMUX].label,
					   RT("Version"), &version.base);
			hop[HOP_CRIMUX_DOCKER] =
				cri_hop_ms(sides[SIDE_CRIMUX].ch, sides[SIDE_CRIMUX].label,
					   RT("PodSandboxStatus"), &status.base);
			hop[HOP_CONTAINERD] = b->containerd
						      ? cri_hop_ms(b->containerd, "containerd",
								   RT("Version"), &version.base)
						      : 0;
		}
	}
	pod_clear(&pods[SIDE_RAW]);
	pod_clear(&pods[SIDE_BARE]);
}

static void lifecycle(struct bench *b, const struct side *sides)
{
	double warm[N_SIDES][N_STEPS], warm_hop[N_HOPS];
	lifecycle_round(b, sides, 0, warm, warm_hop);
	size_t n = b->rounds;
	double(*t)[N_SIDES][N_STEPS] = calloc(n, sizeof(*t));
	double(*total)[N_SIDES] = calloc(n, sizeof(*total));
	double(*hops)[N_HOPS] = calloc(n, sizeof(*hops));
	if (!t || !total || !hops)
		die("lifecycle", "out of memory");
	for (unsigned r = 0; r < n; r++) {
		lifecycle_round(b, sides, r, t[r], hops[r]);
		for (int i = 0; i < N_SIDES; i++)
			for (size_t k = 0; k < N_STEPS; k++)
				total[r][i] += t[r][i][k];
	}
	double hop[N_HOPS], hop_mean[N_HOPS];
	for (int h = 0; h < N_HOPS; h++) {
		double v[n];
		for (unsigned r = 0; r < n; r++)
			v[r] = hops[r][h];
		hop[h] = p50(v, n);
		hop_mean[h] = mean(v, n);
	}
	printf("# pod life cycle, %zu rounds taking turns step by step; milliseconds\n", n);
	/* The last column: against the Docker floor plus the hop any CRI
	 * runtime costs the kubelet, containerd's. */
	bool with_hop = b->containerd && !b->control;
	if (b->control) {
		printf("# control run: both sides make the raw calls, so each ratio is what "
		       "the run's noise alone does\n");
	} else {
		printf("# CRI hop (after 5 ms idle): crimuxd Version p50 %.2f, mean %.2f; "
		       "crimuxd PodSandboxStatus (the dockershim, from the cache) p50 %.2f, "
		       "mean %.2f",
		       hop[HOP_CRIMUX], hop_mean[HOP_CRIMUX], hop[HOP_CRIMUX_DOCKER],
		       hop_mean[HOP_CRIMUX_DOCKER]);
		if (with_hop)
			printf("; containerd Version p50 %.2f, mean %.2f", hop[HOP_CONTAINERD],
			       hop_mean[HOP_CONTAINERD]);
		printf("\n");
	}
	if (b->bare)
		printf("# bare: a third pod, the raw calls but for the removals, which go "
		       "through the bare CRI server (in the other steps bare/raw is the "
		       "run's noise); p50 ratios\n");
	printf("%-20s %10s %10s %7s %10s %10s %7s%s%s\n", "step", "raw p50",
	       b->control ? "raw p50" : "crimux p50", "ratio", "raw mean",
	       b->control ? "raw mean" : "crx mean", "ratio", with_hop ? "   +CRI hop" : "",
	       b->bare ? "   bare p50  bare/raw  crx/bare" : "");
	for (size_t k = 0; k <= N_STEPS; k++) {
		double v[N_SIDES][n];
		for (unsigned r = 0; r < n; r++)
			for (int i = 0; i < N_SIDES; i++)
				v[i][r] = k < N_STEPS ? t[r][i][k] : total[r][i];
		double m0 = p50(v[SIDE_RAW], n), m1 = p50(v[SIDE_CRIMUX], n);
		double a0 = mean(v[SIDE_RAW], n), a1 = mean(v[SIDE_CRIMUX], n);
		printf("%-20s %10.1f %10.1f %6.2fx %10.1f %10.1f %6.2fx",
		       k < N_STEPS ? steps[k].name : "whole life cycle", m0, m1, m1 / m0, a0, a1,
		       a1 / a0);
		if (with_hop)
			printf(" %9.2fx",
			       m1 / (m0 + hop[HOP_CONTAINERD] * (k < N_STEPS ? 1 : N_STEPS)));
		if (b->bare) {
			double m2 = p50(v[SIDE_BARE], n);
			printf(" %10.1f %8.2fx %8.2fx", m2, m2 / m0, m1 / m2);
		}
		printf("\n");
	}
	fflush(stdout);
	free(t);
	free(hops);
	free(total);
}

/* --- pods started at once --- */

struct starter {
	struct bench *b;
	const struct side *s;
	struct pod *pod;
	pthread_barrier_t *go;
	double start, end;
	bool plain; /* a bare create + start, no pod */
	bool teardown;
	int r;
};

static int plain_run(struct bench *b, struct pod *p)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	_cleanup_json_ json_object *spec = json_object_new_object();
	json_object *cmd = json_object_new_array(), *host = json_object_new_object();
	json_object *labels = json_object_new_object();
	int r = dk_json_add_str(spec, "Image", b->image);
	r |= dk_json_add(spec, "Cmd", cmd);
	r |= dk_json_append_str(cmd, "sleep");
	r |= dk_json_append_str(cmd, "3600");
	r |= dk_json_add(spec, "HostConfig", host);
	r |= dk_json_add_str(host, "NetworkMode", "none");
	r |= dk_json_add(spec, "Labels", labels);
	r |= dk_json_add_str(labels, DK_LABEL_TYPE, RAW_CONTAINER_TYPE);
	if (r)
		return -ENOMEM;
	_cleanup_free_ char *id = NULL;
	if (dk_container_create(b->docker_sock, p->name, spec, &dl, &id, &err) < 0)
		return raw_fail("create", &err);
	snprintf(p->cid, sizeof(p->cid), "%s", id);
	return dk_container_start(b->docker_sock, id, &dl, &err) < 0 ? raw_fail("start", &err) : 0;
}

static void *starter_run(void *arg)
{
	struct starter *st = arg;
	struct bench *b = st->b;
	const struct side *s = st->s;
	pthread_barrier_wait(st->go);
	st->start = now_ms();
	if (st->teardown) {
		if (st->plain) {
			st->r = raw_remove(b, s, st->pod);
		} else if (s->ch) {
			st->r = crx_stop_pod(b, s, st->pod);
			if (st->r == 0)
				st->r = crx_remove_pod(b, s, st->pod);
		} else {
			st->r = raw_stop(b, s, st->pod);
			if (st->r == 0)
				st->r = raw_remove(b, s, st->pod);
			if (st->r == 0)
				st->r = raw_stop_pod(b, s, st->pod);
			if (st->r == 0)
				st->r = raw_remove_pod(b, s, st->pod);
		}
	} else if (st->plain) {
		st->r = plain_run(b, st->pod);
	} else {
		step_fn run = s->ch ? crx_run_pod : raw_run_pod;
		step_fn create = s->ch ? crx_create : raw_create;
		step_fn start = s->ch ? crx_start : raw_start;
		st->r = run(b, s, st->pod);
		if (st->r == 0)
			st->r = create(b, s, st->pod);
		if (st->r == 0)
			st->r = start(b, s, st->pod);
	}
	st->end = now_ms();
	return NULL;
}

/* Runs every pod's start (or teardown) in a thread of its own, all
 * released at once; the wall time until the last one is done. */
static double at_once(struct bench *b, const struct side *s, struct pod *pods, size_t n, bool plain,
		      bool teardown)
{
	pthread_t th[n];
	struct starter st[n];
	pthread_barrier_t go;
	pthread_barrier_init(&go, NULL, (unsigned)n);
	for (size_t i = 0; i < n; i++) {
		st[i] = (struct starter){.b = b,
					 .s = s,
					 .pod = &pods[i],
					 .go = &go,
					 .plain = plain,
					 .teardown = teardown};
		if (pthread_create(&th[i], NULL, starter_run, &st[i]))
			die("parallel", "cannot start a thread");
	}
	double start = 0, end = 0;
	int r = 0;
	for (size_t i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		if (i == 0 || st[i].start < start)
			start = st[i].start;
		if (st[i].end > end)
			end = st[i].end;
		r |= st[i].r;
	}
	pthread_barrier_destroy(&go);
	if (r)
		die("pods started at once", s->label);
	return end - start;
}

static void parallel(struct bench *b, const struct side *sides)
{
	size_t n = b->parallel, rounds = b->parallel_rounds;
	if (!n || !rounds)
		return;
	double t[3][rounds];
	struct pod *pods = calloc(n, sizeof(*pods));
	if (!pods)
		die("parallel", "out of memory");
	for (size_t r = 0; r < rounds; r++) {
		for (unsigned j = 0; j < 3; j++) {
			unsigned i = (unsigned)(r + j) % 3; /* 0 raw pods, 1 crimux, 2 plain */
			const struct side *s = &sides[i == 1 ? 1 : 0];
			for (size_t k = 0; k < n; k++) {
				memset(&pods[k], 0, sizeof(pods[k]));
				pod_init(b, &pods[k], i == 0 ? "praw" : i == 1 ? "pcrx" : "plain");
			}
			t[i][r] = at_once(b, s, pods, n, i == 2, false);
			at_once(b, s, pods, n, i == 2, true);
			for (size_t k = 0; k < n; k++)
				pod_clear(&pods[k]);
		}
	}
	free(pods);
	printf("# %zu pods started at once (run sandbox, create, start), %zu rounds; "
	       "milliseconds\n",
	       n, rounds);
	printf("%-20s %10.1f raw p50  %10.1f crimux p50  %6.2fx  (%zu plain docker create+start "
	       "at once: %.1f)\n",
	       "parallel pods", p50(t[0], rounds), p50(t[1], rounds),
	       p50(t[1], rounds) / p50(t[0], rounds), n, p50(t[2], rounds));
	fflush(stdout);
}

/* --- lists at scale --- */

struct filler {
	struct bench *b;
	const struct side *s;
	struct pod *pods;
	size_t from, to, stride;
	bool teardown;
	int r;
};

static void *filler_run(void *arg)
{
	struct filler *f = arg;
	for (size_t i = f->from; i < f->to && f->r == 0; i += f->stride) {
		struct pod *p = &f->pods[i];
		if (f->teardown) {
			f->r = crx_stop_pod(f->b, f->s, p);
			if (f->r == 0)
				f->r = crx_remove_pod(f->b, f->s, p);
			continue;
		}
		pod_init(f->b, p, f->s->label);
		f->r = crx_run_pod(f->b, f->s, p);
		if (f->r == 0)
			f->r = crx_create(f->b, f->s, p);
		if (f->r == 0)
			f->r = crx_start(f->b, f->s, p);
	}
	return NULL;
}

/* Pods from..to on a CRI side, 4 at a time. */
static void fill(struct bench *b, const struct side *s, struct pod *pods, size_t from, size_t to,
		 bool teardown)
{
	enum { WORKERS = 4 };
	pthread_t th[WORKERS];
	struct filler f[WORKERS];
	for (size_t i = 0; i < WORKERS; i++) {
		f[i] = (struct filler){.b = b,
				       .s = s,
				       .pods = pods,
				       .from = from + i,
				       .to = to,
				       .stride = WORKERS,
				       .teardown = teardown};
		pthread_create(&th[i], NULL, filler_run, &f[i]);
	}
	int r = 0;
	for (size_t i = 0; i < WORKERS; i++) {
		pthread_join(th[i], NULL);
		r |= f[i].r;
	}
	if (r)
		die(teardown ? "removing pods" : "making pods", s->label);
}

enum list_kind { L_CONTAINERS, L_SANDBOXES, L_CONTAINER_STATS, L_SANDBOX_STATS, L_RELIST };
static const char *const list_names[] = {"ListContainers", "ListPodSandbox", "ListContainerStats",
					 "ListPodSandboxStats", "PLEG relist"};

/* What the kubelet sends: every list unfiltered. */
static int list_once(struct bench *b, const struct side *s, enum list_kind k)
{
	if (!s->ch) {
		/* One Docker list call per list (two for the relist). */
		struct crx_err err = {0};
		struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
		for (int pass = 0; pass < (k == L_RELIST ? 2 : 1); pass++) {
			bool sandboxes = k == L_SANDBOXES || k == L_SANDBOX_STATS || pass == 1;
			_cleanup_json_ json_object *f = json_object_new_object();
			json_object *labels = json_object_new_array();
			_cleanup_json_ json_object *list = NULL;
			int r = dk_json_add(f, "label", labels);
			r |= dk_json_append_str(labels,
						sandboxes ? DK_LABEL_TYPE "=" DK_TYPE_SANDBOX
							  : DK_LABEL_TYPE "=" DK_TYPE_CONTAINER);
			if (r || dk_container_list(b->docker_sock, f, &dl, &list, &err) < 0)
				return raw_fail("list", &err);
		}
		return 0;
	}
	Runtime__V1__ListContainersRequest lc = RUNTIME__V1__LIST_CONTAINERS_REQUEST__INIT;
	Runtime__V1__ListPodSandboxRequest lp = RUNTIME__V1__LIST_POD_SANDBOX_REQUEST__INIT;
	Runtime__V1__ListContainerStatsRequest lcs =
		RUNTIME__V1__LIST_CONTAINER_STATS_REQUEST__INIT;
	Runtime__V1__ListPodSandboxStatsRequest lps =
		RUNTIME__V1__LIST_POD_SANDBOX_STATS_REQUEST__INIT;
	switch (k) {
	case L_CONTAINERS:
		return cri_call(s->ch, RT("ListContainers"), &lc.base, NULL, NULL);
	case L_SANDBOXES:
		return cri_call(s->ch, RT("ListPodSandbox"), &lp.base, NULL, NULL);
	case L_CONTAINER_STATS:
		return cri_call(s->ch, RT("ListContainerStats"), &lcs.base, NULL, NULL);
	case L_SANDBOX_STATS:
		return cri_call(s->ch, RT("ListPodSandboxStats"), &lps.base, NULL, NULL);
	case L_RELIST:
		if (cri_call(s->ch, RT("ListPodSandbox"), &lp.base, NULL, NULL) < 0)
			return -EIO;
		return cri_call(s->ch, RT("ListContainers"), &lc.base, NULL, NULL);
	}
	return -EINVAL;
}

/* CPU time crimuxd's threads have used, in ns (schedstat): what a call
 * costs crimuxd itself, whatever the load on the machine. */
static double cpu_ns_of(int pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	double total = 0;
	for (struct dirent *e; d && (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		char file[300];
		snprintf(file, sizeof(file), "/proc/%d/task/%s/schedstat", pid, e->d_name);
		FILE *f = fopen(file, "re");
		unsigned long long ns = 0;
		if (f && fscanf(f, "%llu", &ns) == 1)
			total += (double)ns;
		if (f)
			fclose(f);
	}
	if (d)
		closedir(d);
	return total;
}

static double crimux_cpu_ms; /* of the last list_figure, per crimux call */

/* p50 of each side's calls, taking turns; t[i] per side (0 raw Docker,
 * 1 crimux docker, 2 containerd, 3 crimux runc; absent sides stay 0). */
static void list_figure(struct bench *b, const struct side *sides, size_t n_sides, enum list_kind k,
			size_t n, double t[4])
{
	double v[4][n];
	for (size_t i = 0; i < n / 5 + 2; i++) /* warm up: caches, CPU rates */
		for (size_t j = 0; j < n_sides; j++)
			if ((sides[j].ch || j == 0) && list_once(b, &sides[j], k) < 0)
				die(list_names[k], sides[j].label);
	double cpu = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t jj = 0; jj < n_sides; jj++) {
			size_t j = (i + jj) % n_sides;
			if (!sides[j].ch && j != 0)
				continue;
			double c0 = j == 1 && b->crimux_pid ? cpu_ns_of(b->crimux_pid) : 0;
			double t0 = now_ms();
			if (list_once(b, &sides[j], k) < 0)
				die(list_names[k], sides[j].label);
			v[j][i] = now_ms() - t0;
			if (j == 1 && b->crimux_pid)
				cpu += cpu_ns_of(b->crimux_pid) - c0;
		}
	crimux_cpu_ms = n ? cpu / 1e6 / (double)n : 0;
	for (size_t j = 0; j < 4; j++)
		t[j] = j < n_sides && (sides[j].ch || j == 0) ? p50(v[j], n) : 0;
}

static void print_list(const char *name, const double t[4])
{
	printf("%-20s %9.2f %9.2f %6.2fx %9.2f", name, t[0], t[1], t[1] / t[0], crimux_cpu_ms);
	if (t[2] > 0)
		printf(" %11.2f %6.2fx", t[2], t[1] / t[2]);
	if (t[3] > 0)
		printf(" %11.2f %6.2fx", t[3], t[1] / t[3]);
	printf("\n");
}

/* Docker's own stats endpoint for the first few running containers, one
 * after another: what a shim asking Docker for stats pays. */
static double docker_stats_api(struct bench *b, size_t n)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	_cleanup_json_ json_object *f = json_object_new_object();
	json_object *labels = json_object_new_array();
	_cleanup_json_ json_object *list = NULL;
	int r = dk_json_add(f, "label", labels);
	r |= dk_json_append_str(labels, DK_LABEL_TYPE "=" DK_TYPE_CONTAINER);
	if (r || dk_container_list(b->docker_sock, f, &dl, &list, &err) < 0)
		return raw_fail("list", &err);
	double t0 = now_ms();
	size_t done = 0;
	for (size_t i = 0; i < json_object_array_length(list) && done < n; i++) {
		const char *id = dk_json_str(json_object_array_get_idx(list, i), "Id");
		_cleanup_json_ json_object *st = NULL;
		if (dk_callf(b->docker_sock, "GET", NULL, &dl, &st, NULL, &err,
			     "/containers/%s/stats?stream=false", id) < 0)
			return raw_fail("stats", &err);
		done++;
	}
	return done ? (now_ms() - t0) / (double)done : 0;
}

static void lists(struct bench *b, const struct side *sides)
{
	if (!b->n_counts && !b->pleg_pods)
		return;
	size_t most = b->pleg_pods;
	for (size_t i = 0; i < b->n_counts; i++)
		if (b->counts[i] > most)
			most = b->counts[i];
	struct pod *dpods = calloc(most, sizeof(*dpods)), *cpods = calloc(most, sizeof(*cpods));
	if (!dpods || !cpods)
		die("lists", "out of memory");
	const struct side raw = sides[0], crx = sides[1];
	const struct side ctd = {.label = "containerd", .ch = b->containerd, .handler = ""};
	const struct side crunc = {.label = "crimux-runc", .ch = b->crimux_runc, .handler = ""};
	const struct side all[4] = {raw, crx, ctd, crunc};
	struct rpc_channel *pod_maker = b->containerd ? b->containerd : b->crimux_runc;
	const struct side maker = {.label = "ctd", .ch = pod_maker, .handler = ""};
	size_t have = 0;
	unsigned targets[9];
	size_t n_targets = 0;
	for (size_t i = 0; i < b->n_counts; i++)
		targets[n_targets++] = b->counts[i];
	if (b->pleg_pods)
		targets[n_targets++] = b->pleg_pods;
	for (size_t ti = 0; ti < n_targets; ti++) {
		size_t want = targets[ti];
		bool relist = b->pleg_pods && ti == n_targets - 1;
		if (want > have) {
			fill(b, &crx, dpods, have, want, false);
			if (pod_maker)
				fill(b, &maker, cpods, have, want, false);
			have = want;
		}
		size_t n = b->samples;
		double t[4];
		if (relist) {
			printf("# PLEG relist (ListPodSandbox + ListContainers) at %zu pods with a "
			       "running container each; p50 of %zu; milliseconds\n",
			       want, n);
			printf("%-20s %9s %9s %7s %9s %11s %7s %11s %7s\n", "call", "docker",
			       "crimux", "ratio", "crx cpu", "containerd", "ratio", "crimux-runc",
			       "ratio");
			list_figure(b, all, 4, L_RELIST, n, t);
			print_list(list_names[L_RELIST], t);
		} else {
			printf("# lists at %zu running containers (%zu pods), unfiltered; p50 of "
			       "%zu calls; milliseconds\n",
			       want, want, n);
			printf("%-20s %9s %9s %7s %9s %11s %7s %11s %7s\n", "call", "docker",
			       "crimux", "ratio", "crx cpu", "containerd", "ratio", "crimux-runc",
			       "ratio");
			for (enum list_kind k = L_CONTAINERS; k <= L_SANDBOX_STATS; k++) {
				list_figure(b, all, 4, k, n, t);
				print_list(list_names[k], t);
			}
			printf("%-20s %9.1f ms per container (Docker's /stats?stream=false, "
			       "one after another)\n",
			       "docker stats API", docker_stats_api(b, 5));
		}
		fflush(stdout);
	}
	fill(b, &crx, dpods, 0, have, true);
	if (pod_maker)
		fill(b, &maker, cpods, 0, have, true);
	free(dpods);
	free(cpods);
}

/* --- set-up --- */

/* As crimux's docker backend decides it (restrict_oom_score_adj = auto):
 * the lowest oom_score_adj a child may set. */
static int oom_min(void)
{
	int own = 0;
	FILE *f = fopen("/proc/self/oom_score_adj", "re");
	if (!f || fscanf(f, "%d", &own) != 1)
		own = 0;
	if (f)
		fclose(f);
	pid_t pid = fork();
	if (pid == 0) {
		FILE *w = fopen("/proc/self/oom_score_adj", "we");
		_exit(w && fputs("-1000", w) >= 0 && fclose(w) == 0 ? 0 : 1);
	}
	int status = 1;
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return own;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? INT_MIN : own;
}

static bool restricted_caps(uint64_t *set)
{
	unsigned last = 40;
	unsigned long long bnd = 0;
	bool found = false;
	char line[256];
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
	if (f && fscanf(f, "%u", &last) != 1)
		last = 40;
	if (f)
		fclose(f);
	FILE *st = fopen("/proc/self/status", "re");
	while (st && fgets(line, sizeof(line), st))
		if (sscanf(line, "CapBnd: %llx", &bnd) == 1)
			found = true;
	if (st)
		fclose(st);
	uint64_t all = last >= 63 ? UINT64_MAX : (1ULL << (last + 1)) - 1;
	*set = bnd;
	return found && (bnd & all) != all;
}

static void setup(struct bench *b, const struct side *sides)
{
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	_cleanup_json_ json_object *info = NULL;
	if (dk_call(b->docker_sock, "GET", "/info", NULL, &dl, &info, NULL, &err) < 0)
		die("docker info", err.msg);
	snprintf(b->cgroup_driver, sizeof(b->cgroup_driver), "%s",
		 dk_json_str(info, "CgroupDriver") ?: "cgroupfs");
	b->opts = (struct dk_spec_opts){.cgroup_driver = b->cgroup_driver,
					.oom_score_adj_min = oom_min(),
					.log_max_size = "10m",
					.log_max_files = 3};
	b->opts.caps_restricted = restricted_caps(&b->opts.cap_bounding);

	Runtime__V1__ImageSpec spec = RUNTIME__V1__IMAGE_SPEC__INIT;
	spec.image = (char *)b->image;
	Runtime__V1__PullImageRequest pull = RUNTIME__V1__PULL_IMAGE_REQUEST__INIT;
	pull.image = &spec;
	struct rpc_channel *chans[] = {b->crimux, b->containerd, b->crimux_runc};
	for (size_t i = 0; i < ARRAY_SIZE(chans); i++)
		if (chans[i] && cri_call(chans[i], "/runtime.v1.ImageService/PullImage", &pull.base,
					 NULL, NULL) < 0)
			die("PullImage", rpc_channel_name(chans[i]));

	/* A first pod makes crimux load its sandbox image; the raw side
	 * uses the same one. */
	struct pod p = {0};
	pod_init(b, &p, "warm");
	if (crx_run_pod(b, &sides[1], &p) < 0)
		die("first pod", "RunPodSandbox");
	_cleanup_json_ json_object *inspect = NULL;
	if (dk_container_inspect(b->docker_sock, p.id, &dl, &inspect, &err) < 0)
		die("inspecting crimux's pause container", err.msg);
	const char *image = dk_json_str(dk_json_get(inspect, "Config", NULL), "Image");
	if (!image || !(b->pause_image = strdup(image)))
		die("first pod", "no pause image");
	if (crx_stop_pod(b, &sides[1], &p) < 0 || crx_remove_pod(b, &sides[1], &p) < 0)
		die("first pod", "teardown");
}

/* --- the bare CRI server (--bare-server) --- */

/* Whether the method is a removal, the one kind served; *id its ID
 * (NULL if the request does not unpack). */
static bool bare_request_id(const char *method, const uint8_t *msg, size_t len, char **id)
{
	*id = NULL;
	if (strcmp(method, RT("RemoveContainer")) == 0) {
		Runtime__V1__RemoveContainerRequest *req =
			runtime__v1__remove_container_request__unpack(NULL, len, msg);
		if (req)
			*id = strdup(req->container_id);
		runtime__v1__remove_container_request__free_unpacked(req, NULL);
		return true;
	}
	if (strcmp(method, RT("RemovePodSandbox")) == 0) {
		Runtime__V1__RemovePodSandboxRequest *req =
			runtime__v1__remove_pod_sandbox_request__unpack(NULL, len, msg);
		if (req)
			*id = strdup(req->pod_sandbox_id);
		runtime__v1__remove_pod_sandbox_request__free_unpacked(req, NULL);
		return true;
	}
	return false;
}

/* Blocks the event loop on purpose: with one client calling at a time,
 * the DELETE made on the thread that has the call is the least a server
 * can do (no hand-off, no wake of another thread). */
static void bare_dispatch(struct rpc_call *call, void *docker_sock)
{
	const char *method = rpc_call_method(call);
	size_t len = 0;
	const uint8_t *msg = rpc_call_request(call, &len);
	_cleanup_free_ char *id = NULL;
	if (!bare_request_id(method, msg, len, &id)) {
		rpc_call_fail(call, RPC_UNIMPLEMENTED,
			      "the bare server serves only the removals, not %s", method);
		return;
	}
	if (!id) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "%s: the request does not parse", method);
		return;
	}
	/* As crimux does: what is not a Docker ID never reaches a Docker path. */
	if (!dk_valid_id(id)) {
		rpc_call_fail(call, RPC_INVALID_ARGUMENT, "%s: not a Docker ID", method);
		return;
	}
	struct crx_err err = {0};
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	if (dk_container_remove(docker_sock, id, &dl, NULL, NULL, &err) < 0)
		rpc_call_fail_err(call, &err);
	else
		rpc_call_reply(call, "", 0);
}

__attribute__((noreturn)) static void serve_bare(const char *path, const char *docker_sock)
{
	char address[PATH_MAX + 8];
	snprintf(address, sizeof(address), "unix://%s", path);
	struct rpc_server_options o = {.address = address,
				       .max_message = 16 * MIB,
				       .dispatch = bare_dispatch,
				       .userdata = (void *)docker_sock};
	struct rpc_server *server = NULL;
	struct crx_err err = {0};
	if (rpc_server_new(&o, &server, &err) < 0 || rpc_server_start(server, &err) < 0)
		die("bare server", err.msg);
	for (;;) /* until the benchmark kills it */
		pause();
}

static bool accepts(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	return fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
}

/* Runs this program again as the bare server, in a process of its own as
 * crimuxd is; before gRPC starts here, which a fork must not copy. */
static pid_t spawn_bare(const char *docker_sock, const char *path)
{
	unlink(path);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		die("bare server", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == parent)
			execl("/proc/self/exe", "crimux-bench-docker", "--serve-bare", path,
			      "--docker", docker_sock, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && !accepts(path); i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			die("bare server", "exited at start");
		usleep(10000);
	}
	if (!accepts(path))
		die("bare server", "not listening after 5 s");
	return pid;
}

static int parse_counts(const char *s, struct bench *b)
{
	b->n_counts = 0;
	for (char *end; *s && b->n_counts < ARRAY_SIZE(b->counts); s = *end ? end + 1 : end) {
		unsigned long v = strtoul(s, &end, 10);
		if (end == s || (*end && *end != ','))
			return -EINVAL;
		if (v)
			b->counts[b->n_counts++] = (unsigned)v;
	}
	return 0;
}

static struct rpc_channel *channel(const char *name, const char *target)
{
	if (!target)
		return NULL;
	struct rpc_channel_options o = {.name = name, .target = target, .max_message = 16 * MIB};
	struct rpc_channel *ch = NULL;
	struct crx_err err = {0};
	if (rpc_channel_new(&o, &ch, &err) < 0)
		die(target, err.msg);
	return ch;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: crimux-bench-docker --docker SOCKET --crimux TARGET --image REF\n"
		"         --cni-conf-dir DIR --cni-bin-dir PATH --log-dir DIR\n"
		"         [--containerd TARGET] [--crimux-runc TARGET] [--handler NAME]\n"
		"         [--rounds N] [--parallel N] [--parallel-rounds N] [--counts N,N]\n"
		"         [--pleg-pods N] [--samples N] [--control | --bare-server]\n"
		"  --docker        dockerd's socket path (the raw side)\n"
		"  --crimux        a crimuxd whose only backend is that dockerd\n"
		"  --containerd    containerd's CRI endpoint, for the list comparisons\n"
		"  --crimux-runc   a crimuxd in front of that containerd\n"
		"  --image         an image both can pull (a sleep 3600 runs in each pod)\n"
		"  --rounds        pod life cycles per side (default 10)\n"
		"  --parallel      pods started at once (default 10), --parallel-rounds times (3)\n"
		"  --counts        running containers for the list figures (default 10,100)\n"
		"  --pleg-pods     pods for the PLEG relist figure (default 110; 0: none)\n"
		"  --samples       calls per list figure and side (default 30)\n"
		"  --crimux-pid    crimuxd's pid: its CPU time per list call (crx cpu)\n"
		"  --control       the life cycle only, both sides making the raw calls: how far\n"
		"                  apart two identical sides land in this run (its noise)\n"
		"  --bare-server   a third pod per round, its removals through the least a CRI\n"
		"                  server can be (one DELETE on the thread that has the call):\n"
		"                  what a CRI round trip costs, and crimux beyond it\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"docker", required_argument, NULL, 'd'},
		{"crimux", required_argument, NULL, 'c'},
		{"containerd", required_argument, NULL, 'C'},
		{"crimux-runc", required_argument, NULL, 'R'},
		{"handler", required_argument, NULL, 'H'},
		{"image", required_argument, NULL, 'i'},
		{"cni-conf-dir", required_argument, NULL, 'n'},
		{"cni-bin-dir", required_argument, NULL, 'N'},
		{"log-dir", required_argument, NULL, 'l'},
		{"rounds", required_argument, NULL, 'r'},
		{"parallel", required_argument, NULL, 'p'},
		{"parallel-rounds", required_argument, NULL, 'P'},
		{"counts", required_argument, NULL, 'k'},
		{"pleg-pods", required_argument, NULL, 'g'},
		{"samples", required_argument, NULL, 's'},
		{"crimux-pid", required_argument, NULL, 'x'},
		{"control", no_argument, NULL, 'A'},
		{"bare-server", no_argument, NULL, 'B'},
		{"serve-bare", required_argument, NULL, 'S'}, /* the bare server itself */
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct bench b = {.handler = "",
			  .rounds = 10,
			  .parallel = 10,
			  .parallel_rounds = 3,
			  .samples = 30,
			  .pleg_pods = 110,
			  .counts = {10, 100},
			  .n_counts = 2};
	pthread_mutex_init(&b.lock, NULL);
	const char *crimux = NULL, *containerd = NULL, *crimux_runc = NULL, *serve = NULL;
	bool bare = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (opt) {
		case 'd':
			b.docker_sock = optarg;
			break;
		case 'c':
			crimux = optarg;
			break;
		case 'C':
			containerd = optarg;
			break;
		case 'R':
			crimux_runc = optarg;
			break;
		case 'H':
			b.handler = optarg;
			break;
		case 'i':
			b.image = optarg;
			break;
		case 'n':
			b.cni_conf_dir = optarg;
			break;
		case 'N':
			b.cni_bin_dir = optarg;
			break;
		case 'l':
			b.log_dir = optarg;
			break;
		case 'r':
			b.rounds = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'p':
			b.parallel = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'P':
			b.parallel_rounds = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'k':
			if (parse_counts(optarg, &b) < 0) {
				usage(stderr);
				return 2;
			}
			break;
		case 'g':
			b.pleg_pods = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 's':
			b.samples = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'x':
			b.crimux_pid = atoi(optarg);
			break;
		case 'A':
			b.control = true;
			break;
		case 'B':
			bare = true;
			break;
		case 'S':
			serve = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (serve && b.docker_sock)
		serve_bare(serve, b.docker_sock);
	if (!b.docker_sock || !crimux || !b.image || !b.cni_conf_dir || !b.cni_bin_dir ||
	    !b.log_dir || !b.rounds || !b.samples || (bare && b.control)) {
		usage(stderr);
		return 2;
	}
	char bare_path[64], bare_target[80];
	snprintf(bare_path, sizeof(bare_path), "/tmp/crimux-bench-bare.%ld.sock", (long)getpid());
	snprintf(bare_target, sizeof(bare_target), "unix://%s", bare_path);
	pid_t bare_pid = bare ? spawn_bare(b.docker_sock, bare_path) : 0;
	b.bare = bare ? channel("bare server", bare_target) : NULL;
	b.crimux = channel("crimux", crimux);
	b.containerd = channel("containerd", containerd);
	b.crimux_runc = channel("crimux-runc", crimux_runc);
	const struct side sides[2] = {
		{.label = "docker"},
		{.label = "crimux", .ch = b.crimux, .handler = b.handler},
	};
	setup(&b, sides);
	printf("# crimux-bench-docker: raw = the Docker Engine calls a step needs, made "
	       "directly; crimux = the CRI call\n");
	lifecycle(&b, sides);
	if (!b.control) {
		parallel(&b, sides);
		lists(&b, sides);
	}
	rpc_channel_free(b.crimux);
	rpc_channel_free(b.containerd);
	rpc_channel_free(b.crimux_runc);
	if (bare_pid) {
		rpc_channel_free(b.bare);
		kill(bare_pid, SIGKILL);
		waitpid(bare_pid, NULL, 0);
		unlink(bare_path);
	}
	free(b.pause_image);
	return 0;
}
