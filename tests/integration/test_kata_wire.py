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


# ------------------------------------------------------------------ other ways to read twice

def with_config_bytes(good, extra):
    """RunPodSandbox (kata) whose config is `good` followed by raw `extra` bytes."""
    api = pb()
    config = good.SerializeToString() + extra
    return join(field(number(api.RunPodSandboxRequest, "config"), config),
                api.RunPodSandboxRequest(runtime_handler="kata"))


def entry(key, value):
    return field(1, key) + field(2, value)


def metadata_named(name):
    """The bytes of a config's metadata field, with this name (bytes)."""
    return lambda good: field(1, field(1, name) + field(3, good.metadata.uid.encode()))


AMBIGUOUS = {
    # A field crimux's schema does not know may be one the backend's newer
    # schema does: nothing checked it, so nothing forwards it.
    "unknown-field": (lambda good: varint(999 << 3 | 0) + varint(1),
                      "RunPodSandbox: the request carries field 999 of config, which crimux's "
                      "CRI schema does not know; a handler with a policy forwards only what it "
                      "checked"),
    # Go keeps the last value of a key, protobuf-c every entry.
    "map-key-twice": (lambda good: field(7, entry(b"a", b"1")) + field(7, entry(b"a", b"2")),
                      'RunPodSandbox: config.annotations has the key "a" more than once'),
    # newer Go protobuf refuses it; protobuf-c takes it
    "not-utf8": (metadata_named(b"x\xff"),
                 "RunPodSandbox: config.metadata.name is not valid UTF-8"),
    # protobuf-c's C string would end at the NUL, Go's would not
    "nul-in-string": (metadata_named(b"x\0y"),
                      "RunPodSandbox: config.metadata.name contains a NUL byte"),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS))
def test_ambiguous_input_is_refused(mux, containerd_cri, case):
    extra, message = AMBIGUOUS[case]
    good = pod()
    uid, tail = good.metadata.uid, extra(good)
    if case.startswith(("not-utf8", "nul")):
        good.ClearField("metadata")
    assert refused(mux, RUN_POD, with_config_bytes(good, tail), containerd_cri) == message
    assert [p for p in containerd_cri.ListPodSandbox().items if p.metadata.uid == uid] == []


def test_unknown_enum_value_is_refused(mux, containerd_cri):
    good = pod()
    good.linux.security_context.namespace_options.ipc = 7
    assert refused(mux, RUN_POD, run_request(good).SerializeToString(), containerd_cri) == (
        "RunPodSandbox: config.linux.security_context.namespace_options.ipc is 7, which is not "
        "a NamespaceMode crimux knows")
    assert backend_pods(containerd_cri, good) == []


def test_unpacked_repeated_scalars_reach_the_backend(mux, containerd_cri):
    """Packed or not, every reader takes both forms: accepted, re-encoded."""
    api = pb()
    good = pod()
    # supplemental_groups 5 and 6, unpacked, in config.linux.security_context
    groups = number(api.LinuxSandboxSecurityContext, "supplemental_groups")
    sc = good.linux.security_context.SerializeToString()
    sc += varint(groups << 3) + varint(5) + varint(groups << 3) + varint(6)
    good.linux.ClearField("security_context")
    linux = good.linux.SerializeToString() + field(
        number(api.LinuxPodSandboxConfig, "security_context"), sc)
    good.ClearField("linux")
    data = with_config_bytes(good, field(number(api.PodSandboxConfig, "linux"), linux))
    pod_id = pb().RunPodSandboxResponse.FromString(mux.raw(RUN_POD, data)).pod_sandbox_id
    seen = backend_config(containerd_cri, pod_id)
    assert seen["linux"]["security_context"]["supplemental_groups"] == [5, 6]
    mux.remove_pod(pod_id)


# ------------------------------------------------------------------ containers and updates

@pytest.fixture(scope="module")
def kata_pod(daemon, lab):
    """A running kata pod, busybox pulled for it."""
    with CRI(daemon.endpoint) as client:
        config = pod()
        pod_id = client.run_pod(config, "kata")
        client.pull(lab.busybox_ref, sandbox=config)
        yield pod_id, config
        client.remove_pod(pod_id)


