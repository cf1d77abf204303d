"""`crimuxd --check`, the node check, against healthy and broken setups.

The lab's containerd is real (runc, and a "kata" handler that runs the runc
shim: see tests/lab/env.py); cgroup-driver disagreement and runtimes that
list their handlers come from tests/lab/fake_backend.py; the docker backend
is checked against the lab's private dockerd.  Every run must print nothing
on stderr: the check writes findings, it does not log.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from lab.cri import pb
from lab.fake_backend import FakeBackend, abort, reply

import grpc

FINDING = re.compile(r"^(OK|WARN|FAIL) +(.*)$")
FIX = "      fix: "


class Check:
    """One run of `crimuxd --check`: exit code and findings."""

    def __init__(self, proc):
        self.rc, self.out, self.err = proc.returncode, proc.stdout, proc.stderr
        self.findings = []  # [verdict, text, fix or None]
        for line in self.out.splitlines():
            m = FINDING.match(line)
            if m:
                self.findings.append([m.group(1), m.group(2), None])
            elif line.startswith(FIX):
                assert self.findings and self.findings[-1][2] is None, self.out
                self.findings[-1][2] = line[len(FIX):]

    def matching(self, pattern):
        return [f for f in self.findings if re.search(pattern, f[1])]

    def one(self, verdict, pattern):
        """The one finding whose text matches `pattern`, which must have
        this verdict (and a fix unless it is OK)."""
        found = self.matching(pattern)
        assert len(found) == 1, f"{len(found)} findings match {pattern!r}:\n{self.out}"
        f = found[0]
        assert f[0] == verdict, f"expected {verdict}, got {f[0]}: {f[1]}\n{self.out}"
        assert (f[2] is None) == (verdict == "OK"), f"fix line wrong for {f}\n{self.out}"
        return f

    def verdicts(self):
        return {v for v, _, _ in self.findings}

    def __repr__(self):
        return f"exit {self.rc}\n{self.out}{self.err}"


@pytest.fixture
def workdir():
    """A short directory (unix socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="crxc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def check(crimuxd_binary, workdir):
    """check(config_text=None, path=None, wrap=()) -> Check.  The text is
    written to workdir/crimux.conf; `wrap` is a command line that runs
    crimuxd (for namespaces)."""

    def run(text=None, path=None, wrap=()):
        if path is None:
            path = os.path.join(workdir, "crimux.conf")
            with open(path, "w") as f:
                f.write(text)
        proc = subprocess.run([*wrap, crimuxd_binary, "--check", "--config", path],
                              capture_output=True, text=True, timeout=120)
        result = Check(proc)
        assert result.err == "", f"the check wrote to stderr:\n{result.err}"
        assert result.out.splitlines()[-1].endswith(f"exit {result.rc}"), result
        assert result.rc == {"OK": 0, "WARN": 1, "FAIL": 2}[
            max(result.verdicts() or {"OK"}, key=["OK", "WARN", "FAIL"].index)], result
        return result

    return run


def config(workdir, backends, handlers=(), extra=""):
    """A crimux.conf: the socket in workdir, `backends` {name: endpoint or
    dict of keys}, `handlers` [(name, {key: value})]."""
    text = f"[crimux]\nsocket = {workdir}/run/crimux.sock\n{extra}\n"
    for name, keys in backends.items():
        if isinstance(keys, str):
            keys = {"endpoint": keys}
        text += f'[backend "{name}"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())
    for name, keys in handlers:
        text += f'[handler "{name}"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())
    return text


# --------------------------------------------------------------- the lab's containerd

def test_healthy_runc_node(check, workdir, lab, containerd_cri):
    version = containerd_cri.Version(version="v1")
    result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                          [("runc", {"backend": "containerd"})]))
    assert result.rc == 0, result
    assert result.verdicts() == {"OK"}, result
    result.one("OK", r"^configuration: 1 backend, 1 handler \(default: runc\)$")
    result.one("OK", rf"^backend containerd: containerd {re.escape(version.runtime_version)} "
                     rf"\(CRI v1\) at {re.escape(lab.containerd.endpoint)}$")
    result.one("OK", rf"^backend containerd: runtime and network ready "
                     rf"\(CNI configuration in {re.escape(lab.net.conf_dir)}\)$")
    result.one("OK", r'^handler runc: containerd runtime "runc" runs io\.containerd\.runc\.v2$')
    result.one("OK", r"^handler runc: snapshotter overlayfs, as recommended for runc$")
    # containerd 1.6 has no RuntimeConfig: the driver comes from runc's options.
    result.one("OK", r'^cgroup driver: containerd cgroupfs \(runc option SystemdCgroup of '
                     r'runtime "runc"\); the kubelet\'s cgroupDriver must be cgroupfs too$')
    result.one("OK", rf"^socket {re.escape(workdir)}/run/crimux\.sock: not there yet")
    assert not result.matching("/dev/kvm"), "no Kata handler: /dev/kvm is not needed"


