#include "config.h"

#include "router/owners.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct entry {
	struct entry *next;
	enum owner_kind kind;
	struct owner owner;
	char *sandbox_id;
	char id[];
};

struct owners {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t n_buckets, n_entries;
	unsigned counts[OWNER_POD_UID + 1];
};

static uint64_t hash(enum owner_kind kind, const char *s)
{
	uint64_t h = 14695981039346656037ull ^ (uint64_t)kind; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

int owners_new(struct owners **out)
{
	struct owners *t = calloc(1, sizeof(*t));
	if (!t || !(t->buckets = calloc(64, sizeof(*t->buckets)))) {
		free(t);
		return -ENOMEM;
	}
	t->n_buckets = 64;
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

void owners_free(struct owners *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_buckets; i++)
		for (struct entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e->sandbox_id);
			free(e);
		}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static struct entry **slot(struct owners *t, enum owner_kind kind, const char *id)
{
	struct entry **p = &t->buckets[hash(kind, id) % t->n_buckets];
	while (*p && ((*p)->kind != kind || !streq((*p)->id, id)))
		p = &(*p)->next;
	return p;
}

/* An exact match, or the one entry the prefix starts; NULL otherwise. */
static struct entry **lookup(struct owners *t, enum owner_kind kind, const char *id, int *error)
{
	struct entry **p = slot(t, kind, id);
	if (*p)
		return p;
	struct entry **found = NULL;
	size_t n = strlen(id);
	*error = -ENOENT;
	if (n == 0 || kind == OWNER_POD_UID)
		return NULL;
	for (size_t i = 0; i < t->n_buckets; i++)
		for (struct entry **q = &t->buckets[i]; *q; q = &(*q)->next) {
			if ((*q)->kind != kind || strncmp((*q)->id, id, n) != 0)
				continue;
			if (found) {
				*error = -ENOTUNIQ;
				return NULL;
			}
			found = q;
		}
	return found;
}

static void grow(struct owners *t)
{
	size_t n = t->n_buckets * 2;
	struct entry **buckets = calloc(n, sizeof(*buckets));
	if (!buckets)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < t->n_buckets; i++)
		for (struct entry *e = t->buckets[i], *next; e; e = next) {
			next = e->next;
			size_t b = hash(e->kind, e->id) % n;
			e->next = buckets[b];
			buckets[b] = e;
		}
	free(t->buckets);
	t->buckets = buckets;
	t->n_buckets = n;
}

int owners_add(struct owners *t, enum owner_kind kind, const char *id, const char *sandbox_id,
	       struct owner owner)
{
	if (!id || !*id)
		return -EINVAL;
	char *sandbox = sandbox_id && *sandbox_id ? strdup(sandbox_id) : NULL;
	if (sandbox_id && *sandbox_id && !sandbox)
		return -ENOMEM;
	pthread_mutex_lock(&t->lock);
	struct entry **p = slot(t, kind, id);
	if (!*p) {
		size_t n = strlen(id) + 1;
		struct entry *e = calloc(1, sizeof(*e) + n);
		if (!e) {
			pthread_mutex_unlock(&t->lock);
			free(sandbox);
			return -ENOMEM;
		}
		memcpy(e->id, id, n);
		e->kind = kind;
		*p = e;
		t->counts[kind]++;
		t->n_entries++;
	}
	(*p)->owner = owner;
	free((*p)->sandbox_id);
	(*p)->sandbox_id = sandbox;
	if (t->n_entries > t->n_buckets * 2)
		grow(t);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

int owners_find(struct owners *t, enum owner_kind kind, const char *id, struct owner *out,
		char **full_id)
{
	int error = 0;
	pthread_mutex_lock(&t->lock);
	struct entry **p = lookup(t, kind, id, &error);
	if (p) {
		error = 0;
		*out = (*p)->owner;
		if (full_id && !(*full_id = strdup((*p)->id)))
			error = -ENOMEM;
	}
	pthread_mutex_unlock(&t->lock);
	return error;
}

static void unlink_entry(struct owners *t, struct entry **p)
{
	struct entry *e = *p;
	*p = e->next;
	t->counts[e->kind]--;
	t->n_entries--;
	free(e->sandbox_id);
	free(e);
}

void owners_remove(struct owners *t, enum owner_kind kind, const char *id)
{
	int error;
	pthread_mutex_lock(&t->lock);
	struct entry **p = lookup(t, kind, id, &error);
	if (p) {
		_cleanup_free_ char *full = kind == OWNER_SANDBOX ? strdup((*p)->id) : NULL;
		unlink_entry(t, p);
		for (size_t i = 0; full && i < t->n_buckets; i++)
			for (struct entry **q = &t->buckets[i]; *q;) {
				if ((*q)->kind == OWNER_CONTAINER && streq((*q)->sandbox_id, full))
					unlink_entry(t, q);
				else
					q = &(*q)->next;
			}
	}
	pthread_mutex_unlock(&t->lock);
}

unsigned owners_count(struct owners *t, enum owner_kind kind)
{
	pthread_mutex_lock(&t->lock);
	unsigned n = t->counts[kind];
	pthread_mutex_unlock(&t->lock);
	return n;
}
