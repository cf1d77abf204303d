/* WebSocket sessions (RFC 6455) with the channel.k8s.io subprotocols:
 * channel-byte framing, base64 variants, v5's close signal, and
 * port-forward's per-port channel pairs. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/proto.h"

static int ws_send_channel(struct session *s, uint8_t channel, const void *p, size_t n)
{
	char *tmp = s->b64buf;
	if (s->b64) {
		if (n > CHUNK * 3 / 4)
			return -EMSGSIZE;
		tmp[0] = (char)('0' + channel);
		size_t l = b64_encode(p, n, tmp + 1, false);
		return ws_put_frame(&s->out, WS_TEXT, tmp, 1 + l, NULL);
	}
	/* The channel byte, then the data, in one frame. */
	int r = ws_put_header(&s->out, WS_BINARY, n + 1, NULL);
	if (r == 0)
		r = sbuf_append(&s->out, &channel, 1);
	if (r == 0)
		r = sbuf_append(&s->out, p, n);
	return r;
}

static void ws_close_frame(struct session *s, uint16_t code, const char *why)
{
	uint8_t p[125];
	size_t n = strlen(why);
	if (n > sizeof(p) - 2)
		n = sizeof(p) - 2;
	p[0] = code >> 8;
	p[1] = code;
	memcpy(p + 2, why, n);
	ws_put_frame(&s->out, WS_CLOSE, p, n + 2, NULL);
}

static struct chan *ws_chan_for(struct session *s, uint8_t channel)
{
	struct chan *c = sess_chan_find(s, channel);
	if (c && (c->kind == CH_STDIN || c->kind == CH_RESIZE || c->kind == CH_PF_DATA))
		return c;
	return NULL;
}

/* Where an n-byte message starting with byte `first` goes and whether it
 * fits: 1 yes (*c may be NULL: dropped), 0 not yet. An empty message has
 * no channel byte and goes nowhere. */
static int ws_target(struct session *s, uint8_t first, size_t n, struct chan **c)
{
	*c = NULL;
	if (n == 0)
		return 1;
	uint8_t channel = s->b64 ? (uint8_t)(first - '0') : first;
	*c = ws_chan_for(s, channel);
	return sess_chan_room(*c) >= n;
}

/* A whole unmasked message (p is writable). */
static void ws_message(struct session *s, struct chan *c, uint8_t *p, size_t n)
{
	if (n == 0)
		return;
	if (p[0] == 255 && s->version >= 5 && !s->b64) {
		/* v5's close signal: [255, channel] half-closes that channel. */
		struct chan *t = n == 2 ? ws_chan_for(s, p[1]) : NULL;
		if (t)
			t->in_fin = true;
		return;
	}
	if (!c)
		return;
	if (!s->b64) {
		sess_deliver(s, c, p + 1, n - 1);
		return;
	}
	ssize_t l = b64_decode((char *)p + 1, n - 1, p + 1);
	if (l < 0) {
		sess_begin_close(s, 0, 1007, "invalid base64");
		return;
	}
	sess_deliver(s, c, p + 1, (size_t)l);
}

static void ws_input(struct session *s)
{
	while (s->in.len && !s->closing && sbuf_room(&s->out) >= OUT_HEADROOM) {
		struct ws_frame f;
		struct chan *c = NULL;
		size_t used;
		int r = ws_frame_parse(s->in.data, s->in.len, FRAME_MAX, &f, &used);
		if (r == -EMSGSIZE) {
			sess_begin_close(s, 0, 1009, "frame too large");
			return;
		}
		if (r < 0 || (r > 0 && !f.masked)) {
			sess_begin_close(s, 0, 1002,
					 r < 0 ? "protocol error" : "client frames must be masked");
			return;
		}
		if (r == 0)
			return;
		uint8_t *payload = (uint8_t *)f.payload;
		switch (f.opcode) {
		case WS_PING:
			ws_unmask(&f, payload);
			ws_put_frame(&s->out, WS_PONG, payload, f.length, NULL);
			break;
		case WS_PONG:
			break;
		case WS_CLOSE:
			s->goaway_in = true;
			/* The client left first: whatever still runs is abandoned, and
			 * nothing follows our close frame. */
			if (s->req->kind != STREAM_PORT_FORWARD && !s->rt_joined)
				s->abort_reason = "client closed the connection";
			s->finished = true;
			sess_begin_close(s, 0, 1000, "");
			break;
		case WS_TEXT:
		case WS_BINARY:
			if (s->wsop) {
				sess_begin_close(s, 0, 1002, "new message inside a fragmented one");
				return;
			}
			if (f.fin) {
				uint8_t first = f.length ? f.payload[0] ^ f.mask[0] : 0;
				if (!ws_target(s, first, f.length, &c))
					return; /* no room yet: the frame stays, still masked */
				ws_unmask(&f, payload);
				ws_message(s, c, payload, f.length);
				break;
			}
			s->wsop = f.opcode;
			/* fallthrough */
		case WS_CONT: {
			if (!s->wsop) {
				sess_begin_close(s, 0, 1002, "continuation without a message");
				return;
			}
			/* Any fragment may be empty, the first and the last too: the
			 * buffer may still have no memory, and an empty message has
			 * no channel byte. */
			size_t at = s->wsmsg.len;
			if (sbuf_append(&s->wsmsg, f.payload, f.length) < 0) {
				sess_begin_close(s, 0, 1009, "message too large");
				return;
			}
			if (f.length)
				ws_unmask(&f, s->wsmsg.data + at);
			if (!f.fin)
				break;
			uint8_t first = s->wsmsg.len ? s->wsmsg.data[0] : 0;
			if (!ws_target(s, first, s->wsmsg.len, &c)) {
				/* Again when there is room: only a final continuation
				 * gets here, so the message stays open. */
				s->wsmsg.len = at;
				return;
			}
			ws_message(s, c, s->wsmsg.data, s->wsmsg.len);
			s->wsmsg.len = 0;
			s->wsop = 0;
			break;
		}
		}
		sbuf_consume(&s->in, used);
	}
}

