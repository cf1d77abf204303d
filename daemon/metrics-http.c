#include "config.h"

#include "daemon/metrics-http.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/crx-config.h"
#include "common/metrics.h"
#include "common/util.h"

#define MAX_CONNS     16
#define REQUEST_MAX   8192
#define CONN_DEADLINE 10000 /* ms from accept to the last byte sent */

struct conn {
	int fd; /* -1: free */
	uint64_t deadline;
	char in[REQUEST_MAX];
	size_t in_len;
	char *out; /* the response, once the request is in */
	size_t out_len, out_sent;
};

struct crx_metrics_server {
	pthread_t thread;
	int listen_fd;
	int stop[2];
	char *unix_path;
	uint64_t accept_paused_until; /* out of descriptors: do not spin on accept */
	struct conn conns[MAX_CONNS];
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------- process figures */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -errno;
	int n = 0;
	for (struct dirent *e; (e = readdir(d));)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

/* utime, stime, num_threads, starttime and vsize from /proc/self/stat. */
static int read_stat(double *cpu_s, long *threads, double *start_s, unsigned long *vsize)
{
	char buf[1024];
	_cleanup_fclose_ FILE *f = fopen("/proc/self/stat", "re");
	if (!f || !fgets(buf, sizeof(buf), f))
		return -EIO;
	/* The command name may hold spaces and parentheses: fields follow the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return -EIO;
	unsigned long utime, stime, vs;
	unsigned long long start;
	long nthreads;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
	 * utime stime cutime cstime priority nice num_threads itrealvalue
	 * starttime vsize */
	if (sscanf(p + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %ld "
		   "%*d %llu %lu",
		   &utime, &stime, &nthreads, &start, &vs) != 5)
		return -EIO;
	double tick = (double)sysconf(_SC_CLK_TCK);
	*cpu_s = (double)(utime + stime) / tick;
	*threads = nthreads;
	*vsize = vs;
	/* starttime counts from boot: add the boot time from /proc/stat. */
	_cleanup_fclose_ FILE *s = fopen("/proc/stat", "re");
	unsigned long long btime = 0;
	while (s && fgets(buf, sizeof(buf), s))
		if (sscanf(buf, "btime %llu", &btime) == 1)
			break;
	*start_s = (double)btime + (double)start / tick;
	return 0;
}

int crx_metrics_render_process(char **buf, size_t *len)
{
	double cpu = 0, start = 0;
	long threads = 0;
	unsigned long vsize = 0;
	long rss_pages = 0;
	int r = read_stat(&cpu, &threads, &start, &vsize);
	if (r < 0)
		return r;
	_cleanup_fclose_ FILE *statm = fopen("/proc/self/statm", "re");
	unsigned long size_pages;
	if (!statm || fscanf(statm, "%lu %ld", &size_pages, &rss_pages) != 2)
		return -EIO;
	int fds = count_fds();
	struct rlimit nofile = {0};
	getrlimit(RLIMIT_NOFILE, &nofile);

	char *text = NULL;
	size_t size = 0;
	FILE *out = open_memstream(&text, &size);
	if (!out)
		return -errno;
	if (*buf)
		fwrite(*buf, 1, *len, out);
	fprintf(out,
		"# HELP process_cpu_seconds_total User and system CPU time crimuxd spent.\n"
		"# TYPE process_cpu_seconds_total counter\n"
		"process_cpu_seconds_total %.2f\n"
		"# HELP process_resident_memory_bytes Resident memory of crimuxd.\n"
		"# TYPE process_resident_memory_bytes gauge\n"
		"process_resident_memory_bytes %ld\n"
		"# HELP process_virtual_memory_bytes Virtual memory of crimuxd.\n"
		"# TYPE process_virtual_memory_bytes gauge\n"
		"process_virtual_memory_bytes %lu\n"
		"# HELP process_open_fds File descriptors crimuxd has open.\n"
		"# TYPE process_open_fds gauge\n"
		"process_open_fds %d\n"
		"# HELP process_max_fds The most file descriptors crimuxd may open.\n"
		"# TYPE process_max_fds gauge\n"
		"process_max_fds %llu\n"
		"# HELP process_threads Threads of crimuxd.\n"
		"# TYPE process_threads gauge\n"
		"process_threads %ld\n"
		"# HELP process_start_time_seconds When crimuxd started, in seconds since "
		"the Unix epoch.\n"
		"# TYPE process_start_time_seconds gauge\n"
		"process_start_time_seconds %.2f\n",
		cpu, rss_pages * sysconf(_SC_PAGESIZE), vsize, fds,
		nofile.rlim_cur == RLIM_INFINITY ? 0ull : (unsigned long long)nofile.rlim_cur,
		threads, start);
	if (fclose(out) != 0) {
		free(text);
		return -ENOMEM;
	}
	free(*buf);
	*buf = text;
	*len = size;
	return 0;
}

/* ------------------------------------------------------------ the server */

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->out);
	c->fd = -1;
	c->out = NULL;
	c->in_len = c->out_len = c->out_sent = 0;
}

