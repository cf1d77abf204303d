#include "config.h"

#include "runtimes/docker/model/netns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/addr.h>
#include <netlink/cache.h>
#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

struct open_arg {
	const char *path;
	struct nl_sock *sk;
	int err; /* negative errno */
	const char *what;
	int nlerr;
};

/* A netlink socket belongs to the network namespace of the thread that
 * creates it: a short-lived thread enters the pod's namespace, opens the
 * socket and ends, so no worker thread ever changes namespace. */
static void *open_in_netns(void *p)
{
	struct open_arg *a = p;
	int fd = open(a->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		a->err = -errno;
		a->what = "open";
		return NULL;
	}
	if (setns(fd, CLONE_NEWNET) < 0) {
		a->err = -errno;
		a->what = "setns";
		close(fd);
		return NULL;
	}
	close(fd);
	a->sk = nl_socket_alloc();
	if (!a->sk) {
		a->err = -ENOMEM;
		a->what = "nl_socket_alloc";
		return NULL;
	}
	int r = nl_connect(a->sk, NETLINK_ROUTE);
	if (r < 0) {
		a->nlerr = r;
		a->err = -EIO;
		a->what = "nl_connect";
		nl_socket_free(a->sk);
		a->sk = NULL;
	}
	return NULL;
}

static int rtnl_in(const char *netns_path, struct nl_sock **out, struct crx_err *err)
{
	struct open_arg a = {.path = netns_path};
	pthread_t t;
	int r = pthread_create(&t, NULL, open_in_netns, &a);
	if (r)
		return crx_err_set(err, -r, "cannot start a thread: %s", strerror(r));
	pthread_join(t, NULL);
	if (!a.sk) {
		if (a.nlerr)
			return crx_err_set(err, a.err, "network namespace %s: %s: %s", netns_path,
					   a.what, nl_geterror(a.nlerr));
		return crx_err_set(err, a.err, "network namespace %s: %s: %s", netns_path, a.what,
				   strerror(-a.err));
	}
	*out = a.sk;
	return 0;
}

struct socket_arg {
	const char *path;
	int domain, type;
	int fd, err;
	const char *what;
};

static void *socket_in_netns(void *p)
{
	struct socket_arg *a = p;
	int ns = open(a->path, O_RDONLY | O_CLOEXEC);
	if (ns < 0) {
		a->err = -errno;
		a->what = "open";
		return NULL;
	}
	if (setns(ns, CLONE_NEWNET) < 0) {
		a->err = -errno;
		a->what = "setns";
	} else if ((a->fd = socket(a->domain, a->type | SOCK_CLOEXEC, 0)) < 0) {
		a->err = -errno;
		a->what = "socket";
	}
	close(ns);
	return NULL;
}

int dk_netns_socket(const char *netns_path, int domain, int type, int *out, struct crx_err *err)
{
	struct socket_arg a = {.path = netns_path, .domain = domain, .type = type, .fd = -1};
	pthread_t t;
	int r = pthread_create(&t, NULL, socket_in_netns, &a);
	if (r)
		return crx_err_set(err, -r, "cannot start a thread: %s", strerror(r));
	pthread_join(t, NULL);
	if (a.fd < 0)
		return crx_err_set(err, a.err, "network namespace %s: %s: %s", netns_path, a.what,
				   strerror(-a.err));
	*out = a.fd;
	return 0;
}

struct ip_collect {
	int ifindex;
	char **list;
	size_t n;
	int pass; /* 0: IPv4, 1: IPv6 */
	int err;
};

static void collect_addr(struct nl_object *obj, void *p)
{
	struct ip_collect *c = p;
	struct rtnl_addr *addr = (struct rtnl_addr *)obj;
	int family = rtnl_addr_get_family(addr);
	if (c->err || rtnl_addr_get_ifindex(addr) != c->ifindex ||
	    rtnl_addr_get_scope(addr) != RT_SCOPE_UNIVERSE ||
	    family != (c->pass == 0 ? AF_INET : AF_INET6))
		return;
	struct nl_addr *local = rtnl_addr_get_local(addr);
	if (!local)
		return;
	char text[INET6_ADDRSTRLEN];
	if (!inet_ntop(family, nl_addr_get_binary_addr(local), text, sizeof(text)))
		return;
	char **more = realloc(c->list, (c->n + 1) * sizeof(*more));
	if (!more || !(more[c->n] = strdup(text))) {
		if (more)
			c->list = more;
		c->err = -ENOMEM;
		return;
	}
	c->list = more;
	c->n++;
}

