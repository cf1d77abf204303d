/* Containers: create, start, stop, remove, status, lists, exec, logs. */
#pragma once

#include "runtimes/docker/shim.h"

int dk_create_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_start_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_stop_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
int dk_remove_container(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_list_containers(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_container_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_update_container_resources(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
				  struct crx_err *);
int dk_reopen_container_log(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			    struct crx_err *);
int dk_exec_sync_call(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		      struct crx_err *);
/* Removes a container and what crimux keeps for it (log position, stats). */
int dk_remove_container_id(struct dk_ctx *c, const char *id, struct crx_err *err);
/* Starts following a container's log (after start, and at recovery). */
int dk_follow_log(struct dk_ctx *c, json_object *inspect, struct crx_err *err);
Runtime__V1__ContainerStatus *dk_container_status_msg(struct dk_ctx *c, json_object *inspect);
