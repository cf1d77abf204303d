/* The server's event loop and the work it defers: a job deferred by a call's
 * dispatch runs on the thread that dispatched it (no hand-off to a sleeping
 * worker), another thread carries the loop on, and however many jobs block,
 * the loop never waits behind them. */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "cri/rpc.h"
#include "tap.h"

#define BLOCKED_JOBS 4

static char dir[] = "/tmp/crimux-test-loop.XXXXXX";

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static bool released;
static int blocked;          /* jobs waiting for the release */
static pthread_t dispatcher; /* the thread that dispatched the last /Same call */

/* Answers with whether it runs on the thread that dispatched its call. */
static void same_thread(struct rpc_call *call, void *arg)
{
	pthread_mutex_lock(&lock);
	bool same = pthread_equal(dispatcher, pthread_self());
	pthread_mutex_unlock(&lock);
	rpc_call_reply(call, same ? "same" : "other", same ? 4 : 5);
}

static void wait_for_release(struct rpc_call *call, void *arg)
{
	pthread_mutex_lock(&lock);
	blocked++;
	pthread_cond_broadcast(&changed);
	while (!released)
		pthread_cond_wait(&changed, &lock);
	blocked--;
	pthread_mutex_unlock(&lock);
	rpc_call_reply(call, "done", 4);
}

static void dispatch(struct rpc_call *call, void *userdata)
{
	const char *m = rpc_call_method(call);
	if (strstr(m, "/Same")) {
		pthread_mutex_lock(&lock);
		dispatcher = pthread_self();
		pthread_mutex_unlock(&lock);
		rpc_call_defer(call, same_thread, NULL);
	} else if (strstr(m, "/Block")) {
		rpc_call_defer(call, wait_for_release, NULL);
	} else { /* answered by the loop itself */
		rpc_call_reply(call, "now", 3);
	}
}

struct pending {
	struct rpc_channel *ch;
	struct rpc_result res;
	pthread_t thread;
};

static void *blocking_call(void *arg)
{
	struct pending *p = arg;
	rpc_channel_call(p->ch, "/test.Loop/Block", "x", 1, NULL, 20000, &p->res);
	return NULL;
}

static bool wait_blocked(int n)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&lock);
	int r = 0;
	while (blocked < n && r == 0)
		r = pthread_cond_timedwait(&changed, &lock, &until);
	bool reached = blocked >= n;
	pthread_mutex_unlock(&lock);
	return reached;
}

int main(void)
{
	if (!mkdtemp(dir))
		return 99;
	char sock[512], address[600];
	snprintf(sock, sizeof(sock), "%s/loop.sock", dir);
	snprintf(address, sizeof(address), "unix://%s", sock);
	/* One job thread: the pool has two, one of them for the loop. */
	struct rpc_server_options opts = {
		.address = address, .max_message = MIB, .workers = 1, .dispatch = dispatch};
	struct rpc_server *server = NULL;
	struct crx_err err = {0};
	if (rpc_server_new(&opts, &server, &err) < 0 || rpc_server_start(server, &err) < 0) {
		printf("# %s\n", err.msg);
		return 99;
	}
	struct rpc_channel_options copts = {.name = "test", .target = address, .max_message = MIB};
	struct rpc_channel *ch = NULL;
	if (rpc_channel_new(&copts, &ch, &err) < 0)
		return 99;

	/* Twice: first on the thread the server started, then on whichever
	 * thread took the loop over. */
	for (int i = 0; i < 2; i++) {
		struct rpc_result res = {0};
		int r = rpc_channel_call(ch, "/test.Loop/Same", "", 0, NULL, 5000, &res);
		ok(r == 0 && res.code == RPC_OK && res.reply.len == 4 &&
			   memcmp(res.reply.data, "same", 4) == 0,
		   "a deferred job runs on the thread that dispatched its call (%d)", i + 1);
		rpc_result_clear(&res);
	}

	/* More blocked jobs than threads to run them: each took the thread
	 * that dispatched it, or waits its turn, and the loop goes on. */
	struct pending calls[BLOCKED_JOBS];
	for (int i = 0; i < BLOCKED_JOBS; i++) {
		calls[i] = (struct pending){.ch = ch};
		pthread_create(&calls[i].thread, NULL, blocking_call, &calls[i]);
	}
	/* The thread the server started left with its job: the pool's two
	 * threads are one for the loop and one for a job, the rest wait. */
	ok(wait_blocked(1), "a job blocks the pool's job thread");
	for (int i = 0; i < 10000 && rpc_server_calls_in_flight(server) < BLOCKED_JOBS; i++)
		usleep(1000);
	is_int(rpc_server_calls_in_flight(server), BLOCKED_JOBS,
	       "the loop accepts every blocked call");
	struct rpc_result res = {0};
	int r = rpc_channel_call(ch, "/test.Loop/Now", "", 0, NULL, 5000, &res);
	ok(r == 0 && res.code == RPC_OK && res.reply.len == 3,
	   "and answers another while the job thread is blocked");
	rpc_result_clear(&res);
	pthread_mutex_lock(&lock);
	is_int(blocked, 1, "and no more jobs run at once than the pool allows");
	pthread_mutex_unlock(&lock);

	pthread_mutex_lock(&lock);
	released = true;
	pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
	int done = 0;
	for (int i = 0; i < BLOCKED_JOBS; i++) {
		pthread_join(calls[i].thread, NULL);
		if (calls[i].res.code == RPC_OK && calls[i].res.reply.len == 4)
			done++;
		rpc_result_clear(&calls[i].res);
	}
	is_int(done, BLOCKED_JOBS, "once released, every blocked call completes");

	/* The loop now runs on a pool thread: shutdown still ends it. */
	r = rpc_channel_call(ch, "/test.Loop/Same", "", 0, NULL, 5000, &res);
	ok(r == 0 && res.code == RPC_OK, "the server still serves deferred calls");
	rpc_result_clear(&res);
	is_int(rpc_server_shutdown(server, 1000), 0, "shutdown cancels nothing");
	is_int(rpc_server_calls_in_flight(server), 0, "and leaves no call behind");

	rpc_channel_free(ch);
	rpc_server_free(server);
	unlink(sock);
	rmdir(dir);
	return tap_done();
}
