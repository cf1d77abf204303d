/* Creates the kubelet retries. The kubelet names a pod by its metadata and
 * attempt, a container by its pod, name and attempt; after a timeout it
 * sends the same RunPodSandbox or CreateContainer again. A retry that
 * arrives while the first call runs waits for it and gets its answer; one
 * that arrives later is answered with the object the first call made.
 * Keys are made by the router (creates_sandbox_key, creates_container_key).
 * Safe to use from any thread. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cri/rpc.h"

struct creates;

/* A call that waited for the create in flight under its key. */
struct creates_waiter {
	struct creates_waiter *next;
	struct rpc_call *call;
	void *arg; /* the caller's (the router the call came through) */
};

int creates_new(struct creates **out);
/* Counted: a reload hands the table to the new router, so that a retry on
 * the new configuration finds the create running on the old one. */
struct creates *creates_ref(struct creates *t);
void creates_free(struct creates *t);

/* Starts the create under key: 0 when the caller makes it (and must call
 * creates_end), 1 when another call is making it (call and arg were queued
 * and are handed back when that one ends), -ENOMEM. */
int creates_begin(struct creates *t, const char *key, struct rpc_call *call, void *arg);
/* Ends the create in flight under key. id: what it made; NULL when it
 * failed. remember: keep what the backend said, the ID made or that it
 * failed (a backend may make the object all the same, e.g. containerd after
 * its client went away: the next try should look at the lists first).
 * Returns the calls that waited for it, for the caller to answer (free the
 * nodes). */
struct creates_waiter *creates_end(struct creates *t, const char *key, const char *id,
				   bool remember);
/* Remembers that key made id (learned from a backend's list). */
int creates_learn(struct creates *t, const char *key, const char *id);
/* A copy of the ID key made, or NULL. */
char *creates_made(struct creates *t, const char *key);
/* Whether the last try under key failed at its backend (and nothing is
 * known to be made since). */
bool creates_unsure(struct creates *t, const char *key);
/* The object id is gone: forgets what it was made under and, for a pod
 * sandbox, what its containers were. */
void creates_forget(struct creates *t, const char *id);
unsigned creates_count(struct creates *t);

/* "S;<namespace>;<name>;<uid>;<attempt>;" and "C;<sandbox id>;<name>;<attempt>;"
 * (malloc'd; NULL when out of memory). */
char *creates_sandbox_key(const char *ns, const char *name, const char *uid, uint32_t attempt);
char *creates_container_key(const char *sandbox_id, const char *name, uint32_t attempt);
