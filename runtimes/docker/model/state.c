/* The container state cache (state.h). One event thread keeps it current,
 * one reconcile thread checks it against Docker's list; handlers write
 * their own changes through. Entries keep Docker's inspect document, which
 * is never changed once stored (json-c objects are read by several threads
 * at once only while nobody writes them), and a sequence number of their
 * last change: an inspect is stored only if nothing changed the entry
 * while it was in flight, so a slow answer never overwrites a newer one. */
#include "config.h"

#include "runtimes/docker/model/state.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/checkpoint.h"
#include "runtimes/docker/model/names.h"

#define DEFAULT_RECONCILE_MS 10000
#define CALL_TIMEOUT_MS      10000
#define RETRY_MS             1000
#define TOMBSTONE_MS         60000
/* How long a reader waits for the inspect of a container crimux has just
 * created (the event's, usually a millisecond away) before asking Docker. */
#define PENDING_WAIT_MS 1000

struct entry {
	char id[72];
	char sandbox_id[72]; /* a container's sandbox */
	bool sandbox;
	json_object *inspect; /* NULL: removed (a tombstone) */
	char status[16];      /* State.Status, or what crimux made it since */
	bool stale;           /* crimux changed it after this inspect */
	bool pending;         /* created by crimux, its inspect not in yet */
	uint64_t seq;         /* when it last changed */
	int64_t dead_ms;
	void *memo; /* a caller's rendering of this version (memo_seq) */
	size_t memo_len;
	uint64_t memo_seq, memo_tag;
};

struct cp_entry {
	char id[72];
	dev_t dev;
	ino_t ino;
	struct timespec mtime;
	struct dk_checkpoint_flags flags;
};

static int cp_flags_locked(struct dk_state *s, const char *id, struct dk_checkpoint_flags *out);

struct dk_state {
	char *sock, *checkpoint_dir;
	unsigned reconcile_ms;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_cond_t filled; /* a pending entry was inspected or gave up */
	size_t n_pending;
	struct entry **entries;
	size_t n, cap;
	struct cp_entry *cps;
	size_t n_cps, cap_cps;
	uint64_t seq;
	bool live, closing, started;
	atomic_bool stop;
	pthread_t events_thread, reconcile_thread;
	struct dk_state_counts counts;
};

static bool stopping(void *arg)
{
	return atomic_load(&((struct dk_state *)arg)->stop);
}

int dk_state_new(const char *sock, const char *checkpoint_dir, unsigned reconcile_ms,
		 struct dk_state **out, struct crx_err *err)
{
	struct dk_state *s = calloc(1, sizeof(*s));
	if (!s || !(s->sock = strdup(sock)) || !(s->checkpoint_dir = strdup(checkpoint_dir))) {
		if (s)
			free(s->sock);
		free(s);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	s->reconcile_ms = reconcile_ms ? reconcile_ms : DEFAULT_RECONCILE_MS;
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wake, &ca);
	pthread_cond_init(&s->filled, &ca);
	pthread_condattr_destroy(&ca);
	*out = s;
	return 0;
}

static void entry_free(struct entry *e)
{
	if (e && e->inspect)
		json_object_put(e->inspect);
	if (e)
		free(e->memo);
	free(e);
}

void dk_state_free(struct dk_state *s)
{
	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->lock);
		s->closing = true;
		atomic_store(&s->stop, true);
		pthread_cond_broadcast(&s->wake);
		pthread_cond_broadcast(&s->filled);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->events_thread, NULL);
		pthread_join(s->reconcile_thread, NULL);
	}
	for (size_t i = 0; i < s->n; i++)
		entry_free(s->entries[i]);
	free(s->entries);
	free(s->cps);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->filled);
	pthread_mutex_destroy(&s->lock);
	free(s->sock);
	free(s->checkpoint_dir);
	free(s);
}

bool dk_state_live(struct dk_state *s)
{
	pthread_mutex_lock(&s->lock);
	bool live = s->live;
	pthread_mutex_unlock(&s->lock);
	return live;
}

/* --- entries (called with the lock held) --- */

static struct entry *find_exact(struct dk_state *s, const char *id)
{
	for (size_t i = 0; i < s->n; i++)
		if (streq(s->entries[i]->id, id))
			return s->entries[i];
	return NULL;
}

