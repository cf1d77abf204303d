"""The Docker benchmark's bare CRI server (bench/docker.c, --bare-server),
against the real dockerd: its figure stands for one DELETE behind a CRI
round trip, so it must make that DELETE, and bad input must reach nothing."""
import os
import subprocess
import uuid

import grpc
import pytest
from conftest import BUILDDIR, rpc_error
from lab.cri import CRI
from lab.docker import DockerError
from lab.env import wait_for


@pytest.fixture
def bare(dockerd, tmp_path):
    """A CRI client to `crimux-bench-docker --serve-bare` in front of the lab's dockerd."""
    binary = os.path.join(BUILDDIR, "bench", "crimux-bench-docker")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"the Docker benchmark is not built ({binary} missing)")
    sock = str(tmp_path / "bare.sock")
    server = subprocess.Popen([binary, "--serve-bare", sock, "--docker", dockerd.socket])
    try:
        wait_for(lambda: os.path.exists(sock) or server.poll() is not None, 10,
                 "the bare server to listen")
        assert server.poll() is None, "the bare server exited at start"
        with CRI("unix://" + sock) as client:
            yield client
        assert server.poll() is None, "the bare server died during the test"
    finally:
        server.kill()
        server.wait()


def running_container(dockerd, lab):
    name = "bench-bare-" + uuid.uuid4().hex[:6]
    cid = dockerd.request("POST", "/containers/create?name=" + name,
                          {"Image": lab.busybox_ref, "Cmd": ["sleep", "3600"],
                           "HostConfig": {"NetworkMode": "none"}})["Id"]
    dockerd.request("POST", f"/containers/{cid}/start")
    return cid


def gone(dockerd, cid):
    try:
        dockerd.inspect(cid)
        return False
    except DockerError as e:
        return e.status == 404


def test_bare_server_removals_delete_the_container(bare, dcri, dockerd, lab):
    dcri.pull(lab.busybox_ref)  # into dockerd, through crimux
    first, second = running_container(dockerd, lab), running_container(dockerd, lab)
    try:
        bare.RemoveContainer(container_id=first)
        assert gone(dockerd, first)  # running: the DELETE is forced
        bare.RemovePodSandbox(pod_sandbox_id=second)
        assert gone(dockerd, second)
        bare.RemoveContainer(container_id=first)  # gone already: done, as in crimux
    finally:
        dockerd.remove_container(first)
        dockerd.remove_container(second)


def test_bare_server_refuses_what_it_does_not_serve(bare, dcri, dockerd, lab):
    err = rpc_error(bare.Version)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Version" in err.details()
    dcri.pull(lab.busybox_ref)
    bystander = running_container(dockerd, lab)
    try:
        # An ID that is not a Docker ID never becomes a Docker path.
        for bad in ("", "../../images/" + lab.busybox_ref, bystander + "?force=1",
                    bystander + "/../" + bystander, "x" * 129):
            err = rpc_error(bare.RemoveContainer, container_id=bad)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "not a Docker ID" in err.details()
            err = rpc_error(bare.RemovePodSandbox, pod_sandbox_id=bad)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        # A request that is not protobuf: refused, and the server lives on.
        err = rpc_error(bare.raw, "/runtime.v1.RuntimeService/RemoveContainer", b"\xff\xff")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not parse" in err.details()
        assert dockerd.inspect(bystander)["State"]["Running"]
        assert dockerd.image_exists(lab.busybox_ref)
    finally:
        dockerd.remove_container(bystander)
