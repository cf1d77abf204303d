/* Container events (GetContainerEvents) from Docker's event stream. */
#pragma once

#include "runtimes/docker/shim.h"

struct dk_events;
int dk_events_open(struct dk_shim *ds, struct rpc_call *parent, struct dk_events **out,
		   struct crx_err *err);
/* 1 and a packed ContainerEventResponse, or 0 and how the stream ended. */
int dk_events_next(struct dk_events *e, struct rpc_buf *msg, struct rpc_result *end);
void dk_events_cancel(struct dk_events *e);
void dk_events_free(struct dk_events *e);
