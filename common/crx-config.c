#include "config.h"

#include "common/crx-config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
