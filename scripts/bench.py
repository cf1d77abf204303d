"""Runs bench/crimux-bench against a lab containerd, a crimuxd in front of
it, the same with metrics served and scraped every second, and a crimuxd
merging it with a second containerd, with a few pods on each so that
ListContainers has something to list."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_every_second(port, stop):
    """What a Prometheus server would do, a little more often than usual."""
    while not stop.wait(1):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            r.read()


def run(lab, second):
    crimux = os.path.join(BUILD, "crimuxd")
    single = lab.crimuxd(crimux, log_level="info")
    port = free_port()
    metrics = lab.crimuxd(crimux, extra_config=f"[crimux]\nmetrics_address = 127.0.0.1:{port}\n",
                          log_level="info")
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_every_second, args=(port, stop), daemon=True)
    scraper.start()
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
                                "--crimux", single.endpoint, "--metrics", metrics.endpoint,
                                "--merged", merged.endpoint,
                                "--pid", str(single.pid)] + sys.argv[1:])
        cri.remove_all_pods()
    stop.set()
    scraper.join()
    metrics.stop()
    single.stop()
    merged.stop()
    return code


def main():
    workdir = tempfile.mkdtemp(prefix="crimux-bench-")
    # Where several people share a machine, each lab needs its own network.
    lab = env.Lab(workdir, os.path.join(BUILD, "images", "crimux-pause"),
                  bridge=os.environ.get("CRIMUX_TEST_BRIDGE", "crxbench0"),
                  subnet=os.environ.get("CRIMUX_TEST_SUBNET", "198.18.101.0/24"))
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
