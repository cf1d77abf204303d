"""The demo behind scripts/demo: a private lab (loopback registry, CNI
bridge, containerd) with crimuxd in front, and a pod on every handler,
created and inspected only through crimux's socket."""

import argparse
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from lab import cri as lab_cri  # noqa: E402
from lab import env  # noqa: E402

BUILD = os.environ["CRIMUX_BUILDDIR"]
HANDLERS = [""]  # "" is the default handler


def show_pods(cri):
    pods = cri.ListPodSandbox().items
    print(f"\n{'POD ID':15} {'NAME':14} {'STATE':14} {'HANDLER':10} IP")
    for pod in pods:
        status = cri.PodSandboxStatus(pod_sandbox_id=pod.id).status
        state = lab_cri.pb().PodSandboxState.Name(pod.state)
        print(f"{pod.id[:13]:15} {pod.metadata.name:14} {state:14} "
              f"{pod.runtime_handler or '(default)':10} {status.network.ip}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="tear down instead of waiting")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="crimux-demo-")
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge="crimux0", subnet="198.18.100.0/24")
    with lab:
        crimuxd = lab.crimuxd(os.path.join(BUILD, "crimuxd"))
        print(f"crimuxd serves CRI v1 on {crimuxd.socket} (config {crimuxd.config_path})")
        with lab_cri.CRI(crimuxd.endpoint) as cri:
            v = cri.Version(version="v1")
            print(f"Version: {v.runtime_name} {v.runtime_version}, CRI {v.runtime_api_version}")
            for cond in cri.Status().status.conditions:
                print(f"Status: {cond.type} = {cond.status}")
            cri.pull(lab.busybox_ref)
            for handler in HANDLERS:
                name = f"demo-{handler or 'default'}"
                pod = cri.run_pod_with_container(
                    lab.busybox_ref, ["sh", "-c", "echo hello from $(hostname); sleep 3600"],
                    name=name, runtime_handler=handler)
                out = cri.ExecSync(container_id=pod.container_id,
                                   cmd=["sh", "-c", "hostname; ip -4 -o addr show eth0"],
                                   timeout=10)
                print(f"\n[{name}] exec in container {pod.container_id[:13]}:\n"
                      + out.stdout.decode().rstrip())
            show_pods(cri)
            print(f"\ncrictl: crictl --runtime-endpoint {crimuxd.endpoint} pods")
            if not args.once:
                print("Running; Ctrl-C tears it all down.")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            cri.remove_all_pods()
        code = crimuxd.stop()
        print(f"crimuxd stopped (exit {code})")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
