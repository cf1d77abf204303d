"""Kata admission rules, through crimuxd, with the lab's real containerd.

crimuxd has two handlers on one backend: "runc" (no policy) and "kata"
(policy kata).  There is no KVM here, so the lab's containerd runs its
"kata" handler with the runc shim: what is tested is that crimux refuses
what Kata cannot run, before the backend sees it, with a message that names
the handler, the rule and the numbers; and that it lets everything else
through, adding the pod overhead when the pod declares none.
"""

import json
import uuid

import grpc
import pytest

from lab.cri import CRI, container_config, linux_resources, pb, sandbox_config
from conftest import stop_checked

MIB = 1 << 20
GIB = 1 << 30
RUN = uuid.uuid4().hex[:12]
LABELS = {"crimux-test-kata": RUN}
SLEEP = ["sleep", "3600"]

# An exact key, and a prefix (ending in "*"), that kata pods may set all the same.
ALLOWED = "io.katacontainers.config.hypervisor.default_vcpus, io.kubernetes.cri.allowed/*"
POLICY = f"""
[crimux]
default_handler = runc
[handler "runc"]
backend = one
# The lab's containerd runs "kata" with the runc shim: there is no KVM here.
[handler "kata"]
backend = one
policy = kata
kata_allowed_annotations = {ALLOWED}
"""

# What crimux adds when a kata pod declares no overhead (0.1 CPU, 100 MiB),
# as containerd records it in the sandbox's config.
DEFAULT_OVERHEAD = {"cpu_period": 100000, "cpu_quota": 10000, "cpu_shares": 102,
                    "memory_limit_in_bytes": 100 * MIB}


def res(cpu_request=None, cpu_limit=None, memory=None):
    """LinuxContainerResources as the kubelet fills them (milli-CPU, bytes)."""
    return linux_resources(cpu_request, cpu_limit, memory)


GOOD = dict(cpu_request=500, cpu_limit=500, memory=512 * MIB)


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


@pytest.fixture
def one(containerd_cri):
    """The backend, directly."""
    return containerd_cri


# ------------------------------------------------------------------ helpers

def pod(resources=None, overhead=None, annotations=None, host_network=False, host_pid=False,
        host_ipc=False):
    """A PodSandboxConfig with a name and UID of its own."""
    name = "kata-" + uuid.uuid4().hex[:8]
    config = sandbox_config(name, labels=LABELS, annotations=annotations,
                            host_network=host_network, resources=resources,
                            overhead=overhead,
                            hostname="" if host_network else name)  # as the kubelet does
    ns = config.linux.security_context.namespace_options
    if host_pid:
        ns.pid = pb().NODE
    if host_ipc:
        ns.ipc = pb().NODE
    return config


def backend_config(one, pod_id):
    """The sandbox config as containerd received it (its verbose status)."""
    info = one.PodSandboxStatus(pod_sandbox_id=pod_id, verbose=True).info["info"]
    return json.loads(info)["config"]


def backend_saw(lab, config):
    """True if containerd logged a RunPodSandbox for this pod's UID."""
    return f"Uid:{config.metadata.uid}," in lab.containerd.daemon.log()


def refused(client, config, handler="kata"):
    with pytest.raises(grpc.RpcError) as err:
        client.RunPodSandbox(config=config, runtime_handler=handler)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return err.value.details()


def accepted(client, one, config, handler="kata"):
    """Runs the pod; returns (pod_id, the backend's record of its config)."""
    pod_id = client.run_pod(config, handler)
    status = one.PodSandboxStatus(pod_sandbox_id=pod_id).status
    assert (status.metadata.uid, status.runtime_handler) == (config.metadata.uid, handler)
    return pod_id, backend_config(one, pod_id)


def as_json(resources):
    """LinuxContainerResources as containerd's verbose status shows them."""
    return {k: v for k, v in (("cpu_period", resources.cpu_period),
                              ("cpu_quota", resources.cpu_quota),
                              ("cpu_shares", resources.cpu_shares),
                              ("memory_limit_in_bytes", resources.memory_limit_in_bytes))
            if v}


# ------------------------------------------------------------------ pods Kata refuses

K = 'handler "kata": '
HOST_NS = (K + "Kata Containers does not support the host {} namespace "
           "(namespace_options.{} = NODE); run the pod with another RuntimeClass")
TOO_SMALL = K + ("the pod ({} CPU, {} memory) is smaller than the Kata Containers minimum "
                 "of 250m CPU and 256Mi memory")
