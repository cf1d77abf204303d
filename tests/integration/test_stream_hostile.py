"""Hostile streaming clients against crimuxd in front of the real dockerd
(issue 9): clients that vanish mid-stream, broken framing, and floods of
connections that never present a token. Whatever they do, crimuxd stays up,
a real exec still works, and its descriptors and memory come back.

The `soak` variants run ten times as many sessions; they are skipped unless
selected with `-m soak`."""

import os
import random
import socket
import struct
import threading
import time
import uuid

import pytest

from lab import streaming as st
from lab.cri import CRI, container_config, sandbox_config
from lab.env import wait_for


# ------------------------------------------------------------------ helpers

class Node:
    """A crimuxd of its own in front of dockerd, with one pod of busybox
    containers; its /proc says how many fds and how much memory it holds."""

    def __init__(self, daemon, client, lab):
        self.daemon, self.cri, self.lab = daemon, client, lab
        client.pull(lab.busybox_ref)
        self.sandbox = sandbox_config("hostile-" + uuid.uuid4().hex[:6])
        self.pod = client.run_pod(self.sandbox)

    def container(self, name, script, **kwargs):
        return self.cri.start_container(self.pod, self.sandbox, container_config(
            name, self.lab.busybox_ref, ["sh", "-c", script], **kwargs))

    def exec_url(self, cid, cmd, **kwargs):
        fields = {"stdout": True, "stderr": not kwargs.get("tty", False)}
        fields.update(kwargs)
        return self.cri.Exec(container_id=cid, cmd=cmd, **fields).url

    def alive(self):
        return self.daemon.daemon.running()

    def fds(self):
        return len(os.listdir(f"/proc/{self.daemon.pid}/fd"))

    def threads(self):
        return len(os.listdir(f"/proc/{self.daemon.pid}/task"))

    def rss_kib(self):
        with open(f"/proc/{self.daemon.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def check_exec(self, cid):
        """A real exec still works end to end."""
        res = st.spdy_exec(self.exec_url(cid, ["echo", "still-serving"]))
        assert res.stdout == b"still-serving\n" and res.exit_code == 0


@pytest.fixture
def node(docker_crimuxd_factory, lab):
    daemon = docker_crimuxd_factory()
    with CRI(daemon.endpoint) as client:
        n = Node(daemon, client, lab)
        yield n
        if n.alive():
            client.remove_all_pods()


def kill_socket(sock):
    """Vanish like a killed client: a TCP reset, no goodbye."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def spdy_exec_streams(url, stdin=False):
    conn = st.SpdyConnection(url)
    conn.open_stream({"streamType": "error"})
    streams = {"stdout": conn.open_stream({"streamType": "stdout"})}
    if stdin:
        streams["stdin"] = conn.open_stream({"streamType": "stdin"})
    conn.open_stream({"streamType": "stderr"})
    return conn, streams


# ------------------------------------------- item 2: SIGPIPE on a vanished client

@pytest.mark.parametrize("protocol", ["spdy", "websocket"])
def test_exec_client_killed_while_output_floods(node, protocol):
    """`crictl exec <docker container> yes`, killed after a fraction of a
    second, a few times: crimuxd died of SIGPIPE (exit 141)."""
    cid = node.container("c", "sleep 1000")
    for i in range(6):
        url = node.exec_url(cid, ["yes"])
        if protocol == "spdy":
            conn, streams = spdy_exec_streams(url)
            streams["stdout"].wait_for(lambda d: len(d) > 4096)
            time.sleep(0.05 + 0.05 * i)
            conn.abort()
        else:
            ws = st.WsConnection(url)
            got = 0
            while got < 4096:
                got += len(ws.recv_message()[1])
            time.sleep(0.05 + 0.05 * i)
            kill_socket(ws.sock)
        time.sleep(0.2)
        assert node.alive(), f"crimuxd died after client {i}:\n{node.daemon.log()[-2000:]}"
    node.check_exec(cid)


def test_attach_client_killed_while_output_floods(node):
    cid = node.container("talker", "while :; do head -c 200000 /dev/zero | tr '\\0' x; "
                         "echo; sleep 0.02; done", stdin=True)
    for i in range(6):
        conn = st.SpdyConnection(node.cri.Attach(container_id=cid, stdin=True, stdout=True,
                                                 stderr=True).url)
        conn.open_stream({"streamType": "error"})
        out = conn.open_stream({"streamType": "stdout"})
        conn.open_stream({"streamType": "stdin"})
        conn.open_stream({"streamType": "stderr"})
        out.wait_for(lambda d: len(d) > 4096)
        time.sleep(0.05 + 0.05 * i)
        conn.abort()
        time.sleep(0.2)
        assert node.alive(), f"crimuxd died after client {i}:\n{node.daemon.log()[-2000:]}"
