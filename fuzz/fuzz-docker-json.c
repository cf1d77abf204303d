/* Decoders of what dockerd (or crimux's own state files) hand the
 * dockershim: JSON parsing and the accessors inspect answers go through,
 * the checkpoint reader, the json-file log line converter, the metadata
 * and label readers, the state and time converters, and the API calls
 * that read a JSON answer or a stream of JSON messages (dk_call,
 * dk_container_create, dk_json_stream_check) and ExecSync's sequence
 * (exec create, the multiplexed stream, exec inspect) against a fake
 * dockerd. The first byte picks the decoder; with an API call, the rest is
 * the responses, split at "\xff\xfe". */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fake-dockerd.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/arena.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/logs.h"
#include "runtimes/docker/model/names.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode(const char *text, size_t len)
{
	json_object *o = NULL;
	if (dk_json_parse(text, len, &o, NULL) < 0)
		return;
	/* What the handlers read from an inspect answer. */
	json_object *state = dk_json_get(o, "State", NULL);
	(void)dk_container_state(state);
	(void)dk_exit_reason(state);
	(void)dk_parse_time(dk_json_str(state, "StartedAt"));
	(void)dk_json_int(state, "Pid", 0);
	(void)dk_json_bool(state, "Running");
	(void)dk_container_state_word(dk_json_str(o, "State"));
	json_object *labels = dk_json_get(o, "Config", "Labels", NULL);
	struct dk_arena a = {0};
	char *name = NULL, *uid = NULL, *ns = NULL;
	uint32_t attempt;
	(void)dk_meta_parse(&a, labels, dk_json_str(o, "Name"), &name, &uid, &ns, &attempt);
	size_t n_labels = 0, n_ann = 0;
	void **l = NULL, **an = NULL;
	(void)dk_labels_to_cri(&a, labels, &runtime__v1__container__labels_entry__descriptor,
			       &n_labels, &l,
			       &runtime__v1__container__annotations_entry__descriptor, &n_ann, &an);
	dk_arena_clear(&a);
	struct dk_checkpoint cp = {0};
	if (dk_checkpoint_from_json(o, &cp, NULL) == 0) {
		json_object *back = NULL;
		if (dk_checkpoint_to_json(&cp, &back) == 0)
			json_object_put(back);
		dk_checkpoint_clear(&cp);
	}
	(void)dk_json_text(o);
	json_object_put(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0] % 5;
	data++, size--;
	switch (mode) {
	case 0: {
		char *text = malloc(size + 1);
		if (!text)
			return 0;
		memcpy(text, data, size);
		text[size] = '\0';
		decode(text, size);
		free(text);
		return 0;
	}
	case 1: {
		char *line = NULL;
		size_t len;
		if (dk_log_line_to_cri((const char *)data, size, &line, &len) == 0) {
			if (len == 0 || line[len - 1] != '\n')
				__builtin_trap();
			free(line);
		}
		return 0;
	}
	default:
		break;
	}
	const char *sock = fake_serve(data, size);
	struct crx_err err = {0};
	if (mode == 2) {
		json_object *out = NULL;
		int status = 0;
		if (dk_call(sock, "GET", "/containers/x/json", NULL, NULL, &out, &status, &err) ==
			    0 &&
		    out)
			decode(dk_json_text(out), strlen(dk_json_text(out)));
		if (out)
			json_object_put(out);
		char *id = NULL;
		json_object *body = json_object_new_object();
		if (dk_container_create(sock, "fuzz", body, NULL, &id, &err) == 0 &&
		    !dk_valid_id(id))
			__builtin_trap();
		free(id);
		json_object_put(body);
	} else if (mode == 3) {
		struct dk_http_request req = {.method = "POST", .target = "/v1.41/images/create"};
		struct dk_http_conn *c = NULL;
		if (dk_http_open(sock, &req, NULL, &c, &err) == 0) {
			(void)dk_json_stream_check(c, &err);
			dk_http_close(c);
		}
	} else {
		char *argv[] = {"true", NULL};
		struct dk_exec_result res = {0};
		size_t cap = 4096;
		if (dk_exec_sync(sock, "0123456789ab", argv, 1, 0, cap, NULL, &res, &err) == 0 &&
		    res.out_len + res.err_len > cap)
			__builtin_trap();
		dk_exec_result_clear(&res);
	}
	fake_done();
	return 0;
}
