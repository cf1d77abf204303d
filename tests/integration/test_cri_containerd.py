"""The CRI through crimuxd against the lab's real containerd (1.6).

Complements test_lab_smoke.py: images, sandbox and container status in
detail, list filters, exec, logs, stats, stop/remove and their repeats, and
errors for unknown IDs.  Where it matters, crimuxd's answer is compared
with containerd's own (the `containerd_cri` client talks to it directly).

With CRIMUX_TEST_DIRECT=1 the module talks to containerd directly, which
checks the tests themselves.
"""

import ipaddress
import os
import re
import time
import uuid

import grpc
import pytest

from lab import images
from lab.cri import CRI, container_config, pb, sandbox_config
from lab.env import wait_for

DIRECT = os.environ.get("CRIMUX_TEST_DIRECT") == "1"
RUN = uuid.uuid4().hex[:12]  # labels every object of this module's run
UNKNOWN_ID = "f00d" * 16
CRI_LOG_LINE = re.compile(r"^(\S+) (stdout|stderr) ([FP]) (.*)$")


@pytest.fixture(scope="module")
def client(request, lab, containerd_cri):
    """A CRI client to a crimuxd (for the whole module) in front of containerd."""
    daemon = None
    if DIRECT:
        endpoint = lab.containerd.endpoint
    else:
        daemon = lab.crimuxd(request.getfixturevalue("crimuxd_binary"))
        endpoint = daemon.endpoint
    with CRI(endpoint) as c:
        yield c
    containerd_cri.remove_all_pods()
    if daemon:
        assert daemon.stop() == 0


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cri-logs"))


class Pod:
    """A running sandbox with its config, and containers created in it."""

    def __init__(self, client, name, labels, annotations=None, log_dir=None):
        self.client = client
        self.config = sandbox_config(name, labels={"crimux-test-run": RUN, **labels},
                                     annotations=annotations, log_directory=log_dir)
        self.id = client.run_pod(self.config)

    def container(self, name, image, command, labels=None, annotations=None, start=True,
                  log_path=""):
        config = container_config(name, image, command,
                                  labels={"crimux-test-run": RUN, **(labels or {})},
                                  annotations=annotations, log_path=log_path)
        if start:
            cid = self.client.start_container(self.id, self.config, config)
        else:
            cid = self.client.CreateContainer(pod_sandbox_id=self.id, config=config,
                                              sandbox_config=self.config).container_id
        return cid, config


MAIN_SCRIPT = ("echo to-stdout; echo to-stderr >&2; i=0; "
               "while :; do i=$((i+1)); echo tick $i; sleep 0.2; done")


@pytest.fixture(scope="module")
def main(client, lab, log_dir):
    """One running pod with one running container `main`, shared by the
    read-only tests: (Pod, container id, ContainerConfig)."""
    client.pull(lab.busybox_ref)
    pod = Pod(client, "crx-main", {"app": "main", "tier": "test"},
              annotations={"crimux.test/note": "hello, annotations"}, log_dir=log_dir)
    cid, config = pod.container("main", lab.busybox_ref, ["sh", "-c", MAIN_SCRIPT],
                                labels={"role": "main"},
                                annotations={"crimux.test/container": "yes"},
                                log_path="main.log")
    return pod, cid, config


# CRI's own `timeout` fields (StopContainer, ExecSync) must go in a request
# message: as a keyword, lab.cri takes `timeout` for the gRPC deadline.
def stop_container(client, cid, timeout):
    client.StopContainer(pb().StopContainerRequest(container_id=cid, timeout=timeout))


def exec_sync(client, cid, cmd, timeout):
    return client.ExecSync(pb().ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout),
                           timeout=timeout + 30)


def code_of(fn, *args, **kwargs):
    """The status code (and message) a call fails with."""
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code(), err.value.details()


def ids(items):
    return sorted(item.id for item in items)


# ------------------------------------------------------------------ runtime

@pytest.mark.skipif(DIRECT, reason="crimux's own Version")
def test_version_is_crimuxs_own(client, containerd_cri):
    ours = client.Version(version="v1")
    theirs = containerd_cri.Version(version="v1")
    assert (ours.runtime_name, ours.runtime_api_version) == ("crimux", "v1")
    assert theirs.runtime_name == "containerd"
    assert ours.runtime_version != theirs.runtime_version


def test_status_verbose_matches_containerd(client, containerd_cri):
    ours = client.Status(verbose=True)
    theirs = containerd_cri.Status(verbose=True)
    conditions = [(c.type, c.status) for c in ours.status.conditions]
    assert conditions == [(c.type, c.status) for c in theirs.status.conditions]
    assert ("RuntimeReady", True) in conditions
    assert ours.info and sorted(ours.info) == sorted(theirs.info)
    assert '"sandboxImage"' in ours.info["config"]