RATIO = K + ("the pod's memory ({}) does not fit its CPU ({}): Kata Containers needs 1Gi "
             "to 8Gi of memory per CPU, {} to {} here")
OVERHEAD = K + ("the pod overhead ({} CPU, {} memory) is below the minimum for Kata "
                "Containers (100m CPU, 100Mi memory); set the RuntimeClass overhead to at "
                "least that")
RESERVED = K + ('pod annotation "{}" is in the runtime-reserved namespace "{}"; the '
                "handler's kata_allowed_annotations can allow it")

BAD_PODS = {
    "host-network": (dict(resources=res(**GOOD), host_network=True),
                     HOST_NS.format("network", "network")),
    "host-pid": (dict(resources=res(**GOOD), host_pid=True), HOST_NS.format("PID", "pid")),
    "host-ipc": (dict(resources=res(**GOOD), host_ipc=True), HOST_NS.format("IPC", "ipc")),
    "cpu-request-below-limit": (
        dict(resources=res(250, 500, 512 * MIB)),
        K + "the pod CPU request (250m) must equal its CPU limit (500m) for Kata Containers"),
    "no-cpu-limit": (
        dict(resources=res(500, None, 512 * MIB)),
        K + "the pod has no CPU limit; Kata Containers needs the CPU limit set and equal to "
        "the CPU request (500m)"),
    "no-memory-limit": (
        dict(resources=res(500, 500, None)),
        K + "the pod has no memory limit; Kata Containers needs the memory limit set and "
        "equal to the memory request"),
    "no-resources": (
        dict(),
        K + "the pod's resources are missing (PodSandboxConfig.linux.resources); Kata "
        "Containers needs CPU and memory limits equal to the requests"),
    "below-min-cpu": (dict(resources=res(200, 200, 256 * MIB)),
                      TOO_SMALL.format("200m", "256Mi")),
    "below-min-memory": (dict(resources=res(250, 250, 255 * MIB)),
                         TOO_SMALL.format("250m", "255Mi")),
    "memory-below-1-to-1": (dict(resources=res(500, 500, 511 * MIB)),
                            RATIO.format("511Mi", "500m", "512Mi", "4Gi")),
    "memory-above-1-to-8": (dict(resources=res(500, 500, 4 * GIB + MIB)),
                            RATIO.format("4097Mi", "500m", "512Mi", "4Gi")),
    "overhead-cpu-too-low": (dict(resources=res(**GOOD), overhead=res(50, 50, 100 * MIB)),
                             OVERHEAD.format("50m", "100Mi")),
    # The older edition's 50 MiB is not enough any more.
    "overhead-memory-50mi": (dict(resources=res(**GOOD), overhead=res(100, 100, 50 * MIB)),
                             OVERHEAD.format("100m", "50Mi")),
    "katacontainers-annotation": (
        dict(resources=res(**GOOD),
             annotations={"io.katacontainers.config.hypervisor.kernel_params": "quiet"}),
        RESERVED.format("io.katacontainers.config.hypervisor.kernel_params",
                        "io.katacontainers.")),
    "cri-annotation": (
        dict(resources=res(**GOOD), annotations={"io.kubernetes.cri.container-type": "x"}),
        RESERVED.format("io.kubernetes.cri.container-type", "io.kubernetes.cri.")),
}


@pytest.mark.parametrize("case", list(BAD_PODS))
def test_kata_refuses(mux, one, lab, case):
    kwargs, message = BAD_PODS[case]
    config = pod(**kwargs)
    assert refused(mux, config) == message
    # Refused before dispatch: containerd never heard of the pod.
    assert not backend_saw(lab, config)
    assert [p for p in one.ListPodSandbox().items
            if p.metadata.uid == config.metadata.uid] == []


@pytest.mark.parametrize("case", list(BAD_PODS))
def test_runc_accepts_what_kata_refuses(mux, one, lab, case):
    """Common runtimes get none of the Kata checks (nor an overhead)."""
    kwargs, _ = BAD_PODS[case]
    config = pod(**kwargs)
    pod_id, seen = accepted(mux, one, config, handler="runc")
    assert backend_saw(lab, config)
    assert seen["linux"].get("overhead", {}) == as_json(config.linux.overhead)
    mux.remove_pod(pod_id)


# ------------------------------------------------------------------ pods Kata accepts

@pytest.mark.parametrize("cpu, memory", [(500, 512 * MIB), (500, 4 * GIB), (250, 256 * MIB),
                                         (2000, 2 * GIB)],
                         ids=["0.5cpu-512Mi", "0.5cpu-4Gi", "minimum", "2cpu-2Gi"])
