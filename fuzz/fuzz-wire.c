/* The wire helpers the gRPC-facing router uses on any method's request
 * (cri/wire.c). The first input byte picks a CRI method, the second a field
 * number; the rest is the request. Properties, beyond "no crash, no leak, no
 * UB": wire_find_bytes agrees with itself as a string; a field appended with
 * wire_append_string is the one found afterwards, and protobuf-c reads the
 * appended string too; whatever wire_check_strict accepts, protobuf-c reads. */
#include "config.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/methods.h"
#include "cri/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	const struct cri_method *m = cri_method_at(data[0] % cri_method_count());
	uint32_t number = (uint32_t)data[1] % 20 + 1;
	data += 2, size -= 2;

	const uint8_t *found;
	size_t found_len;
	char *s = NULL;
	int r = wire_find_bytes(data, size, number, &found, &found_len);
	int q = wire_find_string(data, size, number, &s);
	if (r != q || (r == 1 && (strlen(s) > found_len || memcmp(s, found, strlen(s)) != 0)))
		__builtin_trap();
	free(s);

	if (r >= 0) { /* appending to a well-formed message */
		uint8_t *out;
		size_t out_len;
		if (wire_append_string(data, size, number, "crimux-appended", &out, &out_len) < 0)
			abort();
		if (wire_find_string(out, out_len, number, &s) != 1 || !streq(s, "crimux-appended"))
			__builtin_trap();
		free(s);
		free(out);
	}

	struct crx_err err;
	if (wire_check_strict(data, size, m->request, &err) == 0) {
		ProtobufCMessage *msg = protobuf_c_message_unpack(m->request, NULL, size, data);
		if (!msg)
			__builtin_trap(); /* accepted as unambiguous, yet not readable */
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	return 0;
}
