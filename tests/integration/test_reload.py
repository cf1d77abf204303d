"""SIGHUP while Docker pods log: one dockershim, before and after.

A reload builds a new generation (configuration + router + backends) while
calls in flight finish on the old one. A backend whose configuration did
not change must be carried over, not opened a second time: a second
dockershim means a second log pump copying the same Docker files into the
same CRI files (every line twice) and writing the same position files, a
second streaming server, a second recovery thread. A backend whose
configuration did change is replaced, and the old one's log pump must stop
before the new one starts.

A GetContainerEvents stream stays open across every reload here: it holds
the old generation alive, as the kubelet's evented PLEG does.
"""

import os
import re
import signal
import threading
import time

import grpc

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.docker import read_cri_log
from lab.env import wait_for

COUNTER = "i=0; while true; do i=$((i+1)); echo n-$i; usleep 10000; done"


def numbers(path, prefix="n-"):
    out = []
    for _, _, tag, text in read_cri_log(path):
        if tag == "F" and text.startswith(prefix):
            out.append(int(text[len(prefix):]))
    return out


def reloads(daemon):
    return len(re.findall(r"configuration reloaded", daemon.log()))


def hup(daemon, edit=None):
    """SIGHUP crimuxd (after edit(text) -> text on its configuration file)
    and wait until it says the new configuration is in place."""
    if edit:
        with open(daemon.config_path) as f:
            text = f.read()
        with open(daemon.config_path, "w") as f:
            f.write(edit(text))
    before = reloads(daemon)
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: reloads(daemon) > before, 20, "the reload")


class Events:
    """A GetContainerEvents stream read on a thread of its own."""

    def __init__(self, endpoint):
        self.client = CRI(endpoint, timeout=600)
        self.stream = self.client.GetContainerEvents()
        self.seen = []
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.stream:
                self.seen.append(event)
        except grpc.RpcError as e:
            self.error = e

    def close(self):
        self.stream.cancel()
        self.thread.join(10)
        self.client.close()


def test_reload_copies_each_log_line_once(docker_crimuxd_factory, lab, log_dir, tmp_path):
    api = pb()
    daemon = docker_crimuxd_factory(state_dir=str(tmp_path / "state"))
    events = Events(daemon.endpoint)
    with CRI(daemon.endpoint) as cri:
        cri.pull(lab.busybox_ref)
        sb = sandbox_config("reloaded", log_directory=log_dir)
        pod = cri.run_pod(sb)
        logger = cri.start_container(pod, sb, container_config(
            "logger", lab.busybox_ref, ["sh", "-c", COUNTER], log_path="logger.log"))
        log = os.path.join(log_dir, "logger.log")
        wait_for(lambda: len(numbers(log)) > 20, 10, "the first lines")

        for _ in range(4):  # nothing changed: the same backend goes on
            hup(daemon)
            seen = len(numbers(log))
            wait_for(lambda: len(numbers(log)) > seen + 10, 10, "lines after the reload")
        # A changed docker backend is replaced; its old log pump stops first.
        hup(daemon, lambda text: text.replace("log_poll_interval = 50ms",
                                              "log_poll_interval = 60ms"))
        seen = len(numbers(log))
        wait_for(lambda: len(numbers(log)) > seen + 10, 10, "lines after the changed reload")
        hup(daemon)
        seen = len(numbers(log))
        wait_for(lambda: len(numbers(log)) > seen + 10, 10, "lines after the last reload")

        assert cri.ExecSync(container_id=logger, cmd=["echo", "hi"], timeout=5).stdout == \
            b"hi\n"
        cri.StopContainer(container_id=logger, timeout=0)
        cri.wait_container_state(logger, api.CONTAINER_EXITED)
        time.sleep(0.5)  # a pump still running would copy again now
        got = numbers(log)
        dups = sorted({n for n in got if got.count(n) > 1})
        assert not dups, f"{len(dups)} lines copied more than once, e.g. {dups[:10]}"
        assert got == list(range(1, len(got) + 1)), "lines lost or out of order"
        cri.remove_pod(pod)
    events.close()
    assert events.error is None or events.error.code() == grpc.StatusCode.CANCELLED


def test_reload_keeps_the_streaming_server(docker_crimuxd_factory, lab, tmp_path):
    """An exec URL handed out before a reload works after it, and a session
    open across reloads goes on: the carried dockershim keeps its streaming
    server (its port, its tokens, its sessions)."""
    from lab import streaming
    daemon = docker_crimuxd_factory(state_dir=str(tmp_path / "state"))
    with CRI(daemon.endpoint) as cri:  # nothing holds the old generation
        p = cri.run_pod_with_container(lab.busybox_ref, ["sleep", "3600"])
        later = cri.Exec(container_id=p.container_id, cmd=["echo", "still here"],
                         stdout=True).url
        now = cri.Exec(container_id=p.container_id, cmd=["cat"], stdin=True,
                       stdout=True).url

        def reload_twice(*_):
            hup(daemon)
            hup(daemon)

        out = streaming.spdy_exec(now, stdin=b"across reloads\n", stderr=False,
                                  on_started=reload_twice)
        assert out.stdout == b"across reloads\n" and out.exit_code == 0
        out = streaming.spdy_exec(later, stderr=False)
        assert out.stdout == b"still here\n" and out.exit_code == 0
        cri.remove_pod(p.pod_id)
