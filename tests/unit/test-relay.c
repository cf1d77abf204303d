/* The relay end to end inside one process: a client channel, crimux's router
 * and server, and a second rpc_server standing in for a backend. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/router.h"
#include "cri/rpc.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-test-relay.XXXXXX";
static atomic_int backend_calls;

struct slow_reply {
	struct rpc_call *call;
	unsigned ms;
};

static void *reply_later(void *arg)
{
	struct slow_reply *s = arg;
	usleep(s->ms * 1000);
	rpc_call_reply(s->call, "late", 4);
	free(s);
	return NULL;
}

/* A worker thread streams "1", "2", ... up to the count in the request. */
static void stream_count(struct rpc_call *call, void *arg)
{
	size_t len;
	const uint8_t *req = rpc_call_request(call, &len);
	char text[16] = "";
	memcpy(text, req, len < sizeof(text) - 1 ? len : sizeof(text) - 1);
	int count = atoi(text);
	for (int i = 1; i <= count; i++) {
		char msg[16];
		int n = snprintf(msg, sizeof(msg), "%d", i);
		if (rpc_call_send(call, msg, (size_t)n) < 0)
			break;
	}
	rpc_call_finish(call, RPC_OK, NULL);
}

static void echo_on_worker(struct rpc_call *call, void *arg)
{
	size_t len;
	const uint8_t *req = rpc_call_request(call, &len);
	rpc_call_reply(call, req, len);
}

/* The fake backend: echoes, fails, streams or answers late, by method. */
static void backend_dispatch(struct rpc_call *call, void *userdata)
{
	const char *m = rpc_call_method(call);
	size_t len;
	const uint8_t *req = rpc_call_request(call, &len);
	atomic_fetch_add(&backend_calls, 1);
	if (strstr(m, "/Count")) {
		rpc_call_defer(call, stream_count, NULL);
	} else if (strstr(m, "/Deferred")) {
		rpc_call_defer(call, echo_on_worker, NULL);
	} else if (strstr(m, "/Fail")) {
		rpc_call_fail(call, RPC_NOT_FOUND, "container \"%.*s\" not found", (int)len, req);
	} else if (strstr(m, "/Slow")) {
		struct slow_reply *s = malloc(sizeof(*s));
		*s = (struct slow_reply){call, 300};
		pthread_t t;
		pthread_create(&t, NULL, reply_later, s);
		pthread_detach(t);
	} else {
		rpc_call_reply(call, req, len);
	}
}

static struct rpc_server *serve(const char *sock, void (*dispatch)(struct rpc_call *, void *),
				void *userdata)
{
	char address[600];
	snprintf(address, sizeof(address), "unix://%s", sock);
	struct rpc_server_options opts = {
		.address = address,
		.max_message = 16 * MIB,
		.dispatch = dispatch,
		.userdata = userdata,
	};
	struct rpc_server *s = NULL;
	struct crx_err err = {0};
	if (rpc_server_new(&opts, &s, &err) < 0 || rpc_server_start(s, &err) < 0) {
		printf("# %s\n", err.msg);
		exit(99);
	}
	return s;
}

static struct rpc_channel *channel_to(const char *sock)
{
	char target[600];
	snprintf(target, sizeof(target), "unix://%s", sock);
	struct rpc_channel_options opts = {
		.name = "test", .target = target, .max_message = 64 * MIB};
	struct rpc_channel *ch;
	if (rpc_channel_new(&opts, &ch, NULL) < 0)
		exit(99);
	return ch;
}

struct load {
	struct rpc_channel *ch;
	int failures;
};

static void *load_thread(void *arg)
{
	struct load *l = arg;
	for (int i = 0; i < 200; i++) {
		char msg[32];
		int n = snprintf(msg, sizeof(msg), "call %d", i);
		struct rpc_result res = {0};
		if (rpc_channel_call(l->ch, "/runtime.v1.RuntimeService/ContainerStatus", msg,
				     (size_t)n, NULL, 5000, &res) < 0 ||
		    res.code != RPC_OK || res.reply.len != (size_t)n ||
		    memcmp(res.reply.data, msg, (size_t)n) != 0)
			l->failures++;
		rpc_result_clear(&res);
	}
	return NULL;
}

