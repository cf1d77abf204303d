"""Runs bench/crimux-bench against a lab containerd and a crimuxd in front of
it, with a few pods running so that ListContainers has something to list."""

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from lab import cri as lab_cri  # noqa: E402
from lab import env  # noqa: E402

BUILD = os.environ["CRIMUX_BUILDDIR"]
PODS = 3


def main():
    workdir = tempfile.mkdtemp(prefix="crimux-bench-")
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge="crxbench0", subnet="198.18.101.0/24")
    with lab:
        crimuxd = lab.crimuxd(os.path.join(BUILD, "crimuxd"), log_level="info")
        with lab_cri.CRI(crimuxd.endpoint) as cri:
            for i in range(PODS):
                cri.run_pod_with_container(lab.busybox_ref, ["sleep", "3600"],
                                           name=f"bench-{i}")
            print(f"# {PODS} pods with one container each on containerd")
            sys.stdout.flush()
            code = subprocess.call([os.path.join(BUILD, "bench", "crimux-bench"),
                                    "--direct", lab.containerd.endpoint,
                                    "--crimux", crimuxd.endpoint,
                                    "--pid", str(crimuxd.pid)] + sys.argv[1:])
            cri.remove_all_pods()
        crimuxd.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
