/* SPDY/3.1 sessions as the kubelet and crictl speak them (client-go over
 * moby/spdystream): the upgrade with X-Stream-Protocol-Version, streams
 * typed by their headers, and the frames that drive them. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/proto.h"

static int spdy_send(struct session *s, struct chan *c, const void *p, size_t n, bool fin)
{
	if (c->out_fin)
		return 0;
	if (fin)
		c->out_fin = true;
	return spdy_put_data(&s->out, c->id, fin ? SPDY_FLAG_FIN : 0, p, n);
}

static const char *const remote_command_protocols[] = {
	"v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
	"v2.channel.k8s.io", "channel.k8s.io",
};

static void spdy_rst(struct session *s, uint32_t id, uint32_t status)
{
	spdy_put_u32s(&s->out, SPDY_RST_STREAM, id, status, true);
}

static void spdy_exec_stream(struct session *s, uint32_t id, const struct spdy_headers *h, bool fin)
{
	static const struct {
		const char *name;
		enum chan_kind kind;
	} types[] = {
		{"error", CH_ERROR},   {"stdin", CH_STDIN},   {"stdout", CH_STDOUT},
		{"stderr", CH_STDERR}, {"resize", CH_RESIZE},
	};
	const char *t = spdy_headers_get(h, "streamtype");
	const struct stream_request *r = s->req;
	int kind = -1;
	for (size_t i = 0; t && i < ARRAY_SIZE(types); i++)
		if (strcmp(t, types[i].name) == 0)
			kind = types[i].kind;
	bool wanted = kind == CH_ERROR || (kind == CH_STDIN && r->use_stdin) ||
		      (kind == CH_STDOUT && r->use_stdout) ||
		      (kind == CH_STDERR && r->use_stderr) || (kind == CH_RESIZE && r->tty);
	if (!wanted || s->rt_started || sess_chan_of_kind(s, kind)) {
		spdy_rst(s, id, SPDY_RST_REFUSED_STREAM);
		return;
	}
	struct chan *c = sess_chan_new(s, kind, id);
	if (!c) {
		spdy_rst(s, id, SPDY_RST_REFUSED_STREAM);
		return;
	}
	c->in_fin = fin;
	spdy_put_syn(&s->out, &s->z, SPDY_SYN_REPLY, id, 0, NULL, 0);
	/* Start once every stream the request asked for exists. */
	if (!sess_chan_of_kind(s, CH_ERROR) || (r->use_stdin && !sess_chan_of_kind(s, CH_STDIN)) ||
	    (r->use_stdout && !sess_chan_of_kind(s, CH_STDOUT)) ||
	    (r->use_stderr && !sess_chan_of_kind(s, CH_STDERR)) ||
	    (r->tty && s->version >= 3 && !sess_chan_of_kind(s, CH_RESIZE)))
		return;
	if (sess_start_exec(s) < 0)
		s->abort_reason = "no thread for the runtime";
}

static void spdy_forward_stream(struct session *s, uint32_t id, const struct spdy_headers *h,
				bool fin)
{
	const char *t = spdy_headers_get(h, "streamtype");
	const char *port_s = spdy_headers_get(h, "port");
	const char *rid = spdy_headers_get(h, "requestid");
	char *end = NULL;
	long port = port_s ? strtol(port_s, &end, 10) : 0;
	bool data = streq(t, "data");
	if (!port_s || !*port_s || *end || port < 1 || port > 65535 ||
	    (!data && !streq(t, "error"))) {
		spdy_rst(s, id, SPDY_RST_REFUSED_STREAM);
		return;
	}
	char fallback[16];
	if (!rid || !*rid) {
		/* Old clients: the error stream's id names the pair; data follows it. */
		snprintf(fallback, sizeof(fallback), "%u", data ? id - 2 : id);
		rid = fallback;
	}
	struct forward *f = NULL;
	for (size_t i = 0; i < s->n_fws; i++)
		if (!s->fws[i]->started && !s->fws[i]->joined &&
		    strcmp(s->fws[i]->request_id, rid) == 0)
			f = s->fws[i];
	if (!f)
		f = sess_forward_new(s, rid, (uint16_t)port);
	if (!f || (data ? f->data != NULL : f->error != NULL)) {
		spdy_rst(s, id, f ? SPDY_RST_STREAM_IN_USE : SPDY_RST_REFUSED_STREAM);
		return;
	}
	struct chan *c = sess_chan_new(s, data ? CH_PF_DATA : CH_PF_ERROR, id);
	if (!c) {
		spdy_rst(s, id, SPDY_RST_REFUSED_STREAM);
		if (!f->data && !f->error)
			sess_forward_free(s, f);
		return;
	}
	c->in_fin = fin;
	c->fw = f;
	if (data) {
		f->data = c;
		f->port = (uint16_t)port;
	} else {
		f->error = c;
	}
	spdy_put_syn(&s->out, &s->z, SPDY_SYN_REPLY, id, 0, NULL, 0);
	if (f->data && f->error)
		sess_forward_start(s, f);
}

static void spdy_reset(struct session *s, struct chan *c)
{
	c->in_fin = true;
	c->out_fin = true;
	c->discard = true;
	if (c->fd >= 0 && !c->in_shut) {
		shutdown(c->fd, SHUT_WR);
		c->in_shut = true;
	}
	sbuf_free(&c->pending);
	if (c->fw && c->fw->started && !c->fw->joined && c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR); /* the forwarded connection ends */
}

/* Handles the frame at the head of s->in. 1: consumed, 0: wait for room,
 * -1: fatal (the session is closing). */
