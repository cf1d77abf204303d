#include "config.h"

#include "cri/wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	uint64_t v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*p >= end)
			return -EBADMSG;
		uint8_t b = *(*p)++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*out = v;
			return 0;
		}
	}
	return -EBADMSG;
}

int wire_find_bytes(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **data,
		    size_t *field_len)
{
	const uint8_t *p = msg, *end = msg + len;
	int found = 0;
	while (p < end) {
		uint64_t key, n;
		if (read_varint(&p, end, &key) < 0)
			return -EBADMSG;
		switch (key & 7) {
		case WIRE_VARINT:
			if (read_varint(&p, end, &n) < 0)
				return -EBADMSG;
			break;
		case WIRE_FIXED64:
		case WIRE_FIXED32: {
			size_t size = (key & 7) == WIRE_FIXED64 ? 8 : 4;
			if ((size_t)(end - p) < size)
				return -EBADMSG;
			p += size;
			break;
		}
		case WIRE_BYTES:
			if (read_varint(&p, end, &n) < 0 || n > (uint64_t)(end - p))
				return -EBADMSG;
			if (key >> 3 == number) {
				*data = p;
				*field_len = (size_t)n;
				found = 1;
			}
			p += n;
			break;
		default: /* groups are long gone from proto3 */
			return -EBADMSG;
		}
	}
	return found;
}

int wire_find_string(const uint8_t *msg, size_t len, uint32_t number, char **out)
{
	const uint8_t *data;
	size_t n;
	*out = NULL;
	int r = wire_find_bytes(msg, len, number, &data, &n);
	if (r <= 0)
		return r;
	char *s = malloc(n + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, data, n);
	s[n] = '\0';
	*out = s;
	return 1;
}
