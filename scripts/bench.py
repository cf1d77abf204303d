"""Runs bench/crimux-bench against a lab containerd, a crimuxd in front of
it, and a crimuxd merging it with a second containerd, with a few pods on
each so that ListContainers has something to list."""

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


MERGED = """
[handler "runc"]
backend = one
[handler "two"]
backend = two
runtime_handler = runc
"""


def run(lab, second):
    crimux = os.path.join(BUILD, "crimuxd")
    single = lab.crimuxd(crimux, log_level="info")
    merged = lab.crimuxd(crimux, {"one": lab.containerd.endpoint, "two": second.endpoint},
                         MERGED, log_level="info")
    with lab_cri.CRI(merged.endpoint) as cri:
        for handler in ("runc", "two"):
            for i in range(PODS):
                cri.run_pod_with_container(lab.busybox_ref, ["sleep", "3600"],
                                           name=f"bench-{handler}-{i}", runtime_handler=handler)
        print(f"# {PODS} pods with one container each on each containerd; "
              "direct and crimux use the first, merged both")
        sys.stdout.flush()
        code = subprocess.call([os.path.join(BUILD, "bench", "crimux-bench"),
                                "--direct", lab.containerd.endpoint,
                                "--crimux", single.endpoint, "--merged", merged.endpoint,
                                "--pid", str(single.pid)] + sys.argv[1:])
        cri.remove_all_pods()
    single.stop()
    merged.stop()
    return code


def main():
    workdir = tempfile.mkdtemp(prefix="crimux-bench-")
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge="crxbench0", subnet="198.18.101.0/24")
    with lab:
        second = env.Containerd(os.path.join(workdir, "containerd2"), lab.registry.host,
                                lab.net.conf_dir).start()
        try:
            code = run(lab, second)
        finally:
            second.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