def test_image_fs_info(client, lab):
    client.pull(lab.busybox_ref)
    filesystems = client.ImageFsInfo().image_filesystems
    assert len(filesystems) >= 1
    fs = filesystems[0]
    assert fs.fs_id.mountpoint.startswith(lab.containerd.root_dir + "/")
    assert fs.timestamp > 0
    assert fs.HasField("used_bytes") and fs.HasField("inodes_used")


# ------------------------------------------------------------------ images

@pytest.fixture(scope="module")
def own_image(lab):
    """An image of this module alone (RemoveImage removes every tag of an
    image ID, so busybox must not be used here): (image, ref)."""
    layer = images.Layer()
    layer.file("crimux-test", f"image of run {RUN}\n".encode())
    image = images.Image("crimux/remove-me", "t" + RUN, [layer], cmd=["/crimux-test"])
    return image, lab.registry.push(image)


def test_pull_status_list_remove_image(client, lab, own_image):
    image, ref = own_image
    by_digest = f"{lab.registry.host}/{image.repository}@{image.digest}"

    assert client.pull(ref) == image.config_digest

    status = client.ImageStatus(image=pb().ImageSpec(image=ref), verbose=True)
    assert status.image.id == image.config_digest
    assert ref in status.image.repo_tags
    assert by_digest in status.image.repo_digests
    assert status.image.size > 0
    assert status.info, "verbose ImageStatus carries containerd's info"
    for other in (image.config_digest, by_digest):
        assert client.ImageStatus(image=pb().ImageSpec(image=other)).image.id == status.image.id
    listed = [i for i in client.ListImages().images if i.id == image.config_digest]
    assert [list(i.repo_tags) for i in listed] == [[ref]]

    client.RemoveImage(image=pb().ImageSpec(image=ref))

    assert not client.ImageStatus(image=pb().ImageSpec(image=ref)).HasField("image")
    assert image.config_digest not in ids(client.ListImages().images)
    client.RemoveImage(image=pb().ImageSpec(image=ref))  # again: nothing to do, no error


def test_pull_missing_image_fails_like_containerd(client, containerd_cri, lab):
    ref = f"{lab.registry.host}/crimux/no-such-image:{RUN}"
    relayed = code_of(client.pull, ref)
    direct = code_of(containerd_cri.pull, ref)
    assert relayed == direct
    assert relayed[0] != grpc.StatusCode.OK and ref in relayed[1]


# ------------------------------------------------------------------ sandboxes

def test_pod_sandbox_status(client, lab, main):
    pod, _, _ = main
    api = pb()
    status = client.PodSandboxStatus(pod_sandbox_id=pod.id).status
    assert status.id == pod.id
    assert status.state == api.SANDBOX_READY
    assert ipaddress.ip_address(status.network.ip) in lab.net.subnet
    assert status.metadata == pod.config.metadata
    assert dict(status.labels) == dict(pod.config.labels)
    assert dict(status.annotations) == dict(pod.config.annotations)
    assert status.created_at > 0
    assert status.linux.namespaces.options.network == api.POD


def test_list_pod_sandbox_filters(client, main):
    ready, _, _ = main
    api = pb()
    stopped = Pod(client, "crx-stopped", {"app": "stopped", "tier": "test"})
    client.StopPodSandbox(pod_sandbox_id=stopped.id)
    run = {"crimux-test-run": RUN}

    def listed(**kwargs):
        return ids(client.ListPodSandbox(filter=api.PodSandboxFilter(**kwargs)).items)

    assert {ready.id, stopped.id} <= set(ids(client.ListPodSandbox().items))
    assert listed(id=ready.id) == [ready.id]
    assert listed(id=stopped.id) == [stopped.id]
    assert listed(id=UNKNOWN_ID) == []
    ready_state = api.PodSandboxStateValue(state=api.SANDBOX_READY)
    not_ready = api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)
    assert listed(state=ready_state, label_selector=run) == [ready.id]
    assert listed(state=not_ready, label_selector=run) == [stopped.id]
    assert listed(label_selector=run) == sorted([ready.id, stopped.id])
    assert listed(label_selector={**run, "app": "stopped"}) == [stopped.id]
    assert listed(label_selector={**run, "tier": "test", "app": "main"}) == [ready.id]
    assert listed(label_selector={**run, "app": "nothing-like-this"}) == []
    items = {p.id: p for p in client.ListPodSandbox(filter=api.PodSandboxFilter(
        label_selector=run)).items}
    assert items[stopped.id].metadata == stopped.config.metadata
    assert items[ready.id].state == api.SANDBOX_READY

    client.RemovePodSandbox(pod_sandbox_id=stopped.id)