def test_single_backend_without_handlers(check, workdir, lab):
    result = check(config(workdir, {"containerd": lab.containerd.endpoint}))
    assert result.rc == 0, result
    result.one("OK", r"^configuration: backend containerd, no \[handler\] sections")
    # What pods without a RuntimeClass get: containerd's default runtime.
    result.one("OK", r'^handler \(default\): containerd runtime "runc" runs '
                     r'io\.containerd\.runc\.v2$')


KATA_HANDLERS = [("runc", {"backend": "containerd"}),
                 ("kata", {"backend": "containerd", "policy": "kata"})]


def test_kata_handler_on_the_runc_shim(check, workdir, lab):
    if os.path.exists("/dev/kvm"):
        pytest.skip("this machine has /dev/kvm")
    result = check(config(workdir, {"containerd": lab.containerd.endpoint}, KATA_HANDLERS))
    assert result.rc == 2, result
    # The lab maps containerd's "kata" to the runc shim: the check says so.
    kata = result.one("WARN", r"^handler kata: not a Kata runtime: it runs "
                              r'io\.containerd\.runc\.v2 \(containerd runtime "kata"\)')
    assert 'runtime_type = "io.containerd.kata.v2"' in kata[2]
    assert 'policy = none in [handler "kata"]' in kata[2]
    snap = result.one("WARN", r"^handler kata: snapshotter overlayfs; devicemapper is "
                              r"recommended for Kata$")
    assert 'snapshotter = "devmapper"' in snap[2]
    kvm = result.one("FAIL", r"^/dev/kvm: missing; the Kata handlers \(kata\) cannot start")
    assert "kvm_intel or kvm_amd" in kvm[2]
    # runc is fine and says so.
    result.one("OK", r'^handler runc: containerd runtime "runc" runs io\.containerd\.runc\.v2$')


def test_kata_handler_with_kvm_is_only_a_warning(check, workdir, lab):
    """In a private mount namespace whose /dev has a kvm node (bound from
    /dev/null, which opens), the same node gets warnings only: exit 1."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    old = os.path.join(workdir, "olddev")
    os.mkdir(old)
    script = (f"set -e; mount --bind /dev {old}; mount -t tmpfs -o mode=0755 crxdev /dev; "
              f"for n in null zero random urandom kvm; do touch /dev/$n; done; "
              f"for n in null zero random urandom; do mount --bind {old}/$n /dev/$n; done; "
              f"mount --bind {old}/null /dev/kvm; umount -l {old}; exec \"$@\"")
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    result = check(config(workdir, {"containerd": lab.containerd.endpoint}, KATA_HANDLERS),
                   wrap=wrap)
    assert result.rc == 1, result
    result.one("OK", r"^/dev/kvm: present, for the Kata handlers \(kata\)$")
    result.one("WARN", r"^handler kata: not a Kata runtime")
    assert result.verdicts() == {"OK", "WARN"}, result


def test_a_backend_down(check, workdir, lab):
    ghost = f"unix://{workdir}/ghost.sock"
    result = check(config(workdir, {"containerd": lab.containerd.endpoint, "ghost": ghost},
                          [("runc", {"backend": "containerd"}),
                           ("spooky", {"backend": "ghost", "policy": "kata"})]))
    assert result.rc == 2, result
    down = result.one("FAIL", r"^backend ghost: not reachable: .*ghost\.sock.*; its handlers "
                              r"are not checked$")
    assert '[backend "ghost"]' in down[2]
    assert not result.matching(r"^handler spooky"), "handlers of a dead backend are skipped"
    # The other backend is still checked in full, and the Kata handler on
    # the dead one still needs /dev/kvm.
    result.one("OK", r"^backend containerd: containerd ")
    result.one("OK", r'^handler runc: containerd runtime "runc"')
    if not os.path.exists("/dev/kvm"):
        result.one("FAIL", r"^/dev/kvm: missing; the Kata handlers \(spooky\)")


def test_a_handler_containerd_does_not_have(check, workdir, lab):
    result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                          [("runc", {"backend": "containerd"}),
                           ("gvisor", {"backend": "containerd", "runtime_handler": "runsc"})]))
    assert result.rc == 2, result
    missing = result.one("FAIL", r'^handler gvisor: containerd \(backend containerd\) has no '
                                 r'runtime "runsc" \(it has: "kata", "runc"\)$')
    assert 'containerd.runtimes.runsc] with runtime_type = "io.containerd.runc.v2"' in missing[2]
    assert re.search(r'\[handler "gvisor"\] \(.*crimux\.conf:\d+\)', missing[2]), missing
    result.one("OK", r'^handler runc: containerd runtime "runc"')


# --------------------------------------------------------------- the socket

def make_socket(path, mode):
    """A unix socket at path that nothing serves (bound, not listening)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, mode)
    return s


