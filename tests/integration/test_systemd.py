"""crimuxd under systemd's protocols, without systemd as PID 1: socket
activation through systemd-socket-activate, sd_notify (READY, STATUS,
WATCHDOG, RELOADING, STOPPING) on a socket the test listens on, reload on
SIGHUP with good and bad configurations while calls are in flight, log
levels at run time, and journal fields on a journal socket the test owns."""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

import grpc
import pytest

from lab import cri as lab_cri
from lab.env import wait_for
from lab.fake_backend import FakeBackend, echo, reply, sleep

LIST = "/runtime.v1.RuntimeService/ListContainers"
JOURNAL_SOCKET = "/run/systemd/journal/socket"


class Notify:
    """The NOTIFY_SOCKET end systemd would hold: collects every message."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since=0.0):
        """Every KEY=value sent after `since` (a monotonic time), in order."""
        return [line for t, m in list(self.messages) if t >= since for line in m.split("\n")]

    def wait(self, line, timeout=10, since=0.0):
        return wait_for(lambda: line in self.lines(since), timeout, f"notify {line!r}")

    def close(self):
        self._stop = True
        self.sock.close()


class Daemon:
    """crimuxd as systemd would run it: optionally socket-activated, with a
    notify socket, a watchdog and a journal stream."""

    def __init__(self, binary, workdir, config, activate=False, watchdog_usec=None,
                 journal=False):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, "crimux.conf")
        self.write_config(config)
        self.socket = os.path.join(workdir, "activated.sock" if activate else "crimux.sock")
        self.notify = Notify(os.path.join(workdir, "notify"))
        self.log_path = os.path.join(workdir, "crimuxd.log")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        argv = [binary, "--config", self.config_path]
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if activate:
            argv = ["systemd-socket-activate", "-l", self.socket, "-E", "NOTIFY_SOCKET",
                    "-E", "WATCHDOG_USEC", "-E", "JOURNAL_STREAM"] + argv
        self.log = open(self.log_path, "wb")
        if journal:  # stderr is "the journal stream": records go to the journal socket
            st = os.fstat(self.log.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.endpoint = "unix://" + self.socket
        wait_for(self._answers, 20, "crimuxd to answer")

    def write_config(self, text):
        with open(self.config_path + ".tmp", "w") as f:
            f.write(text)
        os.rename(self.config_path + ".tmp", self.config_path)

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("crimuxd exited:\n" + self.text())
        try:
            with lab_cri.CRI(self.endpoint) as cri:
                cri.Version(version="v1", timeout=1)
            return True
        except grpc.RpcError:
            return False

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        return self.proc.returncode


def config(socket_path, backends, extra="", level="info"):
    text = f"[crimux]\nsocket = {socket_path}\nlog_level = {level}\nshutdown_timeout = 5s\n"
    for name, endpoint in backends.items():
        text += f'[backend "{name}"]\nendpoint = {endpoint}\n'
    return text + extra


@pytest.fixture
def workdir(tmp_path):
    # Unix socket paths are short: keep ours under /tmp.
    import tempfile
    d = tempfile.mkdtemp(prefix="crx-sd-")
    yield d
    subprocess.run(["rm", "-rf", d])


@pytest.fixture
def daemons(crimuxd_binary, workdir):
    started = []

    def start(*args, **kwargs):
        d = Daemon(crimuxd_binary, *args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        code = d.stop()
        assert code == 0, "crimuxd exited %r on SIGTERM:\n%s" % (code, d.text()[-3000:])
        assert "Sanitizer" not in d.text() and "runtime error:" not in d.text()


@pytest.fixture
def fake(workdir):
    f = FakeBackend(os.path.join(workdir, "fake.sock"), default=echo()).start()
    yield f
    f.stop()


def test_socket_activation_serves_the_passed_socket(daemons, workdir, lab):
    configured = os.path.join(workdir, "configured.sock")
    d = daemons(workdir, config(configured, {"containerd": lab.containerd.endpoint}),
                activate=True)
    with lab_cri.CRI(d.endpoint) as cri:
        conditions = {c.type: c.status for c in cri.Status().status.conditions}
        assert conditions == {"RuntimeReady": True, "NetworkReady": True}
        # The server's limits hold on adopted connections too.
        big = lab_cri.pb().ListContainersRequest(
            filter=lab_cri.pb().ContainerFilter(label_selector={"k": "v" * (15 << 20)}))
        assert len(cri.ListContainers(big).containers) == 0
        bigger = lab_cri.pb().ListContainersRequest(
            filter=lab_cri.pb().ContainerFilter(label_selector={"k": "v" * (17 << 20)}))
        with pytest.raises(grpc.RpcError) as e:
            cri.ListContainers(bigger)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not os.path.exists(configured), "no socket of its own besides systemd's"
    assert f"serving on {d.socket}, the socket systemd passed" in d.text()
    d.notify.wait("READY=1")
    assert d.stop() == 0
    assert os.path.exists(d.socket), "systemd's socket is systemd's to remove"


def test_ready_only_once_the_default_backend_answers(daemons, workdir):
    backend_path = os.path.join(workdir, "later.sock")
    d = daemons(workdir, config(os.path.join(workdir, "crimux.sock"),
                                {"later": "unix://" + backend_path}))
    d.notify.wait("STATUS=Waiting for the default backend; backends down: later (default)")
    time.sleep(1.5)
    assert "READY=1" not in d.notify.lines(), "ready before the default backend answered"
    fake = FakeBackend(backend_path, default=echo()).start()
    try:
        d.notify.wait("READY=1", timeout=10)
        wait_for(lambda: any(line.startswith("STATUS=Serving CRI on ") and
                             line.endswith("backends up: later (default)")
                             for line in d.notify.lines()), 15, "a serving STATUS")
    finally:
        fake.stop()


def test_watchdog_is_fed_while_serving_and_not_when_hung(daemons, workdir, fake):
    d = daemons(workdir, config(os.path.join(workdir, "crimux.sock"), {"fake": fake.endpoint}),
                watchdog_usec=600000)
    d.notify.wait("READY=1")
    start = time.monotonic()
    time.sleep(1.5)
    assert d.notify.lines(start).count("WATCHDOG=1") >= 3, "pings every WatchdogSec/3"
    d.signal(signal.SIGSTOP)  # a hung daemon
    try:
        time.sleep(0.3)
        hung = time.monotonic()
        time.sleep(1.5)
        assert "WATCHDOG=1" not in d.notify.lines(hung), "a hung crimuxd must stop pinging"
    finally:
        d.signal(signal.SIGCONT)
    d.notify.wait("WATCHDOG=1", since=time.monotonic())


def test_stopping_is_announced(daemons, workdir, fake):
    d = daemons(workdir, config(os.path.join(workdir, "crimux.sock"), {"fake": fake.endpoint}))
    d.notify.wait("READY=1")
    assert d.stop() == 0
    assert "STOPPING=1" in d.notify.lines()


def test_reload_applies_a_good_config_without_dropping_calls(daemons, workdir, fake):
    other = FakeBackend(os.path.join(workdir, "other.sock"), default=echo()).start()
    try:
        sock = os.path.join(workdir, "crimux.sock")
        d = daemons(workdir, config(sock, {"first": fake.endpoint}))
        d.notify.wait("READY=1")
        fake.on(LIST, sleep(2, reply(b"")))
        results = {}

        def slow_call():
            with lab_cri.CRI(d.endpoint) as cri:
                results["slow"] = cri.raw(LIST, b"", timeout=20)

        caller = threading.Thread(target=slow_call)
        caller.start()
        fake.wait_call(LIST)
        before = time.monotonic()
        d.write_config(config(sock, {"second": other.endpoint}, level="debug"))
        d.signal(signal.SIGHUP)
        d.notify.wait("RELOADING=1", since=before)
        d.notify.wait("READY=1", since=before)
        lines = d.notify.lines(before)
        assert lines.index("RELOADING=1") < lines.index("READY=1")
        caller.join(20)
        assert results.get("slow") == b"", "the call in flight finished on the old backend"
        with lab_cri.CRI(d.endpoint) as cri:
            cri.raw(LIST, b"\x0a\x00", timeout=5)
        assert other.calls(LIST), "new calls go to the new configuration's backend"
        assert len(fake.calls(LIST)) == 1
        assert "configuration reloaded" in d.text()
        assert "DEBUG:" in d.text(), "the new log level applies"
    finally:
        other.stop()


def test_reload_keeps_the_old_config_when_the_new_one_is_bad(daemons, workdir, fake):
    sock = os.path.join(workdir, "crimux.sock")
    d = daemons(workdir, config(sock, {"first": fake.endpoint}))
    d.notify.wait("READY=1")
    fake.on(LIST, sleep(1, reply(b"")))
    caller = threading.Thread(target=lambda: lab_cri.CRI(d.endpoint).raw(LIST, b"", timeout=20))
    caller.start()
    fake.wait_call(LIST)
    before = time.monotonic()
    d.write_config("[crimux]\nlog_level = chatty\n")
    d.signal(signal.SIGHUP)
    d.notify.wait("READY=1", since=before)
    caller.join(20)
    assert ("reload failed, still serving the previous configuration: "
            f"{d.config_path}:2: [crimux] log_level: \"chatty\"") in d.text()
    with lab_cri.CRI(d.endpoint) as cri:
        cri.raw(LIST, b"", timeout=5)
    assert len(fake.calls(LIST)) == 2, "still served by the old configuration"


def test_log_level_at_run_time(daemons, workdir, fake):
    d = daemons(workdir, config(os.path.join(workdir, "crimux.sock"), {"fake": fake.endpoint}))
    with lab_cri.CRI(d.endpoint) as cri:
        cri.raw(LIST, b"", timeout=5)
        assert "DEBUG:" not in d.text()
        d.signal(signal.SIGUSR1)
        wait_for(lambda: "SIGUSR1: debug logging on" in d.text(), 5, "debug logging")
        cri.raw(LIST, b"", timeout=5)
        wait_for(lambda: f"DEBUG: {LIST} -> fake: OK" in d.text(), 5, "a debug record")
        d.signal(signal.SIGUSR2)
        wait_for(lambda: "SIGUSR2" in d.text(), 5, "back to info")
        mark = len(d.text())
        cri.raw(LIST, b"", timeout=5)
        time.sleep(0.3)
        assert "DEBUG:" not in d.text()[mark:]


def parse_journal(datagram):
    """The journal's native protocol: KEY=value lines, or KEY, a 64-bit
    little-endian length and the value for values with newlines."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            value = datagram[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


