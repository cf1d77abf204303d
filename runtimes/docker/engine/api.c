#include "config.h"

#include "runtimes/docker/engine/api.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/json.h"

#define ANSWER_MAX (64 * MIB)

bool dk_valid_id(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n == 0 || n > 128)
		return false;
	for (const char *p = id; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr(".-_", *p))
			return false;
	return true;
}

int dk_status_errno(int status)
{
	if (status < 400)
		return 0;
	switch (status) {
	case 400:
		return -EINVAL;
	case 401:
		return -EACCES;
	case 403:
		return -EPERM;
	case 404:
		return -ENOENT;
	case 409:
		return -EBUSY;
	case 501:
		return -EOPNOTSUPP;
	case 503:
		return -EAGAIN;
	default:
		return -EIO;
	}
}

static int call_meanwhile(const char *sock, const char *method, const char *target,
			  json_object *body, const struct dk_deadline *dl,
			  void (*meanwhile)(void *), void *meanwhile_arg, json_object **out,
			  int *status, struct crx_err *err)
{
	_cleanup_free_ char *path = NULL;
	if (asprintf(&path, "%s%s", DK_API_PREFIX, target) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	const char *text = body ? dk_json_text(body) : NULL;
	struct dk_http_request req = {
		.method = method,
		.target = path,
		.content_type = body ? "application/json" : NULL,
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.meanwhile = meanwhile,
		.meanwhile_arg = meanwhile_arg,
	};
	_cleanup_http_ struct dk_http_conn *c = NULL;
	int r = dk_http_open(sock, &req, dl, &c, err);
	if (r < 0)
		return r;
	int st = dk_http_status(c);
	if (status)
		*status = st;
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	r = dk_http_read_all(c, ANSWER_MAX, &data, &len, err);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *answer = NULL;
	const char *ctype = dk_http_header(c, "Content-Type");
	if (len && ctype && strstr(ctype, "json") && dk_json_parse(data, len, &answer, NULL) < 0 &&
	    st < 400)
		return crx_err_set(err, -EBADMSG, "dockerd sent invalid JSON for %s %s", method,
				   target);
	r = dk_status_errno(st);
	if (r < 0) {
		const char *msg = dk_json_str(answer, "message");
		if (!msg) {
			/* Plain-text errors end with a newline. */
			while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
				data[--len] = '\0';
			msg = len ? data : "no message";
		}
		return crx_err_set(err, r, "docker: %s", msg);
	}
	if (out)
		*out = TAKE_PTR(answer);
	return 0;
}

int dk_call(const char *sock, const char *method, const char *target, json_object *body,
	    const struct dk_deadline *dl, json_object **out, int *status, struct crx_err *err)
{
	return call_meanwhile(sock, method, target, body, dl, NULL, NULL, out, status, err);
}

int dk_callf(const char *sock, const char *method, json_object *body, const struct dk_deadline *dl,
	     json_object **out, int *status, struct crx_err *err, const char *fmt, ...)
{
	_cleanup_free_ char *target = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&target, fmt, ap);
	va_end(ap);
	if (n < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return dk_call(sock, method, target, body, dl, out, status, err);
}

int dk_container_inspect(const char *sock, const char *id, const struct dk_deadline *dl,
			 json_object **out, struct crx_err *err)
{
	_cleanup_free_ char *e = dk_http_escape(id, false);
	if (!e)
		return crx_err_set(err, -ENOMEM, "out of memory");
	json_object *o = NULL;
	int r = dk_callf(sock, "GET", NULL, dl, &o, NULL, err, "/containers/%s/json", e);
	if (r < 0)
		return r;
	if (!o || !json_object_is_type(o, json_type_object)) {
		if (o)
			json_object_put(o);
		return crx_err_set(err, -EBADMSG, "dockerd sent no container for %s", id);
	}
	*out = o;
	return 0;
}

int dk_container_list(const char *sock, json_object *filters, const struct dk_deadline *dl,
		      json_object **out, struct crx_err *err)
{
	_cleanup_free_ char *f = dk_http_escape(filters ? dk_json_text(filters) : "{}", false);
	if (!f)
		return crx_err_set(err, -ENOMEM, "out of memory");
	json_object *o = NULL;
	int r = dk_callf(sock, "GET", NULL, dl, &o, NULL, err, "/containers/json?all=1&filters=%s",
			 f);
	if (r < 0)
		return r;
	if (!o || !json_object_is_type(o, json_type_array)) {
		if (o)
			json_object_put(o);
		return crx_err_set(err, -EBADMSG, "dockerd sent no container list");
	}
	*out = o;
	return 0;
}

int dk_container_create(const char *sock, const char *name, json_object *body,
			const struct dk_deadline *dl, char **id, struct crx_err *err)
{
	_cleanup_free_ char *e = dk_http_escape(name, false);
	if (!e)
		return crx_err_set(err, -ENOMEM, "out of memory");
	_cleanup_json_ json_object *o = NULL;
	int status = 0;
	int r = dk_callf(sock, "POST", body, dl, &o, &status, err, "/containers/create?name=%s", e);
	if (r < 0 && status == 409) { /* the name is taken; Docker's message stays */
		if (err)
			err->code = -EEXIST;
		return -EEXIST;
	}
	if (r < 0)
		return r; /* Docker's own error (no such image...), not "no ID" */
	const char *cid = dk_json_str(o, "Id");
	if (!cid || !dk_valid_id(cid))
		return crx_err_set(err, -EBADMSG, "dockerd created %s without saying its ID", name);
	if (!(*id = strdup(cid)))
		return crx_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int dk_container_start(const char *sock, const char *id, const struct dk_deadline *dl,
		       struct crx_err *err)
{
	return dk_callf(sock, "POST", NULL, dl, NULL, NULL, err, "/containers/%s/start", id);
}

int dk_container_stop(const char *sock, const char *id, long timeout_s,
		      const struct dk_deadline *dl, struct crx_err *err)
{
	int status = 0;
	int r = dk_callf(sock, "POST", NULL, dl, NULL, &status, err, "/containers/%s/stop?t=%ld",
			 id, timeout_s < 0 ? 0 : timeout_s);
	return status == 404 ? 0 : r;
}

int dk_container_remove(const char *sock, const char *id, const struct dk_deadline *dl,
			void (*meanwhile)(void *), void *meanwhile_arg, struct crx_err *err)
{
	_cleanup_free_ char *target = NULL;
	if (asprintf(&target, "/containers/%s?force=1&v=1", id) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	int status = 0;
	int r = call_meanwhile(sock, "DELETE", target, NULL, dl, meanwhile, meanwhile_arg, NULL,
			       &status, err);
	if (status == 404)
		return 0;
	/* Removal already under way (a concurrent call): done as far as we care. */
	if (status == 409 && err && strstr(err->msg, "already in progress"))
		return 0;
	return r;
}

int dk_json_stream_check(struct dk_http_conn *c, struct crx_err *err)
{
	for (;;) {
		char *line;
		size_t len;
		int r = dk_http_read_line(c, 1 * MIB, &line, &len, err);
		if (r < 0)
			return r;
		if (r == 0)
			return 0;
		if (len == 0)
			continue;
		_cleanup_json_ json_object *m = NULL;
		if (dk_json_parse(line, len, &m, NULL) < 0)
			continue; /* progress bars are not our business */
		const char *e = dk_json_str(m, "error");
		if (!e)
			e = dk_json_str(dk_json_get(m, "errorDetail", NULL), "message");
		if (e) {
			/* Docker reports pull denials only in words. */
			int code = -EIO;
			if (strstr(e, "unauthorized") || strstr(e, "authentication required") ||
			    strstr(e, "denied") || strstr(e, "no basic auth credentials"))
				code = -EACCES;
			else if (strstr(e, "not found") || strstr(e, "manifest unknown"))
				code = -ENOENT;
			return crx_err_set(err, code, "docker: %s", e);
		}
	}
}

void dk_exec_result_clear(struct dk_exec_result *r)
{
	free(r->out);
	free(r->err);
	*r = (struct dk_exec_result){0};
}

/* Keeps at most cap bytes; the buffer grows geometrically (a flood would
 * otherwise copy the whole output on every frame). */
static int append_capped(char **buf, size_t *len, size_t *alloc, bool *truncated, size_t cap,
			 const char *data, size_t n)
{
	size_t room = cap > *len ? cap - *len : 0;
	if (n > room) {
		*truncated = true;
		n = room;
	}
	if (!n)
		return 0;
	if (*len + n + 1 > *alloc) {
		size_t want = *alloc ? *alloc * 2 : 65536;
		if (want < *len + n + 1)
			want = *len + n + 1;
		if (want > cap + 1)
			want = cap + 1;
		char *more = realloc(*buf, want);
		if (!more)
			return -ENOMEM;
		*buf = more;
		*alloc = want;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	(*buf)[*len] = '\0';
	return 0;
}

static int pidfd_open_(int pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Kills the process of pidfd (whose PID is pid) and every process below
 * it. Signals go through pidfds, never to a bare PID that may have been
 * recycled: the process is stopped first, so its children cannot be
 * reaped (a dead child stays a zombie with its PID), and each child's
 * pidfd is opened while that holds. */
static void kill_tree_fd(int pidfd, int pid, int depth)
{
	pidfd_signal(pidfd, SIGSTOP); /* no new children, no reaping */
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = depth < 16 ? opendir(path) : NULL;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char cpath[320];
		snprintf(cpath, sizeof(cpath), "/proc/%d/task/%s/children", pid, e->d_name);
		_cleanup_fclose_ FILE *f = fopen(cpath, "re");
		int child;
		while (f && fscanf(f, "%d", &child) == 1) {
			_cleanup_close_ int cfd = pidfd_open_(child);
			if (cfd >= 0)
				kill_tree_fd(cfd, child, depth + 1);
		}
	}
	if (d)
		closedir(d);
	pidfd_signal(pidfd, SIGKILL);
}

int dk_kill_tree(int pid, bool (*still_ours)(int pid, void *arg), void *arg)
{
	if (pid <= 0)
		return -ESRCH;
	_cleanup_close_ int pidfd = pidfd_open_(pid);
	if (pidfd < 0)
		return -errno;
	/* The PID named the right process when it was read; it still does if
	 * that process is alive now, after the pidfd pins whatever has it. */
	if (still_ours && !still_ours(pid, arg))
		return -ESRCH;
	kill_tree_fd(pidfd, pid, 0);
	return 0;
}

/* Docker sets ExitCode a moment after the stream ends: ask until it is. */
static int exec_inspect(const char *sock, const char *exec_id, const struct dk_deadline *dl,
			int *code, int *pid, struct crx_err *err)
{
	for (int i = 0;; i++) {
		_cleanup_json_ json_object *o = NULL;
		int r = dk_callf(sock, "GET", NULL, dl, &o, NULL, err, "/exec/%s/json", exec_id);
		if (r < 0)
			return r;
		if (pid)
			*pid = (int)dk_json_int(o, "Pid", 0);
		json_object *ec = dk_json_get(o, "ExitCode", NULL);
		if (!dk_json_bool(o, "Running") && ec && json_object_is_type(ec, json_type_int)) {
			if (code)
				*code = json_object_get_int(ec);
			return 0;
		}
		if (!code)
			return 0;
		if (i >= 100)
			return crx_err_set(err, -EIO, "docker did not report the exit code");
		nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
	}
}

int dk_exec_exit_code(const char *sock, const char *exec_id, const struct dk_deadline *dl,
		      int *code, struct crx_err *err)
{
	return exec_inspect(sock, exec_id, dl, code, NULL, err);
}

struct exec_ref {
	const char *sock, *exec_id;
};

/* Docker still has the exec running under that PID. */
static bool exec_still_runs(int pid, void *arg)
{
	const struct exec_ref *ref = arg;
	struct dk_deadline quick = dk_deadline_in(NULL, 5000);
	_cleanup_json_ json_object *o = NULL;
	return dk_callf(ref->sock, "GET", NULL, &quick, &o, NULL, NULL, "/exec/%s/json",
			ref->exec_id) == 0 &&
	       dk_json_bool(o, "Running") && dk_json_int(o, "Pid", 0) == pid;
}

void dk_exec_kill(const char *sock, const char *exec_id)
{
	int pid = 0;
	struct dk_deadline quick = dk_deadline_in(NULL, 5000);
	struct exec_ref ref = {sock, exec_id};
	if (exec_inspect(sock, exec_id, &quick, NULL, &pid, NULL) == 0 && pid > 0)
		dk_kill_tree(pid, exec_still_runs, &ref);
}

void dk_exec_abandon(const char *sock, const char *exec_id)
{
	/* Docker starts an exec whose start it was asked for even when the
	 * connection that asked is gone, at its own pace on a busy node: watch
	 * for up to 10 s and kill it once it runs. ExitCode reads 0 before the
	 * start too; Pid stays 0 until then. */
	struct dk_deadline quick = dk_deadline_in(NULL, 10000);
	/* Most such execs never start: ask less and less often (20 ms up to
	 * 640 ms, some 20 times in all), or ten thousand dropped sessions
	 * flood dockerd with inspects. */
	long wait_ms = 20;
	for (;;) {
		_cleanup_json_ json_object *o = NULL;
		if (dk_callf(sock, "GET", NULL, &quick, &o, NULL, NULL, "/exec/%s/json", exec_id) <
		    0)
			return;
		int pid = (int)dk_json_int(o, "Pid", 0);
		if (pid > 0) {
			struct exec_ref ref = {sock, exec_id};
			if (dk_json_bool(o, "Running"))
				dk_kill_tree(pid, exec_still_runs, &ref);
			return;
		}
		nanosleep(&(struct timespec){.tv_nsec = wait_ms * 1000 * 1000}, NULL);
		if (wait_ms < 640)
			wait_ms *= 2;
	}
}

int dk_exec_create(const char *sock, const char *id, char *const *argv, size_t argc,
		   const struct dk_exec_opts *o, const struct dk_deadline *dl, char **exec_id,
		   struct crx_err *err)
{
	_cleanup_json_ json_object *create = json_object_new_object();
	json_object *cmd = json_object_new_array();
	if (!create || dk_json_add(create, "Cmd", cmd) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < argc; i++)
		if (dk_json_append_str(cmd, argv[i]) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
	if (dk_json_add_bool(create, "AttachStdin", o->in) < 0 ||
	    dk_json_add_bool(create, "AttachStdout", o->out) < 0 ||
	    dk_json_add_bool(create, "AttachStderr", o->err) < 0 ||
	    dk_json_add_bool(create, "Tty", o->tty) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	_cleanup_json_ json_object *created = NULL;
	int status = 0;
	int r = dk_callf(sock, "POST", create, dl, &created, &status, err, "/containers/%s/exec",
			 id);
	if (r < 0) {
		/* 409: the container is not running. */
		if (status == 409 && err)
			err->code = -EBUSY;
		return status == 409 ? -EBUSY : r;
	}
	const char *eid = dk_json_str(created, "Id");
	if (!eid || !dk_valid_id(eid))
		return crx_err_set(err, -EBADMSG, "dockerd created an exec without an ID");
	if (!(*exec_id = strdup(eid)))
		return crx_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int dk_hijack(const char *sock, const char *target, const char *body, const struct dk_deadline *dl,
	      struct dk_http_conn **out, struct crx_err *err)
{
	_cleanup_free_ char *path = NULL;
	if (asprintf(&path, "%s%s", DK_API_PREFIX, target) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	struct dk_http_request req = {
		.method = "POST",
		.target = path,
		.content_type = body ? "application/json" : NULL,
		.body = body,
		.body_len = body ? strlen(body) : 0,
		.upgrade = true,
	};
	struct dk_http_conn *c = NULL;
	int r = dk_http_open(sock, &req, dl, &c, err);
	if (r < 0)
		return r;
	if (dk_http_status(c) >= 400) {
		_cleanup_free_ char *msg = NULL;
		dk_http_read_all(c, 64 * 1024, &msg, NULL, NULL);
		_cleanup_json_ json_object *o = NULL;
		const char *text = msg;
		if (msg && dk_json_parse(msg, strlen(msg), &o, NULL) == 0 &&
		    dk_json_str(o, "message"))
			text = dk_json_str(o, "message");
		r = crx_err_set(err, dk_status_errno(dk_http_status(c)), "docker: %s",
				text ? text : "failed");
		dk_http_close(c);
		return r;
	}
	*out = c;
	return 0;
}

int dk_exec_start(const char *sock, const char *exec_id, bool tty, const struct dk_deadline *dl,
		  struct dk_http_conn **out, struct crx_err *err)
{
	_cleanup_free_ char *target = NULL;
	if (asprintf(&target, "/exec/%s/start", exec_id) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	return dk_hijack(sock, target,
			 tty ? "{\"Detach\":false,\"Tty\":true}"
			     : "{\"Detach\":false,\"Tty\":false}",
			 dl, out, err);
}

int dk_frame_header(struct dk_http_conn *c, int *stream, size_t *len, struct crx_err *err)
{
	/* Frames: stream (0 stdin, 1 stdout, 2 stderr), 3 zero bytes, a
	 * big-endian length, then the payload. */
	unsigned char hdr[8];
	ssize_t n = dk_http_read(c, hdr, 1, err);
	if (n <= 0)
		return (int)n;
	int r = dk_http_read_full(c, hdr + 1, 7, err);
	if (r < 0)
		return r;
	*stream = hdr[0];
	*len = (size_t)hdr[4] << 24 | (size_t)hdr[5] << 16 | (size_t)hdr[6] << 8 | hdr[7];
	return 1;
}

int dk_exec_sync(const char *sock, const char *id, char *const *argv, size_t argc,
		 int64_t timeout_ms, size_t cap, const struct dk_deadline *dl,
		 struct dk_exec_result *res, struct crx_err *err)
{
	_cleanup_free_ char *exec_id = NULL;
	struct dk_exec_opts o = {.out = true, .err = true};
	int r = dk_exec_create(sock, id, argv, argc, &o, dl, &exec_id, err);
	if (r < 0)
		return r;
	struct dk_deadline run_dl = dk_deadline_in(dl, timeout_ms);
	_cleanup_http_ struct dk_http_conn *c = NULL;
	r = dk_exec_start(sock, exec_id, false, &run_dl, &c, err);
	if (r < 0)
		return r;
	dk_http_close_write(c);

	struct dk_exec_result out = {0};
	char chunk[16384];
	for (;;) {
		int stream;
		size_t left;
		r = dk_frame_header(c, &stream, &left, err);
		if (r <= 0)
			break;
		r = 0;
		while (left && r == 0) {
			size_t want = left < sizeof(chunk) ? left : sizeof(chunk);
			r = dk_http_read_full(c, chunk, want, err);
			if (r < 0)
				break;
			/* cap holds for both streams together, as CRI-O's: each
			 * may grow by what the other left. */
			size_t used = out.out_len + out.err_len;
			size_t room = cap > used ? cap - used : 0;
			if (stream == 1)
				r = append_capped(&out.out, &out.out_len, &out.out_cap,
						  &out.out_truncated, out.out_len + room, chunk,
						  want);
			else if (stream == 2)
				r = append_capped(&out.err, &out.err_len, &out.err_cap,
						  &out.err_truncated, out.err_len + room, chunk,
						  want);
			if (r == -ENOMEM)
				crx_err_set(err, r, "out of memory");
			left -= want;
		}
		if (r < 0)
			break;
	}
	if (r == -ETIMEDOUT && timeout_ms > 0 && (!dl || !dl->at_ms || dk_now_ms() < dl->at_ms)) {
		/* Our timeout, not the client's deadline: kill what runs. */
		dk_exec_kill(sock, exec_id);
		out.timed_out = true;
		*res = out;
		return crx_err_set(err, -ETIMEDOUT, "command timed out after %lld ms",
				   (long long)timeout_ms);
	}
	if (r < 0) {
		if (r == -ETIMEDOUT || r == -ECANCELED)
			dk_exec_kill(sock, exec_id);
		dk_exec_result_clear(&out);
		return r;
	}
	r = dk_exec_exit_code(sock, exec_id, dl, &out.exit_code, err);
	if (r < 0) {
		dk_exec_result_clear(&out);
		return r;
	}
	*res = out;
	return 0;
}
