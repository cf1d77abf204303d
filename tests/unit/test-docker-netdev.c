/* Pod network counters from /proc/PID/net/dev (dk_net_dev_parse), and the
 * same figures as libnl reports them for crimux's own namespace. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtimes/docker/model/netns.h"
#include "tap.h"

static const char sample[] =
	"Inter-|   Receive                                                |  Transmit\n"
	" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
	"errs drop fifo colls carrier compressed\n"
	"    lo:     100       2    0    0    0     0          0         0      100       2    "
	"0    0    0     0       0          0\n"
	"  eth0: 1234567      89    3    0    0     0          0         0   765432      21    "
	"4    0    0     0       0          0\n"
	"  net1:       1       1    0    0    0     0          0         0        2       1    "
	"0    0    0     0       0          0\n";

int main(void)
{
	struct dk_if_stats *s = NULL;
	size_t n = 0;
	is_int(dk_net_dev_parse(sample, &s, &n), 0, "parses");
	is_int((long long)n, 2, "two interfaces, loopback left out");
	if (n == 2) {
		is_str(s[0].name, "eth0", "the first by name");
		is_int((long long)s[0].rx_bytes, 1234567, "received bytes");
		is_int((long long)s[0].rx_errors, 3, "receive errors");
		is_int((long long)s[0].tx_bytes, 765432, "sent bytes");
		is_int((long long)s[0].tx_errors, 4, "send errors");
		is_str(s[1].name, "net1", "the second");
		is_int((long long)s[1].tx_bytes, 2, "its sent bytes");
	}
	free(s);
	is_int(dk_net_dev_parse("header only\n", &s, &n), 0, "no interfaces");
	is_int((long long)n, 0, "none found");
	free(s);

	/* The live file of this process agrees with libnl on which
	 * interfaces there are. */
	struct dk_if_stats *a = NULL, *b = NULL;
	size_t na = 0, nb = 0;
	is_int(dk_proc_net_dev(getpid(), &a, &na, NULL), 0, "reads /proc/self/net/dev");
	if (dk_netns_if_stats("/proc/self/ns/net", &b, &nb, NULL) == 0) {
		is_int((long long)na, (long long)nb, "as many interfaces as libnl sees");
		bool same = na == nb;
		for (size_t i = 0; same && i < na; i++) {
			bool found = false;
			for (size_t k = 0; k < nb; k++)
				found |= strcmp(a[i].name, b[k].name) == 0;
			same = found;
		}
		ok(same, "the same names");
	}
	free(a);
	free(b);
	return tap_done();
}
