#include "config.h"

#include "runtimes/docker/engine/json.h"

#include <errno.h>
#include <stdarg.h>

int dk_json_parse(const char *text, size_t len, json_object **out, struct crx_err *err)
{
	json_tokener *tok = json_tokener_new();
	if (!tok)
		return crx_err_set(err, -ENOMEM, "out of memory");
	json_object *o = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (!o || jerr != json_tokener_success) {
		if (o)
			json_object_put(o);
		return crx_err_set(err, -EBADMSG, "invalid JSON: %s",
				   jerr == json_tokener_continue ? "truncated document"
								 : json_tokener_error_desc(jerr));
	}
	/* Only white space may follow the document. */
	for (; used < len; used++) {
		char c = text[used];
		if (c != ' ' && c != '\n' && c != '\r' && c != '\t') {
			json_object_put(o);
			return crx_err_set(err, -EBADMSG, "invalid JSON: data after the document");
		}
	}
	*out = o;
	return 0;
}

json_object *dk_json_get(json_object *o, ...)
{
	va_list ap;
	va_start(ap, o);
	const char *key;
	while (o && (key = va_arg(ap, const char *))) {
		json_object *next = NULL;
		if (!json_object_is_type(o, json_type_object) ||
		    !json_object_object_get_ex(o, key, &next))
			next = NULL;
		o = next;
	}
	va_end(ap);
	return o;
}

const char *dk_json_str(json_object *o, const char *key)
{
	json_object *v = dk_json_get(o, key, NULL);
	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

int64_t dk_json_int(json_object *o, const char *key, int64_t def)
{
	json_object *v = dk_json_get(o, key, NULL);
	if (!v ||
	    !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
		return def;
	return json_object_get_int64(v);
}

bool dk_json_bool(json_object *o, const char *key)
{
	json_object *v = dk_json_get(o, key, NULL);
	return v && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

int dk_json_add(json_object *o, const char *key, json_object *value)
{
	if (!o || !value) {
		if (value)
			json_object_put(value);
		return -ENOMEM;
	}
	if (json_object_object_add(o, key, value) < 0) {
		json_object_put(value);
		return -ENOMEM;
	}
	return 0;
}

int dk_json_add_str(json_object *o, const char *key, const char *value)
{
	return value ? dk_json_add(o, key, json_object_new_string(value)) : 0;
}

int dk_json_add_int(json_object *o, const char *key, int64_t value)
{
	return dk_json_add(o, key, json_object_new_int64(value));
}

int dk_json_add_bool(json_object *o, const char *key, bool value)
{
	return dk_json_add(o, key, json_object_new_boolean(value));
}

int dk_json_append_str(json_object *array, const char *value)
{
	if (!array)
		return -ENOMEM;
	json_object *s = json_object_new_string(value);
	if (!s)
		return -ENOMEM;
	if (json_object_array_add(array, s) < 0) {
		json_object_put(s);
		return -ENOMEM;
	}
	return 0;
}

const char *dk_json_text(json_object *o)
{
	return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
							 JSON_C_TO_STRING_NOSLASHESCAPE);
}
