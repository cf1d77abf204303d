/* The CRI image service on Docker: pull (with registry credentials that are
 * never logged), status, list, remove and the image filesystem. Image IDs
 * are Docker's ("sha256:..." of the config), the same in PullImage,
 * ListImages and the containers' image_id. */
#include "config.h"

#include "runtimes/docker/image.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "common/util.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/convert.h"
#include "runtimes/docker/model/pause.h"

/* How long a RemoveImage that raced another one waits for that one. */
#define REMOVAL_WAIT_MS 10000

/* GET /images/{ref}/json; -ENOENT when Docker has no such image. */
static int image_inspect(struct dk_ctx *c, const char *ref, json_object **out, struct crx_err *err)
{
	if (!ref || !*ref)
		return crx_err_set(err, -EINVAL, "no image given");
	_cleanup_free_ char *e = dk_http_escape(ref, true);
	if (!e)
		return crx_err_set(err, -ENOMEM, "out of memory");
	int status = 0;
	int r = dk_callf(c->ds->sock, "GET", NULL, &c->dl, out, &status, err, "/images/%s/json", e);
	if (r < 0 && status == 404)
		return crx_err_set(err, -ENOENT, "image %s not found", ref);
	/* Docker answers 400 for references it cannot parse: not ours either. */
	if (r < 0 && status == 400) {
		crx_err_prefix(err, "image %s not found", ref);
		if (err)
			err->code = -ENOENT;
		return -ENOENT;
	}
	if (r == 0 && !*out)
		return crx_err_set(err, -EBADMSG, "dockerd sent no image for %s", ref);
	return r;
}

static const char *pause_id(struct dk_ctx *c, json_object **keep)
{
	if (image_inspect(c, c->ds->pause_image, keep, NULL) < 0)
		return NULL;
	return dk_json_str(*keep, "Id");
}

/* Docker's image JSON (a list entry or an inspect) as a CRI Image. */
static Runtime__V1__Image *to_cri_image(struct dk_ctx *c, json_object *img, const char *pinned_id)
{
	struct dk_arena *a = &c->arena;
	Runtime__V1__Image *out = dk_msg_new(a, &runtime__v1__image__descriptor);
	Runtime__V1__ImageSpec *spec = dk_msg_new(a, &runtime__v1__image_spec__descriptor);
	if (!out || !spec)
		return NULL;
	const char *id = dk_json_str(img, "Id");
	out->id = dk_arena_strdup(a, id);
	spec->image = out->id;
	out->spec = spec;
	json_object *tags = dk_json_get(img, "RepoTags", NULL);
	for (size_t i = 0; tags && i < json_object_array_length(tags); i++) {
		const char *t = json_object_get_string(json_object_array_get_idx(tags, i));
		if (t && !streq(t, "<none>:<none>") &&
		    DK_PUSH(a, &out->n_repo_tags, &out->repo_tags, dk_arena_strdup(a, t)) < 0)
			return NULL;
	}
	json_object *digests = dk_json_get(img, "RepoDigests", NULL);
	for (size_t i = 0; digests && i < json_object_array_length(digests); i++) {
		const char *d = json_object_get_string(json_object_array_get_idx(digests, i));
		if (d && !streq(d, "<none>@<none>") &&
		    DK_PUSH(a, &out->n_repo_digests, &out->repo_digests, dk_arena_strdup(a, d)) < 0)
			return NULL;
	}
	int64_t size = dk_json_int(img, "Size", 0);
	out->size = size > 0 ? (uint64_t)size : 1; /* the CRI wants > 0 */
	out->pinned = pinned_id && streq(pinned_id, id);
	/* The image's user: a UID when numeric (before any ':group'). */
	const char *user = dk_json_str(dk_json_get(img, "Config", NULL), "User");
	if (user && *user) {
		char name[256];
		snprintf(name, sizeof(name), "%.*s", (int)strcspn(user, ":"), user);
		char *end;
		long long uid = strtoll(name, &end, 10);
		if (*name && !*end) {
			Runtime__V1__Int64Value *v =
				dk_msg_new(a, &runtime__v1__int64_value__descriptor);
			if (!v)
				return NULL;
			v->value = uid;
			out->uid = v;
		} else {
			out->username = dk_arena_strdup(a, name);
		}
	}
	return out;
}

