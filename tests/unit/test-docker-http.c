/* The docker backend's HTTP client and API layer against a fake dockerd on
 * a unix socket: body framings, error mapping, deadlines, cancellation,
 * JSON message streams and ExecSync's upgraded, multiplexed stream. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/http.h"
#include "runtimes/docker/engine/json.h"
#include "tap.h"

static char sock_path[200];
static int listener;
static char last_head[8192];
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;

/* Set by the client's meanwhile work, awaited by the server. */
static atomic_bool meanwhile_ran;

static void send_str(int fd, const char *s)
{
	size_t n = strlen(s);
	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void json_reply(int fd, int status, const char *body)
{
	char head[256];
	snprintf(head, sizeof(head),
		 "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		 status, strlen(body));
	send_str(fd, head);
	send_str(fd, body);
}

static void frame(int fd, int stream, const char *data, size_t n)
{
	unsigned char h[8] = {(unsigned char)stream,
			      0,
			      0,
			      0,
			      (unsigned char)(n >> 24),
			      (unsigned char)(n >> 16),
			      (unsigned char)(n >> 8),
			      (unsigned char)n};
	send(fd, h, 8, MSG_NOSIGNAL);
	send(fd, data, n, MSG_NOSIGNAL);
}

/* One chunk of a chunked body, sized by us. */
static void chunk(int fd, const char *text)
{
	char size[32];
	snprintf(size, sizeof(size), "%zx\r\n", strlen(text));
	send_str(fd, size);
	send_str(fd, text);
	send_str(fd, "\r\n");
}

static void *serve_one(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[8192];
	size_t used = 0;
	char *end = NULL;
	while (!end && used < sizeof(buf) - 1) {
		ssize_t n = recv(fd, buf + used, sizeof(buf) - 1 - used, 0);
		if (n <= 0)
			goto out;
		used += (size_t)n;
		buf[used] = '\0';
		end = strstr(buf, "\r\n\r\n");
	}
	pthread_mutex_lock(&last_lock);
	snprintf(last_head, sizeof(last_head), "%.*s", (int)(end - buf), buf);
	pthread_mutex_unlock(&last_lock);
	char method[16], path[1024];
	if (sscanf(buf, "%15s %1023s", method, path) != 2)
		goto out;
	/* Read the body too: closing with unread data resets the peer. */
	const char *cl = strstr(buf, "Content-Length: ");
	size_t want = cl ? strtoul(cl + 16, NULL, 10) : 0;
	size_t have = used - (size_t)(end + 4 - buf);
	while (have < want) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0)
			goto out;
		have += (size_t)n;
	}

	if (streq(path, "/v1.41/cl")) {
		json_reply(fd, 200, "{\"a\": 1}");
	} else if (streq(path, "/v1.41/missing")) {
		json_reply(fd, 404, "{\"message\": \"No such container: x\"}");
	} else if (streq(path, "/v1.41/conflict")) {
		json_reply(fd, 409, "{\"message\": \"name in use\"}");
	} else if (streq(path, "/v1.41/close")) {
		send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nplain text");
	} else if (streq(path, "/v1.41/chunked")) {
		send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
			     "7\r\n{\"a\":1}\r\n"
			     "6\r\n\n{\"b\":\r\n"
			     "3;ext=1\r\n2}\n\r\n"
			     "0\r\nX-Trailer: y\r\n\r\n");
	} else if (strncmp(path, "/v1.41/images/create", 20) == 0) {
		send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
			     "Transfer-Encoding: chunked\r\n\r\n");
		chunk(fd, "{\"status\":\"Pulling fs layer\"}\n");
		chunk(fd, "{\"errorDetail\":{\"message\":\"unauthorized: authentication "
			  "required\"}}\n");
		send_str(fd, "0\r\n\r\n");
	} else if (streq(path, "/v1.41/containers/c9?force=1&v=1")) {
		/* Answers only once the client's meanwhile work ran: it must run
		 * while the request is handled, not after the answer. */
		for (int i = 0; i < 200 && !atomic_load(&meanwhile_ran); i++)
			usleep(10000);
		if (atomic_load(&meanwhile_ran))
			send_str(fd, "HTTP/1.1 204 No Content\r\n\r\n");
		else
			json_reply(fd, 500, "{\"message\": \"meanwhile never ran\"}");
	} else if (streq(path, "/v1.41/late")) {
		usleep(50000);
		json_reply(fd, 200, "{\"a\": 1}");
	} else if (streq(path, "/v1.41/containers/late?force=1&v=1")) {
		usleep(50000);
		send_str(fd, "HTTP/1.1 204 No Content\r\n\r\n");
	} else if (streq(path, "/v1.41/slow") || streq(path, "/v1.41/cancel")) {
		sleep(2);
	} else if (streq(path, "/v1.41/containers/c1/exec")) {
		json_reply(fd, 201, "{\"Id\": \"e1\"}");
	} else if (streq(path, "/v1.41/exec/e1/start")) {
		send_str(fd,
			 "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream"
			 "\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n");
		frame(fd, 1, "hello ", 6);
		frame(fd, 2, "oops", 4);
		char big[100];
		memset(big, 'x', sizeof(big));
		frame(fd, 1, big, sizeof(big));
		frame(fd, 1, "world", 5);
	} else if (streq(path, "/v1.41/exec/e1/json")) {
		json_reply(fd, 200, "{\"Running\": false, \"ExitCode\": 3, \"Pid\": 0}");
	} else {
		json_reply(fd, 404, "{\"message\": \"page not found\"}");
	}
