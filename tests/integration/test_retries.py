"""A kubelet that times out and retries.

The kubelet names a pod by its metadata (name, namespace, UID, attempt) and
a container by its pod, name and attempt; after a timeout it sends the same
RunPodSandbox or CreateContainer again with the same attempt. On every
handler the retry must get the same pod or container: not a name conflict
(containerd on its own answers "failed to reserve sandbox name ... is
reserved for ..."), not a second copy, and nothing left behind by the call
that timed out. Retries are tried after the first call finished, while it
is still running, and after the first call's client gave up on it.
"""

import concurrent.futures
import time

import grpc
import pytest

from conftest import stop_checked
from lab import mixed
from lab.cri import CRI, pb


@pytest.fixture(scope="module")
def node(lab, dockerd, crimuxd_binary, tmp_path_factory):
    daemon = mixed.crimuxd(lab, dockerd, crimuxd_binary,
                           str(tmp_path_factory.mktemp("docker-state")))
    with CRI(daemon.endpoint, timeout=120) as client:
        for h in mixed.HANDLERS:
            client.PullImage(image=pb().ImageSpec(image=lab.busybox_ref, runtime_handler=h),
                             timeout=120)
    yield daemon
    stop_checked([daemon], must_run=True)


@pytest.fixture
def cri(node):
    with CRI(node.endpoint, timeout=120) as client:
        yield client
        client.remove_all_pods()


def same_meta(items, metadata):
    return [i.id for i in items if i.metadata == metadata]


def both(call1, call2):
    """Runs two calls at once; returns their results (or exceptions)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(call1), pool.submit(call2)]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except grpc.RpcError as e:
                out.append(e)
        return out


def gave_up(call):
    """A call made with a deadline shorter than the work: None when it
    timed out, as meant; its result if this machine was quicker."""
    try:
        return call()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        return None


HANDLERS = pytest.mark.parametrize("handler", mixed.HANDLERS)


@HANDLERS
def test_run_pod_sandbox_retried_after_it_finished(cri, handler):
    cfg = mixed.pod_config(handler)
    first = cri.run_pod(cfg, handler)
    again = cri.run_pod(cfg, handler)
    assert again == first
    assert same_meta(cri.ListPodSandbox().items, cfg.metadata) == [first]


@HANDLERS
def test_run_pod_sandbox_retried_while_in_flight(cri, handler):
    cfg = mixed.pod_config(handler)
    got = both(lambda: cri.run_pod(cfg, handler), lambda: cri.run_pod(cfg, handler))
    assert all(isinstance(g, str) for g in got), got
    assert got[0] == got[1]
    assert same_meta(cri.ListPodSandbox().items, cfg.metadata) == [got[0]]


@HANDLERS
def test_run_pod_sandbox_retried_after_a_timeout(cri, lab, dockerd, handler):
    api = pb()
    direct = CRI(lab.containerd.endpoint)
    before = (mixed.ipam_ips(lab), mixed.containerd_netns(lab),
              mixed.docker_sandboxes(dockerd), mixed.containerd_sandboxes(direct))
    cfg = mixed.pod_config(handler)
    # The kubelet gives up on it...
    first = gave_up(lambda: cri.RunPodSandbox(config=cfg, runtime_handler=handler,
                                              timeout=0.05).pod_sandbox_id)
    pod = cri.run_pod(cfg, handler)  # ...and asks again at once
    assert first in (None, pod)
    assert same_meta(cri.ListPodSandbox().items, cfg.metadata) == [pod]
    assert cri.PodSandboxStatus(pod_sandbox_id=pod).status.state == api.SANDBOX_READY
    time.sleep(1)  # a copy made by the first call late would show now
    assert same_meta(cri.ListPodSandbox().items, cfg.metadata) == [pod]
    cri.remove_pod(pod)
    after = (mixed.ipam_ips(lab), mixed.containerd_netns(lab),
             mixed.docker_sandboxes(dockerd), mixed.containerd_sandboxes(direct))
    direct.close()
    assert after == before


def a_pod(cri, lab, handler):
    cfg = mixed.pod_config(handler)
    return cri.run_pod(cfg, handler), cfg


@HANDLERS
def test_create_container_retried_after_it_finished(cri, lab, handler):
    pod, cfg = a_pod(cri, lab, handler)
    ccfg = mixed.ctr_config(handler, "main", lab.busybox_ref)
    first = cri.CreateContainer(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg).container_id
    again = cri.CreateContainer(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg).container_id
    assert again == first
    assert same_meta(cri.ListContainers().containers, ccfg.metadata) == [first]
    cri.StartContainer(container_id=first)


@HANDLERS
def test_create_container_retried_while_in_flight(cri, lab, handler):
    pod, cfg = a_pod(cri, lab, handler)
    ccfg = mixed.ctr_config(handler, "main", lab.busybox_ref)

    def create():
        return cri.CreateContainer(pod_sandbox_id=pod, config=ccfg,
                                   sandbox_config=cfg).container_id
    got = both(create, create)
    assert all(isinstance(g, str) for g in got), got
    assert got[0] == got[1]
    assert same_meta(cri.ListContainers().containers, ccfg.metadata) == [got[0]]
    cri.StartContainer(container_id=got[0])


@HANDLERS
def test_create_container_retried_after_a_timeout(cri, lab, handler):
    api = pb()
    pod, cfg = a_pod(cri, lab, handler)
    ccfg = mixed.ctr_config(handler, "main", lab.busybox_ref)
    first = gave_up(lambda: cri.CreateContainer(pod_sandbox_id=pod, config=ccfg,
                                                sandbox_config=cfg, timeout=0.02).container_id)
    cid = cri.CreateContainer(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg).container_id
    assert first in (None, cid)
    time.sleep(1)
    assert same_meta(cri.ListContainers().containers, ccfg.metadata) == [cid]
    cri.StartContainer(container_id=cid)
    assert cri.ContainerStatus(container_id=cid).status.state == api.CONTAINER_RUNNING


@HANDLERS
def test_a_new_attempt_is_a_new_pod(cri, handler):
    """What the kubelet does on purpose stays possible: attempt 1 of a pod
    whose attempt 0 exists is a second sandbox."""
    cfg = mixed.pod_config(handler)
    first = cri.run_pod(cfg, handler)
    cfg.metadata.attempt = 1
    second = cri.run_pod(cfg, handler)
    assert second != first


@HANDLERS
def test_retried_across_a_reload(cri, node, handler):
    """The first call runs on the configuration before a SIGHUP, the retry
    comes on the one after it: still the same pod."""
    import os
    import re
    import signal

    from lab.env import wait_for

    def reloads():
        return len(re.findall(r"configuration reloaded", node.log()))
    cfg = mixed.pod_config(handler)
    before = reloads()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(cri.run_pod, cfg, handler)
        time.sleep(0.02)  # on its way
        os.kill(node.pid, signal.SIGHUP)
        wait_for(lambda: reloads() > before, 20, "the reload")
        again = cri.run_pod(cfg, handler)
        assert first.result() == again
    assert same_meta(cri.ListPodSandbox().items, cfg.metadata) == [again]
