/* Metrics: the address setting, the exposition's format, counting from many
 * threads at once, the bounded tables, and the /metrics server with a
 * scraper that never reads. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/crx-config.h"
#include "common/metrics.h"
#include "common/util.h"
#include "daemon/conf.h"
#include "daemon/metrics-http.h"
#include "tap.h"

static char dir[] = "/tmp/crimux-test-metrics.XXXXXX";

static int load(const char *text, struct crx_config *cfg, struct crx_err *err)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/crimux.conf", dir);
	FILE *f = fopen(path, "w");
	fprintf(f, "%s[backend \"c\"]\nendpoint = /c.sock\n", text);
	fclose(f);
	return crx_config_load(path, NULL, cfg, err);
}

static void test_config(void)
{
	struct crx_config cfg;
	struct crx_err err = {0};
	is_int(load("", &cfg, &err), 0, "no metrics_address");
	ok(cfg.metrics_address == NULL, "metrics are off by default");
	crx_config_clear(&cfg);

	static const char *const good[] = {"127.0.0.1:9500", "127.1.2.3:1", "[::1]:9500",
					   "unix:/run/crimux/metrics.sock"};
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		char text[256];
		snprintf(text, sizeof(text), "[crimux]\nmetrics_address = %s\n", good[i]);
		int r = load(text, &cfg, &err);
		is_int(r, 0, good[i]);
		if (r == 0) {
			is_str(cfg.metrics_address, good[i], "kept as written");
			crx_config_clear(&cfg);
		}
	}

	static const char *const bad[] = {"9500",        "localhost:9500",  "127.0.0.1",
					  "127.0.0.1:0", "127.0.0.1:65536", "::1:9500",
					  "[::1]9500",   "unix:relative",   "127.0.0.1:95x"};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char text[256];
		snprintf(text, sizeof(text), "[crimux]\nmetrics_address = %s\n", bad[i]);
		err = (struct crx_err){0};
		int r = load(text, &cfg, &err);
		ok(r == -EINVAL, "refused: %s", bad[i]);
		has_str(err.msg, "crimux.conf:2: [crimux] metrics_address:", "names line and key");
	}

	/* Off the machine only when the admin says so. */
	err = (struct crx_err){0};
	int r = load("[crimux]\nmetrics_address = 0.0.0.0:9500\n", &cfg, &err);
	ok(r == -EINVAL, "a non-loopback address is refused");
	has_str(err.msg, "not a loopback address", "and says why");
	has_str(err.msg, "metrics_allow_remote = true", "and how to allow it");
	r = load("[crimux]\nmetrics_address = [2001:db8::1]:9500\n", &cfg, &err);
	ok(r == -EINVAL, "a non-loopback IPv6 address is refused");
	r = load("[crimux]\nmetrics_address = 0.0.0.0:9500\nmetrics_allow_remote = true\n", &cfg,
		 &err);
	is_int(r, 0, "allowed with metrics_allow_remote");
	if (r == 0) {
		ok(cfg.metrics_allow_remote, "metrics_allow_remote read");
		crx_config_clear(&cfg);
	}
	r = load("[crimux]\nmetrics_allow_remote = maybe\n", &cfg, &err);
	ok(r == -EINVAL, "metrics_allow_remote is a boolean");
	r = load("[crimux]\nmetrics_address = 127.0.0.1:9500\nmetrics_address = off\n", &cfg, &err);
	is_int(r, 0, "off turns it off again");
	if (r == 0) {
		ok(cfg.metrics_address == NULL, "no address after off");
		crx_config_clear(&cfg);
	}
}

static char *render(void)
{
	char *text = NULL;
	size_t len = 0;
	if (crx_metrics_render(&text, &len) < 0)
		return NULL;
	return text;
}

/* Until enabled, updates cost a load and change nothing. */
static void test_off(void)
{
	crx_metrics_cri_call("Version", NULL, NULL, "OK", 1000, 0);
	crx_metric_add(CRX_M_LOG_BYTES, 5, NULL);
	is_int(crx_metric_get(CRX_M_CRI_CALLS, (const char *[]){"Version", NULL, NULL, "OK"}), 0,
	       "off: no call counted");
	is_int(crx_metric_get(CRX_M_LOG_BYTES, NULL), 0, "off: no bytes counted");
}