def test_stop_and_remove_pod_sandbox(client, lab):
    api = pb()
    pod = Pod(client, "crx-short-lived", {"app": "short"})
    cid, _ = pod.container("sleeper", lab.busybox_ref, ["sleep", "3600"])

    client.StopPodSandbox(pod_sandbox_id=pod.id)
    assert client.PodSandboxStatus(pod_sandbox_id=pod.id).status.state == api.SANDBOX_NOTREADY
    assert client.ContainerStatus(container_id=cid).status.state == api.CONTAINER_EXITED
    client.StopPodSandbox(pod_sandbox_id=pod.id)  # again: already stopped, no error

    client.RemovePodSandbox(pod_sandbox_id=pod.id)
    assert code_of(client.PodSandboxStatus, pod_sandbox_id=pod.id)[0] == \
        grpc.StatusCode.NOT_FOUND
    assert pod.id not in ids(client.ListPodSandbox().items)
    assert cid not in ids(client.ListContainers().containers)
    client.RemovePodSandbox(pod_sandbox_id=pod.id)  # again: already gone, no error


# ------------------------------------------------------------------ containers

def test_create_start_container_status(client, lab, main):
    pod, _, _ = main
    api = pb()
    cid, config = pod.container("later", lab.busybox_ref, ["sleep", "3600"], start=False,
                                labels={"role": "later"}, annotations={"a": "b"})
    created = client.ContainerStatus(container_id=cid).status
    assert created.state == api.CONTAINER_CREATED
    assert created.created_at > 0 and created.started_at == 0

    client.StartContainer(container_id=cid)
    status = client.ContainerStatus(container_id=cid).status
    assert status.id == cid
    assert status.state == api.CONTAINER_RUNNING
    assert status.started_at >= status.created_at == created.created_at
    assert status.metadata == config.metadata
    assert status.image.image == lab.busybox_ref
    assert status.image_ref.endswith(lab.images["busybox"].digest) or \
        status.image_ref == lab.images["busybox"].config_digest
    assert dict(status.labels) == dict(config.labels)
    assert dict(status.annotations) == dict(config.annotations)
    stop_container(client, cid, 0)
    client.RemoveContainer(container_id=cid)


def test_list_containers_filters(client, lab, main):
    pod, main_id, _ = main
    api = pb()
    created_id, _ = pod.container("created-only", lab.busybox_ref, ["true"], start=False,
                                  labels={"role": "idle"})
    run = {"crimux-test-run": RUN}

    def listed(**kwargs):
        return ids(client.ListContainers(filter=api.ContainerFilter(**kwargs)).containers)

    try:
        assert {main_id, created_id} <= set(ids(client.ListContainers().containers))
        assert listed(id=main_id) == [main_id]
        assert listed(id=UNKNOWN_ID) == []
        assert listed(pod_sandbox_id=pod.id) == sorted([main_id, created_id])
        assert listed(pod_sandbox_id=UNKNOWN_ID) == []
        running = api.ContainerStateValue(state=api.CONTAINER_RUNNING)
        created = api.ContainerStateValue(state=api.CONTAINER_CREATED)
        assert listed(pod_sandbox_id=pod.id, state=running) == [main_id]
        assert listed(pod_sandbox_id=pod.id, state=created) == [created_id]
        assert listed(label_selector={**run, "role": "idle"}) == [created_id]
        assert listed(label_selector={**run, "role": "main"}) == [main_id]
        assert listed(label_selector={**run, "role": "none-such"}) == []
        item = client.ListContainers(filter=api.ContainerFilter(id=main_id)).containers[0]
        assert (item.pod_sandbox_id, item.metadata.name) == (pod.id, "main")
    finally:
        client.RemoveContainer(container_id=created_id)


