"""The demo behind scripts/demo: crimux's main job on a private lab. A
loopback registry, a CNI bridge, containerd and dockerd; crimuxd in front
with three handlers; a pod on every handler, created and inspected only
through crimux's socket, as the kubelet would."""

import argparse
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import grpc  # noqa: E402

from lab import cri as lab_cri  # noqa: E402
from lab import env  # noqa: E402
from lab.docker import Dockerd  # noqa: E402

BUILD = os.environ["CRIMUX_BUILDDIR"]

# There is no KVM on these machines: containerd's "kata" runtime is the runc
# shim here, so the kata handler shows crimux's Kata admission rules at work,
# not a VM.
CONFIG = """
[crimux]
default_handler = runc

[handler "runc"]
backend = containerd

[handler "kata"]
backend = containerd
policy = kata

[handler "docker"]
backend = docker

[backend "docker"]
type = docker
state_dir = {workdir}/crimux-docker
cni_conf_dir = {cni}
cni_bin_dir = {cni_bin}
pause_binary = {pause}
"""

# The kubelet sends a pod's resources (the sum of its containers); a Kata pod
# must ask for as much as its limits.
GUARANTEED = lab_cri.linux_resources(cpu_request_milli=500, cpu_limit_milli=500,
                                     memory_limit=512 << 20)


def show_pods(cri):
    print(f"\n{'POD ID':15} {'NAME':14} {'STATE':14} {'HANDLER':8} IP")
    for pod in cri.ListPodSandbox().items:
        status = cri.PodSandboxStatus(pod_sandbox_id=pod.id).status
        state = lab_cri.pb().PodSandboxState.Name(pod.state)
        print(f"{pod.id[:13]:15} {pod.metadata.name:14} {state:14} "
              f"{pod.runtime_handler:8} {status.network.ip}")


def run_demo(lab, dockerd, once):
    config = CONFIG.format(workdir=lab.workdir, cni=lab.net.conf_dir, cni_bin=env.CNI_BIN_DIR,
                           pause=lab.pause_binary)
    crimuxd = lab.crimuxd(os.path.join(BUILD, "crimuxd"),
                          {"containerd": lab.containerd.endpoint, "docker": dockerd.endpoint},
                          config, log_level="info")
    print(f"crimuxd serves CRI v1 on {crimuxd.socket}\n  configuration: {crimuxd.config_path}")
    with lab_cri.CRI(crimuxd.endpoint) as cri:
        v = cri.Version(version="v1")
        print(f"Version: {v.runtime_name} {v.runtime_version}, CRI {v.runtime_api_version}")
        status = cri.Status()
        for cond in status.status.conditions:
            print(f"Status: {cond.type} = {cond.status}")
        print("Handlers: " + ", ".join(h.name or '""' for h in status.runtime_handlers))

        pods = [("demo-runc", "runc", {}, {}),
                ("demo-kata", "kata", {"resources": GUARANTEED}, {"resources": GUARANTEED}),
                ("demo-docker", "docker", {}, {})]
        for name, handler, sandbox_kwargs, container_kwargs in pods:
            pod = cri.run_pod_with_container(
                lab.busybox_ref, ["sh", "-c", "sleep 3600"], name=name,
                runtime_handler=handler, sandbox_kwargs=sandbox_kwargs,
                container_kwargs=container_kwargs)
            out = cri.ExecSync(container_id=pod.container_id,
                               cmd=["sh", "-c", "echo $(hostname) $(ip -4 -o addr show eth0 |"
                                    " awk '{print $4}')"], timeout=10)
            print(f"[{handler}] exec in {pod.container_id[:13]}: {out.stdout.decode().strip()}")

        # The Kata rules, before any backend sees the pod.
        try:
            cri.run_pod(lab_cri.sandbox_config("host-net", host_network=True,
                                               resources=GUARANTEED), "kata")
        except grpc.RpcError as e:
            print(f"\nkata refuses a host-network pod: {e.code().name}: {e.details()}")

        show_pods(cri)
        print(f"\ncrictl --runtime-endpoint {crimuxd.endpoint} pods")
        if not once:
            print("Running; Ctrl-C tears it all down.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        cri.remove_all_pods()
    code = crimuxd.stop()
    print(f"crimuxd stopped (exit {code})")
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="tear down instead of waiting")
    args = parser.parse_args()

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    workdir = tempfile.mkdtemp(prefix="crimux-demo-")
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge="crimux0", subnet="198.18.100.0/24")
    with lab:
        dockerd = Dockerd(os.path.join(workdir, "docker"))
        dockerd.start()
        try:
            code = run_demo(lab, dockerd, args.once)
        finally:
            dockerd.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
