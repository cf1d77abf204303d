#include "config.h"

#include "runtimes/docker/model/logs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/metrics.h"
#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/names.h"

#define READ_CHUNK    (256 * 1024)
#define MAX_ROTATED   9 /* Docker's rotated files: <log>.1 .. <log>.9 */
#define STATE_MAX     (64 * 1024)
#define STATE_SAVE_MS 1000
/* The size of the parts Docker's log copier cuts long lines into. */
#define DOCKER_MAX_MSG (16 * 1024)

int dk_log_line_to_cri(const char *line, size_t len, char **out, size_t *out_len)
{
	_cleanup_json_ json_object *o = NULL;
	if (dk_json_parse(line, len, &o, NULL) < 0)
		return -EINVAL;
	json_object *logv = dk_json_get(o, "log", NULL);
	const char *stream = dk_json_str(o, "stream");
	const char *time = dk_json_str(o, "time");
	if (!logv || !json_object_is_type(logv, json_type_string) || !stream || !time)
		return -EINVAL;
	const char *text = json_object_get_string(logv);
	size_t tlen = (size_t)json_object_get_string_len(logv);
	/* A full line ends with '\n'. Docker cuts longer ones into parts of
	 * exactly DOCKER_MAX_MSG bytes; a shorter piece without '\n' is the
	 * rest flushed when the stream ended, a line of its own (as containerd
	 * writes it too). */
	bool nl = tlen && text[tlen - 1] == '\n';
	bool full = nl || tlen < DOCKER_MAX_MSG;
	if (nl)
		tlen--;
	size_t n = strlen(time) + 1 + strlen(stream) + 3 + tlen + 1;
	char *s = malloc(n + 1);
	if (!s)
		return -ENOMEM;
	int head = snprintf(s, n + 1, "%s %s %c ", time, stream, full ? 'F' : 'P');
	memcpy(s + head, text, tlen);
	s[head + tlen] = '\n';
	s[head + tlen + 1] = '\0';
	*out = s;
	*out_len = (size_t)head + tlen + 1;
	return 0;
}

/* Whether one component of a path is "", "." or "..". */
static bool bad_component(const char *p, size_t n)
{
	return n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.');
}

int dk_log_path_check(const char *log_dir, const char *rel, struct crx_err *err)
{
	if (!log_dir || !*log_dir)
		return crx_err_set(err, -EINVAL,
				   "log_path \"%s\" needs the sandbox's log_directory, which is "
				   "empty",
				   rel);
	if (log_dir[0] != '/')
		return crx_err_set(err, -EINVAL, "log_directory \"%s\" is not absolute", log_dir);
	for (const char *p = log_dir + 1; *p;) {
		size_t n = strcspn(p, "/");
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return crx_err_set(err, -EINVAL, "log_directory \"%s\" has a \"..\"",
					   log_dir);
		p += n;
		p += *p == '/';
	}
	if (rel[0] == '/')
		return crx_err_set(err, -EINVAL,
				   "log_path \"%s\" is absolute: it must be relative to the "
				   "sandbox's log_directory",
				   rel);
	for (const char *p = rel;;) {
		size_t n = strcspn(p, "/");
		if (bad_component(p, n))
			return crx_err_set(err, -EINVAL,
					   "log_path \"%s\" has an empty, \".\" or \"..\" "
					   "component: it must name a file under the log_directory",
					   rel);
		if (!p[n])
			break;
		p += n + 1;
	}
	return 0;
}

