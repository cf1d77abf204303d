"""Logs, ExecSync and stats of Docker containers through crimuxd: CRI log
files made from Docker's json-file logs (partial lines, Docker's own
rotation followed, the kubelet's rotation with ReopenContainerLog), ExecSync
(exit codes, separate streams, timeout and kill, output cap), and stats that
move when the container works."""

import os
import time
import uuid
from datetime import datetime

import grpc

from lab import procstat
from lab.cri import CRI, container_config, pb, sandbox_config
from lab.docker import read_cri_log
from lab.env import wait_for
from conftest import rpc_error


def start_pod(cri, lab, log_dir, script, name=None):
    """A pod with one container running `sh -c script`, logging to main.log."""
    cri.pull(lab.busybox_ref)
    sb = sandbox_config(name or "logs-" + uuid.uuid4().hex[:6], log_directory=log_dir)
    pod = cri.run_pod(sb)
    cid = cri.start_container(pod, sb, container_config("main", lab.busybox_ref,
                                                        ["sh", "-c", script],
                                                        log_path="main.log"))
    return pod, cid, os.path.join(log_dir, "main.log")


def texts(entries, stream=None):
    """Whole lines: partial (P) entries joined to the full (F) one after them."""
    lines, part = [], ""
    for _, s, tag, text in entries:
        if stream and s != stream:
            continue
        part += text
        if tag == "F":
            lines.append(part)
            part = ""
    return lines


def numbers(lines, prefix):
    return [int(line[len(prefix):]) for line in lines if line.startswith(prefix)]


def test_cri_log_format(dcri, lab, log_dir):
    long_line = "x" * 40000
    script = (f"sleep 0.5; echo hello; echo oops >&2; printf '%s\\n' {long_line}; "
              "printf 'no newline'")
    pod, cid, path = start_pod(dcri, lab, log_dir, script)
    assert os.path.exists(path)  # there at once, before any output
    dcri.wait_container_state(cid, pb().CONTAINER_EXITED)
    wait_for(lambda: any(t == "no newline" for _, _, _, t in read_cri_log(path)), 10,
             "the last line in the CRI log")
    entries = read_cri_log(path)
    for ts, stream, tag, _ in entries:
        assert stream in ("stdout", "stderr") and tag in ("P", "F")
        # RFC 3339 with nanoseconds, as the kubelet parses it.
        datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
        assert ts.endswith("Z")
    assert texts(entries, "stdout") == ["hello", long_line, "no newline"]
    assert texts(entries, "stderr") == ["oops"]
    assert sum(1 for e in entries if e[2] == "P") == 2  # Docker cut the long line
    # The rest without a newline, flushed at the end, is a line of its own.
    assert entries[-1][2:] == ("F", "no newline")
    assert dcri.ContainerStatus(container_id=cid).status.log_path == path
    dcri.remove_pod(pod)


def test_remove_copies_last_lines(docker_crimuxd_factory, lab, log_dir):
    """RemoveContainer without a stop first (critest does that): the lines the
    log pump has not reached yet are copied while dockerd deletes the
    container, from the file crimux holds open, before the call returns."""
    daemon = docker_crimuxd_factory(log_poll_interval="10s")  # the pump stays out of it
    with CRI(daemon.endpoint) as client:
        pod, cid, path = start_pod(client, lab, log_dir, "sleep 0.5; seq 1 3000")
        client.wait_container_state(cid, pb().CONTAINER_EXITED)
        client.RemoveContainer(container_id=cid)
        assert numbers(texts(read_cri_log(path)), "") == list(range(1, 3001))
        assert rpc_error(client.ContainerStatus, container_id=cid).code() == \
            grpc.StatusCode.NOT_FOUND
        client.remove_pod(pod)


def test_docker_rotation_followed(docker_crimuxd_factory, lab, log_dir):
    daemon = docker_crimuxd_factory(log_max_size="8k", log_max_files="5")
    with CRI(daemon.endpoint) as client:
        # Bursts of 20 lines (well under 8k), so no rotation goes unseen.
        script = ("for i in $(seq 1 1500); do echo line-$i; "
                  "[ $((i % 20)) = 0 ] && usleep 10000; done; true")
        pod, cid, path = start_pod(client, lab, log_dir, script)
        client.wait_container_state(cid, pb().CONTAINER_EXITED, timeout=60)
        wait_for(lambda: numbers(texts(read_cri_log(path)), "line-")[-1:] == [1500], 10,
                 "the last line")
        assert numbers(texts(read_cri_log(path)), "line-") == list(range(1, 1501))
        inspect = client.ContainerStatus(container_id=cid, verbose=True).info["info"]
        assert '"max-size":"8k"' in inspect  # Docker did rotate its own file
        client.remove_pod(pod)


