"""10,000 pods across two backends (scripted: no real runtime holds that
many here): crimuxd learns who owns what at start-up, merged lists hold
every pod once, and calls reach the owner of the ID they name."""

import os
import random
import shutil
import tempfile

import pytest

from lab.cri import CRI, pb
from lab.fake_backend import FakeBackend, echo, reply
from conftest import stop_checked

RUNTIME = "/runtime.v1.RuntimeService/"
PODS = 5000  # per backend

HANDLERS = """
[handler "runc"]
backend = a
[handler "blue"]
backend = b
runtime_handler = runc
"""


def pod_id(backend, i):
    return f"{backend}{i:063d}"


def container_id(backend, i):
    return f"c{backend}{i:062d}"


@pytest.fixture(scope="module")
def fakes():
    tmp = tempfile.mkdtemp(prefix="crx-scale-", dir="/tmp")
    backends = {}
    for name in ("a", "b"):
        fake = FakeBackend(os.path.join(tmp, name + ".sock"), default=echo()).start()
        pods = pb().ListPodSandboxResponse(items=[
            pb().PodSandbox(id=pod_id(name, i), runtime_handler="runc",
                            metadata=pb().PodSandboxMetadata(name=f"p{i}", uid=f"{name}-{i}"),
                            state=pb().SANDBOX_READY)
            for i in range(PODS)])
        containers = pb().ListContainersResponse(containers=[
            pb().Container(id=container_id(name, i), pod_sandbox_id=pod_id(name, i),
                           metadata=pb().ContainerMetadata(name="app"),
                           state=pb().CONTAINER_RUNNING)
            for i in range(PODS)])
        fake.on(RUNTIME + "ListPodSandbox", reply(pods.SerializeToString()))
        fake.on(RUNTIME + "ListContainers", reply(containers.SerializeToString()))
        fake.on(RUNTIME + "ContainerStatus",
                reply(pb().ContainerStatusResponse().SerializeToString()))
        backends[name] = fake
    yield backends
    for fake in backends.values():
        fake.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(fakes, crimuxd_binary, lab):
    d = lab.crimuxd(crimuxd_binary, {n: f.endpoint for n, f in fakes.items()}, HANDLERS,
                    log_level="info")
    yield d
    stop_checked([d], must_run=True)


def test_ownership_of_every_pod_is_learned_at_start(daemon):
    assert f"found {2 * PODS} pod sandboxes and {2 * PODS} containers" in daemon.log()


def test_merged_lists_hold_every_pod_once(daemon):
    with CRI(daemon.endpoint) as cri:
        pods = cri.ListPodSandbox(timeout=60).items
        containers = cri.ListContainers(timeout=60).containers
    assert len(pods) == 2 * PODS and len({p.id for p in pods}) == 2 * PODS
    assert len(containers) == 2 * PODS and len({c.id for c in containers}) == 2 * PODS
    handlers = {p.id[0]: p.runtime_handler for p in pods}
    assert handlers == {"a": "runc", "b": "blue"}, "b's pods under crimux's handler name"


def test_calls_reach_the_owner_among_ten_thousand(daemon, fakes):
    rng = random.Random(42)
    picks = [(rng.choice("ab"), rng.randrange(PODS)) for _ in range(200)]
    for fake in fakes.values():
        fake.clear()
    with CRI(daemon.endpoint) as cri:
        for backend, i in picks:
            cri.ContainerStatus(container_id=container_id(backend, i))
    for name, fake in fakes.items():
        seen = [pb().ContainerStatusRequest.FromString(c.request).container_id
                for c in fake.calls(RUNTIME + "ContainerStatus")]
        want = [container_id(b, i) for b, i in picks if b == name]
        assert seen == want, f"backend {name} got exactly its own containers, in order"
        assert not fake.calls(RUNTIME + "ListContainers"), "no lookups: all known"
