/* The daemon's life: take the socket, serve, and stop cleanly on a signal. */
#pragma once

#include "common/err.h"
#include "daemon/conf.h"

/* Blocks the signals the daemon waits for and ignores SIGPIPE. Call before
 * any thread exists, so that gRPC's threads inherit the mask and only
 * sigwait() sees them. */
void crx_daemon_block_signals(void);

/* Serves until SIGTERM or SIGINT; 0 on a clean stop. cfg, read from
 * config_path, is taken over; SIGHUP reads config_path again. On a socket
 * systemd passed (socket activation) it serves there; otherwise it binds
 * cfg's socket. sd_notify tells systemd when it is ready, how it is, that
 * it is alive (the watchdog), reloading or stopping. */
int crx_daemon_run(const char *config_path, struct crx_config *cfg, struct crx_err *err);
