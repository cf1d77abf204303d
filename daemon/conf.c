#include "config.h"

#include "daemon/conf.h"

#include <dirent.h>
#include <stddef.h>
#include <ini.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>

#include "common/util.h"
#include "runtimes/backend.h"

/* State of one parse: inih does not pass line numbers to the handler, so the
 * reader counts the lines it hands over. */
struct parse {
	struct crx_config *cfg;
	const char *file;
	FILE *in;
	unsigned line;
	struct crx_err *err;
	bool failed;
	unsigned failed_line;
};

/* Hands inih one whole line at a time, without its leading white space.
 * inih reads into a fixed buffer (size, 200 bytes in Debian's build): a
 * longer line would reach it in pieces, the tail of a comment read as a key,
 * so it is refused; so is a NUL byte, where inih would silently end the line.
 * inih takes an indented line as a continuation of the previous value
 * ("key = a" then "  other = b" sets key to "other = b"); with the white
 * space gone, an indented line is read as what it says. Returns NULL at the
 * end of the file or on an error, which stops the parse. */
static char *read_line(char *buf, int size, void *stream)
{
	struct parse *p = stream;
	if (p->failed || size < 2)
		return NULL;
	size_t n = 0;
	bool leading = true;
	int c;
	while ((c = getc(p->in)) != EOF && c != '\n') {
		if (leading && (c == ' ' || c == '\t'))
			continue;
		leading = false;
		if (c == '\0' || n + 1 >= (size_t)size) {
			p->line++;
			p->failed = true;
			p->failed_line = p->line;
			if (c == '\0')
				crx_err_set(p->err, -EINVAL, "%s:%u: line contains a NUL byte",
					    p->file, p->line);
			else
				crx_err_set(p->err, -EINVAL, "%s:%u: line is longer than %d bytes",
					    p->file, p->line, size - 1);
			return NULL;
		}
		buf[n++] = (char)c;
	}
	if (ferror(p->in)) {
		p->failed = true;
		p->failed_line = p->line + 1;
		crx_err_set(p->err, -EIO, "cannot read %s: %s", p->file, strerror(errno));
		return NULL;
	}
	if (c == EOF && n == 0)
		return NULL;
	buf[n] = '\0';
	p->line++;
	return buf;
}

