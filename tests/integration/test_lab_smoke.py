"""Smoke test of the lab: one pod's whole life through the `cri` fixture."""

import ipaddress
import os
import re

import grpc
import pytest

from lab.cri import container_config, pb, sandbox_config
from lab.env import wait_for

CRI_LOG_LINE = re.compile(r"^\S+ (stdout|stderr) [FP] (.*)$")


def test_version(cri):
    version = cri.Version(version="v1")
    assert version.runtime_api_version == "v1"
    assert version.runtime_name


def test_status_ready(cri):
    conditions = {c.type: c.status for c in cri.Status().status.conditions}
    assert conditions.get("RuntimeReady") is True
    assert conditions.get("NetworkReady") is True


def test_pull_list_status_image(cri, lab):
    ref = lab.busybox_ref
    image_id = cri.pull(ref)
    assert image_id == lab.images["busybox"].config_digest

    listed = [img for img in cri.ListImages().images if ref in img.repo_tags]
    assert [img.id for img in listed] == [image_id]

    status = cri.ImageStatus(image=pb().ImageSpec(image=ref)).image
    assert status.id == image_id
    assert status.size > 0


def test_pod_lifecycle(cri, lab, log_dir):
    api = pb()
    cri.pull(lab.busybox_ref)
    sandbox = sandbox_config("smoke", log_directory=log_dir)
    pod_id = cri.run_pod(sandbox)

    pod = cri.PodSandboxStatus(pod_sandbox_id=pod_id).status
    assert pod.state == api.SANDBOX_READY
    assert ipaddress.ip_address(pod.network.ip) in lab.net.subnet
    # The sandbox image came from the loopback registry through the lab's
    # plain-HTTP registry config.
    assert any(lab.pause_ref in img.repo_tags for img in cri.ListImages().images)

    config = container_config("main", lab.busybox_ref, ["sh", "-c", "echo hello; sleep 3600"],
                              log_path="main.log")
    cid = cri.start_container(pod_id, sandbox, config)
    assert cri.ContainerStatus(container_id=cid).status.state == api.CONTAINER_RUNNING

    result = cri.ExecSync(container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"],
                          timeout=10)
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)

    log_path = os.path.join(log_dir, "main.log")

    def logged_hello():
        if not os.path.exists(log_path):
            return False
        with open(log_path) as f:
            return any((m := CRI_LOG_LINE.match(line)) and m.group(2) == "hello" for line in f)
    wait_for(logged_hello, 10, "'hello' in the container log")

    cri.StopContainer(container_id=cid, timeout=0)
    assert cri.ContainerStatus(container_id=cid).status.state == api.CONTAINER_EXITED
    cri.RemoveContainer(container_id=cid)
    cri.StopPodSandbox(pod_sandbox_id=pod_id)
    cri.RemovePodSandbox(pod_sandbox_id=pod_id)
    assert pod_id not in [p.id for p in cri.ListPodSandbox().items]


def test_unknown_container_is_not_found(cri):
    with pytest.raises(grpc.RpcError) as err:
        cri.ContainerStatus(container_id="0" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
