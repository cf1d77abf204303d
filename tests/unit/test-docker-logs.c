/* CRI log files from Docker's json-file logs: line conversion, following a
 * file through Docker's rotation, resuming after a restart without losing
 * or repeating lines, and reopening after the kubelet rotated the file. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/logs.h"
#include "runtimes/docker/model/names.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-logs-test-XXXXXX";
static char docker_log[600], cri_log[600], state[600], log_dir[600];

static char *convert(const char *line)
{
	char *out = NULL;
	size_t len;
	return dk_log_line_to_cri(line, strlen(line), &out, &len) == 0 ? out : NULL;
}

static void conversion(void)
{
	char *s = convert("{\"log\":\"hello\\n\",\"stream\":\"stdout\",\"time\":"
			  "\"2026-11-22T15:38:48.05750421Z\"}");
	is_str(s, "2026-11-22T15:38:48.05750421Z stdout F hello\n", "a full stdout line");
	free(s);
	s = convert("{\"log\":\"a \\u003cb\\u003e\\tc\\n\",\"stream\":\"stderr\",\"time\":\"T\"}");
	is_str(s, "T stderr F a <b>\tc\n", "escapes decoded, stderr");
	free(s);
	s = convert("{\"log\":\"\\n\",\"stream\":\"stdout\",\"time\":\"T\"}");
	is_str(s, "T stdout F \n", "an empty line");
	free(s);
	s = convert("{\"log\":\"tail\",\"stream\":\"stdout\",\"time\":\"T\"}");
	is_str(s, "T stdout F tail\n", "the rest flushed at the end is a line of its own");
	free(s);
	char *big = malloc(16 * 1024 + 100), *line = malloc(16 * 1024 + 200);
	memset(big, 'x', 16 * 1024);
	big[16 * 1024] = '\0';
	snprintf(line, 16 * 1024 + 200, "{\"log\":\"%s\",\"stream\":\"stdout\",\"time\":\"T\"}",
		 big);
	s = convert(line);
	ok(s && strncmp(s, "T stdout P xxx", 14) == 0 && strlen(s) == 16 * 1024 + 12,
	   "a 16 KiB piece without newline is partial");
	free(s);
	free(big);
	free(line);
	ok(!convert("not json"), "garbage is skipped");
	ok(!convert("{\"log\":1,\"stream\":\"stdout\",\"time\":\"T\"}"), "a non-string log");
	ok(!convert("{\"log\":\"x\\n\",\"time\":\"T\"}"), "no stream");
}

/* Docker json-file lines "n-<from>" .. "n-<to>". */
static void append(const char *path, int from, int to)
{
	FILE *f = fopen(path, "a");
	for (int i = from; i <= to; i++)
		fprintf(f,
			"{\"log\":\"n-%d\\n\",\"stream\":\"stdout\","
			"\"time\":\"2026-01-01T00:00:00Z\"}\n",
			i);
	fclose(f);
}

/* The numbers of "n-<i>" lines in a CRI file, in order, as a string. */
static char *numbers(const char *path)
{
	char *text = NULL;
	size_t len;
	if (dk_read_file(path, 1 << 22, &text, &len, NULL) < 0)
		return strdup("(none)");
	size_t cap = len + 1, used = 0;
	char *out = calloc(1, cap + 1);
	for (char *p = text; (p = strstr(p, " F n-"));) {
		p += 5;
		int n = atoi(p);
		used += (size_t)snprintf(out + used, cap - used, "%d,", n);
	}
	free(text);
	return out;
}

static char *expected(int from, int to)
{
	char *s = calloc(1, 16 * (size_t)(to - from + 2));
	size_t used = 0;
	for (int i = from; i <= to; i++)
		used += (size_t)sprintf(s + used, "%d,", i);
	return s;
}

