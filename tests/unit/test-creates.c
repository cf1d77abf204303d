/* The table of creates the kubelet may retry (router/creates.c). The calls
 * queued are never touched by the table: fake pointers do. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>

#include "router/creates.h"
#include "tap.h"

static unsigned count_waiters(struct creates_waiter *w, struct rpc_call *first)
{
	unsigned n = 0;
	ok(!w || w->call == first, "waiters come in the order they arrived");
	while (w) {
		struct creates_waiter *next = w->next;
		free(w);
		w = next;
		n++;
	}
	return n;
}

int main(void)
{
	struct creates *t;
	if (creates_new(&t) < 0)
		return 99;
	struct rpc_call *a = (struct rpc_call *)0x10, *b = (struct rpc_call *)0x20,
			*c = (struct rpc_call *)0x30;
	char *pod = creates_sandbox_key("default", "web", "uid-1", 0);
	char *pod1 = creates_sandbox_key("default", "web", "uid-1", 1);
	char *ctr = creates_container_key("sb1", "main", 0);
	is_str(pod, "S;default;web;uid-1;0;", "a pod's key");
	is_str(ctr, "C;sb1;main;0;", "a container's key");

	is_int(creates_begin(t, pod, a, NULL), 0, "the first call makes the pod");
	is_int(creates_begin(t, pod, b, NULL), 1, "a retry in flight waits");
	is_int(creates_begin(t, pod, c, NULL), 1, "and another");
	is_int(creates_begin(t, pod1, c, NULL), 0, "another attempt is another pod");
	ok(creates_made(t, pod) == NULL, "nothing made yet");
	is_int(count_waiters(creates_end(t, pod, "sb1", true), b), 2,
	       "both waiters are handed back");
	char *made = creates_made(t, pod);
	is_str(made, "sb1", "what it made is remembered");
	free(made);
	is_int(count_waiters(creates_end(t, pod1, NULL, true), NULL), 0, "a failed create");
	ok(creates_made(t, pod1) == NULL, "made nothing known");
	ok(creates_unsure(t, pod1), "but the backend may have made it: the next try looks");
	ok(!creates_unsure(t, pod), "a create that worked is sure");
	is_int(creates_learn(t, pod1, "sb9"), 0, "a list shows it");
	ok(!creates_unsure(t, pod1), "then it is known");
	creates_forget(t, "sb9");
	is_int(creates_begin(t, pod1, a, NULL), 0, "another try");
	is_int(count_waiters(creates_end(t, pod1, NULL, false), NULL), 0,
	       "given up without asking the backend");
	ok(!creates_unsure(t, pod1), "leaves nothing behind");
	is_int(creates_count(t), 1, "one entry: the pod made");

	is_int(creates_begin(t, pod, a, NULL), 0, "a later retry goes ahead (the router checks)");
	is_int(count_waiters(creates_end(t, pod, "sb1", true), NULL), 0, "and ends");

	is_int(creates_begin(t, ctr, a, NULL), 0, "a container of the pod");
	creates_end(t, ctr, "c1", true);
	is_int(creates_learn(t, "C;sb2;other;0;", "c2"), 0, "learned from a list");
	is_int(creates_count(t), 3, "three entries");
	creates_forget(t, "sb1");
	ok(creates_made(t, pod) == NULL, "the pod removed: its key goes");
	ok(creates_made(t, ctr) == NULL, "and its containers' keys");
	made = creates_made(t, "C;sb2;other;0;");
	is_str(made, "c2", "another pod's container stays");
	free(made);

	is_int(creates_begin(t, ctr, a, NULL), 0, "in flight again");
	creates_end(t, ctr, "c3", false);
	ok(creates_made(t, ctr) == NULL, "not remembered when the router keeps no owners");
	is_int(creates_count(t), 1, "only the learned one left");

	struct creates *shared = creates_ref(t); /* a reload's new router */
	creates_free(t);
	made = creates_made(shared, "C;sb2;other;0;");
	is_str(made, "c2", "the table outlives the first router");
	free(made);

	free(pod);
	free(pod1);
	free(ctr);
	creates_free(shared);
	return tap_done();
}
