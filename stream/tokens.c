/* Single-use tokens: each registered request waits under a random token
 * until a client consumes it or it expires. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/util.h"
#include "stream/codec.h"
#include "stream/tokens.h"

struct token_entry {
	char token[TOKEN_CHARS + 1];
	uint64_t expires_ms;
	struct stream_request *req;
};

struct token_cache {
	pthread_mutex_t lock;
	unsigned max, ttl_ms, n;
	struct token_entry *e; /* max entries, the first n used */
};

int token_cache_new(unsigned max, unsigned ttl_ms, struct token_cache **out)
{
	struct token_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->e = calloc(max ? max : 1, sizeof(*c->e));
	if (!c->e) {
		free(c);
		return -ENOMEM;
	}
	pthread_mutex_init(&c->lock, NULL);
	c->max = max;
	c->ttl_ms = ttl_ms;
	*out = c;
	return 0;
}

void token_cache_free(struct token_cache *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n; i++)
		stream_request_free(c->e[i].req);
	pthread_mutex_destroy(&c->lock);
	free(c->e);
	free(c);
}

static void drop(struct token_cache *c, unsigned i)
{
	c->e[i] = c->e[--c->n];
}

static void expire(struct token_cache *c, uint64_t now_ms)
{
	for (unsigned i = 0; i < c->n;) {
		if (c->e[i].expires_ms <= now_ms) {
			stream_request_free(c->e[i].req);
			drop(c, i);
		} else {
			i++;
		}
	}
}

int token_cache_insert(struct token_cache *c, struct stream_request *req, uint64_t now_ms,
		       char token[TOKEN_CHARS + 1], struct crx_err *err)
{
	uint8_t raw[TOKEN_BYTES];
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		stream_request_free(req);
		return crx_err_set(err, -EIO, "no random bytes for a streaming token");
	}
	pthread_mutex_lock(&c->lock);
	expire(c, now_ms);
	if (c->n >= c->max) {
		unsigned max = c->max;
		pthread_mutex_unlock(&c->lock);
		stream_request_free(req);
		return crx_err_set(err, -ENOSPC,
				   "too many streaming requests outstanding (%u, each valid for "
				   "%u s until used); try again later",
				   max, c->ttl_ms / 1000);
	}
	struct token_entry *e = &c->e[c->n++];
	b64_encode(raw, sizeof(raw), e->token, true);
	e->expires_ms = now_ms + c->ttl_ms;
	e->req = req;
	memcpy(token, e->token, TOKEN_CHARS + 1);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

struct stream_request *token_cache_consume(struct token_cache *c, const char *token,
					   uint64_t now_ms)
{
	struct stream_request *req = NULL;
	/* Every token has the same length, so the length tells nothing; the
	 * bytes are compared in constant time, so how long a comparison takes
	 * does not tell how much of a guess was right. */
	if (strnlen(token, TOKEN_CHARS + 1) != TOKEN_CHARS)
		return NULL;
	pthread_mutex_lock(&c->lock);
	expire(c, now_ms);
	for (unsigned i = 0; i < c->n; i++) {
		if (CRYPTO_memcmp(c->e[i].token, token, TOKEN_CHARS) == 0) {
			req = c->e[i].req;
			drop(c, i);
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return req;
}

unsigned token_cache_count(struct token_cache *c, uint64_t now_ms)
{
	pthread_mutex_lock(&c->lock);
	expire(c, now_ms);
	unsigned n = c->n;
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* --- requests --- */

struct stream_request *stream_request_dup(const struct stream_request *req)
{
	struct stream_request *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	*r = *req;
	r->id = strdup(req->id ? req->id : "");
	r->cmd = NULL;
	r->ports = NULL;
	if (!r->id)
		goto fail;
	if (req->cmd) {
		size_t n = 0;
		while (req->cmd[n])
			n++;
		char **cmd = calloc(n + 1, sizeof(*cmd));
		if (!cmd)
			goto fail;
		r->cmd = (const char *const *)cmd;
		for (size_t i = 0; i < n; i++)
			if (!(cmd[i] = strdup(req->cmd[i])))
				goto fail;
	}
	if (req->n_ports) {
		uint16_t *ports = calloc(req->n_ports, sizeof(*ports));
		if (!ports)
			goto fail;
		memcpy(ports, req->ports, req->n_ports * sizeof(*ports));
		r->ports = ports;
	}
	return r;
fail:
	stream_request_free(r);
	return NULL;
}

void stream_request_free(struct stream_request *req)
{
	if (!req)
		return;
	free((char *)req->id);
	if (req->cmd)
		for (char **p = (char **)req->cmd; *p; p++)
			free(*p);
	free((void *)req->cmd);
	free((void *)req->ports);
	free(req);
}

int stream_request_validate(const struct stream_request *req, struct crx_err *err)
{
	switch (req->kind) {
	case STREAM_EXEC:
	case STREAM_ATTACH:
		if (!req->id || !*req->id)
			return crx_err_set(err, -EINVAL, "missing required container_id");
		if (req->kind == STREAM_EXEC && (!req->cmd || !req->cmd[0]))
			return crx_err_set(err, -EINVAL, "missing required cmd");
		/* A terminal has one output: stderr cannot be multiplexed into it. */
		if (req->tty && req->use_stderr)
			return crx_err_set(err, -EINVAL, "tty and stderr cannot both be true");
		if (!req->use_stdin && !req->use_stdout && !req->use_stderr)
			return crx_err_set(err, -EINVAL,
					   "one of stdin, stdout, or stderr must be set");
		return 0;
	case STREAM_PORT_FORWARD:
		if (!req->id || !*req->id)
			return crx_err_set(err, -EINVAL, "missing required pod_sandbox_id");
		for (size_t i = 0; i < req->n_ports; i++)
			if (req->ports[i] == 0)
				return crx_err_set(err, -EINVAL, "port 0 cannot be forwarded");
		return 0;
	}
	return crx_err_set(err, -EINVAL, "unknown streaming request kind %d", (int)req->kind);
}
