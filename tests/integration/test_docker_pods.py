"""Pods and containers on Docker through crimuxd: the whole life cycle,
names and labels, lists and filters, idempotent retries, CNI networking
(IPs, port mappings on loopback, DNS, hostname), checkpoint-based network
teardown, and Docker pods beside containerd pods in the merged lists."""

import ipaddress
import json
import os
import time
import urllib.request

import grpc

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.env import free_port, wait_for
from conftest import rpc_error


def ipam_ips(net):
    """Addresses host-local has handed out on the lab network."""
    d = os.path.join(net.ipam_dir, net.name)
    return {f for f in os.listdir(d) if f[0].isdigit() or ":" in f} if os.path.isdir(d) else set()


def exec_out(cri, cid, script, timeout=10):
    r = cri.ExecSync(container_id=cid, cmd=["sh", "-c", script], timeout=timeout)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r.stdout.decode()


def http_get(url, timeout=2):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.read().decode()


def test_pod_and_container_lifecycle(dcri, lab, dockerd, docker_crimuxd, log_dir):
    api = pb()
    image_id = dcri.pull(lab.busybox_ref)
    port = free_port()
    labels = {"app": "web", "io.kubernetes.pod.name": "life"}
    annotations = {"note": "kept exactly", "annotation.like": "x=y"}
    sb = sandbox_config("life", labels=labels, annotations=annotations, log_directory=log_dir,
                        hostname="life-host", port_mappings=[(8080, port)])
    sb.dns_config.servers.append("10.9.8.7")
    sb.dns_config.searches.extend(["svc.example", "example"])
    sb.dns_config.options.append("ndots:5")
    before = ipam_ips(lab.net)
    pod = dcri.run_pod(sb)

    st = dcri.PodSandboxStatus(pod_sandbox_id=pod).status
    assert st.id == pod and st.state == api.SANDBOX_READY
    assert st.metadata == sb.metadata
    assert dict(st.labels) == labels and dict(st.annotations) == annotations
    assert st.runtime_handler == "docker"
    assert st.linux.namespaces.options.network == api.POD
    assert ipaddress.ip_address(st.network.ip) in lab.net.subnet
    assert ipam_ips(lab.net) - before == {st.network.ip}
    listed = {p.id: p for p in dcri.ListPodSandbox().items}
    assert listed[pod].created_at == st.created_at > 0
    assert dict(listed[pod].annotations) == annotations
    # Docker keeps the pod as a pause container named after its metadata.
    inspect = dockerd.inspect(pod)
    assert inspect["Name"] == f"/k8s_POD_life_default_{sb.metadata.uid}_0"
    assert inspect["HostConfig"]["NetworkMode"] == "none"

    # Filters: ID prefix, state, labels.
    f = api.PodSandboxFilter
    assert [p.id for p in dcri.ListPodSandbox(filter=f(id=pod[:12])).items] == [pod]
    assert pod in [p.id for p in dcri.ListPodSandbox(
        filter=f(state=api.PodSandboxStateValue(state=api.SANDBOX_READY))).items]
    assert pod not in [p.id for p in dcri.ListPodSandbox(
        filter=f(state=api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY))).items]
    assert [p.id for p in dcri.ListPodSandbox(filter=f(label_selector={"app": "web"})).items] == [pod]
    assert len(dcri.ListPodSandbox(filter=f(label_selector={"app": "db"})).items) == 0

    script = ("mkdir -p /www && echo hello-from-pod > /www/index.html && echo started && "
              "exec httpd -f -p 8080 -h /www")
    cfg = container_config("web", image_id, ["sh", "-c"], [script], log_path="web.log",
                           labels={"tier": "front"}, annotations={"c-note": "v"},
                           envs={"GREETING": "hi there"}, working_dir="/tmp")
    # The kubelet creates containers from the image ID, naming the
    # reference it started from.
    cfg.image.user_specified_image = lab.busybox_ref
    cid = dcri.CreateContainer(pod_sandbox_id=pod, config=cfg, sandbox_config=sb).container_id
    cs = dcri.ContainerStatus(container_id=cid).status
    assert cs.state == api.CONTAINER_CREATED and cs.created_at > 0 and cs.started_at == 0
    dcri.StartContainer(container_id=cid)
    cs = dcri.ContainerStatus(container_id=cid).status
    assert cs.state == api.CONTAINER_RUNNING and cs.started_at >= cs.created_at
    assert cs.metadata.name == "web" and cs.image.image == image_id
    assert cs.image.user_specified_image == lab.busybox_ref
    assert cs.image_id == image_id == cs.image_ref
    assert dict(cs.labels) == {"tier": "front"} and dict(cs.annotations) == {"c-note": "v"}
    assert cs.log_path == os.path.join(log_dir, "web.log")

    # Inside: environment, working directory, hostname, DNS.
    assert exec_out(dcri, cid, "echo $GREETING; pwd; hostname") == "hi there\n/tmp\nlife-host\n"
    resolv = exec_out(dcri, cid, "cat /etc/resolv.conf")
    assert resolv == "nameserver 10.9.8.7\nsearch svc.example example\noptions ndots:5\n"
    assert f"inet {st.network.ip}/" in exec_out(dcri, cid, "ip -4 addr show eth0")

    # The published port answers on the node's loopback.
    body = wait_for(lambda: _try_get(f"http://127.0.0.1:{port}/"), 10, "the mapped port")
    assert body == "hello-from-pod\n"

    # Container lists and filters.
    cf = api.ContainerFilter
    ids = lambda **kw: [c.id for c in dcri.ListContainers(filter=cf(**kw)).containers]
    assert ids(pod_sandbox_id=pod) == [cid]
    assert ids(id=cid[:10]) == [cid]
    assert ids(label_selector={"tier": "front"}) == [cid]
    assert ids(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING), pod_sandbox_id=pod) == [cid]
    assert ids(state=api.ContainerStateValue(state=api.CONTAINER_EXITED), pod_sandbox_id=pod) == []
    listed = dcri.ListContainers(filter=cf(id=cid)).containers[0]
    assert listed.pod_sandbox_id == pod and listed.image_id == image_id
    assert listed.created_at == cs.created_at and dict(listed.annotations) == {"c-note": "v"}
    assert listed.image.user_specified_image == lab.busybox_ref

    # Exit reasons and codes.
    done = dcri.start_container(pod, sb, container_config("done", lab.busybox_ref, ["true"]))
    failed = dcri.start_container(pod, sb, container_config("failed", lab.busybox_ref,
                                                            ["sh", "-c", "exit 3"]))
    s = dcri.wait_container_state(done, api.CONTAINER_EXITED)
    assert (s.exit_code, s.reason) == (0, "Completed") and s.finished_at >= s.started_at > 0
    s = dcri.wait_container_state(failed, api.CONTAINER_EXITED)
    assert (s.exit_code, s.reason) == (3, "Error")

    # Stop with a grace period that a TERM-ignoring process uses up.
    stubborn = dcri.start_container(pod, sb, container_config(
        "stubborn", lab.busybox_ref, ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]))
    t0 = time.monotonic()
    dcri.StopContainer(container_id=stubborn, timeout=2)
    assert time.monotonic() - t0 >= 1.8
    s = dcri.ContainerStatus(container_id=stubborn).status
    assert s.state == api.CONTAINER_EXITED and s.exit_code == 137
    dcri.StopContainer(container_id=stubborn, timeout=2)  # idempotent

    dcri.StopContainer(container_id=cid, timeout=0)
    assert dcri.ContainerStatus(container_id=cid).status.state == api.CONTAINER_EXITED
    dcri.RemoveContainer(container_id=cid)
    dcri.RemoveContainer(container_id=cid)  # idempotent
    assert rpc_error(dcri.ContainerStatus, container_id=cid).code() == grpc.StatusCode.NOT_FOUND

    dcri.StopPodSandbox(pod_sandbox_id=pod)
    assert dcri.PodSandboxStatus(pod_sandbox_id=pod).status.state == api.SANDBOX_NOTREADY
    assert dcri.ContainerStatus(container_id=done).status.state == api.CONTAINER_EXITED
    assert st.network.ip not in ipam_ips(lab.net)  # CNI DEL ran
    dcri.StopPodSandbox(pod_sandbox_id=pod)  # idempotent
    dcri.RemovePodSandbox(pod_sandbox_id=pod)
    dcri.RemovePodSandbox(pod_sandbox_id=pod)
    assert pod not in [p.id for p in dcri.ListPodSandbox().items]
    assert len(dcri.ListContainers(filter=cf(pod_sandbox_id=pod)).containers) == 0
    assert rpc_error(dcri.PodSandboxStatus, pod_sandbox_id=pod).code() == grpc.StatusCode.NOT_FOUND
    assert not os.path.exists(os.path.join(docker_crimuxd.state_dir, "sandboxes", pod + ".json"))
    assert not [c for c in dockerd.containers() if pod in (c["Id"], c["Labels"].get(
        "io.kubernetes.sandbox.id"))]
    # Unknown IDs: NOT_FOUND for status, success for stop and remove.
    assert rpc_error(dcri.PodSandboxStatus, pod_sandbox_id="f" * 64).code() == \
        grpc.StatusCode.NOT_FOUND
    dcri.StopPodSandbox(pod_sandbox_id="f" * 64)
    dcri.RemovePodSandbox(pod_sandbox_id="f" * 64)