def container(lab, name, resources=None, **kwargs):
    return container_config(name, lab.busybox_ref, ["sleep", "3600"], labels=LABELS,
                            resources=resources or res(250, 250, 256 * MIB), **kwargs)


def create_request(pod_id, config, sandbox):
    return pb().CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                       sandbox_config=sandbox)


def containers_in(one, pod_id):
    return sorted(c.metadata.name for c in one.ListContainers(
        filter=pb().ContainerFilter(pod_sandbox_id=pod_id)).containers)


def test_container_on_the_host_network_is_refused(mux, containerd_cri, lab, kata_pod):
    pod_id, sandbox = kata_pod
    config = container(lab, "hostnet")
    config.linux.security_context.namespace_options.network = pb().NODE
    data = create_request(pod_id, config, sandbox).SerializeToString()
    assert refused(mux, CREATE, data) == (
        'handler "kata": container "hostnet": Kata Containers does not support the host '
        "network namespace (namespace_options.network = NODE); run the pod with another "
        "RuntimeClass")
    assert "hostnet" not in containers_in(containerd_cri, pod_id)


def test_sandbox_config_of_create_container_is_checked(mux, containerd_cri, lab, kata_pod):
    """containerd passes pod annotations from this copy on to the runtime."""
    pod_id, sandbox = kata_pod
    lie = pb().PodSandboxConfig()
    lie.CopyFrom(sandbox)
    lie.annotations["io.katacontainers.config.hypervisor.kernel_params"] = "init=/bin/sh"
    data = create_request(pod_id, container(lab, "lied"), lie).SerializeToString()
    assert refused(mux, CREATE, data) == (
        'handler "kata": CreateContainer\'s sandbox_config: pod annotation '
        '"io.katacontainers.config.hypervisor.kernel_params" is in the runtime-reserved '
        "namespace \"io.katacontainers.\"; the handler's kata_allowed_annotations can allow it")
    assert "lied" not in containers_in(containerd_cri, pod_id)


def test_duplicated_container_resources_are_refused(mux, containerd_cri, lab, kata_pod):
    pod_id, sandbox = kata_pod
    api = pb()
    config = container(lab, "twice")
    evil = api.LinuxContainerConfig(resources=api.LinuxContainerResources(cpu_period=10000))
    config_bytes = field(number(api.ContainerConfig, "linux"), evil.SerializeToString())
    config_bytes += config.SerializeToString()
    data = join(api.CreateContainerRequest(pod_sandbox_id=pod_id, sandbox_config=sandbox),
                field(number(api.CreateContainerRequest, "config"), config_bytes))
    assert refused(mux, CREATE, data) == (
        "CreateContainer: the request sets config.linux more than once; a handler with a "
        "policy accepts each field once")
    assert "twice" not in containers_in(containerd_cri, pod_id)


def cfs_quota(client, cid):
    reply = client.ExecSync(container_id=cid, cmd=["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"])
    return int(reply.stdout.decode())


