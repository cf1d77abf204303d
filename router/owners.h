/* Which backend owns each pod sandbox and container. The table is learned
 * from replies (RunPodSandbox, CreateContainer) and rebuilt from the
 * backends' own lists at start-up and on a miss; it is never written to disk,
 * so a crash of crimuxd loses nothing. Safe to use from any thread. */
#pragma once

#include <stdbool.h>

enum owner_kind {
	OWNER_SANDBOX,
	OWNER_CONTAINER,
	OWNER_POD_UID, /* a pod's UID, for pulls made on its behalf */
};

struct owner {
	unsigned backend; /* index into the router's backends */
	int handler;      /* index into the handlers; -1 when not known */
};

struct owners;

int owners_new(struct owners **out);
void owners_free(struct owners *t);

/* Records (or updates) an object. sandbox_id ties a container to its pod. */
int owners_add(struct owners *t, enum owner_kind kind, const char *id, const char *sandbox_id,
	       struct owner owner);
/* Looks an ID up, in full or by a unique prefix (as crictl passes them):
 * 0 and *out when found, -ENOENT when unknown, -ENOTUNIQ when the prefix
 * matches several. full_id, when not NULL, receives a copy of the whole ID. */
int owners_find(struct owners *t, enum owner_kind kind, const char *id, struct owner *out,
		char **full_id);
/* Forgets an object (ID or unique prefix); a sandbox takes its containers. */
void owners_remove(struct owners *t, enum owner_kind kind, const char *id);
unsigned owners_count(struct owners *t, enum owner_kind kind);
