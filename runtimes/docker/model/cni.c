#include "config.h"

#include "runtimes/docker/model/cni.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/http.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/checkpoint.h"

extern char **environ;

#define DEFAULT_TIMEOUT_MS (120 * 1000)
#define PLUGIN_OUT_MAX     (1 * MIB)

void dk_strv_free(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

static bool valid_plugin(json_object *p, struct crx_err *err, size_t i)
{
	const char *type = dk_json_str(p, "type");
	if (!json_object_is_type(p, json_type_object) || !type || !*type) {
		crx_err_set(err, -EINVAL, "plugin %zu has no type", i);
		return false;
	}
	if (strchr(type, '/') || streq(type, ".") || streq(type, "..")) {
		crx_err_set(err, -EINVAL, "plugin type \"%s\" is not a plain name", type);
		return false;
	}
	return true;
}

int dk_cni_parse(const char *text, size_t len, bool is_list, json_object **out, struct crx_err *err)
{
	_cleanup_json_ json_object *o = NULL;
	int r = dk_json_parse(text, len, &o, err);
	if (r < 0)
		return r;
	if (!json_object_is_type(o, json_type_object))
		return crx_err_set(err, -EINVAL, "not a JSON object");
	const char *name = dk_json_str(o, "name");
	if (!name || !*name)
		return crx_err_set(err, -EINVAL, "no network name");
	if (!is_list) {
		/* A single plugin configuration becomes a list of one. */
		if (!valid_plugin(o, err, 0))
			return err ? err->code : -EINVAL;
		_cleanup_json_ json_object *list = json_object_new_object();
		json_object *plugins = json_object_new_array();
		if (!list || dk_json_add_str(list, "name", name) < 0 ||
		    dk_json_add_str(list, "cniVersion", dk_json_str(o, "cniVersion")) < 0 ||
		    dk_json_add(list, "plugins", plugins) < 0 ||
		    json_object_array_add(plugins, json_object_get(o)) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		*out = TAKE_PTR(list);
		return 0;
	}
	json_object *plugins = dk_json_get(o, "plugins", NULL);
	if (!plugins || !json_object_is_type(plugins, json_type_array) ||
	    json_object_array_length(plugins) == 0)
		return crx_err_set(err, -EINVAL, "no plugins");
	for (size_t i = 0; i < json_object_array_length(plugins); i++)
		if (!valid_plugin(json_object_array_get_idx(plugins, i), err, i))
			return err ? err->code : -EINVAL;
	*out = TAKE_PTR(o);
	return 0;
}

static int conf_filter(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	if (d->d_name[0] == '.')
		return 0;
	return (n > 9 && streq(d->d_name + n - 9, ".conflist")) ||
	       (n > 5 && streq(d->d_name + n - 5, ".conf")) ||
	       (n > 5 && streq(d->d_name + n - 5, ".json"));
}

int dk_cni_load(const char *dir, json_object **conflist, char **file, struct crx_err *err)
{
	struct dirent **names;
	int n = scandir(dir, &names, conf_filter, alphasort);
	if (n < 0)
		return crx_err_set(err, errno == ENOENT ? -ENOENT : -errno,
				   "cannot read CNI configuration directory %s: %s", dir,
				   strerror(errno));
	int r = crx_err_set(err, -ENOENT, "no network configuration in %s", dir);
	char first_error[512] = "";
	for (int i = 0; i < n; i++) {
		if (r == -ENOENT) {
			_cleanup_free_ char *path = NULL, *text = NULL;
			size_t len;
			struct crx_err e = {0};
			size_t nl = strlen(names[i]->d_name);
			bool is_list = nl > 9 && streq(names[i]->d_name + nl - 9, ".conflist");
			if (asprintf(&path, "%s/%s", dir, names[i]->d_name) < 0) {
				r = crx_err_set(err, -ENOMEM, "out of memory");
			} else if (dk_read_file(path, PLUGIN_OUT_MAX, &text, &len, &e) == 0 &&
				   dk_cni_parse(text, len, is_list, conflist, &e) == 0) {
				*file = TAKE_PTR(path);
				r = 0;
			} else if (!*first_error) {
				snprintf(first_error, sizeof(first_error), "%.200s: %.300s", path,
					 e.msg);
			}
		}
		free(names[i]);
	}
	free(names);
	if (r == -ENOENT && *first_error)
		crx_err_set(err, -ENOENT, "no valid network configuration in %s (%s)", dir,
			    first_error);
	return r;
}

/* Compares "a.b.c" versions; missing parts count as 0. */
static int version_cmp(const char *a, const char *b)
{
	for (int i = 0; i < 3; i++) {
		long x = a ? strtol(a, (char **)&a, 10) : 0;
		long y = b ? strtol(b, (char **)&b, 10) : 0;
		if (x != y)
			return x < y ? -1 : 1;
		if (a && *a == '.')
			a++;
		if (b && *b == '.')
			b++;
	}
	return 0;
}

int dk_cni_plugin_conf(json_object *conflist, size_t i, json_object *prev_result,
		       const struct dk_cni_args *a, bool del, json_object **out)
{
	json_object *plugins = dk_json_get(conflist, "plugins", NULL);
	json_object *plugin = json_object_array_get_idx(plugins, i);
	if (!plugin)
		return -EINVAL;
	_cleanup_json_ json_object *c = NULL;
	/* A deep copy: the list stays as loaded for the next plugin. */
	if (json_object_deep_copy(plugin, &c, NULL) < 0)
		return -ENOMEM;
	const char *version = dk_json_str(conflist, "cniVersion");
	int r = dk_json_add_str(c, "name", dk_json_str(conflist, "name"));
	r |= dk_json_add_str(c, "cniVersion", version ? version : "0.1.0");
	json_object_object_del(c, "prevResult");
	json_object_object_del(c, "runtimeConfig");
	/* prevResult: the previous plugin's on ADD; on DEL, ADD's result,
	 * which 0.3.x did not pass. */
	if (prev_result && (!del || version_cmp(version, "0.4.0") >= 0))
		r |= dk_json_add(c, "prevResult", json_object_get(prev_result));
	json_object *caps = dk_json_get(plugin, "capabilities", NULL);
	if (a->port_mappings && dk_json_bool(caps, "portMappings")) {
		json_object *rc = json_object_new_object();
		r |= dk_json_add(c, "runtimeConfig", rc);
		r |= dk_json_add(rc, "portMappings", json_object_get(a->port_mappings));
	}
	if (r)
		return -ENOMEM;
	*out = TAKE_PTR(c);
	return 0;
}

static int find_plugin(const char *bin_path, const char *type, char **out, struct crx_err *err)
{
	_cleanup_free_ char *copy = strdup(bin_path ? bin_path : "");
	if (!copy)
		return crx_err_set(err, -ENOMEM, "out of memory");
	char *save = NULL;
	for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char *path;
		if (asprintf(&path, "%s/%s", dir, type) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		if (access(path, X_OK) == 0) {
			*out = path;
			return 0;
		}
		free(path);
	}
	return crx_err_set(err, -ENOENT, "CNI plugin %s not found in %s", type,
			   bin_path ? bin_path : "(no path)");
}

int dk_run(const char *path, char *const argv[], char *const envp[], const char *stdin_data,
	   size_t stdin_len, size_t out_max, unsigned timeout_ms, char **out, char **errout,
	   struct crx_err *err)
{
	int in[2] = {-1, -1}, so[2] = {-1, -1}, se[2] = {-1, -1};
	int r = 0;
	/* stdin is a socket, not a pipe: a plugin that exits without reading it
	 * costs an EPIPE (MSG_NOSIGNAL), never a SIGPIPE, whatever the caller's
	 * signal disposition. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) < 0 ||
	    pipe2(so, O_CLOEXEC) < 0 || pipe2(se, O_CLOEXEC) < 0) {
		r = crx_err_set(err, -errno, "pipe: %s", strerror(errno));
		goto close_pipes;
	}
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, so[1], 1);
	posix_spawn_file_actions_adddup2(&fa, se[1], 2);
	/* crimuxd blocks its stop signals in every thread; children must not
	 * inherit that mask. */
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	int e = posix_spawn(&pid, path, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (e) {
		r = crx_err_set(err, -e, "cannot run %s: %s", path, strerror(e));
		goto close_pipes;
	}
	close(in[0]);
	close(so[1]);
	close(se[1]);
	in[0] = so[1] = se[1] = -1;
	fcntl(in[1], F_SETFL, O_NONBLOCK);

	char *bufs[2] = {NULL, NULL};
	size_t lens[2] = {0, 0}, written = 0;
	int64_t deadline = dk_now_ms() + (timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS);
	bool timed_out = false;
	if (stdin_len == 0) {
		close(in[1]);
		in[1] = -1;
	}
	while (so[0] >= 0 || se[0] >= 0) {
		struct pollfd p[3] = {{.fd = so[0], .events = POLLIN},
				      {.fd = se[0], .events = POLLIN},
				      {.fd = in[1], .events = POLLOUT}};
		int64_t left = deadline - dk_now_ms();
		if (left <= 0) {
			timed_out = true;
			break;
		}
		if (poll(p, 3, (int)(left > 1000 ? 1000 : left)) < 0 && errno != EINTR) {
			r = crx_err_set(err, -errno, "poll: %s", strerror(errno));
			break;
		}
		if (in[1] >= 0 && p[2].revents) {
			ssize_t n = send(in[1], stdin_data + written, stdin_len - written,
					 MSG_NOSIGNAL);
			if (n > 0)
				written += (size_t)n;
			if ((n < 0 && errno != EAGAIN && errno != EINTR) || written == stdin_len) {
				close(in[1]);
				in[1] = -1;
			}
		}
		for (int k = 0; k < 2; k++) {
			int *fd = k ? &se[0] : &so[0];
			if (*fd < 0 || !p[k].revents)
				continue;
			char chunk[8192];
			ssize_t n = read(*fd, chunk, sizeof(chunk));
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0) {
				close(*fd);
				*fd = -1;
				continue;
			}
			/* Keep at most out_max bytes of each stream; read the rest. */
			size_t keep = lens[k] < out_max ? out_max - lens[k] : 0;
			if ((size_t)n < keep)
				keep = (size_t)n;
			if (keep) {
				char *more = realloc(bufs[k], lens[k] + keep + 1);
				if (!more) {
					r = crx_err_set(err, -ENOMEM, "out of memory");
					break;
				}
				memcpy(more + lens[k], chunk, keep);
				lens[k] += keep;
				more[lens[k]] = '\0';
				bufs[k] = more;
			}
		}
		if (r < 0)
			break;
	}
	if (timed_out || r < 0)
		kill(pid, SIGKILL);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (timed_out && r == 0)
		r = crx_err_set(err, -ETIMEDOUT, "%s did not finish within %u ms", path,
				timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS);
	if (r == 0)
		r = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	if (r >= 0 && out)
		*out = bufs[0] ? bufs[0] : strdup("");
	else
		free(bufs[0]);
	if (r >= 0 && errout)
		*errout = bufs[1] ? bufs[1] : strdup("");
	else
		free(bufs[1]);
	if (r >= 0 && ((out && !*out) || (errout && !*errout)))
		r = crx_err_set(err, -ENOMEM, "out of memory");
close_pipes:
	for (int k = 0; k < 2; k++) {
		if (in[k] >= 0)
			close(in[k]);
		if (so[k] >= 0)
			close(so[k]);
		if (se[k] >= 0)
			close(se[k]);
	}
	return r;
}

/* The environment of a plugin: ours without CNI_* variables, plus the
 * CNI ones. */
static char **plugin_env(const char *command, const struct dk_cni_args *a)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = calloc(n + 8, sizeof(*env));
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "CNI_", 4) != 0 && !(env[k++] = strdup(environ[i])))
			goto fail;
	if (asprintf(&env[k++], "CNI_COMMAND=%s", command) < 0 ||
	    asprintf(&env[k++], "CNI_CONTAINERID=%s", a->container_id) < 0 ||
	    asprintf(&env[k++], "CNI_NETNS=%s", a->netns ? a->netns : "") < 0 ||
	    asprintf(&env[k++], "CNI_IFNAME=%s", a->ifname ? a->ifname : "eth0") < 0 ||
	    asprintf(&env[k++], "CNI_PATH=%s", a->bin_path ? a->bin_path : "") < 0 ||
	    asprintf(&env[k++],
		     "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;"
		     "K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s",
		     a->pod_namespace ? a->pod_namespace : "", a->pod_name ? a->pod_name : "",
		     a->container_id, a->pod_uid ? a->pod_uid : "") < 0) {
		env[--k] = NULL; /* asprintf leaves it undefined */
		goto fail;
	}
	return env;
