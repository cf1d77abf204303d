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

#define READ_CHUNK  (256 * 1024)
#define MAX_ROTATED 9 /* Docker's rotated files: <log>.1 .. <log>.9 */
#define STATE_MAX   (64 * 1024)
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

struct entry {
	struct entry *next;
	char *id, *docker_log, *cri_log;
	int src_fd, dst_fd;
	ino_t src_ino; /* the Docker file being read; 0: not known yet */
	off_t offset;
	bool dirty;
	bool gone; /* Docker deleted the file (its container was removed) */
};

struct dk_logs {
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
	    dk_json_add_str(o, "cri_log", e->cri_log) < 0 ||
	    dk_json_add_int(o, "inode", (int64_t)e->src_ino) < 0 ||
	    dk_json_add_int(o, "offset", (int64_t)e->offset) < 0)
		return; /* tried again after the next batch */
	const char *text = dk_json_text(o);
	/* Written after the lines: a crash in between repeats lines, never
	 * loses them. No fsync: this protects against a crimuxd crash. */
	if (dk_write_file_atomic(path, text, strlen(text), false, NULL) == 0)
		e->dirty = false;
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
	free(e->cri_log);
	free(e);
}

static int open_dst(struct entry *e, struct crx_err *err)
{
	_cleanup_free_ char *dir = strdup(e->cri_log);
	if (!dir)
		return crx_err_set(err, -ENOMEM, "out of memory");
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		int r = dk_mkdir_p(dir, 0755);
		if (r < 0)
			return crx_err_set(err, r, "cannot create %s: %s", dir, strerror(-r));
	}
	int fd = open(e->cri_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return crx_err_set(err, -errno, "cannot open log %s: %s", e->cri_log,
				   strerror(errno));
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
	if (e->dirty)
		save_state(l, e);
	/* Removed behind crimux's back: let go of the deleted file. */
	struct stat st, path_st;
	if (e->src_fd >= 0 && fstat(e->src_fd, &st) == 0 && st.st_nlink == 0 &&
	    stat(e->docker_log, &path_st) < 0 && errno == ENOENT)
		e->gone = true;
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
			copy_entry(l, e);
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
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long)(l->interval_ms % 1000) * 1000000;
		ts.tv_sec += l->interval_ms / 1000 + ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&l->wake, &l->lock, &ts);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

int dk_logs_new(const char *state_dir, unsigned interval_ms, struct dk_logs **out,
		struct crx_err *err)
{
	int r = dk_mkdir_p(state_dir, 0700);
	if (r < 0)
		return crx_err_set(err, r, "cannot create %s: %s", state_dir, strerror(-r));
	struct dk_logs *l = calloc(1, sizeof(*l));
	if (!l || !(l->dir = strdup(state_dir)) || !(l->buf = malloc(READ_CHUNK))) {
		if (l) {
			free(l->dir);
			free(l);
		}
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	l->interval_ms = interval_ms ? interval_ms : 200;
	pthread_mutex_init(&l->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->wake, &ca);
	pthread_condattr_destroy(&ca);
	r = pthread_create(&l->thread, NULL, pump, l);
	if (r) {
		dk_logs_free(l);
		return crx_err_set(err, -r, "cannot start the log thread: %s", strerror(r));
	}
	l->started = true;
	*out = l;
	return 0;
}

void dk_logs_free(struct dk_logs *l)
{
	if (!l)
		return;
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
		entry_free(e);
	}
	pthread_cond_destroy(&l->wake);
	pthread_mutex_destroy(&l->lock);
	free(l->buf);
	free(l->dir);
	free(l);
}

/* The saved position of id, if it is for the same files. */
static void load_state(struct dk_logs *l, struct entry *e)
{
	_cleanup_free_ char *path = state_path(l, e->id), *text = NULL;
	size_t len;
	if (!path || dk_read_file(path, STATE_MAX, &text, &len, NULL) < 0)
		return;
	_cleanup_json_ json_object *o = NULL;
	if (dk_json_parse(text, len, &o, NULL) < 0 ||
	    !streq(dk_json_str(o, "docker_log"), e->docker_log))
		return;
	e->src_ino = (ino_t)dk_json_int(o, "inode", 0);
	e->offset = (off_t)dk_json_int(o, "offset", 0);
}

int dk_logs_track(struct dk_logs *l, const char *id, const char *docker_log, const char *cri_log,
		  struct crx_err *err)
{
	if (!dk_valid_id(id))
		return crx_err_set(err, -EINVAL, "\"%s\" is not a container ID", id);
	pthread_mutex_lock(&l->lock);
	struct entry *e = find(l, id);
	int r = 0;
	if (e)
		goto out;
	e = calloc(1, sizeof(*e));
	if (!e || !(e->id = strdup(id)) || !(e->docker_log = strdup(docker_log)) ||
	    !(e->cri_log = strdup(cri_log))) {
		if (e)
			e->src_fd = e->dst_fd = -1;
		entry_free(e);
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	e->src_fd = e->dst_fd = -1;
	load_state(l, e);
	r = open_dst(e, err);
	if (r < 0) {
		entry_free(e);
		goto out;
	}
	e->next = l->entries;
	l->entries = e;
	copy_entry(l, e);
out:
	pthread_mutex_unlock(&l->lock);
	return r;
}

int dk_logs_drain(struct dk_logs *l, const char *id)
{
	pthread_mutex_lock(&l->lock);
	struct entry *e = find(l, id);
	if (e)
		copy_entry(l, e);
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
		copy_entry(l, e);
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
		copy_entry(l, e);
		entry_free(e);
		break;
	}
	_cleanup_free_ char *path = dk_valid_id(id) ? state_path(l, id) : NULL;
	if (path)
		unlink(path);
	pthread_mutex_unlock(&l->lock);
}
