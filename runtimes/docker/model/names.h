/* How CRI objects are represented as Docker containers: names that make a
 * retried create collide (idempotency), and labels that carry what Docker
 * cannot store otherwise (the CRI metadata, labels, annotations, log path,
 * sandbox membership). Pure functions, unit tested. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "runtimes/docker/model/arena.h"

/* The kubelet dockershim's internal labels, kept for familiarity. */
#define DK_LABEL_TYPE        "io.kubernetes.docker.type"
#define DK_TYPE_SANDBOX      "podsandbox"
#define DK_TYPE_CONTAINER    "container"
#define DK_LABEL_SANDBOX_ID  "io.kubernetes.sandbox.id"
#define DK_LABEL_LOG_PATH    "io.kubernetes.container.logpath"
#define DK_ANNOTATION_PREFIX "annotation."
/* crimux's own: exact CRI metadata (names only hold a sanitised form) and
 * the creation time in nanoseconds, identical in List and Status. */
#define DK_LABEL_METADATA "io.crimux.docker.metadata"
#define DK_LABEL_CREATED  "io.crimux.docker.created"
#define DK_LABEL_HANDLER  "io.crimux.docker.runtime-handler"
/* The log path's root, the sandbox's log_directory: with the log path
 * label, where the CRI log goes (the path below it is what is confined). */
#define DK_LABEL_LOG_DIRECTORY "io.crimux.docker.log-directory"
/* The image as the pod spec named it (ImageSpec.user_specified_image). */
#define DK_LABEL_USER_IMAGE "io.crimux.docker.user-image"

#define DK_NAME_PREFIX  "k8s"
#define DK_SANDBOX_NAME "POD"

struct dk_sandbox_meta {
	const char *name, *uid, *ns;
	uint32_t attempt;
};

struct dk_container_meta {
	const char *name;
	uint32_t attempt;
};

/* k8s_POD_<pod>_<namespace>_<uid>_<attempt>; -EINVAL if a part holds a
 * character Docker does not allow in names. */
int dk_sandbox_name(const struct dk_sandbox_meta *m, char **out, struct crx_err *err);
/* k8s_<container>_<pod>_<namespace>_<uid>_<attempt>. */
int dk_container_name(const struct dk_container_meta *c, const struct dk_sandbox_meta *s,
		      char **out, struct crx_err *err);
/* Splits a name made above (a leading '/' allowed). Strings point into buf. */
int dk_parse_name(const char *name, char *buf, size_t size, bool *sandbox,
		  struct dk_sandbox_meta *s, struct dk_container_meta *c);

/* Docker labels for a CRI object: labels as they are, annotations prefixed.
 * Entries are any protobuf-c map entries (struct dk_pb_kv). */
int dk_labels_add_cri(json_object *labels, size_t n_labels, void *const *label_entries,
		      size_t n_ann, void *const *ann_entries);
/* Splits Docker labels back into CRI labels and annotations, leaving out
 * the internal ones. Either output may be skipped with a NULL count. */
int dk_labels_to_cri(struct dk_arena *a, json_object *labels,
		     const ProtobufCMessageDescriptor *label_desc, size_t *n_labels,
		     void ***label_entries, const ProtobufCMessageDescriptor *ann_desc,
		     size_t *n_ann, void ***ann_entries);
bool dk_label_is_internal(const char *key);
/* -EINVAL when a CRI label (what: "sandbox" or "container") uses a key
 * crimux keeps for itself: an internal label, or one starting with
 * "io.crimux." or "annotation." (how annotations are stored). */
int dk_labels_check_cri(const char *what, size_t n, void *const *entries, struct crx_err *err);
/* Sets every internal label not set yet to "": Docker adds the image's
 * labels under the container's, and an image must not supply crimux's. */
int dk_labels_reserve(json_object *labels);

/* The metadata label: {"name":..,"uid":..,"namespace":..,"attempt":N}; a
 * container's holds only name and attempt. */
char *dk_meta_label(const char *name, const char *uid, const char *ns, uint32_t attempt);
/* Parses it; strings are copied into a. Falls back to the container name. */
int dk_meta_parse(struct dk_arena *a, json_object *labels, const char *docker_name, char **name,
		  char **uid, char **ns, uint32_t *attempt);

/* CRI label selector: every pair must match the CRI labels. */
bool dk_labels_match(json_object *labels, size_t n, void *const *selector);