out:
	close(fd);
	return NULL;
}

static void *server(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept(listener, NULL, NULL);
		if (fd < 0)
			return NULL;
		pthread_t t;
		pthread_create(&t, NULL, serve_one, (void *)(intptr_t)fd);
		pthread_detach(t);
	}
}

static bool cancel_after(void *arg)
{
	return dk_now_ms() > *(int64_t *)arg;
}

static void framings(void)
{
	struct crx_err err = {0};
	json_object *o = NULL;
	int status = 0;
	is_int(dk_call(sock_path, "GET", "/cl", NULL, NULL, &o, &status, &err), 0,
	       "Content-Length body");
	is_int(dk_json_int(o, "a", 0), 1, "parsed");
	json_object_put(o);
	pthread_mutex_lock(&last_lock);
	has_str(last_head, "GET /v1.41/cl HTTP/1.1\r\nHost: docker", "request line and Host");
	pthread_mutex_unlock(&last_lock);

	is_int(dk_call(sock_path, "GET", "/missing", NULL, NULL, &o, &status, &err), -ENOENT,
	       "404 is ENOENT");
	is_str(err.msg, "docker: No such container: x", "Docker's message");
	is_int(status, 404, "status reported with the error");
	is_int(dk_call(sock_path, "GET", "/conflict", NULL, NULL, NULL, &status, &err), -EBUSY,
	       "409 is EBUSY");

	struct dk_http_request req = {.method = "GET", .target = "/v1.41/close"};
	struct dk_http_conn *c = NULL;
	char *body = NULL;
	is_int(dk_http_open(sock_path, &req, NULL, &c, &err), 0, "opened");
	is_int(dk_http_read_all(c, 1024, &body, NULL, &err), 0, "close-delimited body");
	is_str(body, "plain text", "all of it");
	free(body);
	dk_http_close(c);

	req.target = "/v1.41/chunked";
	is_int(dk_http_open(sock_path, &req, NULL, &c, &err), 0, "chunked");
	char *line;
	size_t len;
	is_int(dk_http_read_line(c, 1024, &line, &len, &err), 1, "first line");
	is_str(line, "{\"a\":1}", "across a chunk end");
	is_int(dk_http_read_line(c, 1024, &line, &len, &err), 1, "second line");
	is_str(line, "{\"b\":2}", "across chunks with extensions");
	is_int(dk_http_read_line(c, 1024, &line, &len, &err), 0, "end, trailers read");
	dk_http_close(c);

	req.target = "/v1.41/cl";
	is_int(dk_http_open(sock_path, &req, NULL, &c, &err), 0, "again");
	is_int(dk_http_read_all(c, 3, &body, NULL, &err), -EMSGSIZE, "over the limit");
	dk_http_close(c);

	struct dk_deadline dl = dk_deadline_in(NULL, 200);
	int64_t t0 = dk_now_ms();
	is_int(dk_call(sock_path, "GET", "/slow", NULL, &dl, NULL, NULL, &err), -ETIMEDOUT,
	       "a deadline");
	ok(dk_now_ms() - t0 < 1500, "kept");
	int64_t when = dk_now_ms() + 100;
	struct dk_deadline cancel = {.cancelled = cancel_after, .arg = &when};
	is_int(dk_call(sock_path, "GET", "/cancel", NULL, &cancel, NULL, NULL, &err), -ECANCELED,
	       "cancellation");
	is_int(dk_call("/nonexistent/docker.sock", "GET", "/cl", NULL, NULL, NULL, NULL, &err),
	       -ECONNREFUSED, "no dockerd: unavailable");

	req = (struct dk_http_request){.method = "POST",
				       .target = "/v1.41/images/create?x=1",
				       .headers =
					       (const char *const[]){"X-Registry-Auth: abc", NULL}};
	is_int(dk_http_open(sock_path, &req, NULL, &c, &err), 0, "a pull");
	is_int(dk_json_stream_check(c, &err), -EACCES, "an error message in the stream");
	has_str(err.msg, "authentication required", "with Docker's words");
	dk_http_close(c);
	pthread_mutex_lock(&last_lock);
	has_str(last_head, "\r\nX-Registry-Auth: abc", "extra headers sent");
	has_str(last_head, "Content-Length: 0", "an empty POST says so");
	pthread_mutex_unlock(&last_lock);

	char *e = dk_http_escape("a b/c:d@e?f", false);
	is_str(e, "a%20b%2Fc%3Ad%40e%3Ff", "query escaping");
	free(e);
	e = dk_http_escape("127.0.0.1:5000/x/y:1", true);
	is_str(e, "127.0.0.1:5000/x/y:1", "path escaping keeps references");
	free(e);
}