@pytest.mark.parametrize("mode,verdict,pattern", [
    (0o666, "FAIL", r"has mode 0666: every user on the node can use the CRI"),
    (0o600, "WARN", r"has mode 0600, but socket_mode is 0660$"),
    (0o660, "OK", r"\(mode 0660\): nothing serves it; crimuxd replaces it"),
], ids=["0666", "0600", "0660"])
def test_socket_mode(check, workdir, lab, mode, verdict, pattern):
    sock = make_socket(f"{workdir}/run/crimux.sock", mode)
    try:
        result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                              [("runc", {"backend": "containerd"})]))
    finally:
        sock.close()
    assert result.rc == {"OK": 0, "WARN": 1, "FAIL": 2}[verdict], result
    found = result.one(verdict, rf"^socket {re.escape(workdir)}/run/crimux\.sock .*{pattern}")
    if verdict == "FAIL":
        assert f"chmod 0660 {workdir}/run/crimux.sock" in found[2]


def test_world_accessible_socket_mode_in_the_config(check, workdir, lab):
    result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                          [("runc", {"backend": "containerd"})], extra="socket_mode = 0666"))
    assert result.rc == 2, result
    found = result.one("FAIL", r"^socket_mode 0666 lets every user on the node use the CRI")
    assert "socket_mode = 0660" in found[2]


def test_world_writable_socket_directory(check, workdir, lab):
    os.makedirs(f"{workdir}/run")
    os.chmod(f"{workdir}/run", 0o777)
    result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                          [("runc", {"backend": "containerd"})]))
    assert result.rc == 2, result
    found = result.one("FAIL", rf"^socket directory {re.escape(workdir)}/run has mode 0777: "
                               r"any user can replace the socket$")
    assert found[2] == f"chmod 0755 {workdir}/run"


def test_a_live_crimuxd_is_fine(check, crimuxd_factory):
    daemon = crimuxd_factory()
    result = check(path=daemon.config_path)
    assert result.rc == 0, result
    result.one("OK", rf"^socket {re.escape(daemon.socket)} \(mode 0660\): crimux \S+ is "
                     r"serving it$")
    assert daemon.daemon.running(), "the check must leave a live crimuxd alone"


def test_a_socket_served_by_another_runtime(check, workdir, lab):
    path = f"{workdir}/run/crimux.sock"
    other = pb().VersionResponse(version="0.1.0", runtime_name="containerd",
                                 runtime_version="1.6.20", runtime_api_version="v1")
    with FakeBackend(path).on("/runtime.v1.RuntimeService/Version",
                              reply(other.SerializeToString())):
        os.chmod(path, 0o660)
        result = check(config(workdir, {"containerd": lab.containerd.endpoint},
                              [("runc", {"backend": "containerd"})]))
    assert result.rc == 2, result
    result.one("FAIL", r"is served by something else \(containerd 1\.6\.20\); crimuxd would "
                       r"take it over$")


# --------------------------------------------------------------- a broken configuration

