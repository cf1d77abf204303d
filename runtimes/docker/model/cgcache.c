/* The open cgroup files of containers (cgcache.h). One lock for the
 * table; reads (pread) happen outside it on descriptors that stay open
 * while a reader holds the entry. */
#include "config.h"

#include "runtimes/docker/model/cgcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtimes/docker/engine/http.h"

/* Files of containers nobody asked about for this long are closed. */
#define IDLE_MS 300000

struct cg_entry {
	struct cg_entry *next;
	char id[72];
	int pid;
	unsigned readers;
	bool dead; /* close when the last reader is done */
	int64_t used_ms;
	struct dk_cgroup_files files;
};

struct dk_cgroup_cache {
	pthread_mutex_t lock;
	struct cg_entry *entries;
	int64_t swept_ms;
};

int dk_cgroup_cache_new(struct dk_cgroup_cache **out)
{
	struct dk_cgroup_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	*out = c;
	return 0;
}

static void entry_close(struct cg_entry *e)
{
	dk_cgroup_close(&e->files);
	free(e);
}

void dk_cgroup_cache_free(struct dk_cgroup_cache *c)
{
	if (!c)
		return;
	while (c->entries) {
		struct cg_entry *e = c->entries;
		c->entries = e->next;
		entry_close(e);
	}
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Unlinks e (with the lock held); closed now or by its last reader. */
static void drop(struct dk_cgroup_cache *c, struct cg_entry **link)
{
	struct cg_entry *e = *link;
	*link = e->next;
	if (e->readers)
		e->dead = true;
	else
		entry_close(e);
}

static void sweep(struct dk_cgroup_cache *c, int64_t now)
{
	if (now - c->swept_ms < IDLE_MS / 10)
		return;
	c->swept_ms = now;
	for (struct cg_entry **p = &c->entries; *p;) {
		if (now - (*p)->used_ms > IDLE_MS)
			drop(c, p);
		else
			p = &(*p)->next;
	}
}

static struct cg_entry **find(struct dk_cgroup_cache *c, const char *id)
{
	struct cg_entry **p = &c->entries;
	while (*p && !streq((*p)->id, id))
		p = &(*p)->next;
	return p;
}

static void release(struct dk_cgroup_cache *c, struct cg_entry *e)
{
	pthread_mutex_lock(&c->lock);
	if (--e->readers == 0 && e->dead)
		entry_close(e);
	pthread_mutex_unlock(&c->lock);
}

int dk_cgroup_cache_read(struct dk_cgroup_cache *c, const char *id, int pid,
			 struct dk_cgroup_sample *s)
{
	int64_t now = dk_now_ms();
	for (int attempt = 0; attempt < 2; attempt++) {
		pthread_mutex_lock(&c->lock);
		sweep(c, now);
		struct cg_entry **link = find(c, id);
		if (*link && (*link)->pid != pid)
			drop(c, link);
		struct cg_entry *e = *find(c, id);
		if (e) {
			e->readers++;
			e->used_ms = now;
		}
		pthread_mutex_unlock(&c->lock);
		if (!e) {
			/* Opened without the lock; a concurrent reader may do the same,
			 * and the later one is kept. */
			struct cg_entry *n = calloc(1, sizeof(*n));
			if (!n)
				return -ENOMEM;
			snprintf(n->id, sizeof(n->id), "%s", id);
			n->pid = pid;
			n->used_ms = now;
			int r = dk_cgroup_open(pid, &n->files, NULL);
			if (r < 0) {
				free(n);
				*s = (struct dk_cgroup_sample){0};
				return r;
			}
			n->readers = 1;
			pthread_mutex_lock(&c->lock);
			struct cg_entry **old = find(c, id);
			if (*old)
				drop(c, old);
			n->next = c->entries;
			c->entries = n;
			pthread_mutex_unlock(&c->lock);
			e = n;
		}
		int r = dk_cgroup_read_files(&e->files, s);
		if (r == -ENODEV || (!s->has_cpu && !s->has_memory)) {
			/* The cgroup went (or never was): open afresh once. */
			pthread_mutex_lock(&c->lock);
			struct cg_entry **link2 = find(c, id);
			if (*link2 == e)
				drop(c, link2);
			pthread_mutex_unlock(&c->lock);
			release(c, e);
			if (attempt == 0)
				continue;
			return r < 0 ? r : 0;
		}
		release(c, e);
		return r;
	}
	return 0;
}

void dk_cgroup_cache_forget(struct dk_cgroup_cache *c, const char *id)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	struct cg_entry **link = find(c, id);
	if (*link)
		drop(c, link);
	pthread_mutex_unlock(&c->lock);
}