static void confinement(void)
{
	struct crx_err err = {0};
	static const char *const bad[] = {
		"/etc/passwd", "../x.log", "a/../../x.log", "./x.log", "a//x.log",
		"a/",          "",         "a/.."};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		is_int(dk_log_path_check("/var/log/pods/p", bad[i], &err), -EINVAL, bad[i]);
	ok(strstr(err.msg, "log_path") != NULL, "the message names log_path: %s", err.msg);
	is_int(dk_log_path_check("/var/log/pods/p", "c/0.log", &err), 0, "the kubelet's form");
	is_int(dk_log_path_check("", "0.log", &err), -EINVAL, "no log directory");
	is_int(dk_log_path_check("pods/p", "0.log", &err), -EINVAL, "a relative log directory");
	is_int(dk_log_path_check("/var/log/../etc", "0.log", &err), -EINVAL, "a .. directory");

	char top[700], victim[700], lnk[800];
	snprintf(top, sizeof(top), "%s/confine", dir);
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	FILE *f = fopen(victim, "w");
	fputs("precious\n", f);
	fclose(f);
	int fd = -1;
	is_int(dk_log_open(top, "ok/0.log", &fd, &err), 0, "a fresh file, its directory made");
	ok(fd >= 0 && write(fd, "x\n", 2) == 2, "writable");
	close(fd);
	mkdir(top, 0755);
	snprintf(lnk, sizeof(lnk), "%s/l.log", top);
	ok(symlink(victim, lnk) == 0, "a link in the log directory");
	is_int(dk_log_open(top, "l.log", &fd, &err), -ELOOP, "the file a symbolic link");
	ok(strstr(err.msg, "symbolic link") != NULL, "said so: %s", err.msg);
	snprintf(lnk, sizeof(lnk), "%s/d", top);
	ok(symlink(dir, lnk) == 0, "a directory link");
	is_int(dk_log_open(top, "d/victim", &fd, &err), -ELOOP, "a directory on the way");
	snprintf(lnk, sizeof(lnk), "%s/h.log", top);
	ok(link(victim, lnk) == 0, "a hard link");
	is_int(dk_log_open(top, "h.log", &fd, &err), -EBUSY, "another file's hard link");
	snprintf(lnk, sizeof(lnk), "%s/fifo.log", top);
	ok(mkfifo(lnk, 0600) == 0, "a FIFO");
	is_int(dk_log_open(top, "fifo.log", &fd, &err), -EBUSY, "not a regular file, no hang");
	f = fopen(victim, "r");
	char buf[64] = {0};
	ok(fgets(buf, sizeof(buf), f) != NULL, "the file outside reads back");
	fclose(f);
	is_str(buf, "precious\n", "the file outside is untouched");
}

static json_object *labels(const char *log_directory, const char *path)
{
	json_object *o = json_object_new_object();
	if (log_directory)
		json_object_object_add(o, DK_LABEL_LOG_DIRECTORY,
				       json_object_new_string(log_directory));
	if (path)
		json_object_object_add(o, DK_LABEL_LOG_PATH, json_object_new_string(path));
	return o;
}

/* Where a container logs: its two labels, which must agree; a container
 * made before the directory label, crimux's record. */
