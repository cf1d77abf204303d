/* The CRI methods crimux knows, from the schema: full gRPC path, message
 * descriptors and whether the reply is a server stream. */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

struct cri_method {
	const char *path; /* "/runtime.v1.RuntimeService/Version" */
	const char *name; /* "Version" */
	bool image_service;
	bool server_streaming;
	const ProtobufCMessageDescriptor *request;
	const ProtobufCMessageDescriptor *response;
};

/* NULL for a method the schema does not have. */
const struct cri_method *cri_method_find(const char *path);
/* Whether path is "/SERVICE/NAME" for one of the CRI v1 services, NAME
 * known to the schema or not: a method newer than it is still CRI v1. */
bool cri_method_in_v1(const char *path);
size_t cri_method_count(void);
/* The position of m in the table, for per-method arrays. */
size_t cri_method_index(const struct cri_method *m);
const struct cri_method *cri_method_at(size_t i);
