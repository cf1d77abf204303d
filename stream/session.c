/* One upgraded client connection: SPDY/3.1 or WebSocket on one side (see
 * spdy.c and ws.c), the runtime's descriptors on the other, pumped by one
 * poll() loop. Memory is bounded: the socket's input and output buffers and
 * each chan's pending bytes have a ceiling, and when one is full the loop
 * stops reading what would fill it (backpressure). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "stream/session.h"
#include "stream/tokens.h"

/* --- chans --- */

struct chan *sess_chan_find(struct session *s, uint32_t id)
{
	for (size_t i = 0; i < s->n_chans; i++)
		if (s->chans[i]->id == id)
			return s->chans[i];
	return NULL;
}

struct chan *sess_chan_of_kind(struct session *s, enum chan_kind kind)
{
	for (size_t i = 0; i < s->n_chans; i++)
		if (s->chans[i]->kind == kind)
			return s->chans[i];
	return NULL;
}

static bool chan_has_fd(enum chan_kind k)
{
	return k == CH_STDIN || k == CH_STDOUT || k == CH_STDERR || k == CH_PF_DATA;
}

struct chan *sess_chan_new(struct session *s, enum chan_kind kind, uint32_t id)
{
	if (s->n_chans >= MAX_CHANS)
		return NULL;
	struct chan *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	*c = (struct chan){.kind = kind, .id = id, .fd = -1, .rt = -1};
	c->pending.max = IO_MAX;
	if (chan_has_fd(kind)) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			free(c);
			return NULL;
		}
		fcntl(sv[0], F_SETFL, O_NONBLOCK);
		c->fd = sv[0];
		c->rt = sv[1];
	} else {
		c->out_eof = true; /* nothing from the runtime to relay */
	}
	s->chans[s->n_chans++] = c;
	return c;
}

static void chan_close_rt(struct chan *c)
{
	if (c->rt >= 0)
		close(c->rt);
	c->rt = -1;
}

static void chan_free(struct session *s, struct chan *c)
{
	for (size_t i = 0; i < s->n_chans; i++) {
		if (s->chans[i] == c) {
			s->chans[i] = s->chans[--s->n_chans];
			break;
		}
	}
	if (c->fd >= 0)
		close(c->fd);
	chan_close_rt(c);
	sbuf_free(&c->pending);
	free(c);
}

/* --- output --- */

/* Data for the client on c; fin ends c (SPDY only: WebSocket channels end
 * with the connection). */
int sess_send_data(struct session *s, struct chan *c, const void *p, size_t n, bool fin)
{
	if (c->discard)
		return 0;
	return s->proto->send(s, c, p, n, fin);
}

/* Ends the session politely: say goodbye, flush, then shut down writing and
 * wait (briefly) for the client to close, so nothing it sent last turns our
 * close into a reset that could destroy data still in flight to it. */
void sess_begin_close(struct session *s, uint32_t goaway_status, uint16_t ws_code, const char *why)
{
	if (s->closing)
		return;
	s->closing = true;
	s->proto->close(s, goaway_status, ws_code, why);
	s->linger_deadline = monotonic_ms() + LINGER_MS;
}

/* --- runtime threads --- */

static void *exec_main(void *arg)
{
	struct session *s = arg;
	const struct stream_runtime_ops *ops = s->cfg->ops;
	int r;
	if (s->req->kind == STREAM_EXEC)
		r = ops && ops->exec ? ops->exec(s->cfg->userdata, s->req, &s->io, &s->rt_err)
				     : crx_err_set(&s->rt_err, -ENOSYS, "exec is not supported");
	else
		r = ops && ops->attach
			    ? ops->attach(s->cfg->userdata, s->req, &s->io, &s->rt_err)
			    : crx_err_set(&s->rt_err, -ENOSYS, "attach is not supported");
	s->rt_result = r;
	void *self = NULL;
	(void)!write(s->done[1], &self, sizeof(self));
	return NULL;
}

static void *forward_main(void *arg)
{
	struct forward *f = arg;
	struct session *s = f->s;
	const struct stream_runtime_ops *ops = s->cfg->ops;
	if (ops && ops->port_forward)
		f->result = ops->port_forward(s->cfg->userdata, s->req->id, f->port, f->data->rt,
					      s->cancel[0], &f->err);
	else
		f->result = crx_err_set(&f->err, -ENOSYS, "port forwarding is not supported");
	(void)!write(s->done[1], &f, sizeof(f));
	return NULL;
}