int dk_log_open(const char *log_dir, const char *rel, int *out, struct crx_err *err)
{
	int r = dk_log_path_check(log_dir, rel, err);
	if (r < 0)
		return r;
	/* The directory is the kubelet's: made if missing, as it asked. */
	r = dk_mkdir_p(log_dir, 0755);
	if (r < 0)
		return crx_err_set(err, r, "cannot create %s: %s", log_dir, strerror(-r));
	_cleanup_close_ int dfd = open(log_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return crx_err_set(err, -errno, "cannot open %s: %s", log_dir, strerror(errno));
	/* Below it, one component at a time, none a symbolic link: whoever
	 * can write in the directory must not point crimux elsewhere. */
	_cleanup_free_ char *copy = strdup(rel);
	if (!copy)
		return crx_err_set(err, -ENOMEM, "out of memory");
	char *name = copy;
	for (char *slash; (slash = strchr(name, '/')); name = slash + 1) {
		*slash = '\0';
		if (mkdirat(dfd, name, 0755) < 0 && errno != EEXIST)
			return crx_err_set(err, -errno, "cannot create %s in %s: %s", name, log_dir,
					   strerror(errno));
		int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0) {
			int e = errno;
			return crx_err_set(err, e == ELOOP || e == ENOTDIR ? -ELOOP : -e,
					   "log path %s/%s: %s is %s", log_dir, rel, name,
					   e == ELOOP || e == ENOTDIR
						   ? "a symbolic link or not a directory"
						   : strerror(e));
		}
		close(dfd);
		dfd = sub;
	}
	/* O_NONBLOCK: a FIFO put in the file's place must not hang the open. */
	int fd = openat(dfd, name,
			O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
				O_CLOEXEC,
			0640);
	if (fd < 0) {
		int e = errno;
		if (e == ENXIO) /* a FIFO without a reader */
			return crx_err_set(err, -EBUSY, "log %s/%s is not a regular file", log_dir,
					   rel);
		return crx_err_set(err, e == ELOOP ? -ELOOP : -e, "cannot open log %s/%s: %s",
				   log_dir, rel,
				   e == ELOOP ? "it is a symbolic link" : strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
	    fcntl(fd, F_SETFL, O_WRONLY | O_APPEND) < 0) {
		bool linked = S_ISREG(st.st_mode) && st.st_nlink != 1;
		close(fd);
		return crx_err_set(err, -EBUSY, "log %s/%s is %s", log_dir, rel,
				   linked ? "a hard link to another file" : "not a regular file");
	}
	*out = fd;
	return 0;
}

struct entry {
	struct entry *next;
	char *id, *docker_log;
	char *log_dir, *log_path; /* the pod's log directory; the file under it */
	char *cri_log;            /* the two joined, for messages */
	int src_fd, dst_fd;
	ino_t src_ino; /* the Docker file being read; 0: not known yet */
	off_t offset;
	bool dirty;
	bool gone;         /* Docker deleted the file (its container was removed) */
	uint64_t saved_ms; /* when the position was last made durable */
};

struct dk_logs {
	/* In the registry of pumps (under registry_lock). */
	struct dk_logs *next_shared;
	unsigned refs;
	dev_t dir_dev;
	ino_t dir_ino;

	char *dir;
	unsigned interval_ms;
	pthread_t thread;
	bool started, stop;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct entry *entries;
	char *buf;
};

static char *state_path(const struct dk_logs *l, const char *id)
{
	char *p;
	return asprintf(&p, "%s/%s.json", l->dir, id) < 0 ? NULL : p;
}

static void save_state(struct dk_logs *l, struct entry *e)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	_cleanup_free_ char *path = state_path(l, e->id);
	if (!o || !path || dk_json_add_str(o, "docker_log", e->docker_log) < 0 ||
	    dk_json_add_str(o, "log_directory", e->log_dir) < 0 ||
	    dk_json_add_str(o, "log_path", e->log_path) < 0 ||
	    dk_json_add_int(o, "inode", (int64_t)e->src_ino) < 0 ||
	    dk_json_add_int(o, "offset", (int64_t)e->offset) < 0)
		return; /* tried again after the next batch */
	const char *text = dk_json_text(o);
	/* Written after the lines: a crash in between repeats lines, never
	 * loses them. */
	if (dk_write_file_atomic(path, text, strlen(text), NULL) == 0) {
		e->dirty = false;
		e->saved_ms = monotonic_ms();
	}
}

