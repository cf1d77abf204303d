#include "config.h"

#include "runtimes/docker/model/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/file.h"
#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"

#define CHECKPOINT_VERSION 1
#define CHECKPOINT_MAX     (4 * MIB)

void dk_checkpoint_clear(struct dk_checkpoint *cp)
{
	if (!cp)
		return;
	free(cp->sandbox_id);
	free(cp->name);
	free(cp->ns);
	free(cp->uid);
	free(cp->ports);
	free(cp->netns);
	for (size_t i = 0; i < cp->n_ips; i++)
		free(cp->ips[i]);
	free(cp->ips);
	if (cp->cni_conf)
		json_object_put(cp->cni_conf);
	if (cp->cni_result)
		json_object_put(cp->cni_result);
	if (cp->labels)
		json_object_put(cp->labels);
	*cp = (struct dk_checkpoint){0};
}

static const char *const protocols[] = {"tcp", "udp", "sctp"};

int dk_checkpoint_to_json(const struct dk_checkpoint *cp, json_object **out)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *ports = json_object_new_array(), *ips = json_object_new_array();
	int r = o ? 0 : -ENOMEM;
	r |= dk_json_add_int(o, "version", CHECKPOINT_VERSION);
	r |= dk_json_add_str(o, "sandbox_id", cp->sandbox_id);
	r |= dk_json_add_str(o, "name", cp->name);
	r |= dk_json_add_str(o, "namespace", cp->ns);
	r |= dk_json_add_str(o, "uid", cp->uid);
	r |= dk_json_add_int(o, "attempt", cp->attempt);
	r |= dk_json_add_int(o, "created", cp->created_ns);
	r |= dk_json_add_bool(o, "host_network", cp->host_network);
	r |= dk_json_add(o, "port_mappings", ports);
	for (size_t i = 0; ports && i < cp->n_ports; i++) {
		const struct dk_port *p = &cp->ports[i];
		json_object *e = json_object_new_object();
		r |= e && json_object_array_add(ports, e) == 0 ? 0 : -ENOMEM;
		r |= dk_json_add_str(e, "protocol",
				     p->protocol >= 0 && p->protocol < 3 ? protocols[p->protocol]
									 : "tcp");
		r |= dk_json_add_int(e, "container_port", p->container_port);
		r |= dk_json_add_int(e, "host_port", p->host_port);
		r |= dk_json_add_str(e, "host_ip", p->host_ip);
	}
	r |= dk_json_add_bool(o, "network_ready", cp->network_ready);
	r |= dk_json_add_str(o, "netns", cp->netns);
	if (cp->cni_conf)
		r |= dk_json_add(o, "cni_conf", json_object_get(cp->cni_conf));
	if (cp->cni_result)
		r |= dk_json_add(o, "cni_result", json_object_get(cp->cni_result));
	r |= dk_json_add(o, "ips", ips);
	for (size_t i = 0; ips && i < cp->n_ips; i++)
		r |= dk_json_append_str(ips, cp->ips[i]);
	if (cp->labels)
		r |= dk_json_add(o, "labels", json_object_get(cp->labels));
	if (cp->distrusted)
		r |= dk_json_add_bool(o, "distrusted", true);
	if (r)
		return -ENOMEM;
	*out = TAKE_PTR(o);
	return 0;
}

static int dup_str(json_object *o, const char *key, char **out)
{
	const char *s = dk_json_str(o, key);
	if (!s)
		return 0;
	*out = strdup(s);
	return *out ? 0 : -ENOMEM;
}

