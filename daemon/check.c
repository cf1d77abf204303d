/* Placeholder until the node check lands (being written now). */
#include "config.h"

#include "daemon/check.h"

int crx_check(const char *config_path, FILE *out)
{
	fprintf(out, "crimuxd --check is not available in this build\n");
	return 2;
}
