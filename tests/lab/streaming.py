"""Clients for the CRI streaming protocols, written for the tests.

They speak what the kubelet and crictl speak (client-go's remotecommand and
portforward over moby/spdystream, and the WebSocket channel protocols), with
knobs to misbehave on purpose:

  SpdyConnection   SPDY/3.1 after an HTTP/1.1 upgrade; zlib header blocks
                   with the SPDY/3 dictionary; streams, FIN, RST, PING, GOAWAY
  spdy_exec()      exec/attach as client-go does it (error, stdin, stdout,
                   stderr, resize streams; the v4 Status on the error stream)
  SpdyPortForward  port-forward: a (error, data) stream pair per connection
  WsConnection     RFC 6455 client (masked frames, ping/pong, close)
  ws_exec()        exec/attach over v5/v4/v1 channel protocols (and base64)
  ws_port_forward()  port-forward over WebSocket (port prefix per channel)
  TestDaemon       runs tests/stream-testd and registers requests with it

Also usable against crimuxd: any URL returned by Exec/Attach/PortForward.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import zlib


def _dictionary():
    words = ("options head post put delete trace accept accept-charset accept-encoding "
             "accept-language accept-ranges age allow authorization cache-control connection "
             "content-base content-encoding content-language content-length content-location "
             "content-md5 content-range content-type date etag expect expires from host "
             "if-match if-modified-since if-none-match if-range if-unmodified-since "
             "last-modified location max-forwards pragma proxy-authenticate "
             "proxy-authorization range referer retry-after server te trailer "
             "transfer-encoding upgrade user-agent vary via warning www-authenticate method "
             "get status").split() + ["200 OK", "version", "HTTP/1.1", "url", "public",
                                      "set-cookie", "keep-alive", "origin"]
    tail = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417"
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server "
            "Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug "
            "Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,"
            "text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
            "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
            "charset=iso-8859-1,utf-,*,enq=0.")
    d = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()
    assert len(d) == 1423 and zlib.adler32(d) == 0xE3C6A7C2
    return d


SPDY_DICTIONARY = _dictionary()
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
FLAG_FIN = 1


class HTTPError(Exception):
    def __init__(self, status, reason, headers, body):
        super().__init__(f"HTTP {status} {reason}: {body!r}")
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


def _connect(url, timeout):
    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
    path = u.path + (("?" + u.query) if u.query else "")
    return sock, u, path


def _read_response(sock, timeout):
    """Reads an HTTP response head; returns (status, reason, headers, rest)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed during the HTTP response: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return int(status), reason, headers, rest


def _read_body(sock, headers, rest):
    n = int(headers.get("content-length", ["0"])[0])
    while len(rest) < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return rest[:n].decode(errors="replace")


# --------------------------------------------------------------------- SPDY

def encode_header_block(compressor, headers):
    raw = struct.pack(">I", len(headers))
    for k, v in headers.items():
        k, v = k.lower().encode(), str(v).encode()
        raw += struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v
    return compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)


def decode_header_block(decompressor, data):
    raw = decompressor.decompress(data)
    (n,), off, out = struct.unpack(">I", raw[:4]), 4, {}
    for _ in range(n):
        (kl,) = struct.unpack(">I", raw[off:off + 4])
        k = raw[off + 4:off + 4 + kl].decode()
        off += 4 + kl
        (vl,) = struct.unpack(">I", raw[off:off + 4])
        out[k] = raw[off + 4:off + 4 + vl].decode()
        off += 4 + vl
    return out


def control_frame(ftype, flags, payload, version=3):
    return struct.pack(">HHI", 0x8000 | version, ftype, flags << 24 | len(payload)) + payload


def data_frame(stream_id, flags, data):
    return struct.pack(">II", stream_id & 0x7FFFFFFF, flags << 24 | len(data)) + data


