"""What reaches a backend is what crimux's Kata policy checked.

Requests are crafted byte by byte here, the way a hostile client of the CRI
socket could: protobuf says a field that occurs twice is merged (Go, hence
containerd, does so), while protobuf-c keeps only the later occurrence's
scalars. crimux must not check one reading and forward bytes that the
backend reads another way. The lab's containerd runs the "kata" handler with
runc (no KVM here): what is tested is what containerd was asked to run.
"""

import json
import os
import tempfile
import uuid

import grpc
import pytest

from conftest import stop_checked
from lab.cri import CRI, container_config, linux_resources, pb, sandbox_config
from lab.fake_backend import FakeBackend, reply

MIB = 1 << 20
RUN = uuid.uuid4().hex[:12]
LABELS = {"crimux-test-kata-wire": RUN}
RUN_POD = "/runtime.v1.RuntimeService/RunPodSandbox"
CREATE = "/runtime.v1.RuntimeService/CreateContainer"
UPDATE_CONTAINER = "/runtime.v1.RuntimeService/UpdateContainerResources"
UPDATE_POD = "/runtime.v1.RuntimeService/UpdatePodSandboxResources"

POLICY = """
[crimux]
default_handler = runc
[handler "runc"]
backend = one
[handler "kata"]
backend = one
policy = kata
"""


def res(cpu_request=None, cpu_limit=None, memory=None, cpu_period=100000):
    return linux_resources(cpu_request, cpu_limit, memory, cpu_period)


GOOD = res(500, 500, 512 * MIB)


def pod(**kwargs):
    """A compliant kata pod. It declares its overhead: crimux has nothing to
    add, so it has no reason of its own to re-encode the request."""
    name = "wire-" + uuid.uuid4().hex[:8]
    kwargs.setdefault("resources", GOOD)
    kwargs.setdefault("overhead", res(100, 100, 100 * MIB))
    return sandbox_config(name, labels=LABELS, **kwargs)


def run_request(config, handler="kata"):
    return pb().RunPodSandboxRequest(config=config, runtime_handler=handler)


def join(*messages):
    """Serialized messages back to back: one message in which every field
    of the later ones occurs again (protobuf's merge)."""
    return b"".join(m if isinstance(m, bytes) else m.SerializeToString() for m in messages)


def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number, data):
    """A length-delimited field: a sub-message's bytes, or a string's."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def number(message_cls, name):
    return message_cls.DESCRIPTOR.fields_by_name[name].number


def host_namespaces_first(good, handler="kata"):
    """RunPodSandbox bytes whose config holds config.linux twice: first with
    network, PID and IPC on the node, then as `good` has it (POD is 0, so the
    second occurrence does not mention them)."""
    api = pb()
    evil = api.PodSandboxConfig()
    ns = evil.linux.security_context.namespace_options
    ns.network = ns.pid = ns.ipc = api.NODE
    config = join(evil, good)
    return join(field(number(api.RunPodSandboxRequest, "config"), config),
                api.RunPodSandboxRequest(runtime_handler=handler))


# ------------------------------------------------------------------ fixtures

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


def refused(client, method, data, one=None):
    """The status details of a refused call. If it went through instead, the
    failure says what the backend made of it (`one`: the backend)."""
    try:
        answer = client.raw(method, data)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        return err.details()
    seen = ""
    if one is not None and method == RUN_POD:
        pod_id = pb().RunPodSandboxResponse.FromString(answer).pod_sandbox_id
        status = one.PodSandboxStatus(pod_sandbox_id=pod_id).status
        seen = (f"; the backend runs pod {pod_id} with namespaces "
                f"{status.linux.namespaces.options} and resources "
                f"{backend_config(one, pod_id)['linux'].get('resources')}")
    pytest.fail(f"{method} went through{seen}")


def backend_pods(one, config):
    return [p for p in one.ListPodSandbox().items if p.metadata.uid == config.metadata.uid]


def backend_config(one, pod_id):
    info = one.PodSandboxStatus(pod_sandbox_id=pod_id, verbose=True).info["info"]
    return json.loads(info)["config"]


# ------------------------------------------------------------------ duplicated fields

def test_the_crafted_bytes_mean_host_namespaces_to_protobuf():
    """The reading a conforming parser (Python's, like Go's) makes of them."""
    good = pod()
    merged = pb().RunPodSandboxRequest.FromString(host_namespaces_first(good))
    ns = merged.config.linux.security_context.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (pb().NODE,) * 3
    assert merged.config.metadata.uid == good.metadata.uid


def test_duplicated_linux_cannot_smuggle_host_namespaces(mux, containerd_cri, lab):
    good = pod(hostname="")  # as the kubelet sends it for the host network
    details = refused(mux, RUN_POD, host_namespaces_first(good), containerd_cri)
    assert details == ("RunPodSandbox: the request sets config.linux more than once; a "
                       "handler with a policy accepts each field once")
    assert backend_pods(containerd_cri, good) == []
    assert f"Uid:{good.metadata.uid}," not in lab.containerd.daemon.log()


def test_duplicated_cpu_period_cannot_raise_the_limit(mux, containerd_cri):
    """cpu_period 10000 in a first occurrence: 50000 of quota is 5 CPUs to
    containerd, 500m to a reader that keeps the later occurrence only."""
    api = pb()
    good = pod()
    good.linux.resources.ClearField("cpu_period")
    assert good.linux.resources.cpu_quota == 50000
    evil = api.LinuxContainerResources(cpu_period=10000)
    # config.linux.resources twice, inside one config.linux
    linux = good.linux.SerializeToString()
    linux = field(number(api.LinuxPodSandboxConfig, "resources"), evil.SerializeToString()) + linux
    good.ClearField("linux")
    config = good.SerializeToString() + field(number(api.PodSandboxConfig, "linux"), linux)
    data = join(field(number(api.RunPodSandboxRequest, "config"), config),
                api.RunPodSandboxRequest(runtime_handler="kata"))
    assert api.RunPodSandboxRequest.FromString(data).config.linux.resources.cpu_period == 10000
    details = refused(mux, RUN_POD, data, containerd_cri)
    assert details == ("RunPodSandbox: the request sets config.linux.resources more than once; "
                       "a handler with a policy accepts each field once")
    assert backend_pods(containerd_cri, good) == []


def test_duplicated_scalar_is_refused(mux, containerd_cri):
    """Even a scalar given twice in one message: a policy handler takes no
    field twice, so there is nothing for two readers to disagree on."""
    api = pb()
    good = pod()
    data = run_request(good).SerializeToString()
    # runtime_handler (field 2) once more, same value.
    data += api.RunPodSandboxRequest(runtime_handler="kata").SerializeToString()
    assert refused(mux, RUN_POD, data) == (
        "RunPodSandbox: the request sets runtime_handler more than once; a handler with a "
        "policy accepts each field once")
    assert backend_pods(containerd_cri, good) == []


def test_runc_keeps_its_pass_through(mux, containerd_cri):
    """Handlers without a policy are not held to it: containerd merges the
    duplicated config.linux itself, as it would without crimux."""
    good = pod(hostname="")
    data = host_namespaces_first(good, handler="runc")
    reply_bytes = mux.raw(RUN_POD, data)
    pod_id = pb().RunPodSandboxResponse.FromString(reply_bytes).pod_sandbox_id
    status = containerd_cri.PodSandboxStatus(pod_sandbox_id=pod_id).status
    assert status.linux.namespaces.options.network == pb().NODE
    mux.remove_pod(pod_id)
