/* Decides what happens to each incoming CRI call: crimux answers it, or it
 * goes to the backend that owns it. */
#pragma once

#include "common/err.h"
#include "cri/rpc.h"
#include "daemon/conf.h"

struct router;

int router_new(const struct crx_config *cfg, struct router **out, struct crx_err *err);
void router_free(struct router *router);

/* The rpc_server dispatch function; userdata is the router. */
void router_dispatch(struct rpc_call *call, void *userdata);
