#include "config.h"

#include "router/creates.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define BUCKETS 256

struct entry {
	struct entry *next;
	char *id;       /* what the key made; NULL while not known */
	bool in_flight; /* a call is making it now */
	bool unsure;    /* the last try failed: the backend may have made it all the same */
	struct creates_waiter *waiters, **tail;
	char key[];
};

struct creates {
	atomic_int refs;
	pthread_mutex_t lock;
	struct entry *buckets[BUCKETS];
	unsigned n;
};

static unsigned hash(const char *s)
{
	unsigned h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % BUCKETS;
}

int creates_new(struct creates **out)
{
	struct creates *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	atomic_init(&t->refs, 1);
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

struct creates *creates_ref(struct creates *t)
{
	atomic_fetch_add(&t->refs, 1);
	return t;
}

static void entry_free(struct entry *e)
{
	free(e->id);
	free(e);
}

void creates_free(struct creates *t)
{
	if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	for (size_t i = 0; i < BUCKETS; i++)
		for (struct entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			/* The router ends every create before it goes: no waiters. */
			entry_free(e);
		}
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static struct entry **slot(struct creates *t, const char *key)
{
	struct entry **p = &t->buckets[hash(key)];
	while (*p && !streq((*p)->key, key))
		p = &(*p)->next;
	return p;
}

/* The entry for key, made if missing; NULL when out of memory. */
static struct entry *get(struct creates *t, const char *key)
{
	struct entry **p = slot(t, key);
	if (*p)
		return *p;
	size_t n = strlen(key) + 1;
	struct entry *e = calloc(1, sizeof(*e) + n);
	if (!e)
		return NULL;
	memcpy(e->key, key, n);
	e->tail = &e->waiters;
	*p = e;
	t->n++;
	return e;
}

static void drop(struct creates *t, struct entry **p)
{
	struct entry *e = *p;
	*p = e->next;
	t->n--;
	entry_free(e);
}

int creates_begin(struct creates *t, const char *key, struct rpc_call *call, void *arg)
{
	pthread_mutex_lock(&t->lock);
	struct entry *e = get(t, key);
	int r = 0;
	if (!e) {
		r = -ENOMEM;
	} else if (e->in_flight) {
		struct creates_waiter *w = calloc(1, sizeof(*w));
		if (w) {
			w->call = call;
			w->arg = arg;
			*e->tail = w;
			e->tail = &w->next;
			r = 1;
		} else {
			r = -ENOMEM;
		}
	} else {
		e->in_flight = true;
	}
	pthread_mutex_unlock(&t->lock);
	return r;
}

struct creates_waiter *creates_end(struct creates *t, const char *key, const char *id,
				   bool remember)
{
	char *copy = id && remember ? strdup(id) : NULL;
	pthread_mutex_lock(&t->lock);
	struct entry **p = slot(t, key);
	struct creates_waiter *waiters = NULL;
	if (*p) {
		struct entry *e = *p;
		waiters = e->waiters;
		e->waiters = NULL;
		e->tail = &e->waiters;
		e->in_flight = false;
		e->unsure = remember && !id;
		if (copy) {
			free(e->id);
			e->id = copy;
			copy = NULL;
		}
		if (!e->id && !e->unsure)
			drop(t, p);
	}
	pthread_mutex_unlock(&t->lock);
	free(copy);
	return waiters;
}

int creates_learn(struct creates *t, const char *key, const char *id)
{
	char *copy = strdup(id);
	if (!copy)
		return -ENOMEM;
	pthread_mutex_lock(&t->lock);
	struct entry *e = get(t, key);
	if (e) {
		free(e->id);
		e->id = copy;
		e->unsure = false;
		copy = NULL;
	}
	pthread_mutex_unlock(&t->lock);
	free(copy);
	return e ? 0 : -ENOMEM;
}

char *creates_made(struct creates *t, const char *key)
{
	pthread_mutex_lock(&t->lock);
	struct entry *e = *slot(t, key);
	char *id = e && e->id ? strdup(e->id) : NULL;
	pthread_mutex_unlock(&t->lock);
	return id;
}

bool creates_unsure(struct creates *t, const char *key)
{
	pthread_mutex_lock(&t->lock);
	struct entry *e = *slot(t, key);
	bool unsure = e && e->unsure && !e->id;
	pthread_mutex_unlock(&t->lock);
	return unsure;
}

void creates_forget(struct creates *t, const char *id)
{
	_cleanup_free_ char *prefix = NULL;
	if (!id || !*id || asprintf(&prefix, "C;%s;", id) < 0)
		return;
	size_t n = strlen(prefix);
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < BUCKETS; i++)
		for (struct entry **p = &t->buckets[i]; *p;) {
			struct entry *e = *p;
			if ((e->id && streq(e->id, id)) || strncmp(e->key, prefix, n) == 0) {
				if (!e->in_flight) {
					drop(t, p);
					continue;
				}
				free(e->id);
				e->id = NULL;
			}
			p = &e->next;
		}
	pthread_mutex_unlock(&t->lock);
}

unsigned creates_count(struct creates *t)
{
	pthread_mutex_lock(&t->lock);
	unsigned n = t->n;
	pthread_mutex_unlock(&t->lock);
	return n;
}

char *creates_sandbox_key(const char *ns, const char *name, const char *uid, uint32_t attempt)
{
	char *key;
	if (asprintf(&key, "S;%s;%s;%s;%u;", ns ? ns : "", name ? name : "", uid ? uid : "",
		     attempt) < 0)
		return NULL;
	return key;
}

char *creates_container_key(const char *sandbox_id, const char *name, uint32_t attempt)
{
	char *key;
	if (asprintf(&key, "C;%s;%s;%u;", sandbox_id ? sandbox_id : "", name ? name : "", attempt) <
	    0)
		return NULL;
	return key;
}
