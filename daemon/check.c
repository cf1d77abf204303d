/* `crimuxd --check`: the configuration, each backend and what it reports for
 * each handler, /dev/kvm, CNI, cgroup drivers and the socket. Library code:
 * findings go to `out`, nothing is logged. Every call has a short deadline,
 * so a hung runtime makes a finding, not a hung check. */
#include "config.h"

#include "daemon/check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/status.h"
#include "daemon/conf.h"
#include "runtimes/backend.h"

#define CALL_TIMEOUT_MS   3000
#define STATUS_TIMEOUT_MS 5000
#define KVM_DEVICE        "/dev/kvm"
#define RUNTIME_SERVICE   "/runtime.v1.RuntimeService/"
#define CRI_PLUGIN        "plugins.\"io.containerd.grpc.v1.cri\""
#define MAX_DOCKER_REPLY  (4 * MIB)
/* The docker backend's defaults (runtimes/docker/dockershim.c). */
#define DOCKER_DEFAULT_HANDLER  "docker"
#define DOCKER_DEFAULT_CNI_CONF "/etc/cni/net.d"
#define DOCKER_MIN_API          "1.41"

enum { DRIVER_UNKNOWN = -1 };

static const char *const verdict_names[] = {
	[CHECK_OK] = "OK",
	[CHECK_WARN] = "WARN",
	[CHECK_FAIL] = "FAIL",
};

static const char *const driver_names[] = {
	[RUNTIME__V1__CGROUP_DRIVER__SYSTEMD] = "systemd",
	[RUNTIME__V1__CGROUP_DRIVER__CGROUPFS] = "cgroupfs",
};

struct checker {
	FILE *out;
	const char *config_path;
	unsigned count[3];
};

/* What one backend told about itself. */
struct probe {
	const struct crx_backend_config *cfg;
	bool docker;
	bool up;            /* answered Version as a usable runtime */
	char *runtime_name; /* "containerd", "docker" */
	Runtime__V1__StatusResponse *status;
	json_object *config; /* containerd: Status info "config"; docker: GET /info */
	int cgroup_driver;   /* RUNTIME__V1__CGROUP_DRIVER_*, or DRIVER_UNKNOWN */
	char *driver_source; /* how the driver was learned */
	bool driver_binding; /* crimuxd itself compares it at start */
};

static void pb_freep(void *p)
{
	ProtobufCMessage **m = p;
	if (*m)
		protobuf_c_message_free_unpacked(*m, NULL);
}

static void json_putp(json_object **j)
{
	json_object_put(*j);
}

#define _cleanup_pb_   _cleanup_(pb_freep)
#define _cleanup_json_ _cleanup_(json_putp)

