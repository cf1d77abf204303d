/* A pod's network namespace seen through libnl: its addresses (IPv4 and
 * IPv6, which Docker cannot report for a CNI network) and interface
 * counters. libnl's error space ends here. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Global-scope addresses of ifname inside the namespace at netns_path,
 * IPv4 first, without prefix lengths. */
int dk_netns_ips(const char *netns_path, const char *ifname, char ***ips, size_t *n,
		 struct crx_err *err);

struct dk_if_stats {
	char name[32];
	uint64_t rx_bytes, rx_errors, tx_bytes, tx_errors;
};
/* Counters of every interface but loopback in the namespace. */
int dk_netns_if_stats(const char *netns_path, struct dk_if_stats **out, size_t *n,
		      struct crx_err *err);

/* The same counters from /proc/PID/net/dev, which shows the namespace of
 * process pid: no thread, namespace switch or netlink socket per pod, so
 * pod stats stay cheap at many pods. */
int dk_proc_net_dev(int pid, struct dk_if_stats **out, size_t *n, struct crx_err *err);
/* Its parser, for the unit tests. */
int dk_net_dev_parse(const char *text, struct dk_if_stats **out, size_t *n);

/* A socket of the given domain and type in the namespace at netns_path
 * (sockets belong to the namespace they were made in). */
int dk_netns_socket(const char *netns_path, int domain, int type, int *out, struct crx_err *err);