def test_reopen_container_log(dcri, lab, log_dir):
    script = "i=0; while true; do i=$((i+1)); echo n-$i; usleep 20000; done"
    pod, cid, path = start_pod(dcri, lab, log_dir, script)
    wait_for(lambda: len(read_cri_log(path)) > 10, 10, "some lines")
    os.rename(path, path + ".1")  # the kubelet's rotation
    dcri.ReopenContainerLog(container_id=cid)
    assert os.path.exists(path)
    wait_for(lambda: len(read_cri_log(path)) > 10, 10, "lines in the new file")
    dcri.StopContainer(container_id=cid, timeout=0)
    old = numbers(texts(read_cri_log(path + ".1")), "n-")
    new = numbers(texts(read_cri_log(path)), "n-")
    assert old and new and old + new == list(range(1, len(old) + len(new) + 1))
    err = rpc_error(dcri.ReopenContainerLog, container_id=cid)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    dcri.remove_pod(pod)


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def test_exec_sync(dcri, lab, log_dir, docker_crimuxd):
    pod, cid, _ = start_pod(dcri, lab, log_dir, "sleep 1000")
    r = dcri.ExecSync(container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 7"],
                      timeout=10)
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    r = dcri.ExecSync(container_id=cid, cmd=["/no/such/binary"], timeout=10)
    assert r.exit_code != 0

    # Timeout: DEADLINE_EXCEEDED, and the process (with its children) is gone.
    t0 = time.monotonic()
    err = rpc_error(dcri.ExecSync, container_id=cid,
                    cmd=["sh", "-c", "sleep 77 & sleep 78; wait"], timeout=1)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10
    ps = lambda: dcri.ExecSync(container_id=cid, cmd=["ps"], timeout=5).stdout.decode()
    wait_for(lambda: "sleep 77" not in ps() and "sleep 78" not in ps(), 5,
             "the timed-out command to be killed")

    # A flood: 16 MiB of both streams together are kept (as CRI-O), the
    # rest is read and dropped.
    before = hwm_kib(docker_crimuxd.pid)
    r = dcri.ExecSync(container_id=cid, cmd=["sh", "-c", "head -c 200000000 /dev/zero; "
                                                         "head -c 17000000 /dev/zero >&2"],
                      timeout=60)
    assert r.exit_code == 0
    assert len(r.stdout) == 16 << 20 and len(r.stderr) == 0
    r = dcri.ExecSync(container_id=cid, cmd=["sh", "-c", "head -c 1000000 /dev/zero >&2; "
                                                         "head -c 20000000 /dev/zero"],
                      timeout=60)
    assert len(r.stderr) == 1000000 and len(r.stdout) == (16 << 20) - 1000000
    # not the 200 MB it was asked for
    assert hwm_kib(docker_crimuxd.pid) - before < procstat.rss_allowance_kib(
        docker_crimuxd.pid, 150 * 1024)

    dcri.StopContainer(container_id=cid, timeout=0)
    err = rpc_error(dcri.ExecSync, container_id=cid, cmd=["true"], timeout=5)
    assert err.code() != grpc.StatusCode.OK
    dcri.remove_pod(pod)


def test_stats_move(dcri, lab, log_dir):
    pod, cid, _ = start_pod(dcri, lab, log_dir, "sleep 1000")
    first = dcri.ContainerStats(container_id=cid).stats
    assert first.attributes.id == cid and first.attributes.metadata.name == "main"
    cpu0 = first.cpu.usage_core_nano_seconds.value
    mem0 = first.memory.working_set_bytes.value
    layer0 = first.writable_layer.used_bytes.value
    assert first.cpu.timestamp > 0 and mem0 > 0
    # Cached: a second look within the TTL measures nothing again.
    again = dcri.ContainerStats(container_id=cid).stats
    assert again.writable_layer.timestamp == first.writable_layer.timestamp

    burn = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"
    dcri.ExecSync(container_id=cid, cmd=["sh", "-c", burn], timeout=60)
    dcri.ExecSync(container_id=cid, cmd=["sh", "-c", "head -c 40000000 /dev/zero > /dev/shm/fill; "
                                                     "head -c 5000000 /dev/zero > /tmp/data"],
                  timeout=30)
    time.sleep(1.2)  # past stats_layer_ttl
    later = dcri.ContainerStats(container_id=cid).stats
    assert later.cpu.usage_core_nano_seconds.value - cpu0 > 100_000_000
    assert later.cpu.HasField("usage_nano_cores")
    assert later.memory.working_set_bytes.value - mem0 > 30_000_000
    assert later.writable_layer.used_bytes.value - layer0 >= 5_000_000
    assert later.writable_layer.inodes_used.value > first.writable_layer.inodes_used.value

    listed = dcri.ListContainerStats(filter=pb().ContainerStatsFilter(pod_sandbox_id=pod)).stats
    assert [s.attributes.id for s in listed] == [cid]

    gw = str(lab.net.subnet[1])
    p0 = dcri.PodSandboxStats(pod_sandbox_id=pod).stats
    dcri.ExecSync(container_id=cid, cmd=["ping", "-c", "3", "-i", "0.2", gw], timeout=10)
    p1 = dcri.PodSandboxStats(pod_sandbox_id=pod).stats
    assert p1.attributes.id == pod and p1.attributes.metadata.name.startswith("logs-")
    net0, net1 = p0.linux.network.default_interface, p1.linux.network.default_interface
    assert net1.name == "eth0" and net1.tx_bytes.value > net0.tx_bytes.value
    assert p1.linux.cpu.usage_core_nano_seconds.value >= later.cpu.usage_core_nano_seconds.value
    assert [c.attributes.id for c in p1.linux.containers] == [cid]
    assert p1.linux.process.process_count.value >= 2
    assert pod in [s.attributes.id for s in dcri.ListPodSandboxStats().stats]
    dcri.remove_pod(pod)
