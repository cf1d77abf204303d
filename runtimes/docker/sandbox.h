/* Pod sandboxes: the pause container, its network (CNI) and checkpoint. */
#pragma once

#include "runtimes/docker/shim.h"

int dk_run_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		       struct crx_err *);
int dk_stop_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
int dk_remove_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			  struct crx_err *);
int dk_pod_sandbox_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			  struct crx_err *);
int dk_list_pod_sandbox(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
			struct crx_err *);
/* The pod's IPs (primary first) for a sandbox: as recorded in its
 * checkpoint at set-up, else read from its namespace. */
int dk_sandbox_ips(struct dk_ctx *c, json_object *inspect, const struct dk_checkpoint *cp,
		   char ***ips, size_t *n);
/* Loads the CNI configuration: 0 when a valid one exists. */
int dk_cni_ready(struct dk_shim *ds, struct crx_err *err);

/* At start, once dockerd answers: every checkpoint that does not read
 * back (torn by a power loss, corrupt) is reported (ds->corrupt), kept
 * aside as <id>.json.corrupt, and not trusted: the pod's network is torn
 * down with the current CNI configuration (DEL by sandbox ID) and, if its
 * container still exists, a fresh checkpoint says NOTREADY. Temporary
 * files a crash left behind are removed. Each sandbox's Docker requests
 * get 10 s from base. < 0: some are left torn, for another try. */
int dk_sandbox_recover_checkpoints(struct dk_ctx *c, const struct dk_deadline *base);
