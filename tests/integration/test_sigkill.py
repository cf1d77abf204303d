"""crimuxd SIGKILLed with pods on all three handlers (runc, kata, docker),
exec sessions, log writers and an event stream open: the restarted crimuxd
lists every pod and container with its handler, operates each (exec, logs,
stop, remove), has lost no log line written while it was down (the docker
pods' log copy), and nothing leaked (pause containers, sandboxes, IPAM
addresses, network namespaces). The ownership rebuild time is printed; the
110-pod version is tests/soak/test_sigkill_110.py (`make soak`)."""

from conftest import stop_checked
from lab import mixed
from lab.env import wait_for

PODS = 9  # three per handler


def test_sigkill_with_every_handler(lab, dockerd, crimuxd_binary, tmp_path, capsys):
    started = []
    try:
        figures = mixed.sigkill_scenario(lab, dockerd, crimuxd_binary, str(tmp_path),
                                         PODS, started)
    finally:
        stop_checked(started)
    with capsys.disabled():
        print(f"\nsigkill: {figures}")


def retry(cri, cfg, handler):
    """One RunPodSandbox as the kubelet retries it: the ID, or None after an
    error (containerd may still hold the name for the call crimuxd made
    before it died)."""
    import grpc
    try:
        return cri.run_pod(cfg, handler)
    except grpc.RpcError as e:
        print(f"retry of {cfg.metadata.name}: {e.code()}: {e.details()[:200]}")
        return None


def test_sigkill_while_pods_are_made(lab, dockerd, crimuxd_binary, tmp_path):
    """crimuxd dies half-way through RunPodSandbox calls on every handler; the
    kubelet retries them (same attempt) against the new crimuxd. Each retry
    gets a working pod, anything half-made is listed (so the kubelet can
    clean it) or removed, and once the pods are removed nothing is left:
    no pause container, sandbox or IPAM address."""
    import concurrent.futures
    import time

    import grpc

    from lab.cri import CRI, pb
    api = pb()
    started = []
    direct = CRI(lab.containerd.endpoint)
    base = (mixed.ipam_ips(lab), mixed.containerd_netns(lab), mixed.docker_sandboxes(dockerd),
            mixed.containerd_sandboxes(direct))
    try:
        daemon = mixed.crimuxd(lab, dockerd, crimuxd_binary, str(tmp_path / "state"))
        started.append(daemon)
        configs = [(h, mixed.pod_config(h)) for h in mixed.HANDLERS for _ in range(3)]
        with CRI(daemon.endpoint) as cri, concurrent.futures.ThreadPoolExecutor(9) as pool:
            calls = [pool.submit(cri.run_pod, cfg, h) for h, cfg in configs]
            time.sleep(0.1)  # the calls have reached the backends
            daemon.kill()
            for c in calls:  # they fail: crimuxd is gone
                try:
                    c.result(30)
                except grpc.RpcError:
                    pass
        daemon.start()
        with CRI(daemon.endpoint, timeout=120) as cri:
            # Whatever was half-made is listed: nothing hides from the kubelet.
            # dockerd may still be finishing a create the dead crimuxd asked
            # for (Docker lists a container only once it is made): compare
            # again until both sides agree.
            def everything_listed():
                listed = {p.id for p in cri.ListPodSandbox().items}
                hidden = ((mixed.docker_sandboxes(dockerd) - base[2]) |
                          (mixed.containerd_sandboxes(direct) - base[3])) - listed
                # Nothing may be made yet at the kill: then nothing is listed.
                return (listed,) if not hidden else None
            listed, = wait_for(everything_listed, 15, "every half-made pod listed")
            pods = {}
            for h, cfg in configs:  # the kubelet's retries, with its back-off
                pod = wait_for(lambda: retry(cri, cfg, h), 60, f"a {h} pod", interval=1)
                pods[pod] = (h, cfg)
            assert len(pods) == len(configs)
            items = cri.ListPodSandbox().items
            for h, cfg in configs:  # one each, not a copy beside a half-made one
                assert len([p for p in items if p.metadata == cfg.metadata]) == 1
            for pod, (h, cfg) in pods.items():
                st = cri.PodSandboxStatus(pod_sandbox_id=pod).status
                assert (st.state, st.runtime_handler, st.metadata) == \
                    (api.SANDBOX_READY, h, cfg.metadata)
            # The kubelet removes every sandbox of these pods it finds.
            for p in cri.ListPodSandbox().items:
                if p.id not in listed and p.id not in pods:
                    continue
                cri.remove_pod(p.id)
            assert not {p.id for p in cri.ListPodSandbox().items} & (listed | set(pods))
    finally:
        stop_checked(started)
    after = (mixed.ipam_ips(lab), mixed.containerd_netns(lab), mixed.docker_sandboxes(dockerd),
             mixed.containerd_sandboxes(direct))
    direct.close()
    assert after == base


