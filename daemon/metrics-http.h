/* The /metrics endpoint: a small HTTP/1.1 server on its own thread that
 * renders common/metrics.h and the process's own figures for Prometheus.
 * Connections are non-blocking and each has a deadline, so a slow or stuck
 * scraper costs this thread a slot, never a CRI call its time. */
#pragma once

#include <stddef.h>

#include "common/err.h"

struct crx_metrics_server;

/* address: "127.0.0.1:9500", "[::1]:9500" or "unix:/run/crimux/metrics.sock"
 * (checked by crx_metrics_address_parse()). */
int crx_metrics_server_start(const char *address, struct crx_metrics_server **out,
			     struct crx_err *err);
/* Stops the thread, closes every connection; a unix socket is removed. */
void crx_metrics_server_stop(struct crx_metrics_server *server);

/* The process's figures in the Prometheus client convention (process_*):
 * CPU seconds, resident and virtual memory, open and most fds, threads,
 * start time; appended to *buf. */
int crx_metrics_render_process(char **buf, size_t *len);
