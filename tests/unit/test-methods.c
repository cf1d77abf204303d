/* The method table matches the schema: every service method, streaming
 * flags from the .proto, lookups by gRPC path. */
#include "config.h"

#include "common/util.h"
#include "cri/api.pb-c.h"
#include "cri/methods.h"
#include "tap.h"

int main(void)
{
	size_t want = runtime__v1__runtime_service__descriptor.n_methods +
		      runtime__v1__image_service__descriptor.n_methods;
	is_int(cri_method_count(), want, "one entry per method of both services");

	const struct cri_method *m = cri_method_find("/runtime.v1.RuntimeService/Version");
	ok(m && m->request == &runtime__v1__version_request__descriptor, "Version found");
	ok(m && !m->server_streaming && !m->image_service, "Version is a unary runtime method");

	m = cri_method_find("/runtime.v1.ImageService/PullImage");
	ok(m && m->image_service && m->response == &runtime__v1__pull_image_response__descriptor,
	   "PullImage is an image method");

	m = cri_method_find("/runtime.v1.RuntimeService/GetContainerEvents");
	ok(m && m->server_streaming, "GetContainerEvents streams");
	m = cri_method_find("/runtime.v1.ImageService/StreamImages");
	ok(m && m->server_streaming, "StreamImages streams");

	size_t streaming = 0;
	for (size_t i = 0; i < cri_method_count(); i++) {
		const struct cri_method *e = cri_method_at(i);
		streaming += e->server_streaming;
		/* Only the Stream* family and GetContainerEvents stream today. */
		if (e->server_streaming && strncmp(e->name, "Stream", 6) != 0 &&
		    strcmp(e->name, "GetContainerEvents") != 0)
			ok(false, "%s unexpectedly streams", e->name);
	}
	is_int(streaming, 7, "seven server-streaming methods");

	ok(cri_method_find("/runtime.v1.RuntimeService/NoSuchMethod") == NULL,
	   "unknown methods are not found");
	ok(cri_method_find("/runtime.v1alpha2.RuntimeService/Version") == NULL,
	   "other API versions are not CRI v1");
	ok(cri_method_at(cri_method_count()) == NULL, "index past the end");

	ok(cri_method_in_v1("/runtime.v1.RuntimeService/Version"), "a known method is v1");
	ok(cri_method_in_v1("/runtime.v1.ImageService/NoSuchMethod"),
	   "a newer method of a v1 service is v1");
	static const char *const not_v1[] = {
		"/runtime.v1alpha2.RuntimeService/RunPodSandbox",
		"/containerd.services.tasks.v1.Tasks/Create",
		"/runtime.v1.RuntimeService/",
		"/runtime.v1.RuntimeService",
		"/runtime.v1.RuntimeService/a/b",
		"runtime.v1.RuntimeService/Version",
		"/runtime.v1.RuntimeServiceX/Version",
		"",
	};
	for (size_t i = 0; i < ARRAY_SIZE(not_v1); i++)
		ok(!cri_method_in_v1(not_v1[i]), "\"%s\" is not CRI v1", not_v1[i]);
	return tap_done();
}