int dk_checkpoint_from_json(json_object *o, struct dk_checkpoint *out, struct crx_err *err)
{
	if (!json_object_is_type(o, json_type_object))
		return crx_err_set(err, -EBADMSG, "checkpoint is not a JSON object");
	int64_t version = dk_json_int(o, "version", 0);
	if (version != CHECKPOINT_VERSION)
		return crx_err_set(err, -EBADMSG, "checkpoint version %lld is not %d",
				   (long long)version, CHECKPOINT_VERSION);
	struct dk_checkpoint cp = {0};
	int r = dup_str(o, "sandbox_id", &cp.sandbox_id);
	r |= dup_str(o, "name", &cp.name);
	r |= dup_str(o, "namespace", &cp.ns);
	r |= dup_str(o, "uid", &cp.uid);
	r |= dup_str(o, "netns", &cp.netns);
	cp.attempt = (uint32_t)dk_json_int(o, "attempt", 0);
	cp.created_ns = dk_json_int(o, "created", 0);
	cp.host_network = dk_json_bool(o, "host_network");
	cp.network_ready = dk_json_bool(o, "network_ready");
	cp.distrusted = dk_json_bool(o, "distrusted");
	json_object *ports = dk_json_get(o, "port_mappings", NULL);
	size_t n = ports && json_object_is_type(ports, json_type_array)
			   ? json_object_array_length(ports)
			   : 0;
	if (n && !(cp.ports = calloc(n, sizeof(*cp.ports))))
		r = -ENOMEM;
	for (size_t i = 0; cp.ports && i < n; i++) {
		json_object *e = json_object_array_get_idx(ports, i);
		struct dk_port *p = &cp.ports[cp.n_ports++];
		const char *proto = dk_json_str(e, "protocol");
		p->protocol = streq(proto, "udp") ? 1 : streq(proto, "sctp") ? 2 : 0;
		p->container_port = (int32_t)dk_json_int(e, "container_port", 0);
		p->host_port = (int32_t)dk_json_int(e, "host_port", 0);
		snprintf(p->host_ip, sizeof(p->host_ip), "%s",
			 dk_json_str(e, "host_ip") ? dk_json_str(e, "host_ip") : "");
	}
	json_object *ips = dk_json_get(o, "ips", NULL);
	n = ips && json_object_is_type(ips, json_type_array) ? json_object_array_length(ips) : 0;
	if (n && !(cp.ips = calloc(n, sizeof(*cp.ips))))
		r = -ENOMEM;
	for (size_t i = 0; cp.ips && i < n; i++) {
		const char *ip = json_object_get_string(json_object_array_get_idx(ips, i));
		if (ip && !(cp.ips[cp.n_ips++] = strdup(ip)))
			r = -ENOMEM;
	}
	json_object *v;
	if ((v = dk_json_get(o, "cni_conf", NULL)))
		cp.cni_conf = json_object_get(v);
	if ((v = dk_json_get(o, "cni_result", NULL)))
		cp.cni_result = json_object_get(v);
	if ((v = dk_json_get(o, "labels", NULL)))
		cp.labels = json_object_get(v);
	if (r) {
		dk_checkpoint_clear(&cp);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	if (!cp.sandbox_id || !dk_valid_id(cp.sandbox_id)) {
		dk_checkpoint_clear(&cp);
		return crx_err_set(err, -EBADMSG, "checkpoint has no valid sandbox_id");
	}
	*out = cp;
	return 0;
}

int dk_mkdir_p(const char *path, mode_t mode)
{
	_cleanup_free_ char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	for (char *p = copy + 1;; p++) {
		if (*p != '/' && *p)
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(copy, mode) < 0 && errno != EEXIST)
			return -errno;
		if (!c)
			break;
		*p = c;
	}
	return 0;
}

int dk_write_file_atomic(const char *path, const char *data, size_t len, struct crx_err *err)
{
	return crx_write_file_atomic(path, data, len, 0600, err);
}

int dk_read_file(const char *path, size_t max, char **out, size_t *len, struct crx_err *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return crx_err_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
	size_t cap = 4096, used = 0;
	_cleanup_free_ char *buf = malloc(cap);
	if (!buf)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (;;) {
		if (cap - used < 2) {
			if (cap >= max)
				return crx_err_set(err, -EFBIG, "%s is larger than %zu bytes", path,
						   max);
			char *more = realloc(buf, cap * 2);
			if (!more)
				return crx_err_set(err, -ENOMEM, "out of memory");
			buf = more;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + used, cap - used - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return crx_err_set(err, -errno, "cannot read %s: %s", path,
					   strerror(errno));
		}
		if (n == 0)
			break;
		used += (size_t)n;
	}
	buf[used] = '\0';
	if (len)
		*len = used;
	*out = TAKE_PTR(buf);
	return 0;
}

