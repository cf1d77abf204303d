"""Every way to a backend passes the Kata rules, not just the obvious one.

An attacker's review of the paths around the policy: the same call under
another gRPC service name, the backend's own API on the same socket, keys
the rules compare spelled another way. Real containerd; its "kata" handler
runs runc here (no KVM): what is tested is what containerd was asked to run.
"""

import uuid

import grpc
import pytest

from conftest import stop_checked
from lab.cri import CRI, linux_resources, pb, sandbox_config

MIB = 1 << 20
RUN = uuid.uuid4().hex[:12]
LABELS = {"crimux-test-policy-paths": RUN}

POLICY = """
[crimux]
default_handler = runc
[handler "runc"]
backend = one
[handler "kata"]
backend = one
policy = kata
"""


def res(cpu, memory):
    return linux_resources(cpu, cpu, memory, 100000)


def kata_pod(**kwargs):
    name = "paths-" + uuid.uuid4().hex[:8]
    kwargs.setdefault("resources", res(500, 512 * MIB))
    kwargs.setdefault("overhead", res(100, 100 * MIB))
    return sandbox_config(name, labels=LABELS, **kwargs)


def host_network_pod():
    config = kata_pod(hostname="")
    ns = config.linux.security_context.namespace_options
    ns.network = ns.pid = ns.ipc = pb().NODE
    return config


@pytest.fixture(scope="module")
def daemon(lab, crimuxd_binary, containerd_cri):
    d = lab.crimuxd(crimuxd_binary, {"one": lab.containerd.endpoint}, POLICY)
    yield d
    for item in containerd_cri.ListPodSandbox(
            filter=pb().PodSandboxFilter(label_selector=LABELS)).items:
        containerd_cri.remove_pod(item.id)
    stop_checked([d], must_run=True)


@pytest.fixture
def mux(daemon):
    with CRI(daemon.endpoint) as client:
        yield client


def backend_pods(one, config):
    return [p for p in one.ListPodSandbox().items if p.metadata.uid == config.metadata.uid]


def status_of(client, method, data):
    try:
        client.raw(method, data)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


# ------------------------------------------------------------------ other services

def test_the_host_network_pod_is_refused_on_v1(mux, containerd_cri):
    """The baseline the other paths must match."""
    config = host_network_pod()
    data = pb().RunPodSandboxRequest(config=config, runtime_handler="kata").SerializeToString()
    code, details = status_of(mux, "/runtime.v1.RuntimeService/RunPodSandbox", data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert backend_pods(containerd_cri, config) == []


def test_v1alpha2_cannot_run_a_kata_pod_on_the_host_network(mux, containerd_cri):
    """containerd 1.6 also serves CRI v1alpha2, whose RunPodSandboxRequest is
    v1's byte for byte. A method crimux does not know went to the default
    backend unchecked: a kata pod on the host network."""
    config = host_network_pod()
    data = pb().RunPodSandboxRequest(config=config, runtime_handler="kata").SerializeToString()
    code, details = status_of(mux, "/runtime.v1alpha2.RuntimeService/RunPodSandbox", data)
    pods = backend_pods(containerd_cri, config)
    for p in pods:
        containerd_cri.remove_pod(p.id)
    assert pods == [], "containerd ran the pod crimux's rules refuse"
    assert code == grpc.StatusCode.UNIMPLEMENTED, details
    assert details == ("/runtime.v1alpha2.RuntimeService/RunPodSandbox is not a method of "
                       "CRI v1 (runtime.v1.RuntimeService, runtime.v1.ImageService); crimux "
                       "relays nothing else")


@pytest.mark.parametrize("method", [
    "/containerd.services.version.v1.Version/Version",
    "/containerd.services.namespaces.v1.Namespaces/List",
    "/grpc.health.v1.Health/Check",
    "/runtime.v1alpha2.RuntimeService/Version",
    "/runtime.v1.RuntimeService",
    "/runtime.v1.RuntimeServiceX/Version",
    "runtime.v1.RuntimeService/Version",
])
def test_the_backends_other_apis_are_not_relayed(mux, method):
    """containerd's CRI endpoint is its whole API (containers, tasks,
    content: any OCI spec at all); crimux's socket offers CRI v1 only."""
    code, details = status_of(mux, method, b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED, details
    assert "crimux relays nothing else" in details


def test_an_unknown_v1_method_still_reaches_the_default_backend(mux):
    """The pass-through stays for CRI v1 itself: a method newer than
    crimux's schema is the default backend's to answer (here containerd 1.6
    does not know it either)."""
    code, details = status_of(mux, "/runtime.v1.RuntimeService/NoSuchMethodYet", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED, details
    assert "crimux relays nothing else" not in details


# ------------------------------------------------------------------ a pod crimux could not list

def test_container_of_an_unlisted_pod_does_not_escape_its_policy(lab, crimuxd_binary, tmp_path):
    """A backend that lists its containers but not its pods (busy at
    crimuxd's start, say): a container was learned without its pod's
    handler, and UpdateContainerResources on a kata container went through
    unchecked. A scripted backend, since containerd cannot be made to fail
    one list and answer the other on demand."""
    from lab.fake_backend import FakeBackend, abort, reply
    api = pb()
    service = "/runtime.v1.RuntimeService/"
    pod_id, container_id = "a" * 64, "b" * 64
    fake = FakeBackend(str(tmp_path / "fake.sock")).start()
    fake.default = reply(b"")
    fake.on(service + "ListPodSandbox", abort(grpc.StatusCode.UNAVAILABLE, "busy"))
    fake.on(service + "ListContainers", reply(api.ListContainersResponse(containers=[
        api.Container(id=container_id, pod_sandbox_id=pod_id,
                      metadata=api.ContainerMetadata(name="c"))]).SerializeToString()))
    d = lab.crimuxd(crimuxd_binary, {"one": "unix://" + str(tmp_path / "fake.sock")}, POLICY)
    try:
        with CRI(d.endpoint) as client:
            request = api.UpdateContainerResourcesRequest(
                container_id=container_id, linux=linux_resources(250, 2000, 256 * MIB, 100000))
            code, details = status_of(client, service + "UpdateContainerResources",
                                      request.SerializeToString())
        assert fake.calls(service + "UpdateContainerResources") == [], (
            "the backend got an update no policy checked")
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "cannot tell which RuntimeClass handler runs the pod" in details
    finally:
        stop_checked([d], must_run=True)
        fake.stop()
