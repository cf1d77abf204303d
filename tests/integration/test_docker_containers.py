"""Container options on Docker through crimuxd, each checked from inside
the container: user and groups, privileged, capabilities, read-only root,
masked and read-only paths, no_new_privs, seccomp, AppArmor, namespaces
(POD, CONTAINER, NODE, TARGET), resources and updates, cgroup parent,
mounts with propagation, devices, sysctls, stop signals, OOM kills."""

import json
import os
import subprocess
import uuid

import grpc
import pytest

from lab.cri import container_config, linux_resources, pb, sandbox_config
from conftest import rpc_error


def run(cri, cid, script, timeout=10):
    """(exit code, stdout+stderr) of a shell script in the container."""
    r = cri.ExecSync(container_id=cid, cmd=["sh", "-c", script], timeout=timeout)
    return r.exit_code, (r.stdout + r.stderr).decode()


def out(cri, cid, script):
    code, text = run(cri, cid, script)
    assert code == 0, text
    return text.strip()


def status_field(cri, cid, name):
    """A field of /proc/self/status inside the container."""
    for line in out(cri, cid, "cat /proc/self/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


@pytest.fixture
def pod(dcri, lab):
    """A running sandbox; returns (pod_id, sandbox_config, start(config) -> cid)."""
    dcri.pull(lab.busybox_ref)
    sb = sandbox_config("sec-" + uuid.uuid4().hex[:6])
    pod_id = dcri.run_pod(sb)

    def start(name, command=("sleep", "1000"), **kwargs):
        cfg = container_config(name, lab.busybox_ref, list(command), **kwargs)
        return cfg, lambda: dcri.start_container(pod_id, sb, cfg)

    yield pod_id, sb, start
    dcri.remove_pod(pod_id)


def started(pod, name, setup=None, **kwargs):
    cfg, go = pod[2](name, **kwargs)
    if setup:
        setup(cfg)
    return go()


def test_users_and_groups(dcri, pod):
    api = pb()

    def as_uid(cfg):
        sc = cfg.linux.security_context
        sc.run_as_user.value = 1234
        sc.run_as_group.value = 5678
        sc.supplemental_groups.extend([2000, 3000])
    cid = started(pod, "uid", as_uid)
    assert out(dcri, cid, "id -u; id -g") == "1234\n5678"
    assert {"2000", "3000"} <= set(out(dcri, cid, "id -G").split())
    user = dcri.ContainerStatus(container_id=cid).status.user.linux
    assert (user.uid, user.gid) == (1234, 5678) and {2000, 3000} <= set(user.supplemental_groups)

    cid = started(pod, "name", lambda c: setattr(c.linux.security_context, "run_as_username", "crx"))
    assert out(dcri, cid, "id -un; id -u") == "crx\n1234"

    cfg, go = pod[2]("nouser")
    cfg.linux.security_context.run_as_group.value = 5
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod[0], config=cfg, sandbox_config=pod[1])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    cfg, go = pod[2]("strict")
    cfg.linux.security_context.supplemental_groups_policy = api.Strict
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod[0], config=cfg, sandbox_config=pod[1])
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


CAP_CHOWN, CAP_NET_ADMIN, CAP_SYS_ADMIN = 0, 12, 21


def cap_eff(cri, cid):
    return int(status_field(cri, cid, "CapEff"), 16)


