"""The streaming server over SPDY/3.1, as the kubelet and crictl speak it,
against tests/stream-testd (the server with a local-process runtime)."""

import json
import os
import time

import pytest

from lab import streaming as st


def test_exec_exit_zero_with_stdout_and_stderr(testd):
    url = testd.exec_url(["sh", "-c", "echo out; echo err >&2"])
    r = st.spdy_exec(url)
    assert r.protocol == "v4.channel.k8s.io"
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")
    assert r.status == {"metadata": {}, "status": "Success"}


def test_exec_nonzero_exit_code_in_status(testd):
    r = st.spdy_exec(testd.exec_url(["sh", "-c", "exit 3"]))
    assert r.status["status"] == "Failure"
    assert r.status["reason"] == "NonZeroExitCode"
    assert r.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert r.exit_code == 3


def test_exec_stdin_and_its_close(testd):
    url = testd.exec_url(["sh", "-c", "cat; echo done"], stdin=True)
    r = st.spdy_exec(url, stdin=b"line one\nline two\n")
    assert r.stdout == b"line one\nline two\ndone\n"
    assert r.exit_code == 0


def test_exec_megabytes_through_stdin_and_stdout(testd):
    """Backpressure both ways: more than every buffer on the path holds."""
    payload = os.urandom(3 * 1024 * 1024)
    r = st.spdy_exec(testd.exec_url(["cat"], stdin=True), stdin=payload, timeout=60)
    assert len(r.stdout) == len(payload) and r.stdout == payload
    assert r.exit_code == 0


def test_exec_without_stdin_stream_sees_eof(testd):
    r = st.spdy_exec(testd.exec_url(["sh", "-c", "cat; echo eof"]))
    assert r.stdout == b"eof\n"


def test_tty_and_resize_reach_the_terminal(testd):
    url = testd.exec_url(["sh", "-c", "read x; stty size"], tty=True, stdin=True)
    r = st.spdy_exec(url, stdin=b"go\n", tty=True, resize=[(100, 40)], close_stdin=False)
    assert r.stdout.splitlines()[-1] == b"40 100"
    assert r.exit_code == 0


def test_tty_resize_while_running(testd):
    """A second resize mid-session reaches the pty too."""
    url = testd.exec_url(["sh", "-c", "read x; stty size; read y; stty size"], tty=True,
                         stdin=True)

    def drive(conn, sin, sout, rsz):
        rsz.write(b'{"Width":81,"Height":21}\n')
        sin.write(b"a\n")
        sout.wait_for(lambda d: b"21 81" in d)
        rsz.write(b'{"Width":132,"Height":43}')
        time.sleep(0.2)
        sin.write(b"b\n")

    r = st.spdy_exec(url, stdin=b"", tty=True, close_stdin=False, on_started=drive)
    assert b"21 81" in r.stdout and b"43 132" in r.stdout


def test_tty_exit_code(testd):
    url = testd.exec_url(["sh", "-c", "exit 5"], tty=True, stdin=True)
    r = st.spdy_exec(url, stdin=b"", tty=True)
    assert r.exit_code == 5


def test_attach(testd):
    r = st.spdy_exec(testd.attach_url("web"), stdin=b"hello\n")
    assert r.stdout == b"attached to web\nhello\n"
    assert r.status["status"] == "Success"


def test_runtime_error_becomes_internal_error_status(testd):
    r = st.spdy_exec(testd.exec_url(["true"], id="missing"))
    assert r.status["reason"] == "InternalError"
    assert r.status["code"] == 500
    assert 'container "missing" not found' in r.status["message"]


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io",
                                      "channel.k8s.io"])
def test_older_protocols_report_errors_as_text(testd, protocol):
    ok = st.spdy_exec(testd.exec_url(["echo", "x"]), protocols=[protocol])
    assert ok.protocol == protocol and ok.stdout == b"x\n" and ok.error == b""
    bad = st.spdy_exec(testd.exec_url(["sh", "-c", "exit 4"]), protocols=[protocol])
    assert bad.error == b"command terminated with non-zero exit code: exit status 4"


def test_v5_over_spdy_is_v4(testd):
    r = st.spdy_exec(testd.exec_url(["sh", "-c", "exit 2"]),
                     protocols=["v5.channel.k8s.io", "v4.channel.k8s.io"])
    assert r.protocol == "v5.channel.k8s.io" and r.exit_code == 2


def test_negotiation_picks_the_clients_first_supported(testd):
    conn = st.SpdyConnection(testd.exec_url(["true"]),
                             ["v9.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"])
    assert conn.protocol == "v3.channel.k8s.io"
    conn.close()


