#include "config.h"

#include "runtimes/docker/model/names.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtimes/docker/engine/json.h"

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '-';
}

/* '_' separates the parts, so it may not appear inside one. */
static int check_part(const char *what, const char *s, struct crx_err *err)
{
	for (const char *p = s; *p; p++)
		if (!name_char(*p))
			return crx_err_set(err, -EINVAL,
					   "%s \"%s\" has a character Docker names do not allow "
					   "(allowed: letters, digits, '.', '-')",
					   what, s);
	return 0;
}

static int check_sandbox(const struct dk_sandbox_meta *m, struct crx_err *err)
{
	if (!m->name || !*m->name)
		return crx_err_set(err, -EINVAL, "sandbox metadata.name is empty");
	int r = check_part("sandbox metadata.name", m->name, err);
	if (r == 0)
		r = check_part("sandbox metadata.namespace", m->ns ? m->ns : "", err);
	if (r == 0)
		r = check_part("sandbox metadata.uid", m->uid ? m->uid : "", err);
	return r;
}

int dk_sandbox_name(const struct dk_sandbox_meta *m, char **out, struct crx_err *err)
{
	int r = check_sandbox(m, err);
	if (r < 0)
		return r;
	if (asprintf(out, "%s_%s_%s_%s_%s_%" PRIu32, DK_NAME_PREFIX, DK_SANDBOX_NAME, m->name,
		     m->ns ? m->ns : "", m->uid ? m->uid : "", m->attempt) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int dk_container_name(const struct dk_container_meta *c, const struct dk_sandbox_meta *s,
		      char **out, struct crx_err *err)
{
	if (!c->name || !*c->name)
		return crx_err_set(err, -EINVAL, "container metadata.name is empty");
	int r = check_part("container metadata.name", c->name, err);
	if (r == 0)
		r = check_sandbox(s, err);
	if (r < 0)
		return r;
	if (asprintf(out, "%s_%s_%s_%s_%s_%" PRIu32, DK_NAME_PREFIX, c->name, s->name,
		     s->ns ? s->ns : "", s->uid ? s->uid : "", c->attempt) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int dk_parse_name(const char *name, char *buf, size_t size, bool *sandbox,
		  struct dk_sandbox_meta *s, struct dk_container_meta *c)
{
	if (name[0] == '/')
		name++;
	if (strlen(name) >= size)
		return -ENAMETOOLONG;
	strcpy(buf, name);
	char *parts[7];
	size_t n = 0;
	for (char *p = buf, *tok; n < ARRAY_SIZE(parts) && (tok = strsep(&p, "_"));)
		parts[n++] = tok;
	/* dockershim once added a random seventh part after a name conflict. */
	if ((n != 6 && n != 7) || !streq(parts[0], DK_NAME_PREFIX))
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long attempt = strtoul(parts[5], &end, 10);
	if (errno || *end || end == parts[5] || attempt > UINT32_MAX)
		return -EINVAL;
	*sandbox = streq(parts[1], DK_SANDBOX_NAME);
	*s = (struct dk_sandbox_meta){.name = parts[2], .ns = parts[3], .uid = parts[4]};
	*c = (struct dk_container_meta){.name = parts[1]};
	if (*sandbox)
		s->attempt = (uint32_t)attempt;
	else
		c->attempt = (uint32_t)attempt;
	return 0;
}

int dk_labels_add_cri(json_object *labels, size_t n_labels, void *const *label_entries,
		      size_t n_ann, void *const *ann_entries)
{
	for (size_t i = 0; i < n_labels; i++) {
		const struct dk_pb_kv *kv = label_entries[i];
		if (dk_json_add_str(labels, kv->key, kv->value) < 0)
			return -ENOMEM;
	}
	for (size_t i = 0; i < n_ann; i++) {
		const struct dk_pb_kv *kv = ann_entries[i];
		_cleanup_free_ char *key = NULL;
		if (asprintf(&key, "%s%s", DK_ANNOTATION_PREFIX, kv->key) < 0 ||
		    dk_json_add_str(labels, key, kv->value) < 0)
			return -ENOMEM;
	}
	return 0;
}

static const char *const internal[] = {
	DK_LABEL_TYPE,    DK_LABEL_SANDBOX_ID, DK_LABEL_LOG_PATH, DK_LABEL_METADATA,
	DK_LABEL_CREATED, DK_LABEL_USER_IMAGE, DK_LABEL_HANDLER,  DK_LABEL_LOG_DIRECTORY,
};

bool dk_label_is_internal(const char *key)
{
	for (size_t i = 0; i < ARRAY_SIZE(internal); i++)
		if (streq(key, internal[i]))
			return true;
	return false;
}

static const char *const reserved_prefixes[] = {"io.crimux.", DK_ANNOTATION_PREFIX};

int dk_labels_check_cri(const char *what, size_t n, void *const *entries, struct crx_err *err)
{
	for (size_t i = 0; i < n; i++) {
		const char *key = ((const struct dk_pb_kv *)entries[i])->key;
		bool reserved = !key || dk_label_is_internal(key);
		for (size_t k = 0; key && k < ARRAY_SIZE(reserved_prefixes); k++)
			if (strncmp(key, reserved_prefixes[k], strlen(reserved_prefixes[k])) == 0)
				reserved = true;
		if (reserved)
			return crx_err_set(err, -EINVAL,
					   "%s label \"%s\" is reserved for the runtime's own "
					   "bookkeeping",
					   what, key ? key : "");
	}
	return 0;
}

int dk_labels_reserve(json_object *labels)
{
	for (size_t i = 0; i < ARRAY_SIZE(internal); i++)
		if (!json_object_object_get_ex(labels, internal[i], NULL) &&
		    dk_json_add_str(labels, internal[i], "") < 0)
			return -ENOMEM;
	return 0;
}

int dk_labels_to_cri(struct dk_arena *a, json_object *labels,
		     const ProtobufCMessageDescriptor *label_desc, size_t *n_labels,
		     void ***label_entries, const ProtobufCMessageDescriptor *ann_desc,
		     size_t *n_ann, void ***ann_entries)
{
	if (!labels || !json_object_is_type(labels, json_type_object))
		return 0;
	size_t plen = strlen(DK_ANNOTATION_PREFIX);
	json_object_object_foreach(labels, key, val)
	{
		if (dk_label_is_internal(key))
			continue;
		const char *v = json_object_is_type(val, json_type_string)
					? json_object_get_string(val)
					: "";
		int r = 0;
		if (strncmp(key, DK_ANNOTATION_PREFIX, plen) == 0) {
			if (n_ann)
				r = dk_map_add(a, ann_desc, n_ann, ann_entries, key + plen, v);
		} else if (n_labels) {
			r = dk_map_add(a, label_desc, n_labels, label_entries, key, v);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

char *dk_meta_label(const char *name, const char *uid, const char *ns, uint32_t attempt)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	if (!o || dk_json_add_str(o, "name", name ? name : "") < 0 ||
	    dk_json_add_str(o, "uid", uid) < 0 || dk_json_add_str(o, "namespace", ns) < 0 ||
	    dk_json_add_int(o, "attempt", attempt) < 0)
		return NULL;
	return strdup(dk_json_text(o));
}

int dk_meta_parse(struct dk_arena *a, json_object *labels, const char *docker_name, char **name,
		  char **uid, char **ns, uint32_t *attempt)
{
	const char *text = dk_json_str(labels, DK_LABEL_METADATA);
	_cleanup_json_ json_object *m = NULL;
	if (text && dk_json_parse(text, strlen(text), &m, NULL) == 0 &&
	    json_object_is_type(m, json_type_object)) {
		*name = dk_arena_strdup(a, dk_json_str(m, "name"));
		if (uid)
			*uid = dk_arena_strdup(a, dk_json_str(m, "uid"));
		if (ns)
			*ns = dk_arena_strdup(a, dk_json_str(m, "namespace"));
		int64_t at = dk_json_int(m, "attempt", 0);
		*attempt = at < 0 || at > UINT32_MAX ? 0 : (uint32_t)at;
	} else {
		/* A container crimux did not label: what the name says. */
		char buf[512];
		bool sandbox;
		struct dk_sandbox_meta s;
		struct dk_container_meta c;
		if (!docker_name ||
		    dk_parse_name(docker_name, buf, sizeof(buf), &sandbox, &s, &c) < 0)
			return -EINVAL;
		*name = dk_arena_strdup(a, sandbox ? s.name : c.name);
		if (uid)
			*uid = dk_arena_strdup(a, s.uid);
		if (ns)
			*ns = dk_arena_strdup(a, s.ns);
		*attempt = sandbox ? s.attempt : c.attempt;
	}
	if (!*name || (uid && !*uid) || (ns && !*ns))
		return -ENOMEM;
	return 0;
}

bool dk_labels_match(json_object *labels, size_t n, void *const *selector)
{
	for (size_t i = 0; i < n; i++) {
		const struct dk_pb_kv *kv = selector[i];
		if (dk_label_is_internal(kv->key))
			return false;
		if (!streq(dk_json_str(labels, kv->key), kv->value))
			return false;
	}
	return true;
}