@pytest.mark.parametrize("text,dropin,where", [
    ("[crimux]\nsocket = /tmp/x.sock\nlog_level = loud\n", None,
     r"crimux\.conf:3: \[crimux\] log_level: \"loud\" is not one of"),
    ('[backend "c"]\nendpoint = /tmp/c.sock\n[handler "k"]\nbackend = c\nkata_min_cpu = lots\n',
     None, r'crimux\.conf:5: \[handler "k"\] kata_min_cpu: "lots" is not a CPU quantity'),
    ('[backend "c"]\nendpoint = /tmp/c.sock\n', "[crimux]\n\nsocket_mode = rw\n",
     r'crimux\.conf\.d/50-x\.conf:3: \[crimux\] socket_mode: "rw" is not an octal file mode'),
], ids=["main-key", "handler-key", "drop-in"])
def test_a_broken_configuration(check, workdir, text, dropin, where):
    if dropin:
        os.makedirs(f"{workdir}/crimux.conf.d")
        with open(f"{workdir}/crimux.conf.d/50-x.conf", "w") as f:
            f.write(dropin)
    result = check(text)
    assert result.rc == 2, result
    found = result.one("FAIL", rf"^configuration: {re.escape(workdir)}/{where}")
    assert "crimuxd refuses to start" in found[2]
    assert len(result.findings) == 1, "nothing else can be checked without a configuration"


# --------------------------------------------------------------- fake backends