struct pending_call {
	struct rpc_channel *ch;
	struct rpc_result res;
};

static void *slow_call(void *arg)
{
	struct pending_call *p = arg;
	rpc_channel_call(p->ch, "/runtime.v1.RuntimeService/Slow", "x", 1, NULL, 5000, &p->res);
	return NULL;
}

int main(void)
{
	if (!mkdtemp(dir))
		return 99;
	char backend_sock[512], front_sock[512];
	snprintf(backend_sock, sizeof(backend_sock), "%s/backend.sock", dir);
	snprintf(front_sock, sizeof(front_sock), "%s/crimux.sock", dir);

	struct rpc_server *backend = serve(backend_sock, backend_dispatch, NULL);
	char endpoint[600];
	snprintf(endpoint, sizeof(endpoint), "unix://%s", backend_sock);
	struct crx_backend_config bc = {.name = "fake", .type = "cri", .endpoint = endpoint};
	struct crx_config cfg = {.backends = &bc, .n_backends = 1};
	struct router *router;
	struct crx_err err = {0};
	if (router_new(&cfg, &router, &err) < 0) {
		printf("# %s\n", err.msg);
		return 99;
	}
	struct rpc_server *front = serve(front_sock, router_dispatch, router);
	struct rpc_channel *client = channel_to(front_sock);
	struct rpc_result res = {0};

	/* Version is crimux's own answer. */
	int r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Version", "", 0, NULL, 5000,
				 &res);
	ok(r == 0 && res.code == RPC_OK, "Version answers");
	Runtime__V1__VersionResponse *v =
		runtime__v1__version_response__unpack(NULL, res.reply.len, res.reply.data);
	ok(v && strcmp(v->runtime_name, "crimux") == 0 && strcmp(v->runtime_api_version, "v1") == 0,
	   "Version names crimux and API v1");
	runtime__v1__version_response__free_unpacked(v, NULL);
	is_int(atomic_load(&backend_calls), 0, "Version never reaches the backend");
	rpc_result_clear(&res);

	/* A known method relays bytes unchanged both ways. */
	const char payload[] = "\x0a\x03"
			       "abc";
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/ContainerStatus", payload,
			     sizeof(payload) - 1, NULL, 5000, &res);
	ok(r == 0 && res.code == RPC_OK && res.reply.len == sizeof(payload) - 1 &&
		   memcmp(res.reply.data, payload, res.reply.len) == 0,
	   "a CRI call relays its bytes");
	rpc_result_clear(&res);

	/* A CRI v1 method crimux has never heard of still reaches the backend
	 * (the fake backend's own methods below are such methods too). */
	r = rpc_channel_call(client, "/runtime.v1.ImageService/FutureMethod", "hello", 5, NULL,
			     5000, &res);
	ok(r == 0 && res.code == RPC_OK && res.reply.len == 5 &&
		   memcmp(res.reply.data, "hello", 5) == 0,
	   "an unknown CRI v1 method is relayed");
	rpc_result_clear(&res);
	/* Nothing else is: a backend's socket may serve its whole API. */
	int before = atomic_load(&backend_calls);
	r = rpc_channel_call(client, "/example.Future/Method", "hello", 5, NULL, 5000, &res);
	ok(r == 0 && res.code == RPC_UNIMPLEMENTED, "a method outside CRI v1 is refused");
	has_str(res.details, "crimux relays nothing else", "saying so");
	is_int(atomic_load(&backend_calls), before, "and never reaches the backend");
	rpc_result_clear(&res);

	/* Replies from worker threads, and server streams, relay too. */
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Deferred", "later", 5, NULL, 5000,
			     &res);
	ok(r == 0 && res.code == RPC_OK && res.reply.len == 5, "a deferred reply is relayed");
	rpc_result_clear(&res);
	struct rpc_stream *st;
	r = rpc_stream_open(client, "/runtime.v1.RuntimeService/Count", "3", 1, NULL, 5000, &st);
	ok(r == 0, "a stream opens");
	struct rpc_buf msg = {0};
	char got[32] = "";
	while (r == 0 && rpc_stream_next(st, &msg, &res) > 0) {
		strncat(got, (const char *)msg.data, msg.len);
		rpc_buf_clear(&msg);
	}
	is_str(got, "123", "every streamed message arrives, in order");
	is_int(res.code, RPC_OK, "and the stream ends with OK");
	rpc_result_clear(&res);
	if (r == 0)
		rpc_stream_free(st);

	/* The backend's status code and message come back unchanged. */
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Fail", "abc", 3, NULL, 5000, &res);
	is_int(res.code, RPC_NOT_FOUND, "the backend's NOT_FOUND is relayed");
	is_str(res.details, "container \"abc\" not found", "with its message");
	rpc_result_clear(&res);

	/* Message limits: 15 MiB passes both ways, 17 MiB is refused. */
	size_t big = 15 * MIB;
	uint8_t *buf = malloc(17 * MIB);
	memset(buf, 'x', 17 * MIB);
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Big", buf, big, NULL, 20000, &res);
	ok(r == 0 && res.code == RPC_OK && res.reply.len == big, "15 MiB passes both ways");
	rpc_result_clear(&res);
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Big", buf, 17 * MIB, NULL, 20000,
			     &res);
	is_int(res.code, RPC_RESOURCE_EXHAUSTED, "17 MiB is RESOURCE_EXHAUSTED");
	rpc_result_clear(&res);
	free(buf);

	/* Many callers at once. */
	struct load loads[16];
	pthread_t threads[16];
	for (int i = 0; i < 16; i++) {
		loads[i] = (struct load){client, 0};
		pthread_create(&threads[i], NULL, load_thread, &loads[i]);
	}
	int failures = 0;
	for (int i = 0; i < 16; i++) {
		pthread_join(threads[i], NULL);
		failures += loads[i].failures;
	}
	is_int(failures, 0, "16 callers x 200 calls all relayed intact");

	/* A short client deadline reaches the backend's leg too. */
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/Slow", "x", 1, NULL, 100, &res);
	is_int(res.code, RPC_DEADLINE_EXCEEDED, "a 100 ms deadline on a 300 ms call expires");
	rpc_result_clear(&res);

	/* Shutdown lets a call in flight finish. */
	while (rpc_server_calls_in_flight(front) != 0) /* the cancelled call above */
		usleep(1000);
	struct pending_call pending = {.ch = client};
	pthread_t slow;
	pthread_create(&slow, NULL, slow_call, &pending);
	while (rpc_server_calls_in_flight(front) == 0)
		usleep(1000);
	unsigned cancelled = rpc_server_shutdown(front, 5000);
	pthread_join(slow, NULL);
	is_int(cancelled, 0, "nothing had to be cancelled");
	if (!ok(pending.res.code == RPC_OK && pending.res.reply.len == 4,
		"the call in flight completed during shutdown"))
		printf("#   code %d: %s\n", pending.res.code,
		       pending.res.details ? pending.res.details : "");
	rpc_result_clear(&pending.res);
	is_int(rpc_server_calls_in_flight(front), 0, "no call left behind");
	rpc_server_free(front);

	/* With the backend gone, the client hears which backend failed. */
	front = serve(front_sock, router_dispatch, router);
	rpc_server_free(backend);
	unlink(backend_sock);
	r = rpc_channel_call(client, "/runtime.v1.RuntimeService/ListContainers", "", 0, NULL, 5000,
			     &res);
	is_int(res.code, RPC_UNAVAILABLE, "a dead backend gives UNAVAILABLE");
	has_str(res.details, "backend fake (unix:///tmp/crimux-test-relay.",
		"naming the backend and its address");
	rpc_result_clear(&res);

	rpc_channel_free(client);
	rpc_server_free(front);
	router_free(router);
	unlink(front_sock);
	rmdir(dir);
	return tap_done();
}
