/* Docker's answers read as CRI values: times, states, exit reasons. Pure
 * functions, unit tested. */
#pragma once

#include <json-c/json.h>
#include <stdint.h>

#include "cri/api.pb-c.h"

/* RFC 3339 with optional fraction and offset, as Docker writes times, to
 * nanoseconds since the epoch; 0 for Docker's zero time or garbage. */
int64_t dk_parse_time(const char *s);
/* The same time in the CRI log format (RFC 3339, nanoseconds, UTC). */
void dk_format_time(int64_t ns, char *buf, size_t size);
int64_t dk_realtime_ns(void);

/* From an inspected container's "State". */
Runtime__V1__ContainerState dk_container_state(json_object *state);
/* From the "State" word of a container list entry. */
Runtime__V1__ContainerState dk_container_state_word(const char *state);
/* "OOMKilled", "Completed", "Error" or "" (still running or never ran). */
const char *dk_exit_reason(json_object *state);

/* Namespace modes of a container as its HostConfig shows them. */
Runtime__V1__NamespaceMode dk_ns_mode(const char *docker_mode, Runtime__V1__NamespaceMode joined);
