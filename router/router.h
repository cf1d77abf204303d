/* Decides what happens to each incoming CRI call: crimux answers it, or it
 * goes to the backend that owns it, or to every backend and the replies are
 * merged. See docs/routing.md for the rules. */
#pragma once

#include <stdbool.h>

#include "common/err.h"
#include "cri/rpc.h"
#include "common/crx-config.h"

struct router;

/* Opens the configured backends. cfg must outlive the router. */
int router_new(const struct crx_config *cfg, struct router **out, struct crx_err *err);
/* The same for a reload: a backend of prev whose configuration is unchanged
 * is shared with prev rather than opened a second time (prev may be NULL). */
int router_renew(const struct crx_config *cfg, struct router *prev, struct router **out,
		 struct crx_err *err);
void router_free(struct router *router);

/* Learns who owns what from every backend's lists, and checks that the
 * backends agree on the cgroup driver. Backends that do not answer are left
 * out (their objects are learned on first use) and named in *unreachable
 * (malloc'd, NULL when all answered). */
struct router_census {
	unsigned sandboxes, containers;
	char *unreachable;
};
int router_rebuild(struct router *router, struct router_census *census, struct crx_err *err);

/* Asks every backend for its Version (each bounded by timeout_ms). *summary
 * (malloc'd) reads "up: a, b; down: c"; the result tells whether the default
 * backend answered. */
bool router_health(struct router *router, unsigned timeout_ms, char **summary);

/* The rpc_server dispatch function; userdata is the router. */
void router_dispatch(struct rpc_call *call, void *userdata);
