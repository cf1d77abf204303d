/* The docker backend's names and labels: pure mapping between CRI objects
 * and Docker containers. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "runtimes/docker/model/arena.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/model/names.h"
#include "tap.h"

static void names(void)
{
	struct dk_sandbox_meta s = {
		.name = "web-0", .uid = "1234-abcd", .ns = "prod", .attempt = 2};
	struct dk_container_meta c = {.name = "nginx", .attempt = 5};
	char *n = NULL;
	struct crx_err err = {0};
	is_int(dk_sandbox_name(&s, &n, &err), 0, "sandbox name made");
	is_str(n, "k8s_POD_web-0_prod_1234-abcd_2", "sandbox name");
	free(n);
	is_int(dk_container_name(&c, &s, &n, &err), 0, "container name made");
	is_str(n, "k8s_nginx_web-0_prod_1234-abcd_5", "container name");

	char buf[256];
	bool sandbox;
	struct dk_sandbox_meta ps;
	struct dk_container_meta pc;
	is_int(dk_parse_name("/k8s_nginx_web-0_prod_1234-abcd_5", buf, sizeof(buf), &sandbox, &ps,
			     &pc),
	       0, "container name parsed");
	ok(!sandbox && streq(pc.name, "nginx") && pc.attempt == 5 && streq(ps.name, "web-0") &&
		   streq(ps.ns, "prod") && streq(ps.uid, "1234-abcd"),
	   "container name parts");
	is_int(dk_parse_name("k8s_POD_web-0_prod_uid_7", buf, sizeof(buf), &sandbox, &ps, &pc), 0,
	       "sandbox name parsed");
	ok(sandbox && ps.attempt == 7, "sandbox name parts");
	is_int(dk_parse_name("k8s_POD_a_b_c_7_deadbeef", buf, sizeof(buf), &sandbox, &ps, &pc), 0,
	       "dockershim's random suffix tolerated");
	is_int(dk_parse_name("nginx", buf, sizeof(buf), &sandbox, &ps, &pc), -EINVAL,
	       "a foreign name is refused");
	is_int(dk_parse_name("k8s_a_b_c_d_x", buf, sizeof(buf), &sandbox, &ps, &pc), -EINVAL,
	       "a bad attempt is refused");
	free(n);

	s.name = "bad_name";
	is_int(dk_sandbox_name(&s, &n, &err), -EINVAL, "'_' in a name is refused");
	has_str(err.msg, "bad_name", "the error names the value");
	s.name = "";
	is_int(dk_sandbox_name(&s, &n, &err), -EINVAL, "an empty name is refused");
	s.name = "ok";
	c.name = "a/b";
	is_int(dk_container_name(&c, &s, &n, &err), -EINVAL, "'/' in a container name is refused");

	ok(dk_valid_id("0123abcdef"), "hex ID valid");
	ok(dk_valid_id("k8s_POD_a_b_c_0"), "name valid");
	ok(!dk_valid_id("../etc"), "path refused");
	ok(!dk_valid_id("a?b=c"), "query characters refused");
	ok(!dk_valid_id(""), "empty refused");
}

static void labels(void)
{
	Runtime__V1__PodSandboxConfig__LabelsEntry l1 =
		RUNTIME__V1__POD_SANDBOX_CONFIG__LABELS_ENTRY__INIT;
	Runtime__V1__PodSandboxConfig__LabelsEntry l2 =
		RUNTIME__V1__POD_SANDBOX_CONFIG__LABELS_ENTRY__INIT;
	Runtime__V1__PodSandboxConfig__AnnotationsEntry a1 =
		RUNTIME__V1__POD_SANDBOX_CONFIG__ANNOTATIONS_ENTRY__INIT;
	l1.key = "app";
	l1.value = "web";
	l2.key = "io.kubernetes.pod.name";
	l2.value = "web-0";
	a1.key = "note";
	a1.value = "a=b, c";
	void *ls[] = {&l1, &l2}, *as[] = {&a1};
	json_object *docker = json_object_new_object();
	is_int(dk_labels_add_cri(docker, 2, ls, 1, as), 0, "labels made");
	is_str(dk_json_str(docker, "annotation.note"), "a=b, c", "annotations get a prefix");
	is_str(dk_json_str(docker, "app"), "web", "labels as they are");
	dk_json_add_str(docker, DK_LABEL_TYPE, DK_TYPE_SANDBOX);
	dk_json_add_str(docker, DK_LABEL_METADATA, "{}");
	dk_json_add_str(docker, DK_LABEL_CREATED, "1");

	struct dk_arena a = {0};
	size_t nl = 0, na = 0;
	void **out_l = NULL, **out_a = NULL;
	is_int(dk_labels_to_cri(
		       &a, docker, &runtime__v1__pod_sandbox__labels_entry__descriptor, &nl, &out_l,
		       &runtime__v1__pod_sandbox__annotations_entry__descriptor, &na, &out_a),
	       0, "labels read back");
	is_int(nl, 2, "only the CRI labels come back");
	is_int(na, 1, "and the annotation");
	is_str(dk_map_get(na, out_a, "note"), "a=b, c", "annotation value exact");
	is_str(dk_map_get(nl, out_l, "io.kubernetes.pod.name"), "web-0", "label value exact");
	ok(!dk_map_get(nl, out_l, DK_LABEL_TYPE), "internal labels hidden");
	ok(((struct dk_pb_kv *)out_l[0])->base.descriptor ==
		   &runtime__v1__pod_sandbox__labels_entry__descriptor,
	   "entries carry the requested descriptor");

	void *sel[] = {&l1};
	ok(dk_labels_match(docker, 1, sel), "selector matches");
	l1.value = "db";
	ok(!dk_labels_match(docker, 1, sel), "selector with another value does not");
	Runtime__V1__PodSandboxConfig__LabelsEntry internal =
		RUNTIME__V1__POD_SANDBOX_CONFIG__LABELS_ENTRY__INIT;
	internal.key = DK_LABEL_TYPE;
	internal.value = DK_TYPE_SANDBOX;
	void *sel2[] = {&internal};
	ok(!dk_labels_match(docker, 1, sel2), "internal labels are not selectable");

	char *meta = dk_meta_label("web-0", "uid-1", "prod", 3);
	json_object *with_meta = json_object_new_object();
	dk_json_add_str(with_meta, DK_LABEL_METADATA, meta);
	char *name, *uid, *ns;
	uint32_t attempt;
	is_int(dk_meta_parse(&a, with_meta, "/whatever", &name, &uid, &ns, &attempt), 0,
	       "metadata label parsed");
	ok(streq(name, "web-0") && streq(uid, "uid-1") && streq(ns, "prod") && attempt == 3,
	   "metadata exact");
	json_object *none = json_object_new_object();
	is_int(dk_meta_parse(&a, none, "/k8s_POD_p_n_u_4", &name, &uid, &ns, &attempt), 0,
	       "metadata from the name when there is no label");
	ok(streq(name, "p") && streq(ns, "n") && streq(uid, "u") && attempt == 4,
	   "name-derived metadata");
	is_int(dk_meta_parse(&a, none, "/random", &name, &uid, &ns, &attempt), -EINVAL,
	       "neither label nor name: refused");
	free(meta);
	json_object_put(with_meta);
	json_object_put(none);
	json_object_put(docker);
	dk_arena_clear(&a);
}

static void times(void)
{
	is_int(dk_parse_time("2026-11-22T15:38:48.071192455Z"), 1795361928071192455LL,
	       "nanoseconds");
	is_int(dk_parse_time("2026-11-22T15:38:48.07Z"), 1795361928070000000LL, "short fraction");
	is_int(dk_parse_time("2026-11-22T15:38:48Z"), 1795361928000000000LL, "no fraction");
	/* Found by fuzz-docker-json: nanoseconds since 1970 end in 2262. */
	is_int(dk_parse_time("7050-11-22T15:38:48Z"), 0, "past int64 nanoseconds: none");
	is_int(dk_parse_time("2262-04-11T23:47:16.854775807Z"), INT64_MAX, "the last one");
	is_int(dk_parse_time("2262-04-11T23:47:17Z"), 0, "one past");
	is_int(dk_parse_time("1970-01-01T00:00:00-23:59"), 86340000000000LL, "an offset");
	is_int(dk_parse_time("2026-11-22T16:38:48+01:00"), 1795361928000000000LL, "offset");
	is_int(dk_parse_time("0001-01-01T00:00:00Z"), 0, "Docker's zero time");
	is_int(dk_parse_time("garbage"), 0, "garbage");
	is_int(dk_parse_time(NULL), 0, "NULL");
	char buf[64];
	dk_format_time(1795361928000000005LL, buf, sizeof(buf));
	is_str(buf, "2026-11-22T15:38:48.000000005Z", "formatted");

	json_object *st = json_object_new_object();
	dk_json_add_str(st, "Status", "exited");
	dk_json_add_int(st, "ExitCode", 0);
	is_int(dk_container_state(st), RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED, "exited");
	is_str(dk_exit_reason(st), "Completed", "exit 0: Completed");
	dk_json_add_int(st, "ExitCode", 2);
	is_str(dk_exit_reason(st), "Error", "exit 2: Error");
	dk_json_add_bool(st, "OOMKilled", true);
	is_str(dk_exit_reason(st), "OOMKilled", "OOM");
	dk_json_add_bool(st, "Running", true);
	is_int(dk_container_state(st), RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING, "running");
	is_str(dk_exit_reason(st), "", "no reason while running");
	json_object_put(st);
	is_int(dk_container_state_word("created"), RUNTIME__V1__CONTAINER_STATE__CONTAINER_CREATED,
	       "created");
	is_int(dk_container_state_word("paused"), RUNTIME__V1__CONTAINER_STATE__CONTAINER_RUNNING,
	       "paused counts as running");
	is_int(dk_container_state_word("dead"), RUNTIME__V1__CONTAINER_STATE__CONTAINER_EXITED,
	       "dead");
	is_int(dk_container_state_word("removing"), RUNTIME__V1__CONTAINER_STATE__CONTAINER_UNKNOWN,
	       "removing is unknown");
	is_int(dk_ns_mode("host", RUNTIME__V1__NAMESPACE_MODE__POD),
	       RUNTIME__V1__NAMESPACE_MODE__NODE, "host is NODE");
	is_int(dk_ns_mode("container:abc", RUNTIME__V1__NAMESPACE_MODE__POD),
	       RUNTIME__V1__NAMESPACE_MODE__POD, "joined");
	is_int(dk_ns_mode("", RUNTIME__V1__NAMESPACE_MODE__POD),
	       RUNTIME__V1__NAMESPACE_MODE__CONTAINER, "own");
}

static void arena(void)
{
	struct dk_arena a = {0};
	size_t n = 0;
	char **items = NULL;
	int r = 0;
	for (int i = 0; i < 100; i++)
		r |= DK_PUSH(&a, &n, &items, dk_arena_printf(&a, "item-%d", i));
	ok(r == 0 && n == 100, "100 items pushed");
	is_str(items[0], "item-0", "first kept");
	is_str(items[99], "item-99", "last kept");
	char *big = dk_arena_alloc(&a, 100000);
	ok(big && big[99999] == 0, "a large block is zeroed");
	Runtime__V1__VersionResponse *v =
		dk_msg_new(&a, &runtime__v1__version_response__descriptor);
	ok(v && v->version && !*v->version, "messages start with empty strings");
	dk_arena_clear(&a);
	ok(!a.blocks, "cleared");
}

int main(void)
{
	names();
	labels();
	times();
	arena();
	return tap_done();
}
