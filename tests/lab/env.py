"""Real components for integration tests and demos.

Each class owns one piece of the lab, keeps all its files under a directory
it is given, and undoes what it did: `start()` returns the object, `stop()`
(or `cleanup()`) tears it down and may be called more than once.  `Lab`
assembles the usual set: a loopback registry holding the project's images,
a CNI bridge network, and a private containerd.
"""

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import grpc

from . import images
from .cri import CRI

CNI_BIN_DIR = "/usr/lib/cni"

# There is no Kata (and no KVM) on these machines: the containerd handler
# named "kata" runs the plain runc shim, so routing and policy are tested for
# real while the isolation is not.
DEFAULT_RUNTIMES = {"runc": "io.containerd.runc.v2", "kata": "io.containerd.runc.v2"}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout, what, interval=0.05):
    """Poll `condition()` until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def build_pause(src, out):
    """Compile the project's pause program statically (what the Makefile does)."""
    subprocess.run(["gcc", "-std=c11", "-O2", "-static", "-o", out,
                    os.path.join(src, "images", "pause.c")], check=True)
    return out


class Daemon:
    """A child process in its own session, with stdout and stderr in a log file."""

    def __init__(self, name, argv, log_path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc = None

    def spawn(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, probe, timeout):
        """Poll `probe()` until true; fail early, with the log, if the process dies."""
        def ready():
            if not self.running():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} "
                                   f"while starting; log:\n{self.log()[-4000:]}")
            return probe()
        try:
            wait_for(ready, timeout, f"{self.name} to answer")
        except TimeoutError:
            self.terminate(signal.SIGKILL)
            raise TimeoutError(f"{self.name} did not answer within {timeout}s; "
                               f"log:\n{self.log()[-4000:]}") from None

    def terminate(self, sig=signal.SIGTERM, timeout=30):
        """Send `sig`, wait, SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _cri_answers(endpoint):
    """True once a CRI endpoint answers Version.  A socket not there yet fails
    at once; a slow first answer is waited for, because a probe that gave up
    would still reach the server later and be counted there as one more call
    (test_metrics compares exact counts)."""
    try:
        with CRI(endpoint) as client:
            client.Version(version="v1", timeout=10)
        return True
    except grpc.RpcError:
        return False


class Registry:
    """A loopback Docker registry (distribution v2) storing under `root`.

    `htpasswd` is an optional {user: password} dict that turns basic auth on.
    """

    def __init__(self, root, port=0, htpasswd=None):
        self.root = root
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.users = dict(htpasswd or {})
        os.makedirs(root, exist_ok=True)
        self.daemon = Daemon("docker-registry",
                             ["/usr/bin/docker-registry", "serve", self._write_config()],
                             os.path.join(root, "registry.log"))

    def _write_config(self):
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": os.path.join(self.root, "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.users:
            path = os.path.join(self.root, "htpasswd")
            with open(path, "w") as f:
                for user, password in self.users.items():
                    f.write(subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                           capture_output=True, text=True).stdout.strip() + "\n")
            config["auth"] = {"htpasswd": {"realm": "crimux-test", "path": path}}
        path = os.path.join(self.root, "config.yml")
        with open(path, "w") as f:
            json.dump(config, f, indent=1)  # JSON is YAML too
        return path

    def _answers(self):
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                self.url + "/v2/", timeout=1)
        except urllib.error.HTTPError:
            pass  # 401 with auth on: it answered
        except OSError:
            return False
        return True

    def start(self, timeout=20):
        self.daemon.spawn()
        self.daemon.wait_ready(self._answers, timeout)
        return self

    def stop(self):
        self.daemon.terminate()

    def push(self, image):
        """Push an images.Image, authenticating as the first user if any."""
        auth = next(iter(self.users.items()), None)
        image.push(self.host, auth)
        return image.ref(self.host)


class CNINetwork:
    """A CNI bridge network of the tests' own (bridge + host-local + portmap).

    IPAM state lives in `ipam_dir` (default: beside conf_dir), not in
    /var/lib/cni, so a lab leaves nothing in the host's CNI state.
    """

    def __init__(self, conf_dir, bridge="crxtest0", subnet="198.18.0.0/24", ipam_dir=None):
        self.conf_dir, self.bridge = conf_dir, bridge
        self.subnet = ipaddress.ip_network(subnet)
        self.ipam_dir = ipam_dir or conf_dir.rstrip("/") + "-ipam"
        self.name = f"crimux-{bridge}"

    def setup(self):
        self.cleanup()  # a bridge of this name can only be a leftover of ours
        os.makedirs(self.conf_dir, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        with open(os.path.join(self.conf_dir, f"10-{self.bridge}.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)
        return self

    def cleanup(self):
        """Delete the bridge and the IPAM state."""
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            subprocess.run(["ip", "link", "delete", self.bridge], check=True)
        subprocess.run(["rm", "-rf", self.ipam_dir], check=True)


class Containerd:
    """A private containerd (1.6, CRI plugin) with everything under `root_dir`:
    root, state, sockets, runc state and the pods' netns mounts.

    Its CRI pulls `registry_host` over plain HTTP (hosts.toml under
    certs.d), uses the CNI config in `cni_conf_dir`, and maps each handler
    in `runtimes` ({name: runtime_type}) to a shim; see DEFAULT_RUNTIMES for
    why "kata" is runc here.
    """

    def __init__(self, root_dir, registry_host, cni_conf_dir, runtimes=None,
                 sandbox_image=None):
        self.root_dir = os.path.abspath(root_dir)
        self.registry_host = registry_host
        self.cni_conf_dir = cni_conf_dir
        self.runtimes = dict(runtimes or DEFAULT_RUNTIMES)
        self.sandbox_image = sandbox_image or \
            f"{registry_host}/{images.PAUSE_REPO}:{images.PAUSE_TAG}"
        self.socket = os.path.join(self.root_dir, "containerd.sock")
        self.endpoint = "unix://" + self.socket
        self.runc_root = os.path.join(self.root_dir, "runc")
        self.certs_dir = os.path.join(self.root_dir, "certs.d")
        os.makedirs(self.root_dir, exist_ok=True)
        self.config_path = self._write_config()
        self.daemon = Daemon("containerd", ["containerd", "--config", self.config_path],
                             os.path.join(self.root_dir, "containerd.log"))

    def _write_config(self):
        q = json.dumps  # a JSON string is a valid TOML basic string
        self.trust_registry(self.registry_host)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        runtimes = "".join(
            f'[{cri}.containerd.runtimes.{q(name)}]\n'
            f'  runtime_type = {q(shim)}\n'
            f'[{cri}.containerd.runtimes.{q(name)}.options]\n'
            f'  Root = {q(self.runc_root)}\n'
            for name, shim in self.runtimes.items())
        default = "runc" if "runc" in self.runtimes else next(iter(self.runtimes))
        r = self.root_dir
        text = f"""\
