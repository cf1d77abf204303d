/* What Docker holds of crimux's containers (sandboxes and containers), kept
 * in memory so that lists, stats and lookups need no Docker call per
 * container. Fed by Docker's event stream (each event re-inspects the one
 * container), written through by crimux's own changes, and reconciled
 * with one list call periodically. It answers only while it is "live":
 * synced once after the event stream was opened, and the stream still
 * open since; otherwise every caller asks Docker as before. Why it cannot
 * go stale: docs/docker.md. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "runtimes/docker/model/checkpoint.h"

struct dk_state;

/* checkpoint_dir: where sandbox checkpoints live (their network flags are
 * cached too, by file identity). reconcile_ms: 0 for the default. */
int dk_state_new(const char *sock, const char *checkpoint_dir, unsigned reconcile_ms,
		 struct dk_state **out, struct crx_err *err);
/* Starts the event and reconcile threads. */
int dk_state_start(struct dk_state *s, struct crx_err *err);
void dk_state_free(struct dk_state *s);
bool dk_state_live(struct dk_state *s);

/* Containers of one type (DK_TYPE_*), optionally of one sandbox, shaped as
 * Docker's list answers them (Id, Names, Image, ImageID, State, Labels,
 * Created), plus what lists of Docker lack: Pid, UpperDir, NetworkMode,
 * CgroupParent. -EAGAIN when not live (ask Docker). */
int dk_state_list(struct dk_state *s, const char *type, const char *sandbox_id, json_object **out);
/* One entry, as dk_state_each() shows it, under the cache's lock: the
 * inspect must only be read, and nothing of it kept. memo is what a caller
 * stored for this very version of the entry (and of its checkpoint's
 * flags), NULL if none: what it made of it before, so a list of unchanged
 * containers costs a copy each. */
struct dk_state_view {
	const char *id, *status;
	json_object *inspect;
	const void *memo;
	size_t memo_len;
	uint64_t memo_tag;
	/* sandboxes: their checkpoint's flags (dk_state_checkpoint) */
	bool have_checkpoint, checkpoint_torn;
	struct dk_checkpoint_flags checkpoint;
	void *priv;
};
typedef int (*dk_state_visit)(struct dk_state_view *v, void *arg);
/* Visits each entry of a type; -EAGAIN when not live; the first error of
 * fn ends the walk. */
int dk_state_each(struct dk_state *s, const char *type, dk_state_visit fn, void *arg);
/* Keeps a copy of data as the memo of v's entry version. */
void dk_state_memo(struct dk_state_view *v, const void *data, size_t len);
/* The entry shaped as dk_state_list() gives it (a new object). */
json_object *dk_state_view_item(const struct dk_state_view *v);

/* A copy of the last inspect of id (full ID, unique prefix or name) if it
 * is of that type and still current; -EAGAIN when the cache cannot say
 * (not live, unknown, or changed by crimux since): ask Docker. */
int dk_state_inspect(struct dk_state *s, const char *id, const char *type, json_object **out);
/* The same for callers that read only what never changes (ID, name,
 * labels, config): an entry crimux changed since will do. */
int dk_state_inspect_ident(struct dk_state *s, const char *id, const char *type, json_object **out);
/* Only the full ID of that entry (a new string): the calls that need no
 * more skip copying the inspect. */
int dk_state_full_id(struct dk_state *s, const char *ref, const char *type, char **out);

/* True when the cache is live and has no container of that name (Docker's
 * name, with or without its leading '/'). */
bool dk_state_name_absent(struct dk_state *s, const char *name);

/* True when the cache is live and knows id is not running (created,
 * exited, dead), also from crimux's own stop whose event is not in yet. */
bool dk_state_not_running(struct dk_state *s, const char *id);

/* Written through by the handlers, so the cache never lags crimux's own
 * changes: a fresh inspect (copied); a container crimux stopped (state
 * "exited" until its die event is inspected); one it removed. */
void dk_state_put(struct dk_state *s, json_object *inspect);
void dk_state_stopped(struct dk_state *s, const char *id);
/* Created by crimux: readers wait (briefly) for the inspect its create
 * event brings, so a list right after the create shows it, and the create
 * costs Docker no inspect of its own. */
void dk_state_created(struct dk_state *s, const char *id);
/* Started by crimux: "running" until its start event is inspected. */
void dk_state_started(struct dk_state *s, const char *id);
/* Changed otherwise (resources): lookups ask Docker until its event is in. */
void dk_state_changed(struct dk_state *s, const char *id);
void dk_state_removed(struct dk_state *s, const char *id);

/* A sandbox's checkpoint flags, read again only when its file changed:
 * 1 found, 0 no checkpoint, -EIO one that cannot be read (torn). */
int dk_state_checkpoint(struct dk_state *s, const char *id, struct dk_checkpoint_flags *out);

/* Counters for tests and the benchmark: Docker calls the cache made. */
struct dk_state_counts {
	uint64_t events, inspects, lists, syncs;
};
void dk_state_counts(struct dk_state *s, struct dk_state_counts *out);