fail:
	for (size_t i = 0; i < k; i++)
		free(env[i]);
	free(env);
	return NULL;
}

static void env_free(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* One plugin call; *result (ADD) gets its stdout parsed. */
static int run_plugin(json_object *conflist, size_t i, json_object *prev,
		      const struct dk_cni_args *a, bool del, json_object **result,
		      struct crx_err *err)
{
	json_object *plugin = json_object_array_get_idx(dk_json_get(conflist, "plugins", NULL), i);
	const char *type = dk_json_str(plugin, "type");
	const char *command = del ? "DEL" : "ADD";
	_cleanup_free_ char *path = NULL, *out = NULL, *errout = NULL;
	int r = find_plugin(a->bin_path, type, &path, err);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *conf = NULL;
	if (dk_cni_plugin_conf(conflist, i, prev, a, del, &conf) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	const char *stdin_text = dk_json_text(conf);
	char *argv[] = {path, NULL};
	char **env = plugin_env(command, a);
	if (!env)
		return crx_err_set(err, -ENOMEM, "out of memory");
	r = dk_run(path, argv, env, stdin_text, strlen(stdin_text), PLUGIN_OUT_MAX, a->timeout_ms,
		   &out, &errout, err);
	env_free(env);
	if (r < 0)
		return crx_err_prefix(err, "CNI %s of plugin %s", command, type);
	_cleanup_json_ json_object *doc = NULL;
	size_t olen = strlen(out);
	if (r != 0) {
		/* Plugins report errors as {"code", "msg", "details"} on stdout. */
		const char *msg = NULL, *details = NULL;
		if (olen && dk_json_parse(out, olen, &doc, NULL) == 0) {
			msg = dk_json_str(doc, "msg");
			details = dk_json_str(doc, "details");
		}
		size_t elen = strlen(errout);
		while (elen && errout[elen - 1] == '\n')
			errout[--elen] = '\0';
		return crx_err_set(err, -EIO, "CNI %s of plugin %s failed (exit status %d): %s%s%s",
				   command, type, r,
				   msg    ? msg
				   : elen ? errout
					  : "no message",
				   details && *details ? ": " : "", details ? details : "");
	}
	if (!del && result) {
		if (dk_json_parse(out, olen, &doc, err) < 0 ||
		    !json_object_is_type(doc, json_type_object))
			return crx_err_set(err, -EBADMSG, "CNI ADD of plugin %s returned no result",
					   type);
		*result = TAKE_PTR(doc);
	}
	return 0;
}

int dk_cni_add(json_object *conflist, const struct dk_cni_args *a, json_object **result,
	       struct crx_err *err)
{
	size_t n = json_object_array_length(dk_json_get(conflist, "plugins", NULL));
	_cleanup_json_ json_object *prev = NULL;
	for (size_t i = 0; i < n; i++) {
		json_object *res = NULL;
		int r = run_plugin(conflist, i, prev, a, false, &res, err);
		if (r < 0) {
			/* Undo whatever the earlier plugins did. */
			dk_cni_del(conflist, a, prev, NULL);
			return r;
		}
		if (prev)
			json_object_put(prev);
		prev = res;
	}
	if (!prev)
		return crx_err_set(err, -EINVAL, "the network configuration has no plugins");
	*result = TAKE_PTR(prev);
	return 0;
}

int dk_cni_del(json_object *conflist, const struct dk_cni_args *a, json_object *prev_result,
	       struct crx_err *err)
{
	size_t n = json_object_array_length(dk_json_get(conflist, "plugins", NULL));
	int first = 0;
	for (size_t i = n; i-- > 0;) {
		struct crx_err e = {0};
		int r = run_plugin(conflist, i, prev_result, a, true, NULL, &e);
		if (r < 0 && first == 0) {
			first = r;
			if (err)
				*err = e;
		}
	}
	return first;
}

int dk_cni_result_ips(json_object *result, char ***ips, size_t *n)
{
	*ips = NULL;
	*n = 0;
	char **list = NULL;
	size_t count = 0;
	const char *addrs[64];
	size_t na = 0;
	json_object *arr = dk_json_get(result, "ips", NULL);
	for (size_t i = 0; arr && json_object_is_type(arr, json_type_array) &&
			   i < json_object_array_length(arr) && na < ARRAY_SIZE(addrs);
	     i++) {
		const char *ad = dk_json_str(json_object_array_get_idx(arr, i), "address");
		if (ad)
			addrs[na++] = ad;
	}
	/* CNI 0.2.0: "ip4": {"ip": ...}, "ip6": {"ip": ...} */
	const char *v4 = dk_json_str(dk_json_get(result, "ip4", NULL), "ip");
	const char *v6 = dk_json_str(dk_json_get(result, "ip6", NULL), "ip");
	if (v4)
		addrs[na++] = v4;
	if (v6)
		addrs[na++] = v6;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < na; i++) {
			bool v6addr = strchr(addrs[i], ':') != NULL;
			if (v6addr != (pass == 1))
				continue;
			size_t len = strcspn(addrs[i], "/");
			char **more = realloc(list, (count + 1) * sizeof(*list));
			if (!more || !(more[count] = strndup(addrs[i], len))) {
				dk_strv_free(more ? more : list, count);
				return -ENOMEM;
			}
			list = more;
			count++;
		}
	}
	*ips = list;
	*n = count;
	return 0;
}
