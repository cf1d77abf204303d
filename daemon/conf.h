/* Reads crimux.conf into the configuration model (common/crx-config.h):
 * INI sections read with inih. The main file comes first, then every *.conf
 * of its drop-in directory in name order; later values win. */
#pragma once

#include "common/crx-config.h"
#include "common/err.h"

#define CRX_DEFAULT_CONFIG "/etc/crimux/crimux.conf"

/* Loads path and then its drop-ins (dropin_dir, or "<path>.d" when NULL).
 * On error, err names the file, the line and the key. */
int crx_config_load(const char *path, const char *dropin_dir, struct crx_config *out,
		    struct crx_err *err);