/* As Docker resolves a reference: full ID, name, unique ID prefix. *ambiguous
 * when the cache cannot decide. */
static struct entry *find_ref(struct dk_state *s, const char *ref, bool *ambiguous)
{
	*ambiguous = false;
	struct entry *e = find_exact(s, ref);
	if (e)
		return e;
	for (size_t i = 0; i < s->n; i++) {
		e = s->entries[i];
		const char *name = e->inspect ? dk_json_str(e->inspect, "Name") : NULL;
		if (name && (streq(name, ref) || (name[0] == '/' && streq(name + 1, ref))))
			return e;
	}
	struct entry *found = NULL;
	size_t len = strlen(ref);
	for (size_t i = 0; i < s->n; i++) {
		e = s->entries[i];
		if (strncmp(e->id, ref, len) != 0)
			continue;
		if (found) {
			*ambiguous = true;
			return NULL;
		}
		found = e;
	}
	return found;
}

static struct entry *get_entry(struct dk_state *s, const char *id)
{
	struct entry *e = find_exact(s, id);
	if (e)
		return e;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		struct entry **more = realloc(s->entries, cap * sizeof(*more));
		if (!more)
			return NULL;
		s->entries = more;
		s->cap = cap;
	}
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	snprintf(e->id, sizeof(e->id), "%s", id);
	s->entries[s->n++] = e;
	return e;
}

static uint64_t seq_of(struct dk_state *s, const char *id)
{
	struct entry *e = find_exact(s, id);
	return e ? e->seq : 0;
}

static const char *type_of(json_object *inspect)
{
	return dk_json_str(dk_json_get(inspect, "Config", "Labels", NULL), DK_LABEL_TYPE);
}

/* The entry is no longer waited for: inspected, buried or dropped. */
static void settle(struct dk_state *s, struct entry *e)
{
	if (!e->pending)
		return;
	e->pending = false;
	s->n_pending--;
	pthread_cond_broadcast(&s->filled);
}

/* Stores an inspect (owned) unless the entry changed since `since`
 * (UINT64_MAX: store anyway). */
static void install(struct dk_state *s, json_object *inspect, uint64_t since)
{
	const char *id = dk_json_str(inspect, "Id");
	const char *type = type_of(inspect);
	bool ours = type && (streq(type, DK_TYPE_SANDBOX) || streq(type, DK_TYPE_CONTAINER));
	if (!id || !ours) {
		json_object_put(inspect);
		return;
	}
	struct entry *e = find_exact(s, id);
	if (since != UINT64_MAX && (e ? e->seq : 0) != since) {
		json_object_put(inspect);
		return;
	}
	if (!e && !(e = get_entry(s, id))) {
		json_object_put(inspect);
		return;
	}
	if (e->inspect)
		json_object_put(e->inspect);
	e->inspect = inspect;
	e->sandbox = streq(type, DK_TYPE_SANDBOX);
	snprintf(e->sandbox_id, sizeof(e->sandbox_id), "%s",
		 dk_json_str(dk_json_get(inspect, "Config", "Labels", NULL), DK_LABEL_SANDBOX_ID)
			 ?: "");
	snprintf(e->status, sizeof(e->status), "%s",
		 dk_json_str(dk_json_get(inspect, "State", NULL), "Status") ?: "unknown");
	e->stale = false;
	e->dead_ms = 0;
	e->seq = ++s->seq;
	settle(s, e);
}

static void bury(struct dk_state *s, struct entry *e)
{
	if (e->inspect)
		json_object_put(e->inspect);
	e->inspect = NULL;
	e->stale = false;
	e->dead_ms = dk_now_ms();
	e->seq = ++s->seq;
	settle(s, e);
}

static void purge_tombstones(struct dk_state *s)
{
	int64_t now = dk_now_ms();
	size_t k = 0;
	for (size_t i = 0; i < s->n; i++) {
		struct entry *e = s->entries[i];
		if (!e->inspect && now - e->dead_ms > TOMBSTONE_MS) {
			settle(s, e);
			entry_free(e);
		} else
			s->entries[k++] = e;
	}
	s->n = k;
}

/* --- talking to Docker (without the lock) --- */

/* Inspects id again and stores the answer unless something newer came in
 * meanwhile; a few tries, so an entry crimux just changed gets current. */