int dk_list_images(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		   struct crx_err *err)
{
	const Runtime__V1__ListImagesRequest *in = (const void *)req;
	const char *ref = in->filter && in->filter->image ? in->filter->image->image : NULL;
	_cleanup_json_ json_object *list = NULL;
	int r;
	if (ref && *ref) {
		_cleanup_json_ json_object *f = json_object_new_object();
		json_object *refs = json_object_new_array();
		if (!f || dk_json_add(f, "reference", refs) < 0 ||
		    dk_json_append_str(refs, ref) < 0)
			return crx_err_set(err, -ENOMEM, "out of memory");
		_cleanup_free_ char *e = dk_http_escape(dk_json_text(f), false);
		if (!e)
			return crx_err_set(err, -ENOMEM, "out of memory");
		r = dk_callf(c->ds->sock, "GET", NULL, &c->dl, &list, NULL, err,
			     "/images/json?filters=%s", e);
	} else {
		r = dk_call(c->ds->sock, "GET", "/images/json", NULL, &c->dl, &list, NULL, err);
	}
	if (r < 0)
		return r;
	_cleanup_json_ json_object *pause = NULL;
	const char *pinned = pause_id(c, &pause);
	Runtime__V1__ListImagesResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__list_images_response__descriptor);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; list && i < json_object_array_length(list); i++) {
		Runtime__V1__Image *img =
			to_cri_image(c, json_object_array_get_idx(list, i), pinned);
		if (!img || DK_PUSH(&c->arena, &out->n_images, &out->images, img) < 0)
			return -ENOMEM;
	}
	*resp = &out->base;
	return 0;
}

int dk_image_status(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		    struct crx_err *err)
{
	const Runtime__V1__ImageStatusRequest *in = (const void *)req;
	Runtime__V1__ImageStatusResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__image_status_response__descriptor);
	if (!out)
		return -ENOMEM;
	_cleanup_json_ json_object *img = NULL;
	int r = image_inspect(c, in->image ? in->image->image : NULL, &img, err);
	if (r == -ENOENT) {
		*resp = &out->base; /* no image: an empty answer, not an error */
		return 0;
	}
	if (r < 0)
		return r;
	_cleanup_json_ json_object *pause = NULL;
	out->image = to_cri_image(c, img, pause_id(c, &pause));
	if (!out->image)
		return -ENOMEM;
	if (in->verbose &&
	    DK_MAP_ADD(&c->arena, &runtime__v1__image_status_response__info_entry__descriptor,
		       &out->n_info, &out->info, "info", dk_json_text(img)) < 0)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

/* Splits a reference into what Docker's pull wants: fromImage and tag (a
 * tag or a digest; "latest" when there is none, or Docker pulls every tag). */
static int split_ref(const char *ref, char **repo, char **tag)
{
	const char *at = strchr(ref, '@');
	const char *slash = strrchr(ref, '/');
	const char *colon = strrchr(ref, ':');
	if (at) {
		*repo = strndup(ref, (size_t)(at - ref));
		*tag = strdup(at + 1);
	} else if (colon && (!slash || colon > slash)) {
		*repo = strndup(ref, (size_t)(colon - ref));
		*tag = strdup(colon + 1);
	} else {
		*repo = strdup(ref);
		*tag = strdup("latest");
	}
	return *repo && *tag ? 0 : -ENOMEM;
}

static char *b64(const void *data, size_t len, bool url)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	for (char *p = out; url && *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	return out;
}

/* Appends "key":"value" (JSON-escaped) to buf at *o, or only counts when
 * buf is NULL. */
