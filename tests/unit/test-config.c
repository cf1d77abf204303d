/* crimux.conf: values, drop-ins, and errors that name file, line and key. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/conf.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-test-config.XXXXXX";

static const char *write_file(const char *name, const char *text)
{
	static char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

static int load(const char *text, struct crx_config *cfg, struct crx_err *err)
{
	char main_path[512];
	snprintf(main_path, sizeof(main_path), "%s", write_file("crimux.conf", text));
	return crx_config_load(main_path, NULL, cfg, err);
}

static void expect_error(const char *text, const char *needle, const char *name)
{
	struct crx_config cfg;
	struct crx_err err = {0};
	int r = load(text, &cfg, &err);
	ok(r == -EINVAL, "%s: refused", name);
	has_str(err.msg, needle, name);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 99;

	struct crx_config cfg;
	struct crx_err err = {0};
	int r = load("# crimux\n"
		     "[crimux]\n"
		     "socket = /run/test/crimux.sock\n"
		     "socket_mode = 0600\n"
		     "log_level = debug\n"
		     "shutdown_timeout = 2.5s\n"
		     "\n"
		     "[backend \"containerd\"]\n"
		     "endpoint = unix:///run/containerd/containerd.sock\n"
		     "[backend \"other\"]\n"
		     "type = cri\n"
		     "endpoint = /run/other.sock\n"
		     "[handler \"runc\"]\n"
		     "backend = containerd\n",
		     &cfg, &err);
	is_int(r, 0, "a full file loads");
	if (r == 0) {
		is_str(cfg.socket_path, "/run/test/crimux.sock", "socket");
		is_int(cfg.socket_mode, 0600, "socket_mode is octal");
		is_int(cfg.log_level, LOG_DEBUG, "log_level");
		is_int(cfg.shutdown_timeout_ms, 2500, "shutdown_timeout in seconds");
		is_int(cfg.n_backends, 2, "two backends");
		is_str(cfg.backends[0].name, "containerd", "backend name from the section");
		is_str(cfg.backends[0].type, "cri", "type defaults to cri");
		is_str(cfg.backends[1].endpoint, "unix:///run/other.sock",
		       "a bare path becomes a unix target");
		ok(crx_config_backend(&cfg, "other") == &cfg.backends[1], "backend lookup");
		ok(crx_config_backend(&cfg, "nope") == NULL, "unknown backend lookup");
		crx_config_clear(&cfg);
	}

	r = load("[backend \"c\"]\nendpoint = /c.sock\n", &cfg, &err);
	is_int(r, 0, "defaults");
	if (r == 0) {
		is_str(cfg.socket_path, CRX_DEFAULT_SOCKET, "default socket");
		is_int(cfg.socket_mode, 0660, "default socket mode");
		is_int(cfg.log_level, LOG_INFO, "default log level");
		is_int(cfg.shutdown_timeout_ms, 10000, "default shutdown timeout");
		crx_config_clear(&cfg);
	}

	/* Drop-ins are read in name order after the main file. */
	char dropins[600];
	snprintf(dropins, sizeof(dropins), "%s/crimux.conf.d", dir);
	mkdir(dropins, 0755);
	write_file("crimux.conf.d/20-level.conf", "[crimux]\nlog_level = warning\n");
	write_file("crimux.conf.d/10-level.conf", "[crimux]\nlog_level = error\n");
	write_file("crimux.conf.d/30-ignored.txt", "[nonsense\n");
	write_file("crimux.conf.d/15-backend.conf",
		   "[backend \"c\"]\nendpoint = unix:///override.sock\n");
	r = load("[crimux]\nlog_level = debug\n[backend \"c\"]\nendpoint = /c.sock\n", &cfg, &err);
	is_int(r, 0, "with drop-ins");
	if (r == 0) {
		is_int(cfg.log_level, LOG_WARNING, "the last drop-in wins");
		is_str(cfg.backends[0].endpoint, "unix:///override.sock",
		       "drop-ins override backends");
		crx_config_clear(&cfg);
	}
	write_file("crimux.conf.d/40-bad.conf", "[crimux]\n\nbogus = 1\n");
	r = load("[backend \"c\"]\nendpoint = /c.sock\n", &cfg, &err);
	ok(r == -EINVAL, "a bad drop-in is refused");
	has_str(err.msg, "crimux.conf.d/40-bad.conf:3: [crimux] bogus: unknown key",
		"the bad drop-in is named with its line");
	unlink(write_file("crimux.conf.d/40-bad.conf", ""));
	for (const char *f = "10-level.conf\0"
			     "15-backend.conf\0"
			     "20-level.conf\0"
			     "30-ignored.txt\0";
	     *f; f += strlen(f) + 1) {
		char p[700];
		snprintf(p, sizeof(p), "%s/%s", dropins, f);
		unlink(p);
	}

	expect_error("[crimux]\nsocket = relative.sock\n",
		     "crimux.conf:2: [crimux] socket:", "relative socket path");
	expect_error("[backend \"c\"]\nendpoint = /c.sock\n[crimux]\n\nlog_level = loud\n",
		     "crimux.conf:5: [crimux] log_level: \"loud\" is not one of",
		     "bad log level names line and key");
	expect_error("[crimux]\nsocket_mode = 0999\n", ":2: [crimux] socket_mode:", "bad mode");
	expect_error("[crimux]\nshutdown_timeout = soon\n",
		     ":2: [crimux] shutdown_timeout:", "bad duration");
	expect_error("[crimux]\nfoo = bar\n", ":2: [crimux] foo: unknown key", "unknown key");
	expect_error("[runtime]\nfoo = bar\n", ":2: [runtime] foo: unknown section",
		     "unknown section");
	expect_error("[backend \"c\"]\ntype = podman\n",
		     ":2: [backend \"c\"] type: unknown backend type", "unknown backend type");
	expect_error("[backend \"c\"]\nendpoint = tcp://1.2.3.4:5\n",
		     ":2: [backend \"c\"] endpoint: \"tcp://1.2.3.4:5\" is not a unix socket",
		     "only unix endpoints");
	expect_error("[backend \"c\"]\nendpoint = /c.sock\n\nbogus = 1\n",
		     "crimux.conf:4: [backend \"c\"] bogus: unknown key",
		     "a key the backend type does not know, with its line");
	expect_error("[crimux]\nlog_level = info\n", "no backend configured", "no backend");
	expect_error("[backend \"c\"]\ntype = cri\n", "[backend \"c\"] has no endpoint",
		     "backend without endpoint");
	expect_error("[crimux\nsocket = /x\n", "crimux.conf:1: syntax error", "syntax error line");
	expect_error("socket = /x\n", "crimux.conf:1: [] socket: outside any section",
		     "a key before any section");

	/* Handlers. */
	r = load("[crimux]\ndefault_handler = runc\n"
		 "[backend \"one\"]\nendpoint = /one.sock\n"
		 "[backend \"two\"]\nendpoint = /two.sock\n"
		 "[handler \"kata\"]\nbackend = one\nruntime_handler = kata-qemu\npolicy = kata\n"
		 "kata_min_cpu = 0.5\nkata_overhead_memory = 160Mi\n"
		 "kata_allowed_annotations = io.katacontainers.config.hypervisor.default_vcpus, "
		 "io.katacontainers.config.runtime.*\n"
		 "[handler \"runc\"]\nbackend = one\n"
		 "[handler \"gvisor\"]\nbackend = two\nruntime_handler = runsc\n",
		 &cfg, &err);
	is_int(r, 0, "handlers load");
	if (r == 0) {
		is_int(cfg.n_handlers, 3, "three handlers");
		is_str(cfg.default_handler, "runc", "the default handler");
		const struct crx_handler_config *h = crx_config_handler(&cfg, "kata");
		ok(h && h->policy == CRX_POLICY_KATA, "kata has the kata policy");
		ok(h && streq(h->runtime_handler, "kata-qemu"), "and runs as kata-qemu");
		ok(h && h->kata.min_cpu_milli == 500 && h->kata.overhead_memory == 160 * MIB,
		   "its thresholds are read");
		ok(h && h->kata.min_memory == 256 * MIB, "others keep their defaults");
		ok(h && h->kata.n_allowed_annotations == 2 &&
			   streq(h->kata.allowed_annotations[1],
				 "io.katacontainers.config.runtime.*"),
		   "allowed annotations are a list");
		h = crx_config_handler(&cfg, "runc");
		ok(h && streq(h->runtime_handler, "runc") && h->policy == CRX_POLICY_NONE,
		   "runtime_handler defaults to the handler's name");
		crx_config_clear(&cfg);
	}
	r = load("[backend \"one\"]\nendpoint = /one.sock\n[handler \"b\"]\nbackend = one\n"
		 "[handler \"a\"]\nbackend = one\n",
		 &cfg, &err);
	ok(r == 0 && streq(cfg.default_handler, "b"), "the first handler is the default");
	if (r == 0)
		crx_config_clear(&cfg);

	expect_error(
		"[backend \"one\"]\nendpoint = /one.sock\n\n[handler \"kata\"]\nbackend = two\n",
		"crimux.conf:5: [handler \"kata\"] backend \"two\" is not configured "
		"(configured: one)",
		"a handler on an unknown backend");
	expect_error("[backend \"one\"]\nendpoint = /one.sock\n[handler \"kata\"]\npolicy = kata\n",
		     "[handler \"kata\"] has no backend", "a handler without a backend");
	expect_error(
		"[backend \"one\"]\nendpoint = /one.sock\n[handler \"runc\"]\nbackend = one\n"
		"kata_min_cpu = 1\n",
		"crimux.conf:5: [handler \"runc\"] sets kata_* keys but its policy is not kata",
		"kata keys without the kata policy");
	expect_error("[handler \"kata\"]\npolicy = kata\nkata_min_memory = lots\n",
		     ":3: [handler \"kata\"] kata_min_memory: \"lots\" is not a size",
		     "a bad size");
	expect_error("[handler \"kata\"]\npolicy = vm\n", ":2: [handler \"kata\"] policy: \"vm\"",
		     "an unknown policy");
	expect_error("[backend \"one\"]\nendpoint = /one.sock\n[backend \"two\"]\nendpoint = "
		     "/two.sock\n",
		     "with 2 backends, [handler \"NAME\"] sections must say",
		     "two backends, no handlers");
	expect_error(
		"[backend \"one\"]\nendpoint = /x.sock\n[backend \"two\"]\nendpoint = /x.sock\n"
		"[handler \"a\"]\nbackend = one\n",
		"backends \"one\" and \"two\" have the same endpoint", "one endpoint twice");
	expect_error("[crimux]\ndefault_handler = kata\n[backend \"one\"]\nendpoint = /one.sock\n"
		     "[handler \"runc\"]\nbackend = one\n",
		     "default_handler \"kata\" names no [handler] section", "an unknown default");
	expect_error(
		"[backend \"one\"]\nendpoint = /one.sock\n[handler \"a\"]\nbackend = one\n"
		"runtime_handler = runc\n[handler \"b\"]\nbackend = one\nruntime_handler = runc\n",
		"handlers \"a\" and \"b\" both run as \"runc\" on backend \"one\"",
		"two handlers, one backend runtime");

	/* inih hands the reader 200-byte buffers and takes indented lines as
	 * continuations of the previous value: neither may change what a line
	 * means. A long comment's tail must not become a key. */
	{
		char text[600];
		snprintf(text, sizeof(text),
			 "[backend \"c\"]\nendpoint = /c.sock\n[crimux]\n# %0197dsocket_mode = "
			 "0600\n",
			 0);
		expect_error(text, "crimux.conf:4: line is longer than 199 bytes",
			     "a line longer than inih's buffer is refused, not split");
	}
	r = load("[crimux]\n  log_level = debug\n\tsocket_mode = 0600\n"
		 "[backend \"c\"]\n    endpoint = /c.sock\n    type = cri\n",
		 &cfg, &err);
	is_int(r, 0, "indented keys load");
	if (r == 0) {
		is_int(cfg.log_level, LOG_DEBUG, "an indented key is a key");
		is_int(cfg.socket_mode, 0600, "the next indented key is not a continuation");
		is_str(cfg.backends[0].endpoint, "unix:///c.sock", "in every section");
		crx_config_clear(&cfg);
	}
	{
		static const char text[] = "[backend \"c\"]\nendpoint = /c.sock\n[crimux]\n"
					   "log_level = debug\0 ignored?\n";
		FILE *f = fopen(write_file("crimux.conf", ""), "w");
		fwrite(text, 1, sizeof(text) - 1, f);
		fclose(f);
		char main_path[512];
		snprintf(main_path, sizeof(main_path), "%s/crimux.conf", dir);
		r = crx_config_load(main_path, NULL, &cfg, &err);
		ok(r == -EINVAL, "a NUL byte is refused, not a silent end of line");
		has_str(err.msg, "crimux.conf:4: line contains a NUL byte", "and named");
		if (r == 0)
			crx_config_clear(&cfg);
	}

	/* One socket under two names (a symlink, a doubled slash) is one
	 * backend: two handlers could otherwise run as one backend runtime,
	 * one of them without the other's policy. */
	{
		char sock[600], link[600], text[2000];
		snprintf(sock, sizeof(sock), "%s/backend.sock", dir);
		snprintf(link, sizeof(link), "%s/alias.sock", dir);
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		if (strlen(sock) < sizeof(sa.sun_path))
			memcpy(sa.sun_path, sock, strlen(sock) + 1);
		ok(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
			   symlink(sock, link) == 0,
		   "a socket and a symlink to it");
		snprintf(text, sizeof(text),
			 "[backend \"a\"]\nendpoint = %s\n[backend \"b\"]\nendpoint = %s\n"
			 "[handler \"kata\"]\nbackend = a\npolicy = kata\n"
			 "[handler \"plain\"]\nbackend = b\nruntime_handler = kata\n",
			 sock, link);
		expect_error(text, "backends \"a\" and \"b\" are the same socket",
			     "one socket through a symlink");
		snprintf(text, sizeof(text),
			 "[backend \"a\"]\nendpoint = %s\n[backend \"b\"]\nendpoint = "
			 "%s/.//backend.sock\n"
			 "[handler \"kata\"]\nbackend = a\npolicy = kata\n",
			 sock, dir);
		expect_error(text, "are the same socket", "one socket, spelled twice");
		unlink(link);
		unlink(sock);
		close(fd);
	}

	char missing[600];
	snprintf(missing, sizeof(missing), "%s/missing.conf", dir);
	r = crx_config_load(missing, NULL, &cfg, &err);
	ok(r == -ENOENT, "a missing file is ENOENT");
	has_str(err.msg, "missing.conf", "and names the file");

	unlink(write_file("crimux.conf", ""));
	rmdir(dropins);
	rmdir(dir);
	return tap_done();
}