int sess_start_exec(struct session *s)
{
	struct chan *in = sess_chan_of_kind(s, CH_STDIN), *out = sess_chan_of_kind(s, CH_STDOUT),
		    *err = sess_chan_of_kind(s, CH_STDERR);
	if (s->req->tty && pipe2(s->resize, O_CLOEXEC) == 0)
		fcntl(s->resize[1], F_SETFL, O_NONBLOCK);
	s->io = (struct stream_io){
		.stdin_fd = in ? in->rt : -1,
		.stdout_fd = out ? out->rt : -1,
		.stderr_fd = err ? err->rt : -1,
		.resize_fd = s->resize[0],
		.cancel_fd = s->cancel[0],
	};
	if (pthread_create(&s->rt, NULL, exec_main, s) != 0)
		return -EAGAIN;
	s->rt_started = true;
	return 0;
}

void sess_forward_start(struct session *s, struct forward *f)
{
	if (pthread_create(&f->thread, NULL, forward_main, f) == 0) {
		f->started = true;
		return;
	}
	f->result = crx_err_set(&f->err, -EAGAIN, "no thread for the forwarded connection");
	f->joined = true;
	chan_close_rt(f->data);
	shutdown(f->data->fd, SHUT_RDWR);
}

struct forward *sess_forward_new(struct session *s, const char *request_id, uint16_t port)
{
	if (s->n_fws >= MAX_FORWARDS)
		return NULL;
	struct forward *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->s = s;
	snprintf(f->request_id, sizeof(f->request_id), "%s", request_id);
	f->port = port;
	f->created_ms = monotonic_ms();
	s->fws[s->n_fws++] = f;
	return f;
}

void sess_forward_free(struct session *s, struct forward *f)
{
	for (size_t i = 0; i < s->n_fws; i++) {
		if (s->fws[i] == f) {
			s->fws[i] = s->fws[--s->n_fws];
			break;
		}
	}
	if (f->data)
		chan_free(s, f->data);
	if (f->error)
		chan_free(s, f->error);
	free(f);
}

/* A runtime thread said it is done: join it and let its output drain. */
static void reap(struct session *s, void *which)
{
	if (!which) {
		pthread_join(s->rt, NULL);
		s->rt_joined = true;
		for (size_t i = 0; i < s->n_chans; i++)
			chan_close_rt(s->chans[i]);
		s->drain_deadline = monotonic_ms() + DRAIN_MS;
		return;
	}
	struct forward *f = which;
	pthread_join(f->thread, NULL);
	f->joined = true;
	chan_close_rt(f->data);
	f->created_ms = monotonic_ms(); /* now the start of its drain */
}

/* --- the end of an exec or attach --- */

static void finish_exec(struct session *s)
{
	struct chan *e = sess_chan_of_kind(s, CH_ERROR);
	int r = s->rt_result;
	if (s->req->kind == STREAM_ATTACH && r > 0)
		r = 0; /* the kubelet reports a finished attach as Success */
	for (size_t i = 0; i < s->n_chans; i++)
		if (s->chans[i]->kind != CH_ERROR)
			sess_send_data(s, s->chans[i], NULL, 0, true);
	if (e && s->version >= 4) {
		_cleanup_free_ char *json = stream_status_json(r, s->rt_err.msg);
		if (json)
			sess_send_data(s, e, json, strlen(json), false);
	} else if (e && r != 0) {
		char msg[1200];
		if (r > 0)
			snprintf(msg, sizeof(msg),
				 "command terminated with non-zero exit code: exit status %d", r);
		else
			snprintf(msg, sizeof(msg), "%s",
				 s->rt_err.msg[0] ? s->rt_err.msg : strerror(-r));
		sess_send_data(s, e, msg, strlen(msg), false);
	}
	if (e)
		sess_send_data(s, e, NULL, 0, true);
	sess_begin_close(s, SPDY_GOAWAY_OK, 1000, "");
}

static bool outputs_drained(struct session *s)
{
	for (size_t i = 0; i < s->n_chans; i++) {
		struct chan *c = s->chans[i];
		if (c->fd >= 0 && !c->out_eof && (c->kind == CH_STDOUT || c->kind == CH_STDERR))
			return false;
	}
	return true;
}

static void forward_error(struct session *s, struct forward *f, const char *msg)
{
	if (f->error && msg && *msg)
		sess_send_data(s, f->error, msg, strlen(msg), false);
}