def test_privileged_and_capabilities(dcri, pod):
    plain = started(pod, "plain")
    caps = cap_eff(dcri, plain)
    assert caps & (1 << CAP_CHOWN) and not caps & (1 << CAP_NET_ADMIN)
    assert run(dcri, plain, "ip addr add 10.123.0.1/32 dev lo")[0] != 0

    priv = started(pod, "priv", lambda c: setattr(c.linux.security_context, "privileged", True))
    assert cap_eff(dcri, priv) & (1 << CAP_SYS_ADMIN)
    assert out(dcri, priv, "mkdir -p /m && mount -t tmpfs none /m && echo mounted") == "mounted"
    assert out(dcri, priv, "test -b /dev/loop0 && echo device") == "device"  # host devices
    assert status_field(dcri, priv, "Seccomp") == "0"

    def add_net_admin(cfg):
        cfg.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
        cfg.linux.security_context.capabilities.drop_capabilities.append("CHOWN")
    cid = started(pod, "netadmin", add_net_admin)
    caps = cap_eff(dcri, cid)
    assert caps & (1 << CAP_NET_ADMIN) and not caps & (1 << CAP_CHOWN)
    assert out(dcri, cid, "ip addr add 10.123.0.2/32 dev lo && echo ok") == "ok"
    code, text = run(dcri, cid, "touch /tmp/f && chown 1 /tmp/f")
    assert code != 0 and "not permitted" in text

    cid = started(pod, "none", lambda c: c.linux.security_context.capabilities.drop_capabilities
                  .append("ALL"))
    assert cap_eff(dcri, cid) == 0


def test_readonly_rootfs_and_paths(dcri, pod):
    def ro(cfg):
        cfg.linux.security_context.readonly_rootfs = True
    cid = started(pod, "ro", ro)
    code, text = run(dcri, cid, "touch /x")
    assert code != 0 and "Read-only file system" in text

    def paths(cfg):
        sc = cfg.linux.security_context
        sc.masked_paths.extend(["/proc/cpuinfo", "/home/crx"])
        sc.readonly_paths.extend(["/root"])
    cid = started(pod, "paths", paths)
    assert out(dcri, cid, "wc -c < /proc/cpuinfo") == "0"
    assert out(dcri, cid, "ls -A /home/crx | wc -l") == "0"
    assert run(dcri, cid, "touch /root/x")[0] != 0
    assert out(dcri, cid, "touch /tmp/x && echo ok") == "ok"
    # Without lists Docker's defaults apply (/proc/timer_list and the like
    # masked, /proc/sys read-only).
    masked = next(p for p in ("/proc/timer_list", "/proc/sched_debug", "/proc/keys")
                  if os.path.exists(p))
    plain = started(pod, "defaults")
    assert out(dcri, plain, f"wc -c < {masked}") == "0"
    assert run(dcri, plain, "echo 1 > /proc/sys/kernel/ns_last_pid")[0] != 0


def test_no_new_privs_seccomp_apparmor(dcri, pod, tmp_path, dockerd):
    api = pb()
    cid = started(pod, "nnp", lambda c: setattr(c.linux.security_context, "no_new_privs", True))
    assert status_field(dcri, cid, "NoNewPrivs") == "1"
    plain = started(pod, "plain")
    assert status_field(dcri, plain, "NoNewPrivs") == "0"
    assert status_field(dcri, plain, "Seccomp") == "0"  # nothing asked: unconfined

    def seccomp(kind, ref=""):
        def set_it(cfg):
            cfg.linux.security_context.seccomp.profile_type = kind
            cfg.linux.security_context.seccomp.localhost_ref = ref
        return set_it
    cid = started(pod, "default", seccomp(api.SecurityProfile.RuntimeDefault))
    assert status_field(dcri, cid, "Seccomp") == "2"
    cid = started(pod, "unconfined", seccomp(api.SecurityProfile.Unconfined))
    assert status_field(dcri, cid, "Seccomp") == "0"
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    cid = started(pod, "local", seccomp(api.SecurityProfile.Localhost, str(profile)))
    assert status_field(dcri, cid, "Seccomp") == "2"
    code, text = run(dcri, cid, "mkdir /tmp/d")
    assert code != 0 and "not permitted" in text
    cid = started(pod, "legacy", lambda c: setattr(c.linux.security_context,
                                                    "seccomp_profile_path", "runtime/default"))
    assert status_field(dcri, cid, "Seccomp") == "2"
    cfg, go = pod[2]("missing")
    seccomp(api.SecurityProfile.Localhost, str(tmp_path / "absent.json"))(cfg)
    err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod[0], config=cfg, sandbox_config=pod[1])
    assert err.code() == grpc.StatusCode.NOT_FOUND

    # This kernel has no AppArmor, so Docker ignores profiles: check they
    # reach Docker as asked.
    def apparmor(kind, ref=""):
        def set_it(cfg):
            cfg.linux.security_context.apparmor.profile_type = kind
            cfg.linux.security_context.apparmor.localhost_ref = ref
        return set_it
    cid = started(pod, "aa-unconfined", apparmor(api.SecurityProfile.Unconfined))
    assert "apparmor=unconfined" in dockerd.inspect(cid)["HostConfig"]["SecurityOpt"]
    cid = started(pod, "aa-local", apparmor(api.SecurityProfile.Localhost, "crimux-test"))
    assert "apparmor=crimux-test" in dockerd.inspect(cid)["HostConfig"]["SecurityOpt"]


