#include "config.h"

#include "runtimes/docker/model/spec.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ftw.h>
#include <sys/stat.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/names.h"

/* Adds an array of strings under key; nothing for n == 0. */
static int add_strv(json_object *o, const char *key, char *const *v, size_t n)
{
	if (n == 0)
		return 0;
	json_object *a = json_object_new_array();
	if (dk_json_add(o, key, a) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (dk_json_append_str(a, v[i]) < 0)
			return -ENOMEM;
	return 0;
}

static int append_opt(json_object *host, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int append_opt(json_object *host, const char *fmt, ...)
{
	json_object *opts = dk_json_get(host, "SecurityOpt", NULL);
	if (!opts) {
		opts = json_object_new_array();
		if (dk_json_add(host, "SecurityOpt", opts) < 0)
			return -ENOMEM;
	}
	_cleanup_free_ char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	return dk_json_append_str(opts, s);
}

/* The capabilities Docker 20.10 knows, by number (it refuses PERFMON, BPF
 * and CHECKPOINT_RESTORE). */
static const char *const cap_names[] = {
	"CHOWN",
	"DAC_OVERRIDE",
	"DAC_READ_SEARCH",
	"FOWNER",
	"FSETID",
	"KILL",
	"SETGID",
	"SETUID",
	"SETPCAP",
	"LINUX_IMMUTABLE",
	"NET_BIND_SERVICE",
	"NET_BROADCAST",
	"NET_ADMIN",
	"NET_RAW",
	"IPC_LOCK",
	"IPC_OWNER",
	"SYS_MODULE",
	"SYS_RAWIO",
	"SYS_CHROOT",
	"SYS_PTRACE",
	"SYS_PACCT",
	"SYS_ADMIN",
	"SYS_BOOT",
	"SYS_NICE",
	"SYS_RESOURCE",
	"SYS_TIME",
	"SYS_TTY_CONFIG",
	"MKNOD",
	"LEASE",
	"AUDIT_WRITE",
	"AUDIT_CONTROL",
	"SETFCAP",
	"MAC_OVERRIDE",
	"MAC_ADMIN",
	"SYSLOG",
	"WAKE_ALARM",
	"BLOCK_SUSPEND",
	"AUDIT_READ",
};

const char *dk_cap_name(unsigned n)
{
	return n < ARRAY_SIZE(cap_names) ? cap_names[n] : NULL;
}

/* The capabilities of the bounding set, by name. */
static int add_bounding_caps(json_object *arr, uint64_t set)
{
	for (unsigned i = 0; i < ARRAY_SIZE(cap_names); i++)
		if ((set & (1ULL << i)) && dk_json_append_str(arr, cap_names[i]) < 0)
			return -ENOMEM;
	return 0;
}

static int add_device(const char *path, const struct stat *st, int flag, struct FTW *ftw);
static _Thread_local json_object *walk_devices;

/* Every device node of the host, as Docker's privileged mode adds them. */
static int add_device(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	const char *base = path + ftw->base;
	if (flag == FTW_D && ftw->level == 1 &&
	    (streq(base, "pts") || streq(base, "shm") || streq(base, "fd") ||
	     streq(base, "mqueue")))
		return FTW_SKIP_SUBTREE;
	if (!S_ISCHR(st->st_mode) && !S_ISBLK(st->st_mode))
		return FTW_CONTINUE;
	if (streq(path, "/dev/console") || streq(path, "/dev/ptmx") || streq(path, "/dev/tty"))
		return FTW_CONTINUE;
	json_object *e = json_object_new_object();
	if (!e || json_object_array_add(walk_devices, e) < 0 ||
	    dk_json_add_str(e, "PathOnHost", path) < 0 ||
	    dk_json_add_str(e, "PathInContainer", path) < 0 ||
	    dk_json_add_str(e, "CgroupPermissions", "rwm") < 0)
		return FTW_STOP;
	return FTW_CONTINUE;
}

/* Privileged, where the kernel lets Docker's privileged mode work; else
 * its parts: every capability crimux may hand out, every device, no
 * seccomp, AppArmor, SELinux labels or masked paths. What cannot be had
 * this way is a writable /sys. */
static int privileged(json_object *host, const struct dk_spec_opts *o, struct crx_err *err)
{
	if (!o->caps_restricted)
		return dk_json_add_bool(host, "Privileged", true) < 0
			       ? crx_err_set(err, -ENOMEM, "out of memory")
			       : 0;
	json_object *caps = json_object_new_array(), *rules = json_object_new_array();
	json_object *devices = dk_json_get(host, "Devices", NULL);
	if (!devices) {
		devices = json_object_new_array();
		if (dk_json_add(host, "Devices", devices) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	int r = dk_json_add(host, "CapAdd", caps);
	r |= add_bounding_caps(caps, o->cap_bounding);
	r |= dk_json_add(host, "DeviceCgroupRules", rules);
	r |= dk_json_append_str(rules, "a *:* rwm");
	r |= dk_json_add(host, "MaskedPaths", json_object_new_array());
	r |= dk_json_add(host, "ReadonlyPaths", json_object_new_array());
	r |= append_opt(host, "seccomp=unconfined");
	r |= append_opt(host, "apparmor=unconfined");
	r |= append_opt(host, "label=disable");
	if (r)
		return crx_err_set(err, -ENOMEM, "out of memory");
	walk_devices = devices;
	r = nftw("/dev", add_device, 16, FTW_PHYS | FTW_ACTIONRETVAL);
	walk_devices = NULL;
	return r == FTW_STOP ? crx_err_set(err, -ENOMEM, "out of memory") : 0;
}

int dk_clamp_oom_score_adj(int64_t value, int min)
{
	if (value > 1000)
		value = 1000;
	if (value < -1000)
		value = -1000;
	if (min != INT_MIN && value < min)
		value = min;
	return (int)value;
}

int dk_cgroup_parent(const char *driver, const char *parent, char **out, struct crx_err *err)
{
	*out = NULL;
	if (!parent || !*parent)
		return 0;
	if (!streq(driver, "systemd")) {
		if (!(*out = strdup(parent)))
			return crx_err_set(err, -ENOMEM, "out of memory");
		return 0;
	}
	/* The kubelet with the systemd driver sends the full slice path
	 * ("/kubepods.slice/kubepods-burstable.slice/...-pod1.slice"); Docker
	 * wants only the last slice. */
	const char *base = strrchr(parent, '/');
	base = base ? base + 1 : parent;
	size_t blen = strlen(base);
	if (blen > 6 && streq(base + blen - 6, ".slice")) {
		if (!(*out = strdup(base)))
			return crx_err_set(err, -ENOMEM, "out of memory");
		return 0;
	}
	/* A cgroupfs-style path: each level's name prefixed by its parents',
	 * with '-' escaped as '_' the way the kubelet does. */
	size_t cap = strlen(parent) + 8;
	char *s = malloc(cap), *o = s;
	if (!s)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (const char *p = parent; *p; p++) {
		if (*p == '/') {
			if (o != s && o[-1] != '-')
				*o++ = '-';
			continue;
		}
		*o++ = *p == '-' ? '_' : *p;
	}
	while (o != s && o[-1] == '-')
		o--;
	if (o == s) {
		free(s);
		return 0; /* "/" */
	}
	strcpy(o, ".slice");
	*out = s;
	return 0;
}

static const struct {
	Runtime__V1__Signal cri;
	int signo;
} signals[] = {
	{RUNTIME__V1__SIGNAL__SIGABRT, SIGABRT},     {RUNTIME__V1__SIGNAL__SIGALRM, SIGALRM},
	{RUNTIME__V1__SIGNAL__SIGBUS, SIGBUS},       {RUNTIME__V1__SIGNAL__SIGCHLD, SIGCHLD},
	{RUNTIME__V1__SIGNAL__SIGCLD, SIGCHLD},      {RUNTIME__V1__SIGNAL__SIGCONT, SIGCONT},
	{RUNTIME__V1__SIGNAL__SIGFPE, SIGFPE},       {RUNTIME__V1__SIGNAL__SIGHUP, SIGHUP},
	{RUNTIME__V1__SIGNAL__SIGILL, SIGILL},       {RUNTIME__V1__SIGNAL__SIGINT, SIGINT},
	{RUNTIME__V1__SIGNAL__SIGIO, SIGIO},         {RUNTIME__V1__SIGNAL__SIGIOT, SIGABRT},
	{RUNTIME__V1__SIGNAL__SIGKILL, SIGKILL},     {RUNTIME__V1__SIGNAL__SIGPIPE, SIGPIPE},
	{RUNTIME__V1__SIGNAL__SIGPOLL, SIGIO},       {RUNTIME__V1__SIGNAL__SIGPROF, SIGPROF},
	{RUNTIME__V1__SIGNAL__SIGPWR, SIGPWR},       {RUNTIME__V1__SIGNAL__SIGQUIT, SIGQUIT},
	{RUNTIME__V1__SIGNAL__SIGSEGV, SIGSEGV},     {RUNTIME__V1__SIGNAL__SIGSTKFLT, SIGSTKFLT},
	{RUNTIME__V1__SIGNAL__SIGSTOP, SIGSTOP},     {RUNTIME__V1__SIGNAL__SIGSYS, SIGSYS},
	{RUNTIME__V1__SIGNAL__SIGTERM, SIGTERM},     {RUNTIME__V1__SIGNAL__SIGTRAP, SIGTRAP},
	{RUNTIME__V1__SIGNAL__SIGTSTP, SIGTSTP},     {RUNTIME__V1__SIGNAL__SIGTTIN, SIGTTIN},
	{RUNTIME__V1__SIGNAL__SIGTTOU, SIGTTOU},     {RUNTIME__V1__SIGNAL__SIGURG, SIGURG},
	{RUNTIME__V1__SIGNAL__SIGUSR1, SIGUSR1},     {RUNTIME__V1__SIGNAL__SIGUSR2, SIGUSR2},
	{RUNTIME__V1__SIGNAL__SIGVTALRM, SIGVTALRM}, {RUNTIME__V1__SIGNAL__SIGWINCH, SIGWINCH},
	{RUNTIME__V1__SIGNAL__SIGXCPU, SIGXCPU},     {RUNTIME__V1__SIGNAL__SIGXFSZ, SIGXFSZ},
};

int dk_signal_number(Runtime__V1__Signal s)
{
	if (s == RUNTIME__V1__SIGNAL__RUNTIME_DEFAULT)
		return 0;
	for (size_t i = 0; i < ARRAY_SIZE(signals); i++)
		if (signals[i].cri == s)
			return signals[i].signo;
	/* SIGRTMIN .. SIGRTMIN+15, then SIGRTMAX-14 .. SIGRTMAX. */
	if (s >= RUNTIME__V1__SIGNAL__SIGRTMIN && s <= RUNTIME__V1__SIGNAL__SIGRTMINPLUS15)
		return SIGRTMIN + (int)(s - RUNTIME__V1__SIGNAL__SIGRTMIN);
	if (s >= RUNTIME__V1__SIGNAL__SIGRTMAXMINUS14 && s <= RUNTIME__V1__SIGNAL__SIGRTMAX)
		return SIGRTMAX - (int)(RUNTIME__V1__SIGNAL__SIGRTMAX - s);
	return -1;
}

Runtime__V1__Signal dk_signal_from_number(int signo)
{
	if (signo <= 0)
		return RUNTIME__V1__SIGNAL__RUNTIME_DEFAULT;
	for (size_t i = 0; i < ARRAY_SIZE(signals); i++)
		if (signals[i].signo == signo)
			return signals[i].cri;
	if (signo >= SIGRTMIN && signo <= SIGRTMIN + 15)
		return (Runtime__V1__Signal)(RUNTIME__V1__SIGNAL__SIGRTMIN + (signo - SIGRTMIN));
	if (signo >= SIGRTMAX - 14 && signo <= SIGRTMAX)
		return (Runtime__V1__Signal)(RUNTIME__V1__SIGNAL__SIGRTMAX - (SIGRTMAX - signo));
	return RUNTIME__V1__SIGNAL__RUNTIME_DEFAULT;
}

int dk_resources_json(const Runtime__V1__LinuxContainerResources *r, const struct dk_spec_opts *o,
		      json_object *obj, struct crx_err *err)
{
	if (!r)
		return 0;
	int ret = 0;
	if (r->cpu_shares)
		ret |= dk_json_add_int(obj, "CpuShares", r->cpu_shares);
	if (r->cpu_period)
		ret |= dk_json_add_int(obj, "CpuPeriod", r->cpu_period);
	if (r->cpu_quota)
		ret |= dk_json_add_int(obj, "CpuQuota", r->cpu_quota);
	if (r->cpuset_cpus && *r->cpuset_cpus)
		ret |= dk_json_add_str(obj, "CpusetCpus", r->cpuset_cpus);
	if (r->cpuset_mems && *r->cpuset_mems)
		ret |= dk_json_add_str(obj, "CpusetMems", r->cpuset_mems);
	if (r->memory_limit_in_bytes) {
		ret |= dk_json_add_int(obj, "Memory", r->memory_limit_in_bytes);
		/* No swap unless asked for, as containerd's CRI does: Docker's
		 * own default would double the limit with swap. */
		ret |= dk_json_add_int(obj, "MemorySwap",
				       r->memory_swap_limit_in_bytes ? r->memory_swap_limit_in_bytes
								     : r->memory_limit_in_bytes);
	}
	if (r->oom_score_adj)
		ret |= dk_json_add_int(
			obj, "OomScoreAdj",
			dk_clamp_oom_score_adj(r->oom_score_adj, o->oom_score_adj_min));
	/* hugepage_limits and unified have no Docker 20.10 field: the kubelet
	 * sends zero hugepage limits for every pod, so they are not refused. */
	return ret ? crx_err_set(err, -ENOMEM, "out of memory") : 0;
}

/* SecurityOpt for a seccomp profile: nothing (Docker's default), unconfined,
 * or the profile file's JSON, which Docker takes inline. */
static int seccomp_opt(json_object *host, const Runtime__V1__SecurityProfile *p, const char *legacy,
		       struct crx_err *err)
{
	const char *path = NULL;
	if (p) {
		switch (p->profile_type) {
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__RuntimeDefault:
			return 0;
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__Unconfined:
			return append_opt(host, "seccomp=unconfined") < 0
				       ? crx_err_set(err, -ENOMEM, "out of memory")
				       : 0;
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__Localhost:
			path = p->localhost_ref;
			break;
		default:
			return crx_err_set(err, -EINVAL, "unknown seccomp profile type %d",
					   (int)p->profile_type);
		}
	} else if (legacy &&
		   (streq(legacy, "runtime/default") || streq(legacy, "docker/default"))) {
		return 0;
	} else if (legacy && strncmp(legacy, "localhost/", 10) == 0) {
		path = legacy + 9; /* keeps the leading '/' of the absolute path */
	} else if (legacy && *legacy && !streq(legacy, "unconfined")) {
		return crx_err_set(err, -EINVAL, "unknown seccomp profile \"%s\"", legacy);
	} else {
		/* Nothing asked: unconfined, as the kubelet's dockershim and
		 * containerd's CRI do. */
		return append_opt(host, "seccomp=unconfined") < 0
			       ? crx_err_set(err, -ENOMEM, "out of memory")
			       : 0;
	}
	if (!path || path[0] != '/')
		return crx_err_set(err, -EINVAL, "seccomp profile path \"%s\" is not absolute",
				   path ? path : "");
	_cleanup_json_ json_object *profile = NULL;
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f)
		return crx_err_set(err, -errno, "cannot read seccomp profile %s: %s", path,
				   strerror(errno));
	char buf[65536];
	size_t n = fread(buf, 1, sizeof(buf), f);
	if (n == sizeof(buf))
		return crx_err_set(err, -EFBIG, "seccomp profile %s is too large", path);
	int r = dk_json_parse(buf, n, &profile, err);
	if (r < 0)
		return crx_err_prefix(err, "seccomp profile %s", path);
	return append_opt(host, "seccomp=%s", dk_json_text(profile)) < 0
		       ? crx_err_set(err, -ENOMEM, "out of memory")
		       : 0;
}

static int apparmor_opt(json_object *host, const Runtime__V1__SecurityProfile *p,
			const char *legacy, struct crx_err *err)
{
	const char *name = NULL;
	if (p) {
		switch (p->profile_type) {
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__RuntimeDefault:
			return 0;
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__Unconfined:
			name = "unconfined";
			break;
		case RUNTIME__V1__SECURITY_PROFILE__PROFILE_TYPE__Localhost:
			name = p->localhost_ref;
			break;
		default:
			return crx_err_set(err, -EINVAL, "unknown AppArmor profile type %d",
					   (int)p->profile_type);
		}
	} else if (!legacy || !*legacy || streq(legacy, "runtime/default")) {
		return 0;
	} else if (streq(legacy, "unconfined")) {
		name = "unconfined";
	} else if (strncmp(legacy, "localhost/", 10) == 0) {
		name = legacy + 10;
	} else {
		return crx_err_set(err, -EINVAL, "unknown AppArmor profile \"%s\"", legacy);
	}
	if (!name || !*name)
		return crx_err_set(err, -EINVAL, "AppArmor localhost profile has no name");
	return append_opt(host, "apparmor=%s", name) < 0
		       ? crx_err_set(err, -ENOMEM, "out of memory")
		       : 0;
}

static int selinux_opts(json_object *host, const Runtime__V1__SELinuxOption *s)
{
	if (!s)
		return 0;
	int r = 0;
	if (s->user && *s->user)
		r |= append_opt(host, "label=user:%s", s->user);
	if (s->role && *s->role)
		r |= append_opt(host, "label=role:%s", s->role);
	if (s->type && *s->type)
		r |= append_opt(host, "label=type:%s", s->type);
	if (s->level && *s->level)
		r |= append_opt(host, "label=level:%s", s->level);
	return r ? -ENOMEM : 0;
}

/* User, GroupAdd: "uid", "name", or with a group "uid:gid". */
static int user_fields(json_object *config, json_object *host, const Runtime__V1__Int64Value *uid,
		       const char *username, const Runtime__V1__Int64Value *gid,
		       const int64_t *groups, size_t n_groups, struct crx_err *err)
{
	char user[320] = "";
	if (username && *username)
		snprintf(user, sizeof(user), "%s", username);
	else if (uid)
		snprintf(user, sizeof(user), "%" PRId64, uid->value);
	if (gid) {
		if (!*user)
			return crx_err_set(
				err, -EINVAL,
				"run_as_group is set without run_as_user or run_as_username");
		size_t l = strlen(user);
		snprintf(user + l, sizeof(user) - l, ":%" PRId64, gid->value);
	}
	if (*user && dk_json_add_str(config, "User", user) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	if (n_groups) {
		json_object *a = json_object_new_array();
		if (dk_json_add(host, "GroupAdd", a) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		for (size_t i = 0; i < n_groups; i++) {
			char g[24];
			snprintf(g, sizeof(g), "%" PRId64, groups[i]);
			if (dk_json_append_str(a, g) < 0)
				return crx_err_set(err, -ENOMEM, "out of memory");
		}
	}
	return 0;
}

/* A name as the kubelet allows it: dot- or slash-separated parts of
 * [a-z0-9] with inner '-' and '_'. */
static bool sysctl_name_ok(const char *k)
{
	size_t n = strlen(k);
	if (n == 0 || n > 253)
		return false;
	for (const char *p = k;;) {
		size_t len = strcspn(p, "./");
		if (len == 0)
			return false;
		for (size_t i = 0; i < len; i++) {
			char c = p[i];
			bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
			if (!alnum && ((c != '-' && c != '_') || i == 0 || i == len - 1))
				return false;
		}
		if (!p[len])
			return true;
		p += len + 1;
	}
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

int dk_sysctl_check(const char *key, const char *value, bool host_net, bool host_ipc,
		    struct crx_err *err)
{
	if (!key || !sysctl_name_ok(key))
		return crx_err_set(err, -EINVAL, "sysctl name \"%s\" is not valid", key ? key : "");
	/* '+' and '=' once let one value set other sysctls (CVE-2022-0811);
	 * a newline would end the value early. */
	for (const char *p = value ? value : ""; *p; p++)
		if (*p == '+' || *p == '=' || (unsigned char)*p < 0x20 || *p == 0x7f)
			return crx_err_set(err, -EINVAL,
					   "sysctl %s: the value holds '+', '=' or a control "
					   "character",
					   key);
	/* Only sysctls of the pod's own namespaces: the rest are the node's. */
	char name[256];
	snprintf(name, sizeof(name), "%s", key);
	for (char *p = name; *p; p++)
		if (*p == '/')
			*p = '.';
	if (has_prefix(name, "net.")) {
		if (host_net)
			return crx_err_set(err, -EINVAL,
					   "sysctl %s is the node's: the pod uses the host network",
					   key);
		return 0;
	}
	if (streq(name, "kernel.sem") || has_prefix(name, "kernel.shm") ||
	    has_prefix(name, "kernel.msg") || has_prefix(name, "fs.mqueue.")) {
		if (host_ipc)
			return crx_err_set(err, -EINVAL,
					   "sysctl %s is the node's: the pod uses the host IPC "
					   "namespace",
					   key);
		return 0;
	}
	return crx_err_set(err, -EINVAL,
			   "sysctl %s is not namespaced: setting it would change the node", key);
}

static int add_labels(json_object *config, json_object **labels_out)
{
	json_object *labels = json_object_new_object();
	if (dk_json_add(config, "Labels", labels) < 0)
		return -ENOMEM;
	*labels_out = labels;
	return 0;
}

static int add_created(json_object *labels, int64_t ns)
{
	char v[24];
	snprintf(v, sizeof(v), "%" PRId64, ns);
	return dk_json_add_str(labels, DK_LABEL_CREATED, v);
}

int dk_sandbox_spec(const Runtime__V1__PodSandboxConfig *cfg, const char *image,
		    const struct dk_spec_opts *o, json_object **out, struct crx_err *err)
{
	const Runtime__V1__PodSandboxMetadata *md = cfg->metadata;
	if (!md)
		return crx_err_set(err, -EINVAL, "sandbox config has no metadata");
	int lr = dk_labels_check_cri("sandbox", cfg->n_labels, (void *const *)cfg->labels, err);
	if (lr < 0)
		return lr;
	const Runtime__V1__LinuxPodSandboxConfig *lc = cfg->linux;
	const Runtime__V1__LinuxSandboxSecurityContext *sc = lc ? lc->security_context : NULL;
	const Runtime__V1__NamespaceOption *ns = sc ? sc->namespace_options : NULL;
	bool host_net = ns && ns->network == RUNTIME__V1__NAMESPACE_MODE__NODE;

	if (ns && ns->userns_options &&
	    ns->userns_options->mode != RUNTIME__V1__NAMESPACE_MODE__NODE)
		return crx_err_set(err, -EOPNOTSUPP,
				   "user namespaces are not supported by the docker runtime");

	_cleanup_json_ json_object *c = json_object_new_object();
	json_object *host = json_object_new_object(), *labels = NULL;
	if (!c || dk_json_add(c, "HostConfig", host) < 0 || add_labels(c, &labels) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	_cleanup_free_ char *meta = dk_meta_label(md->name, md->uid, md->namespace_, md->attempt);
	int r = dk_json_add_str(c, "Image", image);
	if (!host_net && cfg->hostname && *cfg->hostname)
		r |= dk_json_add_str(c, "Hostname", cfg->hostname);
	r |= dk_labels_add_cri(labels, cfg->n_labels, (void *const *)cfg->labels,
			       cfg->n_annotations, (void *const *)cfg->annotations);
	r |= dk_json_add_str(labels, DK_LABEL_TYPE, DK_TYPE_SANDBOX);
	r |= meta ? dk_json_add_str(labels, DK_LABEL_METADATA, meta) : -ENOMEM;
	if (o->runtime_handler && *o->runtime_handler)
		r |= dk_json_add_str(labels, DK_LABEL_HANDLER, o->runtime_handler);
	r |= add_created(labels, o->created_ns);
	r |= dk_labels_reserve(labels);

	/* CNI provides the network; the IPC namespace is shared with the pod. */
	r |= dk_json_add_str(host, "NetworkMode", host_net ? "host" : "none");
	r |= dk_json_add_str(host, "IpcMode",
			     ns && ns->ipc == RUNTIME__V1__NAMESPACE_MODE__NODE ? "host"
										: "shareable");
	if (ns && ns->pid == RUNTIME__V1__NAMESPACE_MODE__NODE)
		r |= dk_json_add_str(host, "PidMode", "host");
	if (host_net)
		r |= dk_json_add_str(host, "UTSMode", "host");
	/* The pause container writes nothing worth keeping. */
	json_object *logc = json_object_new_object();
	r |= dk_json_add(host, "LogConfig", logc);
	if (logc)
		r |= dk_json_add_str(logc, "Type", "none");
	r |= dk_json_add_int(host, "CpuShares", DK_SANDBOX_CPU_SHARES);
	r |= dk_json_add_int(
		host, "OomScoreAdj",
		dk_clamp_oom_score_adj(DK_SANDBOX_OOM_SCORE_ADJ, o->oom_score_adj_min));
	if (r)
		return crx_err_set(err, -ENOMEM, "out of memory");

	if (lc) {
		_cleanup_free_ char *parent = NULL;
		r = dk_cgroup_parent(o->cgroup_driver, lc->cgroup_parent, &parent, err);
		if (r < 0)
			return r;
		if (parent && dk_json_add_str(host, "CgroupParent", parent) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	/* Docker turns IPv6 off in a container it has no IPv6 network for;
	 * a pod's namespace keeps it, as in containerd (loopback ::1, and the
	 * CNI plugin's IPv6 addresses). The pod's own sysctls come after. */
	json_object *sysctls = json_object_new_object();
	if (!sysctls || dk_json_add(host, "Sysctls", sysctls) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	if (!host_net && dk_json_add_str(sysctls, "net.ipv6.conf.all.disable_ipv6", "0") < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	bool host_ipc = ns && ns->ipc == RUNTIME__V1__NAMESPACE_MODE__NODE;
	for (size_t i = 0; lc && i < lc->n_sysctls; i++) {
		const char *k = lc->sysctls[i]->key, *v = lc->sysctls[i]->value;
		r = dk_sysctl_check(k, v, host_net, host_ipc, err);
		if (r < 0)
			return r;
		if (dk_json_add_str(sysctls, k, v) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	if (sc) {
		if (sc->supplemental_groups_policy ==
		    RUNTIME__V1__SUPPLEMENTAL_GROUPS_POLICY__Strict)
			return crx_err_set(
				err, -EOPNOTSUPP,
				"supplemental_groups_policy Strict is not supported by "
				"the docker runtime (Docker always adds the image's groups)");
		r = user_fields(c, host, sc->run_as_user, NULL, sc->run_as_group,
				sc->supplemental_groups, sc->n_supplemental_groups, err);
		if (r < 0)
			return r;
		if (dk_json_add_bool(host, "ReadonlyRootfs", sc->readonly_rootfs) < 0 ||
		    selinux_opts(host, sc->selinux_options) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		if (sc->privileged && (r = privileged(host, o, err)) < 0)
			return r;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		const char *legacy_seccomp = sc->seccomp_profile_path;
#pragma GCC diagnostic pop
		if (!sc->privileged) {
			r = seccomp_opt(host, sc->seccomp, legacy_seccomp, err);
			if (r == 0)
				r = apparmor_opt(host, sc->apparmor, NULL, err);
			if (r < 0)
				return r;
		}
	} else if (seccomp_opt(host, NULL, NULL, err) < 0) {
		return err ? err->code : -ENOMEM;
	}
	*out = TAKE_PTR(c);
	return 0;
}

static int add_mounts(json_object *host, const Runtime__V1__ContainerConfig *cfg,
		      struct crx_err *err)
{
	if (cfg->n_mounts == 0)
		return 0;
	json_object *mounts = json_object_new_array();
	if (dk_json_add(host, "Mounts", mounts) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		const Runtime__V1__Mount *m = cfg->mounts[i];
		if (m->image && m->image->image && *m->image->image)
			return crx_err_set(err, -EOPNOTSUPP,
					   "image volumes are not supported by the docker runtime");
		if (m->n_uidmappings || m->n_gidmappings)
			return crx_err_set(
				err, -EOPNOTSUPP,
				"ID-mapped mounts are not supported by the docker runtime");
		if (m->recursive_read_only)
			return crx_err_set(err, -EOPNOTSUPP,
					   "recursive read-only mounts need Docker "
					   "25 or later; this is API 1.41");
		if (!m->container_path || m->container_path[0] != '/')
			return crx_err_set(err, -EINVAL,
					   "mount container_path \"%s\" is not absolute",
					   m->container_path ? m->container_path : "");
		if (!m->host_path || !*m->host_path)
			return crx_err_set(err, -EINVAL, "mount for %s has no host_path",
					   m->container_path);
		/* The CRI follows symbolic links and wants a missing source to
		 * be an error (Docker would create a directory). */
		_cleanup_free_ char *src = realpath(m->host_path, NULL);
		if (!src)
			return crx_err_set(err, errno == ENOENT ? -ENOENT : -errno,
					   "mount source %s: %s", m->host_path, strerror(errno));
		const char *prop =
			m->propagation == RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_BIDIRECTIONAL
				? "rshared"
			: m->propagation ==
					RUNTIME__V1__MOUNT_PROPAGATION__PROPAGATION_HOST_TO_CONTAINER
				? "rslave"
				: "rprivate";
		json_object *e = json_object_new_object();
		json_object *bind = json_object_new_object();
		if (json_object_array_add(mounts, e) < 0 ||
		    dk_json_add_str(e, "Type", "bind") < 0 ||
		    dk_json_add_str(e, "Source", src) < 0 ||
		    dk_json_add_str(e, "Target", m->container_path) < 0 ||
		    dk_json_add_bool(e, "ReadOnly", m->readonly) < 0 ||
		    dk_json_add(e, "BindOptions", bind) < 0 ||
		    dk_json_add_str(bind, "Propagation", prop) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		/* SELinux relabeling (":Z") exists only for Binds; on a host without
		 * SELinux there is nothing to relabel. */
	}
	return 0;
}

static int add_devices(json_object *host, const Runtime__V1__ContainerConfig *cfg,
		       struct crx_err *err)
{
	if (cfg->n_cdi_devices)
		return crx_err_set(err, -EOPNOTSUPP,
				   "CDI devices are not supported by the docker "
				   "runtime");
	if (cfg->n_devices == 0)
		return 0;
	/* Privileged containers may have a list already. */
	json_object *devs = dk_json_get(host, "Devices", NULL);
	if (!devs) {
		devs = json_object_new_array();
		if (dk_json_add(host, "Devices", devs) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const Runtime__V1__Device *d = cfg->devices[i];
		json_object *e = json_object_new_object();
		if (json_object_array_add(devs, e) < 0 ||
		    dk_json_add_str(e, "PathOnHost", d->host_path) < 0 ||
		    dk_json_add_str(e, "PathInContainer", d->container_path) < 0 ||
		    dk_json_add_str(e, "CgroupPermissions",
				    d->permissions && *d->permissions ? d->permissions : "rwm") < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

static int add_namespaces(json_object *host, const Runtime__V1__NamespaceOption *ns,
			  const char *sandbox_id, struct crx_err *err)
{
	char joined[160];
	snprintf(joined, sizeof(joined), "container:%s", sandbox_id);
	int r = dk_json_add_str(host, "NetworkMode", joined);
	r |= dk_json_add_str(host, "IpcMode",
			     ns && ns->ipc == RUNTIME__V1__NAMESPACE_MODE__NODE ? "host" : joined);
	if (ns && ns->network == RUNTIME__V1__NAMESPACE_MODE__NODE)
		r |= dk_json_add_str(host, "UTSMode", "host");
	switch (ns ? ns->pid : RUNTIME__V1__NAMESPACE_MODE__CONTAINER) {
	case RUNTIME__V1__NAMESPACE_MODE__NODE:
		r |= dk_json_add_str(host, "PidMode", "host");
		break;
	case RUNTIME__V1__NAMESPACE_MODE__POD:
		r |= dk_json_add_str(host, "PidMode", joined);
		break;
	case RUNTIME__V1__NAMESPACE_MODE__TARGET: {
		if (!dk_valid_id(ns->target_id))
			return crx_err_set(err, -EINVAL,
					   "PID namespace mode TARGET needs a valid "
					   "target_id");
		char target[160];
		snprintf(target, sizeof(target), "container:%s", ns->target_id);
		r |= dk_json_add_str(host, "PidMode", target);
		break;
	}
	default:
		break; /* CONTAINER: a namespace of its own */
	}
	if (ns && ns->userns_options &&
	    ns->userns_options->mode != RUNTIME__V1__NAMESPACE_MODE__NODE)
		return crx_err_set(err, -EOPNOTSUPP,
				   "user namespaces are not supported by the docker runtime");
	return r ? crx_err_set(err, -ENOMEM, "out of memory") : 0;
}

static int add_security(json_object *c, json_object *host,
			const Runtime__V1__LinuxContainerSecurityContext *sc,
			const struct dk_spec_opts *o, struct crx_err *err)
{
	if (!sc)
		return seccomp_opt(host, NULL, NULL, err);
	if (sc->supplemental_groups_policy == RUNTIME__V1__SUPPLEMENTAL_GROUPS_POLICY__Strict)
		return crx_err_set(
			err, -EOPNOTSUPP,
			"supplemental_groups_policy Strict is not supported by the docker "
			"runtime (Docker always adds the image's groups)");
	int r = user_fields(c, host, sc->run_as_user, sc->run_as_username, sc->run_as_group,
			    sc->supplemental_groups, sc->n_supplemental_groups, err);
	if (r < 0)
		return r;
	if (dk_json_add_bool(host, "ReadonlyRootfs", sc->readonly_rootfs) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	const Runtime__V1__Capability *caps = sc->capabilities;
	if (sc->privileged) {
		r = privileged(host, o, err);
		if (r < 0)
			return r;
	} else if (caps) {
		if (caps->n_add_ambient_capabilities)
			return crx_err_set(err, -EOPNOTSUPP,
					   "ambient capabilities are not supported "
					   "by the docker runtime");
		json_object *add = json_object_new_array();
		if (dk_json_add(host, "CapAdd", add) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		for (size_t i = 0; i < caps->n_add_capabilities; i++) {
			/* "ALL" means what may be had where the bounding set is short. */
			const char *cap = caps->add_capabilities[i];
			r = o->caps_restricted && strcasecmp(cap, "ALL") == 0
				    ? add_bounding_caps(add, o->cap_bounding)
				    : dk_json_append_str(add, cap);
			if (r < 0)
				return crx_err_set(err, -ENOMEM, "out of memory");
		}
		if (add_strv(host, "CapDrop", caps->drop_capabilities, caps->n_drop_capabilities) <
		    0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	}
	if (sc->no_new_privs && append_opt(host, "no-new-privileges") < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	if (selinux_opts(host, sc->selinux_options) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	if (sc->privileged)
		return 0; /* no seccomp, AppArmor or masks for privileged */
	/* Empty lists mean Docker's defaults (the kubelet always sends its
	 * defaults explicitly). */
	if (add_strv(host, "MaskedPaths", sc->masked_paths, sc->n_masked_paths) < 0 ||
	    add_strv(host, "ReadonlyPaths", sc->readonly_paths, sc->n_readonly_paths) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
	const char *legacy_seccomp = sc->seccomp_profile_path;
	const char *legacy_apparmor = sc->apparmor_profile;
#pragma GCC diagnostic pop
	r = seccomp_opt(host, sc->seccomp, legacy_seccomp, err);
	if (r == 0)
		r = apparmor_opt(host, sc->apparmor, legacy_apparmor, err);
	return r;
}

int dk_container_spec(const Runtime__V1__ContainerConfig *cfg, const struct dk_container_ctx *ctx,
		      const struct dk_spec_opts *o, json_object **out, struct crx_err *err)
{
	if (!cfg->metadata || !cfg->metadata->name || !*cfg->metadata->name)
		return crx_err_set(err, -EINVAL, "container config has no metadata.name");
	if (!cfg->image || !cfg->image->image || !*cfg->image->image)
		return crx_err_set(err, -EINVAL, "container config has no image");
	int lr = dk_labels_check_cri("container", cfg->n_labels, (void *const *)cfg->labels, err);
	if (lr < 0)
		return lr;

	_cleanup_json_ json_object *c = json_object_new_object();
	json_object *host = json_object_new_object(), *labels = NULL;
	if (!c || dk_json_add(c, "HostConfig", host) < 0 || add_labels(c, &labels) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");

	_cleanup_free_ char *meta =
		dk_meta_label(cfg->metadata->name, NULL, NULL, cfg->metadata->attempt);
	int r = dk_json_add_str(c, "Image", cfg->image->image);
	r |= add_strv(c, "Entrypoint", cfg->command, cfg->n_command);
	r |= add_strv(c, "Cmd", cfg->args, cfg->n_args);
	if (cfg->working_dir && *cfg->working_dir)
		r |= dk_json_add_str(c, "WorkingDir", cfg->working_dir);
	if (cfg->n_envs) {
		json_object *env = json_object_new_array();
		r |= dk_json_add(c, "Env", env);
		for (size_t i = 0; env && i < cfg->n_envs; i++) {
			_cleanup_free_ char *kv = NULL;
			if (asprintf(&kv, "%s=%s", cfg->envs[i]->key, cfg->envs[i]->value) < 0)
				return crx_err_set(err, -ENOMEM, "out of memory");
			r |= dk_json_append_str(env, kv);
		}
	}
	r |= dk_json_add_bool(c, "Tty", cfg->tty);
	r |= dk_json_add_bool(c, "OpenStdin", cfg->stdin);
	r |= dk_json_add_bool(c, "StdinOnce", cfg->stdin_once);
	r |= dk_json_add_bool(c, "AttachStdin", cfg->stdin);
	r |= dk_json_add_bool(c, "AttachStdout", true);
	r |= dk_json_add_bool(c, "AttachStderr", true);
	int signo = dk_signal_number(cfg->stop_signal);
	if (signo < 0)
		return crx_err_set(err, -EINVAL, "unknown stop signal %d", (int)cfg->stop_signal);
	if (signo > 0) {
		char s[16];
		snprintf(s, sizeof(s), "%d", signo);
		r |= dk_json_add_str(c, "StopSignal", s);
	}

	r |= dk_labels_add_cri(labels, cfg->n_labels, (void *const *)cfg->labels,
			       cfg->n_annotations, (void *const *)cfg->annotations);
	r |= dk_json_add_str(labels, DK_LABEL_TYPE, DK_TYPE_CONTAINER);
	r |= dk_json_add_str(labels, DK_LABEL_SANDBOX_ID, ctx->sandbox_id);
	r |= meta ? dk_json_add_str(labels, DK_LABEL_METADATA, meta) : -ENOMEM;
	r |= add_created(labels, o->created_ns);
	if (ctx->log_path) {
		r |= dk_json_add_str(labels, DK_LABEL_LOG_PATH, ctx->log_path);
		r |= dk_json_add_str(labels, DK_LABEL_LOG_DIRECTORY, ctx->log_dir);
	}
	if (cfg->image->user_specified_image && *cfg->image->user_specified_image)
		r |= dk_json_add_str(labels, DK_LABEL_USER_IMAGE, cfg->image->user_specified_image);
	r |= dk_labels_reserve(labels);

	/* Docker keeps a json-file log that crimux turns into the CRI log
	 * file; bounded so Docker's copy does not grow without end. */
	json_object *logc = json_object_new_object(), *logopts = json_object_new_object();
	r |= dk_json_add(host, "LogConfig", logc);
	if (logc) {
		char files[16];
		snprintf(files, sizeof(files), "%u", o->log_max_files ? o->log_max_files : 1);
		r |= dk_json_add_str(logc, "Type", "json-file");
		r |= dk_json_add(logc, "Config", logopts);
		if (logopts && o->log_max_size && *o->log_max_size) {
			r |= dk_json_add_str(logopts, "max-size", o->log_max_size);
			r |= dk_json_add_str(logopts, "max-file", files);
		}
	} else if (logopts) {
		json_object_put(logopts);
	}
	if (ctx->cgroup_parent && *ctx->cgroup_parent)
		r |= dk_json_add_str(host, "CgroupParent", ctx->cgroup_parent);
	if (r)
		return crx_err_set(err, -ENOMEM, "out of memory");

	const Runtime__V1__LinuxContainerConfig *lc = cfg->linux;
	const Runtime__V1__LinuxContainerSecurityContext *sc = lc ? lc->security_context : NULL;
	r = add_namespaces(host, sc ? sc->namespace_options : NULL, ctx->sandbox_id, err);
	if (r == 0)
		r = add_security(c, host, sc, o, err);
	if (r == 0 && lc)
		r = dk_resources_json(lc->resources, o, host, err);
	if (r == 0)
		r = add_mounts(host, cfg, err);
	if (r == 0)
		r = add_devices(host, cfg, err);
	if (r < 0)
		return r;
	*out = TAKE_PTR(c);
	return 0;
}