SLOW_PLUGIN = """#!/usr/bin/python3
# A CNI plugin chained after the lab's: on ADD it says it has started, waits,
# and passes the result on. crimuxd is killed while it waits.
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"),
                      "supportedVersions": ["0.4.0", "1.0.0"]}))
elif cmd == "ADD":
    open(conf["marker"], "w").close()
    time.sleep(float(conf["seconds"]))
    print(json.dumps(conf.get("prevResult", {"cniVersion": conf["cniVersion"]})))
"""


def test_sigkill_during_network_setup(lab, dockerd, crimuxd_binary, tmp_path):
    """crimuxd dies while the CNI plugins of a docker pod run: the address
    host-local handed out is released when the half-made pod goes (the
    kubelet's retry makes it anew, then the pod is removed)."""
    import json
    import os
    import threading

    import grpc

    from lab.cri import CRI
    bin_dir, conf_dir = tmp_path / "cni-bin", tmp_path / "cni-conf"
    bin_dir.mkdir()
    conf_dir.mkdir()
    plugin = bin_dir / "crx-slow"
    plugin.write_text(SLOW_PLUGIN)
    plugin.chmod(0o755)
    marker = tmp_path / "adding"
    name = next(f for f in os.listdir(lab.net.conf_dir) if f.endswith(".conflist"))
    with open(os.path.join(lab.net.conf_dir, name)) as f:
        conflist = json.load(f)
    conflist["plugins"].append({"type": "crx-slow", "marker": str(marker), "seconds": "3"})
    (conf_dir / name).write_text(json.dumps(conflist))
    base = mixed.ipam_ips(lab)

    started = []
    try:
        daemon = mixed.crimuxd(lab, dockerd, crimuxd_binary, str(tmp_path / "state"),
                               cni_conf_dir=str(conf_dir),
                               cni_bin_dir=f"{mixed.env.CNI_BIN_DIR}:{bin_dir}")
        started.append(daemon)
        cfg = mixed.pod_config("docker")
        with CRI(daemon.endpoint) as cri:
            def run():
                try:
                    cri.run_pod(cfg, "docker")
                except grpc.RpcError:
                    pass  # crimuxd died under it
            first = threading.Thread(target=run)
            first.start()
            wait_for(marker.exists, 60, "the pod's network setup")
            daemon.kill()
            first.join(30)
        assert len(mixed.ipam_ips(lab) - base) == 1  # bridge and host-local did their part
        # The same crimuxd, with the lab's plain network, started again.
        with open(daemon.config_path) as f:
            text = f.read()
        with open(daemon.config_path, "w") as f:
            f.write(text.replace(str(conf_dir), lab.net.conf_dir))
        daemon.start()
        with CRI(daemon.endpoint) as cri:
            pod = cri.run_pod(cfg, "docker")  # the kubelet's retry
            assert cri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
            cri.remove_pod(pod)
            assert [p for p in cri.ListPodSandbox().items if p.metadata == cfg.metadata] == []
    finally:
        stop_checked(started)
    assert mixed.ipam_ips(lab) == base, "an address of the half-made pod was never released"