/* Port-forward bookkeeping after each loop pass. */
static void progress_forwards(struct session *s, uint64_t now)
{
	unsigned timeout = s->cfg->request_timeout_ms;
	for (size_t i = 0; i < s->n_fws;) {
		struct forward *f = s->fws[i];
		if (!f->started && !f->joined && !s->proto->fixed_channels) {
			/* A SPDY pair still missing its data or error stream. */
			if (now < f->created_ms + timeout) {
				i++;
				continue;
			}
			char msg[128];
			snprintf(msg, sizeof(msg), "timed out waiting for streams of request %s",
				 f->request_id);
			forward_error(s, f, msg);
			if (f->error)
				sess_send_data(s, f->error, NULL, 0, true);
			if (f->data)
				sess_send_data(s, f->data, NULL, 0, true);
			sess_forward_free(s, f);
			continue;
		}
		if (f->reported || !f->joined ||
		    (!f->data->out_eof && now < f->created_ms + DRAIN_MS)) {
			i++;
			continue;
		}
		sess_send_data(s, f->data, NULL, 0, true);
		if (f->result < 0) {
			char msg[1200];
			snprintf(msg, sizeof(msg), "error forwarding port %u to pod %s: %s",
				 f->port, s->req->id,
				 f->err.msg[0] ? f->err.msg : strerror(-f->result));
			forward_error(s, f, msg);
		}
		sess_send_data(s, f->error, NULL, 0, true);
		f->reported = true;
		if (s->proto->fixed_channels) {
			/* WebSocket channels stay until the connection ends. */
			f->data->out_eof = true;
			i++;
			continue;
		}
		sess_forward_free(s, f);
	}
	if (s->proto->fixed_channels && !s->closing) {
		bool all = true;
		for (size_t i = 0; i < s->n_fws; i++)
			all = all && s->fws[i]->joined && s->fws[i]->data->out_fin;
		if (all)
			sess_begin_close(s, 0, 1000, "");
	}
	if (!s->proto->fixed_channels && s->goaway_in && s->n_fws == 0)
		sess_begin_close(s, SPDY_GOAWAY_OK, 0, "");
}

/* --- input: client data for a chan --- */

static void resize_write(const struct stream_winsize *ws, void *arg)
{
	struct session *s = arg;
	if (s->resize[1] >= 0)
		(void)!write(s->resize[1], ws, sizeof(*ws)); /* a full pipe drops one resize */
}

/* 1 delivered, 0 no room yet (try again after fds drain). */
int sess_deliver(struct session *s, struct chan *c, const uint8_t *p, size_t n)
{
	if (!c || c->in_fin || n == 0)
		return 1;
	switch (c->kind) {
	case CH_STDIN:
	case CH_PF_DATA:
		if (c->fd < 0 || c->in_shut)
			return 1;
		if (sbuf_room(&c->pending) < n)
			return 0;
		sbuf_append(&c->pending, p, n);
		return 1;
	case CH_RESIZE:
		if (resize_parser_feed(&s->rp, p, n, resize_write, s) < 0)
			s->rp.len = 0;
		return 1;
	default:
		return 1; /* nothing reads what a client writes on output streams */
	}
}

size_t sess_chan_room(struct chan *c)
{
	if (!c || c->in_fin || c->in_shut || c->fd < 0 ||
	    (c->kind != CH_STDIN && c->kind != CH_PF_DATA))
		return SIZE_MAX;
	return sbuf_room(&c->pending);
}

/* The first client protocol (comma-separated, in preference order) that
 * the server supports, or NULL. */
const char *sess_negotiate(const char *client, const char *const *supported, size_t n)
{
	char copy[512];
	snprintf(copy, sizeof(copy), "%s", client);
	char *save = NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ' || *t == '\t')
			t++;
		size_t l = strlen(t);
		while (l && (t[l - 1] == ' ' || t[l - 1] == '\t'))
			t[--l] = '\0';
		for (size_t i = 0; i < n; i++)
			if (strcmp(t, supported[i]) == 0)
				return supported[i];
	}
	return NULL;
}

int sess_protocol_version(const char *p)
{
	if (p[0] == 'v' && p[1] >= '1' && p[1] <= '9' && p[2] == '.')
		return p[1] - '0';
	return 1;
}

/* --- the loop --- */

