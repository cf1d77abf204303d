#include "config.h"

#include "common/metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "common/util.h"

/* Latency buckets, in seconds: 100 µs (a relayed Version) to 2 min (an image
 * pull or a slow StopPodSandbox); the kubelet's runtime timeout is 2 min. */
static const double buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
				 0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
				 5,      10,      30,     60,    120};
#define N_BUCKETS ARRAY_SIZE(buckets)

enum kind { COUNTER, GAUGE, HISTOGRAM };

struct family {
	const char *name, *help;
	enum kind kind;
	unsigned n_labels;
	const char *labels[4];
	bool seconds; /* stored in nanoseconds, shown in seconds */
};

static const struct family families[CRX_M_COUNT] = {
	[CRX_M_CRI_CALLS] = {"crimux_cri_calls_total",
			     "CRI calls finished, by method, RuntimeClass handler, backend "
			     "(empty when crimux answered itself) and gRPC status code.",
			     COUNTER,
			     4,
			     {"method", "handler", "backend", "code"}},
	[CRX_M_CRI_DURATION] = {"crimux_cri_call_duration_seconds",
				"Time from a CRI call's arrival to its end, by method and "
				"backend.",
				HISTOGRAM,
				2,
				{"method", "backend"},
				true},
	[CRX_M_CRI_OVERHEAD] = {"crimux_cri_relay_overhead_seconds",
				"crimux's own part of a relayed unary CRI call: its duration "
				"less the backend's, by method and backend.",
				HISTOGRAM,
				2,
				{"method", "backend"},
				true},
	[CRX_M_DOCKER_OVERHEAD] = {"crimux_cri_docker_overhead_seconds",
				   "crimux's own part of a CRI call its dockershim served: its "
				   "duration less the time its Docker Engine API calls took, "
				   "by method and backend.",
				   HISTOGRAM,
				   2,
				   {"method", "backend"},
				   true},
	[CRX_M_BACKEND_UP] = {"crimux_backend_up",
			      "1 when the backend answered crimux's last health check, 0 "
			      "when it did not.",
			      GAUGE,
			      1,
			      {"backend"}},
	[CRX_M_BACKEND_RECONNECTS] = {"crimux_backend_reconnects_total",
				      "Times a backend answered a health check again after "
				      "failing one.",
				      COUNTER,
				      1,
				      {"backend"}},
	[CRX_M_KATA_REFUSALS] = {"crimux_kata_refusals_total",
				 "Pods and containers refused by the Kata rules, by handler "
				 "and rule.",
				 COUNTER,
				 2,
				 {"handler", "rule"}},
	[CRX_M_STREAM_OPEN] = {"crimux_streaming_sessions_open",
			       "Streaming sessions (exec, attach, port-forward) open now.",
			       GAUGE,
			       1,
			       {"kind"}},
	[CRX_M_STREAM_TOTAL] = {"crimux_streaming_sessions_total",
				"Streaming sessions started, by kind.",
				COUNTER,
				1,
				{"kind"}},
	[CRX_M_LOG_BYTES] = {"crimux_docker_log_bytes_total",
			     "Bytes of container output copied from Docker's json-file logs "
			     "to CRI log files.",
			     COUNTER,
			     0,
			     {0}},
	[CRX_M_LOG_DROPPED] = {"crimux_docker_log_lines_dropped_total",
			       "Docker json-file log lines that could not be copied to a CRI "
			       "log file.",
			       COUNTER,
			       0,
			       {0}},
	[CRX_M_OWNERS] = {"crimux_owner_entries",
			  "Entries of the ownership table (which backend holds which pod "
			  "sandbox and container), by kind.",
			  GAUGE,
			  1,
			  {"kind"}},
	[CRX_M_OWNERS_REBUILD] = {"crimux_owner_rebuild_duration_seconds",
				  "How long the last rebuild of the ownership table from the "
				  "backends' lists took.",
				  GAUGE,
				  0,
				  {0},
				  true},
	[CRX_M_PODS] = {"crimux_pod_sandboxes",
			"Pod sandboxes on the backends, by RuntimeClass handler and state "
			"(counted with each health check).",
			GAUGE,
			2,
			{"handler", "state"}},
	[CRX_M_CONTAINERS] = {"crimux_containers",
			      "Containers on the backends, by their pod's RuntimeClass handler "
			      "and state (counted with each health check).",
			      GAUGE,
			      2,
			      {"handler", "state"}},
	[CRX_M_RELOADS] = {"crimux_reloads_total",
			   "Configuration reloads (SIGHUP, systemctl reload), by result.",
			   COUNTER,
			   1,
			   {"result"}},
};

