"""Fixtures for integration tests against real components.

Environment:
  CRIMUX_SRCDIR       source tree (default: this repository)
  CRIMUX_BUILDDIR     build tree (default: the source tree); crimuxd and
                      images/crimux-pause are looked up there
  CRIMUX_TEST_DIRECT  "1": the `cri` fixture talks to containerd directly
  CRIMUX_SOAK         "1": run the tests marked soak too (make soak)
  CRIMUX_TEST_BRIDGE, CRIMUX_TEST_SUBNET
                      the lab's CNI bridge (default crxtest0, 198.18.0.0/24)

Every test in this directory needs root; without it they are skipped.
"""

import os
import sys

import grpc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import cri as lab_cri  # noqa: E402
from lab import env  # noqa: E402

SRCDIR = lab_cri.srcdir()
BUILDDIR = os.path.abspath(os.environ.get("CRIMUX_BUILDDIR", SRCDIR))
DIRECT = os.environ.get("CRIMUX_TEST_DIRECT") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))


SOAK = os.environ.get("CRIMUX_SOAK") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs real containerd/crimuxd (root)")
    config.addinivalue_line("markers", "soak: a long fault or bound test, for `make soak` "
                            "(CRIMUX_SOAK=1, or -m soak); the default suite skips it")


def pytest_collection_modifyitems(config, items):
    not_root = pytest.mark.skip(reason="integration tests need root (containerd, CNI, mounts)")
    not_soak = pytest.mark.skip(reason="a soak test: make soak (CRIMUX_SOAK=1, or -m soak)")
    soak_selected = SOAK or "soak" in (config.getoption("-m") or "")
    for item in items:
        if item.get_closest_marker("soak") and not soak_selected:
            item.add_marker(not_soak)
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(not_root)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A started env.Lab: registry with crimux/pause and crimux/busybox,
    CNI network and containerd.  Torn down at the end of the session."""
    workdir = tmp_path_factory.mktemp("lab")
    pause = os.path.join(BUILDDIR, "images", "crimux-pause")
    if not os.path.exists(pause):
        pause = env.build_pause(SRCDIR, str(workdir / "crimux-pause"))
    the_lab = env.Lab(str(workdir), pause,
                      bridge=os.environ.get("CRIMUX_TEST_BRIDGE", "crxtest0"),
                      subnet=os.environ.get("CRIMUX_TEST_SUBNET", "198.18.0.0/24"))
    the_lab.start()
    try:
        yield the_lab
    finally:
        the_lab.stop()


@pytest.fixture(scope="session")
def crimuxd_binary():
    path = os.path.join(BUILDDIR, "crimuxd")
    if not os.access(path, os.X_OK):
        pytest.skip(f"crimuxd is not built ({path} missing)")
    return path


def stop_checked(daemons, must_run=False):
    """Stops each crimuxd. Whatever a test did with it, one still running
    must exit 0 on SIGTERM, and a sanitizer build must have nothing to
    report. must_run: it must not have died on its own either (a daemon
    shared by a whole module)."""
    problems = []
    for daemon in daemons:
        running = daemon.daemon.running()
        code = daemon.stop()
        if must_run and not running:
            problems.append(f"crimuxd died on its own (exit {code}):\n{daemon.log()[-3000:]}")
        elif running and code != 0:
            problems.append(f"crimuxd exited {code} on SIGTERM")
        log = daemon.log()
        if "Sanitizer" in log or "runtime error:" in log:
            problems.append("sanitizer report in crimuxd's log:\n" + log[-4000:])
    assert not problems, "\n".join(problems)


def rpc_error(call, *args, **kwargs):
    """The grpc.RpcError a call raises (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


@pytest.fixture
def crimuxd_factory(lab, crimuxd_binary):
    """start(backends=None, extra_config="") -> a started env.Crimuxd;
    every one started is stopped after the test."""
    started = []

    def start(backends=None, extra_config=""):
        daemon = lab.crimuxd(crimuxd_binary, backends, extra_config)
        started.append(daemon)
        return daemon

    yield start
    stop_checked(started)


@pytest.fixture
def crimuxd(crimuxd_factory):
    """A crimuxd in front of the lab's containerd, fresh for each test."""
    return crimuxd_factory()


@pytest.fixture(scope="session")
def containerd_cri(lab):
    """A CRI client straight to the lab's containerd, for cross-checks."""
    with lab_cri.CRI(lab.containerd.endpoint) as client:
        yield client


@pytest.fixture
def cri(request, lab, containerd_cri):
    """The CRI client under test: crimuxd, or containerd when
    CRIMUX_TEST_DIRECT=1.  Pods left behind by the test are removed."""
    endpoint = (lab.containerd.endpoint if DIRECT
                else request.getfixturevalue("crimuxd").endpoint)
    with lab_cri.CRI(endpoint) as client:
        yield client
    containerd_cri.remove_all_pods()


@pytest.fixture
def log_dir(tmp_path):
    """A directory for PodSandboxConfig.log_directory."""
    path = tmp_path / "pod-logs"
    path.mkdir()
    return str(path)


# --- the docker backend (crimux's dockershim) --------------------------------

@pytest.fixture(scope="session")
def dockerd(lab):
    """A private dockerd (tests/lab/docker.py) beside the lab's containerd."""
    from lab.docker import Dockerd
    daemon = Dockerd(os.path.join(lab.workdir, "docker"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def docker_backend_config(lab, state_dir, **options):
    """The [backend "docker"] keys of a crimuxd in front of the lab's dockerd:
    the lab's CNI network, crimux's own pause image, short poll intervals."""
    keys = {"type": "docker", "state_dir": state_dir, "cni_conf_dir": lab.net.conf_dir,
            "cni_bin_dir": env.CNI_BIN_DIR, "pause_binary": lab.pause_binary,
            "log_poll_interval": "50ms", "stats_layer_ttl": "1s"}
    keys.update(options)
    return '[backend "docker"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items()
                                            if v is not None)


def _start_docker_crimuxd(lab, dockerd, binary, state_dir, extra_config="", **keys):
    daemon = lab.crimuxd(binary, {"docker": dockerd.endpoint},
                         docker_backend_config(lab, state_dir, **keys) + extra_config)
    daemon.state_dir = state_dir
    return daemon


@pytest.fixture
def docker_crimuxd_factory(lab, dockerd, crimuxd_binary, tmp_path_factory):
    """start(state_dir=None, extra_config="", **backend_keys) -> a started
    env.Crimuxd whose only backend is the lab's dockerd; stopped after the test."""
    started = []

    def start(state_dir=None, extra_config="", **keys):
        state = state_dir or str(tmp_path_factory.mktemp("docker-state"))
        daemon = _start_docker_crimuxd(lab, dockerd, crimuxd_binary, state, extra_config,
                                       **keys)
        started.append(daemon)
        return daemon

    yield start
    stop_checked(started)


@pytest.fixture(scope="session")
def docker_crimuxd(lab, dockerd, crimuxd_binary, tmp_path_factory):
    """One crimuxd in front of dockerd for the whole session."""
    daemon = _start_docker_crimuxd(lab, dockerd, crimuxd_binary,
                                   str(tmp_path_factory.mktemp("docker-state")))
    yield daemon
    stop_checked([daemon])


@pytest.fixture
def dcri(docker_crimuxd, dockerd):
    """A CRI client to the docker crimuxd; the test's pods are removed after it."""
    with lab_cri.CRI(docker_crimuxd.endpoint) as client:
        yield client
        client.remove_all_pods()


@pytest.fixture
def testd():
    """tests/stream-testd: the streaming server with a local-process runtime."""
    from lab import streaming
    d = streaming.TestDaemon(streaming.find_testd())
    yield d
    assert d.alive(), "stream-testd died during the test"
    assert d.stop() == 0


@pytest.fixture
def echo():
    """A TCP echo server on loopback, for port-forward tests."""
    from lab import streaming
    e = streaming.EchoServer()
    yield e
    e.stop()
