"""The streaming server over WebSocket (channel.k8s.io protocols, v5 close
signal, base64 variants, port-forward), against tests/stream-testd."""

import json
import struct

import pytest

from lab import streaming as st


def test_v5_exec_with_stdin_close_signal(testd):
    url = testd.exec_url(["sh", "-c", "cat; echo done; exit 6"], stdin=True)
    r = st.ws_exec(url, stdin=b"abc\n")
    assert r.protocol == "v5.channel.k8s.io"
    assert r.stdout == b"abc\ndone\n"
    assert r.exit_code == 6
    assert r.status["details"]["causes"] == [{"reason": "ExitCode", "message": "6"}]
    assert r.first_message == (1, b""), "an empty stdout message announces the session"
    assert r.close_code == 1000


def test_handshake_accept_key_and_protocol_choice(testd):
    ws = st.WsConnection(testd.exec_url(["true"]),
                         ["v9.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"])
    assert ws.accept_ok
    assert ws.protocol == "v4.channel.k8s.io", "the client's order decides"
    ws.close()


def test_v4_and_stderr(testd):
    r = st.ws_exec(testd.exec_url(["sh", "-c", "echo o; echo e >&2"]),
                   protocols=["v4.channel.k8s.io"])
    assert (r.stdout, r.stderr) == (b"o\n", b"e\n")
    assert r.status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("protocol", ["v4.base64.channel.k8s.io", "base64.channel.k8s.io"])
def test_base64_protocols(testd, protocol):
    url = testd.exec_url(["sh", "-c", "head -c 5; printf '\\377\\000\\001'"], stdin=True)
    r = st.ws_exec(url, stdin=b"hello world", protocols=[protocol], close_stdin=False)
    assert r.protocol == protocol
    assert r.stdout == b"hello\xff\x00\x01"


def test_v1_channel_protocol_reports_failure_as_text(testd):
    ok = st.ws_exec(testd.exec_url(["true"]), protocols=["channel.k8s.io"])
    assert ok.error == b""
    bad = st.ws_exec(testd.exec_url(["sh", "-c", "exit 9"]), protocols=["channel.k8s.io"])
    assert bad.error == b"command terminated with non-zero exit code: exit status 9"


def test_no_subprotocol_means_binary_channels(testd):
    r = st.ws_exec(testd.exec_url(["echo", "plain"]), protocols=[])
    assert r.protocol == "" and r.stdout == b"plain\n"


def test_tty_resize(testd):
    url = testd.exec_url(["sh", "-c", "read x; stty size"], tty=True, stdin=True)
    r = st.ws_exec(url, stdin=b"go\n", tty=True, resize=[(120, 50)])
    assert r.stdout.splitlines()[-1] == b"50 120"
    assert r.exit_code == 0


def test_attach(testd):
    r = st.ws_exec(testd.attach_url("db"), stdin=b"ping\n")
    assert r.stdout == b"attached to db\nping\n"


def test_large_fragmented_stdin(testd):
    """A message split into continuation frames is reassembled."""
    url = testd.exec_url(["sh", "-c", "wc -c"], stdin=True, stderr=False)
    ws = st.WsConnection(url)
    body = bytes([0]) + b"x" * 100000
    for i in range(0, len(body), 30000):
        chunk = body[i:i + 30000]
        ws.send_frame(st.WS_BINARY if i == 0 else st.WS_CONT, chunk,
                      fin=i + 30000 >= len(body))
    ws.send_frame(st.WS_BINARY, bytes([255, 0]))
    ch, out = st.WsChannels(ws), b""
    while True:
        c, data = ch.recv()
        if c is None:
            break
        if c == 1:
            out += data
    ws.close()
    assert out.strip() == b"100000"


