/* Per-call memory for building replies: protobuf-c messages and strings are
 * allocated from an arena and freed together once the reply is packed, so
 * handlers need no per-field ownership rules. */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdarg.h>
#include <stddef.h>

struct dk_arena {
	struct dk_arena_block *blocks;
	int failed; /* an allocation failed: the reply must not be sent */
};

/* Zeroed memory, or NULL (and a->failed set) when out of memory. */
void *dk_arena_alloc(struct dk_arena *a, size_t size);
char *dk_arena_strdup(struct dk_arena *a, const char *s);
char *dk_arena_strndup(struct dk_arena *a, const char *s, size_t n);
char *dk_arena_printf(struct dk_arena *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void dk_arena_clear(struct dk_arena *a);

/* A message initialised from its descriptor (strings empty, not NULL). */
void *dk_msg_new(struct dk_arena *a, const ProtobufCMessageDescriptor *desc);
/* An array of n pointers (for repeated fields). */
void *dk_ptrs_new(struct dk_arena *a, size_t n);

/* Appends item to a repeated field given as (n, items) that was built with
 * this function (not one decoded from a request). */
int dk_push(struct dk_arena *a, size_t *n, void ***items, void *item);
#define DK_PUSH(a, n, items, item) dk_push((a), (n), (void ***)(items), (item))

/* Every map<string, string> entry type protobuf-c generates has this
 * layout; one helper fills any of them. */
struct dk_pb_kv {
	ProtobufCMessage base;
	char *key;
	char *value;
};
/* Appends an entry to a map field given as (n, entries), built as above. */
int dk_map_add(struct dk_arena *a, const ProtobufCMessageDescriptor *entry_desc, size_t *n,
	       void ***entries, const char *key, const char *value);
/* The value of key in a decoded map field, or NULL. */
const char *dk_map_get(size_t n, void *const *entries, const char *key);

/* Packs msg into a malloc'd buffer. */
int dk_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);
#define DK_MAP_ADD(a, desc, n, entries, k, v) \
	dk_map_add((a), (desc), (n), (void ***)(entries), (k), (v))
#define DK_MAP_GET(n, entries, k) dk_map_get((n), (void *const *)(entries), (k))
