/* Files that must survive a crash or a power loss: written whole to a
 * temporary file with a unique name beside the target, flushed to disk,
 * renamed over the target, and the directory flushed too, so that after a
 * power loss the path holds either the old content or the new, never a
 * mix or nothing. Two writers of one path never share a temporary file. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

#include "common/err.h"

/* Replaces path with data, as above; mode is the new file's (umask is not
 * consulted). */
int crx_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
			  struct crx_err *err);
/* fsync of the directory holding path (after a rename or unlink in it). */
int crx_fsync_parent(const char *path);