/* ------------------------------------------------------------ label values */

#define LABEL_SLOTS    2048u /* a power of two */
#define LABEL_MAX      1536u /* then new values become "_other" */
#define LABEL_OTHER    (LABEL_SLOTS + 1)
#define LABEL_BITS     12
#define LABEL_SHIFT(i) (6 + LABEL_BITS * (i)) /* label i's place in a series key */

static _Atomic(char *) label_table[LABEL_SLOTS];
static atomic_uint n_labels;

static uint64_t hash_bytes(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

/* 0 for no value, 1..LABEL_SLOTS for an interned one, LABEL_OTHER when full;
 * without create, LABEL_OTHER + 1 for a value never interned. */
static unsigned label_id(const char *s, bool create)
{
	if (!s || !*s)
		return 0;
	size_t n = strlen(s);
	uint64_t h = hash_bytes(s, n, 0xcbf29ce484222325ull);
	for (unsigned i = 0; i < LABEL_SLOTS; i++) {
		unsigned slot = (unsigned)(h + i) & (LABEL_SLOTS - 1);
		char *cur = atomic_load_explicit(&label_table[slot], memory_order_acquire);
		if (!cur) {
			if (!create)
				return streq(s, "_other") ? LABEL_OTHER : LABEL_OTHER + 1;
			if (atomic_load_explicit(&n_labels, memory_order_relaxed) >= LABEL_MAX)
				return LABEL_OTHER;
			char *mine = strdup(s);
			if (!mine)
				return LABEL_OTHER;
			if (atomic_compare_exchange_strong_explicit(&label_table[slot], &cur, mine,
								    memory_order_acq_rel,
								    memory_order_acquire)) {
				atomic_fetch_add_explicit(&n_labels, 1, memory_order_relaxed);
				return slot + 1;
			}
			free(mine); /* another thread took the slot: cur is its value */
		}
		if (strcmp(cur, s) == 0)
			return slot + 1;
	}
	return LABEL_OTHER;
}

static const char *label_value(unsigned id)
{
	if (id == 0)
		return "";
	if (id == LABEL_OTHER)
		return "_other";
	return atomic_load_explicit(&label_table[id - 1], memory_order_acquire);
}

/* ------------------------------------------------------------------ series */

/* key: family + 1 in the low 6 bits (never 0), then one label id per 12 bits. */
static uint64_t series_key(enum crx_metric m, const char *const *labels, bool create)
{
	uint64_t key = (uint64_t)m + 1;
	for (unsigned i = 0; i < families[m].n_labels; i++)
		key |= (uint64_t)label_id(labels ? labels[i] : NULL, create) << LABEL_SHIFT(i);
	return key;
}

static enum crx_metric key_family(uint64_t key)
{
	return (enum crx_metric)((key & 63) - 1);
}

static unsigned key_label(uint64_t key, unsigned i)
{
	return (unsigned)(key >> LABEL_SHIFT(i)) & ((1u << LABEL_BITS) - 1);
}

#define SERIES_SLOTS 8192u
#define HIST_SLOTS   1024u

struct series {
	_Atomic uint64_t key;
	_Atomic int64_t value;
};

struct hist {
	_Atomic uint64_t key;
	_Atomic uint64_t sum_ns;
	_Atomic uint64_t counts[N_BUCKETS + 1]; /* the last one: above every bound */
};

static atomic_bool enabled;

void crx_metrics_enable(void)
{
	atomic_store(&enabled, true);
}

static bool on(void)
{
	return atomic_load_explicit(&enabled, memory_order_relaxed);
}

static struct series series_table[SERIES_SLOTS];
static struct hist hist_table[HIST_SLOTS];
static _Atomic uint64_t series_dropped;

/* The slot of key in a table of n slots whose key field is at key_at(i);
 * create: claim a free slot for it. -1 when it is not there (or full). */
#define FIND_SLOT(table, n, k, create, created)                                                    \
	({                                                                                         \
		long _found = -1;                                                                  \
		uint64_t _h = mix(k);                                                              \
		for (unsigned _i = 0; _i < (n); _i++) {                                            \
			unsigned _slot = (unsigned)(_h + _i) & ((n)-1);                            \
			uint64_t _cur =                                                            \
				atomic_load_explicit(&(table)[_slot].key, memory_order_acquire);   \
			if (_cur == 0) {                                                           \
				if (!(create))                                                     \
					break;                                                     \
				if (atomic_compare_exchange_strong_explicit(                       \
					    &(table)[_slot].key, &_cur, (k), memory_order_acq_rel, \
					    memory_order_acquire)) {                               \
					*(created) = true;                                         \
					_found = _slot;                                            \
					break;                                                     \
				}                                                                  \
			}                                                                          \
			if (_cur == (k)) {                                                         \
				_found = _slot;                                                    \
				break;                                                             \
			}                                                                          \
		}                                                                                  \
		if (_found < 0 && (create))                                                        \
			atomic_fetch_add_explicit(&series_dropped, 1, memory_order_relaxed);       \
		_found;                                                                            \
	})

static struct series *series_get(enum crx_metric m, const char *const *labels, bool create,
				 bool *created)
{
	bool dummy = false;
	uint64_t key = series_key(m, labels, create);
	long slot = FIND_SLOT(series_table, SERIES_SLOTS, key, create, created ? created : &dummy);
	return slot < 0 ? NULL : &series_table[slot];
}

void crx_metric_add(enum crx_metric m, int64_t delta, const char *const *labels)
{
	if (!on())
		return;
	struct series *s = series_get(m, labels, true, NULL);
	if (s)
		atomic_fetch_add_explicit(&s->value, delta, memory_order_relaxed);
}

void crx_metric_set(enum crx_metric m, int64_t value, const char *const *labels)
{
	if (!on())
		return;
	struct series *s = series_get(m, labels, true, NULL);
	if (s)
		atomic_store_explicit(&s->value, value, memory_order_relaxed);
}

int64_t crx_metric_swap(enum crx_metric m, int64_t value, const char *const *labels)
{
	if (!on())
		return INT64_MIN;
	bool created = false;
	struct series *s = series_get(m, labels, true, &created);
	if (!s)
		return INT64_MIN;
	int64_t old = atomic_exchange_explicit(&s->value, value, memory_order_relaxed);
	return created ? INT64_MIN : old;
}

static struct hist *hist_get(enum crx_metric m, const char *const *labels, bool create)
{
	bool created = false;
	uint64_t key = series_key(m, labels, create);
	long slot = FIND_SLOT(hist_table, HIST_SLOTS, key, create, &created);
	return slot < 0 ? NULL : &hist_table[slot];
}

static void hist_add(struct hist *h, uint64_t ns)
{
	size_t b = 0;
	while (b < N_BUCKETS && (double)ns > buckets[b] * 1e9)
		b++;
	atomic_fetch_add_explicit(&h->counts[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void crx_metric_observe(enum crx_metric m, uint64_t ns, const char *const *labels)
{
	if (!on())
		return;
	struct hist *h = hist_get(m, labels, true);
	if (h)
		hist_add(h, ns);
}

int64_t crx_metric_get(enum crx_metric m, const char *const *labels)
{
	if (families[m].kind == HISTOGRAM) {
		struct hist *h = hist_get(m, labels, false);
		int64_t n = 0;
		for (size_t b = 0; h && b <= N_BUCKETS; b++)
			n += (int64_t)atomic_load_explicit(&h->counts[b], memory_order_relaxed);
		return n;
	}
	struct series *s = series_get(m, labels, false, NULL);
	return s ? atomic_load_explicit(&s->value, memory_order_relaxed) : 0;
}

void crx_metrics_cri_call(const char *method, const char *handler, const char *backend,
			  const char *code, uint64_t duration_ns, uint64_t backend_ns)
{
	if (!on())
		return;
	/* Each label value is looked up once for the three families. */
	uint64_t m = label_id(method, true), b = label_id(backend, true);
	uint64_t calls = (CRX_M_CRI_CALLS + 1) | m << LABEL_SHIFT(0) |
			 (uint64_t)label_id(handler, true) << LABEL_SHIFT(1) | b << LABEL_SHIFT(2) |
			 (uint64_t)label_id(code, true) << LABEL_SHIFT(3);
	bool created = false;
	long slot = FIND_SLOT(series_table, SERIES_SLOTS, calls, true, &created);
	if (slot >= 0)
		atomic_fetch_add_explicit(&series_table[slot].value, 1, memory_order_relaxed);
	uint64_t mb = m << LABEL_SHIFT(0) | b << LABEL_SHIFT(1);
	uint64_t key = (CRX_M_CRI_DURATION + 1) | mb;
	slot = FIND_SLOT(hist_table, HIST_SLOTS, key, true, &created);
	if (slot >= 0)
		hist_add(&hist_table[slot], duration_ns);
	if (!backend_ns)
		return;
	key = (CRX_M_CRI_OVERHEAD + 1) | mb;
	slot = FIND_SLOT(hist_table, HIST_SLOTS, key, true, &created);
	if (slot >= 0)
		hist_add(&hist_table[slot],
			 duration_ns > backend_ns ? duration_ns - backend_ns : 0);
}

void crx_metrics_docker_call(const char *method, const char *backend, uint64_t duration_ns,
			     uint64_t engine_ns)
{
	crx_metric_observe(CRX_M_DOCKER_OVERHEAD,
			   duration_ns > engine_ns ? duration_ns - engine_ns : 0,
			   (const char *[]){method, backend});
}

void crx_metrics_backend_health(const char *backend, bool up)
{
	const char *b[] = {backend};
	int64_t was = crx_metric_swap(CRX_M_BACKEND_UP, up, b);
	if (was == 0 && up)
		crx_metric_add(CRX_M_BACKEND_RECONNECTS, 1, b);
	else if (was == INT64_MIN)
		crx_metric_add(CRX_M_BACKEND_RECONNECTS, 0, b);
}

/* --------------------------------------------------------------- rendering */

/* A label value as the text format wants it: \, " and newline escaped, and
 * UTF-8. Some values come from clients (a handler name crimux does not
 * know): a byte that is not UTF-8 becomes U+FFFD rather than break every
 * scrape. */
static void put_escaped(FILE *out, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	const unsigned char *end = s + strlen(str);
	while (*s) {
		size_t n = utf8_char_len(s, (size_t)(end - s));
		if (n == 0) {
			fputs("\xef\xbf\xbd", out);
			s++;
			continue;
		}
		if (*s == '\\' || *s == '"')
			fputc('\\', out);
		if (*s == '\n')
			fputs("\\n", out);
		else
			fwrite(s, 1, n, out);
		s += n;
	}
}

static void put_labels(FILE *out, const struct family *f, uint64_t key, const char *le)
{
	if (f->n_labels == 0 && !le)
		return;
	fputc('{', out);
	for (unsigned i = 0; i < f->n_labels; i++) {
		fprintf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
		put_escaped(out, label_value(key_label(key, i)));
		fputc('"', out);
	}
	if (le)
		fprintf(out, "%sle=\"%s\"", f->n_labels ? "," : "", le);
	fputc('}', out);
}

struct entry {
	uint64_t key;
	unsigned slot;
};

static int compare_entries(const void *a, const void *b)
{
	uint64_t x = ((const struct entry *)a)->key, y = ((const struct entry *)b)->key;
	return x < y ? -1 : x > y;
}

static void put_value(FILE *out, const struct family *f, int64_t v)
{
	if (f->seconds)
		fprintf(out, " %.9f\n", (double)v / 1e9);
	else
		fprintf(out, " %" PRId64 "\n", v);
}

static void render_family(FILE *out, enum crx_metric m, struct entry *keys)
{
	const struct family *f = &families[m];
	static const char *const kind_names[] = {"counter", "gauge", "histogram"};
	size_t n = 0;
	if (f->kind == HISTOGRAM) {
		for (unsigned i = 0; i < HIST_SLOTS; i++) {
			uint64_t k = atomic_load_explicit(&hist_table[i].key, memory_order_acquire);
			if (k && key_family(k) == m)
				keys[n++] = (struct entry){k, i};
		}
	} else {
		for (unsigned i = 0; i < SERIES_SLOTS; i++) {
			uint64_t k =
				atomic_load_explicit(&series_table[i].key, memory_order_acquire);
			if (k && key_family(k) == m)
				keys[n++] = (struct entry){k, i};
		}
	}
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
		kind_names[f->kind]);
	if (n == 0 && f->n_labels == 0 && f->kind != HISTOGRAM) {
		fprintf(out, "%s", f->name);
		put_value(out, f, 0);
		return;
	}
	/* Slot order is hash order: sort by key for a stable exposition. */
	qsort(keys, n, sizeof(*keys), compare_entries);
	for (size_t i = 0; i < n; i++) {
		unsigned slot = keys[i].slot;
		uint64_t k = keys[i].key;
		if (f->kind != HISTOGRAM) {
			fputs(f->name, out);
			put_labels(out, f, k, NULL);
			put_value(out, f,
				  atomic_load_explicit(&series_table[slot].value,
						       memory_order_relaxed));
			continue;
		}
		const struct hist *h = &hist_table[slot];
		uint64_t cumulative = 0;
		char le[32];
		for (size_t b = 0; b <= N_BUCKETS; b++) {
			cumulative += atomic_load_explicit(&h->counts[b], memory_order_relaxed);
			if (b < N_BUCKETS)
				snprintf(le, sizeof(le), "%g", buckets[b]);
			else
				snprintf(le, sizeof(le), "+Inf");
			fprintf(out, "%s_bucket", f->name);
			put_labels(out, f, k, le);
			fprintf(out, " %" PRIu64 "\n", cumulative);
		}
		fprintf(out, "%s_sum", f->name);
		put_labels(out, f, k, NULL);
		fprintf(out, " %.9f\n",
			(double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9);
		fprintf(out, "%s_count", f->name);
		put_labels(out, f, k, NULL);
		fprintf(out, " %" PRIu64 "\n", cumulative);
	}
}

int crx_metrics_render(char **buf, size_t *len)
{
	_cleanup_free_ struct entry *keys = malloc(SERIES_SLOTS * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	char *text = NULL;
	size_t size = 0;
	FILE *out = open_memstream(&text, &size);
	if (!out)
		return -errno;
	if (*buf)
		fwrite(*buf, 1, *len, out);
	for (int m = 0; m < CRX_M_COUNT; m++)
		render_family(out, (enum crx_metric)m, keys);
	fprintf(out,
		"# HELP crimux_metrics_series_dropped_total Updates lost because the "
		"metrics tables were full.\n# TYPE crimux_metrics_series_dropped_total "
		"counter\ncrimux_metrics_series_dropped_total %" PRIu64 "\n",
		atomic_load_explicit(&series_dropped, memory_order_relaxed));
	if (fclose(out) != 0) {
		free(text);
		return -ENOMEM;
	}
	free(*buf);
	*buf = text;
	*len = size;
	return 0;
}
