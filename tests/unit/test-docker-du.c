/* The writable-layer walk (model/du.h) on trees a container could make:
 * deeper than any stack, larger than the budget, with links out. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/model/du.h"
#include "tap.h"

#define DEEP 50000

static char root[] = "/tmp/crimux-du-XXXXXX";

static void write_file(const char *path, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	char buf[4096];
	memset(buf, 'x', sizeof(buf));
	for (size_t done = 0; fd >= 0 && done < size; done += sizeof(buf))
		if (write(fd, buf, sizeof(buf)) < 0)
			break;
	close(fd);
}

static void small_tree(void)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/small", root);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/small/a", root);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/small/a/b", root);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/small/a/b/f", root);
	write_file(path, 65536);
	snprintf(path, sizeof(path), "%s/small/g", root);
	write_file(path, 4096);
	/* A link out of the tree is one entry, never followed. */
	snprintf(path, sizeof(path), "%s/small/a/out", root);
	ok(symlink("/usr", path) == 0, "a link out of the tree");

	snprintf(path, sizeof(path), "%s/small", root);
	struct dk_du du;
	is_int(dk_disk_usage(path, NULL, &du), 0, "a small tree");
	is_int(du.inodes, 6, "root, a, a/b, a/b/f, g, a/out");
	ok(du.bytes >= 65536 + 4096, "the files' blocks are counted (%llu)",
	   (unsigned long long)du.bytes);
	ok(du.complete, "complete");

	snprintf(path, sizeof(path), "%s/small/a/out", root);
	is_int(dk_disk_usage(path, NULL, &du), -ENOTDIR, "a link as the root is not followed");
	snprintf(path, sizeof(path), "%s/nothing", root);
	is_int(dk_disk_usage(path, NULL, &du), -ENOENT, "a missing root");
}

/* DEEP nested directories "d", made and removed without recursion or
 * long paths. */
static int make_deep(const char *top)
{
	int fd = open(top, O_RDONLY | O_DIRECTORY);
	for (int i = 0; fd >= 0 && i < DEEP; i++) {
		if (mkdirat(fd, "d", 0755) < 0)
			return -errno;
		int child = openat(fd, "d", O_RDONLY | O_DIRECTORY);
		close(fd);
		fd = child;
	}
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static void remove_deep(const char *top)
{
	int fd = open(top, O_RDONLY | O_DIRECTORY);
	int depth = 0;
	for (int child; fd >= 0 && (child = openat(fd, "d", O_RDONLY | O_DIRECTORY)) >= 0;
	     depth++) {
		close(fd);
		fd = child;
	}
	for (; fd >= 0 && depth > 0; depth--) {
		int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY);
		close(fd);
		fd = parent;
		if (fd >= 0)
			unlinkat(fd, "d", AT_REMOVEDIR);
	}
	if (fd >= 0)
		close(fd);
	rmdir(top);
}

struct job {
	const char *path;
	struct dk_du_budget budget;
	struct dk_du du;
	int r;
};

static void *run(void *arg)
{
	struct job *j = arg;
	j->r = dk_disk_usage(j->path, &j->budget, &j->du);
	return NULL;
}

/* On a thread with a 64 KiB stack: a recursive walk needs ~20 MiB here. */
static void on_small_stack(struct job *j)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	pthread_t t;
	if (pthread_create(&t, &attr, run, j) == 0)
		pthread_join(t, NULL);
	else
		j->r = -EAGAIN;
	pthread_attr_destroy(&attr);
}

static void deep_tree(void)
{
	char top[256];
	snprintf(top, sizeof(top), "%s/deep", root);
	mkdir(top, 0755);
	if (!ok(make_deep(top) == 0, "made a tree %d deep", DEEP))
		return;

	struct job j = {.path = top};
	on_small_stack(&j);
	is_int(j.r, 0, "the deep tree is measured on a 64 KiB stack");
	is_int(j.du.inodes, DEEP + 1, "every level counted");
	ok(j.du.complete, "complete");

	j = (struct job){.path = top, .budget = {.max_entries = 1000}};
	on_small_stack(&j);
	is_int(j.r, 0, "an entry budget");
	ok(j.du.inodes == 1000 && !j.du.complete, "stops at the budget, a lower bound (%llu)",
	   (unsigned long long)j.du.inodes);

	j = (struct job){.path = top, .budget = {.max_ms = 1}};
	usleep(0);
	on_small_stack(&j);
	ok(j.r == 0 && j.du.inodes <= DEEP + 1, "a time budget ends the walk with a count");

	remove_deep(top);
	ok(access(top, F_OK) < 0, "cleaned up");
}

/* A wide directory: every entry is listed before any is entered, and the
 * list is bounded by the budget too. */
static void wide_tree(void)
{
	char top[256], path[300];
	snprintf(top, sizeof(top), "%s/wide", root);
	mkdir(top, 0755);
	for (int i = 0; i < 2000; i++) {
		snprintf(path, sizeof(path), "%s/%d", top, i);
		mkdir(path, 0755);
	}
	struct dk_du du;
	is_int(dk_disk_usage(top, NULL, &du), 0, "a wide tree");
	is_int(du.inodes, 2001, "all of it");
	struct dk_du_budget b = {.max_entries = 500};
	is_int(dk_disk_usage(top, &b, &du), 0, "a wide tree on a budget");
	ok(du.inodes == 500 && !du.complete, "stops within the first directory");
	for (int i = 0; i < 2000; i++) {
		snprintf(path, sizeof(path), "%s/%d", top, i);
		rmdir(path);
	}
	rmdir(top);
}

int main(void)
{
	if (!mkdtemp(root)) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	small_tree();
	deep_tree();
	wide_tree();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", root);
	printf("1..%d\n", tap_count);
	return tap_failed ? 1 : 0;
}