def ns(cri, cid, kind):
    return out(cri, cid, f"readlink /proc/self/ns/{kind}")


def test_namespaces(dcri, pod, dockerd):
    api = pb()
    pause_pid = dockerd.inspect(pod[0])["State"]["Pid"]
    pause_ns = {k: os.readlink(f"/proc/{pause_pid}/ns/{k}") for k in ("net", "ipc", "uts", "pid")}
    host_ns = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("net", "ipc", "uts", "pid")}

    def pid_mode(mode, target=""):
        def set_it(cfg):
            nso = cfg.linux.security_context.namespace_options
            nso.pid = mode
            nso.target_id = target
        return set_it
    own = started(pod, "own", pid_mode(api.CONTAINER))
    assert ns(dcri, own, "net") == pause_ns["net"] and ns(dcri, own, "ipc") == pause_ns["ipc"]
    # Docker gives each container a UTS namespace of its own, with the
    # pod's hostname (as the kubelet's dockershim did).
    assert out(dcri, own, "hostname") == pod[1].hostname
    assert ns(dcri, own, "pid") not in (pause_ns["pid"], host_ns["pid"])
    assert out(dcri, own, "cat /proc/1/cmdline | tr '\\0' ' '") == "sleep 1000"

    shared = started(pod, "shared", pid_mode(api.POD))
    assert ns(dcri, shared, "pid") == pause_ns["pid"]
    assert out(dcri, shared, "cat /proc/1/cmdline | tr '\\0' ' '") == "/pause"

    target = started(pod, "target", pid_mode(api.TARGET, own))
    assert ns(dcri, target, "pid") == ns(dcri, own, "pid")

    node = started(pod, "node", pid_mode(api.NODE))
    assert ns(dcri, node, "pid") == host_ns["pid"]

    def ipc_node(cfg):
        cfg.linux.security_context.namespace_options.ipc = api.NODE
    cid = started(pod, "ipc-node", ipc_node)
    assert ns(dcri, cid, "ipc") == host_ns["ipc"]

    # Sandbox-level sysctls land in the pod's namespaces.
    sb = sandbox_config("sysctl-" + uuid.uuid4().hex[:6])
    sb.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "81"
    sb.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod2 = dcri.run_pod(sb)
    try:
        cid = dcri.start_container(pod2, sb, container_config("c", pod_image(dockerd, pod),
                                                              ["sleep", "1000"]))
        assert out(dcri, cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start "
                   "/proc/sys/kernel/shm_rmid_forced") == "81\n1"
    finally:
        dcri.remove_pod(pod2)


def pod_image(dockerd, pod):
    return [c for c in dockerd.containers() if c["Labels"].get(
        "io.kubernetes.sandbox.id") == pod[0]][0]["Image"]


def cgroup_value(cri, cid, ctrl, name):
    return out(cri, cid, f"cat /sys/fs/cgroup/{ctrl}/{name}")


