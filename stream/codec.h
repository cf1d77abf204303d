/* The streaming server's codecs: byte buffers, base64, SPDY/3 and
 * WebSocket framing, the v4 Status JSON and the resize stream. Pure
 * functions over bytes, below everything else in stream/ (and fuzzed). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <zlib.h>

#include "common/err.h"
#include "stream/stream.h"

/* --- a byte buffer that refuses to grow past max --- */
struct sbuf {
	uint8_t *data;
	size_t len, cap, max;
};
int sbuf_append(struct sbuf *b, const void *p, size_t n); /* -ENOBUFS past max */
void sbuf_consume(struct sbuf *b, size_t n);
void sbuf_free(struct sbuf *b);
static inline size_t sbuf_room(const struct sbuf *b)
{
	return b->max > b->len ? b->max - b->len : 0;
}

/* --- base64 (standard alphabet with padding, or URL-safe without) --- */
size_t b64_encode(const uint8_t *in, size_t n, char *out, bool url); /* out: 4*((n+2)/3)+1 */
ssize_t b64_decode(const char *in, size_t n, uint8_t *out);          /* -EINVAL if malformed */

/* --- SPDY/3.1 framing --- */
enum {
	SPDY_SYN_STREAM = 1,
	SPDY_SYN_REPLY = 2,
	SPDY_RST_STREAM = 3,
	SPDY_SETTINGS = 4,
	SPDY_PING = 6,
	SPDY_GOAWAY = 7,
	SPDY_HEADERS = 8,
	SPDY_WINDOW_UPDATE = 9,
};
#define SPDY_FLAG_FIN           0x01
#define SPDY_RST_PROTOCOL_ERROR 1
#define SPDY_RST_INVALID_STREAM 2
#define SPDY_RST_REFUSED_STREAM 3
#define SPDY_RST_CANCEL         5
#define SPDY_RST_STREAM_IN_USE  8
#define SPDY_GOAWAY_OK          0
#define SPDY_GOAWAY_PROTOCOL    1
#define SPDY_GOAWAY_INTERNAL    2
#define SPDY_HEADER_BLOCK_MAX   (64 * 1024) /* decompressed */
#define SPDY_MAX_HEADERS        32

extern const uint8_t spdy_dictionary[];
extern const size_t spdy_dictionary_len;

struct spdy_frame {
	bool control;
	uint16_t version, type; /* control frames */
	uint32_t stream_id;     /* data frames */
	uint8_t flags;
	uint32_t length;
	const uint8_t *payload;
};
/* 1: a whole frame at buf (*used bytes); 0: need more; -EMSGSIZE: longer than max. */
int spdy_frame_parse(const uint8_t *buf, size_t len, size_t max, struct spdy_frame *f,
		     size_t *used);

/* One compression context per direction for the whole session (SPDY/3). */
struct spdy_zlib {
	z_stream in, out;
	bool in_ok, out_ok;
};
int spdy_zlib_init(struct spdy_zlib *z);
void spdy_zlib_free(struct spdy_zlib *z);

struct spdy_headers {
	uint8_t *block; /* the decompressed block; names and values point into it */
	size_t n;
	struct {
		const char *name, *value;
	} h[SPDY_MAX_HEADERS];
};
int spdy_headers_decode(struct spdy_zlib *z, const uint8_t *p, size_t n, struct spdy_headers *out,
			struct crx_err *err);
const char *spdy_headers_get(const struct spdy_headers *h, const char *name);
void spdy_headers_free(struct spdy_headers *h);
/* Compresses a block of n name/value pairs (kv[2i], kv[2i+1]) into out. */
int spdy_headers_encode(struct spdy_zlib *z, const char *const *kv, size_t n, struct sbuf *out);

int spdy_put_control(struct sbuf *out, uint16_t type, uint8_t flags, const void *p, size_t n);
int spdy_put_data(struct sbuf *out, uint32_t stream, uint8_t flags, const void *p, size_t n);
/* SYN_STREAM (for test clients) and SYN_REPLY with a compressed header block. */
int spdy_put_syn(struct sbuf *out, struct spdy_zlib *z, uint16_t type, uint32_t stream,
		 uint8_t flags, const char *const *kv, size_t n);
int spdy_put_u32s(struct sbuf *out, uint16_t type, uint32_t a, uint32_t b, bool two);

/* --- WebSocket (RFC 6455) --- */
enum {
	WS_CONT = 0x0,
	WS_TEXT = 0x1,
	WS_BINARY = 0x2,
	WS_CLOSE = 0x8,
	WS_PING = 0x9,
	WS_PONG = 0xa,
};
struct ws_frame {
	bool fin, masked;
	uint8_t opcode;
	uint8_t mask[4];
	uint64_t length;
	const uint8_t *payload; /* still masked: see ws_unmask() */
};
/* 1: a whole frame (*used bytes); 0: need more; -EMSGSIZE: longer than max;
 * -EPROTO: reserved bits or an invalid control frame. Changes nothing, so
 * a frame can be parsed again when it could not be handled yet. */
int ws_frame_parse(const uint8_t *buf, size_t len, size_t max, struct ws_frame *f, size_t *used);
/* Copies the payload to dst (which may be the payload itself), unmasked. */
void ws_unmask(const struct ws_frame *f, uint8_t *dst);
/* Appends a frame; mask NULL for the server's unmasked frames. */
int ws_put_frame(struct sbuf *out, uint8_t opcode, const void *p, size_t n, const uint8_t *mask);
/* Appends only a header for n payload bytes, checking there is room for both. */
int ws_put_header(struct sbuf *out, uint8_t opcode, size_t n, const uint8_t *mask);
/* Sec-WebSocket-Accept for a Sec-WebSocket-Key. */
int ws_accept_key(const char *key, char out[29]);

/* --- the v4 error stream --- */
/* A metav1.Status: Success for exit 0, NonZeroExitCode with an ExitCode
 * cause for > 0, InternalError carrying message for a negative errno. */
char *stream_status_json(int result, const char *message);

/* Parses the resize stream: concatenated {"Width":W,"Height":H} objects.
 * Calls fn for each complete object; keeps a partial one for the next call. */
struct resize_parser {
	char buf[512];
	size_t len;
};
int resize_parser_feed(struct resize_parser *p, const uint8_t *data, size_t n,
		       void (*fn)(const struct stream_winsize *ws, void *arg), void *arg);
