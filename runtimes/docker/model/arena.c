#include "config.h"

#include "runtimes/docker/model/arena.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct dk_arena_block {
	struct dk_arena_block *next;
	size_t size, used;
	max_align_t data[];
};

#define BLOCK_SIZE 8192u

void *dk_arena_alloc(struct dk_arena *a, size_t size)
{
	size = (size + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
	struct dk_arena_block *b = a->blocks;
	if (!b || b->size - b->used < size) {
		size_t cap = size > BLOCK_SIZE ? size : BLOCK_SIZE;
		b = malloc(sizeof(*b) + cap);
		if (!b) {
			a->failed = 1;
			return NULL;
		}
		b->size = cap;
		b->used = 0;
		b->next = a->blocks;
		a->blocks = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += size;
	memset(p, 0, size);
	return p;
}

char *dk_arena_strndup(struct dk_arena *a, const char *s, size_t n)
{
	if (!s)
		s = "";
	char *p = dk_arena_alloc(a, n + 1);
	if (p)
		memcpy(p, s, n);
	return p;
}

char *dk_arena_strdup(struct dk_arena *a, const char *s)
{
	return dk_arena_strndup(a, s, s ? strlen(s) : 0);
}

char *dk_arena_printf(struct dk_arena *a, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		a->failed = 1;
		return NULL;
	}
	char *p = dk_arena_alloc(a, (size_t)n + 1);
	if (!p)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}

void dk_arena_clear(struct dk_arena *a)
{
	while (a->blocks) {
		struct dk_arena_block *next = a->blocks->next;
		free(a->blocks);
		a->blocks = next;
	}
	a->failed = 0;
}

void *dk_msg_new(struct dk_arena *a, const ProtobufCMessageDescriptor *desc)
{
	void *m = dk_arena_alloc(a, desc->sizeof_message);
	if (m)
		protobuf_c_message_init(desc, m);
	return m;
}

void *dk_ptrs_new(struct dk_arena *a, size_t n)
{
	return dk_arena_alloc(a, (n ? n : 1) * sizeof(void *));
}

int dk_push(struct dk_arena *a, size_t *n, void ***items, void *item)
{
	/* Capacity doubles at 4, 8, 16...; a grown array is copied and the old
	 * one simply stays in the arena. */
	if (*n == 0 || (*n >= 4 && (*n & (*n - 1)) == 0)) {
		void **grown = dk_ptrs_new(a, *n ? *n * 2 : 4);
		if (!grown)
			return -ENOMEM;
		if (*n)
			memcpy(grown, *items, *n * sizeof(void *));
		*items = grown;
	}
	(*items)[(*n)++] = item;
	return 0;
}

int dk_map_add(struct dk_arena *a, const ProtobufCMessageDescriptor *entry_desc, size_t *n,
	       void ***entries, const char *key, const char *value)
{
	struct dk_pb_kv *kv = dk_msg_new(a, entry_desc);
	if (!kv || !(kv->key = dk_arena_strdup(a, key)) || !(kv->value = dk_arena_strdup(a, value)))
		return -ENOMEM;
	return dk_push(a, n, entries, kv);
}

const char *dk_map_get(size_t n, void *const *entries, const char *key)
{
	for (size_t i = 0; i < n; i++) {
		const struct dk_pb_kv *kv = entries[i];
		if (streq(kv->key, key))
			return kv->value;
	}
	return NULL;
}

int dk_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return -ENOMEM;
	*len = protobuf_c_message_pack(msg, buf);
	*out = buf;
	return 0;
}
