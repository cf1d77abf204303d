/* Deep equality of two protobuf-c messages of one type, field by field
 * through the descriptors (unknown fields included), for the fuzz targets. */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <string.h>

static bool message_equal(const ProtobufCMessage *a, const ProtobufCMessage *b);

static size_t value_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(void *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	default:
		return 4;
	}
}

static bool value_equal(ProtobufCType type, const void *x, const void *y)
{
	switch (type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)x, *t = *(char *const *)y;
		return strcmp(s ? s : "", t ? t : "") == 0;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *m = *(ProtobufCMessage *const *)x,
				       *n = *(ProtobufCMessage *const *)y;
		return m && n ? message_equal(m, n) : m == n; /* presence counts */
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *m = x, *n = y;
		return m->len == n->len && (!m->len || memcmp(m->data, n->data, m->len) == 0);
	}
	case PROTOBUF_C_TYPE_BOOL: /* any non-zero is true */
		return !*(const protobuf_c_boolean *)x == !*(const protobuf_c_boolean *)y;
	default: /* float and double bit for bit: a NaN stays that NaN */
		return memcmp(x, y, value_size(type)) == 0;
	}
}

static bool message_equal(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	const ProtobufCMessageDescriptor *d = a->descriptor;
	if (d != b->descriptor || a->n_unknown_fields != b->n_unknown_fields)
		return false;
	for (unsigned i = 0; i < a->n_unknown_fields; i++) {
		const ProtobufCMessageUnknownField *u = &a->unknown_fields[i],
						   *v = &b->unknown_fields[i];
		if (u->tag != v->tag || u->wire_type != v->wire_type || u->len != v->len ||
		    (u->len && memcmp(u->data, v->data, u->len) != 0))
			return false;
	}
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *x = (const char *)a + f->offset, *y = (const char *)b + f->offset;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)((const char *)a + f->quantifier_offset);
			if (n != *(const size_t *)((const char *)b + f->quantifier_offset))
				return false;
			const char *xs = *(char *const *)x, *ys = *(char *const *)y;
			size_t size = value_size(f->type);
			for (size_t k = 0; k < n; k++)
				if (!value_equal(f->type, xs + k * size, ys + k * size))
					return false;
			continue;
		}
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t ca = *(const uint32_t *)((const char *)a + f->quantifier_offset);
			uint32_t cb = *(const uint32_t *)((const char *)b + f->quantifier_offset);
			if (ca != cb)
				return false;
			if (ca != f->id)
				continue;
		} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset) {
			protobuf_c_boolean ha = *(const protobuf_c_boolean *)((const char *)a +
									      f->quantifier_offset);
			protobuf_c_boolean hb = *(const protobuf_c_boolean *)((const char *)b +
									      f->quantifier_offset);
			if (ha != hb)
				return false;
			if (!ha)
				continue;
		}
		if (!value_equal(f->type, x, y))
			return false;
	}
	return true;
}
