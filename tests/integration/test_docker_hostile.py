"""Hostile pods and clients against the dockershim, with real dockerd:
what a pod's owner controls (its writable layer, its log path, its labels,
its image's labels, its sysctls) must not crash crimuxd, write outside the
pod's log directory, or change what crimux believes after a restart."""

import os
import uuid

import grpc

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.env import wait_for
from conftest import rpc_error


def alive(daemon):
    return daemon.daemon.running()


def run_pod(cri, lab, log_dir=None, name=None, **kw):
    cri.pull(lab.busybox_ref)
    sb = sandbox_config(name or "hostile-" + uuid.uuid4().hex[:6], log_directory=log_dir, **kw)
    return cri.run_pod(sb), sb


# --- item 4: a deep writable layer ------------------------------------------

DEPTH = 60000  # levels; glibc's nftw needs ~0.4 KiB of stack per level: 8 MiB is ~20000


def test_deep_layer_does_not_crash_stats(docker_crimuxd_factory, lab, log_dir):
    daemon = docker_crimuxd_factory(stats_layer_ttl="0s")
    with CRI(daemon.endpoint) as cri:
        pod, sb = run_pod(cri, lab, log_dir)
        # A chain of 200 directories (a path well under PATH_MAX), moved
        # under a new chain again and again: a tree DEPTH deep, made without
        # ever naming or entering the deep end.
        script = ("p=$(printf 'd/%.0s' $(seq 200)); mkdir -p /top/$p && cd / || exit 1; "
                  f"for i in $(seq {DEPTH // 201}); do "
                  "mkdir -p n/$p && mv top n/$p/top && mv n top || exit 1; done; "
                  "touch /deep-done; exec sleep 1000")
        cid = cri.start_container(pod, sb, container_config(
            "deep", lab.busybox_ref, ["sh", "-c", script]))
        try:
            wait_for(lambda: cri.ExecSync(container_id=cid, cmd=["test", "-e", "/deep-done"],
                                          timeout=10).exit_code == 0, 300, "the deep tree")
            listed = cri.ListContainerStats(
                filter=pb().ContainerStatsFilter(pod_sandbox_id=pod)).stats
            assert alive(daemon), daemon.log()[-3000:]
            assert [s.attributes.id for s in listed] == [cid]
            # Every level is a directory: the budgeted walk counted those
            # it reached, it did not give up at the first.
            assert listed[0].writable_layer.inodes_used.value > 1000
            one = cri.ContainerStats(container_id=cid).stats
            assert one.writable_layer.inodes_used.value > 1000
            assert alive(daemon)
        finally:
            # Docker's own removal runs out of descriptors on such a tree:
            # take it apart 200 levels at a time first.
            undo = ("p=$(printf 'd/%.0s' $(seq 200)); cd /; "
                    "while [ -d top/$p/top ]; do mv top/$p/top t2 && rm -rf top && mv t2 top "
                    "|| exit 1; done; rm -rf top")
            if alive(daemon):
                cri.ExecSync(container_id=cid, cmd=["sh", "-c", undo], timeout=600)
        cri.remove_pod(pod)


# --- item 5: log paths, reserved labels, symbolic links ----------------------

def wait_exited(cri, cid):
    cri.wait_container_state(cid, pb().CONTAINER_EXITED, timeout=30)


def chatty(name, image, **kw):
    return container_config(name, image, ["sh", "-c", "echo written-by-the-pod; sleep 0.3"],
                            **kw)


def test_log_path_must_stay_in_log_directory(dcri, lab, log_dir, tmp_path):
    pod, sb = run_pod(dcri, lab, log_dir)
    outside = tmp_path / "escape.log"
    for log_path, what in [(str(outside), "absolute"),
                           ("../escape.log", ".."),
                           ("sub/../../escape.log", ".."),
                           ("./../escape.log", "..")]:
        err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod, sandbox_config=sb,
                        config=chatty("esc", lab.busybox_ref, log_path=log_path))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (log_path, err.details())
        assert what in err.details() and "log_path" in err.details(), err.details()
    assert not outside.exists()
    # A log path without a log directory has nowhere to be confined to.
    bare = sandbox_config("bare-" + uuid.uuid4().hex[:6])
    bare_pod = dcri.run_pod(bare)
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id=bare_pod, sandbox_config=bare,
                    config=chatty("esc", lab.busybox_ref, log_path="main.log"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "log_directory" in err.details()
    # A relative path with a subdirectory is what the kubelet sends.
    cid = dcri.start_container(pod, sb, chatty("fine", lab.busybox_ref, log_path="fine/0.log"))
    wait_exited(dcri, cid)
    path = os.path.join(log_dir, "fine", "0.log")
    wait_for(lambda: os.path.exists(path) and b"written-by-the-pod" in open(path, "rb").read(),
             10, "the log line")
    assert dcri.ContainerStatus(container_id=cid).status.log_path == path


def test_reserved_labels_refused(dcri, lab, log_dir, tmp_path):
    pod, sb = run_pod(dcri, lab, log_dir)
    outside = tmp_path / "label.log"
    for key, value in [("io.kubernetes.container.logpath", str(outside)),
                       ("io.kubernetes.sandbox.id", pod),
                       ("io.kubernetes.docker.type", "podsandbox"),
                       ("io.crimux.docker.metadata", '{"name":"x"}'),
                       ("annotation.smuggled", "1")]:
        err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod, sandbox_config=sb,
                        config=chatty("lbl", lab.busybox_ref, labels={key: value}))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, key
        assert key in err.details() and "reserved" in err.details()
        bad = sandbox_config("lbl-" + uuid.uuid4().hex[:6], labels={key: value})
        err = rpc_error(dcri.RunPodSandbox, config=bad)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, key
    assert not outside.exists()


