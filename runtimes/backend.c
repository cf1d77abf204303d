#include "config.h"

#include "runtimes/backend.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const struct backend_ops *const known_types[] = {
	&cri_backend_ops,
	&docker_backend_ops,
};

const struct backend_ops *backend_type_find(const char *type)
{
	for (size_t i = 0; i < ARRAY_SIZE(known_types); i++)
		if (streq(known_types[i]->type, type))
			return known_types[i];
	return NULL;
}

int backend_open(const struct crx_backend_config *cfg, struct backend **out, struct crx_err *err)
{
	const struct backend_ops *ops = backend_type_find(cfg->type);
	if (!ops)
		return crx_err_set(err, -EINVAL, "backend %s: unknown type %s", cfg->name,
				   cfg->type);
	struct backend *b = calloc(1, sizeof(*b));
	if (!b || !(b->name = strdup(cfg->name))) {
		free(b);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	b->ops = ops;
	atomic_init(&b->refs, 1);
	int r = ops->open(b, cfg, err);
	if (r < 0) {
		free(b->name);
		free(b);
		return r;
	}
	*out = b;
	return 0;
}

struct backend *backend_ref(struct backend *b)
{
	atomic_fetch_add(&b->refs, 1);
	return b;
}

void backend_free(struct backend *b)
{
	if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	b->ops->close(b);
	free(b->name);
	free(b);
}

static bool same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && streq(a, b));
}

bool backend_config_same(const struct crx_backend_config *a, const struct crx_backend_config *b)
{
	if (!same_str(a->name, b->name) || !same_str(a->type, b->type) ||
	    !same_str(a->endpoint, b->endpoint) || a->n_options != b->n_options)
		return false;
	for (size_t i = 0; i < a->n_options; i++) {
		const char *other = crx_backend_option(b, a->options[i].key);
		if (!other || !streq(other, crx_backend_option(a, a->options[i].key)))
			return false;
	}
	return true;
}
