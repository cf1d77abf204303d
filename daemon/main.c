/* crimuxd: one CRI endpoint in front of several container runtimes. */
#include "config.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/check.h"
#include "daemon/conf.h"
#include "daemon/daemon.h"
#include "daemon/log.h"

static void usage(FILE *out)
{
	fprintf(out, "Usage: crimuxd [OPTION]...\n"
		     "Serve the Kubernetes CRI on a unix socket and route each pod to the\n"
		     "container runtime of its RuntimeClass handler.\n"
		     "\n"
		     "  -c, --config=FILE   configuration file (default " CRX_DEFAULT_CONFIG ");\n"
		     "                      *.conf files in FILE.d/ are read after it\n"
		     "      --check         check the configuration and the node, then exit:\n"
		     "                      0 all fine, 1 warnings, 2 something fails\n"
		     "  -h, --help          show this help and exit\n"
		     "  -V, --version       show the version and exit\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"config", required_argument, NULL, 'c'},
		{"check", no_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{0},
	};
	const char *config_path = CRX_DEFAULT_CONFIG;
	bool check = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:hV", options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 'C':
			check = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_SUCCESS;
		case 'V':
			printf("crimuxd %s (CRI v1)\n", PACKAGE_VERSION);
			return EXIT_SUCCESS;
		default:
			usage(stderr);
			return EXIT_FAILURE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "crimuxd: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return EXIT_FAILURE;
	}

	if (check)
		return crx_check(config_path, stdout);

	crx_daemon_block_signals();
	struct crx_config cfg;
	struct crx_err err = {0};
	if (crx_config_load(config_path, NULL, &cfg, &err) < 0) {
		fprintf(stderr, "crimuxd: %s\n", err.msg);
		return EXIT_FAILURE;
	}
	log_open(cfg.log_level);
	int r = crx_daemon_run(config_path, &cfg, &err);
	if (r < 0)
		log_error("%s", err.msg);
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