def labelled_image(dockerd, base, labels):
    """A local image: base with LABELs (docker commit)."""
    c = dockerd.request("POST", "/containers/create", {"Image": base, "Cmd": ["true"]})
    tag = "t" + uuid.uuid4().hex[:8]
    changes = "\n".join(f"LABEL {k}={v}" for k, v in labels.items())
    import urllib.parse
    q = urllib.parse.urlencode({"container": c["Id"], "repo": "crimux-hostile", "tag": tag,
                                "changes": changes})
    dockerd.request("POST", "/commit?" + q)
    dockerd.remove_container(c["Id"])
    return f"crimux-hostile:{tag}"


def test_image_labels_cannot_choose_log_path(docker_crimuxd_factory, dockerd, lab, log_dir,
                                             tmp_path):
    outside = tmp_path / "from-image.log"
    state = str(tmp_path / "state")
    first = docker_crimuxd_factory(state_dir=state)
    with CRI(first.endpoint) as cri:
        pod, sb = run_pod(cri, lab, log_dir)
        image = labelled_image(dockerd, lab.busybox_ref,
                               {"io.kubernetes.container.logpath": str(outside),
                                "io.crimux.docker.log-directory": str(tmp_path),
                                "io.kubernetes.sandbox.id": "f" * 64})
        # No log path asked for: the image's label must not provide one.
        script = "for i in $(seq 50); do echo n-$i; usleep 50000; done; sleep 1000"
        cid = cri.start_container(pod, sb, container_config("img", image, ["sh", "-c", script]))
        st = cri.ContainerStatus(container_id=cid).status
        assert st.log_path == ""
        listed = cri.ListContainers(filter=pb().ContainerFilter(pod_sandbox_id=pod)).containers
        assert [c.id for c in listed] == [cid]  # still in its own sandbox
        # With a log path: the CRI one, not the image's.
        cid2 = cri.start_container(pod, sb, container_config("img2", image, ["sh", "-c", script],
                                                             log_path="img2.log"))
        assert cri.ContainerStatus(container_id=cid2).status.log_path == \
            os.path.join(log_dir, "img2.log")
    first.kill()
    # Recovery reads the log location from labels crimux set on every
    # container, which the image's could not replace.
    second = docker_crimuxd_factory(state_dir=state)
    with CRI(second.endpoint) as cri:
        cri.wait_ready()
        wait_for(lambda: b"n-50" in open(os.path.join(log_dir, "img2.log"), "rb").read(), 20,
                 "the log followed again after the restart")
        assert not outside.exists()
        cri.remove_pod(pod)
    # The lab's dockerd is shared: an image left here is a child of busybox,
    # and busybox could no longer be removed by later tests.
    dockerd.request("DELETE", "/images/" + image + "?force=1")


def test_symlinks_in_log_directory(dcri, lab, log_dir, tmp_path):
    pod, sb = run_pod(dcri, lab, log_dir)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    # The file itself a link out of the log directory.
    os.symlink(str(victim), os.path.join(log_dir, "link.log"))
    cid = dcri.CreateContainer(pod_sandbox_id=pod, sandbox_config=sb,
                               config=chatty("lnk", lab.busybox_ref,
                                             log_path="link.log")).container_id
    err = rpc_error(dcri.StartContainer, container_id=cid)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "symbolic link" in err.details()
    # A directory on the way a link out of it.
    os.symlink(str(victim_dir), os.path.join(log_dir, "sub"))
    cid = dcri.CreateContainer(pod_sandbox_id=pod, sandbox_config=sb,
                               config=chatty("dir", lab.busybox_ref,
                                             log_path="sub/0.log")).container_id
    err = rpc_error(dcri.StartContainer, container_id=cid)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    # A hard link to a file elsewhere, and a FIFO (an open that would hang).
    os.link(str(victim), os.path.join(log_dir, "hard.log"))
    os.mkfifo(os.path.join(log_dir, "fifo.log"))
    for name in ("hard", "fifo"):
        cid = dcri.CreateContainer(pod_sandbox_id=pod, sandbox_config=sb,
                                   config=chatty(name, lab.busybox_ref,
                                                 log_path=name + ".log")).container_id
        err = rpc_error(dcri.StartContainer, container_id=cid)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (name, err.details())
    assert victim.read_text() == "precious\n"
    assert os.listdir(victim_dir) == []
    # The link swapped in after the start: ReopenContainerLog refuses it too.
    cid = dcri.start_container(pod, sb, container_config(
        "swap", lab.busybox_ref, ["sh", "-c", "while true; do echo tick; usleep 50000; done"],
        log_path="swap.log"))
    swap = os.path.join(log_dir, "swap.log")
    os.rename(swap, swap + ".1")
    os.symlink(str(victim), swap)
    err = rpc_error(dcri.ReopenContainerLog, container_id=cid)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    import time
    time.sleep(0.5)
    assert victim.read_text() == "precious\n"


