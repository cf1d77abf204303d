/* Version, Status and the runtime configuration, on Docker Engine. */
#pragma once

#include "runtimes/docker/shim.h"

int dk_version(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_runtime_config(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
int dk_update_runtime_config(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			     struct crx_err *);
