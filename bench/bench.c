/* crimux-bench: what the relay costs. Calls the same CRI methods directly on
 * a backend and through crimuxd (and, if given, a crimuxd serving metrics),
 * interleaved in one run, and prints latency percentiles, the ratio to
 * direct, throughput at 1 and 16 callers and crimuxd's resident memory. */
#include "config.h"

#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/metrics.h"
#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/rpc.h"

struct target {
	const char *label;
	struct rpc_channel *channel;
};

struct method {
	const char *name;
	const char *path;
};

static const struct method methods[] = {
	{"Version", "/runtime.v1.RuntimeService/Version"},
	{"ListContainers", "/runtime.v1.RuntimeService/ListContainers"},
};

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int call_once(struct target *t, const struct method *m)
{
	struct rpc_result res = {0};
	int r = rpc_channel_call(t->channel, m->path, "", 0, NULL, 10000, &res);
	if (r == 0 && res.code != RPC_OK)
		r = -EIO;
	if (r < 0)
		fprintf(stderr, "crimux-bench: %s via %s failed: %s\n", m->name, t->label,
			res.details ? res.details : strerror(-r));
	rpc_result_clear(&res);
	return r;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double percentile(double *sorted, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

/* Latency: the paths take turns, rotating who goes first, so all of them
 * see the same machine. */
static int latency(struct target **targets, size_t n_targets, const struct method *m, size_t n)
{
	double *samples[4] = {0};
	int ret = 0;
	for (size_t t = 0; t < n_targets; t++)
		if (!(samples[t] = calloc(n, sizeof(double))))
			ret = -ENOMEM;
	for (size_t i = 0; ret == 0 && i < n / 10 + 1; i++) /* warm up every path */
		for (size_t t = 0; t < n_targets && ret == 0; t++)
			ret = call_once(targets[t], m);
	for (size_t i = 0; ret == 0 && i < n; i++)
		for (size_t k = 0; k < n_targets && ret == 0; k++) {
			size_t t = (i + k) % n_targets;
			double t0 = now_us();
			ret = call_once(targets[t], m);
			samples[t][i] = now_us() - t0;
		}
	double p50[4], p99[4];
	for (size_t t = 0; ret == 0 && t < n_targets; t++) {
		qsort(samples[t], n, sizeof(double), by_value);
		p50[t] = percentile(samples[t], n, 0.5);
		p99[t] = percentile(samples[t], n, 0.99);
		printf("%-16s %-7s p50 %8.1f us  p99 %8.1f us", m->name, targets[t]->label, p50[t],
		       p99[t]);
		if (t > 0)
			printf("  ratio p50 %.2fx p99 %.2fx (added p50 %.1f us)", p50[t] / p50[0],
			       p99[t] / p99[0], p50[t] - p50[0]);
		printf("\n");
	}
	for (size_t t = 0; t < n_targets; t++)
		free(samples[t]);
	return ret;
}

struct worker {
	struct target *t;
	const struct method *m;
	double until;
	size_t calls;
	int failed;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	while (now_us() < w->until) {
		if (call_once(w->t, w->m) < 0) {
			w->failed = 1;
			break;
		}
		w->calls++;
	}
	return NULL;
}

static double throughput(struct target *t, const struct method *m, unsigned callers, double seconds)
{
	struct worker w[64];
	pthread_t threads[64];
	double start = now_us();
	for (unsigned i = 0; i < callers; i++) {
		w[i] = (struct worker){.t = t, .m = m, .until = start + seconds * 1e6};
		pthread_create(&threads[i], NULL, worker_run, &w[i]);
	}
	size_t calls = 0;
	int failed = 0;
	for (unsigned i = 0; i < callers; i++) {
		pthread_join(threads[i], NULL);
		calls += w[i].calls;
		failed |= w[i].failed;
	}
	return failed ? -1 : (double)calls / ((now_us() - start) / 1e6);
}

/* What a finished call's metrics cost on the call path, without a relay's
 * noise around it: the daemon's one update per call, in a loop. */
struct count_loop {
	size_t n;
	double ns;
};

/* CPU time, not wall time: on a shared machine the loop is preempted. */
static double thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void *count_run(void *arg)
{
	struct count_loop *c = arg;
	double t0 = thread_cpu_ns();
	for (size_t i = 0; i < c->n; i++)
		crx_metrics_cri_call("ListContainers", "runc", "containerd", "OK", 250000, 180000);
	c->ns = (thread_cpu_ns() - t0) / (double)c->n;
	return NULL;
}

static void metrics_cost(void)
{
	enum { N = 1000000 };
	struct count_loop off = {.n = N};
	count_run(&off);
	crx_metrics_enable();
	struct count_loop one = {.n = N}, two[2] = {{.n = N}, {.n = N}};
	count_run(&one);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, count_run, &two[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("# metrics, CPU per call: off %.0f ns; on %.0f ns, %.0f ns with 2 threads "
	       "counting the same series\n",
	       off.ns, one.ns, (two[0].ns + two[1].ns) / 2);
}

static long rss_kib(long pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	long kib = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	return kib;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: crimux-bench --direct TARGET --crimux TARGET [--metrics TARGET]\n"
		"                    [--merged TARGET] [--pid PID] [-n CALLS] [--seconds S]\n"
		"  --direct   the backend's CRI endpoint, e.g. "
		"unix:///run/containerd/containerd.sock\n"
		"  --crimux   crimuxd's endpoint in front of it\n"
		"  --metrics  a crimuxd like that one, serving (and being scraped for)\n"
		"             metrics: what counting every call costs\n"
		"  --merged   a crimuxd in front of that backend and another one: its lists\n"
		"             are merged from both\n"
		"  --pid      crimuxd's pid, to report its RSS\n"
		"  -n         calls per method and path for the latency figures (default 2000)\n"
		"  --seconds  duration of each throughput run (default 3)\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"direct", required_argument, NULL, 'd'}, {"crimux", required_argument, NULL, 'c'},
		{"merged", required_argument, NULL, 'm'}, {"metrics", required_argument, NULL, 'M'},
		{"pid", required_argument, NULL, 'p'},    {"seconds", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},         {0},
	};
	const char *direct_target = NULL, *crimux_target = NULL, *merged_target = NULL,
		   *metrics_target = NULL;
	long pid = 0;
	size_t n = 2000;
	double seconds = 3;
	int opt;
	while ((opt = getopt_long(argc, argv, "d:c:m:M:p:n:s:h", options, NULL)) != -1) {
		switch (opt) {
		case 'M':
			metrics_target = optarg;
			break;
		case 'm':
			merged_target = optarg;
			break;
		case 'd':
			direct_target = optarg;
			break;
		case 'c':
			crimux_target = optarg;
			break;
		case 'p':
			pid = strtol(optarg, NULL, 10);
			break;
		case 'n':
			n = strtoul(optarg, NULL, 10);
			break;
		case 's':
			seconds = strtod(optarg, NULL);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!direct_target || !crimux_target || n == 0) {
		usage(stderr);
		return 2;
	}

	struct target direct = {.label = "direct"}, crimux = {.label = "crimux"},
		      metrics = {.label = "metrics"}, merged = {.label = "merged"};
	struct crx_err err = {0};
	struct rpc_channel_options opts = {.max_message = 16 * MIB};
	/* direct first (the ratios' base), the merged path last: Version is
	 * answered by crimuxd itself, merging does not apply to it. */
	struct target *all[] = {&direct, &crimux, &metrics, &merged};
	const char *all_addresses[] = {direct_target, crimux_target, metrics_target, merged_target};
	struct target *targets[4];
	const char *addresses[4];
	size_t n_paths = 0, n_single = 0;
	for (size_t i = 0; i < ARRAY_SIZE(all); i++) {
		if (!all_addresses[i])
			continue;
		targets[n_paths] = all[i];
		addresses[n_paths++] = all_addresses[i];
		if (all[i] != &merged)
			n_single = n_paths;
	}
	for (size_t i = 0; i < n_paths; i++) {
		opts.name = targets[i]->label;
		opts.target = addresses[i];
		if (rpc_channel_new(&opts, &targets[i]->channel, &err) < 0) {
			fprintf(stderr, "crimux-bench: %s\n", err.msg);
			return 1;
		}
	}

	printf("# latency, %zu calls per method and path, interleaved\n", n);
	if (latency(targets, n_single, &methods[0], n) < 0 ||
	    latency(targets, n_paths, &methods[1], n) < 0)
		return 1;

	const struct method *list = &methods[1];
	printf("# throughput, %s, %.0f s per run\n", list->name, seconds);
	unsigned concurrency[] = {1, 16};
	for (size_t i = 0; i < ARRAY_SIZE(concurrency); i++) {
		double rate[4];
		for (size_t t = 0; t < n_paths; t++)
			if ((rate[t] = throughput(targets[t], list, concurrency[i], seconds)) < 0)
				return 1;
		printf("%2u callers       direct %8.0f calls/s", concurrency[i], rate[0]);
		for (size_t t = 1; t < n_paths; t++)
			printf("  %s %8.0f calls/s (%.0f%%)", targets[t]->label, rate[t],
			       100 * rate[t] / rate[0]);
		printf("\n");
	}
	metrics_cost();
	if (pid > 0)
		printf("# crimuxd RSS     %.1f MiB\n", (double)rss_kib(pid) / 1024);

	for (size_t i = 0; i < n_paths; i++)
		rpc_channel_free(targets[i]->channel);
	return 0;
}
