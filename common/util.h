/* Small helpers shared by every module: cleanup attributes and sizes. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define _cleanup_(f)  __attribute__((cleanup(f)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIB           (1024u * 1024u)

/* Hand a cleanup-managed pointer to someone else. */
#define TAKE_PTR(p)                         \
	({                                  \
		__typeof__(p) _taken = (p); \
		(p) = NULL;                 \
		_taken;                     \
	})

/* Hand a cleanup-managed file descriptor to someone else. */
#define TAKE_FD(fd)                \
	({                         \
		int _taken = (fd); \
		(fd) = -1;         \
		_taken;            \
	})

static inline void freep(void *p)
{
	free(*(void **)p);
}

/* Close keeps errno: cleanups run on error paths that still need it. */
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Writes all of buf to a blocking descriptor, through short writes and EINTR;
 * on a socket (sock) with MSG_NOSIGNAL, so a peer that is gone costs -EPIPE,
 * never a SIGPIPE, whatever the process does with the signal. */
static inline int write_fully(int fd, const void *buf, size_t n, bool sock)
{
	const char *p = buf;
	while (n) {
		ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static inline int write_all(int fd, const void *buf, size_t n)
{
	return write_fully(fd, buf, n, false);
}

static inline int sock_write_all(int fd, const void *buf, size_t n)
{
	return write_fully(fd, buf, n, true);
}

static inline int streq(const char *a, const char *b)
{
	return a && b && __builtin_strcmp(a, b) == 0;
}

/* Milliseconds on the monotonic clock, for deadlines and timeouts. */
static inline uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The monotonic time ms from now, for condition variables set to that clock. */
static inline struct timespec monotonic_in(unsigned ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}