static void entry_free(struct entry *e)
{
	if (!e)
		return;
	if (e->src_fd >= 0)
		close(e->src_fd);
	if (e->dst_fd >= 0)
		close(e->dst_fd);
	free(e->id);
	free(e->docker_log);
	free(e->log_dir);
	free(e->log_path);
	free(e->cri_log);
	free(e);
}

static int open_dst(struct entry *e, struct crx_err *err)
{
	int fd;
	int r = dk_log_open(e->log_dir, e->log_path, &fd, err);
	if (r < 0)
		return r;
	if (e->dst_fd >= 0)
		close(e->dst_fd);
	e->dst_fd = fd;
	return 0;
}

/* The name of Docker's file number k (0: the current one). */
static void rotated_name(const struct entry *e, int k, char *buf, size_t size)
{
	if (k == 0)
		snprintf(buf, size, "%s", e->docker_log);
	else
		snprintf(buf, size, "%s.%d", e->docker_log, k);
}

/* Which of Docker's files has inode ino: 0 for the current, k for <log>.k,
 * -1 for none. */
static int find_inode(const struct entry *e, ino_t ino)
{
	char name[4096];
	for (int k = 0; k <= MAX_ROTATED; k++) {
		struct stat st;
		rotated_name(e, k, name, sizeof(name));
		if (stat(name, &st) == 0 && st.st_ino == ino)
			return k;
	}
	return -1;
}

static int open_src(struct entry *e, int k, off_t offset)
{
	char name[4096];
	rotated_name(e, k, name, sizeof(name));
	int fd = open(name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return -errno;
	}
	if (offset > st.st_size)
		offset = 0; /* not the file we knew */
	if (lseek(fd, offset, SEEK_SET) < 0) {
		close(fd);
		return -errno;
	}
	if (e->src_fd >= 0)
		close(e->src_fd);
	e->src_fd = fd;
	e->src_ino = st.st_ino;
	e->offset = offset;
	return 0;
}

/* Copies complete lines from the source file until its end. */
static void copy_lines(struct dk_logs *l, struct entry *e)
{
	for (;;) {
		ssize_t n = pread(e->src_fd, l->buf, READ_CHUNK, e->offset);
		if (n <= 0)
			return;
		size_t used = 0;
		for (;;) {
			char *nl = memchr(l->buf + used, '\n', (size_t)n - used);
			if (!nl)
				break;
			size_t len = (size_t)(nl - (l->buf + used));
			char *line;
			size_t line_len;
			if (dk_log_line_to_cri(l->buf + used, len, &line, &line_len) == 0) {
				int r = e->dst_fd >= 0 ? write_all(e->dst_fd, line, line_len) : 0;
				free(line);
				if (r < 0)
					break; /* e.g. disk full: retried next time */
				if (e->dst_fd >= 0)
					crx_metric_add(CRX_M_LOG_BYTES, (int64_t)line_len, NULL);
				else /* no CRI file to write to */
					crx_metric_add(CRX_M_LOG_DROPPED, 1, NULL);
			} else {
				crx_metric_add(CRX_M_LOG_DROPPED, 1, NULL); /* not a log entry */
			}
			used += len + 1;
		}
		if (used == 0) {
			if ((size_t)n == READ_CHUNK) {
				used = (size_t)n; /* a line longer than we take: skip it */
				crx_metric_add(CRX_M_LOG_DROPPED, 1, NULL);
			} else
				return; /* an incomplete last line: wait for the rest */
		}
		e->offset += (off_t)used;
		e->dirty = true;
		if ((size_t)n < READ_CHUNK)
			return;
	}
}