@pytest.fixture
def journal():
    if os.path.exists(JOURNAL_SOCKET):
        pytest.skip(f"{JOURNAL_SOCKET} exists: a real journal runs here")
    os.makedirs(os.path.dirname(JOURNAL_SOCKET), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(JOURNAL_SOCKET)
    sock.settimeout(0.2)
    records = []

    def read():
        while True:
            try:
                records.append(parse_journal(sock.recv(1 << 20)))
            except socket.timeout:
                continue
            except OSError:
                return

    threading.Thread(target=read, daemon=True).start()
    yield records
    sock.close()
    os.unlink(JOURNAL_SOCKET)


def test_journal_records_carry_fields(daemons, workdir, fake, journal):
    pb = lab_cri.pb()
    kata = '[handler "kata"]\nbackend = fake\npolicy = kata\n'
    fake.on("/runtime.v1.RuntimeService/RunPodSandbox",
            reply(pb.RunPodSandboxResponse(pod_sandbox_id="feedc0de" * 8).SerializeToString()))
    fake.on("/runtime.v1.RuntimeService/CreateContainer",
            reply(pb.CreateContainerResponse(container_id="c0ffee00" * 8).SerializeToString()))
    fake.on("/runtime.v1.RuntimeService/ContainerStatus",
            reply(pb.ContainerStatusResponse().SerializeToString()))
    d = daemons(workdir, config(os.path.join(workdir, "crimux.sock"), {"fake": fake.endpoint},
                                kata, level="debug"), journal=True)
    resources = lab_cri.linux_resources(1000, 1000, 2 << 30)
    sandbox = lab_cri.sandbox_config("journal", resources=resources)
    with lab_cri.CRI(d.endpoint) as cri:
        pod = cri.RunPodSandbox(config=sandbox, runtime_handler="kata").pod_sandbox_id
        container = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app"),
                                       linux=pb.LinuxContainerConfig(resources=resources))
        cid = cri.CreateContainer(pod_sandbox_id=pod, config=container,
                                  sandbox_config=sandbox).container_id
        cri.ContainerStatus(container_id=cid)
        with pytest.raises(grpc.RpcError):
            cri.RunPodSandbox(config=lab_cri.sandbox_config("tiny"), runtime_handler="kata")

    def record(method):
        for r in journal:
            if r.get("CRI_METHOD", "").endswith("/" + method):
                return r
        return None

    def refused():
        return [r for r in journal if r.get("CRI_CODE") == "INVALID_ARGUMENT"]

    # A record is written when crimux frees the call, just after the reply.
    wait_for(lambda: record("ContainerStatus") and record("RunPodSandbox") and refused(), 10,
             "records")
    run = record("RunPodSandbox")
    assert run["CRI_HANDLER"] == "kata" and run["CRI_BACKEND"] == "fake"
    assert run["CRI_POD_SANDBOX_ID"] == "feedc0de" * 8
    assert run["CRI_CODE"] == "OK" and run["PRIORITY"] == "7"
    assert float(run["CRI_DURATION_MS"]) > 0
    assert "RunPodSandbox handler=kata -> fake: OK" in run["MESSAGE"]
    status = record("ContainerStatus")
    assert status["CRI_CONTAINER_ID"] == "c0ffee00" * 8
    assert status["CRI_HANDLER"] == "kata", "a container call carries its pod's handler"
    assert refused()[0]["PRIORITY"] == "6" and refused()[0]["CRI_HANDLER"] == "kata"
    assert "RunPodSandbox" not in d.text(), "with a journal stream, records go to the journal"
