/* Docker Engine API 1.41 calls over the HTTP client. Docker's HTTP status
 * codes become negative errnos here (the adapter of that error space):
 * 400 EINVAL, 401 EACCES, 403 EPERM, 404 ENOENT, 409 EBUSY, 5xx EIO, and
 * Docker's own message becomes the error's text. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>

#include "common/err.h"
#include "runtimes/docker/engine/http.h"

#define DK_API_PREFIX "/v1.41"

/* A Docker container or exec ID as clients may send it (hex, names): safe in
 * a URL path and a file name. */
bool dk_valid_id(const char *id);

/* Maps an HTTP status of Docker's to a negative errno (0 below 400). */
int dk_status_errno(int status);

/* One call with an optional JSON body; *out (if wanted) gets the parsed
 * JSON answer, or NULL when it had none. status (if wanted) gets the HTTP
 * status also when an error is returned. target is the path after the API
 * version prefix, already escaped. */
int dk_call(const char *sock, const char *method, const char *target, json_object *body,
	    const struct dk_deadline *dl, json_object **out, int *status, struct crx_err *err);
int dk_callf(const char *sock, const char *method, json_object *body, const struct dk_deadline *dl,
	     json_object **out, int *status, struct crx_err *err, const char *fmt, ...)
	__attribute__((format(printf, 8, 9)));

/* GET /containers/{id}/json: -ENOENT when there is no such container. */
int dk_container_inspect(const char *sock, const char *id, const struct dk_deadline *dl,
			 json_object **out, struct crx_err *err);
/* GET /containers/json?all=1 with Docker filters {"label":[..],"id":[..]}. */
int dk_container_list(const char *sock, json_object *filters, const struct dk_deadline *dl,
		      json_object **out, struct crx_err *err);
/* POST /containers/create?name=...: the new ID; -EEXIST when the name is
 * taken. */
int dk_container_create(const char *sock, const char *name, json_object *body,
			const struct dk_deadline *dl, char **id, struct crx_err *err);
/* Start and stop succeed when the container already is in that state;
 * stop, kill and remove also when it does not exist (idempotent). */
int dk_container_start(const char *sock, const char *id, const struct dk_deadline *dl,
		       struct crx_err *err);
int dk_container_stop(const char *sock, const char *id, long timeout_s,
		      const struct dk_deadline *dl, struct crx_err *err);
/* meanwhile (may be NULL) runs while dockerd removes it. */
int dk_container_remove(const char *sock, const char *id, const struct dk_deadline *dl,
			void (*meanwhile)(void *), void *meanwhile_arg, struct crx_err *err);

/* Reads a stream of JSON messages (pull, load) and fails with the first
 * "error" one. */
int dk_json_stream_check(struct dk_http_conn *c, struct crx_err *err);

/* Exec, the pieces: create, start (a hijacked raw stream), frames of
 * Docker's multiplexed stream, the exit code, killing what runs. */
struct dk_exec_opts {
	bool in, out, err, tty;
};
/* -EBUSY when the container does not run. */
int dk_exec_create(const char *sock, const char *id, char *const *argv, size_t argc,
		   const struct dk_exec_opts *o, const struct dk_deadline *dl, char **exec_id,
		   struct crx_err *err);
int dk_exec_start(const char *sock, const char *exec_id, bool tty, const struct dk_deadline *dl,
		  struct dk_http_conn **out, struct crx_err *err);
/* A POST upgraded to a raw stream (exec start, attach); body may be NULL. */
int dk_hijack(const char *sock, const char *target, const char *body, const struct dk_deadline *dl,
	      struct dk_http_conn **out, struct crx_err *err);
/* The next frame header of a multiplexed stream: 1 with its stream (1
 * stdout, 2 stderr) and length, 0 at the end. */
int dk_frame_header(struct dk_http_conn *c, int *stream, size_t *len, struct crx_err *err);
/* Waits (briefly) for Docker to record the exit code. */
int dk_exec_exit_code(const char *sock, const char *exec_id, const struct dk_deadline *dl,
		      int *code, struct crx_err *err);
/* Kills the exec'd process and everything below it. */
void dk_exec_kill(const char *sock, const char *exec_id);
/* Kills pid and everything below it through pidfds. still_ours (if given)
 * is asked after pid's pidfd is open whether pid is still the process
 * meant; nothing is signalled when it says no (-ESRCH). */
int dk_kill_tree(int pid, bool (*still_ours)(int pid, void *arg), void *arg);
/* For an exec whose start was asked for and whose client is gone (Docker
 * starts it anyway, maybe later): kills the process once it runs (10 s at
 * most). */
void dk_exec_abandon(const char *sock, const char *exec_id);

/* The exec'd process of ExecSync, multiplexed stream headers and all. */
struct dk_exec_result {
	char *out, *err; /* malloc'd, at most the cap together */
	size_t out_len, err_len;
	size_t out_cap, err_cap; /* allocated */
	bool out_truncated, err_truncated;
	int exit_code;
	bool timed_out;
};
void dk_exec_result_clear(struct dk_exec_result *r);
/* Runs argv in container id and collects its output up to cap bytes for
 * both streams together (the rest is read and dropped). timeout_ms 0: only dl bounds it;
 * when it expires the process is killed and timed_out set. */
int dk_exec_sync(const char *sock, const char *id, char *const *argv, size_t argc,
		 int64_t timeout_ms, size_t cap, const struct dk_deadline *dl,
		 struct dk_exec_result *res, struct crx_err *err);
