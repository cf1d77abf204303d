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
            listed = {p.id for p in cri.ListPodSandbox().items}
            assert mixed.docker_sandboxes(dockerd) - base[2] <= listed
            assert mixed.containerd_sandboxes(direct) - base[3] <= listed
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
