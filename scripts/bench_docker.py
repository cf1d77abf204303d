"""Runs bench/crimux-bench-docker: a lab (registry, CNI, containerd), a
private dockerd, a crimuxd whose only backend is that dockerd and one in
front of the containerd, so the lists can be compared with containerd's."""

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from lab import env  # noqa: E402
from lab.docker import Dockerd  # noqa: E402

BUILD = os.environ["CRIMUX_BUILDDIR"]


def docker_config(lab, state_dir):
    keys = {"type": "docker", "state_dir": state_dir, "cni_conf_dir": lab.net.conf_dir,
            "cni_bin_dir": env.CNI_BIN_DIR, "pause_binary": lab.pause_binary}
    return '[backend "docker"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())


def main():
    workdir = tempfile.mkdtemp(prefix="crimux-bench-docker-")
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge=os.environ.get("CRIMUX_BENCH_BRIDGE", "crxbench1"),
                  subnet=os.environ.get("CRIMUX_BENCH_SUBNET", "198.18.102.0/24"))
    code = 1
    with lab:
        dockerd = Dockerd(os.path.join(workdir, "docker"))
        dockerd.start()
        try:
            crimux = os.path.join(BUILD, "crimuxd")
            state = os.path.join(workdir, "docker-state")
            os.makedirs(state)
            logs = os.path.join(workdir, "pod-logs")
            os.makedirs(logs)
            dk = lab.crimuxd(crimux, {"docker": dockerd.endpoint},
                             docker_config(lab, state), log_level="info")
            runc = lab.crimuxd(crimux, log_level="info")
            print(f"# lab in {workdir}; docker backend crimuxd pid {dk.pid}")
            sys.stdout.flush()
            code = subprocess.call([
                os.path.join(BUILD, "bench", "crimux-bench-docker"),
                "--docker", dockerd.socket, "--crimux", dk.endpoint, "--crimux-pid", str(dk.pid),
                "--containerd", lab.containerd.endpoint, "--crimux-runc", runc.endpoint,
                "--image", lab.busybox_ref,
                "--cni-conf-dir", lab.net.conf_dir, "--cni-bin-dir", env.CNI_BIN_DIR,
                "--log-dir", logs] + sys.argv[1:])
            dk.stop()
            runc.stop()
        finally:
            dockerd.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
