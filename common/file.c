#include "config.h"

#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

int crx_fsync_parent(const char *path)
{
	_cleanup_free_ char *dir = strdup(path);
	if (!dir)
		return -ENOMEM;
	char *slash = strrchr(dir, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	_cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		return -errno;
	return 0;
}

int crx_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
			  struct crx_err *err)
{
	_cleanup_free_ char *tmp = NULL;
	if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	/* mkostemp: a name no other writer has, created exclusively. */
	_cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return crx_err_set(err, -errno, "cannot create a temporary file for %s: %s", path,
				   strerror(errno));
	const char *what = "write";
	int r = fchmod(fd, mode) < 0 ? -errno : write_all(fd, data, len);
	if (r == 0 && fsync(fd) < 0) {
		r = -errno;
		what = "sync";
	}
	if (r == 0 && rename(tmp, path) < 0) {
		r = -errno;
		what = "rename";
	}
	if (r < 0) {
		unlink(tmp);
		return crx_err_set(err, r, "cannot %s %s: %s", what, path, strerror(-r));
	}
	/* The rename is durable once the directory entry is. */
	r = crx_fsync_parent(path);
	if (r < 0)
		return crx_err_set(err, r, "cannot sync the directory of %s: %s", path,
				   strerror(-r));
	return 0;
}
