"""Routing by RuntimeClass handler across two real containerd backends.

One crimuxd (shared by the module) sits in front of the lab's containerd
(backend "one": handlers "runc" and "kata") and a second containerd
(backend "two": handler "blue", which that containerd knows as "runc").
There is no KVM here: the lab's containerd maps its "kata" handler to the
runc shim, so what is tested is crimux's routing and policy, not Kata.

Where a claim is "it reached the owner", the tests ask both containerds
directly: the object exists on exactly one of them, and crimux's answer
matches that one's.
"""

import json
import os
import re
import urllib.parse
import uuid

import grpc
import pytest

from lab import env, images
from lab.cri import CRI, container_config, linux_resources, pb, sandbox_config
from lab.env import wait_for
from conftest import rpc_error, stop_checked

MIB = 1 << 20
RUN = uuid.uuid4().hex[:12]  # labels every pod this module creates
LABELS = {"crimux-test-routing": RUN}
UNKNOWN_ID = "bad1d" * 12 + "0bad"  # 64 hex digits no backend knows
# containerd 1.6 has pod stats only for pods with a cgroup parent (as the
# kubelet always gives): this module's pods live under one of their own.
CGROUP_PARENT = "/crimux-routing-" + RUN
SLEEP = ["sleep", "3600"]

HANDLERS = """
[crimux]
default_handler = runc
[handler "runc"]
backend = one
# The lab's containerd runs its "kata" handler with the runc shim (no KVM
# on these machines): routing and policy are real, the isolation is not.
[handler "kata"]
backend = one
policy = kata
[handler "blue"]
backend = two
runtime_handler = runc
"""
HANDLER_LIST = "runc (default), kata, blue"


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def two(lab, tmp_path_factory):
    """A second real containerd, sharing the lab's registry and CNI network."""
    root = tmp_path_factory.mktemp("two")
    containerd = env.Containerd(str(root / "containerd2"), lab.registry.host,
                                lab.net.conf_dir).start()
    yield containerd
    containerd.stop()


@pytest.fixture(scope="module")
def direct(lab, two):
    """Clients straight to each backend, by backend name."""
    with CRI(lab.containerd.endpoint) as one_client, CRI(two.endpoint) as two_client:
        clients = {"one": one_client, "two": two_client}
        yield clients
        for client in clients.values():  # this module's pods only
            try:
                for item in client.ListPodSandbox(filter=pb().PodSandboxFilter(
                        label_selector=LABELS)).items:
                    client.remove_pod(item.id)
            except grpc.RpcError:
                pass  # a stopped backend: its own teardown removes its pods
    remove_cgroup_parent()


def remove_cgroup_parent():
    """Remove CGROUP_PARENT from every cgroup v1 hierarchy (once its pods are gone)."""
    for controller in os.listdir("/sys/fs/cgroup"):
        try:
            os.rmdir(os.path.join("/sys/fs/cgroup", controller, CGROUP_PARENT.lstrip("/")))
        except (FileNotFoundError, NotADirectoryError):
            pass  # not in this hierarchy, or already removed through a symlink


@pytest.fixture(scope="module")
def daemon(lab, two, direct, crimuxd_binary):
    """The module's crimuxd; it must still stop cleanly at the end."""
    d = lab.crimuxd(crimuxd_binary, {"one": lab.containerd.endpoint, "two": two.endpoint},
                    HANDLERS)
    yield d
    stop_checked([d], must_run=True)


@pytest.fixture
def mux(daemon):
    """A fresh client to crimuxd for each test (crimuxd may have restarted)."""
    with CRI(daemon.endpoint) as client:
        client.wait_ready(10)
        yield client


# ------------------------------------------------------------------ helpers

# Which backend each handler's pods must land on, and what that backend
# calls the handler.
BACKEND_OF = {"": ("one", "runc"), "runc": ("one", "runc"), "kata": ("one", "kata"),
              "blue": ("two", "runc")}


def kata_resources():
    """0.5 CPU request == limit and 512 MiB: a pod (or container) Kata accepts."""
    return linux_resources(500, 500, 512 * MIB)


def pod_config(name=None, labels=None, handler="", **kwargs):
    name = name or "rt-" + uuid.uuid4().hex[:8]
    if handler == "kata":
        kwargs.setdefault("resources", kata_resources())
    return sandbox_config(name, labels={**LABELS, **(labels or {})},
                          cgroup_parent=CGROUP_PARENT, **kwargs)


