/* Small helpers over json-c for Docker's API and CNI documents. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

static inline void dk_json_putp(json_object **o)
{
	if (*o)
		json_object_put(*o);
}
#define _cleanup_json_ __attribute__((cleanup(dk_json_putp)))

/* Parses a whole document; err says where it broke. */
int dk_json_parse(const char *text, size_t len, json_object **out, struct crx_err *err);

/* Walks object keys: dk_json_get(o, "State", "Pid", NULL). NULL when a key
 * is missing or a step is not an object. Borrowed reference. */
json_object *dk_json_get(json_object *o, ...) __attribute__((sentinel));
/* A string member (NULL if missing or not a string). */
const char *dk_json_str(json_object *o, const char *key);
int64_t dk_json_int(json_object *o, const char *key, int64_t def);
bool dk_json_bool(json_object *o, const char *key);

/* Builders: ignore NULL values, return 0 or -ENOMEM. */
int dk_json_add_str(json_object *o, const char *key, const char *value);
int dk_json_add_int(json_object *o, const char *key, int64_t value);
int dk_json_add_bool(json_object *o, const char *key, bool value);
/* Takes ownership of value, also on failure. */
int dk_json_add(json_object *o, const char *key, json_object *value);
int dk_json_append_str(json_object *array, const char *value);

/* Compact text, owned by o. */
const char *dk_json_text(json_object *o);
