/* Disk usage of a directory tree a container controls (its writable
 * layer). The tree is hostile: it may be deeper than any stack, larger
 * than any reasonable walk, and change while it is walked. The walk keeps
 * its path on the heap (no recursion), stays on the root's file system,
 * never follows a symbolic link, goes back up only to a directory it
 * verified (device and inode), and stops at a budget of entries and time,
 * reporting what it counted so far. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct dk_du_budget {
	uint64_t max_entries; /* 0: no limit */
	uint64_t max_ms;      /* 0: no limit */
};

struct dk_du {
	uint64_t bytes;  /* allocated: st_blocks * 512 */
	uint64_t inodes; /* every entry, the root included */
	/* false when the budget ran out or the tree changed under the walk:
	 * bytes and inodes are then a lower bound. */
	bool complete;
};

/* Measures the tree at root. Negative errno when root itself cannot be
 * opened; everything below it is best effort. */
int dk_disk_usage(const char *root, const struct dk_du_budget *budget, struct dk_du *out);
