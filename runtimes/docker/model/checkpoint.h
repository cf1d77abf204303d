/* Per-sandbox checkpoint files: what Docker cannot keep for a pod (port
 * mappings, the host-network flag, the CNI configuration and result the
 * network was set up with, the pod IPs), so that CNI DEL works after a
 * crimuxd restart or after the pause container vanished. One JSON file per
 * sandbox, replaced atomically. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct dk_port {
	int protocol; /* Runtime__V1__Protocol */
	int32_t container_port, host_port;
	char host_ip[64];
};

struct dk_checkpoint {
	char *sandbox_id;
	char *name, *ns, *uid;
	uint32_t attempt;
	int64_t created_ns;
	bool host_network;
	struct dk_port *ports;
	size_t n_ports;
	/* Set once CNI ADD succeeded, cleared after DEL. */
	bool network_ready;
	char *netns;             /* the namespace ADD ran in */
	json_object *cni_conf;   /* the network configuration list used */
	json_object *cni_result; /* the last plugin's result */
	char **ips;
	size_t n_ips;
	/* The sandbox's CRI labels and annotations, as Docker labels, so a
	 * sandbox whose container vanished can still be listed. */
	json_object *labels;
	/* Rebuilt from Docker after the file was torn: never ready again. */
	bool distrusted;
};

/* What lists and removals need of a checkpoint (the state cache keeps them). */
struct dk_checkpoint_flags {
	bool host_network, network_ready, distrusted;
};

static inline struct dk_checkpoint_flags dk_checkpoint_flags(const struct dk_checkpoint *cp)
{
	return (struct dk_checkpoint_flags){.host_network = cp->host_network,
					    .network_ready = cp->network_ready,
					    .distrusted = cp->distrusted};
}

void dk_checkpoint_clear(struct dk_checkpoint *cp);

int dk_checkpoint_to_json(const struct dk_checkpoint *cp, json_object **out);
int dk_checkpoint_from_json(json_object *o, struct dk_checkpoint *cp, struct crx_err *err);

/* Files are <dir>/<sandbox id>.json. */
int dk_checkpoint_save(const char *dir, const struct dk_checkpoint *cp, struct crx_err *err);
/* -ENOENT when there is none. */
int dk_checkpoint_load(const char *dir, const char *id, struct dk_checkpoint *cp,
		       struct crx_err *err);
int dk_checkpoint_remove(const char *dir, const char *id, struct crx_err *err);
/* The sandbox IDs that have a checkpoint. */
int dk_checkpoint_list(const char *dir, char ***ids, size_t *n, struct crx_err *err);

/* Replaces path durably (common/file.h), mode 0600. */
int dk_write_file_atomic(const char *path, const char *data, size_t len, struct crx_err *err);
/* Reads a whole (small) file, NUL-terminated. */
int dk_read_file(const char *path, size_t max, char **out, size_t *len, struct crx_err *err);
/* mkdir -p. */
int dk_mkdir_p(const char *path, mode_t mode);
