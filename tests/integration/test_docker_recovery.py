"""crimuxd is SIGKILLed while Docker pods run; a new crimuxd on the same
state directory takes over: pods, containers, logs (no line lost), exec,
stats, port mappings and network teardown all work, from Docker's labels
and crimux's checkpoint and log-position files."""

import os
import subprocess
import time
import urllib.request

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.docker import read_cri_log
from lab.env import free_port, wait_for


def numbers(path, prefix="n-"):
    out = []
    for _, _, tag, text in read_cri_log(path):
        if tag == "F" and text.startswith(prefix):
            out.append(int(text[len(prefix):]))
    return out


def get(url):
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def ipam_ips(net):
    d = os.path.join(net.ipam_dir, net.name)
    return set(os.listdir(d)) if os.path.isdir(d) else set()


def test_sigkill_and_take_over(docker_crimuxd_factory, lab, log_dir, tmp_path):
    api = pb()
    state = str(tmp_path / "state")
    first = docker_crimuxd_factory(state_dir=state)
    port = free_port()
    with CRI(first.endpoint) as cri:
        cri.pull(lab.busybox_ref)
        sb = sandbox_config("survivor", log_directory=log_dir, port_mappings=[(8080, port)])
        pod = cri.run_pod(sb)
        counter = "i=0; while true; do i=$((i+1)); echo n-$i; usleep 20000; done"
        logger = cri.start_container(pod, sb, container_config(
            "logger", lab.busybox_ref, ["sh", "-c", counter], log_path="logger.log"))
        web = cri.start_container(pod, sb, container_config(
            "web", lab.busybox_ref, ["sh", "-c", "mkdir /w; echo up > /w/index.html; "
                                                  "exec httpd -f -p 8080 -h /w"]))
        # Created, not started: where it logs is in its labels alone.
        late = cri.CreateContainer(pod_sandbox_id=pod, sandbox_config=sb, config=container_config(
            "late", lab.busybox_ref, ["sh", "-c", "echo n-1; echo n-2; sleep 1000"],
            log_path="late/0.log")).container_id
        ip = cri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
        log = os.path.join(log_dir, "logger.log")
        wait_for(lambda: len(numbers(log)) > 20, 10, "the first lines")
        assert wait_for(lambda: get(f"http://127.0.0.1:{port}/"), 10, "the port") == "up\n"

    first.kill()  # SIGKILL: no goodbye, no final log copy
    seen_at_kill = len(numbers(log))
    time.sleep(1.5)  # the container keeps writing meanwhile
    assert len(numbers(log)) == seen_at_kill

    second = docker_crimuxd_factory(state_dir=state)
    # The logs go on by themselves, before any call reaches the backend
    # (the readiness probe's Version is crimux's own).
    wait_for(lambda: len(numbers(log)) > seen_at_kill + 10, 10, "lines after the restart")
    with CRI(second.endpoint) as cri:
        pods = {p.id: p for p in cri.ListPodSandbox().items}
        assert pods[pod].state == api.SANDBOX_READY and pods[pod].metadata == sb.metadata
        st = cri.PodSandboxStatus(pod_sandbox_id=pod).status
        assert st.network.ip == ip
        ids = {c.id: c.state for c in cri.ListContainers().containers}
        assert ids[logger] == ids[web] == api.CONTAINER_RUNNING
        assert cri.ExecSync(container_id=logger, cmd=["echo", "hi"], timeout=5).stdout == b"hi\n"
        assert cri.ContainerStats(container_id=logger).stats.cpu.usage_core_nano_seconds.value > 0
        assert get(f"http://127.0.0.1:{port}/") == "up\n"
        late_log = os.path.join(log_dir, "late", "0.log")
        assert cri.ContainerStatus(container_id=late).status.log_path == late_log
        cri.StartContainer(container_id=late)
        wait_for(lambda: os.path.exists(late_log) and numbers(late_log) == [1, 2], 10,
                 "the lines of a container created before the kill")

        # The log goes on where it stopped: nothing lost.
        wait_for(lambda: len(numbers(log)) > seen_at_kill + 100, 10, "lines after the restart")
        os.rename(log, log + ".1")
        cri.ReopenContainerLog(container_id=logger)
        wait_for(lambda: len(numbers(log)) > 10, 10, "lines in the reopened file")
        cri.StopContainer(container_id=logger, timeout=0)
        got = numbers(log + ".1") + numbers(log)
        assert sorted(set(got)) == list(range(1, max(got) + 1))
        assert len(got) - len(set(got)) < 50  # at most a batch repeated

        cri.StopPodSandbox(pod_sandbox_id=pod)
        assert ip not in ipam_ips(lab.net)  # CNI DEL from the checkpoint
        assert get(f"http://127.0.0.1:{port}/") is None
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                               text=True).stdout
        assert f"--dport {port}" not in rules  # portmap's rules went with DEL
        cri.RemovePodSandbox(pod_sandbox_id=pod)
        assert pod not in [p.id for p in cri.ListPodSandbox().items]
    assert os.listdir(os.path.join(state, "sandboxes")) == []
    assert [f for f in os.listdir(os.path.join(state, "logs")) if f.endswith(".json")] == []