# --- issue 10 item 5: a torn checkpoint on start -----------------------------

def ipam_ips(net):
    d = os.path.join(net.ipam_dir, net.name)
    return {f for f in os.listdir(d) if f[0].isdigit()} if os.path.isdir(d) else set()


def test_torn_checkpoint_on_start(docker_crimuxd_factory, lab, log_dir, tmp_path):
    import json
    state = str(tmp_path / "state")
    first = docker_crimuxd_factory(state_dir=state)
    with CRI(first.endpoint) as cri:
        pod, sb = run_pod(cri, lab, log_dir, name="torn")
        ip = cri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
        assert ip in ipam_ips(lab.net)
    first.kill()
    cpdir = os.path.join(state, "sandboxes")
    path = os.path.join(cpdir, pod + ".json")
    with open(path, "rb") as f:
        text = f.read()
    with open(path, "wb") as f:  # torn by a power loss half-way
        f.write(text[:len(text) // 2])
    ghost = "0" * 64  # no container left, and garbage for a checkpoint
    with open(os.path.join(cpdir, ghost + ".json"), "w") as f:
        f.write('{"version": 1, "sandbox_id": ')
    with open(os.path.join(cpdir, pod + ".json.tmp-AbCdEf"), "w") as f:
        f.write("{")  # a temporary file a crash left behind

    second = docker_crimuxd_factory(state_dir=state)
    with CRI(second.endpoint) as cri:
        cri.wait_ready()
        # Not trusted: the pod is not ready, its network was torn down (the
        # address is free again), and the problem is reported.
        wait_for(lambda: ip not in ipam_ips(lab.net), 20, "CNI DEL of the torn pod")
        pods = {p.id: p for p in cri.ListPodSandbox().items}
        assert pod in pods and pods[pod].state == pb().SANDBOX_NOTREADY
        assert ghost not in pods
        st = cri.PodSandboxStatus(pod_sandbox_id=pod).status
        assert st.state == pb().SANDBOX_NOTREADY
        info = json.loads(next(v for k, v in cri.Status(verbose=True).info.items()
                               if k == "recovery" or k.endswith("/recovery")))
        reported = {e["sandbox"] for e in info["corruptCheckpoints"]}
        assert reported == {pod, ghost}
        left = sorted(os.listdir(cpdir))
        assert not any(".tmp-" in f for f in left), left
        assert pod + ".json.corrupt" in left and ghost + ".json.corrupt" in left
        # The kubelet's answer to a NOTREADY pod works: stop and remove.
        cri.StopPodSandbox(pod_sandbox_id=pod)
        cri.RemovePodSandbox(pod_sandbox_id=pod)
        assert pod not in {p.id for p in cri.ListPodSandbox().items}


# --- item 8: sysctls -----------------------------------------------------------

def test_sysctls_checked(dcri, lab, log_dir):
    dcri.pull(lab.busybox_ref)
    cases = [({"kernel.core_pattern": "|/tmp/crimux-pwn"}, False, "not namespaced"),
             ({"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/tmp/crimux-pwn"}, False,
              "'+'"),
             ({"net.ipv4.ip_forward": "1\nx"}, False, "control"),
             ({"net.ipv4.ip_unprivileged_port_start": "0"}, True, "host network"),
             ({"Net.IPv4.x": "1"}, False, "not valid")]
    for sysctls, host_net, words in cases:
        sb = sandbox_config("sysctl-" + uuid.uuid4().hex[:6], log_directory=log_dir,
                            host_network=host_net)
        for k, v in sysctls.items():
            sb.linux.sysctls[k] = v
        err = rpc_error(dcri.RunPodSandbox, config=sb)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (sysctls, err.details())
        assert words in err.details(), err.details()
    with open("/proc/sys/kernel/core_pattern") as f:
        assert "crimux-pwn" not in f.read()
    # A namespaced one in a pod of its own network: set, in the pod only.
    sb = sandbox_config("sysctl-ok-" + uuid.uuid4().hex[:6], log_directory=log_dir)
    sb.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "77"
    pod = dcri.run_pod(sb)
    cid = dcri.start_container(pod, sb, container_config("s", lab.busybox_ref,
                                                         ["sleep", "1000"]))
    r = dcri.ExecSync(container_id=cid, cmd=["cat",
                                             "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                      timeout=10)
    assert r.stdout.strip() == b"77"
    dcri.remove_pod(pod)