static void location(void)
{
	struct dk_logs *l = NULL;
	struct crx_err err = {0};
	char sdir[700], sp[800];
	snprintf(sdir, sizeof(sdir), "%s/lstate", dir);
	is_int(dk_logs_new(sdir, 10000, &l, &err), 0, "a log thread");
	static const struct {
		const char *dir, *path, *want_dir, *want_rel, *why;
	} cases[] = {
		{"/var/log/pods/x", "/var/log/pods/x/app/0.log", "/var/log/pods/x", "app/0.log",
		 "both labels"},
		{"/var/log/pods/x/", "/var/log/pods/x/app/0.log", "/var/log/pods/x/", "app/0.log",
		 "a directory with a slash"},
		{"", "", NULL, NULL, "no log asked for"},
		{"", "/etc/passwd", NULL, NULL, "a path without its directory"},
		{"/var/log/pods/x", "", NULL, NULL,
		 "a directory from an image, the path crimux reserved empty"},
		{"/var/log/pods/x", NULL, NULL, NULL, "no path label at all"},
		{"/var/log/pods/x", "/var/log/pods/xy/0.log", NULL, NULL,
		 "a path beside the directory"},
		{"/var/log/pods/x", "/var/log/pods/x/../../../etc/x", NULL, NULL,
		 "a path that climbs"},
		{"/var/log/pods/x", "/var/log/pods/x/", NULL, NULL, "no file below it"},
		{"var/log", "var/log/0.log", NULL, NULL, "a relative directory"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_object *o = labels(cases[i].dir, cases[i].path);
		char *d = NULL, *rel = NULL;
		int r = dk_logs_location(l, "c1", o, &d, &rel);
		is_int(r, cases[i].want_dir ? 0 : -ENOENT, cases[i].why);
		bool same = cases[i].want_dir
				    ? streq(d, cases[i].want_dir) && streq(rel, cases[i].want_rel)
				    : !d && !rel;
		ok(same, "%s: %s and %s", cases[i].why, d ? d : "no directory",
		   rel ? rel : "no path");
		free(d);
		free(rel);
		json_object_put(o);
	}

	/* Without the directory label: the record, which must be confined and
	 * parse; the log path label alone (an image's, for all crimux knows)
	 * is never taken. */
	json_object *old = labels(NULL, "/etc/passwd");
	char *d = NULL, *rel = NULL;
	is_int(dk_logs_location(l, "c2", old, &d, &rel), -ENOENT, "no record: no log");
	snprintf(sp, sizeof(sp), "%s/c2.json", sdir);
	FILE *f = fopen(sp, "w");
	fputs("{\"log_directory\":\"/var/log/pods/y\",\"log_path\":\"app/1.log\"}", f);
	fclose(f);
	is_int(dk_logs_location(l, "c2", old, &d, &rel), 0, "a record");
	is_str(d, "/var/log/pods/y", "its directory");
	is_str(rel, "app/1.log", "its path");
	free(d);
	free(rel);
	f = fopen(sp, "w");
	fputs("{\"log_directory\":\"/tmp\",\"log_path\":\"../etc/x\"}", f);
	fclose(f);
	is_int(dk_logs_location(l, "c2", old, &d, &rel), -ENOENT, "an escaping record is refused");
	f = fopen(sp, "w");
	fputs("{\"log_direc", f);
	fclose(f);
	is_int(dk_logs_location(l, "c2", old, &d, &rel), -ENOENT, "a torn record is none");
	ok(d == NULL && rel == NULL, "and nothing is returned");
	json_object_put(old);
	/* A torn position file does not stop tracking: it starts from the top. */
	is_int(dk_logs_track(l, "c2", log_dir, "torn/0.log", docker_log, &err), 0,
	       "tracked despite a torn state file");
	ok(dk_logs_tracked(l, "c2"), "followed");
	dk_logs_forget(l, "c2");
	is_int(dk_logs_track(l, "c3", log_dir, "../x", docker_log, &err), -EINVAL,
	       "tracking checks the path too");
	dk_logs_free(l);
}

static void pump(void)
{
	struct dk_logs *l = NULL;
	struct crx_err err = {0};
	is_int(dk_logs_new(state, 10000, &l, &err), 0, "log thread started");
	ok(!dk_logs_tracked(l, "c1"), "not tracked");
	is_int(dk_logs_track(l, "c1", log_dir, "app/0.log", docker_log, &err), 0,
	       "tracking before Docker wrote");
	ok(access(cri_log, F_OK) == 0, "the CRI file exists at once");
	append(docker_log, 1, 10);
	/* An incomplete last line is left for later. */
	FILE *f = fopen(docker_log, "a");
	fputs("{\"log\":\"n-11\\n\",\"stre", f);
	fclose(f);
	dk_logs_drain(l, "c1");
	char *got = numbers(cri_log), *want = expected(1, 10);
	is_str(got, want, "complete lines copied");
	free(got);
	free(want);
	f = fopen(docker_log, "a");
	fputs("am\":\"stdout\",\"time\":\"T\"}\n", f);
	fclose(f);

	/* Docker's rotation: the file becomes .1, a new one starts. */
	append(docker_log, 12, 20);
	char rotated[700];
	snprintf(rotated, sizeof(rotated), "%s.1", docker_log);
	rename(docker_log, rotated);
	append(docker_log, 21, 30);
	dk_logs_drain(l, "c1");
	got = numbers(cri_log);
	want = expected(1, 30);
	is_str(got, want, "rotation followed, nothing lost");
	free(got);
	free(want);

	/* The kubelet's rotation: rename, then reopen. */
	char old[700];
	snprintf(old, sizeof(old), "%s.old", cri_log);
	rename(cri_log, old);
	is_int(dk_logs_reopen(l, "c1", &err), 0, "reopened");
	append(docker_log, 31, 35);
	dk_logs_drain(l, "c1");
	got = numbers(cri_log);
	want = expected(31, 35);
	is_str(got, want, "new lines in the new file");
	free(got);
	free(want);
	is_int(dk_logs_reopen(l, "nope", &err), -ENOENT, "an untracked container");

	/* A restart: everything written meanwhile, incl. a rotation, arrives
	 * once. */
	dk_logs_free(l);
	append(docker_log, 36, 40);
	char rotated2[700];
	snprintf(rotated2, sizeof(rotated2), "%s.2", docker_log);
	rename(rotated, rotated2);
	rename(docker_log, rotated);
	append(docker_log, 41, 45);
	is_int(dk_logs_new(state, 10000, &l, &err), 0, "restarted");
	is_int(dk_logs_track(l, "c1", log_dir, "app/0.log", docker_log, &err), 0, "tracking again");
	got = numbers(cri_log);
	want = expected(31, 45);
	is_str(got, want, "resumed at the saved position, through the rotation");
	free(got);
	free(want);
	/* One file only: Docker truncates it in place. */
	ok(truncate(docker_log, 0) == 0, "truncated");
	append(docker_log, 46, 48);
	dk_logs_drain(l, "c1");
	got = numbers(cri_log);
	want = expected(31, 48);
	is_str(got, want, "a truncated file is read from its start");
	free(got);
	free(want);
	ok(dk_logs_tracked(l, "c1"), "tracked");
	dk_logs_forget(l, "c1");
	ok(!dk_logs_tracked(l, "c1"), "forgotten");
	char sp[700];
	snprintf(sp, sizeof(sp), "%s/c1.json", state);
	ok(access(sp, F_OK) == 0, "its position file stays");
	dk_logs_drop_state(l, "c1");
	ok(access(sp, F_OK) != 0, "until it is dropped");
	dk_logs_free(l);
}

/* A reload opens a second dockershim on the same state directory while the
 * first finishes its calls: both must get the one pump there is. */
static void one_pump_per_dir(void)
{
	struct dk_logs *a = NULL, *b = NULL, *c = NULL;
	struct crx_err err = {0};
	char other[700], slash[700];
	snprintf(other, sizeof(other), "%s/other", dir);
	snprintf(slash, sizeof(slash), "%s/", state);
	is_int(dk_logs_new(state, 10000, &a, &err), 0, "first pump");
	is_int(dk_logs_new(slash, 50, &b, &err), 0, "the same directory again");
	ok(a == b, "shares the pump");
	is_int(dk_logs_new(other, 50, &c, &err), 0, "another directory");
	ok(c != a, "gets its own pump");
	is_int(dk_logs_track(a, "c2", log_dir, "app/0.log", docker_log, &err), 0,
	       "tracked through one");
	dk_logs_free(a);
	ok(dk_logs_tracked(b, "c2"), "still followed through the other after the first is gone");
	dk_logs_forget(b, "c2");
	dk_logs_free(b);
	dk_logs_free(c);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	snprintf(docker_log, sizeof(docker_log), "%s/docker-json.log", dir);
	snprintf(log_dir, sizeof(log_dir), "%s/pods", dir);
	snprintf(cri_log, sizeof(cri_log), "%s/pods/app/0.log", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	conversion();
	confinement();
	location();
	pump();
	one_pump_per_dir();
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return tap_done();
}