/* HEAD: the headers of GET, no body. */
static void respond(struct conn *c, const char *status, const char *type, const char *body,
		    size_t body_len, bool head)
{
	char *text = NULL;
	int n = asprintf(&text,
			 "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, type, body_len);
	if (head)
		body_len = 0;
	if (n < 0) {
		conn_close(c);
		return;
	}
	char *all = realloc(text, (size_t)n + body_len);
	if (!all) {
		free(text);
		conn_close(c);
		return;
	}
	memcpy(all + n, body, body_len);
	c->out = all;
	c->out_len = (size_t)n + body_len;
}

/* The request is in: GET /metrics (or HEAD) gets the exposition. */
static void handle_request(struct conn *c)
{
	char method[8], target[256];
	if (sscanf(c->in, "%7s %255s HTTP/1.", method, target) != 2) {
		static const char msg[] = "bad request\n";
		respond(c, "400 Bad Request", "text/plain", msg, sizeof(msg) - 1, false);
		return;
	}
	bool head = streq(method, "HEAD");
	if (!head && !streq(method, "GET")) {
		static const char msg[] = "only GET /metrics\n";
		respond(c, "405 Method Not Allowed", "text/plain", msg, sizeof(msg) - 1, false);
		return;
	}
	size_t path_len = strcspn(target, "?");
	if (path_len != strlen("/metrics") || strncmp(target, "/metrics", path_len) != 0) {
		static const char msg[] = "crimux serves its metrics at /metrics\n";
		respond(c, "404 Not Found", "text/plain", msg, sizeof(msg) - 1, false);
		return;
	}
	char *body = NULL;
	size_t len = 0;
	if (crx_metrics_render(&body, &len) < 0 || crx_metrics_render_process(&body, &len) < 0) {
		free(body);
		static const char msg[] = "cannot render the metrics\n";
		respond(c, "500 Internal Server Error", "text/plain", msg, sizeof(msg) - 1, false);
		return;
	}
	respond(c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body, len, head);
	free(body);
}

static void conn_read(struct conn *c)
{
	ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - 1 - c->in_len, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		conn_close(c);
		return;
	}
	c->in_len += (size_t)n;
	c->in[c->in_len] = '\0';
	if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n"))
		handle_request(c);
	else if (c->in_len == sizeof(c->in) - 1)
		conn_close(c); /* a request line and headers this long are not a scrape */
}

static void conn_write(struct conn *c)
{
	ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent,
			 MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0) {
		conn_close(c);
		return;
	}
	c->out_sent += (size_t)n;
	if (c->out_sent == c->out_len) {
		shutdown(c->fd, SHUT_WR);
		conn_close(c);
	}
}

static void accept_conns(struct crx_metrics_server *s)
{
	for (;;) {
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				s->accept_paused_until = now_ms() + 100;
			return;
		}
		struct conn *slot = NULL;
		for (size_t i = 0; i < MAX_CONNS && !slot; i++)
			if (s->conns[i].fd < 0)
				slot = &s->conns[i];
		if (!slot) { /* all taken: the oldest scrapes still run */
			close(fd);
			continue;
		}
		slot->fd = fd;
		slot->deadline = now_ms() + CONN_DEADLINE;
	}
}

