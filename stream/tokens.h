/* Single-use tokens for the URLs a CRI call hands out, and the requests
 * they stand for. */
#pragma once

#include <stdint.h>

#include "common/err.h"
#include "stream/stream.h"

#define TOKEN_BYTES 16
#define TOKEN_CHARS 22 /* URL-safe base64 of TOKEN_BYTES */
struct token_cache;
int token_cache_new(unsigned max, unsigned ttl_ms, struct token_cache **out);
void token_cache_free(struct token_cache *c);
/* Takes req. now_ms is a monotonic clock (injected for the tests). */
int token_cache_insert(struct token_cache *c, struct stream_request *req, uint64_t now_ms,
		       char token[TOKEN_CHARS + 1], struct crx_err *err);
/* The request, removed from the cache; NULL if unknown, used or expired. */
struct stream_request *token_cache_consume(struct token_cache *c, const char *token,
					   uint64_t now_ms);
unsigned token_cache_count(struct token_cache *c, uint64_t now_ms);

struct stream_request *stream_request_dup(const struct stream_request *req);
void stream_request_free(struct stream_request *req);
int stream_request_validate(const struct stream_request *req, struct crx_err *err);