class SpdyStream:
    def __init__(self, conn, sid, headers):
        self.conn, self.id, self.headers = conn, sid, headers
        self.data = bytearray()
        self.replied = threading.Event()
        self.finished = threading.Event()  # the server's FIN, RST or the connection's end
        self.reset = None  # RST status

    def write(self, data):
        for i in range(0, len(data), 32768):
            self.conn.send(data_frame(self.id, 0, data[i:i + 32768]))

    def close(self):
        """Half-close: our side is done sending."""
        self.conn.send(data_frame(self.id, FLAG_FIN, b""))

    def read_all(self, timeout=10):
        if not self.finished.wait(timeout):
            raise TimeoutError(f"stream {self.id} {self.headers} did not finish")
        return bytes(self.data)

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate(bytes(self.data)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {self.id} has {bytes(self.data)!r}")
            if self.finished.is_set() and not predicate(bytes(self.data)):
                raise EOFError(f"stream {self.id} ended with {bytes(self.data)!r}")
            time.sleep(0.01)
        return bytes(self.data)


class SpdyConnection:
    """An upgraded SPDY/3.1 connection; a reader thread dispatches frames."""

    def __init__(self, url, protocols=("v4.channel.k8s.io",), timeout=10, method="POST",
                 extra_headers=None):
        self.sock, u, path = _connect(url, timeout)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}", "Connection: Upgrade",
                 "Upgrade: SPDY/3.1"]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
        lines += list(extra_headers or [])
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, reason, headers, rest = _read_response(self.sock, timeout)
        if status != 101:
            body = _read_body(self.sock, headers, rest)
            self.sock.close()
            raise HTTPError(status, reason, headers, body)
        self.protocol = headers.get("x-stream-protocol-version", [""])[0]
        self.sock.settimeout(None)
        self.compressor = zlib.compressobj(zdict=SPDY_DICTIONARY)
        self.decompressor = zlib.decompressobj(zdict=SPDY_DICTIONARY)
        self.lock = threading.Lock()
        self.streams = {}
        self.next_id = 1
        self.pongs = {}
        self.goaway = None
        self.closed = threading.Event()
        self.buf = rest
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()

    def send(self, raw):
        with self.lock:
            self.sock.sendall(raw)

    def open_stream(self, headers, fin=False, wait=True, timeout=10):
        with self.lock:
            sid = self.next_id
            self.next_id += 2
            stream = SpdyStream(self, sid, headers)
            self.streams[sid] = stream
            block = encode_header_block(self.compressor, headers)
            payload = struct.pack(">IIBB", sid, 0, 0, 0) + block
            self.sock.sendall(control_frame(SYN_STREAM, FLAG_FIN if fin else 0, payload))
        if wait:
            if not stream.replied.wait(timeout):
                raise TimeoutError(f"no SYN_REPLY for stream {sid} {headers}")
            if stream.reset is not None:
                raise ConnectionResetError(f"stream {sid} {headers} reset: {stream.reset}")
        return stream

    def ping(self, pid=1, timeout=5):
        ev = self.pongs.setdefault(pid, threading.Event())
        self.send(control_frame(PING, 0, struct.pack(">I", pid)))
        return ev.wait(timeout)

    def send_goaway(self):
        self.send(control_frame(GOAWAY, 0, struct.pack(">II", self.next_id - 2, 0)))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join(5)

    def abort(self):
        """Vanish without a goodbye: a TCP reset, as from a killed client."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.shutdown(socket.SHUT_RD)  # wakes the reader without sending anything
        self.reader.join(5)
        self.sock.close()

    def wait_closed(self, timeout=10):
        return self.closed.wait(timeout)

    def _recv(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_loop(self):
        try:
            while True:
                w0, w1 = struct.unpack(">II", self._recv(8))
                flags, length = w1 >> 24, w1 & 0xFFFFFF
                payload = self._recv(length)
                if w0 & 0x80000000:
                    self._control(w0 & 0xFFFF, flags, payload)
                else:
                    s = self.streams.get(w0 & 0x7FFFFFFF)
                    if s:
                        s.data += payload
                        if flags & FLAG_FIN:
                            s.finished.set()
        except (EOFError, OSError):
            pass
        finally:
            for s in list(self.streams.values()):
                s.replied.set()
                s.finished.set()
            self.closed.set()

    def _control(self, ftype, flags, payload):
        if ftype in (SYN_REPLY, HEADERS, SYN_STREAM):
            off = 10 if ftype == SYN_STREAM else 4
            decode_header_block(self.decompressor, payload[off:])
            (sid,) = struct.unpack(">I", payload[:4])
            s = self.streams.get(sid & 0x7FFFFFFF)
            if ftype == SYN_REPLY and s:
                s.replied.set()
                if flags & FLAG_FIN:
                    s.finished.set()
        elif ftype == RST_STREAM:
            sid, status = struct.unpack(">II", payload)
            s = self.streams.get(sid)
            if s:
                s.reset = status
                s.replied.set()
                s.finished.set()
        elif ftype == PING:
            (pid,) = struct.unpack(">I", payload)
            self.pongs.setdefault(pid, threading.Event()).set()
        elif ftype == GOAWAY:
            self.goaway = struct.unpack(">II", payload)


class ExecResult:
    def __init__(self, stdout=b"", stderr=b"", error=b"", protocol=""):
        self.stdout, self.stderr, self.error, self.protocol = stdout, stderr, error, protocol

    @property
    def status(self):
        """The v4 error stream's metav1.Status, or None."""
        return json.loads(self.error) if self.error.strip().startswith(b"{") else None

    @property
    def exit_code(self):
        st = self.status
        if st is None:
            return 0 if not self.error else None
        if st.get("status") == "Success":
            return 0
        for cause in st.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        return None