static void pump_fds(struct session *s, struct pollfd *pfds, struct chan **owners, size_t n)
{
	uint8_t *buf = s->iobuf;
	for (size_t i = 0; i < n; i++) {
		struct chan *c = owners[i];
		short re = pfds[i].revents;
		if (!c || !re)
			continue;
		if ((re & (POLLOUT | POLLERR | POLLHUP)) && c->pending.len) {
			ssize_t w = send(c->fd, c->pending.data, c->pending.len, MSG_NOSIGNAL);
			if (w > 0)
				sbuf_consume(&c->pending, (size_t)w);
			else if (w < 0 && errno != EAGAIN && errno != EINTR)
				c->pending.len = 0,
				c->in_shut = true; /* the runtime stopped reading */
		}
		if ((re & (POLLIN | POLLHUP | POLLERR)) && !c->out_eof) {
			size_t room = sbuf_room(&s->out);
			size_t max = room > 256 ? (room - 256) / 4 * 3 : 0;
			if (max > CHUNK * 3 / 4)
				max = CHUNK * 3 / 4;
			if (max == 0)
				continue;
			ssize_t r = read(c->fd, buf, max);
			if (r > 0)
				sess_send_data(s, c, buf, (size_t)r, false);
			else if (r == 0 || (errno != EAGAIN && errno != EINTR))
				c->out_eof = true;
			if (c->out_eof && c->kind == CH_PF_DATA && c->fw && !c->fw->joined &&
			    !s->proto->fixed_channels)
				sess_send_data(s, c, NULL, 0, true); /* the pod half-closed */
		}
	}
}

/* Half-close toward the runtime once the client's bytes are all written. */
static void half_close(struct session *s)
{
	for (size_t i = 0; i < s->n_chans; i++) {
		struct chan *c = s->chans[i];
		if (c->in_fin && !c->in_shut && c->fd >= 0 && c->pending.len == 0 &&
		    (c->kind == CH_STDIN || c->kind == CH_PF_DATA)) {
			shutdown(c->fd, SHUT_WR);
			c->in_shut = true;
		}
	}
}

static void session_abort(struct session *s)
{
	/* Wake every runtime thread, then wait for them: they own our fds' peers. */
	if (s->cancel[1] >= 0)
		close(s->cancel[1]);
	s->cancel[1] = -1;
	for (size_t i = 0; i < s->n_chans; i++)
		if (s->chans[i]->fd >= 0)
			shutdown(s->chans[i]->fd, SHUT_RDWR);
	if (s->rt_started && !s->rt_joined) {
		pthread_join(s->rt, NULL);
		s->rt_joined = true;
	}
	for (size_t i = 0; i < s->n_fws; i++) {
		if (s->fws[i]->started && !s->fws[i]->joined) {
			pthread_join(s->fws[i]->thread, NULL);
			s->fws[i]->joined = true;
		}
	}
}

static void session_loop(struct session *s)
{
	enum { FIXED = 3 };
	struct pollfd pfds[FIXED + MAX_CHANS];
	struct chan *owners[FIXED + MAX_CHANS];
	for (;;) {
		uint64_t now = monotonic_ms();
		/* Input first: what it changes (a GOAWAY, the last stream) counts
		 * in this pass, not after the next poll. */
		if (!s->closing && !s->abort_reason)
			s->proto->input(s);
		half_close(s);
		if (s->abort_reason)
			return;
		now = monotonic_ms();
		bool waiting = s->req->kind != STREAM_PORT_FORWARD && !s->proto->fixed_channels &&
			       !s->rt_started;
		if (waiting && now >= s->streams_deadline) {
			s->abort_reason = "timed out waiting for the client to create streams";
			return;
		}
		if (!s->closing && now - s->last_io >= s->cfg->idle_timeout_ms) {
			s->abort_reason = "idle timeout";
			return;
		}
		if (s->closing && now >= s->linger_deadline)
			return;
		if (s->rt_joined && !s->finished &&
		    (outputs_drained(s) || now >= s->drain_deadline)) {
			s->finished = true;
			finish_exec(s);
		}
		if (s->req->kind == STREAM_PORT_FORWARD)
			progress_forwards(s, now);
		if (s->closing && !s->shut_wr && s->out.len == 0) {
			shutdown(s->sock, SHUT_WR);
			s->shut_wr = true;
		}

		size_t n = 0;
		bool want_in = sbuf_room(&s->in) > 0;
		pfds[n] = (struct pollfd){.fd = s->sock,
					  .events = (want_in ? POLLIN : 0) |
						    (s->out.len ? POLLOUT : 0)};
		owners[n++] = NULL;
		pfds[n] = (struct pollfd){.fd = s->cfg->stop_fd, .events = POLLIN};
		owners[n++] = NULL;
		pfds[n] = (struct pollfd){.fd = s->done[0], .events = POLLIN};
		owners[n++] = NULL;
		bool room = sbuf_room(&s->out) >= OUT_HEADROOM && !s->closing;
		for (size_t i = 0; i < s->n_chans; i++) {
			struct chan *c = s->chans[i];
			short ev = 0;
			if (c->fd < 0)
				continue;
			if (c->pending.len)
				ev |= POLLOUT;
			if (!c->out_eof && room && (c->kind != CH_PF_DATA || c->fw->started))
				ev |= POLLIN;
			if (!ev)
				continue;
			pfds[n] = (struct pollfd){.fd = c->fd, .events = ev};
			owners[n++] = c;
		}
		/* Wake for the nearest deadline; idle and pair timeouts can wait a second. */
		uint64_t wake = now + 1000;
		if (waiting && s->streams_deadline < wake)
			wake = s->streams_deadline;
		if (s->rt_joined && !s->finished && s->drain_deadline < wake)
			wake = s->drain_deadline;
		if (s->closing && s->linger_deadline < wake)
			wake = s->linger_deadline;
		int timeout = wake > now ? (int)(wake - now) : 0;
		int r = poll(pfds, n, timeout);
		if (r < 0 && errno != EINTR) {
			s->abort_reason = "poll failed";
			return;
		}
		if (r <= 0)
			continue;
		if (pfds[1].revents) {
			s->abort_reason = "server shutting down";
			return;
		}
		if (pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			if (want_in) {
				ssize_t got =
					read(s->sock, s->in.data + s->in.len, sbuf_room(&s->in));
				if (got > 0) {
					s->last_io = monotonic_ms();
					if (s->closing)
						s->in.len = 0; /* lingering: discard */
					else
						s->in.len += (size_t)got;
				} else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
					if (s->closing)
						return; /* the client closed after our goodbye */
					s->goaway_in = true;
					if (s->req->kind == STREAM_PORT_FORWARD || !s->rt_joined)
						s->abort_reason = "client disconnected";
					return;
				}
			} else if (pfds[0].revents & (POLLHUP | POLLERR)) {
				s->abort_reason = "client disconnected";
				return;
			}
		}
		if (pfds[0].revents & POLLOUT) {
			ssize_t w = send(s->sock, s->out.data, s->out.len, MSG_NOSIGNAL);
			if (w > 0) {
				sbuf_consume(&s->out, (size_t)w);
				s->last_io = monotonic_ms();
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				s->abort_reason = "client disconnected";
				return;
			}
		}
		if (pfds[2].revents & POLLIN) {
			void *which;
			while (read(s->done[0], &which, sizeof(which)) == sizeof(which))
				reap(s, which);
		}
		pump_fds(s, pfds + FIXED, owners + FIXED, n - FIXED);
		half_close(s);
	}
}

