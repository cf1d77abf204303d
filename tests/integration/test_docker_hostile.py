"""Hostile pods and clients against the dockershim, with real dockerd:
what a pod's owner controls (its writable layer, its log path, its labels,
its image's labels, its sysctls) must not crash crimuxd, write outside the
pod's log directory, or change what crimux believes after a restart."""

import json
import os
import uuid

import grpc

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.env import CNI_BIN_DIR, wait_for
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


def cni_with_plugin(lab, tmp_path, script):
    """The lab's CNI configuration with a plugin of ours last in the list
    (first on DEL), whose shell body is `script`: (conf dir, bin dir)."""
    bins, confs = tmp_path / "cni-bin", tmp_path / "cni-conf"
    bins.mkdir()
    confs.mkdir()
    for plugin in os.listdir(CNI_BIN_DIR):
        os.symlink(os.path.join(CNI_BIN_DIR, plugin), bins / plugin)
    (bins / "ours").write_text("#!/bin/sh\n" + script)
    (bins / "ours").chmod(0o755)
    for conf in os.listdir(lab.net.conf_dir):
        with open(os.path.join(lab.net.conf_dir, conf)) as f:
            conflist = json.load(f)
        conflist["plugins"].append({"type": "ours"})
        (confs / conf).write_text(json.dumps(conflist))
    return str(confs), str(bins)


def tear(path):
    """What a power loss half-way through writing leaves."""
    with open(path, "rb") as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(text[:len(text) // 2])


def recovery_report(cri):
    return json.loads(next(v for k, v in cri.Status(verbose=True).info.items()
                           if k == "recovery" or k.endswith("/recovery")))


def test_torn_checkpoint_on_start(docker_crimuxd_factory, lab, log_dir, tmp_path):
    state = str(tmp_path / "state")
    first = docker_crimuxd_factory(state_dir=state)
    with CRI(first.endpoint) as cri:
        pod, sb = run_pod(cri, lab, log_dir, name="torn")
        ip = cri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
        assert ip in ipam_ips(lab.net)
    first.kill()
    cpdir = os.path.join(state, "sandboxes")
    path = os.path.join(cpdir, pod + ".json")
    tear(path)
    ghost = "0" * 64  # no container left, and garbage for a checkpoint
    with open(os.path.join(cpdir, ghost + ".json"), "w") as f:
        f.write('{"version": 1, "sandbox_id": ')
    with open(os.path.join(cpdir, pod + ".json.tmp-AbCdEf"), "w") as f:
        f.write("{")  # a temporary file a crash left behind

    # The pod's DEL takes a while (a plugin of ours that sleeps first): a
    # window in which it must not look ready.
    confs, bins = cni_with_plugin(
        lab, tmp_path, f'[ "$CNI_COMMAND-$CNI_CONTAINERID" = DEL-{pod} ] && sleep 1\nexit 0\n')
    second = docker_crimuxd_factory(state_dir=state, cni_conf_dir=confs, cni_bin_dir=bins)
    with CRI(second.endpoint) as cri:
        # Not trusted: the pod is not ready, its network was torn down (the
        # address is free again), and the problem is reported. Not ready at
        # any moment either, while the recovery runs, lists race it.
        seen = set()
        wait_for(lambda: os.path.exists(path + ".corrupt"), 20, "the torn file kept aside")

        def listed_then_torn_down():
            seen.update(p.state for p in cri.ListPodSandbox().items if p.id == pod)
            return ip not in ipam_ips(lab.net)
        wait_for(listed_then_torn_down, 20, "CNI DEL of the torn pod", interval=0)
        assert seen <= {pb().SANDBOX_NOTREADY}, seen
        pods = {p.id: p for p in cri.ListPodSandbox().items}
        assert pod in pods and pods[pod].state == pb().SANDBOX_NOTREADY
        assert ghost not in pods
        st = cri.PodSandboxStatus(pod_sandbox_id=pod).status
        assert st.state == pb().SANDBOX_NOTREADY
        reported = {e["sandbox"] for e in recovery_report(cri)["corruptCheckpoints"]}
        assert reported == {pod, ghost}
        left = sorted(os.listdir(cpdir))
        assert not any(".tmp-" in f for f in left), left
        assert pod + ".json.corrupt" in left and ghost + ".json.corrupt" in left
        # The kubelet's answer to a NOTREADY pod works: stop and remove.
        cri.StopPodSandbox(pod_sandbox_id=pod)
        cri.RemovePodSandbox(pod_sandbox_id=pod)
        assert pod not in {p.id for p in cri.ListPodSandbox().items}


def test_a_distrusted_pod_stays_not_ready(docker_crimuxd_factory, lab, log_dir, tmp_path):
    """A checkpoint rebuilt from Docker keeps its pod NOTREADY whichever way
    the teardown went, and across another restart: on the host network
    (nothing to tear down), and when DEL fails (the stop runs it again)."""
    state = str(tmp_path / "state")
    first = docker_crimuxd_factory(state_dir=state)
    with CRI(first.endpoint) as cri:
        host, _ = run_pod(cri, lab, log_dir, name="torn-host", host_network=True)
        failing, _ = run_pod(cri, lab, log_dir, name="torn-del")
        ip = cri.PodSandboxStatus(pod_sandbox_id=failing).status.network.ip
    first.kill()
    cpdir = os.path.join(state, "sandboxes")
    for pod in (host, failing):
        tear(os.path.join(cpdir, pod + ".json"))
    refuse, dels = tmp_path / "refuse-del", tmp_path / "dels"
    refuse.touch()
    dels.touch()
    confs, bins = cni_with_plugin(lab, tmp_path, (
        f'[ "$CNI_COMMAND" = DEL ] || exit 0\necho "$CNI_CONTAINERID" >> {dels}\n'
        f'[ -e {refuse} ] || exit 0\n'
        'echo \'{"cniVersion":"1.0.0","code":11,"msg":"DEL refused"}\'; exit 1\n'))
    for restart in ("the one that finds them torn", "the next"):
        daemon = docker_crimuxd_factory(state_dir=state, cni_conf_dir=confs, cni_bin_dir=bins)
        with CRI(daemon.endpoint) as cri:
            states = {p.id: p.state for p in cri.ListPodSandbox().items}
            assert states == {host: pb().SANDBOX_NOTREADY,
                              failing: pb().SANDBOX_NOTREADY}, (restart, states)
            for pod in (host, failing):
                st = cri.PodSandboxStatus(pod_sandbox_id=pod).status
                assert st.state == pb().SANDBOX_NOTREADY, restart
            reported = recovery_report(cri)["corruptCheckpoints"]
            if restart.endswith("torn"):
                assert {e["sandbox"] for e in reported} == {host, failing}
                assert any(e["sandbox"] == failing and "DEL refused" in e["error"]
                           for e in reported), reported
            else:
                assert reported == []
            assert dels.read_text().split() == [failing], restart
        daemon.kill()
    refuse.unlink()
    daemon = docker_crimuxd_factory(state_dir=state, cni_conf_dir=confs, cni_bin_dir=bins)
    with CRI(daemon.endpoint) as cri:
        for pod in (host, failing):
            cri.StopPodSandbox(pod_sandbox_id=pod)
        assert dels.read_text().split() == [failing, failing], "the stop runs DEL again"
        assert ip not in ipam_ips(lab.net)
        for pod in (host, failing):
            cri.RemovePodSandbox(pod_sandbox_id=pod)
        assert not cri.ListPodSandbox().items


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
