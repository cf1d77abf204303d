"""Issue 10, item 2: a backend dies or hangs; the others keep serving.

A crimuxd in front of a containerd and a dockerd of this module's own (the
lab's are shared by other tests and must not be killed), one pod with a
running container on each.  In turn: containerd is SIGKILLed, dockerd is
SIGKILLed, each is SIGSTOPped.  Meanwhile:

- the other backend's pod answers every call (status, exec, list of its own);
- a call for the dead backend's pod fails at once with UNAVAILABLE naming it
  (not at its deadline), a hung one's with DEADLINE_EXCEEDED at its own
  deadline, and neither holds up other calls;
- merged lists fail with UNAVAILABLE naming the backend (docs/routing.md:
  a partial list would read as "those pods are gone");
- Status answers, with that backend's conditions false (BackendUnavailable);
- once it is back, crimuxd uses it again (reconnect backoff at most 1 s; the
  time is printed, not asserted), and event subscribers can subscribe again.

dockerd runs with live-restore, as on a node where dockerd is upgraded
under running pods, so that the Docker pod's container survives and its log
is copied on, every line once, across the outage.
"""

import json
import os
import re
import signal
import statistics
import threading
import time

import grpc
import pytest

from lab import env
from lab.cri import CRI, container_config, pb
from lab.docker import Dockerd, read_cri_log
from conftest import docker_backend_config, stop_checked

HANDLERS = """
[crimux]
default_handler = runc
[handler "runc"]
backend = containerd
[handler "docker"]
backend = docker
"""

# Numbered lines, 20 a second, for the log copy across a dockerd outage.
COUNTER = ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done"]


class Node:
    """This module's containerd, dockerd and crimuxd, and a pod on each backend."""


