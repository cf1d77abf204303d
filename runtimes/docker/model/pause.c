#include "config.h"

#include "runtimes/docker/model/pause.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "common/util.h"
#include "runtimes/docker/engine/json.h"
#include "runtimes/docker/model/checkpoint.h"

#define PAUSE_MAX (64 * MIB)
/* Fixed times keep the archive, and so the image ID, reproducible. */
#define MTIME   946684800 /* 2000-01-01T00:00:00Z */
#define CREATED "2000-01-01T00:00:00Z"

int dk_sha256(const void *data, size_t len, char out[72])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return -EIO;
	strcpy(out, "sha256:");
	for (unsigned i = 0; i < 32; i++)
		sprintf(out + 7 + 2 * i, "%02x", md[i]);
	return 0;
}

static void *tar_grow(struct dk_tar *t, size_t n)
{
	if (t->failed)
		return NULL;
	if (t->cap - t->len < n) {
		size_t cap = t->cap ? t->cap : 65536;
		while (cap - t->len < n)
			cap *= 2;
		char *more = realloc(t->data, cap);
		if (!more) {
			t->failed = 1;
			return NULL;
		}
		t->data = more;
		t->cap = cap;
	}
	void *p = t->data + t->len;
	memset(p, 0, n);
	t->len += n;
	return p;
}

static void tar_header(struct dk_tar *t, const char *name, size_t size, unsigned mode, char type)
{
	unsigned char *h = tar_grow(t, 512);
	if (!h)
		return;
	if (strlen(name) >= 100) {
		t->failed = 1;
		return;
	}
	memcpy(h, name, strlen(name));
	snprintf((char *)h + 100, 8, "%07o", mode);
	snprintf((char *)h + 108, 8, "%07o", 0);
	snprintf((char *)h + 116, 8, "%07o", 0);
	snprintf((char *)h + 124, 12, "%011zo", size);
	snprintf((char *)h + 136, 12, "%011o", MTIME);
	memset(h + 148, ' ', 8);
	h[156] = (unsigned char)type;
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	unsigned sum = 0;
	for (int i = 0; i < 512; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	h[155] = ' ';
}

void dk_tar_file(struct dk_tar *t, const char *name, const void *data, size_t len, unsigned mode)
{
	tar_header(t, name, len, mode, '0');
	char *p = tar_grow(t, (len + 511) & ~(size_t)511);
	if (p && len)
		memcpy(p, data, len);
}

void dk_tar_dir(struct dk_tar *t, const char *name)
{
	tar_header(t, name, 0, 0755, '5');
}

void dk_tar_finish(struct dk_tar *t)
{
	tar_grow(t, 1024);
}

/* The image architecture, in Go's words (as Docker checks it). */
static const char *go_arch(void)
{
	static const struct {
		const char *machine, *arch;
	} names[] = {
		{"x86_64", "amd64"}, {"aarch64", "arm64"},   {"ppc64le", "ppc64le"},
		{"s390x", "s390x"},  {"riscv64", "riscv64"}, {"i686", "386"},
	};
	struct utsname u;
	if (uname(&u) == 0)
		for (size_t i = 0; i < ARRAY_SIZE(names); i++)
			if (streq(u.machine, names[i].machine))
				return names[i].arch;
	return "amd64";
}

int dk_pause_archive(const char *binary, const char *ref, char **out, size_t *len,
		     struct crx_err *err)
{
	_cleanup_free_ char *bin = NULL;
	size_t bin_len;
	int r = dk_read_file(binary, PAUSE_MAX, &bin, &bin_len, err);
	if (r < 0)
		return crx_err_prefix(err, "pause program");

	struct dk_tar layer = {0};
	dk_tar_file(&layer, "pause", bin, bin_len, 0755);
	dk_tar_finish(&layer);
	char layer_id[72];
	if (layer.failed || dk_sha256(layer.data, layer.len, layer_id) < 0) {
		free(layer.data);
		return crx_err_set(err, -ENOMEM, "cannot build the pause layer");
	}

	_cleanup_json_ json_object *cfg = json_object_new_object();
	json_object *c = json_object_new_object(), *entry = json_object_new_array(),
		    *rootfs = json_object_new_object(), *diffs = json_object_new_array();
	r = dk_json_add_str(cfg, "architecture", go_arch());
	r |= dk_json_add_str(cfg, "os", "linux");
	r |= dk_json_add_str(cfg, "created", CREATED);
	r |= dk_json_add(cfg, "config", c);
	r |= dk_json_add(c, "Entrypoint", entry);
	r |= dk_json_append_str(entry, "/pause");
	r |= dk_json_add(cfg, "rootfs", rootfs);
	r |= dk_json_add_str(rootfs, "type", "layers");
	r |= dk_json_add(rootfs, "diff_ids", diffs);
	r |= dk_json_append_str(diffs, layer_id);
	if (r) {
		free(layer.data);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	const char *cfg_text = dk_json_text(cfg);
	char cfg_id[72];
	dk_sha256(cfg_text, strlen(cfg_text), cfg_id);

	char cfg_name[100], layer_dir[100], layer_name[100];
	snprintf(cfg_name, sizeof(cfg_name), "%.64s.json", cfg_id + 7);
	snprintf(layer_dir, sizeof(layer_dir), "%.64s", layer_id + 7);
	snprintf(layer_name, sizeof(layer_name), "%.64s/layer.tar", layer_id + 7);

	_cleanup_json_ json_object *manifest = json_object_new_array();
	json_object *m = json_object_new_object(), *tags = json_object_new_array(),
		    *layers = json_object_new_array();
	r = manifest && m && json_object_array_add(manifest, m) == 0 ? 0 : -ENOMEM;
	r |= dk_json_add_str(m, "Config", cfg_name);
	r |= dk_json_add(m, "RepoTags", tags);
	r |= dk_json_append_str(tags, ref);
	r |= dk_json_add(m, "Layers", layers);
	r |= dk_json_append_str(layers, layer_name);
	if (r) {
		free(layer.data);
		return crx_err_set(err, -ENOMEM, "out of memory");
	}
	const char *man_text = dk_json_text(manifest);

	struct dk_tar archive = {0};
	dk_tar_file(&archive, cfg_name, cfg_text, strlen(cfg_text), 0644);
	dk_tar_dir(&archive, layer_dir);
	dk_tar_file(&archive, layer_name, layer.data, layer.len, 0644);
	dk_tar_file(&archive, "manifest.json", man_text, strlen(man_text), 0644);
	dk_tar_finish(&archive);
	free(layer.data);
	if (archive.failed) {
		free(archive.data);
		return crx_err_set(err, -ENOMEM, "cannot build the pause image archive");
	}
	*out = archive.data;
	*len = archive.len;
	return 0;
}
