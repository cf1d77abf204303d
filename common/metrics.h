/* crimux's Prometheus metrics: process-wide counters, gauges and histograms
 * that any thread may update on its hot path, and their text exposition
 * (format 0.0.4) for daemon/metrics-http.c to serve.
 *
 * Updating takes no lock: a series is a slot in a fixed open-addressing
 * table, found by hashing its family and label values (interned into a
 * fixed table too) and claimed with a compare-and-swap; values are relaxed
 * atomics. The scraper only reads the same atomics, so a stuck scraper can
 * never hold up a CRI call. The tables are bounded: past their size, new
 * label values become "_other" and new series are counted as dropped
 * (crimux_metrics_series_dropped_total), never allocated. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum crx_metric {
	CRX_M_CRI_CALLS,          /* {method, handler, backend, code} */
	CRX_M_CRI_DURATION,       /* histogram {method, backend}, nanoseconds */
	CRX_M_CRI_OVERHEAD,       /* histogram {method, backend}: crimux's part of a relay */
	CRX_M_DOCKER_OVERHEAD,    /* histogram {method, backend}: the dockershim's own part */
	CRX_M_BACKEND_UP,         /* gauge {backend} */
	CRX_M_BACKEND_RECONNECTS, /* {backend} */
	CRX_M_KATA_REFUSALS,      /* {handler, rule} */
	CRX_M_STREAM_OPEN,        /* gauge {kind} */
	CRX_M_STREAM_TOTAL,       /* {kind} */
	CRX_M_LOG_BYTES,          /* Docker log bytes copied to CRI files */
	CRX_M_LOG_DROPPED,        /* Docker log lines dropped */
	CRX_M_OWNERS,             /* gauge {kind}: sandbox, container */
	CRX_M_OWNERS_REBUILD,     /* gauge, nanoseconds: the last rebuild of the owner table */
	CRX_M_RELOADS,            /* {result}: success, failure */
	CRX_M_PODS,               /* gauge {handler, state} */
	CRX_M_CONTAINERS,         /* gauge {handler, state} */
	CRX_M_COUNT
};

/* Counting is off until this is called (crimuxd: when metrics_address is
 * set), so that crimux without metrics pays one relaxed load per update. */
void crx_metrics_enable(void);

/* labels: as many as the family has (see metrics.c), NULL or "" for none.
 * Counters only grow: add a non-negative delta. */
void crx_metric_add(enum crx_metric m, int64_t delta, const char *const *labels);
void crx_metric_set(enum crx_metric m, int64_t value, const char *const *labels);
/* Sets a gauge and returns what it held before (INT64_MIN if never set). */
int64_t crx_metric_swap(enum crx_metric m, int64_t value, const char *const *labels);
/* A histogram observation, in nanoseconds. */
void crx_metric_observe(enum crx_metric m, uint64_t ns, const char *const *labels);
/* The current value (a histogram's count); 0 for a series never touched. */
int64_t crx_metric_get(enum crx_metric m, const char *const *labels);

/* One finished CRI call: a count, and its latency; backend_ns is the time
 * the backend took when the call was relayed (0 otherwise). */
void crx_metrics_cri_call(const char *method, const char *handler, const char *backend,
			  const char *code, uint64_t duration_ns, uint64_t backend_ns);

/* A call the dockershim served: its own part, the duration less the time
 * its Docker Engine calls took. */
void crx_metrics_docker_call(const char *method, const char *backend, uint64_t duration_ns,
			     uint64_t engine_ns);

/* A health check's verdict on a backend: crimux_backend_up, and a reconnect
 * counted when it answers again after failing. */
void crx_metrics_backend_health(const char *backend, bool up);

/* The exposition of every family, appended to *buf (malloc'd, *len bytes). */
int crx_metrics_render(char **buf, size_t *len);