def fake_backend(path, name="fake", driver=None, handlers=(), network=True):
    """A CRI endpoint answering Version, Status (with `handlers` listed and
    NetworkReady as given) and RuntimeConfig (`driver`: "SYSTEMD",
    "CGROUPFS", or None for UNIMPLEMENTED, like containerd 1.6)."""
    api = pb()
    version = api.VersionResponse(version="0.1.0", runtime_name=name, runtime_version="9.9",
                                  runtime_api_version="v1")
    conditions = [api.RuntimeCondition(type="RuntimeReady", status=True),
                  api.RuntimeCondition(type="NetworkReady", status=network,
                                       reason="" if network else "NetworkPluginNotReady",
                                       message="" if network else "cni config uninitialized")]
    status = api.StatusResponse(status=api.RuntimeStatus(conditions=conditions),
                                runtime_handlers=[api.RuntimeHandler(name=h) for h in handlers])
    backend = FakeBackend(path)
    svc = "/runtime.v1.RuntimeService/"
    backend.on(svc + "Version", reply(version.SerializeToString()))
    backend.on(svc + "Status", reply(status.SerializeToString()))
    if driver:
        rc = api.RuntimeConfigResponse(
            linux=api.LinuxRuntimeConfiguration(cgroup_driver=getattr(api, driver)))
        backend.on(svc + "RuntimeConfig", reply(rc.SerializeToString()))
    else:
        backend.on(svc + "RuntimeConfig",
                   abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method RuntimeConfig"))
    return backend.start()


@pytest.fixture
def fakes(workdir):
    started = []

    def start(*args, **kwargs):
        backend = fake_backend(*args, **kwargs)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


TWO_FAKES = [("a", {"backend": "f1"}), ("b", {"backend": "f2"})]


def test_cgroup_drivers_disagree(check, workdir, fakes, crimuxd_binary):
    f1 = fakes(f"{workdir}/f1.sock", driver="SYSTEMD")
    f2 = fakes(f"{workdir}/f2.sock", driver="CGROUPFS")
    text = config(workdir, {"f1": f1.endpoint, "f2": f2.endpoint}, TWO_FAKES)
    result = check(text)
    assert result.rc == 2, result
    found = result.one("FAIL", r"^cgroup drivers disagree: f1 systemd \(RuntimeConfig\), "
                               r"f2 cgroupfs \(RuntimeConfig\); crimuxd refuses to start$")
    assert "native.cgroupdriver" in found[2] and "SystemdCgroup" in found[2]
    # What the check predicts is what crimuxd does.
    proc = subprocess.run([crimuxd_binary, "--config", f"{workdir}/crimux.conf"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "disagree on the cgroup driver" in proc.stderr, proc


def test_cgroup_drivers_agree_or_are_unknown(check, workdir, fakes):
    f1 = fakes(f"{workdir}/f1.sock", driver="CGROUPFS")
    f2 = fakes(f"{workdir}/f2.sock", driver="CGROUPFS")
    f3 = fakes(f"{workdir}/f3.sock", driver=None)
    result = check(config(workdir, {"f1": f1.endpoint, "f2": f2.endpoint, "f3": f3.endpoint},
                          TWO_FAKES + [("c", {"backend": "f3"})]))
    assert result.rc == 0, result
    result.one("OK", r"^cgroup driver: f1 cgroupfs \(RuntimeConfig\), f2 cgroupfs "
                     r"\(RuntimeConfig\); not reported by f3 \(RuntimeConfig is newer than "
                     r"their CRI\); the kubelet's cgroupDriver must be cgroupfs too$")
    # These fakes describe no runtimes: the handlers cannot be checked.
    result.one("OK", r'^handler a: fake \(backend f1\) does not describe its runtimes; "a" not '
                     r"checked$")


def test_runtimes_a_backend_lists(check, workdir, fakes):
    f1 = fakes(f"{workdir}/f1.sock", name="lister", handlers=["a", "other"])
    f2 = fakes(f"{workdir}/f2.sock", handlers=["x"], network=False)
    result = check(config(workdir, {"f1": f1.endpoint, "f2": f2.endpoint}, TWO_FAKES))
    assert result.rc == 2, result
    result.one("OK", r'^handler a: lister \(backend f1\) has runtime "a"$')
    result.one("FAIL", r'^handler b: fake \(backend f2\) has no runtime "b" \(it has: "x"\)$')
    net = result.one("FAIL", r"^backend f2: network not ready: NetworkPluginNotReady: cni "
                             r"config uninitialized$")
    assert "CNI network configuration" in net[2]
    result.one("OK", r"^backend f1: runtime and network ready$")
    result.one("OK", r"^backend f1: lister 9\.9 \(CRI v1\) at ")


def test_a_backend_that_is_crimux_itself(check, workdir):
    result = check(config(workdir, {"self": f"unix://{workdir}/run/crimux.sock"}))
    assert result.rc == 2, result
    result.one("FAIL", r"^backend self: unix://.*/run/crimux\.sock is crimux's own socket$")


# --------------------------------------------------------------- the docker backend

def test_docker_backend(check, workdir, lab, dockerd, crimuxd_binary):
    state_dir = f"{workdir}/docker-state"
    backends = {
        "containerd": lab.containerd.endpoint,
        "docker": {"type": "docker", "endpoint": dockerd.endpoint, "state_dir": state_dir,
                   "cni_conf_dir": lab.net.conf_dir},
    }
    handlers = [("runc", {"backend": "containerd"}), ("docker", {"backend": "docker"}),
                ("dock", {"backend": "docker"})]
    result = check(config(workdir, backends, handlers))
    if result.matching(r'unknown backend type "docker"'):
        pytest.skip("this build has no docker backend")
    info = dockerd.request("GET", "/info")
    version = dockerd.request("GET", "/version")
    result.one("OK", rf"^backend docker: docker {re.escape(version['Version'])} "
                     rf"\(API {re.escape(version['ApiVersion'])}\) at "
                     rf"{re.escape(dockerd.endpoint)}$")
    assert info["Driver"] == "overlay2"
    result.one("OK", r"^backend docker: storage driver overlay2, as recommended for Docker$")
    result.one("OK", rf"^backend docker: network ready \(CNI configuration "
                     rf"{re.escape(lab.net.conf_dir)}/\S+\.conflist\)$")
    result.one("OK", r"^handler docker: docker \(backend docker\)$")
    # The docker backend serves one runtime handler, "docker" by default.
    dock = result.one("FAIL", r'^handler dock: the docker backend docker serves runtime '
                              r'"docker", not "dock"$')
    assert dock[2].startswith('set runtime_handler = docker in [handler "dock"]')
    result.one("OK", r"^cgroup driver: containerd cgroupfs \(runc option SystemdCgroup of "
                     r'runtime "runc"\), docker cgroupfs \(docker info\);')
    assert result.rc == 2, result
    # The check asked dockerd itself: the backend's state (where a running
    # crimuxd keeps log positions) was not touched.
    assert not os.path.exists(state_dir)


def test_docker_backend_down(check, workdir):
    result = check(config(workdir, {"docker": {"type": "docker",
                                               "endpoint": f"{workdir}/docker.sock"}}))
    if result.matching(r'unknown backend type "docker"'):
        pytest.skip("this build has no docker backend")
    assert result.rc == 2, result
    found = result.one("FAIL", rf"^backend docker: dockerd not reachable at "
                               rf"unix://{re.escape(workdir)}/docker\.sock: cannot connect")
    assert "systemctl start docker" in found[2]
