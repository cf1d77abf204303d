/* The ownership table and the wire scanner that feeds it. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cri/api.pb-c.h"
#include "router/owners.h"
#include "cri/wire.h"
#include "tap.h"

int main(void)
{
	struct owners *t;
	if (owners_new(&t) < 0)
		return 99;
	struct owner o;
	char *full = NULL;

	owners_add(t, OWNER_SANDBOX, "aaaa1111", NULL, (struct owner){1, 2});
	owners_add(t, OWNER_CONTAINER, "cccc1111", "aaaa1111", (struct owner){1, -1});
	owners_add(t, OWNER_CONTAINER, "cccc2222", "aaaa1111", (struct owner){1, -1});
	owners_add(t, OWNER_CONTAINER, "dddd3333", "bbbb", (struct owner){0, -1});
	ok(owners_find(t, OWNER_SANDBOX, "aaaa1111", &o, &full) == 0 && o.backend == 1 &&
		   o.handler == 2,
	   "a sandbox by its ID");
	is_str(full, "aaaa1111", "and its full ID");
	free(full);
	full = NULL;
	ok(owners_find(t, OWNER_CONTAINER, "aaaa1111", &o, NULL) == -ENOENT,
	   "kinds do not mix: a sandbox ID is no container");
	ok(owners_find(t, OWNER_CONTAINER, "dddd", &o, &full) == 0 && o.backend == 0,
	   "a unique prefix finds the container");
	is_str(full, "dddd3333", "with the full ID");
	free(full);
	ok(owners_find(t, OWNER_CONTAINER, "cccc", &o, NULL) == -ENOTUNIQ, "an ambiguous prefix");
	ok(owners_find(t, OWNER_CONTAINER, "zzzz", &o, NULL) == -ENOENT, "an unknown ID");

	owners_add(t, OWNER_SANDBOX, "aaaa1111", NULL, (struct owner){0, 1});
	ok(owners_find(t, OWNER_SANDBOX, "aaaa1111", &o, NULL) == 0 && o.backend == 0,
	   "adding again updates");
	is_int(owners_count(t, OWNER_SANDBOX), 1, "without a duplicate");

	owners_remove(t, OWNER_SANDBOX, "aaaa");
	ok(owners_find(t, OWNER_SANDBOX, "aaaa1111", &o, NULL) == -ENOENT, "a removed sandbox");
	is_int(owners_count(t, OWNER_CONTAINER), 1, "took its two containers along");
	ok(owners_find(t, OWNER_CONTAINER, "dddd3333", &o, NULL) == 0, "and left the others");

	/* Many entries, so that the table grows. */
	for (int i = 0; i < 10000; i++) {
		char id[65];
		snprintf(id, sizeof(id), "%064d", i);
		owners_add(t, OWNER_CONTAINER, id, NULL, (struct owner){(unsigned)(i % 3), -1});
	}
	char id[65];
	snprintf(id, sizeof(id), "%064d", 4242);
	ok(owners_find(t, OWNER_CONTAINER, id, &o, NULL) == 0 && o.backend == 4242 % 3,
	   "one of 10,000 is found after growing");
	is_int(owners_count(t, OWNER_CONTAINER), 10001, "all 10,000 are there");
	owners_free(t);

	/* The wire scanner reads an ID where protobuf-c put it. */
	Runtime__V1__StopContainerRequest req = RUNTIME__V1__STOP_CONTAINER_REQUEST__INIT;
	req.container_id = (char *)"c0ffee";
	req.timeout = 30;
	uint8_t buf[64];
	size_t len = runtime__v1__stop_container_request__pack(&req, buf);
	char *s;
	ok(wire_find_string(buf, len, 1, &s) == 1, "field 1 found");
	is_str(s, "c0ffee", "with its value");
	free(s);
	ok(wire_find_string(buf, len, 3, &s) == 0 && !s, "an absent field");
	ok(wire_find_string(buf, len - 1, 1, &s) < 0, "a truncated message is refused");
	const uint8_t junk[] = {0x0b, 0x01}; /* a group start: not proto3 */
	ok(wire_find_string(junk, sizeof(junk), 1, &s) < 0, "a group is refused");
	return tap_done();
}
