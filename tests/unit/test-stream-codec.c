/* The streaming server's wire formats: base64, SPDY/3 frames and zlib
 * header blocks, WebSocket frames and handshake, Status JSON, the resize
 * stream and the HTTP request parser. */
#include "config.h"

#include <errno.h>
#include <zlib.h>

#include <json-c/json.h>

#include "common/util.h"
#include "stream/codec.h"
#include "stream/http.h"
#include "stream/tokens.h"
#include "tests/unit/tap.h"

static void test_base64(void)
{
	char out[64];
	uint8_t back[64];
	b64_encode((const uint8_t *)"hello", 5, out, false);
	is_str(out, "aGVsbG8=", "base64 with padding");
	b64_encode((const uint8_t *)"\xfb\xff", 2, out, true);
	is_str(out, "-_8", "URL-safe base64 without padding");
	ssize_t n = b64_decode("aGVsbG8=", 8, back);
	ok(n == 5 && memcmp(back, "hello", 5) == 0, "base64 decodes");
	is_int(b64_decode("a$==", 4, back), -EINVAL, "malformed base64 is refused");
}

static void test_dictionary(void)
{
	is_int(spdy_dictionary_len, 1423, "SPDY/3 dictionary is 1423 bytes");
	is_int(adler32(1, spdy_dictionary, spdy_dictionary_len), 0xe3c6a7c2,
	       "SPDY/3 dictionary id (adler32) matches");
}

/* Two header blocks from Python's zlib (compressobj(zdict=SPDY/3 dictionary),
 * Z_SYNC_FLUSH after each): the second needs the first's context. */
static const uint8_t ref1[] = {0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46,
			       0x70, 0x3a, 0x2b, 0x29, 0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25,
			       0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00, 0xff, 0xff};
static const uint8_t ref2[] = {0x02, 0xa5, 0x47, 0x0c, 0x29, 0x50, 0x29, 0x93, 0x08,
			       0x29, 0xb0, 0x8b, 0xc0, 0x79, 0xc3, 0xc2, 0xc0, 0xc2,
			       0x00, 0x48, 0x73, 0x16, 0x41, 0x22, 0x38, 0x13, 0x94,
			       0xf0, 0x19, 0x0d, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff};

static void test_header_blocks(void)
{
	struct spdy_zlib a, b;
	struct spdy_headers h;
	struct crx_err err = {0};
	ok(spdy_zlib_init(&a) == 0 && spdy_zlib_init(&b) == 0, "zlib contexts");

	ok(spdy_headers_decode(&a, ref1, sizeof(ref1), &h, &err) == 0, "reference block 1 decodes");
	is_str(spdy_headers_get(&h, "streamtype"), "error", "reference block 1: streamtype");
	spdy_headers_free(&h);
	ok(spdy_headers_decode(&a, ref2, sizeof(ref2), &h, &err) == 0,
	   "reference block 2 decodes with the shared context");
	is_int(h.n, 3, "reference block 2 has 3 headers");
	is_str(spdy_headers_get(&h, "port"), "8080", "reference block 2: port");
	is_str(spdy_headers_get(&h, "requestID"), "0", "lookup ignores case");
	spdy_headers_free(&h);

	/* Our encoder into a fresh decoder, twice over one context. */
	struct sbuf out = {.max = 4096};
	const char *kv1[] = {"streamtype", "stdout"}, *kv2[] = {"streamtype", "stdin", "x", "yz"};
	ok(spdy_headers_encode(&a, kv1, 1, &out) == 0, "encode block 1");
	ok(spdy_headers_decode(&b, out.data, out.len, &h, &err) == 0, "round trip block 1");
	is_str(spdy_headers_get(&h, "streamtype"), "stdout", "round trip block 1: value");
	spdy_headers_free(&h);
	out.len = 0;
	ok(spdy_headers_encode(&a, kv2, 2, &out) == 0, "encode block 2");
	ok(spdy_headers_decode(&b, out.data, out.len, &h, &err) == 0, "round trip block 2");
	ok(h.n == 2 && streq(spdy_headers_get(&h, "x"), "yz"), "round trip block 2: values");
	spdy_headers_free(&h);

	/* Garbage does not inflate: an error, not a crash. */
	struct spdy_zlib c;
	spdy_zlib_init(&c);
	const uint8_t junk[] = {0x12, 0x34, 0x56, 0x78, 0x9a};
	ok(spdy_headers_decode(&c, junk, sizeof(junk), &h, &err) < 0, "garbage block refused");
	has_str(err.msg, "inflate", "the error says why");
	/* A block claiming more headers than it holds. */
	struct spdy_zlib d, e;
	spdy_zlib_init(&d);
	spdy_zlib_init(&e);
	out.len = 0;
	uint8_t raw[] = {0, 0, 0, 2, 0, 0, 0, 1, 'a', 0, 0, 0, 9, 'b'};
	z_stream *zs = &d.out;
	uint8_t comp[256];
	zs->next_in = raw;
	zs->avail_in = sizeof(raw);
	zs->next_out = comp;
	zs->avail_out = sizeof(comp);
	deflate(zs, Z_SYNC_FLUSH);
	ok(spdy_headers_decode(&e, comp, sizeof(comp) - zs->avail_out, &h, &err) == -EPROTO,
	   "truncated header block refused");
	sbuf_free(&out);
	spdy_zlib_free(&a);
	spdy_zlib_free(&b);
	spdy_zlib_free(&c);
	spdy_zlib_free(&d);
	spdy_zlib_free(&e);
}

