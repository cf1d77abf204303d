/* CNI for the docker backend: loading configurations, what each plugin gets
 * on stdin and in its environment, ADD/DEL order, failure clean-up. The
 * plugins here are small shell scripts that record how they were called. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/cni.h"
#include "runtimes/docker/engine/json.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-cni-test-XXXXXX";

static void write_file(const char *name, const char *text, mode_t mode)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static char *slurp(const char *name)
{
	char path[512], *text = NULL;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	size_t len;
	if (dk_read_file(path, 1 << 20, &text, &len, NULL) < 0)
		return strdup("");
	return text;
}

static const char *plugin =
	"#!/bin/sh\n"
	"in=$(cat)\n"
	"echo \"$(basename $0) $CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME\" >> $RECORD\n"
	"echo \"$CNI_ARGS\" > $RECORD.args\n"
	"echo \"$in\" > $RECORD.$(basename $0).$CNI_COMMAND\n"
	"if [ \"$(basename $0)\" = fail ]; then\n"
	"  echo '{\"code\": 7, \"msg\": \"boom\", \"details\": \"no luck\"}'; exit 1\n"
	"fi\n"
	"[ \"$CNI_COMMAND\" = ADD ] && echo '{\"cniVersion\": \"1.0.0\", \"ips\": "
	"[{\"address\": \"fd00::5/64\"}, {\"address\": \"10.0.0.5/24\"}], \"from\": \"'$(basename "
	"$0)'\"}'\n"
	"exit 0\n";

static void loading(void)
{
	json_object *conf = NULL;
	char *file = NULL;
	struct crx_err err = {0};
	char confdir[600];
	snprintf(confdir, sizeof(confdir), "%s/net.d", dir);
	is_int(dk_cni_load(confdir, &conf, &file, &err), -ENOENT, "no directory: not ready");
	mkdir(confdir, 0755);
	is_int(dk_cni_load(confdir, &conf, &file, &err), -ENOENT, "empty directory: not ready");
	write_file("net.d/05-broken.conflist", "{ \"name\": \"x\", \"plugins\": [] }", 0644);
	write_file("net.d/07-notes.txt", "not a config", 0644);
	is_int(dk_cni_load(confdir, &conf, &file, &err), -ENOENT, "only an invalid file");
	has_str(err.msg, "05-broken.conflist", "the error names the invalid file");
	write_file("net.d/20-single.conf",
		   "{ \"cniVersion\": \"0.4.0\", \"name\": \"single\", \"type\": \"bridge\" }",
		   0644);
	write_file("net.d/30-list.conflist",
		   "{ \"cniVersion\": \"1.0.0\", \"name\": \"list\", \"plugins\": "
		   "[{\"type\": \"bridge\"}] }",
		   0644);
	is_int(dk_cni_load(confdir, &conf, &file, &err), 0, "a valid one");
	has_str(file, "20-single.conf", "the first valid in name order");
	is_str(dk_json_str(conf, "name"), "single", "its name");
	json_object *plugins = dk_json_get(conf, "plugins", NULL);
	ok(plugins && json_object_array_length(plugins) == 1, "a .conf becomes a list of one");
	is_str(dk_json_str(conf, "cniVersion"), "0.4.0", "with its version");
	json_object_put(conf);
	free(file);

	const char *bad = "{\"name\":\"n\",\"plugins\":[{\"type\":\"../x\"}]}";
	is_int(dk_cni_parse(bad, strlen(bad), true, &conf, &err), -EINVAL,
	       "a plugin type with a path is refused");
	bad = "{\"plugins\":[{\"type\":\"x\"}]}";
	is_int(dk_cni_parse(bad, strlen(bad), true, &conf, &err), -EINVAL,
	       "a list without a name is refused");
}

static json_object *parse(const char *text)
{
	json_object *o = NULL;
	dk_json_parse(text, strlen(text), &o, NULL);
	return o;
}

static void plugin_conf(void)
{
	json_object *list =
		parse("{\"cniVersion\": \"1.0.0\", \"name\": \"net\", \"plugins\": ["
		      "{\"type\": \"bridge\", \"bridge\": \"br0\"},"
		      "{\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}]}");
	json_object *ports =
		parse("[{\"hostPort\": 80, \"containerPort\": 8080, \"protocol\": \"tcp\"}]");
	json_object *prev = parse("{\"cniVersion\": \"1.0.0\", \"ips\": []}");
	struct dk_cni_args a = {.container_id = "c1", .port_mappings = ports};
	json_object *c = NULL;
	is_int(dk_cni_plugin_conf(list, 0, NULL, &a, false, &c), 0, "first plugin's config");
	is_str(dk_json_str(c, "name"), "net", "network name added");
	is_str(dk_json_str(c, "cniVersion"), "1.0.0", "version added");
	is_str(dk_json_str(c, "bridge"), "br0", "the plugin's own keys");
	ok(!dk_json_get(c, "runtimeConfig", NULL), "no runtimeConfig without the capability");
	ok(!dk_json_get(c, "prevResult", NULL), "no prevResult for the first");
	json_object_put(c);
	is_int(dk_cni_plugin_conf(list, 1, prev, &a, false, &c), 0, "second plugin's config");
	ok(dk_json_get(c, "prevResult", NULL) != NULL, "prevResult chained");
	is_int(dk_json_int(json_object_array_get_idx(
				   dk_json_get(c, "runtimeConfig", "portMappings", NULL), 0),
			   "hostPort", 0),
	       80, "portMappings for the plugin that declares them");
	json_object_put(c);
	ok(!dk_json_get(json_object_array_get_idx(dk_json_get(list, "plugins", NULL), 1),
			"runtimeConfig", NULL),
	   "the loaded list is not changed");
	json_object_object_add(list, "cniVersion", json_object_new_string("0.3.1"));
	is_int(dk_cni_plugin_conf(list, 1, prev, &a, true, &c), 0, "0.3.1 DEL config");
	ok(!dk_json_get(c, "prevResult", NULL), "0.3.1 DEL gets no prevResult");
	json_object_put(c);
	json_object_object_add(list, "cniVersion", json_object_new_string("0.4.0"));
	is_int(dk_cni_plugin_conf(list, 1, prev, &a, true, &c), 0, "0.4.0 DEL config");
	ok(dk_json_get(c, "prevResult", NULL) != NULL, "0.4.0 DEL gets ADD's result");
	json_object_put(c);
	json_object_put(list);
	json_object_put(ports);
	json_object_put(prev);

	char **ips;
	size_t n;
	json_object *res = parse("{\"ips\": [{\"address\": \"fd00::5/64\"}, "
				 "{\"address\": \"10.0.0.5/24\"}]}");
	is_int(dk_cni_result_ips(res, &ips, &n), 0, "result IPs");
	ok(n == 2 && streq(ips[0], "10.0.0.5") && streq(ips[1], "fd00::5"),
	   "IPv4 first, prefixes dropped");
	dk_strv_free(ips, n);
	json_object_put(res);
	res = parse("{\"ip4\": {\"ip\": \"10.1.0.2/16\"}}");
	is_int(dk_cni_result_ips(res, &ips, &n), 0, "0.2.0 result");
	ok(n == 1 && streq(ips[0], "10.1.0.2"), "0.2.0 address");
	dk_strv_free(ips, n);
	json_object_put(res);
}

static void add_del(void)
{
	char bin[600], record[700];
	snprintf(bin, sizeof(bin), "%s/bin", dir);
	mkdir(bin, 0755);
	write_file("bin/first", plugin, 0755);
	write_file("bin/second", plugin, 0755);
	write_file("bin/fail", plugin, 0755);
	snprintf(record, sizeof(record), "%s/record", dir);
	setenv("RECORD", record, 1);
	setenv("CNI_COMMAND", "stale", 1); /* must not leak into plugins */

	char path[1300];
	snprintf(path, sizeof(path), "/nonexistent:%s", bin);
	json_object *list = parse("{\"cniVersion\": \"1.0.0\", \"name\": \"net\", \"plugins\": ["
				  "{\"type\": \"first\"}, {\"type\": \"second\"}]}");
	struct dk_cni_args a = {.container_id = "sb1",
				.netns = "/proc/1/ns/net",
				.ifname = "eth0",
				.pod_name = "web",
				.pod_namespace = "prod",
				.pod_uid = "u1",
				.bin_path = path};
	json_object *result = NULL;
	struct crx_err err = {0};
	is_int(dk_cni_add(list, &a, &result, &err), 0, "ADD");
	is_str(dk_json_str(result, "from"), "second", "the last plugin's result");
	char *rec = slurp("record");
	is_str(rec, "first ADD sb1 /proc/1/ns/net eth0\nsecond ADD sb1 /proc/1/ns/net eth0\n",
	       "plugins in list order, with the CNI environment");
	free(rec);
	rec = slurp("record.args");
	is_str(rec,
	       "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;"
	       "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u1\n",
	       "CNI_ARGS for Kubernetes");
	free(rec);
	rec = slurp("record.second.ADD");
	has_str(rec, "\"prevResult\":{\"cniVersion\":\"1.0.0\",\"ips\"",
		"the first's result chained");
	has_str(rec, "\"from\":\"first\"", "exactly the first's result");
	free(rec);

	unlink(record);
	a.netns = "";
	is_int(dk_cni_del(list, &a, result, &err), 0, "DEL without a namespace");
	rec = slurp("record");
	is_str(rec, "second DEL sb1  eth0\nfirst DEL sb1  eth0\n", "DEL in reverse order");
	free(rec);
	rec = slurp("record.first.DEL");
	has_str(rec, "\"from\":\"second\"", "DEL gets ADD's final result");
	free(rec);
	json_object_put(result);
	json_object_put(list);

	unlink(record);
	list = parse("{\"cniVersion\": \"1.0.0\", \"name\": \"net\", \"plugins\": ["
		     "{\"type\": \"first\"}, {\"type\": \"fail\"}, {\"type\": \"second\"}]}");
	is_int(dk_cni_add(list, &a, &result, &err), -EIO, "a failing plugin fails ADD");
	has_str(err.msg, "boom: no luck", "with the plugin's message and details");
	rec = slurp("record");
	is_str(rec,
	       "first ADD sb1  eth0\nfail ADD sb1  eth0\nsecond DEL sb1  eth0\n"
	       "fail DEL sb1  eth0\nfirst DEL sb1  eth0\n",
	       "what ADD did is deleted again");
	free(rec);
	json_object_put(list);

	list = parse("{\"cniVersion\": \"1.0.0\", \"name\": \"net\", \"plugins\": ["
		     "{\"type\": \"missing\"}]}");
	is_int(dk_cni_add(list, &a, &result, &err), -ENOENT, "a missing plugin");
	has_str(err.msg, "missing not found", "named");
	json_object_put(list);

	char *out = NULL, *errout = NULL;
	char *argv[] = {"/bin/sh", "-c", "sleep 5", NULL};
	extern char **environ;
	is_int(dk_run("/bin/sh", argv, environ, NULL, 0, 100, 200, &out, &errout, &err), -ETIMEDOUT,
	       "a hanging plugin is killed");
	char *argv2[] = {"/bin/sh", "-c", "head -c 100000 /dev/zero; exit 3", NULL};
	is_int(dk_run("/bin/sh", argv2, environ, NULL, 0, 1000, 5000, &out, &errout, &err), 3,
	       "exit status");
	free(out);
	free(errout);
}

/* A plugin that never reads its stdin and is gone before crimux has written
 * it all: the write fails (EPIPE), and nothing kills the caller. The test
 * process keeps SIGPIPE's default action, as a library caller may. */
static void plugin_ignores_stdin(void)
{
	extern char **environ;
	struct crx_err err = {0};
	size_t n = 1 << 20; /* beyond any pipe or socket buffer */
	char *big = malloc(n);
	memset(big, ' ', n);
	for (int i = 0; i < 3; i++) {
		char *out = NULL, *errout = NULL;
		char *argv[] = {"/bin/sh", "-c", "exec 0<&-; echo gone", NULL};
		is_int(dk_run("/bin/sh", argv, environ, big, n, 1000, 5000, &out, &errout, &err), 0,
		       "a plugin that closes its stdin at once");
		is_str(out, "gone\n", "its output still arrives");
		free(out);
		free(errout);
	}
	free(big);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	loading();
	plugin_conf();
	add_del();
	plugin_ignores_stdin();
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return tap_done();
}