void session_run(const struct session_config *cfg, const struct stream_proto *proto, int sock,
		 const struct http_request *http, struct stream_request *req, const uint8_t *early,
		 size_t n_early)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		stream_request_free(req);
		return;
	}
	s->cfg = cfg;
	s->req = req;
	s->sock = sock;
	s->proto = proto;
	s->in.max = FRAME_MAX + 64;
	s->out.max = IO_MAX;
	s->wsmsg.max = FRAME_MAX;
	s->cancel[0] = s->cancel[1] = s->done[0] = s->done[1] = -1;
	s->resize[0] = s->resize[1] = -1;
	uint64_t now = monotonic_ms();
	s->streams_deadline = now + cfg->request_timeout_ms;
	s->last_io = now;
	if (pipe2(s->cancel, O_CLOEXEC) < 0 || pipe2(s->done, O_CLOEXEC | O_NONBLOCK) < 0)
		goto out;
	if (proto->handshake(s, http) < 0)
		goto out;
	s->in.data = malloc(s->in.max);
	if (!s->in.data)
		goto out;
	s->in.cap = s->in.max;
	if (sbuf_append(&s->in, early, n_early) < 0)
		goto out;
	if (proto->open && proto->open(s) < 0)
		s->abort_reason = "cannot open the session's channels";
	session_loop(s);
	if (s->abort_reason) {
		/* Best effort goodbye; the client may be gone already. */
		sess_begin_close(s, SPDY_GOAWAY_INTERNAL, 1011, s->abort_reason);
		(void)!send(s->sock, s->out.data, s->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
out:
	session_abort(s);
	while (s->n_fws)
		sess_forward_free(s, s->fws[0]);
	while (s->n_chans)
		chan_free(s, s->chans[0]);
	for (int i = 0; i < 2; i++) {
		if (s->cancel[i] >= 0)
			close(s->cancel[i]);
		if (s->done[i] >= 0)
			close(s->done[i]);
		if (s->resize[i] >= 0)
			close(s->resize[i]);
	}
	if (s->z_ok)
		spdy_zlib_free(&s->z);
	sbuf_free(&s->in);
	sbuf_free(&s->out);
	sbuf_free(&s->wsmsg);
	stream_request_free(s->req);
	free(s);
}