static int checkpoint_path(const char *dir, const char *id, char **out, struct crx_err *err)
{
	if (!dk_valid_id(id))
		return crx_err_set(err, -EINVAL, "\"%s\" is not a sandbox ID", id ? id : "");
	if (asprintf(out, "%s/%s.json", dir, id) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int dk_checkpoint_save(const char *dir, const struct dk_checkpoint *cp, struct crx_err *err)
{
	_cleanup_free_ char *path = NULL;
	int r = checkpoint_path(dir, cp->sandbox_id, &path, err);
	if (r < 0)
		return r;
	r = dk_mkdir_p(dir, 0700);
	if (r < 0)
		return crx_err_set(err, r, "cannot create %s: %s", dir, strerror(-r));
	_cleanup_json_ json_object *o = NULL;
	if (dk_checkpoint_to_json(cp, &o) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	const char *text = json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	r = dk_write_file_atomic(path, text, strlen(text), err);
	return r < 0 ? crx_err_prefix(err, "checkpoint of sandbox %s", cp->sandbox_id) : 0;
}

int dk_checkpoint_load(const char *dir, const char *id, struct dk_checkpoint *cp,
		       struct crx_err *err)
{
	_cleanup_free_ char *path = NULL;
	int r = checkpoint_path(dir, id, &path, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *text = NULL;
	size_t len;
	r = dk_read_file(path, CHECKPOINT_MAX, &text, &len, err);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *o = NULL;
	r = dk_json_parse(text, len, &o, err);
	if (r == 0)
		r = dk_checkpoint_from_json(o, cp, err);
	if (r < 0)
		return crx_err_prefix(err, "checkpoint %s", path);
	if (!streq(cp->sandbox_id, id)) {
		dk_checkpoint_clear(cp);
		return crx_err_set(err, -EBADMSG, "checkpoint %s names another sandbox", path);
	}
	return 0;
}

int dk_checkpoint_remove(const char *dir, const char *id, struct crx_err *err)
{
	_cleanup_free_ char *path = NULL;
	int r = checkpoint_path(dir, id, &path, err);
	if (r < 0)
		return r;
	if (unlink(path) < 0) {
		if (errno == ENOENT)
			return 0;
		return crx_err_set(err, -errno, "cannot remove %s: %s", path, strerror(errno));
	}
	/* No fsync of the directory: a power loss that brings the file back
	 * brings back a complete, older checkpoint, which lists the pod
	 * NOTREADY until the kubelet removes it again; at worst its network
	 * gets a second DEL, which CNI requires to be harmless (every plugin
	 * releases by container ID). RemovePodSandbox saves ~1 ms. */
	return 0;
}

int dk_checkpoint_list(const char *dir, char ***ids, size_t *n, struct crx_err *err)
{
	*ids = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0
				       : crx_err_set(err, -errno, "cannot read %s: %s", dir,
						     strerror(errno));
	char **list = NULL;
	size_t count = 0;
	int r = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (len <= 5 || !streq(e->d_name + len - 5, ".json"))
			continue;
		char *id = strndup(e->d_name, len - 5);
		char **more = id ? realloc(list, (count + 1) * sizeof(*list)) : NULL;
		if (!more) {
			free(id);
			r = crx_err_set(err, -ENOMEM, "out of memory");
			break;
		}
		list = more;
		list[count++] = id;
	}
	closedir(d);
	if (r < 0) {
		for (size_t i = 0; i < count; i++)
			free(list[i]);
		free(list);
		return r;
	}
	*ids = list;
	*n = count;
	return 0;
}
