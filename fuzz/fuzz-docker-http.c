/* The Docker Engine HTTP client (runtimes/docker/engine/http.c) reading
 * whatever a dockerd, or something in its socket's place, answers: status
 * line, headers, Content-Length, chunked and close-framed bodies, bodies
 * read whole, by line or in small pieces, and upgraded raw streams with
 * Docker's multiplexed frame headers. The first byte picks the request and
 * the way the body is read; the rest is the response. Beyond "no crash, no
 * leak, no UB": a body read whole is never longer than the limit asked. */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fake-dockerd.h"
#include "runtimes/docker/engine/api.h"
#include "runtimes/docker/engine/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	const char *sock = fake_serve(data + 1, size - 1);
	struct dk_http_request req = {
		.method = mode & 0x10   ? "HEAD"
			  : mode & 0x20 ? "POST"
					: "GET",
		.target = "/v1.41/fuzz",
		.upgrade = (mode & 3) == 3,
	};
	struct dk_http_conn *c = NULL;
	struct crx_err err = {0};
	if (dk_http_open(sock, &req, NULL, &c, &err) == 0) {
		(void)dk_http_status(c);
		(void)dk_http_header(c, "Content-Type");
		(void)dk_http_header(c, "content-length");
		(void)dk_http_upgraded(c);
		switch (mode & 3) {
		case 0: {
			char *body = NULL;
			size_t len = 0, max = mode & 0x40 ? 64 : 1 << 20;
			if (dk_http_read_all(c, max, &body, &len, &err) == 0 &&
			    (len > max || strlen(body) > len))
				__builtin_trap();
			free(body);
			break;
		}
		case 1: {
			char *line;
			size_t len;
			while (dk_http_read_line(c, mode & 0x40 ? 16 : 4096, &line, &len, &err) > 0)
				if (len > 4096)
					__builtin_trap();
			break;
		}
		case 2: {
			char buf[7];
			while (dk_http_read(c, buf, sizeof(buf), &err) > 0)
				;
			break;
		}
		case 3: {
			int stream;
			size_t left;
			char buf[64];
			while (dk_frame_header(c, &stream, &left, &err) > 0) {
				size_t want = left < sizeof(buf) ? left : sizeof(buf);
				if (dk_http_read_full(c, buf, want, &err) < 0)
					break;
			}
			break;
		}
		}
		dk_http_close(c);
	}
	fake_done();
	return 0;
}
