/* Pods and containers by handler and state, for the metrics: crimux keeps no
 * such state (it is derived, docs/architecture.md), so it is counted from
 * every backend's lists when asked (daemon/: with each health check). */
#pragma once

struct router;

/* Lists every backend's pod sandboxes and containers (each list bounded by
 * timeout_ms) and sets crimux_pod_sandboxes and crimux_containers. The
 * handlers of a backend that does not answer keep their last figures.
 * Blocks: not for the event thread. */
void router_count_objects(struct router *router, unsigned timeout_ms);
