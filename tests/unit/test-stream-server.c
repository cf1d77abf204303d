/* The token cache (single use, expiry, bound), request validation, and the
 * server itself: registration, URLs, HTTP errors, and one SPDY exec end to
 * end against a runtime that answers from memory. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/codec.h"
#include "stream/http.h"
#include "stream/tokens.h"
#include "tests/unit/tap.h"

static struct stream_request *exec_req(void)
{
	static const char *const cmd[] = {"true", NULL};
	struct stream_request r = {.kind = STREAM_EXEC, .id = "c1", .cmd = cmd, .use_stdout = true};
	return stream_request_dup(&r);
}

static void test_tokens(void)
{
	struct token_cache *c;
	struct crx_err err = {0};
	char t1[TOKEN_CHARS + 1], t2[TOKEN_CHARS + 1], t3[TOKEN_CHARS + 1];
	ok(token_cache_new(2, 60000, &c) == 0, "cache created");
	ok(token_cache_insert(c, exec_req(), 1000, t1, &err) == 0, "first token");
	ok(token_cache_insert(c, exec_req(), 1000, t2, &err) == 0, "second token");
	is_int(strlen(t1), TOKEN_CHARS, "token length");
	ok(strcmp(t1, t2) != 0, "tokens differ");
	is_int(token_cache_insert(c, exec_req(), 1000, t3, &err), -ENOSPC, "bound reached");
	has_str(err.msg, "too many streaming requests outstanding (2", "the error names the bound");
	is_int(token_cache_count(c, 1000), 2, "two outstanding");

	struct stream_request *r = token_cache_consume(c, t1, 2000);
	ok(r && r->kind == STREAM_EXEC && streq(r->id, "c1"), "token consumed");
	stream_request_free(r);
	ok(!token_cache_consume(c, t1, 2000), "token is single-use");
	ok(!token_cache_consume(c, "nonsense", 2000), "unknown token");
	/* Near misses of a live token: all refused, and none uses it up. */
	char near[TOKEN_CHARS + 2];
	memcpy(near, t2, TOKEN_CHARS + 1);
	near[TOKEN_CHARS - 1] = near[TOKEN_CHARS - 1] == 'A' ? 'B' : 'A';
	ok(!token_cache_consume(c, near, 2000), "last character differs");
	memcpy(near, t2, TOKEN_CHARS + 1);
	near[TOKEN_CHARS - 1] = '\0';
	ok(!token_cache_consume(c, near, 2000), "a prefix");
	memcpy(near, t2, TOKEN_CHARS);
	near[TOKEN_CHARS] = 'x';
	near[TOKEN_CHARS + 1] = '\0';
	ok(!token_cache_consume(c, near, 2000), "the token and one more character");
	ok(!token_cache_consume(c, "", 2000), "empty");
	is_int(token_cache_count(c, 2000), 1, "the live token is still there");
	ok(token_cache_insert(c, exec_req(), 2000, t3, &err) == 0, "a consumed token frees room");

	ok(!token_cache_consume(c, t2, 1000 + 60000), "token expires after the TTL");
	r = token_cache_consume(c, t3, 2000 + 59999);
	ok(r != NULL, "a token is valid until its TTL ends");
	stream_request_free(r);
	is_int(token_cache_count(c, 2000 + 60000), 0, "expired tokens are dropped");
	ok(token_cache_insert(c, exec_req(), 70000, t1, &err) == 0 &&
		   token_cache_insert(c, exec_req(), 70000, t2, &err) == 0,
	   "expiry frees room for new tokens");
	token_cache_free(c); /* frees the outstanding requests */
}

static void test_validate(void)
{
	static const char *const cmd[] = {"sh", NULL};
	struct crx_err err = {0};
	struct stream_request r = {.kind = STREAM_EXEC, .id = "c", .cmd = cmd, .use_stdout = true};
	is_int(stream_request_validate(&r, &err), 0, "valid exec");
	r.tty = r.use_stderr = true;
	is_int(stream_request_validate(&r, &err), -EINVAL, "tty with stderr refused");
	has_str(err.msg, "tty and stderr", "says why");
	r = (struct stream_request){.kind = STREAM_EXEC, .id = "c", .cmd = cmd};
	is_int(stream_request_validate(&r, &err), -EINVAL, "no stream refused");
	r = (struct stream_request){.kind = STREAM_ATTACH, .id = "", .use_stdout = true};
	is_int(stream_request_validate(&r, &err), -EINVAL, "attach without container refused");
	r = (struct stream_request){.kind = STREAM_PORT_FORWARD, .id = "sb"};
	is_int(stream_request_validate(&r, &err), 0, "port-forward without ports is valid");
}

/* --- a runtime that writes "out" and exits 7 --- */

static int fake_exec(void *userdata, const struct stream_request *req, const struct stream_io *io,
		     struct crx_err *err)
{
	(void)!write(io->stdout_fd, "out", 3);
	return 7;
}

static const struct stream_runtime_ops fake_ops = {.exec = fake_exec};

