/* Just enough of the protobuf wire format to read one top-level field without
 * unpacking a message: routing needs an ID, not the whole request. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Finds the last occurrence (protobuf's rule for scalars) of length-delimited
 * field `number`: 1 with data and field_len set to it, 0 when absent,
 * -EBADMSG when msg is not valid wire format. */
int wire_find_bytes(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **data,
		    size_t *field_len);

/* The same, as a NUL-terminated copy (malloc'd); *out is NULL when absent. */
int wire_find_string(const uint8_t *msg, size_t len, uint32_t number, char **out);
