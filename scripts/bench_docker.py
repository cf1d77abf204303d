"""Runs bench/crimux-bench-docker: a lab (registry, CNI, containerd), a
private dockerd, a crimuxd whose only backend is that dockerd and one in
front of the containerd, so the lists can be compared with containerd's.
Then prints, from the docker crimuxd's metrics, how much of each call it
served was dockerd's and how much its own."""

import collections
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from lab import env  # noqa: E402
from lab.docker import Dockerd  # noqa: E402

BUILD = os.environ["CRIMUX_BUILDDIR"]


def docker_config(lab, state_dir):
    keys = {"type": "docker", "state_dir": state_dir, "cni_conf_dir": lab.net.conf_dir,
            "cni_bin_dir": env.CNI_BIN_DIR, "pause_binary": lab.pause_binary}
    return '[backend "docker"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r'^(\w+)\{method="(\w+)",backend="docker"\} (\S+)$')


def own_part(port):
    """Per CRI method the docker backend served in the run: calls, mean
    duration in crimuxd, and the mean of crimux's own part of it (less the
    time its Docker Engine requests took), from crimuxd's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    seen = collections.defaultdict(dict)
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            seen[m.group(2)][m.group(1)] = float(m.group(3))
    print("# where a docker call's time goes, from crimuxd's metrics: mean per call over the"
          " whole run, from its arrival to its status, milliseconds; own = less the time its"
          " Docker Engine requests took")
    print(f"{'method':<26}{'calls':>7}{'in crimuxd':>12}{'dockerd':>10}{'own':>8}")
    for method, v in sorted(seen.items()):
        n = v.get("crimux_cri_docker_overhead_seconds_count", 0)
        if not n:
            continue
        took = v["crimux_cri_call_duration_seconds_sum"] / v[
            "crimux_cri_call_duration_seconds_count"] * 1e3
        own = v["crimux_cri_docker_overhead_seconds_sum"] / n * 1e3
        print(f"{method:<26}{int(n):>7}{took:>12.2f}{took - own:>10.2f}{own:>8.2f}")


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
            port = free_port()
            dk = lab.crimuxd(crimux, {"docker": dockerd.endpoint},
                             docker_config(lab, state) +
                             f"[crimux]\nmetrics_address = 127.0.0.1:{port}\n",
                             log_level="info")
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
            sys.stdout.flush()
            if code == 0:
                own_part(port)
            dk.stop()
            runc.stop()
        finally:
            dockerd.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
