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
	int r = ops->open(b, cfg, err);
	if (r < 0) {
		free(b->name);
		free(b);
		return r;
	}
	*out = b;
	return 0;
}

void backend_free(struct backend *b)
{
	if (!b)
		return;
	b->ops->close(b);
	free(b->name);
	free(b);
}
