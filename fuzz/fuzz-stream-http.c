/* The streaming server's upgrade request parser (stream/http.c) and the
 * header helpers behind routing and protocol choice. Properties beyond "no
 * crash, no leak, no UB": a parsed request ends with its blank line and
 * parses the same from just its own bytes; every field is a terminated
 * string within its array; a partial request is never taken as whole. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "stream/http.h"
#include "stream/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(field) (strnlen((field), sizeof(field)) < sizeof(field))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const supported[] = {"v4.channel.k8s.io", "channel.k8s.io"};
	const char *buf = (const char *)data;
	struct http_request r;
	size_t used = 0;
	int got = http_request_parse(buf, size, &r, &used);
	if (got != 1 && got != 0 && got != -E2BIG && got != -EINVAL)
		__builtin_trap();
	if (got == 0 && memmem(buf, size, "\r\n\r\n", 4))
		__builtin_trap(); /* a whole request was there */
	if (got != 1)
		return 0;
	if (used < 4 || used > size || used > HTTP_MAX || memcmp(buf + used - 4, "\r\n\r\n", 4))
		__builtin_trap();
	if (!TERMINATED(r.method) || !TERMINATED(r.path) || !TERMINATED(r.query) ||
	    !TERMINATED(r.upgrade) || !TERMINATED(r.connection) || !TERMINATED(r.protocols) ||
	    !TERMINATED(r.ws_key) || !TERMINATED(r.ws_version) || !TERMINATED(r.ws_protocols))
		__builtin_trap();
	struct http_request again;
	size_t used_again = 0;
	if (http_request_parse(buf, used, &again, &used_again) != 1 || used_again != used ||
	    memcmp(&r, &again, sizeof(r)) != 0)
		__builtin_trap();
	(void)http_list_has(r.connection, "upgrade");
	const char *p = sess_negotiate(r.protocols, supported, ARRAY_SIZE(supported));
	if (p && !streq(p, supported[0]) && !streq(p, supported[1]))
		__builtin_trap();
	(void)sess_protocol_version(r.ws_protocols);
	return 0;
}