def _try_get(url):
    try:
        return http_get(url)
    except OSError:
        return None


def test_retries_are_idempotent(dcri, lab):
    api = pb()
    dcri.pull(lab.busybox_ref)
    sb = sandbox_config("retry")
    pod = dcri.run_pod(sb)
    assert dcri.run_pod(sb) == pod  # a retried RunPodSandbox: the same sandbox
    cfg = container_config("c", lab.busybox_ref, ["sleep", "1000"])
    cid = dcri.CreateContainer(pod_sandbox_id=pod, config=cfg, sandbox_config=sb).container_id
    again = dcri.CreateContainer(pod_sandbox_id=pod, config=cfg, sandbox_config=sb).container_id
    assert again == cid
    dcri.StartContainer(container_id=cid)
    dcri.StartContainer(container_id=cid)  # already running: fine
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod, config=cfg, sandbox_config=sb)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    # A sandbox whose network never came up (here: made unready by hand)
    # is replaced by a retry rather than returned.
    dcri.StopPodSandbox(pod_sandbox_id=pod)
    fresh = dcri.run_pod(sb)
    assert fresh != pod
    assert dcri.PodSandboxStatus(pod_sandbox_id=fresh).status.state == api.SANDBOX_READY
    assert pod not in [p.id for p in dcri.ListPodSandbox().items]
    # A new attempt is a new sandbox beside the old one.
    sb.metadata.attempt = 1
    assert dcri.run_pod(sb) not in (pod, fresh)