def spdy_exec(url, stdin=None, stdout=True, stderr=True, tty=False, resize=None,
              protocols=("v4.channel.k8s.io",), close_stdin=True, timeout=20,
              on_started=None):
    """Runs an exec or attach session as client-go does. stdin: bytes to send
    (or None for no stdin stream); resize: [(width, height)] sent first."""
    conn = SpdyConnection(url, protocols, timeout)
    try:
        error = conn.open_stream({"streamType": "error"})
        sin = conn.open_stream({"streamType": "stdin"}) if stdin is not None else None
        sout = conn.open_stream({"streamType": "stdout"}) if stdout else None
        serr = conn.open_stream({"streamType": "stderr"}) if stderr and not tty else None
        rsz = None
        if tty and conn.protocol not in ("v2.channel.k8s.io", "channel.k8s.io"):
            rsz = conn.open_stream({"streamType": "resize"})
        for w, h in resize or []:
            rsz.write(json.dumps({"Width": w, "Height": h}).encode() + b"\n")
        if on_started:
            on_started(conn, sin, sout, rsz)
        if sin is not None:
            if stdin:
                sin.write(stdin)
            if close_stdin:
                sin.close()
        out = sout.read_all(timeout) if sout else b""
        err = serr.read_all(timeout) if serr else b""
        status = error.read_all(timeout)
        return ExecResult(out, err, status, conn.protocol)
    finally:
        conn.close()


class SpdyPortForward:
    """One port-forward session; each connect() makes an (error, data) pair."""

    def __init__(self, url, timeout=10):
        self.conn = SpdyConnection(url, ("portforward.k8s.io",), timeout)
        self.request_id = 0
        self.lock = threading.Lock()

    def connect(self, port):
        with self.lock:
            rid = self.request_id
            self.request_id += 1
        error = self.conn.open_stream({"streamType": "error", "port": port, "requestID": rid})
        data = self.conn.open_stream({"streamType": "data", "port": port, "requestID": rid})
        return data, error

    def close(self):
        self.conn.close()


# ---------------------------------------------------------------- WebSocket

WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0, 1, 2, 8, 9, 10