def run_pod(client, handler="", **kwargs):
    """A sandbox through `client`; returns (id, config)."""
    config = pod_config(handler=handler, **kwargs)
    return client.run_pod(config, handler), config


def add_container(client, pod_id, config, lab, name="main", handler="", labels=None,
                  log_path="", command=SLEEP):
    """Create and start a busybox container in a pod; returns its ID."""
    resources = kata_resources() if handler == "kata" else None
    ccfg = container_config(name, lab.busybox_ref, command, labels={**LABELS, **(labels or {})},
                            log_path=log_path, resources=resources)
    return client.start_container(pod_id, config, ccfg)


def pod_with_container(client, lab, handler="", labels=None):
    """A sandbox with one running container `main` (both with `labels`),
    image pulled for the pod as the kubelet does; returns (pod_id,
    container_id, config)."""
    pod_id, config = run_pod(client, handler, labels=labels)
    client.pull(lab.busybox_ref, sandbox=config)
    cid = add_container(client, pod_id, config, lab, handler=handler, labels=labels)
    return pod_id, cid, config


def where(direct, pod_id=None, container_id=None):
    """Names of the backends that know the sandbox or container."""
    found = []
    for name, client in direct.items():
        try:
            if pod_id:
                client.PodSandboxStatus(pod_sandbox_id=pod_id)
            else:
                client.ContainerStatus(container_id=container_id)
            found.append(name)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
    return found


def exec_out(client, container_id, *cmd):
    reply = client.ExecSync(container_id=container_id, cmd=list(cmd), timeout=10)
    assert reply.exit_code == 0, reply
    return reply.stdout.decode().strip()


def suite_filter(**labels):
    return {**LABELS, **labels}


def sandboxes(client, **fields):
    """ListPodSandbox with these filter fields (none: no filter at all)."""
    request = pb().ListPodSandboxRequest()
    if fields:
        request.filter.CopyFrom(pb().PodSandboxFilter(**fields))
    return list(client.ListPodSandbox(request).items)


def containers(client, **fields):
    """ListContainers with these filter fields (none: no filter at all)."""
    request = pb().ListContainersRequest()
    if fields:
        request.filter.CopyFrom(pb().ContainerFilter(**fields))
    return list(client.ListContainers(request).containers)


def labelled(items, **labels):
    """The items of this module's run with these labels, picked here rather
    than by a filter (so that only the filter tests depend on filters)."""
    want = suite_filter(**labels).items()
    return [i for i in items if want <= dict(getattr(i, "attributes", i).labels).items()]


def ids(items):
    """IDs in list order (a list, so that duplicates show)."""
    return sorted(item.id for item in items)


# ------------------------------------------------------------------ RunPodSandbox

@pytest.mark.parametrize("handler", ["", "runc", "kata", "blue"])
def test_run_pod_sandbox_goes_to_the_handlers_backend(mux, direct, handler):
    pod_id, _ = run_pod(mux, handler)
    backend, backend_handler = BACKEND_OF[handler]

    assert where(direct, pod_id=pod_id) == [backend]
    status = direct[backend].PodSandboxStatus(pod_sandbox_id=pod_id).status
    assert status.runtime_handler == backend_handler
    # crimux reports its own handler name ("" is the default handler, runc).
    assert mux.PodSandboxStatus(pod_sandbox_id=pod_id).status.runtime_handler == \
        (handler or "runc")
    mux.remove_pod(pod_id)
    assert where(direct, pod_id=pod_id) == []


def test_unknown_handler_is_refused_with_the_handler_list(mux, direct):
    config = pod_config(labels={"case": "unknown-handler"})
    e = rpc_error(mux.RunPodSandbox, config=config, runtime_handler="gold")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ('RunPodSandbox: RuntimeClass handler "gold" is not configured '
                           f'in crimux; the handlers are: {HANDLER_LIST}')
    for client in direct.values():
        assert sandboxes(client, label_selector=suite_filter(case="unknown-handler")) == []