static int fail(struct parse *p, const char *section, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct parse *p, const char *section, const char *key, const char *fmt, ...)
{
	if (p->failed)
		return 0;
	p->failed = true;
	p->failed_line = p->line;
	char what[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	crx_err_set(p->err, -EINVAL, "%s:%u: [%s] %s: %s", p->file, p->line, section, key, what);
	return 0;
}

static int set_string(char **field, const char *value)
{
	char *copy = strdup(value);
	if (!copy)
		return -ENOMEM;
	free(*field);
	*field = copy;
	return 0;
}

static const char *const level_names[] = {
	[LOG_ERR] = "error", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

static int parse_log_level(const char *value)
{
	for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
		if (streq(level_names[i], value))
			return (int)i;
	return -EINVAL;
}

/* "10", "2.5s" or "500ms". */
static int parse_duration_ms(const char *value, unsigned *out)
{
	char *end;
	errno = 0;
	double v = strtod(value, &end);
	if (errno || end == value || v < 0)
		return -EINVAL;
	if (streq(end, "ms"))
		v /= 1000;
	else if (*end && !streq(end, "s"))
		return -EINVAL;
	if (v > 24 * 3600)
		return -ERANGE;
	*out = (unsigned)(v * 1000 + 0.5);
	return 0;
}

static int main_key(struct parse *p, const char *key, const char *value)
{
	struct crx_config *cfg = p->cfg;
	if (streq(key, "socket")) {
		if (value[0] != '/')
			return fail(p, "crimux", key, "must be an absolute path, not \"%s\"",
				    value);
		if (strlen(value) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return fail(p, "crimux", key,
				    "\"%s\" is longer than a unix socket path may be (%zu bytes)",
				    value, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		return set_string(&cfg->socket_path, value) == 0;
	}
	if (streq(key, "socket_mode")) {
		char *end;
		unsigned long mode = strtoul(value, &end, 8);
		if (*end || end == value || mode > 07777)
			return fail(p, "crimux", key, "\"%s\" is not an octal file mode", value);
		cfg->socket_mode = (mode_t)mode;
		return 1;
	}
	if (streq(key, "log_level")) {
		int level = parse_log_level(value);
		if (level < 0)
			return fail(p, "crimux", key,
				    "\"%s\" is not one of error, warning, notice, info, debug",
				    value);
		cfg->log_level = level;
		return 1;
	}
	if (streq(key, "shutdown_timeout")) {
		if (parse_duration_ms(value, &cfg->shutdown_timeout_ms) < 0)
			return fail(p, "crimux", key, "\"%s\" is not a duration like 10s or 500ms",
				    value);
		return 1;
	}
	if (streq(key, "default_handler"))
		return set_string(&cfg->default_handler, value) == 0;
	if (streq(key, "metrics_address")) {
		if (!*value || streq(value, "off")) { /* a drop-in turns it off again */
			free(cfg->metrics_address);
			cfg->metrics_address = NULL;
			return 1;
		}
		struct crx_metrics_address a;
		struct crx_err why = {0};
		if (crx_metrics_address_parse(value, &a, &why) < 0)
			return fail(p, "crimux", key, "%s", why.msg);
		return set_string(&cfg->metrics_address, value) == 0;
	}
	if (streq(key, "metrics_allow_remote")) {
		if (streq(value, "true") || streq(value, "yes") || streq(value, "1"))
			cfg->metrics_allow_remote = true;
		else if (streq(value, "false") || streq(value, "no") || streq(value, "0"))
			cfg->metrics_allow_remote = false;
		else
			return fail(p, "crimux", key, "\"%s\" is not true or false", value);
		return 1;
	}
	return fail(p, "crimux", key, "unknown key");
}

static struct crx_backend_config *backend_get(struct crx_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_backends; i++)
		if (streq(cfg->backends[i].name, name))
			return &cfg->backends[i];
	struct crx_backend_config *more =
		realloc(cfg->backends, (cfg->n_backends + 1) * sizeof(*more));
	if (!more)
		return NULL;
	cfg->backends = more;
	struct crx_backend_config *b = &more[cfg->n_backends];
	*b = (struct crx_backend_config){.name = strdup(name), .type = strdup("cri")};
	if (!b->name || !b->type) {
		free(b->name);
		free(b->type);
		return NULL;
	}
	cfg->n_backends++;
	return b;
}

/* Kept for the backend type to check once the whole configuration is read
 * (the type may be set after its keys, or in a later drop-in). */
static int set_option(struct parse *p, struct crx_backend_config *b, const char *key,
		      const char *value)
{
	struct crx_option *o = NULL;
	for (size_t i = 0; i < b->n_options && !o; i++)
		if (streq(b->options[i].key, key))
			o = &b->options[i];
	if (!o) {
		struct crx_option *more = realloc(b->options, (b->n_options + 1) * sizeof(*more));
		if (!more)
			return -ENOMEM;
		b->options = more;
		o = &more[b->n_options];
		*o = (struct crx_option){.key = strdup(key)};
		if (!o->key)
			return -ENOMEM;
		b->n_options++;
	}
	o->line = p->line;
	if (set_string(&o->value, value) < 0 || set_string(&o->file, p->file) < 0)
		return -ENOMEM;
	return 0;
}

static int backend_key(struct parse *p, const char *section, const char *name, const char *key,
		       const char *value)
{
	struct crx_backend_config *b = backend_get(p->cfg, name);
	if (!b)
		return fail(p, section, key, "out of memory");
	if (streq(key, "type")) {
		if (!backend_type_find(value))
			return fail(p, section, key, "unknown backend type \"%s\" (known: %s)",
				    value, BACKEND_TYPE_NAMES);
		return set_string(&b->type, value) == 0;
	}
	if (streq(key, "endpoint")) {
		if (value[0] == '/') { /* a bare socket path */
			_cleanup_free_ char *target = NULL;
			if (asprintf(&target, "unix://%s", value) < 0)
				return fail(p, section, key, "out of memory");
			return set_string(&b->endpoint, target) == 0;
		}
		if (strncmp(value, "unix://", 7) != 0 || value[7] != '/')
			return fail(p, section, key,
				    "\"%s\" is not a unix socket (unix:///path or /path)", value);
		return set_string(&b->endpoint, value) == 0;
	}
	return set_option(p, b, key, value) == 0 ? 1 : fail(p, section, key, "out of memory");
}

static struct crx_handler_config *handler_get(struct parse *p, const char *name)
{
	struct crx_config *cfg = p->cfg;
	for (size_t i = 0; i < cfg->n_handlers; i++)
		if (streq(cfg->handlers[i].name, name))
			return &cfg->handlers[i];
	struct crx_handler_config *more =
		realloc(cfg->handlers, (cfg->n_handlers + 1) * sizeof(*more));
	if (!more)
		return NULL;
	cfg->handlers = more;
	struct crx_handler_config *h = &more[cfg->n_handlers];
	*h = (struct crx_handler_config){.name = strdup(name)};
	if (!h->name || asprintf(&h->where, "%s:%u", p->file, p->line) < 0 ||
	    kata_policy_init(&h->kata) < 0) {
		free(h->name);
		free(h->where);
		return NULL;
	}
	cfg->n_handlers++;
	return h;
}

/* A comma- or space-separated list, replacing the old one. */
static int set_list(char ***list, size_t *n, const char *value)
{
	_cleanup_free_ char *copy = strdup(value);
	if (!copy)
		return -ENOMEM;
	char **items = NULL;
	size_t count = 0;
	char *save = NULL;
	for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		char **more = realloc(items, (count + 1) * sizeof(*more));
		if (!more || !(more[count] = strdup(tok))) {
			items = more ? more : items;
			while (count)
				free(items[--count]);
			free(items);
			return -ENOMEM;
		}
		items = more;
		count++;
	}
	for (size_t i = 0; i < *n; i++)
		free((*list)[i]);
	free(*list);
	*list = items;
	*n = count;
	return 0;
}

static int kata_key(struct parse *p, const char *section, struct crx_handler_config *h,
		    const char *key, const char *value)
{
	struct kata_policy *k = &h->kata;
	static const struct {
		const char *key;
		size_t offset;
		bool cpu;
	} numbers[] = {
		{"kata_min_cpu", offsetof(struct kata_policy, min_cpu_milli), true},
		{"kata_min_memory", offsetof(struct kata_policy, min_memory), false},
		{"kata_min_memory_per_cpu", offsetof(struct kata_policy, min_memory_per_cpu),
		 false},
		{"kata_max_memory_per_cpu", offsetof(struct kata_policy, max_memory_per_cpu),
		 false},
		{"kata_overhead_cpu", offsetof(struct kata_policy, overhead_cpu_milli), true},
		{"kata_overhead_memory", offsetof(struct kata_policy, overhead_memory), false},
	};
	if (!h->kata_where && asprintf(&h->kata_where, "%s:%u", p->file, p->line) < 0)
		return fail(p, section, key, "out of memory");
	for (size_t i = 0; i < ARRAY_SIZE(numbers); i++) {
		if (!streq(key, numbers[i].key))
			continue;
		int64_t *field = (int64_t *)((char *)k + numbers[i].offset);
		int r = numbers[i].cpu ? parse_cpu_milli(value, field) : parse_bytes(value, field);
		if (r < 0)
			return fail(p, section, key,
				    numbers[i].cpu
					    ? "\"%s\" is not a CPU quantity like 250m or 0.25"
					    : "\"%s\" is not a size like 256Mi or 1Gi",
				    value);
		return 1;
	}
	if (streq(key, "kata_reserved_annotations"))
		return set_list(&k->reserved_annotations, &k->n_reserved_annotations, value) == 0;
	if (streq(key, "kata_allowed_annotations"))
		return set_list(&k->allowed_annotations, &k->n_allowed_annotations, value) == 0;
	return fail(p, section, key, "unknown key");
}

static int handler_key(struct parse *p, const char *section, const char *name, const char *key,
		       const char *value)
{
	struct crx_handler_config *h = handler_get(p, name);
	if (!h)
		return fail(p, section, key, "out of memory");
	if (streq(key, "backend"))
		return set_string(&h->backend, value) == 0;
	if (streq(key, "runtime_handler"))
		return set_string(&h->runtime_handler, value) == 0;
	if (streq(key, "policy")) {
		if (streq(value, "none"))
			h->policy = CRX_POLICY_NONE;
		else if (streq(value, "kata"))
			h->policy = CRX_POLICY_KATA;
		else
			return fail(p, section, key, "\"%s\" is not a policy (known: none, kata)",
				    value);
		return 1;
	}
	if (strncmp(key, "kata_", 5) == 0)
		return kata_key(p, section, h, key, value);
	return fail(p, section, key, "unknown key");
}

/* `backend "name"` → type "backend", name "name". */
static bool split_section(const char *section, char *type, size_t type_size, char *name,
			  size_t name_size)
{
	const char *q = strchr(section, '"');
	size_t len = strlen(section);
	if (!q || len < 2 || section[len - 1] != '"' || q == section + len - 1)
		return false;
	size_t tlen = (size_t)(q - section);
	while (tlen && section[tlen - 1] == ' ')
		tlen--;
	size_t nlen = (size_t)(section + len - 1 - (q + 1));
	if (tlen == 0 || tlen >= type_size || nlen == 0 || nlen >= name_size ||
	    memchr(q + 1, '"', nlen))
		return false;
	memcpy(type, section, tlen);
	type[tlen] = '\0';
	memcpy(name, q + 1, nlen);
	name[nlen] = '\0';
	return true;
}

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
	struct parse *p = user;
	if (p->failed)
		return 0;
	if (!*section)
		return fail(p, "", key, "outside any section; put it under [crimux]");
	if (streq(section, "crimux"))
		return main_key(p, key, value);
	char type[64], name[128];
	if (split_section(section, type, sizeof(type), name, sizeof(name))) {
		if (streq(type, "backend"))
			return backend_key(p, section, name, key, value);
		if (streq(type, "handler"))
			return handler_key(p, section, name, key, value);
	}
	return fail(p, section, key,
		    "unknown section (known: [crimux], [backend \"NAME\"], [handler \"NAME\"])");
}

static int parse_file(struct crx_config *cfg, const char *file, struct crx_err *err)
{
	_cleanup_fclose_ FILE *in = fopen(file, "re");
	if (!in)
		return crx_err_set(err, -errno, "cannot read %s: %s", file, strerror(errno));
	struct parse p = {.cfg = cfg, .file = file, .in = in, .err = err};
	int r = ini_parse_stream(read_line, &p, on_entry, &p);
	/* inih goes on after a syntax error: report whichever error came first. */
	if (r > 0 && (!p.failed || (unsigned)r < p.failed_line))
		return crx_err_set(err, -EINVAL, "%s:%d: syntax error", file, r);
	if (p.failed)
		return err ? err->code : -EINVAL;
	if (r < 0)
		return crx_err_set(err, -ENOMEM, "%s: out of memory", file);
	return 0;
}

static int conf_filter(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	return d->d_name[0] != '.' && n > 5 && streq(d->d_name + n - 5, ".conf");
}

static int parse_dropins(struct crx_config *cfg, const char *dir, struct crx_err *err)
{
	struct dirent **names;
	int n = scandir(dir, &names, conf_filter, alphasort);
	if (n < 0)
		return errno == ENOENT ? 0
				       : crx_err_set(err, -errno, "cannot read %s: %s", dir,
						     strerror(errno));
	int r = 0;
	for (int i = 0; i < n; i++) {
		if (r == 0) {
			_cleanup_free_ char *file = NULL;
			if (asprintf(&file, "%s/%s", dir, names[i]->d_name) < 0)
				r = crx_err_set(err, -ENOMEM, "out of memory");
			else
				r = parse_file(cfg, file, err);
		}
		free(names[i]);
	}
	free(names);
	return r;
}

static int validate_handlers(struct crx_config *cfg, const char *path, struct crx_err *err)
{
	if (cfg->n_handlers == 0) {
		if (cfg->n_backends > 1)
			return crx_err_set(
				err, -EINVAL,
				"%s: with %zu backends, [handler \"NAME\"] sections must say "
				"which RuntimeClass handler runs on which backend",
				path, cfg->n_backends);
		if (cfg->default_handler)
			return crx_err_set(err, -EINVAL,
					   "%s: default_handler \"%s\" names no [handler] section",
					   path, cfg->default_handler);
		return 0;
	}
	for (size_t i = 0; i < cfg->n_handlers; i++) {
		struct crx_handler_config *h = &cfg->handlers[i];
		if (!h->backend)
			return crx_err_set(err, -EINVAL, "%s: [handler \"%s\"] has no backend",
					   h->where, h->name);
		if (!crx_config_backend(cfg, h->backend)) {
			char names[512] = "";
			for (size_t j = 0; j < cfg->n_backends; j++)
				snprintf(names + strlen(names), sizeof(names) - strlen(names),
					 "%s%s", j ? ", " : "", cfg->backends[j].name);
			return crx_err_set(err, -EINVAL,
					   "%s: [handler \"%s\"] backend \"%s\" is not configured "
					   "(configured: %s)",
					   h->where, h->name, h->backend, names);
		}
		if (!h->runtime_handler && set_string(&h->runtime_handler, h->name) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		if (h->kata_where && h->policy != CRX_POLICY_KATA)
			return crx_err_set(
				err, -EINVAL,
				"%s: [handler \"%s\"] sets kata_* keys but its policy is "
				"not kata",
				h->kata_where, h->name);
		if (h->kata.min_memory_per_cpu > h->kata.max_memory_per_cpu)
			return crx_err_set(err, -EINVAL,
					   "%s: [handler \"%s\"] kata_min_memory_per_cpu is above "
					   "kata_max_memory_per_cpu",
					   h->kata_where, h->name);
		/* Lists report the backend's name; it must lead back to one handler. */
		for (size_t j = 0; j < i; j++)
			if (streq(cfg->handlers[j].backend, h->backend) &&
			    streq(cfg->handlers[j].runtime_handler, h->runtime_handler))
				return crx_err_set(err, -EINVAL,
						   "%s: handlers \"%s\" and \"%s\" both run as "
						   "\"%s\" on backend \"%s\"",
						   h->where, cfg->handlers[j].name, h->name,
						   h->runtime_handler, h->backend);
	}
	if (!cfg->default_handler)
		return set_string(&cfg->default_handler, cfg->handlers[0].name) < 0
			       ? crx_err_set(err, -ENOMEM, "out of memory")
			       : 0;
	if (!crx_config_handler(cfg, cfg->default_handler))
		return crx_err_set(err, -EINVAL,
				   "%s: default_handler \"%s\" names no [handler] section", path,
				   cfg->default_handler);
	return 0;
}

/* Two spellings of one socket (a symlink, "//", "/./") are one backend: as
 * two, two handlers could run as one backend runtime, only one of them with
 * a policy. Sockets that do not exist yet cannot be compared. */
static bool same_socket(const char *a, const char *b)
{
	struct stat sa, sb;
	return strncmp(a, "unix://", 7) == 0 && strncmp(b, "unix://", 7) == 0 &&
	       stat(a + 7, &sa) == 0 && stat(b + 7, &sb) == 0 && sa.st_dev == sb.st_dev &&
	       sa.st_ino == sb.st_ino;
}

static int validate(struct crx_config *cfg, const char *path, struct crx_err *err)
{
	struct crx_metrics_address metrics;
	if (cfg->metrics_address && !cfg->metrics_allow_remote &&
	    crx_metrics_address_parse(cfg->metrics_address, &metrics, err) == 0 &&
	    !metrics.loopback)
		return crx_err_set(err, -EINVAL,
				   "%s: metrics_address %s is not a loopback address; the "
				   "metrics name every pod's handler and backend, and are "
				   "served without authentication: serve them on 127.0.0.1, "
				   "[::1] or a unix socket, or set metrics_allow_remote = true",
				   path, cfg->metrics_address);
	if (cfg->n_backends == 0)
		return crx_err_set(err, -EINVAL,
				   "%s: no backend configured; add a [backend \"NAME\"] section "
				   "with an endpoint",
				   path);
	for (size_t i = 0; i < cfg->n_backends; i++) {
		const struct crx_backend_config *b = &cfg->backends[i];
		if (!b->endpoint)
			return crx_err_set(err, -EINVAL, "%s: [backend \"%s\"] has no endpoint",
					   path, b->name);
		const struct backend_ops *ops = backend_type_find(b->type);
		for (size_t j = 0; j < b->n_options; j++) {
			const struct crx_option *o = &b->options[j];
			int r = ops->check_option ? ops->check_option(o->key, o->value, err)
						  : crx_err_set(err, -EINVAL, "unknown key");
			if (r < 0)
				return crx_err_prefix(err, "%s:%u: [backend \"%s\"] %s", o->file,
						      o->line, b->name, o->key);
		}
		for (size_t j = 0; j < i; j++) {
			const struct crx_backend_config *o = &cfg->backends[j];
			if (streq(o->endpoint, b->endpoint))
				return crx_err_set(err, -EINVAL,
						   "%s: backends \"%s\" and \"%s\" have the same "
						   "endpoint %s; define it once and point several "
						   "handlers at it",
						   path, o->name, b->name, b->endpoint);
			if (same_socket(o->endpoint, b->endpoint))
				return crx_err_set(
					err, -EINVAL,
					"%s: backends \"%s\" and \"%s\" are the same socket "
					"(%s and %s); define it once and point several "
					"handlers at it",
					path, o->name, b->name, o->endpoint, b->endpoint);
		}
	}
	return validate_handlers(cfg, path, err);
}

int crx_config_load(const char *path, const char *dropin_dir, struct crx_config *out,
		    struct crx_err *err)
{
	struct crx_config cfg = {
		.socket_mode = 0660,
		.log_level = LOG_INFO,
		.shutdown_timeout_ms = 10000,
	};
	_cleanup_free_ char *default_dropins = NULL;
	int r = set_string(&cfg.socket_path, CRX_DEFAULT_SOCKET);
	if (r == 0)
		r = parse_file(&cfg, path, err);
	if (r == 0 && !dropin_dir) {
		if (asprintf(&default_dropins, "%s.d", path) < 0)
			r = crx_err_set(err, -ENOMEM, "out of memory");
		dropin_dir = default_dropins;
	}
	if (r == 0)
		r = parse_dropins(&cfg, dropin_dir, err);
	if (r == 0)
		r = validate(&cfg, path, err);
	if (r < 0) {
		crx_config_clear(&cfg);
		return r;
	}
	*out = cfg;
	return 0;
}