static void test_exposition(void)
{
	crx_metrics_cri_call("RunPodSandbox", "kata", "containerd", "OK", 2000000, 1500000);
	crx_metrics_cri_call("RunPodSandbox", "kata", "containerd", "OK", 50000, 20000);
	crx_metrics_cri_call("Version", NULL, NULL, "OK", 30000, 0);
	crx_metrics_docker_call("RemoveContainer", "docker", 7400000, 6500000);
	crx_metrics_docker_call("RemoveContainer", "docker", 1000, 2000); /* parallel calls */
	crx_metric_add(CRX_M_KATA_REFUSALS, 1,
		       (const char *[]){"we\"ird\\\nname", "host_namespace"});
	_cleanup_free_ char *text = render();
	ok(text != NULL, "renders");
	if (!text)
		return;
	has_str(text, "# TYPE crimux_cri_calls_total counter\n", "counter type");
	has_str(text,
		"crimux_cri_calls_total{method=\"RunPodSandbox\",handler=\"kata\",backend="
		"\"containerd\",code=\"OK\"} 2\n",
		"calls by method, handler, backend and code");
	has_str(text,
		"crimux_cri_calls_total{method=\"Version\",handler=\"\",backend=\"\",code=\"OK\"} "
		"1\n",
		"crimux's own answers have no backend");
	has_str(text, "# TYPE crimux_cri_call_duration_seconds histogram\n", "histogram type");
	has_str(text,
		"crimux_cri_call_duration_seconds_bucket{method=\"RunPodSandbox\",backend="
		"\"containerd\",le=\"0.0001\"} 1\n",
		"50 µs in the first bucket");
	has_str(text,
		"crimux_cri_call_duration_seconds_bucket{method=\"RunPodSandbox\",backend="
		"\"containerd\",le=\"0.001\"} 1\n",
		"buckets are cumulative, 2 ms not yet");
	has_str(text,
		"crimux_cri_call_duration_seconds_bucket{method=\"RunPodSandbox\",backend="
		"\"containerd\",le=\"0.0025\"} 2\n",
		"2 ms in the 2.5 ms bucket");
	has_str(text,
		"crimux_cri_call_duration_seconds_bucket{method=\"RunPodSandbox\",backend="
		"\"containerd\",le=\"120\"} 2\n",
		"buckets up to 2 min");
	has_str(text,
		"crimux_cri_call_duration_seconds_bucket{method=\"RunPodSandbox\",backend="
		"\"containerd\",le=\"+Inf\"} 2\n",
		"+Inf bucket");
	has_str(text,
		"crimux_cri_call_duration_seconds_sum{method=\"RunPodSandbox\",backend="
		"\"containerd\"} 0.002050000\n",
		"sum in seconds");
	has_str(text,
		"crimux_cri_call_duration_seconds_count{method=\"RunPodSandbox\",backend="
		"\"containerd\"} 2\n",
		"count");
	has_str(text,
		"crimux_cri_relay_overhead_seconds_sum{method=\"RunPodSandbox\",backend="
		"\"containerd\"} 0.000530000\n",
		"crimux's own part: duration less the backend's");
	ok(!strstr(text, "crimux_cri_relay_overhead_seconds_count{method=\"Version\""),
	   "no overhead for calls crimux answered");
	has_str(text,
		"crimux_cri_docker_overhead_seconds_sum{method=\"RemoveContainer\",backend="
		"\"docker\"} 0.000900000\n",
		"the dockershim's own part: duration less Docker's");
	has_str(text,
		"crimux_cri_docker_overhead_seconds_bucket{method=\"RemoveContainer\",backend="
		"\"docker\",le=\"0.0001\"} 1\n",
		"Docker's calls longer than the CRI call (run side by side): none of it crimux's");
	has_str(text, "handler=\"we\\\"ird\\\\\\nname\"", "label values escaped");
	crx_metric_add(CRX_M_KATA_REFUSALS, 1, (const char *[]){"caf\xc3\xa9\xff!", "r"});
	free(text);
	text = render();
	has_str(text, "handler=\"caf\xc3\xa9\xef\xbf\xbd!\"", "UTF-8 kept, a stray byte replaced");
	has_str(text, "crimux_docker_log_bytes_total 0\n", "an untouched counter shows 0");
	has_str(text, "crimux_owner_rebuild_duration_seconds 0.000000000\n", "seconds gauges");
	is_int(crx_metric_get(CRX_M_CRI_DURATION, (const char *[]){"RunPodSandbox", "containerd"}),
	       2, "histogram count read back");

	/* Backend up and reconnects: a down→up transition is one reconnect. */
	crx_metrics_backend_health("b1", true);
	crx_metrics_backend_health("b1", false);
	crx_metrics_backend_health("b1", false);
	crx_metrics_backend_health("b1", true);
	crx_metrics_backend_health("b1", true);
	is_int(crx_metric_get(CRX_M_BACKEND_UP, (const char *[]){"b1"}), 1, "backend up");
	is_int(crx_metric_get(CRX_M_BACKEND_RECONNECTS, (const char *[]){"b1"}), 1,
	       "one reconnect");
	crx_metrics_backend_health("b2", false);
	_cleanup_free_ char *text2 = render();
	has_str(text2, "crimux_backend_up{backend=\"b2\"} 0\n", "a backend down from the start");
	has_str(text2, "crimux_backend_reconnects_total{backend=\"b2\"} 0\n",
		"its reconnects start at 0");
}

#define THREADS    4
#define PER_THREAD 200000

static void *hammer(void *arg)
{
	const char *handler = arg;
	for (int i = 0; i < PER_THREAD; i++)
		crx_metrics_cri_call("ListContainers", handler, "containerd", "OK", 1000, 500);
	return NULL;
}