class WsConnection:
    def __init__(self, url, protocols=("v5.channel.k8s.io",), timeout=10, key=None,
                 version="13"):
        self.sock, u, path = _connect(url, timeout)
        key = key or base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Connection: Upgrade",
                 "Upgrade: websocket", f"Sec-WebSocket-Key: {key}",
                 f"Sec-WebSocket-Version: {version}"]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, reason, headers, rest = _read_response(self.sock, timeout)
        if status != 101:
            body = _read_body(self.sock, headers, rest)
            self.sock.close()
            raise HTTPError(status, reason, headers, body)
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.accept_ok = headers.get("sec-websocket-accept", [""])[0] == want
        self.protocol = headers.get("sec-websocket-protocol", [""])[0]
        self.buf = rest
        self.sock.settimeout(timeout)
        self.close_code = None

    def send_frame(self, opcode, payload, fin=True, mask=True, rsv=0):
        head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            head += bytes([mbit | n])
        elif n < 65536:
            head += bytes([mbit | 126]) + struct.pack(">H", n)
        else:
            head += bytes([mbit | 127]) + struct.pack(">Q", n)
        if mask:
            m = os.urandom(4)
            head += m
            payload = bytes(b ^ m[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def _recv(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        b0, b1 = self._recv(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._recv(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._recv(8))
        assert not b1 & 0x80, "server frames must not be masked"
        return b0 & 0x0F, bool(b0 & 0x80), self._recv(n)

    def recv_message(self):
        """(opcode, payload) of the next data message; answers pings;
        (WS_CLOSE, payload) once the server closes."""
        parts, op = [], None
        while True:
            opcode, fin, payload = self.recv_frame()
            if opcode == WS_PING:
                self.send_frame(WS_PONG, payload)
                continue
            if opcode == WS_PONG:
                return WS_PONG, payload
            if opcode == WS_CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if payload else 1005
                return WS_CLOSE, payload
            if opcode != WS_CONT:
                op = opcode
            parts.append(payload)
            if fin:
                return op, b"".join(parts)

    def close(self, code=1000):
        try:
            self.send_frame(WS_CLOSE, struct.pack(">H", code))
        except OSError:
            pass
        self.sock.close()


class WsChannels:
    """The channel.k8s.io framing over a WsConnection."""

    def __init__(self, ws):
        self.ws = ws
        self.b64 = "base64" in ws.protocol

    def send(self, channel, data):
        if self.b64:
            self.ws.send_frame(WS_TEXT, bytes([ord("0") + channel]) + base64.b64encode(data))
        else:
            self.ws.send_frame(WS_BINARY, bytes([channel]) + data)

    def recv(self):
        """(channel, data), or (None, close payload) at the end."""
        op, payload = self.ws.recv_message()
        if op == WS_CLOSE:
            return None, payload
        if op == WS_PONG:
            return "pong", payload
        if self.b64:
            return payload[0] - ord("0"), base64.b64decode(payload[1:])
        return payload[0], payload[1:]


def ws_exec(url, stdin=None, tty=False, resize=None, protocols=("v5.channel.k8s.io",),
            close_stdin=True, timeout=20):
    """exec/attach over WebSocket; returns an ExecResult. stdin is sent and
    (v5) closed with the close signal [255, 0]."""
    ws = WsConnection(url, protocols, timeout)
    ch = WsChannels(ws)
    try:
        for w, h in resize or []:
            ch.send(4, json.dumps({"Width": w, "Height": h}).encode())
        if stdin:
            ch.send(0, stdin)
        if stdin is not None and close_stdin and ws.protocol.startswith("v5."):
            ws.send_frame(WS_BINARY, bytes([255, 0]))
        out, err, status = bytearray(), bytearray(), bytearray()
        first = None
        while True:
            c, data = ch.recv()
            if c is None:
                break
            if first is None:
                first = (c, data)
            if c == 1:
                out += data
            elif c == 2:
                err += data
            elif c == 3:
                status += data
        ws.close()
        res = ExecResult(bytes(out), bytes(err), bytes(status), ws.protocol)
        res.first_message = first
        res.close_code = ws.close_code
        return res
    finally:
        ws.sock.close()


def ws_port_forward(url, protocols=("v4.channel.k8s.io",), timeout=10):
    """Opens a WebSocket port-forward session; returns (WsConnection, WsChannels)."""
    ws = WsConnection(url, protocols, timeout)
    return ws, WsChannels(ws)


# ----------------------------------------------------------- the test daemon

class TestDaemon:
    """tests/stream-testd: the streaming server with a local runtime."""

    def __init__(self, binary, *args):
        self.proc = subprocess.Popen([binary, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.base_url = json.loads(self.proc.stdout.readline())["base_url"]
        self.pid = self.proc.pid

    def request(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def exec_url(self, cmd, tty=False, stdin=False, stdout=True, stderr=True, id="c1"):
        r = self.request(op="exec", id=id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout,
                         stderr=stderr and not tty)
        assert "url" in r, r
        return r["url"]

    def attach_url(self, id="c1", tty=False, stdin=True, stdout=True, stderr=True):
        r = self.request(op="attach", id=id, tty=tty, stdin=stdin, stdout=stdout,
                         stderr=stderr and not tty)
        assert "url" in r, r
        return r["url"]

    def forward_url(self, id="sb1", ports=()):
        r = self.request(op="portforward", id=id, ports=list(ports))
        assert "url" in r, r
        return r["url"]

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def thread_count(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def find_testd():
    """tests/stream-testd from $CRIMUX_STREAM_TESTD or the build tree (built
    on demand there: make check builds it, a bare make does not)."""
    if os.environ.get("CRIMUX_STREAM_TESTD"):
        return os.environ["CRIMUX_STREAM_TESTD"]
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.path.abspath(os.environ.get("CRIMUX_BUILDDIR", here))
    path = os.path.join(build, "tests", "stream-testd")
    if not os.access(path, os.X_OK) and os.path.exists(os.path.join(build, "Makefile")):
        subprocess.run(["make", "-C", build, "tests/stream-testd"], check=False,
                       stdout=subprocess.DEVNULL)
    return path


class EchoServer:
    """A TCP server on 127.0.0.1 that answers each connection with its
    input upper-cased, for port-forward tests. Bounded: it stops with stop()."""

    def __init__(self, upper=True):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.upper = upper
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c):
        with c:
            try:
                while True:
                    b = c.recv(65536)
                    if not b:
                        return
                    c.sendall(b.upper() if self.upper else b)
            except OSError:
                return  # the forwarding side went away

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