def test_container_in_unknown_sandbox(dcri, lab):
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id="0" * 64,
                    config=container_config("x", lab.busybox_ref, ["true"]),
                    sandbox_config=sandbox_config("nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_host_network_pod(dcri, lab):
    api = pb()
    dcri.pull(lab.busybox_ref)
    before = ipam_ips(lab.net)
    sb = sandbox_config("hostnet", host_network=True)
    sb.linux.security_context.namespace_options.pid = api.NODE
    sb.linux.security_context.namespace_options.ipc = api.NODE
    pod = dcri.run_pod(sb)
    st = dcri.PodSandboxStatus(pod_sandbox_id=pod).status
    assert st.state == api.SANDBOX_READY and not st.network.ip
    opts = st.linux.namespaces.options
    assert (opts.network, opts.pid, opts.ipc) == (api.NODE, api.NODE, api.NODE)
    assert ipam_ips(lab.net) == before  # no CNI
    cfg = container_config("c", lab.busybox_ref, ["sleep", "1000"])
    cfg.linux.security_context.namespace_options.network = api.NODE
    cfg.linux.security_context.namespace_options.pid = api.NODE
    cid = dcri.start_container(pod, sb, cfg)
    # The node's own interfaces, hostname and processes.
    assert lab.net.bridge in exec_out(dcri, cid, "ls /sys/class/net").split()
    assert exec_out(dcri, cid, "hostname").strip() == os.uname().nodename
    assert exec_out(dcri, cid, "test -d /proc/1 && cat /proc/1/comm").strip() != "sleep"
    dcri.remove_pod(pod)


def test_failed_cni_add_cleans_up(docker_crimuxd_factory, dockerd, lab, tmp_path):
    conf_dir, ipam = tmp_path / "cni", tmp_path / "ipam"
    conf_dir.mkdir()
    conflist = {
        "cniVersion": "1.0.0", "name": "broken",
        "plugins": [
            {"type": "bridge", "bridge": lab.net.bridge, "isGateway": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam),
                      "ranges": [[{"subnet": str(lab.net.subnet),
                                   "rangeStart": str(lab.net.subnet[200]),
                                   "rangeEnd": str(lab.net.subnet[220])}]]}},
            {"type": "crimux-no-such-plugin"},
        ],
    }
    (conf_dir / "10-broken.conflist").write_text(json.dumps(conflist))
    daemon = docker_crimuxd_factory(cni_conf_dir=str(conf_dir))
    with CRI(daemon.endpoint) as client:
        err = rpc_error(client.run_pod, sandbox_config("broken"))
        assert "crimux-no-such-plugin" in err.details()
        assert len(client.ListPodSandbox().items) == 0
    # Nothing left: no container, no checkpoint, no address.
    assert not [c for c in dockerd.containers() if "k8s_POD_broken_" in c["Names"][0]]
    assert os.listdir(os.path.join(daemon.state_dir, "sandboxes")) == []
    assert not [f for f in os.listdir(ipam / "broken") if f[0].isdigit()]


