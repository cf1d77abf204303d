/* The wire helpers: finding a field, appending one, and the strict reading a
 * policy decides on (each refusal with its message). */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/wire.h"
#include "tap.h"

struct buf {
	uint8_t data[512];
	size_t len;
};

static void put_varint(struct buf *b, uint64_t v)
{
	do {
		b->data[b->len++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
		v >>= 7;
	} while (v);
}

static void put_int(struct buf *b, unsigned field, uint64_t v)
{
	put_varint(b, field << 3);
	put_varint(b, v);
}

static void put_bytes(struct buf *b, unsigned field, const void *data, size_t n)
{
	put_varint(b, field << 3 | 2);
	put_varint(b, n);
	memcpy(b->data + b->len, data, n);
	b->len += n;
}

static void put_msg(struct buf *b, unsigned field, const struct buf *m)
{
	put_bytes(b, field, m->data, m->len);
}

static unsigned id(const ProtobufCMessageDescriptor *d, const char *name)
{
	return protobuf_c_message_descriptor_get_field_by_name(d, name)->id;
}

static struct crx_err err;

static int strict(const struct buf *b, const ProtobufCMessageDescriptor *d)
{
	memset(&err, 0, sizeof(err));
	return wire_check_strict(b->data, b->len, d, &err);
}

#define REFUSED(b, d, message, name)                              \
	do {                                                      \
		ok(strict(b, d) == -EINVAL, "%s: refused", name); \
		is_str(err.msg, message, name);                   \
	} while (0)

int main(void)
{
	const ProtobufCMessageDescriptor
		*run = &runtime__v1__run_pod_sandbox_request__descriptor,
		*cfg = &runtime__v1__pod_sandbox_config__descriptor,
		*lin = &runtime__v1__linux_pod_sandbox_config__descriptor,
		*sec = &runtime__v1__linux_sandbox_security_context__descriptor,
		*nso = &runtime__v1__namespace_option__descriptor,
		*meta = &runtime__v1__pod_sandbox_metadata__descriptor;
	struct buf ns = {0}, sc = {0}, linux1 = {0}, linux2 = {0}, config = {0}, req = {0};

	/* A well-formed request passes. */
	put_int(&ns, id(nso, "network"), RUNTIME__V1__NAMESPACE_MODE__POD);
	put_msg(&sc, id(sec, "namespace_options"), &ns);
	put_msg(&linux1, id(lin, "security_context"), &sc);
	put_msg(&config, id(cfg, "linux"), &linux1);
	put_msg(&req, id(run, "config"), &config);
	put_bytes(&req, id(run, "runtime_handler"), "kata", 4);
	is_int(strict(&req, run), 0, "a plain request: accepted");
	is_int(wire_check_strict(NULL, 0, run, &err), 0, "an empty request: accepted");

	/* The same sub-message twice, at any depth. */
	put_msg(&linux2, id(lin, "cgroup_parent"), &(struct buf){.data = "x", .len = 1});
	config.len = 0;
	put_msg(&config, id(cfg, "linux"), &linux1);
	put_msg(&config, id(cfg, "linux"), &linux2);
	req.len = 0;
	put_msg(&req, id(run, "config"), &config);
	REFUSED(&req, run,
		"the request sets config.linux more than once; a handler with a policy accepts "
		"each field once",
		"config.linux twice");
	req.len = 0;
	put_bytes(&req, id(run, "runtime_handler"), "runc", 4);
	put_bytes(&req, id(run, "runtime_handler"), "kata", 4);
	REFUSED(&req, run,
		"the request sets runtime_handler more than once; a handler with a policy accepts "
		"each field once",
		"a scalar twice");
	ns.len = 0;
	put_int(&ns, id(nso, "network"), 2);
	put_int(&ns, id(nso, "network"), 0);
	REFUSED(&ns, nso,
		"the request sets network more than once; a handler with a policy accepts each "
		"field once",
		"an enum twice, the second explicitly 0");

	/* Repeated fields repeat; packed or not. */
	unsigned groups = id(sec, "supplemental_groups");
	sc.len = 0;
	put_int(&sc, groups, 5);
	put_int(&sc, groups, 6);
	put_bytes(&sc, groups, "\x07\x08", 2);
	is_int(strict(&sc, sec), 0, "repeated int64, unpacked then packed: accepted");
	sc.len = 0;
	put_bytes(&sc, groups, "\x07\x88", 2);
	REFUSED(&sc, sec, "the request cannot be decoded: supplemental_groups is cut short",
		"a packed run that ends inside a varint");

	/* Lengths and keys are varints protobuf-c reads in at most 5 bytes; a
	 * longer (zero-padded) one is refused, as protobuf-c would refuse it. */
	unsigned handler_id = id(run, "runtime_handler");
	req.len = 0;
	memcpy(req.data, (uint8_t[]){handler_id << 3 | 2, 0x84, 0x80, 0x80, 0x80, 0x00}, 6);
	memcpy(req.data + 6, "kata", 4);
	req.len = 10;
	is_int(strict(&req, run), 0, "a length padded to 5 bytes: accepted");
	memcpy(req.data, (uint8_t[]){handler_id << 3 | 2, 0x84, 0x80, 0x80, 0x80, 0x80, 0x00}, 7);
	memcpy(req.data + 7, "kata", 4);
	req.len = 11;
	REFUSED(&req, run,
		"the request cannot be decoded: the length of runtime_handler takes more than 5 "
		"bytes",
		"a length padded to 6 bytes");
	memcpy(req.data, (uint8_t[]){0x80 | handler_id << 3 | 2, 0x80, 0x80, 0x80, 0x80, 0x00, 4},
	       7);
	REFUSED(&req, run, "the request cannot be decoded: a field key in the request is malformed",
		"a key padded to 6 bytes");

	/* What the schema does not know. */
	ns.len = 0;
	put_int(&ns, 42, 1);
	REFUSED(&ns, nso,
		"the request carries field 42 of NamespaceOption, which crimux's CRI schema does "
		"not know; a handler with a policy forwards only what it checked",
		"an unknown field at the top");
	sc.len = 0;
	put_msg(&sc, id(sec, "namespace_options"), &ns);
	REFUSED(&sc, sec,
		"the request carries field 42 of namespace_options, which crimux's CRI schema "
		"does not know; a handler with a policy forwards only what it checked",
		"an unknown field inside");
	ns.len = 0;
	put_int(&ns, id(nso, "network"), 77);
	REFUSED(&ns, nso, "network is 77, which is not a NamespaceMode crimux knows",
		"an unknown enum value");
	ns.len = 0;
	put_bytes(&ns, id(nso, "network"), "\x02", 1);
	REFUSED(&ns, nso, "the request cannot be decoded: network has the wrong wire type",
		"a wire type that does not fit");
	ns.len = 0;
	put_varint(&ns, 5 << 3 | 3);
	REFUSED(&ns, nso,
		"the request cannot be decoded: userns_options has wire type 3, which proto3 "
		"does not use",
		"a group");
	ns.len = 0;
	put_varint(&ns, 0 << 3 | 0);
	put_varint(&ns, 1);
	REFUSED(&ns, nso, "the request cannot be decoded: a field key in the request is malformed",
		"field number 0");
	config.len = 0;
	put_bytes(&config, id(cfg, "hostname"), "abc", 3);
	config.data[1] = 10; /* the length says 10, 3 bytes follow */
	REFUSED(&config, cfg, "the request cannot be decoded: hostname is cut short",
		"a length past the end");

	/* Strings: UTF-8, and no NUL. */
	struct {
		const char *bytes;
		size_t len;
		const char *what;
	} bad[] = {
		{"a\xff", 2, "a byte that starts nothing"},
		{"\xc0\xaf", 2, "an overlong '/'"},
		{"\xed\xa0\x80", 3, "a surrogate"},
		{"\xf4\x90\x80\x80", 4, "past U+10FFFF"},
		{"\xe2\x82", 2, "cut short"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct buf m = {0};
		put_bytes(&m, id(meta, "name"), bad[i].bytes, bad[i].len);
		REFUSED(&m, meta, "name is not valid UTF-8", bad[i].what);
	}
	struct buf m = {0};
	put_bytes(&m, id(meta, "name"), "h\xc3\xa9llo \xf0\x9f\x90\xb3", 11);
	is_int(strict(&m, meta), 0, "UTF-8 with 2- and 4-byte sequences: accepted");
	m.len = 0;
	put_bytes(&m, id(meta, "name"), "a\0b", 3);
	REFUSED(&m, meta, "name contains a NUL byte", "a NUL in a string");

	/* Maps: each key once. */
	struct buf e1 = {0}, e2 = {0};
	put_bytes(&e1, 1, "k", 1);
	put_bytes(&e1, 2, "v1", 2);
	put_bytes(&e2, 1, "k", 1);
	put_bytes(&e2, 2, "v2", 2);
	config.len = 0;
	put_msg(&config, id(cfg, "annotations"), &e1);
	put_msg(&config, id(cfg, "labels"), &e2);
	is_int(strict(&config, cfg), 0, "one key in two maps: accepted");
	put_msg(&config, id(cfg, "annotations"), &e2);
	REFUSED(&config, cfg, "annotations has the key \"k\" more than once", "a map key twice");
	config.len = 0;
	put_msg(&config, id(cfg, "labels"), &(struct buf){0});
	put_msg(&config, id(cfg, "labels"), &(struct buf){0});
	REFUSED(&config, cfg, "labels has the key \"\" more than once",
		"two entries without a key");

	/* Appending a string: the last occurrence, which every reader takes. */
	uint8_t *out = NULL;
	size_t out_len = 0;
	req.len = 0;
	put_bytes(&req, id(run, "runtime_handler"), "runc", 4);
	is_int(wire_append_string(req.data, req.len, id(run, "runtime_handler"), "kata-qemu", &out,
				  &out_len),
	       0, "append");
	char *handler = NULL;
	is_int(wire_find_string(out, out_len, id(run, "runtime_handler"), &handler), 1,
	       "the appended field is found");
	is_str(handler, "kata-qemu", "and is the one read");
	Runtime__V1__RunPodSandboxRequest *r =
		runtime__v1__run_pod_sandbox_request__unpack(NULL, out_len, out);
	ok(r && streq(r->runtime_handler, "kata-qemu"), "protobuf-c reads it too");
	runtime__v1__run_pod_sandbox_request__free_unpacked(r, NULL);
	free(handler);
	free(out);
	return tap_done();
}
