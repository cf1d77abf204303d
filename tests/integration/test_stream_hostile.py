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
import time
import uuid

import pytest

from lab import procstat
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
        return procstat.usage(self.daemon.pid).fds

    def threads(self):
        return procstat.usage(self.daemon.pid).threads

    def rss_kib(self):
        return procstat.usage(self.daemon.pid).rss_kib

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


# ------------------------------------------- item 3: WebSocket reassembly, through crimuxd

def test_websocket_empty_fragments_through_crimuxd(node):
    """Any token holder could crash crimuxd with two empty frames."""
    cid = node.container("c", "sleep 1000")
    ws = st.WsConnection(node.exec_url(cid, ["cat"], stdin=True, stderr=False))
    ws.send_frame(st.WS_TEXT, b"", fin=False)
    ws.send_frame(st.WS_CONT, b"", fin=True)
    ws.send_frame(st.WS_BINARY, b"\x00survived")
    ws.send_frame(st.WS_BINARY, b"\xff\x00")
    out = b""
    while True:
        op, payload = ws.recv_message()
        if op == st.WS_CLOSE:
            break
        if payload[:1] == b"\x01":
            out += payload[1:]
    ws.sock.close()
    assert out == b"survived"
    assert node.alive()


# ------------------------------- sessions killed at random points, then nothing left over

KINDS = ("exec-spdy", "exec-ws", "attach", "forward-spdy", "forward-ws")
POINTS = ("request", "upgraded", "streams", "flowing", "garbage", "complete")


class Chaos:
    """Runs exec, attach and port-forward sessions and kills each at a
    point chosen by a seeded random generator (printed on failure)."""

    def __init__(self, node):
        self.node = node
        self.exec_cid = node.container("c", "sleep 100000")
        self.attach_cid = node.container("reader", "exec cat", stdin=True)
        node.container("echo", "exec nc -ll -p 9000 -e cat")
        node.check_exec(self.exec_cid)

    def url(self, kind, rng):
        """The session's URL, and whether it ends on its own once stdin
        is closed (`yes` and an attach to `cat` do not)."""
        c = self.node.cri
        if kind.startswith("exec"):
            cmd = rng.choice([["yes"], ["cat"], ["sh", "-c", "echo hi; sleep 3"]])
            return self.node.exec_url(self.exec_cid, cmd, stdin=True), cmd == ["yes"]
        if kind == "attach":
            return c.Attach(container_id=self.attach_cid, stdin=True, stdout=True,
                            stderr=True).url, True
        return c.PortForward(pod_sandbox_id=self.node.pod, port=[9000]).url, False

    def session(self, rng, kind, point):
        url, endless = self.url(kind, rng)
        if point == "request":
            host, port = url.split("//")[1].split("/")[0].split(":")
            s = socket.create_connection((host, int(port)), timeout=5)
            path = url.split(port, 1)[1]
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()[:rng.randrange(1, 40)])
            kill_socket(s)
            return
        if kind.endswith("ws"):
            self._ws(rng, kind, point, url, endless)
        else:
            self._spdy(rng, kind, point, url, endless)

    def _spdy(self, rng, kind, point, url, endless):
        forward = kind.startswith("forward")
        conn = st.SpdyConnection(url, ("portforward.k8s.io",) if forward else
                                 ("v4.channel.k8s.io",), timeout=10)
        try:
            if point == "upgraded":
                return
            if point == "garbage":
                conn.send(os.urandom(rng.randrange(1, 2000)))
                time.sleep(rng.random() * 0.1)
                return
            if forward:
                data = conn.open_stream({"streamType": "error", "port": 9000, "requestID": 0})
                data = conn.open_stream({"streamType": "data", "port": 9000, "requestID": 0})
                if point == "streams":
                    return
                data.write(os.urandom(rng.randrange(1, 200000)))
                if point == "complete":
                    data.close()
                    conn.send_goaway()
                    conn.wait_closed(10)
                else:
                    time.sleep(rng.random() * 0.2)
                return
            conn.open_stream({"streamType": "error"})
            stdin = conn.open_stream({"streamType": "stdin"})
            out = conn.open_stream({"streamType": "stdout"})
            conn.open_stream({"streamType": "stderr"})
            if point == "streams":
                return
            stdin.write(os.urandom(rng.randrange(1, 100000)))
            if point == "complete":
                stdin.close()
                if endless:  # a polite goodbye while it still runs
                    out.wait_for(lambda d: len(d) > 0, 5)
                    conn.send_goaway()
                    conn.wait_closed(10)
                    return
                out.read_all(15)
            else:
                time.sleep(rng.random() * 0.3)
        finally:
            conn.abort()

    def _ws(self, rng, kind, point, url, endless):
        forward = kind.startswith("forward")
        ws = st.WsConnection(url, ("v4.channel.k8s.io",) if forward else
                             ("v5.channel.k8s.io",), timeout=10)
        try:
            if point == "upgraded":
                return
            if point == "garbage":
                ws.sock.sendall(os.urandom(rng.randrange(1, 2000)))
                time.sleep(rng.random() * 0.1)
                return
            ch = st.WsChannels(ws)
            ch.recv()  # the first message: a port, or the announcement
            if point == "streams":
                return
            for _ in range(rng.randrange(1, 5)):
                ch.send(0, os.urandom(rng.randrange(1, 30000)))
            if point == "complete" and not forward:
                ws.send_frame(st.WS_BINARY, b"\xff\x00")
                if endless:  # a polite goodbye while it still runs
                    ws.send_frame(st.WS_CLOSE, struct.pack(">H", 1000))
                deadline = time.monotonic() + 15
                while ch.recv()[0] is not None and time.monotonic() < deadline:
                    pass
            else:
                time.sleep(rng.random() * 0.3)
        finally:
            kill_socket(ws.sock)

    def run(self, n, seed, workers=4):
        import concurrent.futures
        rng = random.Random(seed)
        plan = [(random.Random(rng.random()), rng.choice(KINDS), rng.choice(POINTS))
                for _ in range(n)]
        errors = []

        def one(args):
            r, kind, point = args
            try:
                self.session(r, kind, point)
            except (OSError, EOFError, TimeoutError, st.HTTPError) as e:
                # A session cut short may see anything on its own socket;
                # crimuxd's health is checked afterwards.
                errors.append((kind, point, repr(e)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, plan))
        return errors