def test_network_teardown_after_pause_vanished(dcri, dockerd, lab, docker_crimuxd):
    api = pb()
    sb = sandbox_config("vanish")
    pod = dcri.run_pod(sb)
    ip = dcri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
    assert ip in ipam_ips(lab.net)
    dockerd.remove_container(pod)  # behind crimux's back
    # Still listed (from its checkpoint), not ready, so the kubelet cleans
    # up. crimux learns of the removal from Docker's event, a moment after
    # Docker's answer (docs/docker.md, The state cache).
    listed = wait_for(
        lambda: [p for p in dcri.ListPodSandbox().items
                 if p.id == pod and p.state == api.SANDBOX_NOTREADY],
        10, "the pod not ready after its pause container was removed")
    assert listed[0].metadata == sb.metadata
    st = dcri.PodSandboxStatus(pod_sandbox_id=pod).status
    assert st.state == api.SANDBOX_NOTREADY and st.network.ip == ip
    dcri.StopPodSandbox(pod_sandbox_id=pod)
    assert ip not in ipam_ips(lab.net)  # CNI DEL from the checkpoint
    dcri.RemovePodSandbox(pod_sandbox_id=pod)
    assert pod not in [p.id for p in dcri.ListPodSandbox().items]
    assert not os.path.exists(os.path.join(docker_crimuxd.state_dir, "sandboxes", pod + ".json"))


def test_remove_of_a_pod_never_stopped_tears_its_network_down(dcri, dockerd, lab,
                                                              docker_crimuxd):
    """The kubelet stops a pod before removing it, critest need not: the
    network still set up is torn down (CNI DEL) from the checkpoint, with
    nothing left behind."""
    sb = sandbox_config("unstopped")
    pod = dcri.run_pod(sb)
    ip = dcri.PodSandboxStatus(pod_sandbox_id=pod).status.network.ip
    assert ip in ipam_ips(lab.net)
    dcri.RemovePodSandbox(pod_sandbox_id=pod)
    assert ip not in ipam_ips(lab.net)
    assert pod not in [p.id for p in dcri.ListPodSandbox().items]
    assert not os.path.exists(os.path.join(docker_crimuxd.state_dir, "sandboxes", pod + ".json"))
    assert pod not in [c["Id"] for c in dockerd.containers()]