def test_kata_accepts_sizes_within_the_rules(mux, one, cpu, memory):
    config = pod(resources=res(cpu, cpu, memory))
    pod_id, seen = accepted(mux, one, config)
    assert seen["linux"]["resources"] == as_json(config.linux.resources)
    mux.remove_pod(pod_id)


def test_kata_adds_the_overhead_when_none_is_declared(mux, one):
    config = pod(resources=res(**GOOD))
    assert not config.linux.HasField("overhead")
    pod_id, seen = accepted(mux, one, config)
    assert seen["linux"]["overhead"] == DEFAULT_OVERHEAD
    assert seen["linux"]["resources"] == as_json(config.linux.resources)
    mux.remove_pod(pod_id)


@pytest.mark.parametrize("cpu, memory", [(100, 100 * MIB), (250, 160 * MIB)],
                         ids=["minimum", "more"])
def test_kata_keeps_a_sufficient_declared_overhead(mux, one, cpu, memory):
    config = pod(resources=res(**GOOD), overhead=res(cpu, cpu, memory))
    pod_id, seen = accepted(mux, one, config)
    assert seen["linux"]["overhead"] == as_json(config.linux.overhead)
    mux.remove_pod(pod_id)


@pytest.mark.parametrize("key", ["io.katacontainers.config.hypervisor.default_vcpus",
                                 "io.kubernetes.cri.allowed/anything"])
def test_kata_accepts_allowed_reserved_annotations(mux, one, key):
    config = pod(resources=res(**GOOD), annotations={key: "1"})
    pod_id, _ = accepted(mux, one, config)
    assert one.PodSandboxStatus(pod_sandbox_id=pod_id).status.annotations[key] == "1"
    mux.remove_pod(pod_id)


def test_kata_refuses_a_near_miss_of_an_allowed_annotation(mux, lab):
    key = "io.katacontainers.config.hypervisor.default_vcpus_max"
    config = pod(resources=res(**GOOD), annotations={key: "8"})
    assert refused(mux, config) == RESERVED.format(key, "io.katacontainers.")
    assert not backend_saw(lab, config)


# ------------------------------------------------------------------ containers in a kata pod

@pytest.fixture(scope="module")
def pods(daemon, lab):
    """A running kata pod and a running runc pod, busybox pulled for each."""
    made = {}
    with CRI(daemon.endpoint) as client:
        for handler in ("kata", "runc"):
            config = pod(resources=res(**GOOD))
            made[handler] = (client.run_pod(config, handler), config)
            client.pull(lab.busybox_ref, sandbox=config)
        yield made
        for pod_id, _ in made.values():
            client.remove_pod(pod_id)


CONTAINER = K + 'container "{}" '
BAD_CONTAINERS = {
    "unequal": (dict(resources=res(250, 500, 256 * MIB)),
                CONTAINER + "CPU request (250m) must equal its CPU limit (500m) for Kata "
                "Containers"),
    "no-cpu-limit": (dict(resources=res(250, None, 256 * MIB)),
                     CONTAINER + "has no CPU limit; Kata Containers needs the CPU limit set "
                     "and equal to the CPU request (250m)"),
    "no-memory-limit": (dict(resources=res(250, 250, None)),
                        CONTAINER + "has no memory limit; Kata Containers needs the memory "
                        "limit set and equal to the memory request"),
    "no-resources": (dict(), CONTAINER + "has no resources; Kata Containers needs CPU and "
                     "memory limits equal to the requests"),
    "reserved-annotation": (
        dict(resources=res(250, 250, 256 * MIB),
             annotations={"io.katacontainers.container.resource.cpu": "4"}),
        CONTAINER + 'annotation "io.katacontainers.container.resource.cpu" is in the '
        'runtime-reserved namespace "io.katacontainers."; the handler\'s '
        "kata_allowed_annotations can allow it"),
}


def container(lab, name, **kwargs):
    return container_config(name, lab.busybox_ref, SLEEP, labels=LABELS, **kwargs)


def containers_in(one, pod_id):
    return sorted(c.metadata.name for c in one.ListContainers(
        filter=pb().ContainerFilter(pod_sandbox_id=pod_id)).containers)


