/* The sandbox image made by crimux itself: a one-layer image holding the
 * project's static pause program, in the archive format `docker load`
 * takes. Nodes need no registry for it, and its content (hence its ID) is
 * the same on every node with the same binary. */
#pragma once

#include <stddef.h>

#include "common/err.h"

/* A docker-archive tarball of the image `ref` whose entrypoint is /pause,
 * the file at binary. */
int dk_pause_archive(const char *binary, const char *ref, char **out, size_t *len,
		     struct crx_err *err);

/* A minimal ustar writer, for the archive and the tests. */
struct dk_tar {
	char *data;
	size_t len, cap;
	int failed;
};
void dk_tar_file(struct dk_tar *t, const char *name, const void *data, size_t len, unsigned mode);
void dk_tar_dir(struct dk_tar *t, const char *name);
/* Adds the two zero blocks that end an archive. */
void dk_tar_finish(struct dk_tar *t);

/* "sha256:<hex>" of data. */
int dk_sha256(const void *data, size_t len, char out[72]);