static void put_field(char *buf, size_t *o, const char *key, const char *value)
{
	if (!value)
		return;
	const char *parts[] = {*o > 1 ? ",\"" : "\"", key, "\":\""};
	for (size_t i = 0; i < 3; i++)
		for (const char *p = parts[i]; *p; p++, (*o)++)
			if (buf)
				buf[*o] = *p;
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		char esc[8];
		int n;
		if (*p == '"' || *p == '\\')
			n = snprintf(esc, sizeof(esc), "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			n = snprintf(esc, sizeof(esc), "\\u%04x", *p);
		else
			n = snprintf(esc, sizeof(esc), "%c", *p);
		for (int i = 0; i < n; i++, (*o)++)
			if (buf)
				buf[*o] = esc[i];
		explicit_bzero(esc, sizeof(esc));
	}
	if (buf)
		buf[*o] = '"';
	(*o)++;
}

/* The AuthConfig JSON, built in one buffer crimux owns so that it can be
 * wiped: json-c would leave copies of the password in buffers it frees. */
static char *auth_json(const char *user, const char *pass, const Runtime__V1__AuthConfig *a)
{
	for (char *buf = NULL;;) {
		size_t o = 0;
		if (buf)
			buf[o] = '{';
		o++;
		put_field(buf, &o, "username", user);
		put_field(buf, &o, "password", pass);
		put_field(buf, &o, "serveraddress", a->server_address);
		put_field(buf, &o, "identitytoken", a->identity_token);
		put_field(buf, &o, "registrytoken", a->registry_token);
		if (buf) {
			buf[o] = '}';
			buf[o + 1] = '\0';
			return buf;
		}
		if (!(buf = malloc(o + 2)))
			return NULL;
	}
}

int dk_registry_auth_header(const Runtime__V1__AuthConfig *auth, char **out)
{
	*out = NULL;
	if (!auth)
		return 0;
	_cleanup_free_ char *user = NULL, *pass = NULL;
	size_t pass_len = 0;
	if ((!auth->username || !*auth->username) && auth->auth && *auth->auth) {
		/* "auth" is base64 of "user:password". */
		size_t n = strlen(auth->auth);
		_cleanup_free_ unsigned char *dec = malloc(n + 1);
		if (!dec)
			return -ENOMEM;
		int len = EVP_DecodeBlock(dec, (const unsigned char *)auth->auth, (int)n);
		if (len < 0) {
			explicit_bzero(dec, n + 1);
			return -EINVAL;
		}
		while (len > 0 && dec[len - 1] == '\0')
			len--; /* padding decodes to zero bytes */
		dec[len] = '\0';
		char *colon = strchr((char *)dec, ':');
		if (colon) {
			*colon = '\0';
			user = strdup((char *)dec);
			pass = strdup(colon + 1);
			pass_len = pass ? strlen(pass) : 0;
		}
		explicit_bzero(dec, n + 1);
		if (!colon)
			return -EINVAL;
		if (!user || !pass) {
			if (pass)
				explicit_bzero(pass, pass_len);
			return -ENOMEM;
		}
	}
	char *text = auth_json(user ? user : auth->username, pass ? pass : auth->password, auth);
	if (pass)
		explicit_bzero(pass, pass_len);
	if (!text)
		return -ENOMEM;
	size_t tlen = strlen(text);
	char *enc = b64(text, tlen, true);
	explicit_bzero(text, tlen);
	free(text);
	if (!enc)
		return -ENOMEM;
	size_t elen = strlen(enc);
	int r = asprintf(out, "X-Registry-Auth: %s", enc) < 0 ? -ENOMEM : 0;
	explicit_bzero(enc, elen);
	free(enc);
	return r;
}