@pytest.mark.parametrize("case", list(BAD_CONTAINERS))
def test_kata_refuses_container(mux, one, lab, pods, case):
    kwargs, message = BAD_CONTAINERS[case]
    pod_id, config = pods["kata"]
    name = "bad-" + case
    with pytest.raises(grpc.RpcError) as err:
        mux.CreateContainer(pod_sandbox_id=pod_id, config=container(lab, name, **kwargs),
                            sandbox_config=config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message.format(name)
    assert name not in containers_in(one, pod_id)


@pytest.mark.parametrize("case", list(BAD_CONTAINERS))
def test_runc_pod_accepts_container_kata_refuses(mux, one, lab, pods, case):
    kwargs, _ = BAD_CONTAINERS[case]
    pod_id, config = pods["runc"]
    name = "free-" + case
    cid = mux.CreateContainer(pod_sandbox_id=pod_id, config=container(lab, name, **kwargs),
                              sandbox_config=config).container_id
    assert name in containers_in(one, pod_id)
    mux.RemoveContainer(container_id=cid)


def test_kata_pod_runs_a_container_within_the_rules(mux, one, lab, pods):
    pod_id, config = pods["kata"]
    cid = mux.start_container(pod_id, config,
                              container(lab, "good", resources=res(250, 250, 256 * MIB)))
    assert one.ContainerStatus(container_id=cid).status.state == pb().CONTAINER_RUNNING
    reply = mux.ExecSync(container_id=cid, cmd=["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"])
    assert reply.stdout.decode().strip() == "25000"
    mux.StopContainer(container_id=cid, timeout=0)
    mux.RemoveContainer(container_id=cid)


def test_kata_accepts_a_tiny_guaranteed_container(mux, one, lab, pods):
    """5m request == 5m limit: the kubelet sends cpu_shares 5 and cpu_quota
    1000 (its minimum quota), which is still request == limit."""
    pod_id, config = pods["kata"]
    tiny = res(5, 5, 64 * MIB)
    assert (tiny.cpu_shares, tiny.cpu_quota) == (5, 500)  # the helper does not clamp
    tiny.cpu_quota = 1000  # the kubelet's MilliCPUToQuota does
    cid = mux.CreateContainer(pod_sandbox_id=pod_id, config=container(lab, "tiny",
                                                                      resources=tiny),
                              sandbox_config=config).container_id
    mux.RemoveContainer(container_id=cid)


# ------------------------------------------------------------------ configured thresholds

STRICT = """
[crimux]
default_handler = runc
[handler "runc"]
backend = one
[handler "kata"]
backend = one
policy = kata
kata_min_cpu = 1
kata_min_memory = 1Gi
kata_min_memory_per_cpu = 1Gi
kata_max_memory_per_cpu = 2Gi
kata_overhead_cpu = 250m
kata_overhead_memory = 200Mi
kata_reserved_annotations = example.com/
"""


def test_configured_thresholds_take_effect(crimuxd_factory, lab, one):
    d = crimuxd_factory(backends={"one": lab.containerd.endpoint}, extra_config=STRICT)
    with CRI(d.endpoint) as client:
        # What the defaults accept is now too small.
        assert refused(client, pod(resources=res(**GOOD))) == K + (
            "the pod (500m CPU, 512Mi memory) is smaller than the Kata Containers minimum "
            "of 1000m CPU and 1Gi memory")
        assert refused(client, pod(resources=res(1000, 1000, 3 * GIB))) == K + (
            "the pod's memory (3Gi) does not fit its CPU (1000m): Kata Containers needs 1Gi "
            "to 2Gi of memory per CPU, 1Gi to 2Gi here")
        assert refused(client, pod(resources=res(1000, 1000, GIB),
                                   overhead=res(100, 100, 100 * MIB))) == K + (
            "the pod overhead (100m CPU, 100Mi memory) is below the minimum for Kata "
            "Containers (250m CPU, 200Mi memory); set the RuntimeClass overhead to at least "
            "that")
        # The reserved namespaces are replaced, not added to.
        assert refused(client, pod(resources=res(1000, 1000, GIB),
                                   annotations={"example.com/x": "1"})) == K + (
            'pod annotation "example.com/x" is in the runtime-reserved namespace '
            "\"example.com/\"; the handler's kata_allowed_annotations can allow it")
        config = pod(resources=res(1000, 1000, 2 * GIB),
                     annotations={"io.katacontainers.config.hypervisor.default_vcpus": "1"})
        pod_id, seen = accepted(client, one, config)
        # The configured overhead is the one added.
        assert seen["linux"]["overhead"] == {"cpu_period": 100000, "cpu_quota": 25000,
                                             "cpu_shares": 256,
                                             "memory_limit_in_bytes": 200 * MIB}
        client.remove_pod(pod_id)