static int dial(const char *url)
{
	unsigned port = 0;
	sscanf(url, "http://127.0.0.1:%u", &port);
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static size_t read_all(int fd, uint8_t *buf, size_t max)
{
	size_t n = 0;
	ssize_t r;
	while (n < max && (r = read(fd, buf + n, max - n)) > 0)
		n += (size_t)r;
	return n;
}

static void test_server(void)
{
	struct stream_server *s;
	struct crx_err err = {0};
	struct stream_server_options bad = {.address = "not-an-address"};
	is_int(stream_server_new(&bad, &s, &err), -EINVAL, "bad address refused");
	has_str(err.msg, "not-an-address", "the error names the address");

	struct stream_server_options opts = {.ops = &fake_ops, .max_tokens = 3};
	ok(stream_server_new(&opts, &s, &err) == 0, "server on the default address");
	const char *base = stream_server_base_url(s);
	ok(strncmp(base, "http://127.0.0.1:", 17) == 0 && atoi(base + 17) > 0,
	   "loopback by default, port picked by the kernel");

	static const char *const cmd[] = {"x", NULL};
	struct stream_request r = {.kind = STREAM_EXEC, .id = "c", .cmd = cmd, .use_stdout = true};
	char *url = NULL, *url2 = NULL;
	ok(stream_server_register(s, &r, &url, &err) == 0, "exec registered");
	ok(url && strncmp(url, base, strlen(base)) == 0 &&
		   strncmp(url + strlen(base), "/exec/", 6) == 0 &&
		   strlen(url + strlen(base) + 6) == TOKEN_CHARS,
	   "absolute URL with the token");
	r.tty = r.use_stderr = true;
	is_int(stream_server_register(s, &r, &url2, &err), -EINVAL, "invalid request refused");
	r.tty = r.use_stderr = false;
	char *u2 = NULL, *u3 = NULL, *u4 = NULL;
	stream_server_register(s, &r, &u2, &err);
	stream_server_register(s, &r, &u3, &err);
	is_int(stream_server_register(s, &r, &u4, &err), -ENOSPC, "bound on outstanding tokens");
	free(u2);
	free(u3);

	/* An unknown token: a clean 404, and the server keeps serving. */
	uint8_t buf[4096];
	char req[512];
	int fd = dial(url);
	snprintf(req, sizeof(req),
		 "POST /exec/AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nConnection: Upgrade\r\n"
		 "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n");
	(void)!write(fd, req, strlen(req));
	size_t n = read_all(fd, buf, sizeof(buf) - 1);
	buf[n] = 0;
	has_str((char *)buf, "HTTP/1.1 404", "unknown token: 404");
	close(fd);

	/* The real token, a SPDY exec: error and stdout streams. */
	fd = dial(url);
	snprintf(req, sizeof(req),
		 "POST %s HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
		 "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
		 url + strlen(base));
	struct spdy_zlib z;
	spdy_zlib_init(&z);
	struct sbuf out = {.max = 1 << 16};
	const char *e[] = {"streamtype", "error"}, *o[] = {"streamtype", "stdout"};
	spdy_put_syn(&out, &z, SPDY_SYN_STREAM, 1, 0, e, 1);
	spdy_put_syn(&out, &z, SPDY_SYN_STREAM, 3, 0, o, 1);
	(void)!write(fd, req, strlen(req));
	(void)!write(fd, out.data, out.len);
	n = read_all(fd, buf, sizeof(buf));
	char *body = memmem(buf, n, "\r\n\r\n", 4);
	ok(n > 12 && memcmp(buf, "HTTP/1.1 101", 12) == 0 && body, "upgraded to SPDY/3.1");
	uint8_t *p = (uint8_t *)body + 4, *end = buf + n;
	int replies = 0, goaway = 0;
	char stdout_data[64] = "", status[512] = "";
	struct spdy_frame f;
	size_t used;
	while (body && spdy_frame_parse(p, (size_t)(end - p), 1 << 16, &f, &used) == 1) {
		if (f.control && f.type == SPDY_SYN_REPLY)
			replies++;
		if (f.control && f.type == SPDY_GOAWAY)
			goaway++;
		if (!f.control && f.stream_id == 3 && f.length)
			snprintf(stdout_data, sizeof(stdout_data), "%.*s", (int)f.length,
				 f.payload);
		if (!f.control && f.stream_id == 1 && f.length)
			snprintf(status, sizeof(status), "%.*s", (int)f.length, f.payload);
		p += used;
	}
	is_int(replies, 2, "a SYN_REPLY for each stream");
	is_str(stdout_data, "out", "stdout relayed");
	has_str(status, "\"reason\":\"NonZeroExitCode\"", "status: non-zero exit");
	has_str(status, "\"message\":\"7\"", "status: exit code 7");
	is_int(goaway, 1, "GOAWAY at the end");
	close(fd);

	/* The token was single-use. */
	fd = dial(url);
	(void)!write(fd, req, strlen(req));
	n = read_all(fd, buf, sizeof(buf) - 1);
	buf[n] = 0;
	has_str((char *)buf, "HTTP/1.1 404", "used token: 404");
	close(fd);

	unsigned tokens, sessions;
	stream_server_stats(s, &tokens, &sessions, NULL);
	is_int(tokens, 2, "two tokens still outstanding");
	sbuf_free(&out);
	spdy_zlib_free(&z);
	free(url);
	stream_server_free(s);
}

int main(void)
{
	test_tokens();
	test_validate();
	test_server();
	return tap_done();
}