def test_a_handler_name_that_is_not_utf8_gets_a_readable_error(mux, direct):
    # The name is quoted in the error: gRPC clients drop a status message
    # that is not UTF-8 (Python's fails to decode the whole status).
    config = pod_config(labels={"case": "unknown-handler-bytes"})
    good = pb().RunPodSandboxRequest(config=config, runtime_handler="gold\x7f").SerializeToString()
    request = good.replace(b"gold\x7f", b"gold\xff")
    with pytest.raises(grpc.RpcError) as err:
        mux.raw("/runtime.v1.RuntimeService/RunPodSandbox", request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith('RunPodSandbox: RuntimeClass handler "gold\ufffd" ')
    for client in direct.values():
        assert sandboxes(client, label_selector=suite_filter(case="unknown-handler-bytes")) == []


# ------------------------------------------------------------------ calls that name an object

def url_parts(url):
    """(host:port, first path element) of a streaming URL."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.netloc, parsed.path.split("/")[1]


def test_every_follow_up_call_reaches_the_owner(mux, direct, lab, tmp_path):
    pods = {}
    for handler in ("runc", "blue"):
        log_dir = tmp_path / handler
        log_dir.mkdir()
        pod_id, config = run_pod(mux, handler, log_directory=str(log_dir))
        mux.pull(lab.busybox_ref, sandbox=config)
        cid = add_container(mux, pod_id, config, lab, log_path="main.log")
        pods[handler] = (pod_id, cid, config, log_dir)
    # Each containerd has its own streaming server (a port of its own).
    stream_ports = {BACKEND_OF[h][0]: url_parts(direct[BACKEND_OF[h][0]].Exec(
        container_id=cid, cmd=["true"], stdout=True).url)[0]
        for h, (_, cid, _, _) in pods.items()}
    assert stream_ports["one"] != stream_ports["two"]

    for handler, (pod_id, cid, config, log_dir) in pods.items():
        owner = direct[BACKEND_OF[handler][0]]
        assert where(direct, pod_id=pod_id) == [BACKEND_OF[handler][0]]
        assert where(direct, container_id=cid) == [BACKEND_OF[handler][0]]

        # Status calls: crimux's answer is the owner's (bar the handler name).
        got = mux.PodSandboxStatus(pod_sandbox_id=pod_id).status
        want = owner.PodSandboxStatus(pod_sandbox_id=pod_id).status
        assert (got.id, got.created_at, got.network.ip, got.state) == \
            (want.id, want.created_at, want.network.ip, pb().SANDBOX_READY)
        got = mux.ContainerStatus(container_id=cid).status
        want = owner.ContainerStatus(container_id=cid).status
        assert (got.id, got.created_at, got.started_at, got.image_ref, got.state) == \
            (want.id, want.created_at, want.started_at, want.image_ref,
             pb().CONTAINER_RUNNING)

        # crictl-style ID prefixes.
        assert mux.PodSandboxStatus(pod_sandbox_id=pod_id[:12]).status.id == pod_id
        assert mux.ContainerStatus(container_id=cid[:12]).status.id == cid

        assert exec_out(mux, cid, "hostname") == config.hostname
        stats = mux.ContainerStats(container_id=cid).stats
        assert stats.attributes.id == cid and stats.memory.working_set_bytes.value > 0
        pod_stats = mux.PodSandboxStats(pod_sandbox_id=pod_id).stats
        assert pod_stats.attributes.id == pod_id
        assert [c.attributes.id for c in pod_stats.linux.containers] == [cid]

        # UpdateContainerResources changes the container's own cgroup.
        mux.UpdateContainerResources(container_id=cid, linux=pb().LinuxContainerResources(
            memory_limit_in_bytes=96 * MIB))
        assert exec_out(mux, cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes") == \
            str(96 * MIB)

        # ReopenContainerLog: the owner opens a new log file, as after rotation.
        log = log_dir / "main.log"
        log.rename(log_dir / "main.log.1")
        mux.ReopenContainerLog(container_id=cid)
        assert log.exists()

        # Streaming URLs come from the owner's streaming server.
        urls = [mux.Exec(container_id=cid, cmd=["true"], stdout=True).url,
                mux.Attach(container_id=cid, stdout=True).url,
                mux.PortForward(pod_sandbox_id=pod_id, port=[80]).url]
        assert [url_parts(u) for u in urls] == [
            (stream_ports[BACKEND_OF[handler][0]], kind)
            for kind in ("exec", "attach", "portforward")]
        for u in urls:
            assert re.match(r"^http://127\.0\.0\.1:\d+/\w+/\S+$", u), u

        # Stop and remove, container then pod: gone from the owner.
        mux.StopContainer(container_id=cid, timeout=0)
        assert owner.ContainerStatus(container_id=cid).status.state == pb().CONTAINER_EXITED
        mux.RemoveContainer(container_id=cid)
        assert where(direct, container_id=cid) == []
        mux.StopPodSandbox(pod_sandbox_id=pod_id)
        assert owner.PodSandboxStatus(pod_sandbox_id=pod_id).status.state == \
            pb().SANDBOX_NOTREADY
        mux.RemovePodSandbox(pod_sandbox_id=pod_id)
        assert where(direct, pod_id=pod_id) == []


def test_create_and_start_container_reach_the_pods_backend(mux, direct, lab):
    pod_id, config = run_pod(mux, "blue")
    mux.pull(lab.busybox_ref, sandbox=config)
    ccfg = container_config("late", lab.busybox_ref, SLEEP, labels=LABELS)
    cid = mux.CreateContainer(pod_sandbox_id=pod_id, config=ccfg,
                              sandbox_config=config).container_id
    assert where(direct, container_id=cid) == ["two"]
    assert direct["two"].ContainerStatus(container_id=cid).status.state == \
        pb().CONTAINER_CREATED
    mux.StartContainer(container_id=cid)
    assert direct["two"].ContainerStatus(container_id=cid).status.state == \
        pb().CONTAINER_RUNNING
    mux.remove_pod(pod_id)
    assert where(direct, pod_id=pod_id) == []


def test_objects_created_behind_crimuxs_back_are_found(mux, direct, lab):
    """Ownership is rebuilt on a miss: a pod crimux never saw created is
    still routed to its backend, by full ID and by prefix."""
    config = pod_config()
    pod_id = direct["two"].run_pod(config, "runc")
    direct["two"].pull(lab.busybox_ref)
    cid = add_container(direct["two"], pod_id, config, lab)

    assert mux.ContainerStatus(container_id=cid[:10]).status.id == cid
    status = mux.PodSandboxStatus(pod_sandbox_id=pod_id[:10]).status
    assert (status.id, status.runtime_handler) == (pod_id, "blue")
    assert exec_out(mux, cid, "echo", "found") == "found"
    mux.remove_pod(pod_id)
    assert where(direct, pod_id=pod_id) == []


@pytest.mark.parametrize("method, field", [
    ("PodSandboxStatus", "pod_sandbox_id"),
    ("ContainerStatus", "container_id"),
    ("PodSandboxStats", "pod_sandbox_id"),
    ("ContainerStats", "container_id"),
    ("ExecSync", "container_id"),
    ("StopContainer", "container_id"),
    ("StopPodSandbox", "pod_sandbox_id"),
    ("RemoveContainer", "container_id"),
    ("RemovePodSandbox", "pod_sandbox_id"),
])
def test_unknown_id_gets_what_the_default_backend_gives(mux, direct, method, field):
    def outcome(client):
        try:
            getattr(client, method)(**{field: UNKNOWN_ID})
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    expected = outcome(direct["one"])
    assert outcome(mux) == expected
    # Status calls say NotFound; the removes are idempotent.
    if method in ("PodSandboxStatus", "ContainerStatus"):
        assert expected[0] == grpc.StatusCode.NOT_FOUND
    if method.startswith("Remove"):
        assert expected[0] == grpc.StatusCode.OK


# ------------------------------------------------------------------ merged lists

@pytest.fixture(scope="module")
def three_pods(daemon, direct, lab):
    """p1 on one (runc), p2 and p3 on two (blue); p3 stopped.  Labels: app=a
    on p1 and p3, app=b on p2; each has a container `main` with the pod's
    app label."""
    with CRI(daemon.endpoint) as client:
        made = {}
        for name, handler, app in (("p1", "runc", "a"), ("p2", "blue", "b"),
                                   ("p3", "blue", "a")):
            pod_id, config = run_pod(client, handler, labels={"set": "three", "app": app})
            client.pull(lab.busybox_ref, sandbox=config)
            cid = add_container(client, pod_id, config, lab,
                                labels={"set": "three", "app": app})
            made[name] = (pod_id, cid)
        client.StopPodSandbox(pod_sandbox_id=made["p3"][0])
        yield made
        for pod_id, _ in made.values():
            client.remove_pod(pod_id)


def three(**labels):
    return suite_filter(set="three", **labels)


def test_list_pod_sandbox_merges_both_backends(mux, direct, three_pods):
    p1, p2, p3 = (three_pods[p][0] for p in ("p1", "p2", "p3"))
    merged = sandboxes(mux)
    assert ids(labelled(merged, set="three")) == sorted([p1, p2, p3])
    # Nothing lost, nothing twice: exactly the two backends' lists.
    assert ids(merged) == ids(sandboxes(direct["one"]) + sandboxes(direct["two"]))
    # Each pod reports crimux's handler: "blue", not two's own "runc".
    assert {p.id: p.runtime_handler for p in labelled(merged, set="three")} == \
        {p1: "runc", p2: "blue", p3: "blue"}
    assert mux.PodSandboxStatus(pod_sandbox_id=p2).status.runtime_handler == "blue"
    assert direct["two"].PodSandboxStatus(pod_sandbox_id=p2).status.runtime_handler == "runc"


def test_list_pod_sandbox_filters(mux, three_pods):
    p1, p2, p3 = (three_pods[p][0] for p in ("p1", "p2", "p3"))
    api = pb()
    assert ids(sandboxes(mux, id=p2)) == [p2]
    assert ids(sandboxes(mux, id=p2[:12])) == [p2]
    assert ids(sandboxes(mux, id=p1, label_selector=three())) == [p1]
    assert ids(sandboxes(mux, label_selector=three(app="a"))) == sorted([p1, p3])
    ready = api.PodSandboxStateValue(state=api.SANDBOX_READY)
    not_ready = api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)
    assert ids(sandboxes(mux, state=ready, label_selector=three())) == sorted([p1, p2])
    assert ids(sandboxes(mux, state=not_ready, label_selector=three())) == [p3]
    assert ids(sandboxes(mux, state=not_ready, label_selector=three(app="b"))) == []


def test_list_containers_merges_both_backends(mux, direct, three_pods):
    (p1, c1), (p2, c2), (p3, c3) = (three_pods[p] for p in ("p1", "p2", "p3"))
    merged = containers(mux)
    assert ids(labelled(merged, set="three")) == sorted([c1, c2, c3])
    assert ids(merged) == ids(containers(direct["one"]) + containers(direct["two"]))
    assert {c.id: c.pod_sandbox_id for c in labelled(merged, set="three")} == \
        {c1: p1, c2: p2, c3: p3}


def test_list_containers_filters(mux, three_pods):
    (p1, c1), (p2, c2), (p3, c3) = (three_pods[p] for p in ("p1", "p2", "p3"))
    api = pb()
    assert ids(containers(mux, id=c2)) == [c2]
    assert ids(containers(mux, id=c3[:12])) == [c3]
    assert ids(containers(mux, pod_sandbox_id=p2)) == [c2]
    assert ids(containers(mux, pod_sandbox_id=p1)) == [c1]
    running = api.ContainerStateValue(state=api.CONTAINER_RUNNING)
    exited = api.ContainerStateValue(state=api.CONTAINER_EXITED)
    assert ids(containers(mux, state=running, label_selector=three())) == sorted([c1, c2])
    assert ids(containers(mux, state=exited, label_selector=three())) == [c3]
    assert ids(containers(mux, label_selector=three(app="a"))) == sorted([c1, c3])


def container_stats(client, **fields):
    return list(client.ListContainerStats(filter=pb().ContainerStatsFilter(**fields)).stats)


def pod_stats(client, **fields):
    return list(client.ListPodSandboxStats(filter=pb().PodSandboxStatsFilter(**fields)).stats)


def stat_ids(stats):
    return sorted(s.attributes.id for s in stats)


def test_list_container_stats_merge_both_backends(mux, direct, three_pods):
    (p1, c1), (p2, c2), (p3, c3) = (three_pods[p] for p in ("p1", "p2", "p3"))
    merged = container_stats(mux)
    assert {c1, c2} <= set(stat_ids(labelled(merged, set="three")))
    assert stat_ids(merged) == stat_ids(container_stats(direct["one"]) +
                                        container_stats(direct["two"]))


def test_list_pod_sandbox_stats_merge_both_backends(mux, direct, three_pods):
    """As the kubelet asks: an empty filter (containerd skips pods that are
    not ready only when there is a filter)."""
    (p1, c1), (p2, c2), (p3, c3) = (three_pods[p] for p in ("p1", "p2", "p3"))
    merged = pod_stats(mux)
    assert stat_ids(labelled(merged, set="three")) == sorted([p1, p2])
    assert stat_ids(merged) == stat_ids(pod_stats(direct["one"]) + pod_stats(direct["two"]))


def test_list_stats_filters(mux, three_pods):
    (p1, c1), (p2, c2), (p3, c3) = (three_pods[p] for p in ("p1", "p2", "p3"))
    assert stat_ids(container_stats(mux, id=c2)) == [c2]
    assert stat_ids(container_stats(mux, pod_sandbox_id=p1)) == [c1]
    assert set(stat_ids(container_stats(mux, label_selector=three(app="a")))) <= {c1, c3}
    assert stat_ids(pod_stats(mux, id=p2)) == [p2]
    assert stat_ids(pod_stats(mux, label_selector=three(app="b"))) == [p2]


# ------------------------------------------------------------------ images

@pytest.fixture(scope="module")
def probe_image(lab, direct):
    """An image of this module's own in the lab registry, on no backend yet."""
    layer = images.Layer()
    layer.file("probe", f"routing {RUN}\n".encode())
    image = images.Image("crimux/routing-probe", RUN, [layer])
    ref = lab.registry.push(image)
    yield ref, image.config_digest
    for client in direct.values():
        try:
            client.RemoveImage(image=pb().ImageSpec(image=ref))
        except grpc.RpcError:
            pass


def has_image(client, ref, **spec):
    return client.ImageStatus(image=pb().ImageSpec(image=ref, **spec)).image.id


@pytest.fixture
def probe(probe_image, direct):
    """The probe image (ref, ID); removed from both backends after the test."""
    yield probe_image
    for client in direct.values():
        client.RemoveImage(image=pb().ImageSpec(image=probe_image[0]))


def test_pull_goes_to_the_pods_backend(mux, direct, probe):
    ref, image_id = probe
    # Pulled for a pod on two (found by the pod's UID): onto two only.
    pod_id, config = run_pod(mux, "blue")
    mux.pull(ref, sandbox=config)
    assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == ("", image_id)
    # ImageStatus for a handler asks that handler's backend.
    assert has_image(mux, ref, runtime_handler="blue") == image_id
    assert has_image(mux, ref, runtime_handler="runc") == ""
    direct["two"].RemoveImage(image=pb().ImageSpec(image=ref))

    # Pulled for a handler named in the ImageSpec: onto its backend only.
    mux.PullImage(image=pb().ImageSpec(image=ref, runtime_handler="blue"))
    assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == ("", image_id)
    direct["two"].RemoveImage(image=pb().ImageSpec(image=ref))

    # Pulled for nobody in particular: onto every backend, so that
    # ImageStatus without a handler finds it (test_images.py has the rest).
    mux.pull(ref)
    assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == (image_id, image_id)
    assert has_image(mux, ref) == image_id
    mux.remove_pod(pod_id)


def test_pull_for_an_unknown_handler_is_refused(mux, direct, probe):
    ref, _ = probe
    with pytest.raises(grpc.RpcError) as err:
        mux.PullImage(image=pb().ImageSpec(image=ref, runtime_handler="gold"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ('PullImage: RuntimeClass handler "gold" is not configured '
                                   f'in crimux; the handlers are: {HANDLER_LIST}')
    assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == ("", "")


def test_image_status_needs_every_backend(mux, direct, probe):
    """Without a handler, an image is present only if every backend has it,
    so that the kubelet still pulls it for a pod on the backend lacking it."""
    ref, image_id = probe
    direct["two"].pull(ref)
    assert has_image(mux, ref) == ""
    direct["one"].pull(ref)
    assert has_image(mux, ref) == image_id


def test_image_status_by_a_name_one_backend_lacks(mux, direct, probe, lab):
    """The image on both backends, a second tag on two only: asked again by
    ID, one has it too, so the second tag finds it, with both tags, as the
    merged list shows it. (Here the backends are both gRPC channels: the
    second round starts from the event thread's fan-out.)"""
    ref, image_id = probe
    second = ref + "-second"
    layer = images.Layer()
    layer.file("probe", f"routing {RUN}\n".encode())
    lab.registry.push(images.Image("crimux/routing-probe", RUN + "-second", [layer]))
    for client in direct.values():
        client.pull(ref)
    direct["two"].pull(second)
    status = mux.ImageStatus(image=pb().ImageSpec(image=second)).image
    assert status.id == image_id and sorted(status.repo_tags) == sorted([ref, second])
    assert [i for i in mux.ListImages().images if i.id == image_id] == [status]
    # By ID, so that the second tag goes too.
    mux.RemoveImage(image=pb().ImageSpec(image=second))
    assert has_image(direct["two"], second) == has_image(direct["one"], ref) == ""


def test_list_images_has_each_image_once(mux, direct, probe):
    ref, image_id = probe
    for client in direct.values():
        client.pull(ref)
    listed = mux.ListImages().images
    assert [i.id for i in listed].count(image_id) == 1
    assert len({i.id for i in listed}) == len(listed)
    assert ref in next(i for i in listed if i.id == image_id).repo_tags
    assert {i.id for i in listed} == {i.id for i in direct["one"].ListImages().images} | \
        {i.id for i in direct["two"].ListImages().images}


def test_remove_image_removes_it_from_every_backend(mux, direct, probe):
    ref, _ = probe
    for client in direct.values():
        client.pull(ref)
    mux.RemoveImage(image=pb().ImageSpec(image=ref))
    assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == ("", "")


def test_image_status_of_an_image_no_backend_has(mux, direct):
    """The kubelet asks this before every pull: the answer must be an empty
    ImageStatusResponse, as containerd gives.  (The first build answered OK
    without any message; fixed in a87ca7e.)"""
    request = pb().ImageStatusRequest(
        image=pb().ImageSpec(image="127.0.0.1:1/crimux/nowhere:" + RUN)).SerializeToString()
    path = "/runtime.v1.ImageService/ImageStatus"
    assert direct["one"].raw(path, request) == b""
    assert direct["two"].raw(path, request) == b""
    reply, call = mux.raw(path, request, with_call=True)
    assert call.code() == grpc.StatusCode.OK
    assert reply == b"", f"crimux replied {reply!r} with details {call.details()!r}"


def test_image_fs_info_lists_both_backends(mux, direct, lab, two):
    def mountpoints(client):
        return sorted(fs.fs_id.mountpoint for fs in client.ImageFsInfo().image_filesystems)

    merged = mountpoints(mux)
    assert merged == sorted(mountpoints(direct["one"]) + mountpoints(direct["two"]))
    assert len(merged) == 2
    assert any(m.startswith(lab.containerd.root_dir + "/") for m in merged)
    assert any(m.startswith(two.root_dir + "/") for m in merged)


# ------------------------------------------------------------------ a backend goes away

def conditions(client):
    return {c.type: c for c in client.Status().status.conditions}


def test_status_describes_every_backend_and_handler(mux):
    reply = mux.Status()
    cond = {c.type: c.status for c in reply.status.conditions}
    assert cond == {"RuntimeReady": True, "NetworkReady": True,
                    "two/RuntimeReady": True, "two/NetworkReady": True}
    # crimux's handler names, and "" for the default one.
    assert [h.name for h in reply.runtime_handlers] == ["runc", "kata", "blue", ""]


def test_status_verbose_info_of_every_backend(mux):
    info = mux.Status(verbose=True).info
    assert {"crimux", "one/config", "two/config"} <= set(info), sorted(info)
    crimux = json.loads(info["crimux"])
    assert [(b["name"], b["reachable"]) for b in crimux["backends"]] == \
        [("one", True), ("two", True)]
    assert [(h["name"], h["backend"], h["runtime_handler"], h["policy"], h["default"])
            for h in crimux["handlers"]] == [("runc", "one", "runc", "none", True),
                                             ("kata", "one", "kata", "kata", False),
                                             ("blue", "two", "runc", "none", False)]
    # Each backend's own verbose info, under its name.
    assert json.loads(info["one/config"]) != json.loads(info["two/config"])


def test_backend_stopped_and_started_again(mux, direct, lab, two):
    p1, c1, _ = pod_with_container(mux, lab, "runc")
    p2, c2, _ = pod_with_container(mux, lab, "blue")
    before = conditions(mux)
    assert before["two/RuntimeReady"].status is True

    two.daemon.terminate()  # containerd only: its shims and pods live on
    try:
        for call, kwargs in ((mux.PodSandboxStatus, {"pod_sandbox_id": p2}),
                             (mux.ContainerStatus, {"container_id": c2}),
                             (mux.ExecSync, {"container_id": c2, "cmd": ["true"]}),
                             (mux.ListPodSandbox, {}),
                             (mux.ListContainers, {}),
                             (mux.RunPodSandbox, {"config": pod_config(),
                                                  "runtime_handler": "blue"})):
            e = rpc_error(call, **kwargs)
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (call, e)
            assert "backend two" in e.details(), (call, e.details())

        # Pods on one are not affected.
        assert exec_out(mux, c1, "echo", "still here") == "still here"
        assert mux.PodSandboxStatus(pod_sandbox_id=p1).status.state == pb().SANDBOX_READY

        # The node stays ready (the default backend is up); two shows as down.
        cond = conditions(mux)
        assert cond["RuntimeReady"].status is True
        assert cond["NetworkReady"].status is True
        for kind in ("RuntimeReady", "NetworkReady"):
            c = cond["two/" + kind]
            assert (c.status, c.reason) == (False, "BackendUnavailable")
            assert c.message.startswith("backend two"), c.message
    finally:
        two.start()

    # Back: everything works again within a few seconds.
    def lists_again():
        try:
            return sandboxes(mux)
        except grpc.RpcError:
            return None
    assert {p1, p2} <= set(ids(wait_for(lists_again, 10, "ListPodSandbox to work again",
                                        interval=0.1)))
    assert mux.PodSandboxStatus(pod_sandbox_id=p2).status.runtime_handler == "blue"
    assert exec_out(mux, c2, "echo", "back") == "back"
    assert conditions(mux)["two/RuntimeReady"].status is True
    mux.remove_pod(p1)
    mux.remove_pod(p2)
    assert where(direct, pod_id=p1) == where(direct, pod_id=p2) == []


# ------------------------------------------------------------------ crimuxd killed

def test_sigkill_loses_nothing(daemon, direct, lab, probe):
    with CRI(daemon.endpoint) as client:
        pods = {}
        for handler in ("runc", "kata", "blue"):
            pods[handler] = pod_with_container(client, lab, handler, labels={"set": "kill"})
        # A second container in the pod on two.
        p_blue, _, cfg_blue = pods["blue"]
        extra = add_container(client, p_blue, cfg_blue, lab, name="second",
                              labels={"set": "kill"})
        before_pods = labelled(sandboxes(client), set="kill")
        before_ctrs = labelled(containers(client), set="kill")
    assert len(before_pods) == 3 and len(before_ctrs) == 4

    daemon.kill()
    daemon.start()  # same configuration, same socket

    with CRI(daemon.endpoint) as client:
        after_pods = labelled(sandboxes(client), set="kill")
        after_ctrs = labelled(containers(client), set="kill")
        assert ids(after_pods) == ids(before_pods)
        assert ids(after_ctrs) == ids(before_ctrs)
        assert {p.id: p.runtime_handler for p in after_pods} == \
            {pods[h][0]: h for h in ("runc", "kata", "blue")}

        # Every container still answers, on its own backend.
        for cid in ids(after_ctrs):
            assert exec_out(client, cid, "echo", cid[:8]) == cid[:8]
        assert where(direct, container_id=extra) == ["two"]

        # The kata pod is still a kata pod: its containers get the rules.
        p_kata, _, cfg_kata = pods["kata"]
        bad = container_config("unequal", lab.busybox_ref, SLEEP,
                               resources=linux_resources(250, 500, 512 * MIB))
        e = rpc_error(client.CreateContainer, pod_sandbox_id=p_kata, config=bad,
                      sandbox_config=cfg_kata)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert 'handler "kata": container "unequal" CPU request (250m) must equal its ' \
               'CPU limit (500m)' in e.details()
        good = add_container(client, p_kata, cfg_kata, lab, name="good", handler="kata")
        assert where(direct, container_id=good) == ["one"]
        # ...and the pod on two still takes containers without any rules.
        free = add_container(client, p_blue, cfg_blue, lab, name="free")
        assert where(direct, container_id=free) == ["two"]
        # Images pulled for a pod still go to the pod's backend.
        ref, image_id = probe
        client.pull(ref, sandbox=cfg_blue)
        assert (has_image(direct["one"], ref), has_image(direct["two"], ref)) == ("", image_id)

        # Stop and remove work for each, on its own backend.
        client.StopContainer(container_id=extra, timeout=0)
        client.RemoveContainer(container_id=extra)
        assert where(direct, container_id=extra) == []
        for pod_id, _, _ in pods.values():
            client.remove_pod(pod_id)
            assert where(direct, pod_id=pod_id) == []