static void test_threads(void)
{
	pthread_t t[THREADS];
	static const char *const handlers[THREADS] = {"a", "b", "a", "b"};
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, hammer, (void *)handlers[i]);
	/* A scraper renders all the while. */
	for (int i = 0; i < 20; i++)
		free(render());
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	const char *la[] = {"ListContainers", "a", "containerd", "OK"};
	const char *lb[] = {"ListContainers", "b", "containerd", "OK"};
	is_int(crx_metric_get(CRX_M_CRI_CALLS, la) + crx_metric_get(CRX_M_CRI_CALLS, lb),
	       THREADS * PER_THREAD, "no count lost between threads");
	is_int(crx_metric_get(CRX_M_CRI_DURATION, (const char *[]){"ListContainers", "containerd"}),
	       THREADS * PER_THREAD, "no observation lost");
}

static void test_bounds(void)
{
	/* Clients choose some label values (handler names): the tables stay
	 * bounded, and what does not fit is "_other". */
	for (int i = 0; i < 3000; i++) {
		char name[32];
		snprintf(name, sizeof(name), "h%d", i);
		crx_metric_add(CRX_M_KATA_REFUSALS, 1, (const char *[]){name, "r"});
	}
	ok(crx_metric_get(CRX_M_KATA_REFUSALS, (const char *[]){"h2999", "r"}) == 0,
	   "a late handler name is not interned");
	_cleanup_free_ char *text = render();
	has_str(text, "crimux_kata_refusals_total{handler=\"_other\",rule=\"r\"}",
		"the overflow shows as _other");
}

static int connect_unix(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static char *get(const char *path, const char *request)
{
	int fd = connect_unix(path);
	if (fd < 0)
		return NULL;
	write_all(fd, request, strlen(request));
	char *text = NULL;
	size_t size = 0;
	FILE *out = open_memstream(&text, &size);
	char buf[4096];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)n, out);
	fclose(out);
	close(fd);
	return text;
}

static void test_server(void)
{
	char path[300], address[310];
	snprintf(path, sizeof(path), "%s/metrics.sock", dir);
	snprintf(address, sizeof(address), "unix:%s", path);
	struct crx_metrics_server *server = NULL;
	struct crx_err err = {0};
	int r = crx_metrics_server_start(address, &server, &err);
	is_int(r, 0, "the server starts on a unix socket");
	if (r < 0) {
		printf("# %s\n", err.msg);
		return;
	}
	struct stat st;
	ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0660, "socket mode 0660");

	/* Scrapers that connect and never send, or never read: they take a
	 * slot each until their deadline, and the next scrape is served. */
	int stuck[4];
	for (size_t i = 0; i < ARRAY_SIZE(stuck); i++)
		stuck[i] = connect_unix(path);
	int stuck_reader = connect_unix(path);
	const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
	write_all(stuck_reader, req, strlen(req));

	_cleanup_free_ char *resp = get(path, req);
	has_str(resp, "HTTP/1.1 200 OK\r\n", "GET /metrics: 200");
	has_str(resp, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
		"text format 0.0.4");
	has_str(resp, "\r\n\r\n# HELP crimux_cri_calls_total", "the exposition follows");
	has_str(resp, "process_resident_memory_bytes ", "process figures");
	has_str(resp, "process_open_fds ", "open fds");
	has_str(resp, "process_threads ", "threads");
	has_str(resp, "process_cpu_seconds_total ", "CPU");
	_cleanup_free_ char *nf = get(path, "GET / HTTP/1.1\r\n\r\n");
	has_str(nf, "HTTP/1.1 404 Not Found\r\n", "other paths: 404");
	_cleanup_free_ char *post = get(path, "POST /metrics HTTP/1.1\r\n\r\n");
	has_str(post, "HTTP/1.1 405 ", "POST: 405");
	_cleanup_free_ char *head = get(path, "HEAD /metrics HTTP/1.1\r\n\r\n");
	has_str(head, "HTTP/1.1 200 OK\r\n", "HEAD: 200");
	ok(head && !strstr(head, "# HELP"), "HEAD: no body");

	for (size_t i = 0; i < ARRAY_SIZE(stuck); i++)
		close(stuck[i]);
	close(stuck_reader);
	crx_metrics_server_stop(server);
	ok(access(path, F_OK) < 0, "the socket is removed on stop");

	/* The address is taken: a clear error, and nothing of the other removed. */
	char busy[320];
	snprintf(busy, sizeof(busy), "%s/file", dir);
	FILE *f = fopen(busy, "w");
	fclose(f);
	char busy_address[330];
	snprintf(busy_address, sizeof(busy_address), "unix:%s", busy);
	r = crx_metrics_server_start(busy_address, &server, &err);
	ok(r < 0, "a path that is not a socket is not taken");
	has_str(err.msg, "cannot serve metrics on unix:", "names the address");
	ok(access(busy, F_OK) == 0, "and the file stays");
	unlink(busy);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 99;
	test_config();
	test_off();
	crx_metrics_enable();
	test_exposition();
	test_threads();
	test_bounds();
	test_server();
	char path[300];
	snprintf(path, sizeof(path), "%s/crimux.conf", dir);
	unlink(path);
	rmdir(dir);
	return tap_done();
}
