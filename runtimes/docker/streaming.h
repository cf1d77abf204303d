/* Exec, attach and port-forward: the URLs and the runtime side. */
#pragma once

#include "stream/stream.h"
#include "runtimes/docker/shim.h"

extern const struct stream_runtime_ops dk_stream_ops;
int dk_exec_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_attach_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_port_forward_url(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