static void *serve(void *arg)
{
	struct crx_metrics_server *s = arg;
	for (;;) {
		struct pollfd fds[MAX_CONNS + 2];
		struct conn *of[MAX_CONNS + 2];
		size_t n = 0;
		uint64_t now = now_ms(), next = now + CONN_DEADLINE;
		bool paused = now < s->accept_paused_until;
		if (paused)
			next = s->accept_paused_until;
		fds[n++] = (struct pollfd){.fd = s->stop[0], .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = paused ? -1 : s->listen_fd, .events = POLLIN};
		for (size_t i = 0; i < MAX_CONNS; i++) {
			struct conn *c = &s->conns[i];
			if (c->fd < 0)
				continue;
			if (c->deadline <= now) { /* a stuck scraper loses its connection */
				conn_close(c);
				continue;
			}
			if (c->deadline < next)
				next = c->deadline;
			of[n] = c;
			fds[n++] =
				(struct pollfd){.fd = c->fd, .events = c->out ? POLLOUT : POLLIN};
		}
		int r = poll(fds, n, (int)(next - now));
		if (r < 0 && errno != EINTR)
			break;
		if (fds[0].revents)
			break;
		if (fds[1].revents & POLLIN)
			accept_conns(s);
		for (size_t i = 2; i < n; i++) {
			if (!fds[i].revents)
				continue;
			if (of[i]->out)
				conn_write(of[i]);
			else
				conn_read(of[i]);
			if (of[i]->fd >= 0 && of[i]->out && of[i]->out_sent == 0)
				conn_write(of[i]); /* answer at once, most scrapes fit */
		}
	}
	return NULL;
}

int crx_metrics_server_start(const char *address, struct crx_metrics_server **out,
			     struct crx_err *err)
{
	struct crx_metrics_address a;
	int r = crx_metrics_address_parse(address, &a, err);
	if (r < 0)
		return r;
	struct crx_metrics_server *s = calloc(1, sizeof(*s));
	if (!s)
		return crx_err_set(err, -ENOMEM, "out of memory");
	s->stop[0] = s->stop[1] = -1;
	for (size_t i = 0; i < MAX_CONNS; i++)
		s->conns[i].fd = -1;
	int family = a.addr.ss_family;
	s->listen_fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->listen_fd < 0) {
		r = crx_err_set(err, -errno, "metrics_address %s: %s", address, strerror(errno));
		goto fail;
	}
	if (family == AF_UNIX) {
		const char *path = ((struct sockaddr_un *)&a.addr)->sun_path;
		struct stat st;
		/* A socket left by an earlier crimuxd; nothing else is removed. */
		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(path);
	} else {
		int one = 1;
		setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (family == AF_INET6)
			setsockopt(s->listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	}
	/* The unix socket: owner and group only, like the CRI socket. */
	mode_t old_umask = umask(0117);
	r = bind(s->listen_fd, (struct sockaddr *)&a.addr, a.len);
	umask(old_umask);
	if (r < 0 || listen(s->listen_fd, 16) < 0) {
		r = crx_err_set(err, -errno, "cannot serve metrics on %s: %s", address,
				strerror(errno));
		goto fail;
	}
	if (family == AF_UNIX &&
	    !(s->unix_path = strdup(((struct sockaddr_un *)&a.addr)->sun_path))) {
		r = crx_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if (pipe2(s->stop, O_CLOEXEC) < 0) {
		r = crx_err_set(err, -errno, "pipe: %s", strerror(errno));
		goto fail;
	}
	r = -pthread_create(&s->thread, NULL, serve, s);
	if (r < 0) {
		crx_err_set(err, r, "cannot start the metrics thread: %s", strerror(-r));
		goto fail;
	}
	*out = s;
	return 0;
fail:
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->unix_path)
		unlink(s->unix_path);
	free(s->unix_path);
	if (s->stop[0] >= 0) {
		close(s->stop[0]);
		close(s->stop[1]);
	}
	free(s);
	return r;
}

void crx_metrics_server_stop(struct crx_metrics_server *s)
{
	if (!s)
		return;
	(void)!write(s->stop[1], "x", 1);
	pthread_join(s->thread, NULL);
	for (size_t i = 0; i < MAX_CONNS; i++)
		conn_close(&s->conns[i]);
	close(s->listen_fd);
	close(s->stop[0]);
	close(s->stop[1]);
	if (s->unix_path)
		unlink(s->unix_path);
	free(s->unix_path);
	free(s);
}