static int pull(struct dk_ctx *c, const char *ref, const Runtime__V1__AuthConfig *auth,
		struct crx_err *err)
{
	_cleanup_free_ char *repo = NULL, *tag = NULL, *hdr = NULL, *target = NULL;
	if (split_ref(ref, &repo, &tag) < 0)
		return crx_err_set(err, -ENOMEM, "out of memory");
	int r = dk_registry_auth_header(auth, &hdr);
	if (r < 0)
		return crx_err_set(err, r, "the registry credentials for %s are malformed", ref);
	_cleanup_free_ char *erepo = dk_http_escape(repo, false),
			    *etag = dk_http_escape(tag, false);
	if (!erepo || !etag ||
	    asprintf(&target, DK_API_PREFIX "/images/create?fromImage=%s&tag=%s", erepo, etag) <
		    0) {
		if (hdr)
			explicit_bzero(hdr, strlen(hdr));
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	const char *headers[] = {hdr, NULL};
	struct dk_http_request req = {
		.method = "POST",
		.target = target,
		.headers = hdr ? headers : NULL,
	};
	/* No deadline of our own: a large image takes what it takes; only the
	 * client's deadline or cancellation ends the wait. */
	_cleanup_http_ struct dk_http_conn *conn = NULL;
	r = dk_http_open(c->ds->sock, &req, &c->dl, &conn, err);
	if (hdr)
		explicit_bzero(hdr, strlen(hdr));
	if (r < 0)
		return crx_err_prefix(err, "pulling %s", ref);
	int status = dk_http_status(conn);
	if (status >= 400) {
		_cleanup_free_ char *body = NULL;
		size_t len = 0;
		dk_http_read_all(conn, 64 * 1024, &body, &len, NULL);
		_cleanup_json_ json_object *o = NULL;
		const char *msg = NULL;
		if (body && dk_json_parse(body, len, &o, NULL) == 0)
			msg = dk_json_str(o, "message");
		int code = dk_status_errno(status);
		if (msg && (strstr(msg, "unauthorized") || strstr(msg, "denied") ||
			    strstr(msg, "authentication required")))
			code = -EACCES;
		else if (status == 404 ||
			 (msg && (strstr(msg, "not found") || strstr(msg, "manifest unknown"))))
			code = -ENOENT;
		return crx_err_set(err, code, "pulling %s: docker: %s", ref,
				   msg    ? msg
				   : body ? body
					  : "failed");
	}
	r = dk_json_stream_check(conn, err);
	return r < 0 ? crx_err_prefix(err, "pulling %s", ref) : 0;
}

int dk_pull_image(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		  struct crx_err *err)
{
	const Runtime__V1__PullImageRequest *in = (const void *)req;
	const char *ref = in->image ? in->image->image : NULL;
	if (!ref || !*ref)
		return crx_err_set(err, -EINVAL, "no image given");
	int r = pull(c, ref, in->auth, err);
	if (r < 0)
		return r;
	_cleanup_json_ json_object *img = NULL;
	r = image_inspect(c, ref, &img, err);
	if (r < 0)
		return crx_err_prefix(err, "after pulling %s", ref);
	Runtime__V1__PullImageResponse *out =
		dk_msg_new(&c->arena, &runtime__v1__pull_image_response__descriptor);
	if (!out)
		return -ENOMEM;
	out->image_ref = dk_arena_strdup(&c->arena, dk_json_str(img, "Id"));
	*resp = &out->base;
	return 0;
}

/* Polls until the image is gone, for up to wait_ms: 0, or -EBUSY (or
 * what asking Docker failed with). Docker answers an inspect of an image
 * whose layers are being deleted 500 ("layer does not exist"): not gone
 * yet. */
static int await_removed(struct dk_ctx *c, const char *name, int64_t wait_ms, struct crx_err *err)
{
	int64_t until = dk_now_ms() + wait_ms;
	for (long sleep_ms = 5;; sleep_ms = sleep_ms < 160 ? sleep_ms * 2 : sleep_ms) {
		_cleanup_json_ json_object *img = NULL;
		int r = image_inspect(c, name, &img, err);
		if (r == -ENOENT) {
			if (err)
				*err = (struct crx_err){0};
			return 0;
		}
		if (r < 0 && r != -EIO)
			return r;
		if (dk_now_ms() >= until)
			return crx_err_set(err, -EBUSY,
					   "image %s is still there: another removal of it "
					   "has not finished in %lld s",
					   name, (long long)wait_ms / 1000);
		nanosleep(&(struct timespec){.tv_nsec = sleep_ms * 1000 * 1000}, NULL);
	}
}

/* Removal is idempotent, and RemoveImage calls for one image may run at
 * once. Docker answers the ones that lose the race 404 (the name went),
 * 409 or 500 ("unrecognized image ID", "layer does not exist": the winner
 * is still deleting the layers). Those are success once the image is gone;
 * *raced says the caller must still wait for that. */
static int delete_image(struct dk_ctx *c, const char *name, bool *raced, struct crx_err *err)
{
	_cleanup_free_ char *e = dk_http_escape(name, true);
	if (!e)
		return crx_err_set(err, -ENOMEM, "out of memory");
	int status = 0;
	int r = dk_callf(c->ds->sock, "DELETE", NULL, &c->dl, NULL, &status, err,
			 "/images/%s?noprune=0", e);
	/* A 409 with the image still there is a real conflict (in use);
	 * after a 500 the removal under way gets its time. */
	if (r < 0 && (status == 404 ||
		      (status >= 400 &&
		       await_removed(c, name, status >= 500 ? REMOVAL_WAIT_MS : 0, NULL) == 0))) {
		if (err)
			*err = (struct crx_err){0};
		*raced = true;
		return 0;
	}
	return r;
}

int dk_remove_image(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		    struct crx_err *err)
{
	const Runtime__V1__RemoveImageRequest *in = (const void *)req;
	ProtobufCMessage *out =
		dk_msg_new(&c->arena, &runtime__v1__remove_image_response__descriptor);
	if (!out)
		return -ENOMEM;
	_cleanup_json_ json_object *img = NULL;
	const char *ref = in->image ? in->image->image : NULL;
	int r = image_inspect(c, ref, &img, err);
	if (r == -EIO && await_removed(c, ref, REMOVAL_WAIT_MS, NULL) == 0)
		r = -ENOENT; /* it was being removed */
	if (r == -ENOENT) {
		*resp = out; /* already gone */
		return 0;
	}
	if (r < 0)
		return r;
	/* Every tag, then the image itself (it may have only digests). */
	bool raced = false;
	json_object *tags = dk_json_get(img, "RepoTags", NULL);
	for (size_t i = 0; tags && i < json_object_array_length(tags); i++) {
		const char *t = json_object_get_string(json_object_array_get_idx(tags, i));
		if (t && (r = delete_image(c, t, &raced, err)) < 0)
			return r;
	}
	const char *id = dk_json_str(img, "Id");
	if (id && (r = delete_image(c, id, &raced, err)) < 0)
		return r;
	if (id && raced && (r = await_removed(c, id, REMOVAL_WAIT_MS, err)) < 0)
		return r;
	*resp = out;
	return 0;
}

int dk_image_fs_info(struct dk_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp,
		     struct crx_err *err)
{
	_cleanup_json_ json_object *info = NULL, *images = NULL;
	int r = dk_call(c->ds->sock, "GET", "/info", NULL, &c->dl, &info, NULL, err);
	if (r == 0)
		r = dk_call(c->ds->sock, "GET", "/images/json", NULL, &c->dl, &images, NULL, err);
	if (r < 0)
		return r;
	struct dk_arena *a = &c->arena;
	const char *root = dk_json_str(info, "DockerRootDir");
	const char *driver = dk_json_str(info, "Driver");
	char *mount = dk_arena_printf(a, "%s/%s", root ? root : "/var/lib/docker",
				      driver ? driver : "overlay2");
	/* Sizes Docker already knows from its layer metadata; nothing walks
	 * the disk for this. */
	uint64_t used = 0;
	for (size_t i = 0; images && i < json_object_array_length(images); i++) {
		int64_t s = dk_json_int(json_object_array_get_idx(images, i), "Size", 0);
		if (s > 0)
			used += (uint64_t)s;
	}
	uint64_t inodes = 0;
	struct statvfs sv;
	if (mount && statvfs(mount, &sv) == 0)
		inodes = (uint64_t)(sv.f_files - sv.f_ffree);