def test_resources_and_update(dcri, pod):
    def limits(cfg):
        r = linux_resources(cpu_request_milli=250, cpu_limit_milli=500, memory_limit=64 << 20)
        r.cpuset_cpus = "0"
        r.oom_score_adj = 500
        cfg.linux.resources.CopyFrom(r)
    cid = started(pod, "res", limits)
    assert cgroup_value(dcri, cid, "cpu", "cpu.shares") == "256"
    assert cgroup_value(dcri, cid, "cpu", "cpu.cfs_quota_us") == "50000"
    assert cgroup_value(dcri, cid, "cpu", "cpu.cfs_period_us") == "100000"
    assert cgroup_value(dcri, cid, "cpuset", "cpuset.cpus") == "0"
    assert cgroup_value(dcri, cid, "memory", "memory.limit_in_bytes") == str(64 << 20)
    assert out(dcri, cid, "cat /proc/self/oom_score_adj") == "500"
    res = dcri.ContainerStatus(container_id=cid).status.resources.linux
    assert (res.cpu_shares, res.cpu_quota, res.memory_limit_in_bytes) == (256, 50000, 64 << 20)

    new = linux_resources(cpu_request_milli=500, cpu_limit_milli=1000, memory_limit=128 << 20)
    dcri.UpdateContainerResources(container_id=cid, linux=new)
    assert cgroup_value(dcri, cid, "cpu", "cpu.cfs_quota_us") == "100000"
    assert cgroup_value(dcri, cid, "memory", "memory.limit_in_bytes") == str(128 << 20)
    assert dcri.ContainerStatus(container_id=cid).status.resources.linux.cpu_shares == 512

    # The kernel here refuses negative oom_score_adj: crimux clamps instead
    # of failing the container (containerd's restrict_oom_score_adj).
    def negative(cfg):
        cfg.linux.resources.oom_score_adj = -997
    cid = started(pod, "guaranteed", negative)
    with open("/proc/self/oom_score_adj") as f:
        own = int(f.read())
    assert int(out(dcri, cid, "cat /proc/self/oom_score_adj")) == max(own, 0)


def test_cgroup_parent(dcri, lab):
    parent = "/crimux-test-" + uuid.uuid4().hex[:8]
    sb = sandbox_config("cg", cgroup_parent=parent)
    pod_id = dcri.run_pod(sb)
    try:
        cid = dcri.start_container(pod_id, sb, container_config("c", lab.busybox_ref,
                                                                ["sleep", "1000"]))
        assert f"memory:{parent}/{cid}" in out(dcri, cid, "cat /proc/self/cgroup")
    finally:
        dcri.remove_pod(pod_id)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            path = f"/sys/fs/cgroup/{ctrl}{parent}"
            if os.path.isdir(path):
                os.rmdir(path)