def test_dual_stack_pod_ips(docker_crimuxd_factory, dockerd, lab, tmp_path):
    conf_dir = tmp_path / "cni"
    conf_dir.mkdir()
    v4 = lab.net.subnet
    conflist = {
        "cniVersion": "1.0.0", "name": "dual",
        "plugins": [{"type": "bridge", "bridge": lab.net.bridge, "isGateway": True,
                     "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                              "ranges": [[{"subnet": str(v4), "rangeStart": str(v4[230]),
                                           "rangeEnd": str(v4[240])}],
                                         [{"subnet": "fd00:c4::/64"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }
    (conf_dir / "10-dual.conflist").write_text(json.dumps(conflist))
    daemon = docker_crimuxd_factory(cni_conf_dir=str(conf_dir))
    with CRI(daemon.endpoint) as client:
        pod = client.run_pod(sandbox_config("dual"))
        try:
            net = client.PodSandboxStatus(pod_sandbox_id=pod).status.network
            assert ipaddress.ip_address(net.ip) in v4
            assert [ipaddress.ip_address(a.ip) in ipaddress.ip_network("fd00:c4::/64")
                    for a in net.additional_ips] == [True]
        finally:
            client.remove_pod(pod)


def test_docker_and_containerd_pods_side_by_side(lab, dockerd, crimuxd_factory, tmp_path):
    from conftest import docker_backend_config
    config = ('[crimux]\ndefault_handler = runc\n'
              + docker_backend_config(lab, str(tmp_path / "state"))
              + '[handler "runc"]\nbackend = containerd\n'
              + '[handler "docker"]\nbackend = docker\n'
              # a second handler on the same Docker: its pods must say so
              + '[handler "moby"]\nbackend = docker\n')
    daemon = crimuxd_factory({"containerd": lab.containerd.endpoint,
                              "docker": dockerd.endpoint}, config)
    api = pb()
    with CRI(daemon.endpoint) as client:
        client.pull(lab.busybox_ref)
        sb_d, sb_c = sandbox_config("on-docker"), sandbox_config("on-containerd")
        pd = client.run_pod(sb_d, runtime_handler="docker")
        pc = client.run_pod(sb_c, runtime_handler="runc")
        pm = client.run_pod(sandbox_config("on-moby"), runtime_handler="moby")
        try:
            assert pd in [c["Id"] for c in dockerd.containers()]
            handlers = {p.id: p.runtime_handler for p in client.ListPodSandbox().items}
            assert (handlers[pd], handlers[pc], handlers[pm]) == ("docker", "runc", "moby")
            assert client.PodSandboxStatus(pod_sandbox_id=pm).status.runtime_handler == "moby"
            image = api.ImageSpec(image=lab.busybox_ref, runtime_handler="docker")
            client.PullImage(image=image, sandbox_config=sb_d)
            cd = client.start_container(pd, sb_d, container_config("c", lab.busybox_ref,
                                                                   ["sleep", "1000"]))
            cc = client.start_container(pc, sb_c, container_config("c", lab.busybox_ref,
                                                                   ["sleep", "1000"]))
            owners = {c.id: c.pod_sandbox_id for c in client.ListContainers().containers}
            assert owners[cd] == pd and owners[cc] == pc
            assert client.PodSandboxStatus(pod_sandbox_id=pd).status.runtime_handler == "docker"
            assert client.ExecSync(container_id=cd, cmd=["true"], timeout=5).exit_code == 0
            stats = {s.attributes.id for s in client.ListContainerStats().stats}
            assert {cd, cc} <= stats
        finally:
            client.remove_pod(pd)
            client.remove_pod(pc)
            client.remove_pod(pm)


def test_container_events(dcri, lab):
    import threading
    api = pb()
    dcri.pull(lab.busybox_ref)
    stream = dcri.GetContainerEvents(timeout=60)
    events = []

    def read():
        try:
            for ev in stream:
                events.append(ev)
        except grpc.RpcError:
            pass
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)  # subscribed before anything happens
    sb = sandbox_config("events")
    pod = dcri.run_pod(sb)
    cid = dcri.start_container(pod, sb, container_config("c", lab.busybox_ref, ["sleep", "1000"]))
    dcri.StopContainer(container_id=cid, timeout=0)
    dcri.RemoveContainer(container_id=cid)
    mine = lambda: [e for e in events if e.container_id == cid]
    wait_for(lambda: len(mine()) >= 4, 10, "four events of the container")
    stream.cancel()
    reader.join(10)
    got = mine()
    assert [e.container_event_type for e in got] == [
        api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT,
        api.CONTAINER_STOPPED_EVENT, api.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == pod and e.created_at > 0 for e in got)
    started = got[1]
    assert [c.id for c in started.containers_statuses] == [cid]
    assert started.containers_statuses[0].state == api.CONTAINER_RUNNING
    assert cid not in [c.id for c in got[3].containers_statuses]
    dcri.remove_pod(pod)