version = 2
root = {q(os.path.join(r, "root"))}
state = {q(os.path.join(r, "state"))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = {q(self.socket)}
[ttrpc]
  address = {q(self.socket + ".ttrpc")}
[debug]
  address = {q(os.path.join(r, "debug.sock"))}
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {q(os.path.join(r, "opt"))}

[{cri}]
  sandbox_image = {q(self.sandbox_image)}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = {q(default)}
{runtimes}[{cri}.cni]
  bin_dir = {q(CNI_BIN_DIR)}
  conf_dir = {q(self.cni_conf_dir)}
  max_conf_num = 1
[{cri}.registry]
  config_path = {q(self.certs_dir)}
"""
        path = os.path.join(r, "config.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def trust_registry(self, host):
        """Let the CRI pull from `host` (e.g. another Registry's .host) over
        plain HTTP.  containerd reads certs.d on every pull: no restart needed."""
        q = json.dumps
        hosts_dir = os.path.join(self.certs_dir, host)
        os.makedirs(hosts_dir, exist_ok=True)
        with open(os.path.join(hosts_dir, "hosts.toml"), "w") as f:
            f.write(f'server = {q("http://" + host)}\n\n'
                    f'[host.{q("http://" + host)}]\n'
                    f'  capabilities = ["pull", "resolve"]\n')

    def start(self, timeout=60):
        self.daemon.spawn()
        self.daemon.wait_ready(lambda: _cri_answers(self.endpoint), timeout)
        return self

    def stop(self):
        """Remove all pods, stop containerd, then clear what may survive it:
        shims of this instance, runc containers under our runc root, mounts."""
        try:
            if self.daemon.running():
                with CRI(self.endpoint) as client:
                    client.remove_all_pods(timeout=60)
        finally:
            self.daemon.terminate()
            self._kill_shims()
            self._delete_runc_containers()
            unmount_under(self.root_dir)

    def _kill_shims(self):
        shims = [pid for pid, argv in _processes()
                 if argv and os.path.basename(argv[0]).startswith("containerd-shim")
                 and self.socket in argv]
        for pid in shims:
            _signal(pid, signal.SIGKILL)
        wait_for(lambda: all(_started(pid) is None for pid in shims), 10,
                 "containerd shims to exit")

    def _delete_runc_containers(self):
        """Kill and delete the containers that killed shims left to runc."""
        ns_root = os.path.join(self.runc_root, "k8s.io")
        ids = os.listdir(ns_root) if os.path.isdir(ns_root) else []
        inits = []
        for cid in ids:
            try:
                with open(os.path.join(ns_root, cid, "state.json")) as f:
                    state = json.load(f)
                inits.append((state["init_process_pid"], state["init_process_start"]))
            except (OSError, ValueError, KeyError):
                continue
        # Each container's init is PID 1 of its PID namespace: killing it
        # ends the whole container.  The start time guards against PID reuse.
        for pid, start in inits:
            if _started(pid) == start:
                _signal(pid, signal.SIGKILL)
        wait_for(lambda: all(_started(pid) != start for pid, start in inits), 30,
                 "containers of a dead containerd to exit")
        for cid in ids:
            subprocess.run(["runc", "--root", ns_root, "delete", "--force", cid],
                           capture_output=True, check=False)


def _processes():
    """(pid, argv) for every process that can be read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            yield int(entry), [a.decode(errors="replace") for a in argv if a]


def _started(pid):
    """Start time (clock ticks after boot) of a live process, else None;
    a zombie waiting for its reaper counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def unmount_under(path):
    """Unmount every mount point below `path`, deepest first."""
    path = os.path.abspath(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    for point in sorted((p for p in points if p.startswith(path)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class Crimuxd:
    """The crimux daemon under test, configured through an INI file.

    `backends` maps a backend name (a `[backend "NAME"]` section) to its
    endpoint; `extra_config` is appended verbatim to the file.
    """

    def __init__(self, binary, workdir, backends, extra_config="", log_level="debug"):
        self.binary, self.workdir = binary, os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.socket = os.path.join(self.workdir, "crimux.sock")
        self.endpoint = "unix://" + self.socket
        self.config_path = os.path.join(self.workdir, "crimux.conf")
        sections = [f"[crimux]\nsocket = {self.socket}\nlog_level = {log_level}\n"]
        sections += [f'[backend "{name}"]\nendpoint = {endpoint}\n'
                     for name, endpoint in backends.items()]
        with open(self.config_path, "w") as f:
            f.write("\n".join(sections) + ("\n" + extra_config if extra_config else ""))
        self.daemon = Daemon("crimuxd", [binary, "--config", self.config_path],
                             os.path.join(self.workdir, "crimuxd.log"))

    @property
    def pid(self):
        return self.daemon.pid

    def log(self):
        return self.daemon.log()

    def start(self, timeout=20):
        self.daemon.spawn()
        self.daemon.wait_ready(lambda: _cri_answers(self.endpoint), timeout)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal crimuxd and return its exit code (SIGKILL after `timeout`)."""
        return self.daemon.terminate(sig, timeout)

    def kill(self):
        return self.daemon.terminate(signal.SIGKILL)


class Lab:
    """Registry with the project's images, a CNI network and containerd.

    Use as a context manager or call start()/stop(); after start():
    .registry, .net, .containerd, .pause_ref, .busybox_ref, .images.
    """

    def __init__(self, workdir, pause_binary, bridge="crxtest0", subnet="198.18.0.0/24",
                 runtimes=None):
        self.workdir = os.path.abspath(workdir)
        self.pause_binary = pause_binary
        self.registry = Registry(os.path.join(self.workdir, "registry"))
        self.net = CNINetwork(os.path.join(self.workdir, "cni"), bridge, subnet)
        self.containerd = Containerd(os.path.join(self.workdir, "containerd"),
                                     self.registry.host, self.net.conf_dir, runtimes)
        self.images = {"pause": images.pause_image(pause_binary),
                       "busybox": images.busybox_image()}
        self.pause_ref = self.images["pause"].ref(self.registry.host)
        self.busybox_ref = self.images["busybox"].ref(self.registry.host)
        self._crimuxd_count = 0

    def start(self):
        try:
            self.registry.start()
            for image in self.images.values():
                self.registry.push(image)
            self.net.setup()
            self.containerd.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Tear everything down in reverse order; every step runs even if one fails."""
        errors = []
        for step in (self.containerd.stop, self.net.cleanup, self.registry.stop):
            try:
                step()
            except Exception as e:  # keep tearing down, report afterwards
                errors.append(e)
        if errors:
            raise errors[0]

    def crimuxd(self, binary, backends=None, extra_config="", log_level="debug"):
        """Start a crimuxd in front of this lab's containerd (unless `backends`
        says otherwise), with its files in a new workdir/crimuxd<N>."""
        self._crimuxd_count += 1
        return Crimuxd(binary, os.path.join(self.workdir, f"crimuxd{self._crimuxd_count}"),
                       backends or {"containerd": self.containerd.endpoint},
                       extra_config, log_level).start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