static void refresh(struct dk_state *s, const char *id)
{
	for (int attempt = 0; attempt < 3; attempt++) {
		pthread_mutex_lock(&s->lock);
		uint64_t since = seq_of(s, id);
		s->counts.inspects++;
		pthread_mutex_unlock(&s->lock);
		struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
		dl.cancelled = stopping;
		dl.arg = s;
		json_object *inspect = NULL;
		/* size=0 is Docker's default; it also tells the cache's calls
		 * from the handlers' ones in a trace of the socket. */
		int r = dk_callf(s->sock, "GET", NULL, &dl, &inspect, NULL, NULL,
				 "/containers/%s/json?size=0", id);
		if (r == 0 && !json_object_is_type(inspect, json_type_object))
			r = -EBADMSG;
		pthread_mutex_lock(&s->lock);
		struct entry *e = find_exact(s, id);
		bool changed = (e ? e->seq : 0) != since;
		if (!changed && r == -ENOENT && e && (e->inspect || e->pending))
			bury(s, e);
		else if (!changed && r == 0)
			install(s, inspect, since);
		else if (inspect)
			json_object_put(inspect);
		bool again = changed && e && e->stale;
		pthread_mutex_unlock(&s->lock);
		if (!again || (r < 0 && r != -ENOENT))
			return;
	}
}

static json_object *our_filters(void)
{
	json_object *f = json_object_new_object(), *label = json_object_new_array();
	if (dk_json_add(f, "label", label) < 0 || dk_json_append_str(label, DK_LABEL_TYPE) < 0) {
		json_object_put(f);
		return NULL;
	}
	return f;
}

static bool ours(json_object *labels)
{
	const char *t = dk_json_str(labels, DK_LABEL_TYPE);
	return t && (streq(t, DK_TYPE_SANDBOX) || streq(t, DK_TYPE_CONTAINER));
}

/* One list call; every container new or in another state than the cache
 * says is inspected, every one the cache has that Docker no longer lists
 * (and nobody touched since the list) is buried. */