def test_mounts_and_devices(dcri, pod, tmp_path, lab):
    api = pb()
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("from the host\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "crimux-prop", str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    try:
        def mounts(cfg):
            cfg.mounts.extend([
                api.Mount(container_path="/ro", host_path=str(link), readonly=True),
                api.Mount(container_path="/rw", host_path=str(data)),
                api.Mount(container_path="/slave", host_path=str(shared),
                          propagation=api.PROPAGATION_HOST_TO_CONTAINER),
            ])
            # Neither is among Docker's always-allowed devices, so their
            # cgroup permissions show.
            cfg.devices.extend([
                api.Device(container_path="/dev/crx-kmsg", host_path="/dev/kmsg",
                           permissions="rw"),
                api.Device(container_path="/dev/crx-ro", host_path="/dev/hwrng",
                           permissions="r"),
            ])
        cid = started(pod, "mounts", mounts)
        assert out(dcri, cid, "cat /ro/hello") == "from the host"
        assert run(dcri, cid, "touch /ro/x")[0] != 0
        out(dcri, cid, "echo from the container > /rw/back")
        assert (data / "back").read_text() == "from the container\n"
        # Mounted on the host after the start: seen inside (rslave).
        (shared / "late").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "crimux-late", str(shared / "late")], check=True)
        (shared / "late" / "file").write_text("late\n")
        assert out(dcri, cid, "cat /slave/late/file") == "late"
        st = {m.container_path: m for m in dcri.ContainerStatus(container_id=cid).status.mounts}
        assert st["/ro"].host_path == str(data) and st["/ro"].readonly
        assert st["/slave"].propagation == api.PROPAGATION_HOST_TO_CONTAINER
        # Devices with their cgroup permissions.
        assert out(dcri, cid, "test -c /dev/crx-ro && echo crimux-test > /dev/crx-kmsg "
                   "&& echo ok") == "ok"
        code, text = run(dcri, cid, "echo crimux-test > /dev/crx-ro")
        assert code != 0 and "not permitted" in text

        def bidi(cfg):
            cfg.linux.security_context.privileged = True
            cfg.mounts.append(api.Mount(container_path="/bidi", host_path=str(shared),
                                        propagation=api.PROPAGATION_BIDIRECTIONAL))
        cid = started(pod, "bidi", bidi)
        out(dcri, cid, "mkdir -p /bidi/inner && mount -t tmpfs crimux-inner /bidi/inner && "
            "echo inner > /bidi/inner/f")
        assert (shared / "inner" / "f").read_text() == "inner\n"

        cfg, go = pod[2]("missing")
        cfg.mounts.append(api.Mount(container_path="/x", host_path=str(tmp_path / "absent")))
        err = rpc_error(dcri.CreateContainer, pod_sandbox_id=pod[0], config=cfg,
                        sandbox_config=pod[1])
        assert err.code() == grpc.StatusCode.NOT_FOUND
    finally:
        dcri.remove_pod(pod[0])
        subprocess.run(["umount", "-R", str(shared)], check=False)


def test_stop_signal_and_oom(dcri, pod):
    api = pb()
    script = "trap 'exit 0' INT; while true; do sleep 0.1; done"
    cid = started(pod, "sigint", command=("sh", "-c", script),
                  setup=lambda c: setattr(c, "stop_signal", api.SIGINT))
    assert dcri.ContainerStatus(container_id=cid).status.stop_signal == api.SIGINT
    dcri.StopContainer(container_id=cid, timeout=10)
    st = dcri.ContainerStatus(container_id=cid).status
    assert (st.exit_code, st.reason) == (0, "Completed")

    def small(cfg):
        cfg.linux.resources.memory_limit_in_bytes = 16 << 20
    cid = started(pod, "oom", command=("sh", "-c", "tail /dev/zero"), setup=small)
    st = dcri.wait_container_state(cid, api.CONTAINER_EXITED, timeout=60)
    assert st.reason == "OOMKilled" and st.exit_code == 137


def test_calls_by_id_prefix_and_of_the_wrong_kind(dcri, pod):
    """Stop, update and remove find a container by a unique ID prefix, as
    crictl passes it; a pod's ID named as a container never reaches its
    pause container."""
    api = pb()
    pod_id = pod[0]
    for call in (dcri.StopContainer, dcri.RemoveContainer):
        try:
            call(container_id=pod_id)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
    assert dcri.PodSandboxStatus(pod_sandbox_id=pod_id).status.state == api.SANDBOX_READY
    assert out(dcri, started(pod, "alive"), "echo ok") == "ok"

    cid = started(pod, "short")
    short = cid[:12]
    dcri.UpdateContainerResources(container_id=short,
                                  linux=linux_resources(cpu_limit_milli=300))
    assert cgroup_value(dcri, cid, "cpu", "cpu.cfs_quota_us") == "30000"
    dcri.StopContainer(container_id=short, timeout=0)
    assert dcri.ContainerStatus(container_id=cid).status.state == api.CONTAINER_EXITED
    dcri.RemoveContainer(container_id=short)
    assert cid not in [c.id for c in dcri.ListContainers().containers]
    dcri.RemoveContainer(container_id=short)  # gone already: still OK