	Runtime__V1__ImageFsInfoResponse *out =
		dk_msg_new(a, &runtime__v1__image_fs_info_response__descriptor);
	Runtime__V1__FilesystemUsage *u = dk_msg_new(a, &runtime__v1__filesystem_usage__descriptor);
	Runtime__V1__FilesystemIdentifier *fs =
		dk_msg_new(a, &runtime__v1__filesystem_identifier__descriptor);
	Runtime__V1__UInt64Value *ub = dk_msg_new(a, &runtime__v1__uint64_value__descriptor);
	Runtime__V1__UInt64Value *ui = dk_msg_new(a, &runtime__v1__uint64_value__descriptor);
	if (!out || !u || !fs || !ub || !ui || !mount)
		return -ENOMEM;
	fs->mountpoint = mount;
	ub->value = used;
	ui->value = inodes;
	u->timestamp = dk_realtime_ns();
	u->fs_id = fs;
	u->used_bytes = ub;
	u->inodes_used = ui;
	if (DK_PUSH(a, &out->n_image_filesystems, &out->image_filesystems, u) < 0)
		return -ENOMEM;
	*resp = &out->base;
	return 0;
}

int dk_ensure_pause_image(struct dk_ctx *c, struct crx_err *err)
{
	struct dk_shim *ds = c->ds;
	_cleanup_json_ json_object *img = NULL;
	int r = image_inspect(c, ds->pause_image, &img, err);
	if (r != -ENOENT)
		return r;
	pthread_mutex_lock(&ds->pause_lock);
	if (image_inspect(c, ds->pause_image, &img, NULL) == 0) {
		pthread_mutex_unlock(&ds->pause_lock);
		return 0; /* another call loaded it meanwhile */
	}
	if (!ds->pause_binary) {
		r = pull(c, ds->pause_image, NULL, err);
		pthread_mutex_unlock(&ds->pause_lock);
		return r < 0 ? crx_err_prefix(err, "sandbox image") : 0;
	}
	_cleanup_free_ char *archive = NULL, *target = NULL;
	size_t len = 0;
	r = dk_pause_archive(ds->pause_binary, ds->pause_image, &archive, &len, err);
	if (r == 0 && asprintf(&target, DK_API_PREFIX "/images/load?quiet=1") < 0)
		r = crx_err_set(err, -ENOMEM, "out of memory");
	if (r == 0) {
		struct dk_http_request req = {
			.method = "POST",
			.target = target,
			.content_type = "application/x-tar",
			.body = archive,
			.body_len = len,
		};
		_cleanup_http_ struct dk_http_conn *conn = NULL;
		r = dk_http_open(ds->sock, &req, &c->dl, &conn, err);
		if (r == 0 && dk_http_status(conn) >= 400) {
			_cleanup_free_ char *body = NULL;
			dk_http_read_all(conn, 64 * 1024, &body, NULL, NULL);
			r = crx_err_set(err, dk_status_errno(dk_http_status(conn)), "docker: %s",
					body ? body : "load failed");
		} else if (r == 0) {
			r = dk_json_stream_check(conn, err);
		}
	}
	pthread_mutex_unlock(&ds->pause_lock);
	if (r < 0)
		return crx_err_prefix(err, "loading the sandbox image %s from %s", ds->pause_image,
				      ds->pause_binary);
	return 0;
}
