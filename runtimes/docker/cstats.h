/* Container and pod sandbox stats, read from cgroups and the netns. */
#pragma once

#include "runtimes/docker/shim.h"

int dk_container_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_list_container_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			    struct crx_err *);
int dk_pod_sandbox_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			 struct crx_err *);
int dk_list_pod_sandbox_stats(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			      struct crx_err *);
