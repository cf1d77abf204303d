#include "config.h"

#include "runtimes/docker/model/du.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

/* One directory on the path from the root: its identity, to verify the
 * way back up, and the subdirectories still to visit. */
struct frame {
	dev_t dev;
	ino_t ino;
	char **names;
	size_t n, next;
};

struct walk {
	const struct dk_du_budget *budget;
	uint64_t deadline_ms;
	dev_t dev; /* the root's file system: mounts below it are not counted */
	struct dk_du *out;
	bool stop;
};

static void frame_clear(struct frame *f)
{
	for (size_t i = f->next; i < f->n; i++)
		free(f->names[i]);
	free(f->names);
	*f = (struct frame){0};
}

static bool over_budget(struct walk *w)
{
	const struct dk_du_budget *b = w->budget;
	if (b->max_entries && w->out->inodes >= b->max_entries)
		w->stop = true;
	/* The clock every 256 entries: cheap, and fine-grained enough. */
	else if (w->deadline_ms && w->out->inodes % 256 == 0 && monotonic_ms() >= w->deadline_ms)
		w->stop = true;
	return w->stop;
}

/* Counts the entries of the directory open at fd and lists its
 * subdirectories (same file system) into f. */
static int read_dir(struct walk *w, int fd, struct frame *f)
{
	int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dfd < 0)
		return -errno;
	DIR *d = fdopendir(dfd);
	if (!d) {
		int e = errno;
		close(dfd);
		return -e;
	}
	/* fdopendir reads from the descriptor's offset: start at the top. */
	rewinddir(d);
	size_t cap = 0;
	int r = 0;
	struct dirent *de;
	while (!over_budget(w) && (de = readdir(d))) {
		const char *name = de->d_name;
		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		struct stat st;
		if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* gone meanwhile */
		w->out->bytes += (uint64_t)st.st_blocks * 512;
		w->out->inodes++;
		if (!S_ISDIR(st.st_mode) || st.st_dev != w->dev)
			continue;
		if (f->n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			char **more = realloc(f->names, ncap * sizeof(*more));
			if (!more) {
				r = -ENOMEM;
				break;
			}
			f->names = more;
			cap = ncap;
		}
		if (!(f->names[f->n] = strdup(name))) {
			r = -ENOMEM;
			break;
		}
		f->n++;
	}
	closedir(d);
	return r;
}

int dk_disk_usage(const char *root, const struct dk_du_budget *budget, struct dk_du *out)
{
	static const struct dk_du_budget unlimited = {0};
	*out = (struct dk_du){0};
	struct walk w = {.budget = budget ? budget : &unlimited, .out = out};
	if (w.budget->max_ms)
		w.deadline_ms = monotonic_ms() + w.budget->max_ms;
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	w.dev = st.st_dev;
	out->bytes = (uint64_t)st.st_blocks * 512;
	out->inodes = 1;

	struct frame *stack = NULL;
	size_t depth = 0, cap = 0;
	bool broken = false;
	for (bool enter = true;;) {
		if (enter) {
			if (depth == cap) {
				size_t ncap = cap ? cap * 2 : 64;
				struct frame *more = realloc(stack, ncap * sizeof(*more));
				if (!more) {
					broken = true;
					break;
				}
				stack = more;
				cap = ncap;
			}
			struct frame *f = &stack[depth++];
			*f = (struct frame){.dev = st.st_dev, .ino = st.st_ino};
			if (read_dir(&w, fd, f) < 0) {
				broken = true;
				break;
			}
			enter = false;
		}
		if (w.stop)
			break;
		struct frame *top = &stack[depth - 1];
		if (top->next < top->n) {
			_cleanup_free_ char *name = top->names[top->next++];
			int child =
				openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (child < 0)
				continue; /* gone, or replaced by a link */
			if (fstat(child, &st) < 0 || st.st_dev != w.dev) {
				close(child);
				continue;
			}
			close(fd);
			fd = child;
			enter = true;
			continue;
		}
		frame_clear(top);
		if (--depth == 0)
			break;
		/* The way back up costs as much as the way down (60,000 opens of
		 * ".." for a tree that deep): on the same clock. */
		if (w.deadline_ms && monotonic_ms() >= w.deadline_ms) {
			w.stop = true;
			break;
		}
		/* Back up through "..", which must be the directory we came
		 * from: one moved meanwhile would lead anywhere. */
		int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		const struct frame *up = &stack[depth - 1];
		if (parent < 0 || fstat(parent, &st) < 0 || st.st_dev != up->dev ||
		    st.st_ino != up->ino) {
			if (parent >= 0)
				close(parent);
			broken = true;
			break;
		}
		close(fd);
		fd = parent;
	}
	for (size_t i = 0; i < depth; i++)
		frame_clear(&stack[i]);
	free(stack);
	close(fd);
	out->complete = !broken && !w.stop;
	return 0;
}