def test_ping_pong_and_client_close_abandons_the_process(testd):
    url = testd.exec_url(["sh", "-c", "sleep 60"], stdin=True)
    ws = st.WsConnection(url)
    ch = st.WsChannels(ws)
    assert ch.recv() == (1, b"")
    ws.send_frame(st.WS_PING, b"are you there")
    assert ch.recv() == ("pong", b"are you there")
    ws.send_frame(st.WS_CLOSE, struct.pack(">H", 1000))
    op, payload = ws.recv_message()
    assert op == st.WS_CLOSE
    ws.sock.close()
    st_wait_idle(testd)


def st_wait_idle(testd, timeout=10):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if testd.request(op="stats")["sessions"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("sessions did not end")


def test_unmasked_client_frame_is_a_protocol_error(testd):
    ws = st.WsConnection(testd.exec_url(["sh", "-c", "sleep 60"], stdin=True))
    ws.recv_message()  # the announcement
    ws.send_frame(st.WS_BINARY, b"\x00abc", mask=False)
    while True:
        op, payload = ws.recv_message()
        if op == st.WS_CLOSE:
            break
    assert ws.close_code == 1002
    ws.sock.close()
    st_wait_idle(testd)


def test_reserved_bits_are_a_protocol_error(testd):
    ws = st.WsConnection(testd.exec_url(["sh", "-c", "sleep 60"]))
    ws.recv_message()
    ws.send_frame(st.WS_BINARY, b"\x00abc", rsv=4)
    while ws.recv_message()[0] != st.WS_CLOSE:
        pass
    assert ws.close_code == 1002
    ws.sock.close()


def test_handshake_errors(testd):
    with pytest.raises(st.HTTPError) as e:
        st.WsConnection(testd.exec_url(["true"]), version="8")
    assert e.value.status == 426 and e.value.headers["sec-websocket-version"] == ["13"]
    with pytest.raises(st.HTTPError) as e:
        st.WsConnection(testd.exec_url(["true"]), ["v9.channel.k8s.io"])
    assert e.value.status == 403


def test_port_forward_prefixes_and_data(testd, echo):
    other = st.EchoServer(upper=False)
    try:
        ws, ch = st.ws_port_forward(testd.forward_url(ports=[echo.port, other.port]))
        assert ws.protocol == "v4.channel.k8s.io"
        first = {}
        while len(first) < 4:
            c, data = ch.recv()
            first.setdefault(c, data)
        le = lambda p: struct.pack("<H", p)  # noqa: E731
        assert first == {0: le(echo.port), 1: le(echo.port), 2: le(other.port),
                         3: le(other.port)}
        ch.send(0, b"to upper")
        ch.send(2, b"As Is")
        got = {}
        while len(got) < 2:
            c, data = ch.recv()
            got[c] = got.get(c, b"") + data
        assert got == {0: b"TO UPPER", 2: b"As Is"}
        ws.close()
    finally:
        other.stop()


def test_port_forward_error_channel(testd, echo):
    echo.stop()
    ws, ch = st.ws_port_forward(testd.forward_url(id="sb-y", ports=[echo.port]))
    msgs = {}
    while True:
        c, data = ch.recv()
        if c is None:
            break
        msgs[c] = msgs.get(c, b"") + data
    port = struct.pack("<H", echo.port)
    assert msgs[0] == port
    assert msgs[1].startswith(port) and b"Connection refused" in msgs[1]
    assert b"to pod sb-y" in msgs[1]
    ws.sock.close()


def test_port_forward_base64(testd, echo):
    ws, ch = st.ws_port_forward(testd.forward_url(ports=[echo.port]),
                                protocols=["v4.base64.channel.k8s.io"])
    assert ch.b64
    assert ch.recv()[0] in (0, 1) and ch.recv()[0] in (0, 1)
    ch.send(0, b"b64 data")
    assert ch.recv() == (0, b"B64 DATA")
    ws.close()
    json.dumps({})


# --- message reassembly under hostile framing (issue 9, item 3) ---

def _wc_session(testd):
    """An exec of `wc -c` with stdin: what reaches it is counted."""
    ws = st.WsConnection(testd.exec_url(["sh", "-c", "wc -c"], stdin=True, stderr=False))
    assert ws.recv_message() == (st.WS_BINARY, b"\x01")  # the announcement
    return ws


def _finish_wc(ws):
    """Closes stdin (v5 close signal); the count wc printed, as an int."""
    ws.send_frame(st.WS_BINARY, bytes([255, 0]))
    out = b""
    while True:
        op, payload = ws.recv_message()
        if op == st.WS_CLOSE:
            break
        if payload[:1] == b"\x01":
            out += payload[1:]
    ws.sock.close()
    return int(out.strip())


def _close_code(ws):
    while ws.recv_message()[0] != st.WS_CLOSE:
        pass
    ws.sock.close()
    return ws.close_code


@pytest.mark.parametrize("opcode", [st.WS_TEXT, st.WS_BINARY])
def test_empty_fragmented_message_is_dropped(testd, opcode):
    """An empty non-final frame, then an empty final continuation: an empty
    message, dropped like an unfragmented empty one (crashed the server)."""
    ws = _wc_session(testd)
    ws.send_frame(opcode, b"", fin=False)
    ws.send_frame(st.WS_CONT, b"", fin=True)
    ws.send_frame(st.WS_BINARY, b"")
    ws.send_frame(st.WS_BINARY, b"\x00abc")
    assert _finish_wc(ws) == 3
    assert testd.alive()


def test_fragments_of_every_size_with_control_frames_between(testd):
    """Empty first fragment, empty middles, the channel byte alone, pings
    inside the message: one message, in order."""
    ws = _wc_session(testd)
    ws.send_frame(st.WS_BINARY, b"", fin=False)
    ws.send_frame(st.WS_CONT, b"", fin=False)
    ws.send_frame(st.WS_PING, b"mid")
    ws.send_frame(st.WS_CONT, b"\x00", fin=False)
    ws.send_frame(st.WS_CONT, b"", fin=False)
    ws.send_frame(st.WS_PONG, b"unsolicited")
    ws.send_frame(st.WS_CONT, b"hello", fin=False)
    ws.send_frame(st.WS_CONT, b"", fin=True)
    assert ws.recv_message() == (st.WS_PONG, b"mid")
    assert _finish_wc(ws) == 5


def test_many_empty_continuations_cost_nothing(testd):
    ws = _wc_session(testd)
    ws.send_frame(st.WS_BINARY, b"\x00x", fin=False)
    empty = bytes([0x00, 0x80, 1, 2, 3, 4])  # masked, empty, not final
    ws.sock.sendall(empty * 20000)
    ws.send_frame(st.WS_CONT, b"y", fin=True)
    assert _finish_wc(ws) == 2


@pytest.mark.parametrize("frames,code", [
    ([(st.WS_CONT, b"\x00abc", True)], 1002),                        # no message to continue
    ([(st.WS_CONT, b"", True)], 1002),
    ([(st.WS_BINARY, b"", False), (st.WS_TEXT, b"", True)], 1002),   # new message inside one
    ([(st.WS_BINARY, b"\x00", False), (st.WS_BINARY, b"\x00", False)], 1002),
    ([(st.WS_PING, b"", False)], 1002),                              # fragmented control frame
    ([(st.WS_CLOSE, b"x" * 126, True)], 1002),                       # control frame too long
])
def test_broken_fragmentation_is_a_protocol_error(testd, frames, code):
    ws = _wc_session(testd)
    for op, payload, fin in frames:
        ws.send_frame(op, payload, fin=fin)
    assert _close_code(ws) == code
    st_wait_idle(testd)


def test_reassembled_message_over_the_limit_is_refused(testd):
    """Each fragment is small; the message they make is not (128 KiB max)."""
    ws = _wc_session(testd)
    ws.send_frame(st.WS_BINARY, b"\x00", fin=False)
    try:
        for _ in range(40):
            ws.send_frame(st.WS_CONT, b"z" * 4096, fin=False)
    except OSError:
        pass  # the server may close while we still send
    assert _close_code(ws) == 1009
    st_wait_idle(testd)
