#include "config.h"

#include "common/crx-config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "common/util.h"

/* Kata reads its configuration overrides from io.katacontainers.*, and the
 * CRI runtimes mark sandbox and container roles with their own annotations,
 * which the Kata shim trusts: a pod must not be able to set either. */
static const char *const default_reserved[] = {
	"io.katacontainers.",
	"io.kubernetes.cri.",
	"io.kubernetes.cri-o.",
};

int kata_policy_init(struct kata_policy *p)
{
	*p = (struct kata_policy){
		.min_cpu_milli = 250,
		.min_memory = 256 * MIB,
		.min_memory_per_cpu = 1 * GIB,
		.max_memory_per_cpu = 8 * GIB,
		.overhead_cpu_milli = 100,
		.overhead_memory = 100 * MIB,
	};
	p->reserved_annotations = calloc(ARRAY_SIZE(default_reserved), sizeof(char *));
	if (!p->reserved_annotations)
		return -ENOMEM;
	for (size_t i = 0; i < ARRAY_SIZE(default_reserved); i++) {
		p->reserved_annotations[i] = strdup(default_reserved[i]);
		if (!p->reserved_annotations[i]) {
			kata_policy_clear(p);
			return -ENOMEM;
		}
		p->n_reserved_annotations++;
	}
	return 0;
}

void kata_policy_clear(struct kata_policy *p)
{
	for (size_t i = 0; i < p->n_reserved_annotations; i++)
		free(p->reserved_annotations[i]);
	for (size_t i = 0; i < p->n_allowed_annotations; i++)
		free(p->allowed_annotations[i]);
	free(p->reserved_annotations);
	free(p->allowed_annotations);
	p->reserved_annotations = p->allowed_annotations = NULL;
	p->n_reserved_annotations = p->n_allowed_annotations = 0;
}

int parse_cpu_milli(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0 || !isfinite(v))
		return -EINVAL;
	if (streq(end, "m"))
		v /= MILLI_PER_CORE;
	else if (*end)
		return -EINVAL;
	if (v > 1e6)
		return -ERANGE;
	*out = llround(v * MILLI_PER_CORE);
	return 0;
}

int parse_bytes(const char *s, int64_t *out)
{
	static const struct {
		const char *suffix;
		double factor;
	} units[] = {
		{"", 1},
		{"k", 1e3},
		{"K", 1e3},
		{"M", 1e6},
		{"G", 1e9},
		{"T", 1e12},
		{"Ki", 1024.0},
		{"Mi", 1048576.0},
		{"Gi", 1073741824.0},
		{"Ti", 1099511627776.0},
	};
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0 || !isfinite(v))
		return -EINVAL;
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		if (streq(end, units[i].suffix)) {
			double bytes = v * units[i].factor;
			if (bytes > 9e18)
				return -ERANGE;
			*out = llround(bytes);
			return 0;
		}
	}
	return -EINVAL;
}

void crx_config_clear(struct crx_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n_backends; i++) {
		struct crx_backend_config *b = &cfg->backends[i];
		for (size_t j = 0; j < b->n_options; j++) {
			free(b->options[j].key);
			free(b->options[j].value);
			free(b->options[j].file);
		}
		free(b->options);
		free(b->name);
		free(b->type);
		free(b->endpoint);
	}
	free(cfg->backends);
	for (size_t i = 0; i < cfg->n_handlers; i++) {
		struct crx_handler_config *h = &cfg->handlers[i];
		free(h->name);
		free(h->backend);
		free(h->runtime_handler);
		free(h->where);
		free(h->kata_where);
		kata_policy_clear(&h->kata);
	}
	free(cfg->handlers);
	free(cfg->default_handler);
	free(cfg->socket_path);
	free(cfg->metrics_address);
	*cfg = (struct crx_config){0};
}

const struct crx_backend_config *crx_config_backend(const struct crx_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_backends; i++)
		if (streq(cfg->backends[i].name, name))
			return &cfg->backends[i];
	return NULL;
}

const char *crx_backend_option(const struct crx_backend_config *b, const char *key)
{
	for (size_t i = 0; i < b->n_options; i++)
		if (streq(b->options[i].key, key))
			return b->options[i].value;
	return NULL;
}

const struct crx_handler_config *crx_config_handler(const struct crx_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_handlers; i++)
		if (streq(cfg->handlers[i].name, name))
			return &cfg->handlers[i];
	return NULL;
}

int crx_metrics_address_parse(const char *s, struct crx_metrics_address *out, struct crx_err *err)
{
	struct crx_metrics_address a = {0};
	if (strncmp(s, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)&a.addr;
		const char *path = s + 5;
		if (path[0] != '/')
			return crx_err_set(err, -EINVAL, "\"%s\": unix:PATH needs an absolute path",
					   s);
		if (strlen(path) >= sizeof(un->sun_path))
			return crx_err_set(err, -EINVAL,
					   "\"%s\" is longer than a unix socket path may be "
					   "(%zu bytes)",
					   s, sizeof(un->sun_path) - 1);
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, path);
		a.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
		a.loopback = true;
		*out = a;
		return 0;
	}
	char host[64];
	const char *port;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
			goto bad;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof(host) || strchr(s, ':') != colon)
			goto bad;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	char *end;
	errno = 0;
	unsigned long p = strtoul(port, &end, 10);
	if (!*port || *end || errno || p == 0 || p > 65535 || port[0] == '+' || port[0] == '-')
		goto bad;
	struct sockaddr_in *in = (struct sockaddr_in *)&a.addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a.addr;
	if (s[0] != '[' && inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)p);
		a.len = sizeof(*in);
		a.loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	} else if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		a.len = sizeof(*in6);
		a.loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	} else {
		goto bad;
	}
	*out = a;
	return 0;
bad:
	return crx_err_set(err, -EINVAL,
			   "\"%s\" is not an address like 127.0.0.1:9500, [::1]:9500 or "
			   "unix:/run/crimux/metrics.sock",
			   s);
}
