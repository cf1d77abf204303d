"""Exec, Attach and PortForward for Docker pods through crimuxd: the URLs
point at crimux's streaming server on loopback, which runs the sessions on
Docker's hijacked exec and attach streams and in the pod's network
namespace. Driven with the tests' SPDY/3.1 and WebSocket clients (what the
kubelet and crictl speak)."""

import os
import urllib.parse
import uuid

import grpc
import pytest

from lab import streaming as st
from lab.cri import container_config, sandbox_config


@pytest.fixture
def pod(dcri, lab):
    dcri.pull(lab.busybox_ref)
    sb = sandbox_config("stream-" + uuid.uuid4().hex[:6])
    pod_id = dcri.run_pod(sb)
    yield pod_id, sb
    dcri.remove_pod(pod_id)


def start(dcri, lab, pod, name, script, **kwargs):
    return dcri.start_container(pod[0], pod[1], container_config(
        name, lab.busybox_ref, ["sh", "-c", script], **kwargs))


def exec_url(dcri, cid, cmd, **kwargs):
    fields = {"stdout": True, "stderr": not kwargs.get("tty", False)}
    fields.update(kwargs)
    return dcri.Exec(container_id=cid, cmd=cmd, **fields).url


def test_exec(dcri, lab, pod):
    cid = start(dcri, lab, pod, "c", "sleep 1000")
    url = exec_url(dcri, cid, ["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"
    res = st.spdy_exec(url)
    assert (res.stdout, res.stderr, res.exit_code) == (b"out\n", b"err\n", 5)
    # stdin reaches the process, and its EOF too.
    res = st.spdy_exec(exec_url(dcri, cid, ["sh", "-c", "cat; echo done"], stdin=True),
                       stdin=b"hello through docker\n")
    assert res.stdout == b"hello through docker\ndone\n" and res.exit_code == 0
    # WebSocket (crictl) as well.
    res = st.ws_exec(exec_url(dcri, cid, ["sh", "-c", "tr a-z A-Z"], stdin=True), stdin=b"abc")
    assert res.stdout == b"ABC" and res.exit_code == 0


def test_exec_tty_and_resize(dcri, lab, pod):
    cid = start(dcri, lab, pod, "c", "sleep 1000")
    url = exec_url(dcri, cid, ["sh", "-c", "sleep 1; stty size"], tty=True, stdin=True)
    res = st.spdy_exec(url, stdin=b"", tty=True, resize=[(101, 31)], close_stdin=False)
    assert res.stdout.strip() == b"31 101" and res.exit_code == 0


def test_exec_killed_when_client_leaves(dcri, lab, pod):
    cid = start(dcri, lab, pod, "c", "sleep 1000")
    url = exec_url(dcri, cid, ["sh", "-c", "echo started; sleep 600"])
    conn = st.SpdyConnection(url)
    conn.open_stream({"streamType": "error"})
    out = conn.open_stream({"streamType": "stdout"})
    conn.open_stream({"streamType": "stderr"})
    out.wait_for(lambda d: b"started" in d)
    conn.abort()
    from lab.env import wait_for
    ps = lambda: dcri.ExecSync(container_id=cid, cmd=["ps"], timeout=5).stdout.decode()
    wait_for(lambda: "sleep 600" not in ps(), 10, "the abandoned command to be killed")


def test_attach(dcri, lab, pod):
    cid = start(dcri, lab, pod, "reader", "echo ready; read line; echo got:$line; sleep 1",
                stdin=True)
    res = st.spdy_exec(dcri.Attach(container_id=cid, stdin=True, stdout=True, stderr=True).url,
                       stdin=b"line-1\n", close_stdin=False)
    assert b"got:line-1" in res.stdout and res.exit_code == 0


def test_port_forward(dcri, lab, pod):
    start(dcri, lab, pod, "web", "mkdir /w; echo forwarded > /w/index.html; "
                                 "exec httpd -f -p 8080 -h /w")
    url = dcri.PortForward(pod_sandbox_id=pod[0], port=[8080]).url
    pf = st.SpdyPortForward(url)
    try:
        from lab.env import wait_for

        def fetch():
            data, error = pf.connect(8080)
            data.write(b"GET / HTTP/1.0\r\n\r\n")
            data.close()
            body = data.read_all()
            return body if b"forwarded" in body else None
        assert b"200 OK" in wait_for(fetch, 10, "httpd through the forward")
        data, error = pf.connect(9999)  # nothing listens there
        assert b"9999" in error.read_all()
    finally:
        pf.close()


def test_streaming_errors(dcri, lab, pod):
    cid = dcri.CreateContainer(pod_sandbox_id=pod[0], sandbox_config=pod[1], config=container_config(
        "idle", lab.busybox_ref, ["true"])).container_id
    with pytest.raises(grpc.RpcError) as err:
        dcri.Exec(container_id=cid, cmd=["true"], stdout=True)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        dcri.Exec(container_id="0" * 64, cmd=["true"], stdout=True)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        dcri.PortForward(pod_sandbox_id=pod[0], port=[70000])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_port_forward_concurrent_connections_both_ways(dcri, lab, pod):
    start(dcri, lab, pod, "echo", "exec nc -ll -p 9000 -e cat")
    url = dcri.PortForward(pod_sandbox_id=pod[0], port=[9000]).url
    pf = st.SpdyPortForward(url)
    try:
        from lab.env import wait_for

        def echoes():
            data, _ = pf.connect(9000)
            data.write(b"ping")
            data.close()
            return data.read_all() == b"ping"
        wait_for(echoes, 10, "the echo server in the pod")
        payloads = [bytes([65 + i]) * (256 << 10) for i in range(8)]
        pairs = [pf.connect(9000) for _ in payloads]
        for (data, _), payload in zip(pairs, payloads):
            data.write(payload)
        for data, _ in pairs:
            data.close()
        assert [data.read_all(timeout=30) for data, _ in pairs] == payloads
    finally:
        pf.close()
    # And over WebSocket, as crictl may: a 2-byte port prefix, then the data.
    ws, ch = st.ws_port_forward(dcri.PortForward(pod_sandbox_id=pod[0], port=[9000]).url)
    try:
        ports = {}
        while len(ports) < 2:  # each channel first says its port
            channel, data = ch.recv()
            ports[channel] = data
        assert ports == {0: b"\x28\x23", 1: b"\x28\x23"}  # 9000, little-endian
        ch.send(0, b"over websocket")
        got = b""
        while got != b"over websocket":
            channel, data = ch.recv()
            assert channel == 0, (channel, data)
            got += data
    finally:
        ws.sock.close()


def spdy_garbage(url, raw):
    """Upgrades, sends raw bytes as SPDY frames; True once the server closed."""
    conn = st.SpdyConnection(url)
    conn.send(raw)
    conn.wait_closed(10)
    return conn


def still_serves(dcri, cid):
    res = st.spdy_exec(exec_url(dcri, cid, ["echo", "alive"]))
    assert res.stdout == b"alive\n" and res.exit_code == 0


def test_misuse_gets_clean_errors_and_the_server_goes_on(dcri, lab, pod):
    import struct
    cid = start(dcri, lab, pod, "c", "sleep 1000")
    url = exec_url(dcri, cid, ["true"])
    assert st.spdy_exec(url).exit_code == 0
    with pytest.raises(st.HTTPError) as err:  # single use
        st.spdy_exec(url)
    assert err.value.status == 404
    base = url.rsplit("/", 2)[0]
    with pytest.raises(st.HTTPError) as err:
        st.spdy_exec(base + "/exec/" + "A" * 22)
    assert err.value.status == 404
    # Malformed SPDY after a valid upgrade: the session is dropped, cleanly.
    for raw in (b"\xff\xff\xff\xff" * 8, struct.pack(">II", 1, 0xFFFFFF),
                st.data_frame(0, 0, b"x")):
        conn = spdy_garbage(exec_url(dcri, cid, ["sleep", "60"]), raw)
        assert conn.goaway and conn.goaway[1] == 1  # PROTOCOL_ERROR
    still_serves(dcri, cid)


def counts(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return fds, threads


def test_thousand_short_sessions_leak_nothing(dcri, docker_crimuxd, lab, pod):
    """1,000 sessions through crimuxd (exec over SPDY and WebSocket,
    port-forward): crimuxd's fds and threads are what they were before."""
    import time
    from lab.env import wait_for
    cid = start(dcri, lab, pod, "echo", "exec nc -ll -p 9000 -e cat")
    still_serves(dcri, cid)
    pf_url = lambda: dcri.PortForward(pod_sandbox_id=pod[0], port=[9000]).url  # noqa: E731

    def session(i):
        kind = i % 8
        if kind == 0:
            r = st.spdy_exec(exec_url(dcri, cid, ["sh", "-c", f"exit {i % 3}"]))
            assert r.exit_code == i % 3
        elif kind == 1:
            r = st.ws_exec(exec_url(dcri, cid, ["cat"], stdin=True, stderr=False),
                           stdin=b"s%d" % i)
            assert r.stdout == b"s%d" % i and r.exit_code == 0
        else:
            pf = st.SpdyPortForward(pf_url())
            data, _ = pf.connect(9000)
            data.write(b"p%d" % i)
            data.close()
            assert data.read_all() == b"p%d" % i
            pf.close()

    for i in range(16):  # warm the pools, then measure
        session(i)
    time.sleep(1)
    before = counts(docker_crimuxd.pid)
    t0 = time.monotonic()
    for i in range(1000):
        session(i)
    elapsed = time.monotonic() - t0
    # Sessions end asynchronously, and an idle pool thread leaves after 30 s.
    # Fewer fds than before is fine: a connection open then may have closed.
    wait_for(lambda: all(a <= b for a, b in zip(counts(docker_crimuxd.pid), before)), 45,
             "fds and threads back to where they were")
    print(f"1000 sessions through crimuxd in {elapsed:.1f}s")


def test_port_forward_reaches_an_ipv6_only_server(dcri, lab, pod):
    # Listens on the pod's ::1 only: the forward must try IPv6 after IPv4.
    start(dcri, lab, pod, "v6", "mkdir /w; echo six > /w/index.html; "
                                "exec httpd -f -p [::1]:9006 -h /w")
    pf = st.SpdyPortForward(dcri.PortForward(pod_sandbox_id=pod[0], port=[9006]).url)
    try:
        from lab.env import wait_for

        def fetch():
            data, _ = pf.connect(9006)
            data.write(b"GET / HTTP/1.0\r\n\r\n")
            data.close()
            return data.read_all().endswith(b"\r\n\r\nsix\n")
        wait_for(fetch, 10, "the IPv6-only server through the forward")
    finally:
        pf.close()