def test_negotiation_failure_is_403_with_accepted_versions(testd):
    with pytest.raises(st.HTTPError) as e:
        st.SpdyConnection(testd.exec_url(["true"]), ["v9.channel.k8s.io"])
    assert e.value.status == 403
    assert "v4.channel.k8s.io" in e.value.headers["x-accepted-stream-protocol-versions"]
    with pytest.raises(st.HTTPError) as e:
        st.SpdyConnection(testd.exec_url(["true"]), [])
    assert e.value.status == 400 and "X-Stream-Protocol-Version" in e.value.body


def test_ping_is_answered_and_unrequested_stream_refused(testd):
    url = testd.exec_url(["sh", "-c", "sleep 0.5"])
    conn = st.SpdyConnection(url)
    try:
        assert conn.ping(1) and conn.ping(7)
        with pytest.raises(ConnectionResetError):
            conn.open_stream({"streamType": "stdin"})  # stdin was not requested
        with pytest.raises(ConnectionResetError):
            conn.open_stream({"streamType": "bogus"})
        conn.open_stream({"streamType": "error"})
        out = conn.open_stream({"streamType": "stdout"})
        err = conn.open_stream({"streamType": "stderr"})
        assert out.read_all() == b"" and err.read_all() == b""
        assert conn.wait_closed()
        assert conn.goaway is not None and conn.goaway[1] == 0
    finally:
        conn.close()


def test_port_forward_concurrent_connections(testd, echo):
    pf = st.SpdyPortForward(testd.forward_url())
    try:
        pairs = [pf.connect(echo.port) for _ in range(8)]
        for i, (data, _) in enumerate(pairs):
            data.write(b"conn %d " % i * 1000)
        for i, (data, error) in enumerate(pairs):
            data.close()
            assert data.read_all() == b"CONN %d " % i * 1000
            assert error.read_all() == b""
        assert echo.accepted == 8
        # The session serves new connections after those ended.
        data, error = pf.connect(echo.port)
        data.write(b"again")
        data.close()
        assert data.read_all() == b"AGAIN"
    finally:
        pf.close()


def test_port_forward_large_transfer(testd, echo):
    pf = st.SpdyPortForward(testd.forward_url())
    try:
        data, _ = pf.connect(echo.port)
        payload = os.urandom(2 * 1024 * 1024).hex().encode()[:2 * 1024 * 1024]
        data.write(payload)
        data.close()
        assert data.read_all(60) == payload.upper()
    finally:
        pf.close()


def test_port_forward_refused_port_reports_on_error_stream(testd, echo):
    pf = st.SpdyPortForward(testd.forward_url(id="sb-x"))
    try:
        echo.stop()
        data, error = pf.connect(echo.port)
        msg = error.read_all().decode()
        assert f"error forwarding port {echo.port} to pod sb-x" in msg
        assert "Connection refused" in msg
        assert data.read_all() == b""
    finally:
        pf.close()


def test_port_forward_bad_headers_are_reset(testd):
    pf = st.SpdyPortForward(testd.forward_url())
    try:
        with pytest.raises(ConnectionResetError):
            pf.conn.open_stream({"streamType": "data", "port": "0", "requestID": "1"})
        with pytest.raises(ConnectionResetError):
            pf.conn.open_stream({"streamType": "data", "requestID": "1"})
        with pytest.raises(ConnectionResetError):
            pf.conn.open_stream({"streamType": "weird", "port": "80", "requestID": "1"})
        pf.conn.open_stream({"streamType": "error", "port": "80", "requestID": "2"})
        with pytest.raises(ConnectionResetError):  # a second error stream for request 2
            pf.conn.open_stream({"streamType": "error", "port": "80", "requestID": "2"})
    finally:
        pf.close()


def test_port_forward_goaway_ends_the_session(testd, echo):
    pf = st.SpdyPortForward(testd.forward_url())
    data, _ = pf.connect(echo.port)
    data.write(b"x")
    data.close()
    assert data.read_all() == b"X"
    pf.conn.send_goaway()
    assert pf.conn.wait_closed(5), "server did not close after GOAWAY"
    pf.close()


def test_stats_return_to_zero(testd):
    st.spdy_exec(testd.exec_url(["true"]))
    deadline = time.monotonic() + 5
    while testd.request(op="stats")["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert testd.request(op="stats") == {"tokens": 0, "sessions": 0, "pending": 0}
    json.dumps(testd.request(op="stats"))