static void finding(struct checker *c, enum check_verdict v, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fix(struct checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void finding(struct checker *c, enum check_verdict v, const char *fmt, ...)
{
	c->count[v]++;
	fprintf(c->out, "%-5s ", verdict_names[v]);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(c->out, fmt, ap);
	va_end(ap);
	fputc('\n', c->out);
}

/* What to do about the finding just reported. */
static void fix(struct checker *c, const char *fmt, ...)
{
	fputs("      fix: ", c->out);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(c->out, fmt, ap);
	va_end(ap);
	fputc('\n', c->out);
}

/* ---------------------------------------------------------------- helpers */

/* obj.a.b...: NULL when any step is missing. */
static json_object *json_path(json_object *obj, ...)
{
	va_list ap;
	va_start(ap, obj);
	for (const char *key; obj && (key = va_arg(ap, const char *));)
		if (!json_object_object_get_ex(obj, key, &obj))
			obj = NULL;
	va_end(ap);
	return obj;
}

/* A string member, NULL unless it is a non-empty string. */
static const char *json_str(json_object *obj, const char *key)
{
	json_object *v = json_path(obj, key, NULL);
	const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
	return s && *s ? s : NULL;
}

/* "a, b, c" of an object's keys, into buf. */
static const char *json_keys(json_object *obj, char *buf, size_t size)
{
	buf[0] = '\0';
	if (json_object_is_type(obj, json_type_object)) {
		json_object_object_foreach(obj, key, val)
		{
			(void)val;
			size_t used = strlen(buf);
			snprintf(buf + used, size - used, "%s\"%s\"", used ? ", " : "", key);
		}
	}
	if (!buf[0])
		snprintf(buf, size, "none");
	return buf;
}

/* A unary call with a protobuf request. Returns the gRPC code (the reply
 * unpacked into *reply when OK), or a negative errno when no call could be
 * made or the reply does not decode. *details gets the status message. */
static int call(struct backend *b, const char *method, const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *reply_type, unsigned timeout_ms,
		ProtobufCMessage **reply, char **details)
{
	size_t len = protobuf_c_message_get_packed_size(req);
	_cleanup_free_ uint8_t *data = malloc(len ? len : 1);
	if (!data)
		return -ENOMEM;
	protobuf_c_message_pack(req, data);
	struct rpc_buf buf = {data, len};
	struct rpc_result res = {0};
	int r = b->ops->call(b, method, &buf, NULL, timeout_ms, &res);
	if (r < 0)
		return r;
	r = res.code;
	if (r == RPC_OK) {
		ProtobufCMessage *m =
			protobuf_c_message_unpack(reply_type, NULL, res.reply.len, res.reply.data);
		if (m)
			*reply = m;
		else
			r = -EBADMSG;
	}
	*details = TAKE_PTR(res.details);
	rpc_result_clear(&res);
	return r;
}

/* "UNAVAILABLE: <details>", or the errno's text, for findings. */
static const char *outcome(int code, const char *details, char *buf, size_t size)
{
	if (code < 0)
		snprintf(buf, size, "%s", strerror(-code));
	else
		snprintf(buf, size, "%s%s%s", rpc_code_name(code), details ? ": " : "",
			 details ? details : "");
	return buf;
}

static int version_cmp(const char *a, const char *b)
{
	unsigned amaj = 0, amin = 0, bmaj = 0, bmin = 0;
	sscanf(a, "%u.%u", &amaj, &amin);
	sscanf(b, "%u.%u", &bmaj, &bmin);
	return amaj != bmaj ? (amaj < bmaj ? -1 : 1) : (amin < bmin ? -1 : amin > bmin);
}

/* ---------------------------------------------------------------- docker */

/* GET path from dockerd's API on a unix socket, as JSON. HTTP/1.0, so the
 * reply is neither chunked nor kept alive: read to the end. */
static int docker_get(const char *sock, const char *path, json_object **out, struct crx_err *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(sock) >= sizeof(sa.sun_path))
		return crx_err_set(err, -ENAMETOOLONG, "%s: path too long", sock);
	strcpy(sa.sun_path, sock);
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return crx_err_set(err, -errno, "socket: %s", strerror(errno));
	struct timeval tv = {.tv_sec = CALL_TIMEOUT_MS / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return crx_err_set(err, -errno, "cannot connect to %s: %s", sock, strerror(errno));
	char req[256];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: docker\r\n\r\n", path);
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
		return crx_err_set(err, -EIO, "cannot send to %s: %s", sock, strerror(errno));

	_cleanup_free_ char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (cap - len < 4096) {
			if (cap >= MAX_DOCKER_REPLY)
				return crx_err_set(err, -EMSGSIZE, "GET %s: reply too large", path);
			char *more = realloc(buf, cap + 65536);
			if (!more)
				return crx_err_set(err, -ENOMEM, "out of memory");
			buf = more;
			cap += 65536;
		}
		ssize_t got = read(fd, buf + len, cap - len - 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return crx_err_set(err, errno == EAGAIN ? -ETIMEDOUT : -errno,
					   "GET %s: no answer: %s", path,
					   errno == EAGAIN ? "timed out" : strerror(errno));
		if (got == 0)
			break;
		len += (size_t)got;
	}
	if (!buf)
		return crx_err_set(err, -EPROTO, "GET %s: empty reply", path);
	buf[len] = '\0';
	int status = 0;
	char *body = strstr(buf, "\r\n\r\n");
	if (sscanf(buf, "HTTP/%*u.%*u %d", &status) != 1 || !body)
		return crx_err_set(err, -EPROTO, "GET %s: not an HTTP reply", path);
	if (status != 200)
		return crx_err_set(err, -EIO, "GET %s: HTTP %d", path, status);
	json_object *j = json_tokener_parse(body + 4);
	if (!j)
		return crx_err_set(err, -EBADMSG, "GET %s: not JSON", path);
	*out = j;
	return 0;
}

/* The docker backend answers CRI calls itself, and its first call resumes
 * following the logs of running containers: a check next to a live crimuxd
 * must not do that, so it asks dockerd directly. */
static void probe_docker(struct checker *c, struct probe *p)
{
	const struct crx_backend_config *b = p->cfg;
	const char *sock = b->endpoint + strlen("unix://");
	struct crx_err err = {0};
	_cleanup_json_ json_object *version = NULL;
	if (docker_get(sock, "/version", &version, &err) < 0) {
		finding(c, CHECK_FAIL,
			"backend %s: dockerd not reachable at %s: %s; its handlers "
			"are not checked",
			b->name, b->endpoint, err.msg);
		fix(c,
		    "start dockerd (systemctl start docker), or correct endpoint = in "
		    "[backend \"%s\"] of %s",
		    b->name, c->config_path);
		return;
	}
	const char *api = json_str(version, "ApiVersion");
	const char *ver = json_str(version, "Version");
	if (!api || version_cmp(api, DOCKER_MIN_API) < 0) {
		finding(c, CHECK_FAIL,
			"backend %s: docker %s speaks API %s; crimux needs %s or later", b->name,
			ver ? ver : "(unknown)", api ? api : "(unknown)", DOCKER_MIN_API);
		fix(c, "install Docker Engine 20.10 or later");
		return;
	}
	p->up = true;
	p->runtime_name = strdup("docker");
	finding(c, CHECK_OK, "backend %s: docker %s (API %s) at %s", b->name, ver ? ver : "?", api,
		b->endpoint);

	if (docker_get(sock, "/info", &p->config, &err) < 0) {
		finding(c, CHECK_WARN,
			"backend %s: docker info failed: %s; storage and cgroup "
			"driver not checked",
			b->name, err.msg);
		fix(c, "see dockerd's log (journalctl -u docker)");
		return;
	}
	const char *driver = json_str(p->config, "Driver");
	if (streq(driver, "overlay2")) {
		finding(c, CHECK_OK,
			"backend %s: storage driver overlay2, as recommended for Docker", b->name);
	} else {
		finding(c, CHECK_WARN,
			"backend %s: storage driver %s; overlay2 is recommended for "
			"Docker",
			b->name, driver ? driver : "(not reported)");
		fix(c, "set \"storage-driver\": \"overlay2\" in /etc/docker/daemon.json (the data "
		       "root must be on ext4 or xfs with d_type) and restart dockerd");
	}
	const char *cgroup = json_str(p->config, "CgroupDriver");
	p->cgroup_driver = streq(cgroup, "systemd") ? RUNTIME__V1__CGROUP_DRIVER__SYSTEMD
						    : RUNTIME__V1__CGROUP_DRIVER__CGROUPFS;
	p->driver_source = strdup("docker info");
	p->driver_binding = true; /* the backend's RuntimeConfig says the same */
}

/* The docker backend's CNI readiness: a network configuration in its
 * cni_conf_dir that parses. */
static void check_docker_cni(struct checker *c, const struct probe *p)
{
	const char *dir = crx_backend_option(p->cfg, "cni_conf_dir");
	if (!dir)
		dir = DOCKER_DEFAULT_CNI_CONF;
	struct dirent **names;
	int n = scandir(dir, &names, NULL, alphasort);
	char found[NAME_MAX + 1] = "";
	for (int i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		size_t len = strlen(name);
		bool candidate = (len > 9 && streq(name + len - 9, ".conflist")) ||
				 (len > 5 && streq(name + len - 5, ".conf")) ||
				 (len > 5 && streq(name + len - 5, ".json"));
		_cleanup_free_ char *file = NULL;
		if (!found[0] && candidate && asprintf(&file, "%s/%s", dir, name) >= 0) {
			_cleanup_json_ json_object *j = json_object_from_file(file);
			if (json_path(j, "plugins", NULL) || json_str(j, "type"))
				snprintf(found, sizeof(found), "%s", name);
		}
		free(names[i]);
	}
	if (n >= 0)
		free(names);
	if (found[0]) {
		finding(c, CHECK_OK, "backend %s: network ready (CNI configuration %s/%s)",
			p->cfg->name, dir, found);
		return;
	}
	finding(c, CHECK_FAIL, "backend %s: network not ready: no CNI network configuration in %s",
		p->cfg->name, dir);
	fix(c,
	    "put a CNI network configuration (.conflist) in %s, or set cni_conf_dir = in "
	    "[backend \"%s\"]; the plugins go in cni_bin_dir (Debian: "
	    "containernetworking-plugins)",
	    dir, p->cfg->name);
}

/* ---------------------------------------------------------------- CRI backends */

/* containerd 1.6 has no RuntimeConfig: its runc shim's own option says. */
static void infer_cgroup_driver(struct probe *p)
{
	const char *name = json_str(json_path(p->config, "containerd", NULL), "defaultRuntimeName");
	json_object *rt = name ? json_path(p->config, "containerd", "runtimes", name, NULL) : NULL;
	if (!streq(json_str(rt, "runtimeType"), "io.containerd.runc.v2"))
		return;
	json_object *opt = json_path(rt, "options", "SystemdCgroup", NULL);
	p->cgroup_driver = json_object_get_boolean(opt) ? RUNTIME__V1__CGROUP_DRIVER__SYSTEMD
							: RUNTIME__V1__CGROUP_DRIVER__CGROUPFS;
	if (asprintf(&p->driver_source, "runc option SystemdCgroup of runtime \"%s\"", name) < 0)
		p->driver_source = NULL;
}

static void probe_cgroup_driver(struct probe *p, struct backend *b)
{
	Runtime__V1__RuntimeConfigRequest req = RUNTIME__V1__RUNTIME_CONFIG_REQUEST__INIT;
	_cleanup_pb_ Runtime__V1__RuntimeConfigResponse *rc = NULL;
	_cleanup_free_ char *details = NULL;
	int code = call(b, RUNTIME_SERVICE "RuntimeConfig", &req.base,
			&runtime__v1__runtime_config_response__descriptor, CALL_TIMEOUT_MS,
			(ProtobufCMessage **)&rc, &details);
	if (code == RPC_OK && rc->linux && (unsigned)rc->linux->cgroup_driver < 2) {
		p->cgroup_driver = (int)rc->linux->cgroup_driver;
		p->driver_source = strdup("RuntimeConfig");
		p->driver_binding = true;
	} else if (code == RPC_UNIMPLEMENTED) {
		infer_cgroup_driver(p);
	}
}

static void check_conditions(struct checker *c, const struct probe *p)
{
	const struct crx_backend_config *b = p->cfg;
	const Runtime__V1__RuntimeStatus *st = p->status->status;
	const char *cni_dir = json_str(json_path(p->config, "cni", NULL), "confDir");
	bool fine = true;
	for (size_t i = 0; st && i < st->n_conditions; i++) {
		const Runtime__V1__RuntimeCondition *cond = st->conditions[i];
		if (cond->status)
			continue;
		fine = false;
		bool network = streq(cond->type, "NetworkReady");
		bool reason = cond->reason && *cond->reason;
		bool message = cond->message && *cond->message;
		finding(c, CHECK_FAIL, "backend %s: %s%s%s%s%s", b->name,
			network ? "network not ready" : cond->type, reason ? ": " : "",
			reason ? cond->reason : "", message ? ": " : "",
			message ? cond->message : "");
		if (network)
			fix(c,
			    "put a CNI network configuration (.conflist) in %s's CNI conf_dir "
			    "(%s) and the plugins in its bin_dir (Debian: "
			    "containernetworking-plugins)",
			    p->runtime_name, cni_dir ? cni_dir : CRI_PLUGIN ".cni.conf_dir");
		else
			fix(c, "see %s's own log (journalctl -u %s)", p->runtime_name,
			    p->runtime_name);
	}
	if (fine)
		finding(c, CHECK_OK, "backend %s: runtime and network ready%s%s%s", b->name,
			cni_dir ? " (CNI configuration in " : "", cni_dir ? cni_dir : "",
			cni_dir ? ")" : "");
}

static void probe_cri(struct checker *c, struct probe *p, const char *crimux_socket)
{
	const struct crx_backend_config *b = p->cfg;
	if (streq(b->endpoint + strlen("unix://"), crimux_socket)) {
		finding(c, CHECK_FAIL, "backend %s: %s is crimux's own socket", b->name,
			b->endpoint);
		fix(c,
		    "point endpoint = in [backend \"%s\"] at the runtime's socket (containerd: "
		    "unix:///run/containerd/containerd.sock)",
		    b->name);
		return;
	}
	struct backend *be = NULL;
	struct crx_err err = {0};
	if (backend_open(b, &be, &err) < 0) {
		finding(c, CHECK_FAIL, "backend %s: %s", b->name, err.msg);
		return;
	}
	Runtime__V1__VersionRequest vreq = RUNTIME__V1__VERSION_REQUEST__INIT;
	vreq.version = (char *)"v1";
	_cleanup_pb_ Runtime__V1__VersionResponse *v = NULL;
	_cleanup_free_ char *details = NULL;
	char what[1400], text[1200];
	int code = call(be, RUNTIME_SERVICE "Version", &vreq.base,
			&runtime__v1__version_response__descriptor, CALL_TIMEOUT_MS,
			(ProtobufCMessage **)&v, &details);
	if (code < 0 || code == RPC_UNAVAILABLE || code == RPC_DEADLINE_EXCEEDED) {
		/* gRPC's message names the backend and its address already. */
		if (code == RPC_UNAVAILABLE && details)
			snprintf(what, sizeof(what), "%s", details);
		else
			snprintf(what, sizeof(what), "%s at %s",
				 outcome(code, details, text, sizeof(text)), b->endpoint);
		finding(c, CHECK_FAIL,
			"backend %s: not reachable: %s; its handlers are not checked", b->name,
			what);
		fix(c,
		    "start the runtime listening there (containerd: systemctl start containerd), "
		    "or correct endpoint = in [backend \"%s\"] of %s",
		    b->name, c->config_path);
		goto out;
	}
	if (code != RPC_OK) {
		finding(c, CHECK_FAIL, "backend %s: answers at %s, but not as a CRI v1 runtime: %s",
			b->name, b->endpoint, outcome(code, details, what, sizeof(what)));
		fix(c, "use containerd 1.6 or later with its CRI plugin enabled (\"cri\" not in "
		       "disabled_plugins of its config.toml)");
		goto out;
	}
	if (streq(v->runtime_name, PACKAGE_NAME)) {
		finding(c, CHECK_FAIL, "backend %s: %s is served by crimux itself", b->name,
			b->endpoint);
		fix(c, "point endpoint = in [backend \"%s\"] at the runtime's own socket", b->name);
		goto out;
	}
	p->up = true;
	p->runtime_name = strdup(v->runtime_name && *v->runtime_name ? v->runtime_name : b->name);
	finding(c, CHECK_OK, "backend %s: %s %s (CRI %s) at %s", b->name, p->runtime_name,
		v->runtime_version, v->runtime_api_version, b->endpoint);

	Runtime__V1__StatusRequest sreq = RUNTIME__V1__STATUS_REQUEST__INIT;
	sreq.verbose = true;
	free(TAKE_PTR(details));
	code = call(be, RUNTIME_SERVICE "Status", &sreq.base,
		    &runtime__v1__status_response__descriptor, STATUS_TIMEOUT_MS,
		    (ProtobufCMessage **)&p->status, &details);
	if (code != RPC_OK) {
		finding(c, CHECK_WARN, "backend %s: Status failed: %s; readiness not checked",
			b->name, outcome(code, details, what, sizeof(what)));
		fix(c, "see %s's own log", p->runtime_name);
	} else {
		for (size_t i = 0; i < p->status->n_info; i++)
			if (streq(p->status->info[i]->key, "config"))
				p->config = json_tokener_parse(p->status->info[i]->value);
		check_conditions(c, p);
	}
	probe_cgroup_driver(p, be);
out:
	backend_free(be);
}

/* ---------------------------------------------------------------- handlers */

static bool is_kata_type(const char *runtime_type)
{
	return runtime_type && strncmp(runtime_type, "io.containerd.kata", 18) == 0;
}

/* A handler on containerd: the runtime it maps to, and its snapshotter. */
static void check_containerd_runtime(struct checker *c, const struct crx_handler_config *h,
				     const struct probe *p, bool *needs_kvm)
{
	const char *rname = h->runtime_handler;
	json_object *runtimes = json_path(p->config, "containerd", "runtimes", NULL);
	json_object *rt = json_path(runtimes, rname, NULL);
	bool kata_policy = h->policy == CRX_POLICY_KATA;
	if (!rt) {
		char names[512];
		finding(c, CHECK_FAIL,
			"handler %s: %s (backend %s) has no runtime \"%s\" (it has: %s)", h->name,
			p->runtime_name, p->cfg->name, rname,
			json_keys(runtimes, names, sizeof(names)));
		fix(c,
		    "add [" CRI_PLUGIN ".containerd.runtimes.%s] with runtime_type = \"%s\" to "
		    "containerd's config.toml and restart containerd, or set runtime_handler = "
		    "to one it has in [handler \"%s\"] (%s)",
		    rname, kata_policy ? "io.containerd.kata.v2" : "io.containerd.runc.v2", h->name,
		    h->where);
		*needs_kvm |= kata_policy;
		return;
	}
	const char *type = json_str(rt, "runtimeType");
	bool kata = is_kata_type(type);
	*needs_kvm |= kata || kata_policy;
	if (kata_policy && !kata) {
		finding(c, CHECK_WARN,
			"handler %s: not a Kata runtime: it runs %s (containerd "
			"runtime \"%s\"), so its pods get Kata's admission rules but no VM",
			h->name, type ? type : "(no runtime_type)", rname);
		fix(c,
		    "install Kata Containers and set runtime_type = \"io.containerd.kata.v2\" in "
		    "[" CRI_PLUGIN ".containerd.runtimes.%s] of containerd's config.toml, or set "
		    "policy = none in [handler \"%s\"] if it is not meant to be Kata",
		    rname, h->name);
	} else if (kata && !kata_policy) {
		finding(c, CHECK_WARN, "handler %s: runs Kata (%s) without Kata's admission rules",
			h->name, type);
		fix(c, "set policy = kata in [handler \"%s\"] (%s)", h->name, h->where);
	} else {
		finding(c, CHECK_OK, "handler %s: %s runtime \"%s\" runs %s%s", h->name,
			p->runtime_name, rname, type ? type : "(no runtime_type)",
			kata ? ", a Kata runtime" : "");
	}

	/* containerd 1.7 may set a snapshotter per runtime; else the plugin's. */
	const char *snap = json_str(rt, "snapshotter");
	if (!snap)
		snap = json_str(json_path(p->config, "containerd", NULL), "snapshotter");
	if (kata || kata_policy) {
		if (streq(snap, "devmapper")) {
			finding(c, CHECK_OK,
				"handler %s: snapshotter devmapper, as recommended for "
				"Kata",
				h->name);
			return;
		}
		finding(c, CHECK_WARN,
			"handler %s: snapshotter %s; devicemapper is recommended for "
			"Kata",
			h->name, snap ? snap : "(not reported)");
		fix(c,
		    "configure containerd's devmapper snapshotter (a thin pool) and set "
		    "snapshotter = \"devmapper\" in [" CRI_PLUGIN ".containerd.runtimes.%s] "
		    "(containerd 1.7) or [" CRI_PLUGIN ".containerd]",
		    rname);
		return;
	}
	if (streq(snap, "overlayfs")) {
		finding(c, CHECK_OK, "handler %s: snapshotter overlayfs, as recommended for runc",
			h->name);
		return;
	}
	finding(c, CHECK_WARN, "handler %s: snapshotter %s; overlayfs is recommended for runc",
		h->name, snap ? snap : "(not reported)");
	fix(c, "set snapshotter = \"overlayfs\" in [" CRI_PLUGIN ".containerd] of containerd's "
	       "config.toml");
}

/* A runtime that does not describe its configuration: what it lists. */
static void check_listed_runtime(struct checker *c, const struct crx_handler_config *h,
				 const struct probe *p, bool *needs_kvm)
{
	*needs_kvm |= h->policy == CRX_POLICY_KATA;
	const Runtime__V1__StatusResponse *st = p->status;
	if (!st || st->n_runtime_handlers == 0) {
		finding(c, CHECK_OK,
			"handler %s: %s (backend %s) does not describe its runtimes; "
			"\"%s\" not checked",
			h->name, p->runtime_name, p->cfg->name, h->runtime_handler);
		return;
	}
	char names[512] = "";
	for (size_t i = 0; i < st->n_runtime_handlers; i++) {
		const char *name = st->runtime_handlers[i]->name;
		if (streq(name, h->runtime_handler)) {
			finding(c, CHECK_OK, "handler %s: %s (backend %s) has runtime \"%s\"",
				h->name, p->runtime_name, p->cfg->name, h->runtime_handler);
			return;
		}
		size_t used = strlen(names);
		snprintf(names + used, sizeof(names) - used, "%s\"%s\"", used ? ", " : "", name);
	}
	finding(c, CHECK_FAIL, "handler %s: %s (backend %s) has no runtime \"%s\" (it has: %s)",
		h->name, p->runtime_name, p->cfg->name, h->runtime_handler, names);
	fix(c, "set runtime_handler = to one of those in [handler \"%s\"] (%s)", h->name, h->where);
}

static void check_docker_handler(struct checker *c, const struct crx_handler_config *h,
				 const struct probe *p, bool *needs_kvm)
{
	const char *served = crx_backend_option(p->cfg, "runtime_handler");
	if (!served)
		served = DOCKER_DEFAULT_HANDLER;
	if (!streq(h->runtime_handler, served)) {
		finding(c, CHECK_FAIL,
			"handler %s: the docker backend %s serves runtime \"%s\", not "
			"\"%s\"",
			h->name, p->cfg->name, served, h->runtime_handler);
		fix(c, "set runtime_handler = %s in [handler \"%s\"] (%s)", served, h->name,
		    h->where);
		return;
	}
	if (h->policy == CRX_POLICY_KATA) {
		*needs_kvm = true;
		finding(c, CHECK_WARN,
			"handler %s: policy kata on Docker: its pods get Kata's "
			"admission rules but no VM",
			h->name);
		fix(c,
		    "run Kata pods on a containerd backend, or set policy = none in [handler "
		    "\"%s\"]",
		    h->name);
		return;
	}
	finding(c, CHECK_OK, "handler %s: docker (backend %s)", h->name, p->cfg->name);
}

static void check_handler(struct checker *c, const struct crx_handler_config *h,
			  const struct probe *p, bool *needs_kvm)
{
	if (!p || !p->up) { /* its backend's finding says so */
		*needs_kvm |= h->policy == CRX_POLICY_KATA;
		return;
	}
	if (p->docker)
		check_docker_handler(c, h, p, needs_kvm);
	else if (json_path(p->config, "containerd", "runtimes", NULL))
		check_containerd_runtime(c, h, p, needs_kvm);
	else
		check_listed_runtime(c, h, p, needs_kvm);
}

/* ---------------------------------------------------------------- node */

static void check_kvm(struct checker *c, const char *kata_handlers)
{
	struct stat st;
	const char *problem = NULL;
	char why[256];
	if (stat(KVM_DEVICE, &st) < 0) {
		problem = errno == ENOENT ? "missing" : strerror(errno);
	} else if (!S_ISCHR(st.st_mode)) {
		problem = "not a character device";
	} else {
		int fd = open(KVM_DEVICE, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			snprintf(why, sizeof(why), "cannot be opened: %s", strerror(errno));
			problem = why;
		} else {
			close(fd);
		}
	}
	if (!problem) {
		finding(c, CHECK_OK, KVM_DEVICE ": present, for the Kata handlers (%s)",
			kata_handlers);
		return;
	}
	finding(c, CHECK_FAIL, KVM_DEVICE ": %s; the Kata handlers (%s) cannot start their VMs",
		problem, kata_handlers);
	fix(c, "enable hardware virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or "
	       "kvm_amd; in a virtual machine, enable nested virtualization");
}

static void check_cgroup_drivers(struct checker *c, const struct probe *probes, size_t n)
{
	const struct probe *first = NULL;
	bool disagree = false, binding = true;
	char known[1024] = "", unknown[512] = "";
	for (size_t i = 0; i < n; i++) {
		const struct probe *p = &probes[i];
		if (!p->up)
			continue;
		if (p->cgroup_driver == DRIVER_UNKNOWN) {
			size_t used = strlen(unknown);
			snprintf(unknown + used, sizeof(unknown) - used, "%s%s", used ? ", " : "",
				 p->cfg->name);
			continue;
		}
		size_t used = strlen(known);
		snprintf(known + used, sizeof(known) - used, "%s%s %s (%s)", used ? ", " : "",
			 p->cfg->name, driver_names[p->cgroup_driver],
			 p->driver_source ? p->driver_source : "?");
		if (!first) {
			first = p;
		} else if (p->cgroup_driver != first->cgroup_driver) {
			disagree = true;
			binding &= p->driver_binding && first->driver_binding;
		}
	}
	if (disagree) {
		finding(c, CHECK_FAIL, "cgroup drivers disagree: %s%s", known,
			binding ? "; crimuxd refuses to start" : "; the kubelet follows only one");
		fix(c,
		    "use one driver everywhere: containerd: SystemdCgroup = true|false in the runc "
		    "options; dockerd: --exec-opt native.cgroupdriver=systemd|cgroupfs; and the "
		    "kubelet's cgroupDriver to match");
		return;
	}
	if (!first) {
		finding(c, CHECK_OK,
			"cgroup driver: not reported by %s (RuntimeConfig is newer than "
			"their CRI); set the kubelet's cgroupDriver to the runtimes' own",
			unknown[0] ? unknown : "any backend");
		return;
	}
	finding(c, CHECK_OK, "cgroup driver: %s%s%s%s; the kubelet's cgroupDriver must be %s too",
		known, unknown[0] ? "; not reported by " : "", unknown,
		unknown[0] ? " (RuntimeConfig is newer than their CRI)" : "",
		driver_names[first->cgroup_driver]);
}

/* Whether a crimuxd holds the lock beside the socket (daemon/daemon.c). */
static bool socket_locked(const char *socket_path)
{
	_cleanup_free_ char *lock_path = NULL;
	if (asprintf(&lock_path, "%s.lock", socket_path) < 0)
		return false;
	_cleanup_close_ int fd = open(lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return fd >= 0 && flock(fd, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK;
}

/* Who answers on the socket: 1 crimux, 0 nobody, -1 someone else (named in who). */
static int socket_server(const char *socket_path, char *who, size_t size)
{
	_cleanup_free_ char *endpoint = NULL;
	if (asprintf(&endpoint, "unix://%s", socket_path) < 0)
		return 0;
	struct crx_backend_config cfg = {
		.name = (char *)"crimux socket",
		.type = (char *)"cri",
		.endpoint = endpoint,
	};
	struct backend *b = NULL;
	if (backend_open(&cfg, &b, NULL) < 0)
		return 0;
	Runtime__V1__VersionRequest req = RUNTIME__V1__VERSION_REQUEST__INIT;
	req.version = (char *)"v1";
	_cleanup_pb_ Runtime__V1__VersionResponse *v = NULL;
	_cleanup_free_ char *details = NULL;
	int code = call(b, RUNTIME_SERVICE "Version", &req.base,
			&runtime__v1__version_response__descriptor, CALL_TIMEOUT_MS,
			(ProtobufCMessage **)&v, &details);
	backend_free(b);
	if (code == RPC_OK) {
		snprintf(who, size, "%s %s", v->runtime_name, v->runtime_version);
		return streq(v->runtime_name, PACKAGE_NAME) ? 1 : -1;
	}
	if (code < 0 || code == RPC_UNAVAILABLE || code == RPC_DEADLINE_EXCEEDED)
		return 0;
	outcome(code, details, who, size);
	return -1;
}

static void check_socket(struct checker *c, const struct crx_config *cfg)
{
	const char *path = cfg->socket_path;
	unsigned want = cfg->socket_mode & 07777;
	if (want & 0007) {
		finding(c, CHECK_FAIL,
			"socket_mode %04o lets every user on the node use the CRI, "
			"which is root on the node",
			want);
		fix(c, "set socket_mode = 0660 in [crimux] of %s", c->config_path);
	}

	_cleanup_free_ char *dir = strdup(path);
	if (!dir)
		return;
	char *slash = strrchr(dir, '/'); /* the path is absolute: there is one */
	slash[slash == dir] = '\0';
	struct stat st;
	if (stat(dir, &st) < 0) {
		if (errno != ENOENT) {
			finding(c, CHECK_FAIL, "socket directory %s: %s", dir, strerror(errno));
			return;
		}
		finding(c, CHECK_OK,
			"socket %s: not there yet; crimuxd creates %s and the socket "
			"with mode %04o",
			path, dir, want);
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		finding(c, CHECK_FAIL, "socket directory %s is not a directory", dir);
		fix(c, "remove it, or choose another socket = in [crimux] of %s", c->config_path);
		return;
	}
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX)) {
		finding(c, CHECK_FAIL,
			"socket directory %s has mode %04o: any user can replace the "
			"socket",
			dir, (unsigned)st.st_mode & 07777);
		fix(c, "chmod 0755 %s", dir);
	} else if (st.st_uid != geteuid()) {
		finding(c, CHECK_WARN,
			"socket directory %s belongs to uid %u, who can replace the "
			"socket",
			dir, (unsigned)st.st_uid);
		fix(c, "chown root: %s", dir);
	}

	if (lstat(path, &st) < 0) {
		if (errno != ENOENT)
			finding(c, CHECK_FAIL, "socket %s: %s", path, strerror(errno));
		else
			finding(c, CHECK_OK,
				"socket %s: not there yet; crimuxd creates it with mode "
				"%04o",
				path, want);
		return;
	}
	if (!S_ISSOCK(st.st_mode)) {
		finding(c, CHECK_FAIL, "socket %s is not a socket; crimuxd would replace it", path);
		fix(c, "remove it, or choose another socket = in [crimux] of %s", c->config_path);
		return;
	}
	unsigned mode = st.st_mode & 07777;
	if (mode & 0007) {
		finding(c, CHECK_FAIL,
			"socket %s has mode %04o: every user on the node can use the "
			"CRI, which is root on the node",
			path, mode);
		fix(c,
		    "chmod %04o %s now; crimuxd sets socket_mode when it binds the socket, "
		    "crimux.socket its SocketMode=",
		    want & 0770, path);
	} else if (mode != want) {
		finding(c, CHECK_WARN, "socket %s has mode %04o, but socket_mode is %04o", path,
			mode, want);
		fix(c, "make SocketMode= of crimux.socket match socket_mode, or restart crimuxd");
	}
	char who[256] = "";
	int server = socket_server(path, who, sizeof(who));
	if (server > 0) {
		finding(c, CHECK_OK, "socket %s (mode %04o): %s is serving it", path, mode, who);
	} else if (server < 0) {
		finding(c, CHECK_FAIL,
			"socket %s is served by something else (%s); crimuxd would "
			"take it over",
			path, who);
		fix(c, "choose another socket = in [crimux] of %s", c->config_path);
	} else if (socket_locked(path)) {
		finding(c, CHECK_WARN, "socket %s: a crimuxd holds %s.lock but does not answer",
			path, path);
		fix(c, "see its log (journalctl -u crimux) and restart it");
	} else {
		finding(c, CHECK_OK,
			"socket %s (mode %04o): nothing serves it; crimuxd replaces it "
			"when it starts",
			path, mode);
	}
}

/* ---------------------------------------------------------------- the check */

static void probe_clear(struct probe *p)
{
	free(p->runtime_name);
	free(p->driver_source);
	if (p->status)
		runtime__v1__status_response__free_unpacked(p->status, NULL);
	json_object_put(p->config);
}

static int summary(struct checker *c)
{
	int verdict = c->count[CHECK_FAIL]   ? CHECK_FAIL
		      : c->count[CHECK_WARN] ? CHECK_WARN
					     : CHECK_OK;
	fprintf(c->out, "%u failed, %u warnings, %u OK: exit %d\n", c->count[CHECK_FAIL],
		c->count[CHECK_WARN], c->count[CHECK_OK], verdict);
	fflush(c->out);
	return verdict;
}

int crx_check(const char *config_path, FILE *out)
{
	struct checker c = {.out = out, .config_path = config_path};
	struct crx_config cfg;
	struct crx_err err = {0};
	fprintf(out, "crimux %s node check of %s\n", PACKAGE_VERSION, config_path);
	if (crx_config_load(config_path, NULL, &cfg, &err) < 0) {
		finding(&c, CHECK_FAIL, "configuration: %s", err.msg);
		fix(&c, "correct it: crimuxd refuses to start with this configuration");
		return summary(&c);
	}
	if (cfg.n_handlers)
		finding(&c, CHECK_OK, "configuration: %zu backend%s, %zu handler%s (default: %s)",
			cfg.n_backends, cfg.n_backends == 1 ? "" : "s", cfg.n_handlers,
			cfg.n_handlers == 1 ? "" : "s", cfg.default_handler);
	else
		finding(&c, CHECK_OK,
			"configuration: backend %s, no [handler] sections: every pod goes to it "
			"with its RuntimeClass handler unchanged",
			cfg.backends[0].name);

	struct crx_metrics_address metrics;
	if (cfg.metrics_address &&
	    crx_metrics_address_parse(cfg.metrics_address, &metrics, NULL) == 0)
		finding(&c, metrics.loopback ? CHECK_OK : CHECK_WARN,
			"metrics: served on %s at /metrics%s", cfg.metrics_address,
			metrics.loopback ? ", on this node only"
					 : " to other machines, without authentication "
					   "(metrics_allow_remote = true)");

	struct probe *probes = calloc(cfg.n_backends, sizeof(*probes));
	if (!probes) {
		finding(&c, CHECK_FAIL, "out of memory");
		crx_config_clear(&cfg);
		return summary(&c);
	}
	for (size_t i = 0; i < cfg.n_backends; i++) {
		struct probe *p = &probes[i];
		*p = (struct probe){.cfg = &cfg.backends[i], .cgroup_driver = DRIVER_UNKNOWN};
		p->docker = streq(p->cfg->type, "docker");
		if (p->docker) {
			probe_docker(&c, p);
			if (p->up)
				check_docker_cni(&c, p);
		} else {
			probe_cri(&c, p, cfg.socket_path);
		}
		if (p->up && !p->runtime_name) {
			finding(&c, CHECK_FAIL, "out of memory");
			p->up = false;
		}
	}

	bool needs_kvm = false;
	char kata_handlers[512] = "";
	for (size_t i = 0; i < cfg.n_handlers; i++) {
		const struct crx_handler_config *h = &cfg.handlers[i];
		const struct probe *p = NULL;
		for (size_t j = 0; j < cfg.n_backends && !p; j++)
			if (streq(probes[j].cfg->name, h->backend))
				p = &probes[j];
		bool kvm = false;
		check_handler(&c, h, p, &kvm);
		if (kvm) {
			size_t used = strlen(kata_handlers);
			snprintf(kata_handlers + used, sizeof(kata_handlers) - used, "%s%s",
				 used ? ", " : "", h->name);
		}
		needs_kvm |= kvm;
	}
	if (cfg.n_handlers == 0 && probes[0].up) {
		/* Handlers pass through unchanged: what pods get without a
		 * RuntimeClass is the backend's default runtime. */
		const char *def = json_str(json_path(probes[0].config, "containerd", NULL),
					   "defaultRuntimeName");
		struct crx_handler_config pods = {
			.name = (char *)"(default)",
			.backend = probes[0].cfg->name,
			.runtime_handler = (char *)def,
			.where = (char *)config_path,
		};
		if (probes[0].docker) {
			def = crx_backend_option(probes[0].cfg, "runtime_handler");
			pods.runtime_handler = (char *)(def ? def : DOCKER_DEFAULT_HANDLER);
		}
		if (pods.runtime_handler) {
			check_handler(&c, &pods, &probes[0], &needs_kvm);
			if (needs_kvm)
				snprintf(kata_handlers, sizeof(kata_handlers), "the default");
		}
	}
	if (needs_kvm)
		check_kvm(&c, kata_handlers);
	check_cgroup_drivers(&c, probes, cfg.n_backends);
	check_socket(&c, &cfg);

	for (size_t i = 0; i < cfg.n_backends; i++)
		probe_clear(&probes[i]);
	free(probes);
	crx_config_clear(&cfg);
	return summary(&c);
}