@pytest.fixture(scope="module")
def node(lab, crimuxd_binary, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    n = Node()
    n.containerd = env.Containerd(str(root / "containerd"), lab.registry.host,
                                  lab.net.conf_dir)
    # dockerd on a containerd of its own, as under systemd (containerd.service):
    # killing dockerd then kills dockerd only, and live-restore keeps its
    # containers running meanwhile.
    n.docker_containerd = env.Containerd(str(root / "dctr"), lab.registry.host,
                                         lab.net.conf_dir)
    n.dockerd = Dockerd(str(root / "docker"))
    with open(os.path.join(n.dockerd.root_dir, "daemon.json"), "w") as f:
        json.dump({"live-restore": True}, f)
    n.dockerd.daemon.argv += ["--containerd", n.docker_containerd.socket]
    n.containerd.start()
    try:
        n.docker_containerd.start()
        n.dockerd.start()
        try:
            config = (HANDLERS + docker_backend_config(lab, str(root / "docker-state")))
            n.crimuxd = env.Crimuxd(crimuxd_binary, str(root / "crimuxd"),
                                    {"containerd": n.containerd.endpoint,
                                     "docker": n.dockerd.endpoint},
                                    config, log_level="info").start()
            try:
                with CRI(n.crimuxd.endpoint) as client:
                    n.logs = str(root / "logs")
                    os.makedirs(n.logs)
                    n.pods = {}
                    for handler in ("runc", "docker"):
                        n.pods[handler] = client.run_pod_with_container(
                            lab.busybox_ref, COUNTER, runtime_handler=handler,
                            name=f"faults-{handler}",
                            log_directory=os.path.join(n.logs, handler))
                    yield n
                    for pod in n.pods.values():
                        client.remove_pod(pod.pod_id)
            finally:
                stop_checked([n.crimuxd], must_run=True)
        finally:
            try:
                n.dockerd.stop()
            finally:
                n.docker_containerd.stop()
    finally:
        n.containerd.stop()


@pytest.fixture
def client(node):
    with CRI(node.crimuxd.endpoint, timeout=20) as c:
        yield c


def works(client, pod):
    """Every kind of call for one pod is served: status, exec, the pod's list."""
    api = pb()
    assert client.PodSandboxStatus(pod_sandbox_id=pod.pod_id).status.state == \
        api.SANDBOX_READY
    assert client.ContainerStatus(container_id=pod.container_id).status.state == \
        api.CONTAINER_RUNNING
    r = client.ExecSync(container_id=pod.container_id, cmd=["echo", "alive"], timeout=10)
    assert (r.exit_code, r.stdout) == (0, b"alive\n")
    client.ContainerStats(container_id=pod.container_id)


def latency_ms(client, pod, n=20):
    """Median ContainerStatus time for the pod (printed, never asserted)."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        client.ContainerStatus(container_id=pod.container_id)
        times.append((time.monotonic() - t) * 1000)
    return round(statistics.median(times), 2)


def fails(code, backend, call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    assert err.value.code() == code, err.value.details()
    assert re.search(rf"\bbackend {backend}\b", err.value.details()), err.value.details()
    return err.value.details()


def conditions(client):
    return {c.type: (c.status, c.reason)
            for c in client.Status(timeout=20).status.conditions}


def back_within(client, pod, what):
    """Polls a call for the pod until it succeeds; returns the seconds it took
    from the backend answering on its own."""
    start = time.monotonic()
    env.wait_for(lambda: _answers(client, pod), 15, f"crimuxd to use {what} again")
    return round(time.monotonic() - start, 3)


def _answers(client, pod):
    try:
        client.ContainerStatus(container_id=pod.container_id, timeout=5)
        return True
    except grpc.RpcError:
        return False


def all_stopped(pid):
    """Every thread of pid has taken the SIGSTOP (a group stop is not
    instant on a busy machine)."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            continue
    return states and all(s in ("T", "t") for s in states)


def log_numbers(path):
    out = []
    for _, stream, _, text in read_cri_log(path):
        m = re.fullmatch(r"line-(\d+)", text.strip())
        if stream == "stdout" and m:
            out.append(int(m.group(1)))
    return out


def assert_copied_once(path):
    """Every line the counter printed, once and in order."""
    nums = log_numbers(path)
    assert nums, f"nothing copied to {path}"
    assert nums == list(range(nums[0], nums[0] + len(nums))), \
        f"lost or repeated lines in {path}: " + \
        str([(a, b) for a, b in zip(nums, nums[1:]) if b != a + 1][:5])


# ------------------------------------------------------------------ death


def test_containerd_killed(node, client):
    runc, docker = node.pods["runc"], node.pods["docker"]
    works(client, runc)
    works(client, docker)
    before = latency_ms(client, docker)

    node.containerd.daemon.proc.kill()  # SIGKILL; its shims and pods live on
    node.containerd.daemon.proc.wait()
    try:
        works(client, docker)
        during = latency_ms(client, docker)
        # At once, not at the 20 s deadline.
        fails(grpc.StatusCode.UNAVAILABLE, "containerd", client.ContainerStatus,
              container_id=runc.container_id)
        fails(grpc.StatusCode.UNAVAILABLE, "containerd", client.ExecSync,
              container_id=runc.container_id, cmd=["true"], timeout=5)
        fails(grpc.StatusCode.UNAVAILABLE, "containerd", client.ListPodSandbox)
        fails(grpc.StatusCode.UNAVAILABLE, "containerd", client.ListContainers)
        cond = conditions(client)
        # containerd is the default backend: the node's own conditions.
        assert cond["RuntimeReady"] == (False, "BackendUnavailable")
        assert cond["docker/RuntimeReady"][0] is True
    finally:
        node.containerd.start()
    took = back_within(client, runc, "containerd")
    works(client, runc)
    works(client, docker)
    assert {p.id for p in client.ListPodSandbox().items} >= {runc.pod_id, docker.pod_id}
    assert conditions(client)["RuntimeReady"][0] is True
    print(f"\n[figures] containerd SIGKILL: docker pod ContainerStatus median "
          f"{before} ms before, {during} ms during; containerd used again "
          f"{took} s after it answered")


def test_dockerd_killed(node, client):
    runc, docker = node.pods["runc"], node.pods["docker"]
    works(client, docker)
    before = latency_ms(client, runc)
    node.dockerd.daemon.proc.kill()
    node.dockerd.daemon.proc.wait()
    try:
        works(client, runc)
        during = latency_ms(client, runc)
        fails(grpc.StatusCode.UNAVAILABLE, "docker", client.ContainerStatus,
              container_id=docker.container_id)
        fails(grpc.StatusCode.UNAVAILABLE, "docker", client.PodSandboxStatus,
              pod_sandbox_id=docker.pod_id)
        fails(grpc.StatusCode.UNAVAILABLE, "docker", client.ListPodSandbox)
        cond = conditions(client)
        # The dockershim answers for its dockerd (DockerDaemonNotReady).
        assert cond["docker/RuntimeReady"][0] is False
        assert cond["RuntimeReady"][0] is True
        copied_while_down = len(log_numbers(docker.log_path))
    finally:
        node.dockerd.start()
    took = back_within(client, docker, "docker")
    works(client, docker)
    works(client, runc)
    # The log copy resumed where it stopped: every line once, and on past
    # the outage.
    env.wait_for(lambda: len(log_numbers(docker.log_path)) > copied_while_down + 40, 15,
                 "lines copied after dockerd returned")
    assert_copied_once(docker.log_path)
    print(f"\n[figures] dockerd SIGKILL: containerd pod ContainerStatus median "
          f"{before} ms before, {during} ms during; docker used again {took} s "
          f"after it answered")


# ------------------------------------------------------------------ hang


@pytest.mark.parametrize("backend", ["containerd", "docker"])
def test_backend_hung(node, client, backend):
    """SIGSTOP: the backend accepts connections and never answers."""
    hung = node.pods["runc" if backend == "containerd" else "docker"]
    other = node.pods["docker" if backend == "containerd" else "runc"]
    daemon = node.containerd.daemon if backend == "containerd" else node.dockerd.daemon
    works(client, hung)
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        env.wait_for(lambda: all_stopped(daemon.pid), 10, f"{backend} to stop")
        # Many calls that need the hung backend at once, each with a 3 s
        # deadline ... (the dockershim answers status and lists from its state
        # cache, fed by Docker's events, with dockerd hung as well: an exec
        # has to reach dockerd).
        results = []

        def stuck():
            try:
                if backend == "docker":
                    client.ExecSync(container_id=hung.container_id, cmd=["true"], timeout=2,
                                    deadline=3)
                else:
                    client.ContainerStatus(container_id=hung.container_id, timeout=3)
                results.append("answered")
            except grpc.RpcError as e:
                results.append(e.code())
        threads = [threading.Thread(target=stuck) for _ in range(100)]
        for t in threads:
            t.start()
        # ... do not hold up the other backend's pod meanwhile.
        works(client, other)
        for t in threads:
            t.join(30)
        assert set(results) == {grpc.StatusCode.DEADLINE_EXCEEDED}, set(results)
        if backend == "containerd":
            # Merged calls end at their deadline, naming nobody wrongly.
            with pytest.raises(grpc.RpcError) as err:
                client.ListPodSandbox(timeout=3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            # The kubelet's relist goes on: the docker pod as Docker last said.
            assert hung.pod_id in {p.id for p in client.ListPodSandbox(timeout=3).items}
        # Status bounds each backend at 5 s: it answers, the hung one unready.
        cond = conditions(client)
        key = "RuntimeReady" if backend == "containerd" else "docker/RuntimeReady"
        # BackendUnavailable, or the dockershim's own DockerDaemonNotReady.
        assert cond[key][0] is False
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    took = back_within(client, hung, backend)
    works(client, hung)
    works(client, other)
    print(f"\n[figures] {backend} SIGSTOP: 100 calls with 3 s deadlines all ended "
          f"DEADLINE_EXCEEDED; answered again {took} s after SIGCONT")


# ------------------------------------------------------------------ events
# Last: a second crimuxd on the same dockerd copies the Docker pod's log too.


def test_events_subscribed_again_after_dockerd_returns(node, client, lab, crimuxd_binary,
                                                       tmp_path):
    """A docker-only crimuxd: containerd 1.6 has no GetContainerEvents, so
    a merged stream with it would end at once (UNIMPLEMENTED)."""
    docker = node.pods["docker"]
    events_d = lab.crimuxd(crimuxd_binary, {"docker": node.dockerd.endpoint},
                           docker_backend_config(lab, str(tmp_path / "ev-state")),
                           log_level="info")
    try:
        with CRI(events_d.endpoint) as ev_client:
            subs = [ev_client.GetContainerEvents(timeout=60) for _ in range(5)]
            for sub in subs:
                sub.initial_metadata()
            node.dockerd.daemon.proc.kill()
            node.dockerd.daemon.proc.wait()
            try:
                # Every subscriber hears that docker's events stopped.
                for sub in subs:
                    with pytest.raises(grpc.RpcError) as err:
                        for _ in sub:
                            pass
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "backend docker" in err.value.details()
                # A subscriber meanwhile is told so at once.
                with pytest.raises(grpc.RpcError) as err:
                    next(ev_client.GetContainerEvents(timeout=20))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "backend docker" in err.value.details()
            finally:
                node.dockerd.start()
            back_within(client, docker, "docker")
            # Events again: a new subscriber hears a new container's.
            sub = ev_client.GetContainerEvents(timeout=60)
            sub.initial_metadata()
            cid = client.start_container(docker.pod_id, docker.sandbox,
                                         container_config("again", lab.busybox_ref,
                                                          ["sleep", "1000"]))
            seen = []
            for e in sub:
                if e.container_id == cid:
                    seen.append(e.container_event_type)
                if pb().CONTAINER_STARTED_EVENT in seen:
                    break
            sub.cancel()
            assert seen == [pb().CONTAINER_CREATED_EVENT, pb().CONTAINER_STARTED_EVENT]
            client.StopContainer(container_id=cid, timeout=0)
            client.RemoveContainer(container_id=cid)
    finally:
        stop_checked([events_d])