int dk_netns_ips(const char *netns_path, const char *ifname, char ***ips, size_t *n,
		 struct crx_err *err)
{
	struct nl_sock *sk = NULL;
	int r = rtnl_in(netns_path, &sk, err);
	if (r < 0)
		return r;
	struct nl_cache *links = NULL, *addrs = NULL;
	struct ip_collect c = {0};
	int nr = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links);
	if (nr == 0)
		nr = rtnl_addr_alloc_cache(sk, &addrs);
	if (nr < 0) {
		r = crx_err_set(err, -EIO, "reading addresses in %s: %s", netns_path,
				nl_geterror(nr));
		goto out;
	}
	c.ifindex = rtnl_link_name2i(links, ifname);
	if (c.ifindex <= 0) {
		r = crx_err_set(err, -ENOENT, "no interface %s in %s", ifname, netns_path);
		goto out;
	}
	for (c.pass = 0; c.pass < 2; c.pass++)
		nl_cache_foreach(addrs, collect_addr, &c);
	if (c.err < 0) {
		r = crx_err_set(err, c.err, "out of memory");
		goto out;
	}
	*ips = TAKE_PTR(c.list);
	*n = c.n;
	c.n = 0;
out:
	for (size_t i = 0; i < c.n; i++)
		free(c.list[i]);
	free(c.list);
	if (addrs)
		nl_cache_free(addrs);
	if (links)
		nl_cache_free(links);
	nl_socket_free(sk);
	return r;
}

struct stats_collect {
	struct dk_if_stats *list;
	size_t n;
	int err;
};

static void collect_link(struct nl_object *obj, void *p)
{
	struct stats_collect *c = p;
	struct rtnl_link *l = (struct rtnl_link *)obj;
	if (c->err || (rtnl_link_get_flags(l) & IFF_LOOPBACK))
		return;
	struct dk_if_stats *more = realloc(c->list, (c->n + 1) * sizeof(*more));
	if (!more) {
		c->err = -ENOMEM;
		return;
	}
	c->list = more;
	struct dk_if_stats *s = &more[c->n++];
	memset(s, 0, sizeof(*s));
	const char *name = rtnl_link_get_name(l);
	snprintf(s->name, sizeof(s->name), "%s", name ? name : "");
	s->rx_bytes = rtnl_link_get_stat(l, RTNL_LINK_RX_BYTES);
	s->rx_errors = rtnl_link_get_stat(l, RTNL_LINK_RX_ERRORS);
	s->tx_bytes = rtnl_link_get_stat(l, RTNL_LINK_TX_BYTES);
	s->tx_errors = rtnl_link_get_stat(l, RTNL_LINK_TX_ERRORS);
}

int dk_netns_if_stats(const char *netns_path, struct dk_if_stats **out, size_t *n,
		      struct crx_err *err)
{
	struct nl_sock *sk = NULL;
	int r = rtnl_in(netns_path, &sk, err);
	if (r < 0)
		return r;
	struct nl_cache *links = NULL;
	struct stats_collect c = {0};
	int nr = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links);
	if (nr < 0) {
		r = crx_err_set(err, -EIO, "reading interfaces in %s: %s", netns_path,
				nl_geterror(nr));
	} else {
		nl_cache_foreach(links, collect_link, &c);
		if (c.err < 0) {
			r = crx_err_set(err, c.err, "out of memory");
			free(c.list);
		} else {
			*out = c.list;
			*n = c.n;
		}
		nl_cache_free(links);
	}
	nl_socket_free(sk);
	return r;
}

int dk_net_dev_parse(const char *text, struct dk_if_stats **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	/* Two header lines, then "name: rx bytes packets errs drop fifo frame
	 * compressed multicast tx bytes packets errs ...". */
	const char *line = strchr(text, '\n');
	line = line ? strchr(line + 1, '\n') : NULL;
	while (line && *++line) {
		const char *colon = strchr(line, ':');
		const char *end = strchr(line, '\n');
		if (!colon || (end && colon > end))
			break;
		const char *name = line;
		while (*name == ' ')
			name++;
		unsigned long long v[16];
		int got = sscanf(colon + 1,
				 "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
				 "%llu %llu %llu",
				 &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8],
				 &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15]);
		size_t len = (size_t)(colon - name);
		if (got == 16 && !(len == 2 && strncmp(name, "lo", 2) == 0)) {
			struct dk_if_stats *more = realloc(*out, (*n + 1) * sizeof(*more));
			if (!more) {
				free(*out);
				*out = NULL;
				*n = 0;
				return -ENOMEM;
			}
			*out = more;
			struct dk_if_stats *st = &more[(*n)++];
			memset(st, 0, sizeof(*st));
			snprintf(st->name, sizeof(st->name), "%.*s", (int)len, name);
			st->rx_bytes = v[0];
			st->rx_errors = v[2];
			st->tx_bytes = v[8];
			st->tx_errors = v[10];
		}
		line = end;
	}
	return 0;
}

int dk_proc_net_dev(int pid, struct dk_if_stats **out, size_t *n, struct crx_err *err)
{
	char path[64], text[8192];
	snprintf(path, sizeof(path), "/proc/%d/net/dev", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return crx_err_set(err, -errno, "cannot read %s: %s", path, strerror(errno));
	size_t len = 0;
	for (;;) {
		ssize_t got = read(fd, text + len, sizeof(text) - 1 - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += (size_t)got;
		if (len == sizeof(text) - 1)
			break;
	}
	close(fd);
	text[len] = '\0';
	return dk_net_dev_parse(text, out, n) < 0 ? crx_err_set(err, -ENOMEM, "out of memory") : 0;
}
