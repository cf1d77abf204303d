/* A dockerd for fuzz targets: a unix socket in a temporary directory whose
 * connections are answered, in order, with the responses of the current
 * input, then read to the end (a unix socket closed with unread data would
 * reset the client's read). One thread per connection; fake_serve waits
 * until every connection of the input is closed, so nothing outlives it. */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FAKE_MAX_RESPONSES 4

static struct {
	pthread_once_t once;
	pthread_mutex_t lock;
	pthread_cond_t idle;
	char dir[64], path[128];
	int lfd;
	int active;
	size_t next;
	size_t n;
	const uint8_t *resp[FAKE_MAX_RESPONSES];
	size_t len[FAKE_MAX_RESPONSES];
} fake = {.once = PTHREAD_ONCE_INIT,
	  .lock = PTHREAD_MUTEX_INITIALIZER,
	  .idle = PTHREAD_COND_INITIALIZER,
	  .lfd = -1};

struct fake_conn {
	int fd;
	uint8_t *data;
	size_t len;
};

static void *fake_conn_thread(void *arg)
{
	struct fake_conn *c = arg;
	for (size_t done = 0; done < c->len;) {
		ssize_t w = send(c->fd, c->data + done, c->len - done, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break; /* the client gave up early */
		done += (size_t)w;
	}
	shutdown(c->fd, SHUT_WR);
	char sink[4096];
	while (read(c->fd, sink, sizeof(sink)) > 0)
		;
	close(c->fd);
	free(c->data);
	free(c);
	pthread_mutex_lock(&fake.lock);
	if (--fake.active == 0)
		pthread_cond_broadcast(&fake.idle);
	pthread_mutex_unlock(&fake.lock);
	return NULL;
}

static void *fake_accept_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept4(fake.lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		struct fake_conn *c = calloc(1, sizeof(*c));
		pthread_mutex_lock(&fake.lock);
		size_t i = fake.next++;
		if (c && i < fake.n && fake.len[i]) {
			c->data = malloc(fake.len[i]);
			if (c->data) {
				memcpy(c->data, fake.resp[i], fake.len[i]);
				c->len = fake.len[i];
			}
		}
		fake.active++;
		pthread_mutex_unlock(&fake.lock);
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (!c) {
			close(fd);
			pthread_mutex_lock(&fake.lock);
			fake.active--;
			pthread_mutex_unlock(&fake.lock);
		} else {
			c->fd = fd;
			if (pthread_create(&t, &attr, fake_conn_thread, c) != 0)
				abort();
		}
		pthread_attr_destroy(&attr);
	}
	return NULL;
}

static void fake_start(void)
{
	snprintf(fake.dir, sizeof(fake.dir), "/tmp/crimux-fuzz-XXXXXX");
	if (!mkdtemp(fake.dir))
		abort();
	snprintf(fake.path, sizeof(fake.path), "%s/docker.sock", fake.dir);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fake.path);
	fake.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fake.lfd < 0 || bind(fake.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fake.lfd, 16) < 0)
		abort();
	pthread_t t;
	if (pthread_create(&t, NULL, fake_accept_thread, NULL) != 0)
		abort();
	pthread_detach(t);
}

/* Splits data at each "\xff\xfe" into the responses of the next
 * connections (the rest get an empty answer) and returns the socket path. */
static const char *fake_serve(const uint8_t *data, size_t size)
{
	pthread_once(&fake.once, fake_start);
	pthread_mutex_lock(&fake.lock);
	fake.next = 0;
	fake.n = 0;
	const uint8_t *p = data, *end = data + size;
	while (fake.n < FAKE_MAX_RESPONSES) {
		const uint8_t *sep = NULL;
		for (const uint8_t *q = p; q + 1 < end; q++)
			if (q[0] == 0xff && q[1] == 0xfe) {
				sep = q;
				break;
			}
		if (!sep || fake.n == FAKE_MAX_RESPONSES - 1) {
			fake.resp[fake.n] = p;
			fake.len[fake.n++] = (size_t)(end - p);
			break;
		}
		fake.resp[fake.n] = p;
		fake.len[fake.n++] = (size_t)(sep - p);
		p = sep + 2;
	}
	pthread_mutex_unlock(&fake.lock);
	return fake.path;
}

/* Waits until every connection made for the input is closed. */
static void fake_done(void)
{
	pthread_mutex_lock(&fake.lock);
	while (fake.active)
		pthread_cond_wait(&fake.idle, &fake.lock);
	fake.n = 0;
	pthread_mutex_unlock(&fake.lock);
}