static void copy_entry(struct dk_logs *l, struct entry *e)
{
	if (e->src_fd < 0) {
		int k = e->src_ino ? find_inode(e, e->src_ino) : -1;
		if (k >= 0) {
			if (open_src(e, k, e->offset) < 0)
				return;
		} else if (open_src(e, 0, 0) < 0) {
			return; /* Docker has not created it yet */
		}
	}
	/* With a single file, Docker rotates by truncating it in place. */
	struct stat now;
	if (fstat(e->src_fd, &now) == 0 && now.st_size < e->offset) {
		e->offset = 0;
		e->dirty = true;
	}
	for (int hops = 0; hops <= MAX_ROTATED + 1; hops++) {
		copy_lines(l, e);
		struct stat st;
		char name[4096];
		rotated_name(e, 0, name, sizeof(name));
		if (stat(name, &st) < 0 || st.st_ino == e->src_ino)
			break;
		/* Docker rotated our file away. What it wrote before the rename
		 * is complete now: read that, then go to the next newer file. */
		copy_lines(l, e);
		int k = find_inode(e, e->src_ino);
		int next = k > 0 ? k - 1 : 0;
		if (open_src(e, next, 0) < 0)
			break;
	}
	/* Removed behind crimux's back: let go of the deleted file. */
	struct stat st, path_st;
	if (e->src_fd >= 0 && fstat(e->src_fd, &st) == 0 && st.st_nlink == 0 &&
	    stat(e->docker_log, &path_st) < 0 && errno == ENOENT)
		e->gone = true;
}

/* Copies, and saves the position now and then: each save is fsynced, at
 * most one a second per container, so a chatty one costs no more; a crash
 * repeats at most that much. */
static void follow_entry(struct dk_logs *l, struct entry *e)
{
	copy_entry(l, e);
	if (e->dirty && monotonic_ms() - e->saved_ms >= STATE_SAVE_MS)
		save_state(l, e);
}

static struct entry *find(struct dk_logs *l, const char *id)
{
	for (struct entry *e = l->entries; e; e = e->next)
		if (streq(e->id, id))
			return e;
	return NULL;
}