static void set_ran(void *arg)
{
	(void)arg;
	atomic_store(&meanwhile_ran, true);
}

static void meanwhile(void)
{
	struct crx_err err = {0};
	is_int(dk_container_remove(sock_path, "c9", NULL, set_ran, NULL, &err), 0,
	       "the meanwhile work ran before the answer was awaited");
	atomic_store(&meanwhile_ran, false);
	is_int(dk_container_remove(sock_path, "gone", NULL, set_ran, NULL, &err), 0,
	       "a container already gone is removed");
	ok(atomic_load(&meanwhile_ran), "and the meanwhile work ran for it too");
	atomic_store(&meanwhile_ran, false);
	is_int(dk_container_remove("/nonexistent/docker.sock", "c9", NULL, set_ran, NULL, &err),
	       -ECONNREFUSED, "no dockerd");
	ok(!atomic_load(&meanwhile_ran), "nothing sent, nothing done meanwhile");
}

/* A CRI call learns how long it waited for dockerd: from each request's
 * start to the end of its answer, once, whatever the framing. */
static void engine_time(void)
{
	struct crx_err err = {0};
	_Atomic uint64_t ns = 0;
	struct dk_deadline dl = {.engine_ns = &ns};
	int64_t t0 = dk_now_ms();
	is_int(dk_call(sock_path, "GET", "/late", NULL, &dl, NULL, NULL, &err), 0, "a late answer");
	uint64_t took = (uint64_t)(dk_now_ms() - t0 + 1) * 1000000;
	ok(ns >= 50000000 && ns <= took, "its wait counted (%.1f ms of %.1f)", ns / 1e6,
	   took / 1e6);

	atomic_store(&ns, 0);
	t0 = dk_now_ms();
	is_int(dk_container_remove(sock_path, "late", &dl, NULL, NULL, &err), 0, "a late 204");
	took = (uint64_t)(dk_now_ms() - t0 + 1) * 1000000;
	ok(ns >= 50000000 && ns <= took, "an answer without a body counts too");

	/* Counted when the body ends: what the caller does before it closes
	 * the connection is its own time, not dockerd's. */
	atomic_store(&ns, 0);
	struct dk_http_request req = {.method = "GET", .target = "/v1.41/chunked"};
	struct dk_http_conn *c = NULL;
	is_int(dk_http_open(sock_path, &req, &dl, &c, &err), 0, "a chunked answer");
	char *line;
	while (dk_http_read_line(c, 1024, &line, NULL, &err) == 1)
		;
	uint64_t at_end = atomic_load(&ns);
	ok(at_end > 0, "counted at the end of the body");
	usleep(20000);
	dk_http_close(c);
	is_int((int64_t)atomic_load(&ns), (int64_t)at_end, "and not again when closed");

	atomic_store(&ns, 0);
	is_int(dk_http_open(sock_path, &req, &dl, &c, &err), 0, "one closed unread");
	usleep(20000);
	dk_http_close(c);
	ok(ns >= 20000000, "counts until it was closed");

	struct dk_deadline none = {0};
	is_int(dk_call(sock_path, "GET", "/cl", NULL, &none, NULL, NULL, &err), 0,
	       "no counter: nothing counted, nothing broken");
}

static void exec_stream(void)
{
	struct crx_err err = {0};
	struct dk_exec_result res = {0};
	char *argv[] = {"sh", "-c", "x"};
	is_int(dk_exec_sync(sock_path, "c1", argv, 3, 0, 16, NULL, &res, &err), 0, "exec");
	is_int(res.exit_code, 3, "exit code");
	/* The cap is for both streams together, as CRI-O's. */
	ok(res.out_len == 12 && memcmp(res.out, "hello xxxxxx", 12) == 0,
	   "stdout capped with stderr, the rest read and dropped");
	ok(res.out_truncated, "and marked");
	ok(res.err_len == 4 && memcmp(res.err, "oops", 4) == 0, "stderr counts towards the cap");
	dk_exec_result_clear(&res);
	pthread_mutex_lock(&last_lock);
	has_str(last_head, "GET /v1.41/exec/e1/json", "exit code asked for last");
	pthread_mutex_unlock(&last_lock);
	is_int(dk_exec_sync(sock_path, "c1", argv, 3, 0, 1 << 20, NULL, &res, &err), 0, "again");
	ok(res.out_len == 111 && !res.out_truncated, "uncapped: everything");
	dk_exec_result_clear(&res);
}

int main(void)
{
	char dir[] = "/tmp/crimux-http-test-XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock_path, sizeof(sock_path), "%s/docker.sock", dir);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, sock_path);
	listener = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(listener, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(listener, 16) < 0)
		return 1;
	pthread_t t;
	pthread_create(&t, NULL, server, NULL);
	framings();
	meanwhile();
	engine_time();
	exec_stream();
	unlink(sock_path);
	rmdir(dir);
	return tap_done();
}