def settle(node, baseline, timeout=60):
    """Waits for crimuxd's fds and threads to come back to the baseline
    (a session's threads end a moment after its client; an idle pool
    thread leaves after 30 s)."""
    wait_for(lambda: node.fds() <= baseline[0] and node.threads() <= baseline[1], timeout,
             "fds and threads back to the baseline")


def leftover_processes(node, cid):
    ps = node.cri.ExecSync(container_id=cid, cmd=["ps", "-o", "pid,args"], timeout=10)
    return [line for line in ps.stdout.decode().splitlines()[1:]
            if "yes" in line or line.split(None, 1)[1:] == ["cat"]]


def steady(node, samples=20):
    """(fds, threads) once they have not changed for `samples` looks 50 ms
    apart: the sessions before have finished unwinding."""
    last, same = None, 0
    while same < samples:
        now = (node.fds(), node.threads())
        same = same + 1 if now == last else 0
        last = now
        time.sleep(0.05)
    return last


def chaos_test(node, n, seed):
    chaos = Chaos(node)
    chaos.run(20, seed + 1)  # warm the pools and allocator
    base = steady(node)
    base_rss = node.rss_kib()
    errors, rss = [], [base_rss]
    for batch in range(4):  # RSS after each quarter: a leak keeps growing
        errors += chaos.run(n // 4, seed + 100 * batch)
        assert node.alive(), f"crimuxd died (seed {seed}):\n{node.daemon.log()[-3000:]}"
        settle(node, base)
        rss.append(node.rss_kib())
    node.check_exec(chaos.exec_cid)
    settle(node, base)
    try:
        wait_for(lambda: not leftover_processes(node, chaos.exec_cid), 20,
                 "every abandoned exec to be killed")
    except TimeoutError:
        raise AssertionError(f"left running (seed {seed}): "
                             f"{leftover_processes(node, chaos.exec_cid)}\n"
                             f"{node.daemon.log()[-6000:]}")
    grown = node.rss_kib() - base_rss
    print(f"{n} hostile sessions (seed {seed}): {len(errors)} saw errors on their own "
          f"socket; RSS {base_rss} KiB -> {base_rss + grown} KiB (by quarter: {rss})")
    # Memory comes back to the allocator, not always to the system: a leak
    # grows with the sessions, this bound does not. Under ASan LeakSanitizer's
    # report at exit is the sharper check (stop_checked fails the test on it).
    allowance = procstat.rss_allowance_kib(node.daemon.pid, 16 * 1024)
    assert grown < allowance, f"RSS grew by {grown} KiB over {n} sessions (seed {seed})"


def test_sessions_killed_at_random_points(node):
    """~100 exec/attach/port-forward sessions over SPDY and WebSocket, each
    killed at a random point (before its request is whole, after the
    upgrade, with streams open, while data flows, after garbage) or
    finished: crimuxd stays up, a real exec works, its fds and threads come
    back, no abandoned process keeps running, memory stays bounded."""
    chaos_test(node, 100, seed=int(os.environ.get("CRIMUX_CHAOS_SEED", "9")))


@pytest.mark.soak
def test_thousand_sessions_killed_at_random_points(node):
    chaos_test(node, 1000, seed=int(os.environ.get("CRIMUX_CHAOS_SEED", "1009")))


# ------------------------------------------- item 7: floods without a token

def test_unauthenticated_flood_while_a_real_exec_succeeds(node):
    """300 idle connections and 100 half-sent requests on the streaming
    port (more than its 256 session slots): a real exec still succeeds at
    once, over SPDY and WebSocket, and the flood leaves nothing behind."""
    cid = node.container("c", "sleep 1000")
    node.check_exec(cid)
    base = steady(node)
    host, port = node.exec_url(cid, ["true"]).split("//")[1].split("/")[0].split(":")
    socks = []
    try:
        for i in range(400):
            s = socket.create_connection((host, int(port)), timeout=5)
            if i >= 300:
                s.sendall(b"GET /exec/" + b"A" * (i % 30))
            socks.append(s)
        node.check_exec(cid)
        r = st.ws_exec(node.exec_url(cid, ["echo", "ws"]))
        assert r.stdout == b"ws\n"
        assert node.threads() - base[1] < 2 * 64 + 16, "the flood's threads are bounded"
    finally:
        for s in socks:
            s.close()
    assert node.alive()
    settle(node, base)


# ------------------------------------------- containerd pods: its streaming server, our relay

def test_containerd_exec_clients_killed_mid_stream(crimuxd, lab):
    """For containerd's pods the URL is containerd's own streaming server,
    reached through crimux's relay of Exec: clients that vanish mid-stream
    leave crimuxd up, its fds where they were, and exec still working."""
    with CRI(crimuxd.endpoint) as client:
        client.pull(lab.busybox_ref)
        sb = sandbox_config("hostile-ctd-" + uuid.uuid4().hex[:6])
        pod = client.run_pod(sb)
        try:
            cid = client.start_container(pod, sb, container_config(
                "c", lab.busybox_ref, ["sh", "-c", "sleep 1000"]))

            def fds():
                return len(os.listdir(f"/proc/{crimuxd.pid}/fd"))
            client.Exec(container_id=cid, cmd=["true"], stdout=True)
            base = fds()
            for i in range(6):
                url = client.Exec(container_id=cid, cmd=["yes"], stdout=True, stderr=True).url
                if i % 2:
                    ws = st.WsConnection(url, ("v4.channel.k8s.io",))
                    ws.recv_message()
                    time.sleep(0.05 * i)
                    kill_socket(ws.sock)
                else:
                    conn, streams = spdy_exec_streams(url)
                    streams["stdout"].wait_for(lambda d: len(d) > 4096)
                    time.sleep(0.05 * i)
                    conn.abort()
                assert crimuxd.daemon.running(), crimuxd.log()[-2000:]
            res = st.spdy_exec(client.Exec(container_id=cid, cmd=["echo", "ok"],
                                           stdout=True, stderr=True).url)
            assert res.stdout == b"ok\n" and res.exit_code == 0
            wait_for(lambda: fds() <= base, 30, "crimuxd's fds back to where they were")
        finally:
            client.remove_pod(pod)
