/* Just enough of the protobuf wire format to read one top-level field without
 * unpacking a message (routing needs an ID, not the whole request), and to
 * tell whether a request means the same to every reader before a policy
 * decides on it. */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Finds the last occurrence (protobuf's rule for scalars) of length-delimited
 * field `number`: 1 with data and field_len set to it, 0 when absent,
 * -EBADMSG when msg is not valid wire format. */
int wire_find_bytes(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **data,
		    size_t *field_len);

/* The same, as a NUL-terminated copy (malloc'd); *out is NULL when absent. */
int wire_find_string(const uint8_t *msg, size_t len, uint32_t number, char **out);

/* Checks that msg, read as a `desc` message, has one meaning, and that
 * protobuf-c's reading of it is that meaning. protobuf-c and the spec (Go,
 * containerd) part ways on a field given twice: the spec merges, protobuf-c
 * keeps only the later occurrence's scalars and strings. Refused, anywhere in
 * the tree: a singular field (or oneof) set more than once, a field the
 * schema does not know (a newer backend may read it), a map key given twice
 * (Go keeps the last, protobuf-c both), a string that is not UTF-8 (Go
 * refuses it) or holds a NUL (protobuf-c's C string ends there), an enum
 * value the schema does not know, a wrong wire type, a cut-short field.
 * Repeated scalars may be packed or not: both readers take both.
 * 0, or -EINVAL with err naming the field ("config.linux ..."). */
int wire_check_strict(const uint8_t *msg, size_t len, const ProtobufCMessageDescriptor *desc,
		      struct crx_err *err);

/* msg with one more occurrence of string field `number` at its end: the
 * occurrence every reader takes (malloc'd into *out). */
int wire_append_string(const uint8_t *msg, size_t len, uint32_t number, const char *value,
		       uint8_t **out, size_t *out_len);