static int ws_handshake(struct session *s, const struct http_request *h)
{
	static const char *const exec_protocols[] = {
		"v5.channel.k8s.io", "v4.channel.k8s.io",     "v4.base64.channel.k8s.io",
		"channel.k8s.io",    "base64.channel.k8s.io",
	};
	bool forward = s->req->kind == STREAM_PORT_FORWARD;
	/* Port-forward has no v5; the list without its head serves it. */
	const char *const *supported = forward ? exec_protocols + 1 : exec_protocols;
	size_t n = ARRAY_SIZE(exec_protocols) - (forward ? 1 : 0);
	char accept[32];
	if (strcmp(h->ws_version, "13") != 0) {
		http_reply_error(s->sock, 426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n",
				 "unsupported WebSocket version (13 is)");
		return -EPROTO;
	}
	if (!h->ws_key[0] || ws_accept_key(h->ws_key, accept) < 0) {
		http_reply_error(s->sock, 400, "Bad Request", NULL, "missing Sec-WebSocket-Key");
		return -EPROTO;
	}
	const char *chosen = "";
	if (h->ws_protocols[0]) {
		chosen = sess_negotiate(h->ws_protocols, supported, n);
		if (!chosen) {
			char body[700];
			snprintf(body, sizeof(body),
				 "unable to upgrade: requested protocol(s) are not supported: %s",
				 h->ws_protocols);
			http_reply_error(s->sock, 403, "Forbidden", NULL, body);
			return -EPROTO;
		}
	}
	s->b64 = strstr(chosen, "base64") != NULL;
	s->version = *chosen ? sess_protocol_version(chosen) : 1;
	char resp[512], proto[160] = "";
	if (*chosen)
		snprintf(proto, sizeof(proto), "Sec-WebSocket-Protocol: %s\r\n", chosen);
	int l = snprintf(resp, sizeof(resp),
			 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
			 accept, proto);
	return stream_send_all(s->sock, resp, (size_t)l, 5000);
}

/* WebSocket sessions know their channels at once. */
static int ws_open(struct session *s)
{
	const struct stream_request *r = s->req;
	if (r->kind == STREAM_PORT_FORWARD) {
		for (size_t i = 0; i < r->n_ports; i++) {
			char rid[24];
			snprintf(rid, sizeof(rid), "%zu", i);
			struct forward *f = sess_forward_new(s, rid, r->ports[i]);
			if (!f || !(f->data = sess_chan_new(s, CH_PF_DATA, 2 * i)) ||
			    !(f->error = sess_chan_new(s, CH_PF_ERROR, 2 * i + 1)))
				return -ENOMEM;
			f->data->fw = f->error->fw = f;
			/* Each channel starts with its port, little-endian. */
			uint8_t port[2] = {(uint8_t)r->ports[i], (uint8_t)(r->ports[i] >> 8)};
			sess_send_data(s, f->data, port, 2, false);
			sess_send_data(s, f->error, port, 2, false);
			sess_forward_start(s, f);
		}
		if (r->n_ports == 0)
			sess_begin_close(s, 0, 1008, "no port to forward");
		return 0;
	}
	if ((r->use_stdin && !sess_chan_new(s, CH_STDIN, 0)) ||
	    (r->use_stdout && !sess_chan_new(s, CH_STDOUT, 1)) ||
	    (r->use_stderr && !sess_chan_new(s, CH_STDERR, 2)) || !sess_chan_new(s, CH_ERROR, 3) ||
	    (r->tty && !sess_chan_new(s, CH_RESIZE, 4)))
		return -ENOMEM;
	/* An empty message on the lowest channel the client reads tells it the
	 * session is up. */
	static const uint8_t empty[1];
	ws_send_channel(s, r->use_stdout ? 1 : r->use_stderr ? 2 : 3, empty, 0);
	return sess_start_exec(s);
}

/* WebSocket channels end with the connection: fin only marks c done. */
static int ws_send(struct session *s, struct chan *c, const void *p, size_t n, bool fin)
{
	if (fin)
		c->out_fin = true;
	if (n == 0 && fin)
		return 0;
	return ws_send_channel(s, (uint8_t)c->id, p, n);
}

static void ws_close(struct session *s, uint32_t goaway_status, uint16_t ws_code, const char *why)
{
	(void)goaway_status;
	ws_close_frame(s, ws_code, why);
}

const struct stream_proto ws_proto = {
	.fixed_channels = true,
	.handshake = ws_handshake,
	.open = ws_open,
	.input = ws_input,
	.send = ws_send,
	.close = ws_close,
};