static int reconcile(struct dk_state *s)
{
	_cleanup_json_ json_object *filters = our_filters();
	_cleanup_json_ json_object *list = NULL;
	struct dk_deadline dl = dk_deadline_in(NULL, CALL_TIMEOUT_MS);
	dl.cancelled = stopping;
	dl.arg = s;
	pthread_mutex_lock(&s->lock);
	uint64_t before = s->seq;
	s->counts.lists++;
	pthread_mutex_unlock(&s->lock);
	if (!filters)
		return -ENOMEM;
	int r = dk_container_list(s->sock, filters, &dl, &list, NULL);
	if (r < 0)
		return r;
	size_t n = json_object_array_length(list);
	for (size_t i = 0; i < n && !stopping(s); i++) {
		json_object *c = json_object_array_get_idx(list, i);
		const char *id = dk_json_str(c, "Id");
		if (!id || !ours(dk_json_get(c, "Labels", NULL)))
			continue;
		pthread_mutex_lock(&s->lock);
		struct entry *e = find_exact(s, id);
		bool current = e && e->inspect && !e->stale &&
			       streq(e->status, dk_json_str(c, "State") ?: "");
		pthread_mutex_unlock(&s->lock);
		if (!current)
			refresh(s, id);
	}
	pthread_mutex_lock(&s->lock);
	for (size_t k = 0; k < s->n; k++) {
		struct entry *e = s->entries[k];
		if ((!e->inspect && !e->pending) || e->seq > before)
			continue;
		bool listed = false;
		for (size_t i = 0; i < n && !listed; i++)
			listed =
				streq(dk_json_str(json_object_array_get_idx(list, i), "Id"), e->id);
		if (!listed)
			bury(s, e);
	}
	purge_tombstones(s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int open_events(struct dk_state *s, struct dk_http_conn **conn)
{
	_cleanup_json_ json_object *f = our_filters();
	json_object *type = json_object_new_array(), *ev = json_object_new_array();
	int r = f ? 0 : -ENOMEM;
	r |= dk_json_add(f, "type", type);
	r |= dk_json_append_str(type, "container");
	r |= dk_json_add(f, "event", ev);
	/* Whatever changes what the cache shows. */
	static const char *const actions[] = {"create",  "start",  "die",    "destroy", "pause",
					      "unpause", "rename", "update", "restart"};
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		r |= dk_json_append_str(ev, actions[i]);
	_cleanup_free_ char *esc = r ? NULL : dk_http_escape(dk_json_text(f), false);
	_cleanup_free_ char *target = NULL;
	if (!esc || asprintf(&target, DK_API_PREFIX "/events?filters=%s", esc) < 0)
		return -ENOMEM;
	struct dk_http_request req = {.method = "GET", .target = target};
	struct dk_deadline dl = {.cancelled = stopping, .arg = s};
	r = dk_http_open(s->sock, &req, &dl, conn, NULL);
	if (r == 0 && dk_http_status(*conn) >= 400) {
		dk_http_close(*conn);
		*conn = NULL;
		r = -EIO;
	}
	return r;
}

static void handle_event(struct dk_state *s, json_object *ev)
{
	const char *id = dk_json_str(ev, "id");
	const char *action = dk_json_str(ev, "Action");
	if (!id || !action || !dk_valid_id(id) ||
	    !ours(dk_json_get(ev, "Actor", "Attributes", NULL)))
		return;
	pthread_mutex_lock(&s->lock);
	s->counts.events++;
	if (streq(action, "destroy")) {
		struct entry *e = get_entry(s, id);
		if (e)
			bury(s, e);
		pthread_mutex_unlock(&s->lock);
		return;
	}
	pthread_mutex_unlock(&s->lock);
	refresh(s, id);
}

static void wait_ms(struct dk_state *s, unsigned ms)
{
	struct timespec ts = monotonic_in(ms);
	pthread_mutex_lock(&s->lock);
	if (!s->closing)
		pthread_cond_timedwait(&s->wake, &s->lock, &ts);
	pthread_mutex_unlock(&s->lock);
}

/* Open the stream first, then sync: an event during the sync waits in the
 * socket, so nothing falls between the two. Live until the stream breaks. */
static void *events_run(void *arg)
{
	struct dk_state *s = arg;
	while (!stopping(s)) {
		struct dk_http_conn *conn = NULL;
		if (open_events(s, &conn) < 0 || reconcile(s) < 0) {
			dk_http_close(conn);
			wait_ms(s, RETRY_MS);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		s->live = true;
		s->counts.syncs++;
		pthread_mutex_unlock(&s->lock);
		for (;;) {
			char *line;
			size_t len;
			if (dk_http_read_line(conn, 1 * MIB, &line, &len, NULL) <= 0)
				break;
			_cleanup_json_ json_object *ev = NULL;
			if (len && dk_json_parse(line, len, &ev, NULL) == 0)
				handle_event(s, ev);
		}
		pthread_mutex_lock(&s->lock);
		s->live = false;
		pthread_cond_broadcast(&s->filled); /* waiters ask Docker now */
		pthread_mutex_unlock(&s->lock);
		dk_http_close(conn);
	}
	return NULL;
}

static void *reconcile_run(void *arg)
{
	struct dk_state *s = arg;
	while (!stopping(s)) {
		wait_ms(s, s->reconcile_ms);
		if (!stopping(s) && dk_state_live(s))
			reconcile(s);
	}
	return NULL;
}

int dk_state_start(struct dk_state *s, struct crx_err *err)
{
	int e = pthread_create(&s->events_thread, NULL, events_run, s);
	if (e)
		return crx_err_set(err, -e, "cannot start a thread: %s", strerror(e));
	e = pthread_create(&s->reconcile_thread, NULL, reconcile_run, s);
	if (e) {
		atomic_store(&s->stop, true);
		pthread_join(s->events_thread, NULL);
		return crx_err_set(err, -e, "cannot start a thread: %s", strerror(e));
	}
	s->started = true;
	return 0;
}

/* --- readers --- */

/* Called with the lock held: waits (a bounded time) until no entry crimux
 * has just created lacks its inspect, so a reader never misses one. 0, or
 * -EAGAIN when the cache cannot answer (not live, or still pending). */
static int await_filled(struct dk_state *s)
{
	struct timespec until = monotonic_in(PENDING_WAIT_MS);
	while (s->live && !s->closing && s->n_pending > 0)
		if (pthread_cond_timedwait(&s->filled, &s->lock, &until) == ETIMEDOUT)
			break;
	return s->live && s->n_pending == 0 ? 0 : -EAGAIN;
}

static int add_copy(json_object *to, const char *key, json_object *from)
{
	if (!from)
		return 0;
	json_object *copy = NULL;
	if (json_object_deep_copy(from, &copy, NULL) < 0)
		return -ENOMEM;
	return dk_json_add(to, key, copy);
}

int dk_state_each(struct dk_state *s, const char *type, dk_state_visit fn, void *arg)
{
	if (!s)
		return -EAGAIN;
	bool sandbox = streq(type, DK_TYPE_SANDBOX);
	pthread_mutex_lock(&s->lock);
	int r = await_filled(s);
	for (size_t i = 0; r == 0 && i < s->n; i++) {
		struct entry *e = s->entries[i];
		if (!e->inspect || e->sandbox != sandbox)
			continue;
		struct dk_checkpoint_flags f = {0};
		int have = sandbox ? cp_flags_locked(s, e->id, &f) : 0;
		uint64_t tag = (uint64_t)(have == 1) | (uint64_t)f.host_network << 1 |
			       (uint64_t)f.network_ready << 2 | (uint64_t)(have < 0) << 3 |
			       (uint64_t)f.distrusted << 4;
		bool fresh = e->memo && e->memo_seq == e->seq && e->memo_tag == tag;
		struct dk_state_view v = {.id = e->id,
					  .status = e->status,
					  .inspect = e->inspect,
					  .memo = fresh ? e->memo : NULL,
					  .memo_len = fresh ? e->memo_len : 0,
					  .memo_tag = tag,
					  .have_checkpoint = have == 1,
					  .checkpoint_torn = have < 0,
					  .checkpoint = f,
					  .priv = e};
		r = fn(&v, arg);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

void dk_state_memo(struct dk_state_view *v, const void *data, size_t len)
{
	uint64_t tag = v->memo_tag;
	struct entry *e = v->priv;
	void *copy = malloc(len ? len : 1);
	if (!copy)
		return;
	if (len)
		memcpy(copy, data, len);
	free(e->memo);
	e->memo = copy;
	e->memo_len = len;
	e->memo_seq = e->seq;
	e->memo_tag = tag;
}

static json_object *list_item(const struct entry *e);

json_object *dk_state_view_item(const struct dk_state_view *v)
{
	return list_item(v->priv);
}

/* Docker's list shape of one entry, plus the inspect-only fields. */
static json_object *list_item(const struct entry *e)
{
	json_object *in = e->inspect, *o = json_object_new_object();
	json_object *names = json_object_new_array();
	json_object *state = dk_json_get(in, "State", NULL);
	json_object *host = dk_json_get(in, "HostConfig", NULL);
	int r = o && names ? 0 : -ENOMEM;
	r |= dk_json_add_str(o, "Id", e->id);
	r |= dk_json_add(o, "Names", names);
	r |= dk_json_append_str(names, dk_json_str(in, "Name"));
	r |= dk_json_add_str(o, "Image", dk_json_str(dk_json_get(in, "Config", NULL), "Image"));
	r |= dk_json_add_str(o, "ImageID", dk_json_str(in, "Image"));
	r |= dk_json_add_str(o, "State", e->status);
	r |= dk_json_add_str(o, "Created", dk_json_str(in, "Created"));
	r |= add_copy(o, "Labels", dk_json_get(in, "Config", "Labels", NULL));
	/* An entry crimux started whose event is not in has no process yet in
	 * its inspect: no Pid then, and stats ask Docker for it. */
	bool running = streq(e->status, "running") || streq(e->status, "paused");
	if (!(running && e->stale && dk_json_int(state, "Pid", 0) <= 0))
		r |= dk_json_add_int(o, "Pid", running ? dk_json_int(state, "Pid", 0) : 0);
	r |= dk_json_add_str(o, "UpperDir",
			     dk_json_str(dk_json_get(in, "GraphDriver", "Data", NULL), "UpperDir"));
	r |= dk_json_add_str(o, "NetworkMode", dk_json_str(host, "NetworkMode"));
	r |= dk_json_add_str(o, "CgroupParent", dk_json_str(host, "CgroupParent"));
	if (r && o) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

int dk_state_list(struct dk_state *s, const char *type, const char *sandbox_id, json_object **out)
{
	if (!s)
		return -EAGAIN;
	bool sandbox = streq(type, DK_TYPE_SANDBOX);
	json_object *a = json_object_new_array();
	if (!a)
		return -ENOMEM;
	pthread_mutex_lock(&s->lock);
	int r = await_filled(s);
	for (size_t i = 0; r == 0 && i < s->n; i++) {
		const struct entry *e = s->entries[i];
		if (!e->inspect || e->sandbox != sandbox)
			continue;
		if (sandbox_id && *sandbox_id && !streq(e->sandbox_id, sandbox_id))
			continue;
		json_object *item = list_item(e);
		if (!item || json_object_array_add(a, item) < 0) {
			if (item)
				json_object_put(item);
			r = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (r < 0) {
		json_object_put(a);
		return r;
	}
	*out = a;
	return 0;
}

/* The entry ref names, with its inspect of that type; called locked. */
static struct entry *find_inspected(struct dk_state *s, const char *ref, const char *type,
				    bool stale_ok)
{
	bool ambiguous;
	struct entry *e = s->live ? find_ref(s, ref, &ambiguous) : NULL;
	if (e && e->pending) {
		await_filled(s); /* still pending after it: ask Docker */
		e = s->live ? find_ref(s, ref, &ambiguous) : NULL; /* it let go of the lock */
	}
	bool usable =
		e && e->inspect && (stale_ok || !e->stale) && streq(type_of(e->inspect), type);
	return usable ? e : NULL;
}

static int inspect_copy(struct dk_state *s, const char *id, const char *type, bool stale_ok,
			json_object **out)
{
	if (!s || !id || !*id)
		return -EAGAIN;
	pthread_mutex_lock(&s->lock);
	struct entry *e = find_inspected(s, id, type, stale_ok);
	int r = !e ? -EAGAIN : json_object_deep_copy(e->inspect, out, NULL) < 0 ? -ENOMEM : 0;
	pthread_mutex_unlock(&s->lock);
	return r;
}

int dk_state_inspect(struct dk_state *s, const char *id, const char *type, json_object **out)
{
	return inspect_copy(s, id, type, false, out);
}

int dk_state_inspect_ident(struct dk_state *s, const char *id, const char *type, json_object **out)
{
	return inspect_copy(s, id, type, true, out);
}

int dk_state_full_id(struct dk_state *s, const char *ref, const char *type, char **out)
{
	if (!s || !ref || !*ref)
		return -EAGAIN;
	pthread_mutex_lock(&s->lock);
	struct entry *e = find_inspected(s, ref, type, true);
	int r = !e ? -EAGAIN : (*out = strdup(e->id)) ? 0 : -ENOMEM;
	pthread_mutex_unlock(&s->lock);
	return r;
}

bool dk_state_not_running(struct dk_state *s, const char *id)
{
	if (!s || !id)
		return false;
	pthread_mutex_lock(&s->lock);
	struct entry *e = s->live ? find_exact(s, id) : NULL;
	bool idle = e && e->inspect &&
		    (streq(e->status, "exited") || streq(e->status, "created") ||
		     streq(e->status, "dead"));
	pthread_mutex_unlock(&s->lock);
	return idle;
}

bool dk_state_name_absent(struct dk_state *s, const char *name)
{
	if (!s || !name || !*name)
		return false;
	pthread_mutex_lock(&s->lock);
	bool absent = s->live && s->n_pending == 0; /* a pending one's name is not known */
	for (size_t i = 0; absent && i < s->n; i++) {
		const struct entry *e = s->entries[i];
		const char *have = e->inspect ? dk_json_str(e->inspect, "Name") : NULL;
		if (have && (streq(have, name) || (have[0] == '/' && streq(have + 1, name))))
			absent = false;
	}
	pthread_mutex_unlock(&s->lock);
	return absent;
}

/* --- writers --- */

void dk_state_put(struct dk_state *s, json_object *inspect)
{
	if (!s)
		return;
	json_object *copy = NULL;
	if (!inspect || json_object_deep_copy(inspect, &copy, NULL) < 0)
		return;
	pthread_mutex_lock(&s->lock);
	install(s, copy, UINT64_MAX);
	pthread_mutex_unlock(&s->lock);
}

void dk_state_created(struct dk_state *s, const char *id)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	/* Known already: its event came first (or, gone, its destroy). */
	struct entry *e = find_exact(s, id) ? NULL : get_entry(s, id);
	if (e) {
		e->pending = true;
		e->stale = true; /* an inspect begun before this one tries again */
		e->dead_ms = dk_now_ms();
		e->seq = ++s->seq;
		s->n_pending++;
	}
	pthread_mutex_unlock(&s->lock);
}

void dk_state_changed(struct dk_state *s, const char *id)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	struct entry *e = find_exact(s, id);
	if (e && e->inspect) {
		e->stale = true;
		e->seq = ++s->seq;
	}
	pthread_mutex_unlock(&s->lock);
}

/* What crimux made of an entry: its status at once, stale until an
 * inspect shows the same. If the event came first, nothing is left to do. */
static void set_status(struct dk_state *s, const char *id, const char *status,
		       bool (*applies)(const char *current))
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	struct entry *e = find_exact(s, id);
	if (e && e->inspect && applies(e->status) && !(streq(e->status, status) && !e->stale)) {
		const char *seen = dk_json_str(dk_json_get(e->inspect, "State", NULL), "Status");
		snprintf(e->status, sizeof(e->status), "%s", status);
		e->stale = e->stale || !streq(seen ?: "", status);
		e->seq = ++s->seq;
	}
	pthread_mutex_unlock(&s->lock);
}

static bool was_running(const char *current)
{
	return !streq(current, "created") && !streq(current, "dead");
}

static bool any(const char *current)
{
	return true;
}

void dk_state_stopped(struct dk_state *s, const char *id)
{
	set_status(s, id, "exited", was_running);
}

void dk_state_started(struct dk_state *s, const char *id)
{
	set_status(s, id, "running", any);
}

void dk_state_removed(struct dk_state *s, const char *id)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	struct entry *e = find_exact(s, id);
	if (e && e->inspect)
		bury(s, e);
	pthread_mutex_unlock(&s->lock);
}

static int load_flags(const char *dir, const char *id, struct dk_checkpoint_flags *out)
{
	struct dk_checkpoint cp = {0};
	if (dk_checkpoint_load(dir, id, &cp, NULL) < 0)
		return 0;
	*out = dk_checkpoint_flags(&cp);
	dk_checkpoint_clear(&cp);
	return 1;
}

/* Called with the lock held: a stat, and a read only when the file
 * changed (written by rename: another file is another inode). */
static int cp_flags_locked(struct dk_state *s, const char *id, struct dk_checkpoint_flags *out)
{
	char path[PATH_MAX];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s.json", s->checkpoint_dir, id);
	struct cp_entry *c = NULL;
	size_t at = 0;
	for (size_t i = 0; i < s->n_cps && !c; i++)
		if (streq(s->cps[i].id, id))
			c = &s->cps[at = i];
	if (stat(path, &st) < 0) {
		if (c)
			s->cps[at] = s->cps[--s->n_cps];
		return 0;
	}
	if (c && c->dev == st.st_dev && c->ino == st.st_ino &&
	    c->mtime.tv_sec == st.st_mtim.tv_sec && c->mtime.tv_nsec == st.st_mtim.tv_nsec) {
		*out = c->flags;
		return 1;
	}
	if (!load_flags(s->checkpoint_dir, id, out))
		return -EIO; /* there, but torn */
	if (!c && s->n_cps == s->cap_cps) {
		size_t cap = s->cap_cps ? s->cap_cps * 2 : 64;
		struct cp_entry *more = realloc(s->cps, cap * sizeof(*more));
		if (more) {
			s->cps = more;
			s->cap_cps = cap;
		}
	}
	if (!c && s->n_cps < s->cap_cps) {
		c = &s->cps[s->n_cps++];
		snprintf(c->id, sizeof(c->id), "%s", id);
	}
	if (c) {
		c->dev = st.st_dev;
		c->ino = st.st_ino;
		c->mtime = st.st_mtim;
		c->flags = *out;
	}
	return 1;
}

int dk_state_checkpoint(struct dk_state *s, const char *id, struct dk_checkpoint_flags *out)
{
	pthread_mutex_lock(&s->lock);
	int r = cp_flags_locked(s, id, out);
	pthread_mutex_unlock(&s->lock);
	return r;
}

void dk_state_counts(struct dk_state *s, struct dk_state_counts *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->counts;
	pthread_mutex_unlock(&s->lock);
}