static void test_spdy_frames(void)
{
	struct sbuf out = {.max = 1 << 20};
	struct spdy_frame f;
	size_t used;
	spdy_put_data(&out, 5, SPDY_FLAG_FIN, "abc", 3);
	const uint8_t want[] = {0, 0, 0, 5, 1, 0, 0, 3, 'a', 'b', 'c'};
	ok(out.len == sizeof(want) && memcmp(out.data, want, sizeof(want)) == 0,
	   "DATA frame layout");
	ok(spdy_frame_parse(out.data, out.len, 1024, &f, &used) == 1 && !f.control &&
		   f.stream_id == 5 && f.flags == SPDY_FLAG_FIN && f.length == 3 && used == 11,
	   "DATA frame parses");
	is_int(spdy_frame_parse(out.data, 10, 1024, &f, &used), 0, "partial frame: need more");
	is_int(spdy_frame_parse(out.data, out.len, 2, &f, &used), -EMSGSIZE, "oversized frame");

	out.len = 0;
	spdy_put_u32s(&out, SPDY_GOAWAY, 7, SPDY_GOAWAY_PROTOCOL, true);
	const uint8_t goaway[] = {0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 1};
	ok(out.len == sizeof(goaway) && memcmp(out.data, goaway, sizeof(goaway)) == 0,
	   "GOAWAY layout");
	ok(spdy_frame_parse(out.data, out.len, 1024, &f, &used) == 1 && f.control &&
		   f.version == 3 && f.type == SPDY_GOAWAY && f.length == 8,
	   "control frame parses");

	struct spdy_zlib a, b;
	spdy_zlib_init(&a);
	spdy_zlib_init(&b);
	out.len = 0;
	const char *kv[] = {"streamtype", "error"};
	spdy_put_syn(&out, &a, SPDY_SYN_STREAM, 1, 0, kv, 1);
	ok(spdy_frame_parse(out.data, out.len, 1024, &f, &used) == 1 && f.type == SPDY_SYN_STREAM &&
		   f.length > 10,
	   "SYN_STREAM frame");
	struct spdy_headers h;
	ok(spdy_headers_decode(&b, f.payload + 10, f.length - 10, &h, NULL) == 0 &&
		   streq(spdy_headers_get(&h, "streamtype"), "error"),
	   "SYN_STREAM header block after 10 bytes of ids, priority and slot");
	spdy_headers_free(&h);
	sbuf_free(&out);
	spdy_zlib_free(&a);
	spdy_zlib_free(&b);
}

