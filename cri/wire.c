#include "config.h"

#include "cri/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "common/util.h"

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

/* max_bytes: 10 for a value; protobuf-c reads keys and lengths in 5 at most. */
static int read_varint_max(const uint8_t **p, const uint8_t *end, unsigned max_bytes, uint64_t *out)
{
	uint64_t v = 0;
	for (unsigned shift = 0; shift < 7 * max_bytes; shift += 7) {
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

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	return read_varint_max(p, end, 10, out);
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

/* ---------------------------------------------------------------- strict reading */

#define STRICT_MAX_DEPTH  32
#define STRICT_MAX_FIELDS 256

struct strict {
	char path[512]; /* "config.linux.security_context" */
	size_t path_len;
	struct crx_err *err;
};

struct map_key {
	unsigned field; /* index in the descriptor */
	const uint8_t *key;
	size_t len;
};

struct map_keys {
	struct map_key *keys;
	size_t n, size;
};

static int path_push(struct strict *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int path_push(struct strict *s, const char *fmt, ...)
{
	size_t before = s->path_len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(s->path + before, sizeof(s->path) - before, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(s->path) - before)
		s->path_len = sizeof(s->path) - 1; /* cut: still names where it began */
	else
		s->path_len += (size_t)n;
	return (int)before;
}

static void path_pop(struct strict *s, int before)
{
	s->path_len = (size_t)before;
	s->path[before] = '\0';
}

static int strict_fail(struct strict *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int strict_fail(struct strict *s, const char *fmt, ...)
{
	char what[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return crx_err_set(s->err, -EINVAL, "%s", what);
}

static unsigned wire_type_of(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
		return WIRE_FIXED32;
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return WIRE_FIXED64;
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_BYTES:
	case PROTOBUF_C_TYPE_MESSAGE:
		return WIRE_BYTES;
	default:
		return WIRE_VARINT;
	}
}

/* protoc makes a map<K, V> field a repeated message "<Field>Entry" of key = 1
 * and value = 2; protobuf-c keeps every entry, Go the last of each key. */
static bool is_map_entry(const ProtobufCMessageDescriptor *d)
{
	size_t n = strlen(d->short_name);
	return n > 5 && streq(d->short_name + n - 5, "Entry") && d->n_fields == 2 &&
	       d->fields[0].id == 1 && streq(d->fields[0].name, "key") && d->fields[1].id == 2 &&
	       streq(d->fields[1].name, "value");
}

static int check_scalar(struct strict *s, const ProtobufCFieldDescriptor *f, uint64_t v)
{
	if (f->type != PROTOBUF_C_TYPE_ENUM)
		return 0;
	const ProtobufCEnumDescriptor *e = f->descriptor;
	int32_t value = (int32_t)(uint32_t)v; /* an enum is an int32 on the wire */
	if (!protobuf_c_enum_descriptor_get_value(e, value))
		return strict_fail(s, "%s is %" PRId32 ", which is not a %s crimux knows", s->path,
				   value, e->short_name);
	return 0;
}

/* A packed run of scalars: it must hold whole elements and nothing else. */
static int check_packed(struct strict *s, const ProtobufCFieldDescriptor *f, const uint8_t *p,
			size_t n)
{
	const uint8_t *end = p + n;
	unsigned wt = wire_type_of(f->type);
	while (p < end) {
		uint64_t v = 0;
		if (wt == WIRE_VARINT) {
			if (read_varint(&p, end, &v) < 0)
				return strict_fail(s,
						   "the request cannot be decoded: %s is cut short",
						   s->path);
		} else {
			size_t size = wt == WIRE_FIXED64 ? 8 : 4;
			if ((size_t)(end - p) < size)
				return strict_fail(s,
						   "the request cannot be decoded: %s is cut short",
						   s->path);
			p += size;
		}
		int r = check_scalar(s, f, v);
		if (r < 0)
			return r;
	}
	return 0;
}

static int check_message(struct strict *s, const uint8_t *msg, size_t len,
			 const ProtobufCMessageDescriptor *d, unsigned depth, const uint8_t **key,
			 size_t *key_len);

static int key_cmp(const void *a, const void *b)
{
	const struct map_key *x = a, *y = b;
	if (x->field != y->field)
		return x->field < y->field ? -1 : 1;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->key, y->key, n);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int check_field(struct strict *s, const ProtobufCMessageDescriptor *d,
		       const ProtobufCFieldDescriptor *f, unsigned wt, const uint8_t *data,
		       size_t n, uint64_t v, unsigned depth, struct map_keys *keys)
{
	if (wt != wire_type_of(f->type)) {
		bool packed = wt == WIRE_BYTES && f->label == PROTOBUF_C_LABEL_REPEATED;
		if (!packed)
			return strict_fail(
				s, "the request cannot be decoded: %s has the wrong wire type",
				s->path);
		return check_packed(s, f, data, n);
	}
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING:
		if (memchr(data, '\0', n))
			return strict_fail(s, "%s contains a NUL byte", s->path);
		if (!utf8_valid(data, n))
			return strict_fail(s, "%s is not valid UTF-8", s->path);
		return 0;
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessageDescriptor *sub = f->descriptor;
		const uint8_t *key = (const uint8_t *)""; /* absent: the empty key */
		size_t key_len = 0;
		int r = check_message(s, data, n, sub, depth + 1, &key, &key_len);
		if (r < 0 || !is_map_entry(sub))
			return r;
		if (keys->n == keys->size) {
			size_t size = keys->size ? 2 * keys->size : 16;
			struct map_key *grown = realloc(keys->keys, size * sizeof(*grown));
			if (!grown)
				return crx_err_set(s->err, -ENOMEM, "out of memory");
			keys->keys = grown;
			keys->size = size;
		}
		keys->keys[keys->n++] = (struct map_key){(unsigned)(f - d->fields), key, key_len};
		return 0;
	}
	case PROTOBUF_C_TYPE_BYTES:
		return 0;
	default:
		return check_scalar(s, f, v);
	}
}

/* key, key_len: for a map entry, its key as it is on the wire. */
static int check_message(struct strict *s, const uint8_t *msg, size_t len,
			 const ProtobufCMessageDescriptor *d, unsigned depth, const uint8_t **key,
			 size_t *key_len)
{
	if (depth > STRICT_MAX_DEPTH || d->n_fields > STRICT_MAX_FIELDS)
		return strict_fail(s, "%s is nested too deeply", s->path);
	uint64_t seen[STRICT_MAX_FIELDS / 64] = {0};
	struct map_keys keys = {0};
	const uint8_t *p = msg, *end = msg + len;
	int r = 0;
	while (r == 0 && p < end) {
		uint64_t tag, v = 0, n = 0;
		if (read_varint_max(&p, end, 5, &tag) < 0 || tag >> 3 == 0 ||
		    tag >> 3 > 0x1fffffff) {
			r = strict_fail(
				s, "the request cannot be decoded: a field key in %s is malformed",
				*s->path ? s->path : "the request");
			break;
		}
		unsigned wt = tag & 7;
		const uint8_t *data = p;
		if (wt == WIRE_VARINT) {
			if (read_varint(&p, end, &v) < 0)
				r = -1;
		} else if (wt == WIRE_FIXED64 || wt == WIRE_FIXED32) {
			size_t size = wt == WIRE_FIXED64 ? 8 : 4;
			if ((size_t)(end - p) < size)
				r = -1;
			else
				p += size;
		} else if (wt == WIRE_BYTES) {
			const uint8_t *length = p;
			if (read_varint(&p, end, &n) < 0 || n > (uint64_t)(end - p))
				r = -1;
			else if (p - length > 5)
				r = -2;
			else
				data = p, p += n;
		}
		const ProtobufCFieldDescriptor *f =
			protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
		if (r == -2) {
			r = strict_fail(s,
					"the request cannot be decoded: the length of %s%s%s takes "
					"more than 5 bytes",
					s->path, *s->path ? "." : "", f ? f->name : "a field");
			break;
		}
		if (wt != WIRE_VARINT && wt != WIRE_FIXED64 && wt != WIRE_FIXED32 &&
		    wt != WIRE_BYTES) { /* groups, and wire types that do not exist */
			r = strict_fail(s,
					"the request cannot be decoded: %s%s%s has wire type %u, "
					"which proto3 does not use",
					s->path, *s->path ? "." : "", f ? f->name : "a field", wt);
			break;
		}
		if (r < 0) {
			r = strict_fail(s, "the request cannot be decoded: %s%s%s is cut short",
					s->path, *s->path ? "." : "", f ? f->name : "a field");
			break;
		}
		if (!f) {
			r = strict_fail(
				s,
				"the request carries field %u of %s, which crimux's CRI "
				"schema does not know; a handler with a policy forwards only "
				"what it checked",
				(unsigned)(tag >> 3), *s->path ? s->path : d->short_name);
			break;
		}
		unsigned index = (unsigned)(f - d->fields);
		int mark = path_push(s, "%s%s", *s->path ? "." : "", f->name);
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			r = check_field(s, d, f, wt, data, (size_t)n, v, depth, &keys);
		} else if (seen[index / 64] & (1ull << (index % 64))) {
			r = strict_fail(s,
					"the request sets %s more than once; a handler with a "
					"policy accepts each field once",
					s->path);
		} else {
			/* Members of a oneof replace each other: one of them, once. */
			for (unsigned i = 0; i < d->n_fields; i++)
				if (i == index ||
				    ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
				     (d->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
				     d->fields[i].quantifier_offset == f->quantifier_offset))
					seen[i / 64] |= 1ull << (i % 64);
			r = check_field(s, d, f, wt, data, (size_t)n, v, depth, &keys);
			if (r == 0 && key && f->id == 1 && is_map_entry(d))
				*key = data, *key_len = (size_t)n;
		}
		path_pop(s, mark);
	}
	if (r == 0 && keys.n > 1) {
		qsort(keys.keys, keys.n, sizeof(*keys.keys), key_cmp);
		for (size_t i = 1; r == 0 && i < keys.n; i++)
			if (key_cmp(&keys.keys[i - 1], &keys.keys[i]) == 0)
				r = strict_fail(
					s, "%s%s%s has the key \"%.*s\" more than once", s->path,
					*s->path ? "." : "", d->fields[keys.keys[i].field].name,
					(int)(keys.keys[i].len > 64 ? 64 : keys.keys[i].len),
					(const char *)keys.keys[i].key);
	}
	free(keys.keys);
	return r;
}

int wire_check_strict(const uint8_t *msg, size_t len, const ProtobufCMessageDescriptor *desc,
		      struct crx_err *err)
{
	struct strict s = {.err = err};
	if (!msg)
		msg = (const uint8_t *)""; /* an empty request: no arithmetic on NULL */
	return check_message(&s, msg, len, desc, 0, NULL, NULL);
}

int wire_append_string(const uint8_t *msg, size_t len, uint32_t number, const char *value,
		       uint8_t **out, size_t *out_len)
{
	size_t n = strlen(value), at = len;
	uint8_t *buf = malloc(len + 2 * 10 + n);
	if (!buf)
		return -ENOMEM;
	if (len)
		memcpy(buf, msg, len);
	for (uint64_t v = (uint64_t)number << 3 | WIRE_BYTES;; v >>= 7) {
		buf[at++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
		if (v <= 0x7f)
			break;
	}
	for (uint64_t v = n;; v >>= 7) {
		buf[at++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
		if (v <= 0x7f)
			break;
	}
	memcpy(buf + at, value, n);
	*out = buf;
	*out_len = at + n;
	return 0;
}