def test_exec_sync_timeout(client, main):
    _, cid, _ = main
    start = time.monotonic()
    code, message = code_of(exec_sync, client, cid, ["sh", "-c", "echo before; sleep 20"], 1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, message
    assert "timeout 1s exceeded" in message, "containerd's own timeout, not the client's"
    assert time.monotonic() - start < 10


def test_exec_sync_large_output_and_environment(client, main):
    _, cid, _ = main
    size = 3 * 1000 * 1000
    result = exec_sync(client, cid, [
        "sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x; id -u >&2; exit 7"], 20)
    assert (len(result.stdout), set(result.stdout)) == (size, {ord("x")})
    assert (result.stderr, result.exit_code) == (b"0\n", 7)


def read_log(path):
    """(stream, tag, text) of each line of a CRI log file."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [m.group(2, 3, 4) for line in f if (m := CRI_LOG_LINE.match(line))]


def test_container_log_file(client, main, log_dir):
    _, cid, _ = main
    path = os.path.join(log_dir, "main.log")
    assert client.ContainerStatus(container_id=cid).status.log_path == path
    lines = wait_for(lambda: (got := read_log(path)) and
                     ("stdout", "F", "tick 2") in got and got, 10, "ticks in the log")
    assert ("stdout", "F", "to-stdout") in lines
    assert ("stderr", "F", "to-stderr") in lines

    # What log rotation does: move the file away and ask for a new one.
    os.rename(path, path + ".1")
    client.ReopenContainerLog(container_id=cid)
    wait_for(lambda: any(text.startswith("tick") for _, _, text in read_log(path)), 10,
             "ticks in the reopened log")


def test_container_stats(client, main):
    pod, cid, _ = main
    api = pb()
    stats = client.ContainerStats(container_id=cid).stats
    assert stats.attributes.id == cid
    assert stats.attributes.metadata.name == "main"
    assert stats.attributes.labels["role"] == "main"
    assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.timestamp > 0 and stats.memory.working_set_bytes.value > 0
    assert stats.HasField("writable_layer") and stats.writable_layer.fs_id.mountpoint

    def listed(**kwargs):
        return [s.attributes.id for s in client.ListContainerStats(
            filter=api.ContainerStatsFilter(**kwargs)).stats]

    everything = client.ListContainerStats().stats
    assert cid in [s.attributes.id for s in everything]
    assert all(s.cpu.timestamp > 0 for s in everything if s.attributes.id == cid)
    assert listed(id=cid) == [cid]
    assert listed(pod_sandbox_id=pod.id) == [cid]
    assert listed(label_selector={"crimux-test-run": RUN, "role": "main"}) == [cid]
    assert listed(label_selector={"crimux-test-run": RUN, "role": "none-such"}) == []


def test_stop_and_remove_container(client, lab, main):
    pod, _, _ = main
    api = pb()
    graceful, _ = pod.container("graceful", lab.busybox_ref, [
        "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])
    stubborn, _ = pod.container("stubborn", lab.busybox_ref, [
        "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])

    start = time.monotonic()
    stop_container(client, graceful, 10)
    assert time.monotonic() - start < 5, "SIGTERM was honoured: no need to wait 10s"
    start = time.monotonic()
    stop_container(client, stubborn, 1)  # it ignores SIGTERM: SIGKILL after 1s
    assert time.monotonic() - start >= 0.9

    for cid, exit_code in ((graceful, 0), (stubborn, 137)):
        status = client.ContainerStatus(container_id=cid).status
        assert (status.state, status.exit_code) == (api.CONTAINER_EXITED, exit_code)
        assert status.finished_at >= status.started_at > 0
        stop_container(client, cid, 0)  # again: no error

        client.RemoveContainer(container_id=cid)
        assert code_of(client.ContainerStatus, container_id=cid)[0] == \
            grpc.StatusCode.NOT_FOUND
        assert cid not in ids(client.ListContainers().containers)
        client.RemoveContainer(container_id=cid)  # again: no error


def test_streaming_urls_are_loopback(client, main):
    pod, cid, _ = main
    urls = [client.Exec(container_id=cid, cmd=["true"], stdout=True).url,
            client.Attach(container_id=cid, stdout=True).url,
            client.PortForward(pod_sandbox_id=pod.id, port=[80]).url]
    for url in urls:
        assert re.match(r"^http://127\.0\.0\.1:\d+/", url), url


# ------------------------------------------------------------------ unknown IDs

def _unknown_calls():
    """Request fields naming an ID nobody has, per method."""
    api = pb()
    return {
        "PodSandboxStatus": dict(pod_sandbox_id=UNKNOWN_ID),
        "StartContainer": dict(container_id=UNKNOWN_ID),
        "ExecSync": dict(container_id=UNKNOWN_ID, cmd=["true"]),
        "ContainerStats": dict(container_id=UNKNOWN_ID),
        "ReopenContainerLog": dict(container_id=UNKNOWN_ID),
        "UpdateContainerResources": dict(container_id=UNKNOWN_ID,
                                         linux=api.LinuxContainerResources(cpu_shares=512)),
        "CreateContainer": dict(pod_sandbox_id=UNKNOWN_ID,
                                config=container_config("x", "busybox"),
                                sandbox_config=sandbox_config("x")),
        "StopContainer": dict(container_id=UNKNOWN_ID),
    }


UNKNOWN_ID_METHODS = ["PodSandboxStatus", "StartContainer", "ExecSync", "ContainerStats",
                      "ReopenContainerLog", "UpdateContainerResources", "CreateContainer",
                      "StopContainer"]


@pytest.mark.parametrize("method", UNKNOWN_ID_METHODS)
def test_unknown_id_is_not_found(client, containerd_cri, method):
    """containerd's NOT_FOUND (code and message) comes back as it is."""
    fields = _unknown_calls()[method]
    relayed = code_of(getattr(client, method), **fields)
    direct = code_of(getattr(containerd_cri, method), **fields)
    assert relayed == direct
    assert relayed[0] == grpc.StatusCode.NOT_FOUND, relayed