def test_update_container_resources_keeps_the_rules(mux, containerd_cri, lab, kata_pod):
    pod_id, sandbox = kata_pod
    cid = mux.start_container(pod_id, sandbox, container(lab, "resized"))
    assert cfs_quota(containerd_cri, cid) == 25000

    # request below the limit: refused, the cgroup untouched
    with pytest.raises(grpc.RpcError) as err:
        mux.UpdateContainerResources(container_id=cid, linux=res(250, 500, 256 * MIB))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        f'handler "kata": container "{cid}" CPU request (250m) must equal its CPU limit '
        "(500m) for Kata Containers")
    # a quota that wraps to 1 CPU in 64-bit milli-CPU arithmetic
    wrapped = res(1000, 1000, 256 * MIB)
    wrapped.cpu_quota = 2305843009213793952
    with pytest.raises(grpc.RpcError) as err:
        mux.UpdateContainerResources(container_id=cid, linux=wrapped)
    assert "must equal its CPU limit (23058430092137939m)" in err.value.details()
    # an equal one, given twice: refused, not merged
    api = pb()
    data = join(api.UpdateContainerResourcesRequest(
        linux=api.LinuxContainerResources(cpu_period=10000)),
        api.UpdateContainerResourcesRequest(container_id=cid, linux=res(500, 500, 256 * MIB)))
    assert refused(mux, UPDATE_CONTAINER, data) == (
        "UpdateContainerResources: the request sets linux more than once; a handler with a "
        "policy accepts each field once")
    assert cfs_quota(containerd_cri, cid) == 25000

    mux.UpdateContainerResources(container_id=cid, linux=res(500, 500, 256 * MIB))
    assert cfs_quota(containerd_cri, cid) == 50000
    mux.StopContainer(container_id=cid, timeout=0)
    mux.RemoveContainer(container_id=cid)


# ------------------------------------------------------------------ UpdatePodSandboxResources

FAKE_POLICY = """
[crimux]
default_handler = kata
[handler "kata"]
backend = fake
policy = kata
"""


@pytest.fixture
def fake_daemon(lab, crimuxd_binary):
    """crimuxd before a scripted backend that holds one kata pod: containerd
    1.6 has no UpdatePodSandboxResources."""
    api = pb()
    tmp = tempfile.mkdtemp(prefix="crx-wire-")
    fake = FakeBackend(os.path.join(tmp, "fake.sock"))
    listed = api.ListPodSandboxResponse(items=[api.PodSandbox(
        id="f00d" * 16, runtime_handler="kata", state=api.SANDBOX_READY,
        metadata=api.PodSandboxMetadata(name="p", namespace="default", uid="u1"))])
    fake.on("/runtime.v1.RuntimeService/ListPodSandbox", reply(listed.SerializeToString()))
    fake.on("/runtime.v1.RuntimeService/ListContainers", reply(b""))
    fake.on(UPDATE_POD, reply(b""))
    fake.start()
    d = lab.crimuxd(crimuxd_binary, {"fake": fake.endpoint}, FAKE_POLICY)
    yield d, fake
    stop_checked([d], must_run=True)
    fake.stop()
    os.rmdir(tmp)


def test_update_pod_sandbox_resources_keeps_the_rules(fake_daemon):
    d, fake = fake_daemon
    api = pb()
    pod_id = "f00d" * 16
    with CRI(d.endpoint) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.UpdatePodSandboxResources(pod_sandbox_id=pod_id,
                                             resources=res(2000, 2000, 20 << 30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            'handler "kata": the pod\'s memory (20Gi) does not fit its CPU (2000m): Kata '
            "Containers needs 1Gi to 8Gi of memory per CPU, 2Gi to 16Gi here")
        data = join(api.UpdatePodSandboxResourcesRequest(
            resources=api.LinuxContainerResources(cpu_period=10000)),
            api.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id,
                                                 resources=res(1000, 1000, 2 << 30)))
        assert refused(client, UPDATE_POD, data) == (
            "UpdatePodSandboxResources: the request sets resources more than once; a handler "
            "with a policy accepts each field once")
        assert fake.calls(UPDATE_POD) == []

        # Accepted: the backend gets the checked reading, re-encoded, with the
        # overhead the pod did not declare. Sent here with the fields in
        # reverse order and memory first: not the canonical encoding.
        resources = res(1000, 1000, 2 << 30)
        sent = join(api.UpdatePodSandboxResourcesRequest(resources=resources),
                    api.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id))
        client.raw(UPDATE_POD, sent)
        got = fake.wait_call(UPDATE_POD).request
        want = api.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id, resources=resources,
            overhead=api.LinuxContainerResources(cpu_period=100000, cpu_quota=10000,
                                                 cpu_shares=102,
                                                 memory_limit_in_bytes=100 * MIB))
        assert got != sent
        assert got == want.SerializeToString(deterministic=True)