static int spdy_frame(struct session *s, const struct spdy_frame *f)
{
	const uint8_t *p = f->payload;
	uint32_t n = f->length;
	if (!f->control) {
		struct chan *c = sess_chan_find(s, f->stream_id);
		if (f->stream_id == 0) {
			sess_begin_close(s, SPDY_GOAWAY_PROTOCOL, 0, "");
			return -1;
		}
		if (!c) {
			if (f->stream_id > s->last_stream)
				spdy_rst(s, f->stream_id, SPDY_RST_INVALID_STREAM);
			return 1;
		}
		if (sess_chan_room(c) < n)
			return 0;
		sess_deliver(s, c, p, n);
		if (f->flags & SPDY_FLAG_FIN)
			c->in_fin = true;
		return 1;
	}
	if (f->version != 3) {
		sess_begin_close(s, SPDY_GOAWAY_PROTOCOL, 0, "");
		return -1;
	}
	uint32_t id = n >= 4 ? ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | p[2] << 8 | p[3]) &
				       0x7fffffff
			     : 0;
	struct spdy_headers h;
	struct crx_err err = {0};
	switch (f->type) {
	case SPDY_SYN_STREAM:
		/* Every header block goes through the one inflate context, even a
		 * refused stream's: skipping one would corrupt the rest. */
		if (n < 10 || spdy_headers_decode(&s->z, p + 10, n - 10, &h, &err) < 0) {
			sess_begin_close(s, SPDY_GOAWAY_PROTOCOL, 0, "");
			return -1;
		}
		if (id == 0 || id % 2 == 0 || id <= s->last_stream) {
			spdy_rst(s, id, SPDY_RST_PROTOCOL_ERROR);
		} else {
			s->last_stream = id;
			if (s->goaway_in || s->closing)
				spdy_rst(s, id, SPDY_RST_REFUSED_STREAM);
			else if (s->req->kind == STREAM_PORT_FORWARD)
				spdy_forward_stream(s, id, &h, f->flags & SPDY_FLAG_FIN);
			else
				spdy_exec_stream(s, id, &h, f->flags & SPDY_FLAG_FIN);
		}
		spdy_headers_free(&h);
		return 1;
	case SPDY_SYN_REPLY:
	case SPDY_HEADERS:
		if (n < 4 || spdy_headers_decode(&s->z, p + 4, n - 4, &h, &err) < 0) {
			sess_begin_close(s, SPDY_GOAWAY_PROTOCOL, 0, "");
			return -1;
		}
		spdy_headers_free(&h);
		return 1;
	case SPDY_RST_STREAM: {
		struct chan *c = n == 8 ? sess_chan_find(s, id) : NULL;
		if (c)
			spdy_reset(s, c);
		return 1;
	}
	case SPDY_PING:
		/* Answer the client's (odd) pings; ours would be even, and we send none. */
		if (n == 4 && (id & 1))
			spdy_put_control(&s->out, SPDY_PING, 0, p, 4);
		return 1;
	case SPDY_GOAWAY:
		s->goaway_in = true;
		return 1;
	default:
		return 1; /* SETTINGS, WINDOW_UPDATE, unknown types: nothing to do */
	}
}

static void spdy_input(struct session *s)
{
	while (s->in.len && !s->closing && sbuf_room(&s->out) >= OUT_HEADROOM) {
		struct spdy_frame f;
		size_t used;
		int r = spdy_frame_parse(s->in.data, s->in.len, FRAME_MAX, &f, &used);
		if (r < 0) {
			sess_begin_close(s, SPDY_GOAWAY_PROTOCOL, 0, "");
			return;
		}
		if (r == 0 || spdy_frame(s, &f) <= 0)
			return;
		sbuf_consume(&s->in, used);
	}
}

static int spdy_handshake(struct session *s, const struct http_request *h)
{
	static const char *const pf[] = {"portforward.k8s.io"};
	bool forward = s->req->kind == STREAM_PORT_FORWARD;
	const char *const *supported = forward ? pf : remote_command_protocols;
	size_t n = forward ? 1 : ARRAY_SIZE(remote_command_protocols);
	if (!h->protocols[0]) {
		http_reply_error(s->sock, 400, "Bad Request", NULL,
				 "unable to upgrade: X-Stream-Protocol-Version is required");
		return -EPROTO;
	}
	const char *chosen = sess_negotiate(h->protocols, supported, n);
	if (!chosen) {
		char extra[512] = "", body[1024];
		for (size_t i = 0; i < n; i++) {
			size_t l = strlen(extra);
			snprintf(extra + l, sizeof(extra) - l,
				 "X-Accepted-Stream-Protocol-Versions: %s\r\n", supported[i]);
		}
		snprintf(body, sizeof(body),
			 "unable to upgrade: unable to sess_negotiate protocol: client supports "
			 "[%s]",
			 h->protocols);
		http_reply_error(s->sock, 403, "Forbidden", extra, body);
		return -EPROTO;
	}
	s->version = forward ? 4 : sess_protocol_version(chosen);
	if (spdy_zlib_init(&s->z) < 0)
		return -ENOMEM;
	s->z_ok = true;
	char resp[256];
	int l = snprintf(resp, sizeof(resp),
			 "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
			 "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: %s\r\n\r\n",
			 chosen);
	return stream_send_all(s->sock, resp, (size_t)l, 5000);
}

static void spdy_close(struct session *s, uint32_t goaway_status, uint16_t ws_code, const char *why)
{
	(void)ws_code;
	(void)why;
	spdy_put_u32s(&s->out, SPDY_GOAWAY, s->last_stream, goaway_status, true);
}

const struct stream_proto spdy_proto = {
	.fixed_channels = false,
	.handshake = spdy_handshake,
	.input = spdy_input,
	.send = spdy_send,
	.close = spdy_close,
};
