/* `crimuxd --check`: what an admin runs before pointing the kubelet at
 * crimux. Every finding gets a verdict and, unless it is fine, a fix. */
#pragma once

#include <stdio.h>

enum check_verdict {
	CHECK_OK,
	CHECK_WARN, /* works, but not as recommended */
	CHECK_FAIL, /* will not work */
};

/* Checks the configuration at config_path and the node around it, writes
 * the findings to out, and returns the exit status: 0 when everything is
 * fine, 1 when there are warnings only, 2 when something fails. */
int crx_check(const char *config_path, FILE *out);
