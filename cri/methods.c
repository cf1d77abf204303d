#include "config.h"

#include "cri/methods.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "cri/api.pb-c.h"

/* protobuf-c drops the `stream` keyword; the build extracts these names from
 * api.proto. */
static const char *const streaming_names[] = {
#include "cri/streaming.inc"
};

static struct cri_method *table;
static size_t table_len;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static int by_path(const void *a, const void *b)
{
	return strcmp(((const struct cri_method *)a)->path, ((const struct cri_method *)b)->path);
}

static bool is_streaming(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(streaming_names); i++)
		if (streq(streaming_names[i], name))
			return true;
	return false;
}

static void build_table(void)
{
	const ProtobufCServiceDescriptor *services[] = {
		&runtime__v1__runtime_service__descriptor,
		&runtime__v1__image_service__descriptor,
	};
	size_t n = 0;
	for (size_t s = 0; s < ARRAY_SIZE(services); s++)
		n += services[s]->n_methods;
	table = calloc(n, sizeof(*table));
	if (!table)
		abort(); /* at start-up, nothing sensible to do */
	for (size_t s = 0; s < ARRAY_SIZE(services); s++) {
		for (unsigned i = 0; i < services[s]->n_methods; i++) {
			const ProtobufCMethodDescriptor *m = &services[s]->methods[i];
			struct cri_method *e = &table[table_len++];
			char *path;
			if (asprintf(&path, "/%s/%s", services[s]->name, m->name) < 0)
				abort();
			*e = (struct cri_method){
				.path = path,
				.name = m->name,
				.image_service = s == 1,
				.server_streaming = is_streaming(m->name),
				.request = m->input,
				.response = m->output,
			};
		}
	}
	qsort(table, table_len, sizeof(*table), by_path);
}

const struct cri_method *cri_method_find(const char *path)
{
	pthread_once(&table_once, build_table);
	struct cri_method key = {.path = path};
	return bsearch(&key, table, table_len, sizeof(*table), by_path);
}

bool cri_method_in_v1(const char *path)
{
	static const char *const services[] = {
		"/runtime.v1.RuntimeService/",
		"/runtime.v1.ImageService/",
	};
	for (size_t i = 0; i < ARRAY_SIZE(services); i++) {
		size_t n = strlen(services[i]);
		if (strncmp(path, services[i], n) == 0)
			return path[n] && !strchr(path + n, '/');
	}
	return false;
}

size_t cri_method_count(void)
{
	pthread_once(&table_once, build_table);
	return table_len;
}

const struct cri_method *cri_method_at(size_t i)
{
	pthread_once(&table_once, build_table);
	return i < table_len ? &table[i] : NULL;
}

size_t cri_method_index(const struct cri_method *m)
{
	return (size_t)(m - table);
}
