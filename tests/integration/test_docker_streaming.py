"""Exec, Attach and PortForward for Docker pods through crimuxd: the URLs
point at crimux's streaming server on loopback, which runs the sessions on
Docker's hijacked exec and attach streams and in the pod's network
namespace. Driven with the tests' SPDY/3.1 and WebSocket clients (what the
kubelet and crictl speak)."""

import urllib.parse
import uuid

import grpc
import pytest

from lab import streaming as st
from lab.cri import container_config, pb, sandbox_config


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
