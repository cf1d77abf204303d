/* Sandbox checkpoints: what they keep survives a save and a load exactly;
 * broken or foreign files are refused. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/engine/json.h"
#include "tap.h"

int main(void)
{
	char dir[] = "/tmp/crimux-cp-test-XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	char sub[600];
	snprintf(sub, sizeof(sub), "%s/sandboxes", dir);

	struct dk_checkpoint cp = {0};
	cp.sandbox_id = strdup("abc123");
	cp.name = strdup("web");
	cp.ns = strdup("prod");
	cp.uid = strdup("u-1");
	cp.attempt = 3;
	cp.created_ns = 1795361928000000001LL;
	cp.n_ports = 2;
	cp.ports = calloc(2, sizeof(*cp.ports));
	cp.ports[0] = (struct dk_port){.protocol = 0, .container_port = 80, .host_port = 8080};
	snprintf(cp.ports[0].host_ip, sizeof(cp.ports[0].host_ip), "127.0.0.1");
	cp.ports[1] = (struct dk_port){.protocol = 1, .container_port = 53, .host_port = 0};
	cp.network_ready = true;
	cp.netns = strdup("/proc/42/ns/net");
	const char *conf = "{\"name\":\"n\",\"plugins\":[{\"type\":\"bridge\"}]}";
	const char *result = "{\"ips\":[{\"address\":\"10.0.0.2/24\"}]}";
	ok(dk_json_parse(conf, strlen(conf), &cp.cni_conf, NULL) == 0 &&
		   dk_json_parse(result, strlen(result), &cp.cni_result, NULL) == 0,
	   "test documents parsed");
	cp.n_ips = 2;
	cp.ips = calloc(2, sizeof(char *));
	cp.ips[0] = strdup("10.0.0.2");
	cp.ips[1] = strdup("fd00::2");
	cp.labels = json_object_new_object();
	dk_json_add_str(cp.labels, "annotation.x", "y");

	struct crx_err err = {0};
	is_int(dk_checkpoint_save(sub, &cp, &err), 0, "saved (directory made)");
	struct dk_checkpoint back = {0};
	is_int(dk_checkpoint_load(sub, "abc123", &back, &err), 0, "loaded");
	ok(streq(back.name, "web") && streq(back.ns, "prod") && streq(back.uid, "u-1") &&
		   back.attempt == 3 && back.created_ns == cp.created_ns,
	   "metadata");
	ok(back.network_ready && !back.host_network && streq(back.netns, "/proc/42/ns/net"),
	   "network state");
	ok(!back.distrusted, "trusted");
	ok(back.n_ports == 2 && back.ports[0].host_port == 8080 &&
		   streq(back.ports[0].host_ip, "127.0.0.1") && back.ports[1].protocol == 1 &&
		   back.ports[1].container_port == 53,
	   "port mappings");
	ok(back.n_ips == 2 && streq(back.ips[1], "fd00::2"), "IPs");
	is_str(dk_json_str(back.cni_conf, "name"), "n", "CNI configuration");
	ok(dk_json_get(back.cni_result, "ips", NULL) != NULL, "CNI result");
	is_str(dk_json_str(back.labels, "annotation.x"), "y", "labels");
	dk_checkpoint_clear(&back);
	cp.distrusted = true;
	is_int(dk_checkpoint_save(sub, &cp, &err), 0, "saved again, distrusted");
	is_int(dk_checkpoint_load(sub, "abc123", &back, &err), 0, "loaded");
	ok(back.distrusted, "distrust survives a restart");
	dk_checkpoint_clear(&back);
	cp.distrusted = false;

	char **ids;
	size_t n;
	is_int(dk_checkpoint_list(sub, &ids, &n, &err), 0, "listed");
	ok(n == 1 && streq(ids[0], "abc123"), "one checkpoint");
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);

	is_int(dk_checkpoint_load(sub, "nope", &back, &err), -ENOENT, "none: ENOENT");
	is_int(dk_checkpoint_load(sub, "../x", &back, &err), -EINVAL, "a path is not an ID");

	char path[700];
	snprintf(path, sizeof(path), "%s/other.json", sub);
	FILE *f = fopen(path, "w");
	fputs("{\"version\":1,\"sandbox_id\":\"abc123\"}", f);
	fclose(f);
	is_int(dk_checkpoint_load(sub, "other", &back, &err), -EBADMSG, "another sandbox's file");
	f = fopen(path, "w");
	fputs("{\"version\":9,\"sandbox_id\":\"other\"}", f);
	fclose(f);
	is_int(dk_checkpoint_load(sub, "other", &back, &err), -EBADMSG, "an unknown version");
	f = fopen(path, "w");
	fputs("{\"version\":1,\"sandbox_id\":\"oth", f);
	fclose(f);
	is_int(dk_checkpoint_load(sub, "other", &back, &err), -EBADMSG, "a truncated file");

	is_int(dk_checkpoint_remove(sub, "abc123", &err), 0, "removed");
	is_int(dk_checkpoint_remove(sub, "abc123", &err), 0, "removing again is fine");
	is_int(dk_checkpoint_load(sub, "abc123", &back, &err), -ENOENT, "gone");
	dk_checkpoint_clear(&cp);

	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return tap_done();
}
