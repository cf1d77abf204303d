/* The CRI decode -> route -> policy path, as the router takes it for a call
 * a policy decides on. The first input byte picks the request type, the rest
 * is the request. Properties, beyond "no crash, no leak, no UB":
 * - what wire_check_strict accepts, protobuf-c reads;
 * - for what it accepts, the message forwarded (protobuf-c's reading after
 *   the policy, packed) reads back as exactly that reading, and is itself
 *   strictly readable: the checked reading is what the backend gets.
 * Input it refuses is never forwarded after a policy; the policy still runs
 * on protobuf-c's reading of it here (no crash, no UB). The round trip does
 * not hold for such input: protobuf-c 1.4.1 keeps a field key 0 written in
 * two bytes (80 00) as an unknown field and packs it as 00, which it then
 * refuses to read. */
#include "config.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "router/policy.h"
#include "cri/wire.h"
#include "fuzz/message-equal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const requests[] = {
	&runtime__v1__run_pod_sandbox_request__descriptor,
	&runtime__v1__create_container_request__descriptor,
	&runtime__v1__update_container_resources_request__descriptor,
	&runtime__v1__update_pod_sandbox_resources_request__descriptor,
};

static struct kata_policy policy;

static void setup(void)
{
	if (kata_policy_init(&policy) < 0)
		abort();
	/* One allowed key and one prefix, so the allow-list is walked too. */
	static char *allowed[] = {(char *)"io.katacontainers.config.hypervisor.default_vcpus",
				  (char *)"io.kubernetes.cri.allowed/*"};
	policy.allowed_annotations = allowed;
	policy.n_allowed_annotations = ARRAY_SIZE(allowed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	if (!ready) {
		setup();
		ready = true;
	}
	if (size < 1)
		return 0;
	const ProtobufCMessageDescriptor *d = requests[data[0] % ARRAY_SIZE(requests)];
	data++, size--;

	/* Routing reads the ID the call names straight off the wire. */
	static const char *const id_fields[] = {"container_id", "pod_sandbox_id"};
	for (size_t i = 0; i < ARRAY_SIZE(id_fields); i++) {
		const ProtobufCFieldDescriptor *f =
			protobuf_c_message_descriptor_get_field_by_name(d, id_fields[i]);
		char *id = NULL;
		if (f)
			wire_find_string(data, size, f->id, &id);
		free(id);
	}

	struct crx_err err = {0};
	bool strict = wire_check_strict(data, size, d, &err) == 0;
	ProtobufCMessage *msg = protobuf_c_message_unpack(d, NULL, size, data);
	if (strict && !msg)
		__builtin_trap(); /* accepted as unambiguous, yet not readable */
	if (!msg)
		return 0;

	bool changed = false;
	int ret = kata_check_request(&policy, "kata", msg, &changed, &err);
	if (ret != 0 && ret != -EINVAL && ret != -ENOMEM)
		__builtin_trap();

	if (!strict) {
		protobuf_c_message_free_unpacked(msg, NULL);
		return 0;
	}
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *forward = malloc(len ? len : 1);
	if (!forward)
		abort();
	if (protobuf_c_message_pack(msg, forward) != len)
		__builtin_trap();
	ProtobufCMessage *again = protobuf_c_message_unpack(d, NULL, len, forward);
	if (!again || !message_equal(msg, again))
		__builtin_trap(); /* what is forwarded is not what was read */
	if (wire_check_strict(forward, len, d, &err) != 0)
		__builtin_trap(); /* the re-encoding of a strict reading is strict */
	protobuf_c_message_free_unpacked(again, NULL);
	protobuf_c_message_free_unpacked(msg, NULL);
	free(forward);
	return 0;
}