static void test_websocket(void)
{
	char accept[32];
	ok(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", accept) == 0, "accept key computed");
	is_str(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept key of RFC 6455's example");

	/* RFC 6455 5.7: a masked "Hello" from a client. */
	uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
	struct ws_frame f;
	size_t used;
	uint8_t text[16];
	ok(ws_frame_parse(masked, sizeof(masked), 1024, &f, &used) == 1 && f.masked && f.fin &&
		   f.opcode == WS_TEXT && f.length == 5 && used == sizeof(masked),
	   "masked frame parses");
	ws_unmask(&f, text);
	ok(memcmp(text, "Hello", 5) == 0, "masked frame unmasks to Hello");
	is_int(ws_frame_parse(masked, 8, 1024, &f, &used), 0, "partial frame: need more");

	struct sbuf out = {.max = 1 << 20};
	ws_put_frame(&out, WS_TEXT, "Hello", 5, NULL);
	const uint8_t plain[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
	ok(out.len == sizeof(plain) && memcmp(out.data, plain, sizeof(plain)) == 0,
	   "server frame is unmasked (RFC example)");

	static uint8_t big[70000];
	const uint8_t mask[4] = {1, 2, 3, 4};
	out.len = 0;
	ws_put_frame(&out, WS_BINARY, big, 256, mask);
	ok(out.data[1] == (0x80 | 126) && out.data[2] == 1 && out.data[3] == 0, "16-bit length");
	ok(ws_frame_parse(out.data, out.len, 1 << 20, &f, &used) == 1 && f.length == 256,
	   "16-bit length parses");
	ws_unmask(&f, big);
	ok(big[0] == 0 && big[255] == 0, "masking round trip");
	out.len = 0;
	ws_put_frame(&out, WS_BINARY, big, 65536, NULL);
	ok(out.data[1] == 127 && out.data[7] == 1 && out.data[8] == 0, "64-bit length");
	ok(ws_frame_parse(out.data, out.len, 1 << 20, &f, &used) == 1 && f.length == 65536,
	   "64-bit length parses");
	is_int(ws_frame_parse(out.data, out.len, 1000, &f, &used), -EMSGSIZE, "oversized frame");

	uint8_t rsv[] = {0xc1, 0x80, 0, 0, 0, 0};
	is_int(ws_frame_parse(rsv, sizeof(rsv), 1024, &f, &used), -EPROTO, "reserved bit refused");
	uint8_t frag_ping[] = {0x09, 0x80, 0, 0, 0, 0};
	is_int(ws_frame_parse(frag_ping, sizeof(frag_ping), 1024, &f, &used), -EPROTO,
	       "fragmented control frame refused");
	uint8_t long_close[] = {0x88, 0xfe, 0, 200};
	is_int(ws_frame_parse(long_close, sizeof(long_close), 1024, &f, &used), -EPROTO,
	       "control frame over 125 bytes refused");
	uint8_t bad_op[] = {0x83, 0x80, 0, 0, 0, 0};
	is_int(ws_frame_parse(bad_op, sizeof(bad_op), 1024, &f, &used), -EPROTO,
	       "reserved opcode refused");
	sbuf_free(&out);
}

static const char *jget(json_object *o, const char *path)
{
	char copy[128];
	snprintf(copy, sizeof(copy), "%s", path);
	json_object *v = o;
	for (char *save = NULL, *k = strtok_r(copy, ".", &save); k;
	     k = strtok_r(NULL, ".", &save)) {
		if (json_object_is_type(v, json_type_array))
			v = json_object_array_get_idx(v, atoi(k));
		else if (!json_object_object_get_ex(v, k, &v))
			return NULL;
	}
	return v ? json_object_get_string(v) : NULL;
}

static void test_status(void)
{
	char *s = stream_status_json(0, NULL);
	is_str(s, "{\"metadata\":{},\"status\":\"Success\"}", "Success status");
	free(s);
	s = stream_status_json(42, NULL);
	json_object *o = json_tokener_parse(s);
	is_str(jget(o, "status"), "Failure", "exit 42: Failure");
	is_str(jget(o, "reason"), "NonZeroExitCode", "exit 42: reason");
	is_str(jget(o, "details.causes.0.reason"), "ExitCode", "exit 42: cause type");
	is_str(jget(o, "details.causes.0.message"), "42", "exit 42: cause carries the code");
	has_str(jget(o, "message"), "non-zero exit code", "exit 42: message");
	json_object_put(o);
	free(s);
	s = stream_status_json(-ENOENT, "container \"x\" not found");
	o = json_tokener_parse(s);
	is_str(jget(o, "reason"), "InternalError", "runtime error: InternalError");
	is_str(jget(o, "code"), "500", "runtime error: code 500");
	has_str(jget(o, "message"), "container \"x\" not found", "runtime error: message");
	json_object_put(o);
	free(s);
}

static struct stream_winsize sizes[8];
static int n_sizes;

static void on_size(const struct stream_winsize *ws, void *arg)
{
	if (n_sizes < 8)
		sizes[n_sizes++] = *ws;
}

static void test_resize(void)
{
	struct resize_parser p = {0};
	const char *a = "{\"Width\":80,\"Hei", *b = "ght\":24}\n{\"Width\":100,\"Height\":40}\n";
	resize_parser_feed(&p, (const uint8_t *)a, strlen(a), on_size, NULL);
	is_int(n_sizes, 0, "partial object waits");
	resize_parser_feed(&p, (const uint8_t *)b, strlen(b), on_size, NULL);
	ok(n_sizes == 2 && sizes[0].width == 80 && sizes[0].height == 24 && sizes[1].width == 100 &&
		   sizes[1].height == 40,
	   "two sizes, split across reads");
	const char *bad = "{\"Width\":-1,\"Height\":5}{\"nonsense\":1}";
	resize_parser_feed(&p, (const uint8_t *)bad, strlen(bad), on_size, NULL);
	is_int(n_sizes, 2, "invalid sizes are ignored");
	char huge[600];
	memset(huge, 'x', sizeof(huge));
	huge[0] = '{';
	is_int(resize_parser_feed(&p, (const uint8_t *)huge, sizeof(huge), on_size, NULL),
	       -EMSGSIZE, "an endless object is refused");
}

static void test_http(void)
{
	struct http_request r;
	size_t used = 0;
	const char *req = "POST /exec/abc?x=1 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
			  "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
			  "x-stream-protocol-version: v3.channel.k8s.io\r\n\r\nEXTRA";
	ok(http_request_parse(req, strlen(req), &r, &used) == 1, "request parses");
	is_str(r.method, "POST", "method");
	is_str(r.path, "/exec/abc", "path without the query");
	is_str(r.query, "x=1", "query");
	is_str(r.protocols, "v4.channel.k8s.io,v3.channel.k8s.io", "repeated headers joined");
	is_str(req + used, "EXTRA", "bytes after the request are left");
	is_int(http_request_parse(req, 30, &r, &used), 0, "partial request: need more");
	static char big[9000];
	memset(big, 'a', sizeof(big));
	is_int(http_request_parse(big, sizeof(big), &r, &used), -E2BIG, "oversized request");
	const char *bad = "GARBAGE\r\n\r\n";
	is_int(http_request_parse(bad, strlen(bad), &r, &used), -EINVAL, "malformed request");
}

int main(void)
{
	test_base64();
	test_dictionary();
	test_header_blocks();
	test_spdy_frames();
	test_websocket();
	test_status();
	test_resize();
	test_http();
	return tap_done();
}
