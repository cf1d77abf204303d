/* The image service on Docker's image store. */
#pragma once

#include "runtimes/docker/shim.h"

int dk_list_images(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		   struct crx_err *);
int dk_image_status(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		    struct crx_err *);
int dk_pull_image(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **, struct crx_err *);
int dk_remove_image(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		    struct crx_err *);
int dk_image_fs_info(struct dk_ctx *, const ProtobufCMessage *, ProtobufCMessage **,
		     struct crx_err *);
/* Makes sure the sandbox image is there: loaded from pause_binary when
 * configured, else pulled. */
int dk_ensure_pause_image(struct dk_ctx *c, struct crx_err *err);

/* "X-Registry-Auth: <base64url of Docker's AuthConfig JSON>" for a CRI
 * AuthConfig (NULL: *out NULL). Every intermediate copy of the secret is
 * wiped before it is freed; the caller wipes *out after use. -EINVAL when
 * "auth" is not base64 of "user:password". */
int dk_registry_auth_header(const Runtime__V1__AuthConfig *auth, char **out);