static void *pump(void *arg)
{
	struct dk_logs *l = arg;
	pthread_mutex_lock(&l->lock);
	while (!l->stop) {
		for (struct entry **p = &l->entries; *p;) {
			struct entry *e = *p;
			follow_entry(l, e);
			if (!e->gone) {
				p = &e->next;
				continue;
			}
			*p = e->next;
			_cleanup_free_ char *path = state_path(l, e->id);
			if (path)
				unlink(path);
			entry_free(e);
		}
		struct timespec ts = monotonic_in(l->interval_ms);
		pthread_cond_timedwait(&l->wake, &l->lock, &ts);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

/* One pump per state directory in the process: a second one would copy
 * every line again and write the same position files. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dk_logs *registry;

static void logs_destroy(struct dk_logs *l);

int dk_logs_new(const char *state_dir, unsigned interval_ms, struct dk_logs **out,
		struct crx_err *err)
{
	int r = dk_mkdir_p(state_dir, 0700);
	if (r < 0)
		return crx_err_set(err, r, "cannot create %s: %s", state_dir, strerror(-r));
	struct stat st;
	if (stat(state_dir, &st) < 0)
		return crx_err_set(err, -errno, "cannot read %s: %s", state_dir, strerror(errno));
	if (!interval_ms)
		interval_ms = 200;
	pthread_mutex_lock(&registry_lock);
	for (struct dk_logs *l = registry; l; l = l->next_shared) {
		if (l->dir_dev != st.st_dev || l->dir_ino != st.st_ino)
			continue;
		l->refs++;
		pthread_mutex_lock(&l->lock);
		l->interval_ms = interval_ms; /* the newest configuration's */
		pthread_cond_signal(&l->wake);
		pthread_mutex_unlock(&l->lock);
		pthread_mutex_unlock(&registry_lock);
		*out = l;
		return 0;
	}
	struct dk_logs *l = calloc(1, sizeof(*l));
	if (!l || !(l->dir = strdup(state_dir)) || !(l->buf = malloc(READ_CHUNK))) {
		if (l) {
			free(l->dir);
			free(l);
		}
		pthread_mutex_unlock(&registry_lock);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	l->interval_ms = interval_ms;
	l->refs = 1;
	l->dir_dev = st.st_dev;
	l->dir_ino = st.st_ino;
	pthread_mutex_init(&l->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->wake, &ca);
	pthread_condattr_destroy(&ca);
	r = pthread_create(&l->thread, NULL, pump, l);
	if (r) {
		pthread_mutex_unlock(&registry_lock);
		logs_destroy(l);
		return crx_err_set(err, -r, "cannot start the log thread: %s", strerror(r));
	}
	l->started = true;
	l->next_shared = registry;
	registry = l;
	pthread_mutex_unlock(&registry_lock);
	*out = l;
	return 0;
}

void dk_logs_free(struct dk_logs *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&registry_lock);
	if (--l->refs > 0) {
		pthread_mutex_unlock(&registry_lock);
		return;
	}
	for (struct dk_logs **p = &registry; *p; p = &(*p)->next_shared)
		if (*p == l) {
			*p = l->next_shared;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
	logs_destroy(l);
}

static void logs_destroy(struct dk_logs *l)
{
	if (l->started) {
		pthread_mutex_lock(&l->lock);
		l->stop = true;
		pthread_cond_signal(&l->wake);
		pthread_mutex_unlock(&l->lock);
		pthread_join(l->thread, NULL);
	}
	while (l->entries) {
		struct entry *e = l->entries;
		l->entries = e->next;
		copy_entry(l, e);
		if (e->dirty)
			save_state(l, e);
		entry_free(e);
	}
	pthread_cond_destroy(&l->wake);
	pthread_mutex_destroy(&l->lock);
	free(l->buf);
	free(l->dir);
	free(l);
}

/* id's state file (written by crimux alone): where it logs and how far it
 * was copied. A file that does not parse, or names a path that is not
 * confined to its directory, is -EBADMSG. */
static int read_state(struct dk_logs *l, const char *id, json_object **out)
{
	_cleanup_free_ char *path = state_path(l, id), *text = NULL;
	size_t len;
	if (!path)
		return -ENOMEM;
	int r = dk_read_file(path, STATE_MAX, &text, &len, NULL);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *o = NULL;
	if (dk_json_parse(text, len, &o, NULL) < 0)
		return -EBADMSG;
	const char *dir = dk_json_str(o, "log_directory"), *rel = dk_json_str(o, "log_path");
	if (!dir || !rel || dk_log_path_check(dir, rel, NULL) < 0)
		return -EBADMSG;
	*out = TAKE_PTR(o);
	return 0;
}

char *dk_log_join(const char *dir, const char *rel)
{
	char *p;
	size_t n = strlen(dir);
	return asprintf(&p, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", rel) < 0 ? NULL : p;
}

/* dir and the log path label: rel is what the label adds to dir. */
static int split_label(const char *dir, const char *full, char **log_dir, char **rel)
{
	size_t n = strlen(dir);
	if (!*dir || !full || strncmp(full, dir, n) != 0)
		return -EBADMSG;
	const char *below = full + n;
	if (dir[n - 1] != '/' && *below++ != '/')
		return -EBADMSG;
	if (dk_log_path_check(dir, below, NULL) < 0)
		return -EBADMSG;
	*log_dir = strdup(dir);
	*rel = strdup(below);
	if (!*log_dir || !*rel) {
		free(*log_dir);
		free(*rel);
		*log_dir = *rel = NULL;
		return -ENOMEM;
	}
	return 0;
}

int dk_logs_location(struct dk_logs *l, const char *id, json_object *labels, char **log_dir,
		     char **rel)
{
	*log_dir = *rel = NULL;
	if (!dk_valid_id(id))
		return -EINVAL;
	json_object *v;
	if (json_object_object_get_ex(labels, DK_LABEL_LOG_DIRECTORY, &v)) {
		const char *dir = json_object_get_string(v);
		if (!dir || !*dir)
			return -ENOENT;
		int r = split_label(dir, dk_json_str(labels, DK_LABEL_LOG_PATH), log_dir, rel);
		return r == -EBADMSG ? -ENOENT : r;
	}
	/* Made before the directory label: crimux recorded the path then. */
	_cleanup_json_ json_object *o = NULL;
	int r = read_state(l, id, &o);
	if (r < 0)
		return r == -EBADMSG ? -ENOENT : r;
	*log_dir = strdup(dk_json_str(o, "log_directory"));
	*rel = strdup(dk_json_str(o, "log_path"));
	if (!*log_dir || !*rel) {
		free(*log_dir);
		free(*rel);
		*log_dir = *rel = NULL;
		return -ENOMEM;
	}
	return 0;
}

int dk_logs_track(struct dk_logs *l, const char *id, const char *log_dir, const char *rel,
		  const char *docker_log, struct crx_err *err)
{
	if (!dk_valid_id(id))
		return crx_err_set(err, -EINVAL, "\"%s\" is not a container ID", id);
	int r = dk_log_path_check(log_dir, rel, err);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *saved = NULL;
	pthread_mutex_lock(&l->lock);
	struct entry *e = find(l, id);
	if (e)
		goto out;
	/* How far an earlier crimuxd copied, if one did (none, or nothing
	 * crimux can vouch for: from the top). */
	(void)read_state(l, id, &saved);
	e = calloc(1, sizeof(*e));
	if (e)
		e->src_fd = e->dst_fd = -1;
	if (!e || !(e->id = strdup(id)) || !(e->docker_log = strdup(docker_log)) ||
	    !(e->log_dir = strdup(log_dir)) || !(e->log_path = strdup(rel)) ||
	    !(e->cri_log = dk_log_join(log_dir, rel))) {
		entry_free(e);
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	/* The position is for the same Docker file only. */
	if (saved && streq(dk_json_str(saved, "docker_log"), docker_log)) {
		int64_t ino = dk_json_int(saved, "inode", 0), off = dk_json_int(saved, "offset", 0);
		e->src_ino = ino > 0 ? (ino_t)ino : 0;
		e->offset = off > 0 ? (off_t)off : 0;
	}
	r = open_dst(e, err);
	if (r < 0) {
		entry_free(e);
		goto out;
	}
	e->next = l->entries;
	l->entries = e;
	e->dirty = true; /* the state names Docker's file from now on */
	follow_entry(l, e);
out:
	pthread_mutex_unlock(&l->lock);
	return r;
}

int dk_logs_drain(struct dk_logs *l, const char *id)
{
	pthread_mutex_lock(&l->lock);
	struct entry *e = find(l, id);
	if (e) {
		copy_entry(l, e);
		if (e->dirty)
			save_state(l, e);
	}
	pthread_mutex_unlock(&l->lock);
	return e ? 0 : -ENOENT;
}

int dk_logs_reopen(struct dk_logs *l, const char *id, struct crx_err *err)
{
	pthread_mutex_lock(&l->lock);
	struct entry *e = find(l, id);
	int r;
	if (!e) {
		r = crx_err_set(err, -ENOENT, "the log of container %s is not followed", id);
	} else {
		follow_entry(l, e);
		r = open_dst(e, err);
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

int dk_logs_tracked(struct dk_logs *l, const char *id)
{
	pthread_mutex_lock(&l->lock);
	bool found = find(l, id) != NULL;
	pthread_mutex_unlock(&l->lock);
	return found;
}

void dk_logs_forget(struct dk_logs *l, const char *id)
{
	pthread_mutex_lock(&l->lock);
	for (struct entry **p = &l->entries; *p; p = &(*p)->next) {
		if (!streq((*p)->id, id))
			continue;
		struct entry *e = *p;
		*p = e->next;
		copy_entry(l, e); /* the last lines; no position to save, its file goes */
		entry_free(e);
		break;
	}
	pthread_mutex_unlock(&l->lock);
}

void dk_logs_drop_state(struct dk_logs *l, const char *id)
{
	/* No lock: only a followed entry is ever saved. */
	_cleanup_free_ char *path = dk_valid_id(id) ? state_path(l, id) : NULL;
	if (path)
		unlink(path);
}
