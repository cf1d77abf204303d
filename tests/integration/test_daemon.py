"""crimuxd as a program: command line, configuration errors, its socket and
lock, signals and shutdown, and what its log must never contain.

Most tests run the real binary in front of tests/lab/fake_backend.py, with
configuration files written here; the log test uses the lab's containerd.
"""

import base64
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid

import grpc
import pytest

from lab import env, images
from lab.cri import CRI, pb
from lab.fake_backend import FakeBackend, abort, forever, reply, sleep

UNARY = "/runtime.v1.RuntimeService/ContainerStatus"
STREAM = "/runtime.v1.RuntimeService/GetContainerEvents"


@pytest.fixture
def short_dir():
    """A fresh directory with a short path (unix socket paths are limited)."""
    path = tempfile.mkdtemp(prefix="crxd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir):
    backend = FakeBackend(os.path.join(short_dir, "fake", "fake.sock")).start()
    yield backend
    backend.stop()


def sanitizer_report(output):
    """A sanitizer build's complaint in `output`, if any."""
    if "Sanitizer" in output or "runtime error:" in output:
        return output[-4000:]
    return None


@pytest.fixture
def daemons(short_dir):
    """Every env.Daemon a test spawns; afterwards (before short_dir, which
    holds their logs, goes) each one still running must exit 0 on SIGTERM,
    and none may have a sanitizer report in its log."""
    spawned = []
    yield spawned
    problems = []
    for daemon in spawned:
        if daemon.running():
            code = daemon.terminate(signal.SIGTERM, 15)
            if code != 0:
                problems.append(f"crimuxd exited {code} on SIGTERM")
        report = sanitizer_report(daemon.log())
        if report:
            problems.append(report)
    assert not problems, "\n".join(problems)


def run(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert not sanitizer_report(out.stderr), out.stderr
    return out


def write_config(directory, socket, backend, extra=""):
    path = os.path.join(directory, "crimux.conf")
    with open(path, "w") as f:
        f.write(f"[crimux]\nsocket = {socket}\nlog_level = debug\n{extra}\n"
                f'[backend "fake"]\nendpoint = {backend}\n')
    return path


def answers(endpoint):
    try:
        with CRI(endpoint) as client:
            client.Version(version="v1", timeout=1)
        return True
    except grpc.RpcError:
        return False


def spawn(daemons, binary, config, log_path, socket=None):
    """Start crimuxd on `config`; if `socket` is given, wait until it answers there."""
    daemon = env.Daemon("crimuxd", [binary, "--config", config], log_path)
    daemons.append(daemon)
    daemon.spawn()
    if socket:
        daemon.wait_ready(lambda: answers("unix://" + socket), 20)
    return daemon


class Served:
    """A crimuxd in front of the fake backend, with a socket in short_dir."""

    def __init__(self, daemons, binary, short_dir, fake, extra=""):
        self.socket = os.path.join(short_dir, "run", "crimux.sock")
        self.endpoint = "unix://" + self.socket
        self.config = write_config(short_dir, self.socket, fake.endpoint, extra)
        self.daemon = spawn(daemons, binary, self.config,
                            os.path.join(short_dir, "crimuxd.log"), self.socket)

    def wait_exit(self, timeout):
        """Exit code and seconds it took, from now."""
        start = time.monotonic()
        code = self.daemon.proc.wait(timeout)
        return code, time.monotonic() - start


# ------------------------------------------------------------------ command line

def test_help(crimuxd_binary):
    out = run(crimuxd_binary, "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("Usage: crimuxd")
    for option in ("--config", "--help", "--version"):
        assert option in out.stdout
    assert out.stderr == ""
    assert run(crimuxd_binary, "-h").stdout == out.stdout


def test_version_matches_what_it_serves(crimuxd_binary, daemons, short_dir, fake):
    out = run(crimuxd_binary, "--version")
    assert out.returncode == 0
    m = re.fullmatch(r"crimuxd (\d+\.\d+\.\d+\S*) \(CRI v1\)\n", out.stdout)
    assert m, out.stdout
    assert run(crimuxd_binary, "-V").stdout == out.stdout

    served = Served(daemons, crimuxd_binary, short_dir, fake)
    with CRI(served.endpoint) as client:
        version = client.Version(version="v1")
    assert (version.runtime_name, version.runtime_version, version.runtime_api_version) == \
        ("crimux", m.group(1), "v1")


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized option '--bogus'"),
    (["-x"], "invalid option -- 'x'"),
    (["--config"], "requires an argument"),
    (["surplus"], 'unexpected argument "surplus"'),
])
def test_bad_command_line(crimuxd_binary, args, message):
    out = run(crimuxd_binary, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Usage: crimuxd" in out.stderr
    assert out.stdout == ""


# ------------------------------------------------------------------ configuration errors

GOOD_BACKEND = '[backend "c"]\nendpoint = unix:///run/c.sock\n'

# (main file, {drop-in name: text}, (file, line) or None, what stderr must name)
BAD_CONFIGS = {
    "log-level": ("[crimux]\nsocket = SOCK\nlog_level = loud\n" + GOOD_BACKEND, {},
                  ("crimux.conf", 3), ["[crimux] log_level", '"loud"']),
    "relative-socket": ("[crimux]\n\nsocket = run/crimux.sock\n" + GOOD_BACKEND, {},
                        ("crimux.conf", 3), ["[crimux] socket", "absolute"]),
    "socket-mode": ("[crimux]\nsocket = SOCK\nsocket_mode = 0999\n" + GOOD_BACKEND, {},
                    ("crimux.conf", 3), ["[crimux] socket_mode", '"0999"']),
    "shutdown-timeout": ("[crimux]\nsocket = SOCK\nshutdown_timeout = soon\n" + GOOD_BACKEND,
                         {}, ("crimux.conf", 3), ["[crimux] shutdown_timeout", '"soon"']),
    "unknown-key": ("# comment\n[crimux]\nsocket = SOCK\nsockets = /x\n" + GOOD_BACKEND, {},
                    ("crimux.conf", 4), ["[crimux] sockets", "unknown key"]),
    "unknown-section": ("[crimux]\nsocket = SOCK\n[runtime]\nname = x\n" + GOOD_BACKEND, {},
                        ("crimux.conf", 4), ["[runtime] name", "unknown section"]),
    "outside-section": ("socket = SOCK\n[crimux]\n" + GOOD_BACKEND, {},
                        ("crimux.conf", 1), ["socket", "outside any section"]),
    "tcp-endpoint": ("[crimux]\nsocket = SOCK\n" + GOOD_BACKEND +
                     '[backend "d"]\nendpoint = tcp://127.0.0.1:1\n', {},
                     ("crimux.conf", 6), ['[backend "d"] endpoint', "tcp://127.0.0.1:1"]),
    "backend-type": ("[crimux]\nsocket = SOCK\n" + GOOD_BACKEND + "type = podman\n", {},
                     ("crimux.conf", 5), ['[backend "c"] type', '"podman"']),
    "backend-key": ("[crimux]\nsocket = SOCK\n" + GOOD_BACKEND + "colour = blue\n", {},
                    ("crimux.conf", 5), ['[backend "c"] colour', "unknown key"]),
    "syntax": ("[crimux]\nsocket = SOCK\n[backend \"c\"\nendpoint = /c.sock\n", {},
               ("crimux.conf", 3), ["syntax error"]),
    "no-endpoint": ("[crimux]\nsocket = SOCK\n[backend \"c\"]\ntype = cri\n", {},
                    None, ['[backend "c"] has no endpoint']),
    "no-backend": ("[crimux]\nsocket = SOCK\n", {}, None, ["no backend configured"]),
    "dropin-value": ("[crimux]\nsocket = SOCK\n" + GOOD_BACKEND,
                     {"10-ok.conf": "[crimux]\nlog_level = info\n",
                      "20-bad.conf": "# bad one\n[crimux]\nshutdown_timeout = -3s\n"},
                     ("crimux.conf.d/20-bad.conf", 3), ["[crimux] shutdown_timeout"]),
    "dropin-backend-key": ("[crimux]\nsocket = SOCK\n" + GOOD_BACKEND,
                           {"50-extra.conf": '\n[backend "c"]\nflavour = mint\n'},
                           ("crimux.conf.d/50-extra.conf", 3),
                           ['[backend "c"] flavour', "unknown key"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_refused(crimuxd_binary, short_dir, case):
    main, dropins, where, needles = BAD_CONFIGS[case]
    socket = os.path.join(short_dir, "run", "crimux.sock")
    config = os.path.join(short_dir, "crimux.conf")
    with open(config, "w") as f:
        f.write(main.replace("SOCK", socket))
    if dropins:
        os.mkdir(config + ".d")
    for name, text in dropins.items():
        with open(os.path.join(config + ".d", name), "w") as f:
            f.write(text)

    out = run(crimuxd_binary, "--config", config)

    assert out.returncode != 0
    err = out.stderr
    if where:
        file, line = where
        assert f"{os.path.join(short_dir, file)}:{line}:" in err, err
    else:
        assert config in err, err
    for needle in needles:
        assert needle in err, err
    assert len(err.strip().splitlines()) == 1, "one clear line, not a cascade: " + err
    assert not os.path.exists(socket)


def test_missing_config_file(crimuxd_binary, short_dir):
    config = os.path.join(short_dir, "nowhere.conf")
    out = run(crimuxd_binary, "--config", config)
    assert out.returncode != 0
    assert f"cannot read {config}: No such file or directory" in out.stderr


def test_socket_directory_cannot_be_made(crimuxd_binary, short_dir, fake):
    blocker = os.path.join(short_dir, "file")
    open(blocker, "w").close()
    socket = os.path.join(blocker, "run", "crimux.sock")
    out = run(crimuxd_binary, "--config", write_config(short_dir, socket, fake.endpoint))
    assert out.returncode != 0
    assert f"cannot create the directory of {socket}" in out.stderr


def test_socket_path_is_a_regular_file(crimuxd_binary, short_dir, fake):
    # gRPC unlinks a stale socket before binding; anything else must survive.
    socket = os.path.join(short_dir, "crimux.sock")
    with open(socket, "w") as f:
        f.write("precious\n")
    out = run(crimuxd_binary, "--config", write_config(short_dir, socket, fake.endpoint))
    assert out.returncode != 0
    assert f"cannot listen on unix://{socket}" in out.stderr
    with open(socket) as f:
        assert f.read() == "precious\n"


def test_socket_path_too_long(crimuxd_binary, short_dir, fake):
    socket = os.path.join(short_dir, "d" * (108 - len(short_dir)), "crimux.sock")
    config = write_config(short_dir, socket, fake.endpoint)
    out = run(crimuxd_binary, "--config", config)
    assert out.returncode != 0
    assert f"{config}:2: [crimux] socket" in out.stderr, out.stderr
    assert not os.path.exists(os.path.dirname(socket)), "nothing made for a refused config"


# ------------------------------------------------------------------ socket and lock

def test_socket_mode_and_parent_directory(crimuxd_binary, daemons, short_dir, fake):
    served = Served(daemons, crimuxd_binary, short_dir, fake)
    st = os.stat(served.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert os.path.isdir(os.path.dirname(served.socket))


def test_socket_mode_from_dropin(crimuxd_binary, daemons, short_dir, fake):
    socket = os.path.join(short_dir, "a", "b", "c", "crimux.sock")
    config = write_config(short_dir, socket, fake.endpoint)
    os.mkdir(config + ".d")
    with open(os.path.join(config + ".d", "10-mode.conf"), "w") as f:
        f.write("[crimux]\nsocket_mode = 0600\n")
    with open(os.path.join(config + ".d", "20-ignored.conf.disabled"), "w") as f:
        f.write("this is not read\n")
    spawn(daemons, crimuxd_binary, config, os.path.join(short_dir, "crimuxd.log"), socket)
    assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600


def test_second_instance_is_refused(crimuxd_binary, daemons, short_dir, fake):
    first = Served(daemons, crimuxd_binary, short_dir, fake)
    inode = os.stat(first.socket).st_ino

    second = spawn(daemons, crimuxd_binary, first.config, os.path.join(short_dir, "second.log"))
    code = second.proc.wait(10)

    assert code != 0
    assert f"another crimuxd is serving {first.socket}" in second.log()
    assert first.daemon.running()
    assert os.stat(first.socket).st_ino == inode, "the second instance replaced the socket"
    with CRI(first.endpoint) as client:
        assert client.Version(version="v1").runtime_name == "crimux"
        assert client.raw(UNARY, b"still first") == b"still first"
    assert fake.calls(UNARY)[-1].request == b"still first"


def test_restart_after_sigkill(crimuxd_binary, daemons, short_dir, fake):
    """A killed crimuxd leaves its socket and lock file behind; the next one
    must start anyway."""
    first = Served(daemons, crimuxd_binary, short_dir, fake)
    first.daemon.terminate(signal.SIGKILL)
    assert os.path.exists(first.socket)
    again = spawn(daemons, crimuxd_binary, first.config, os.path.join(short_dir, "again.log"),
                  first.socket)
    with CRI(first.endpoint) as client:
        assert client.raw(UNARY, b"again") == b"again"
    assert again.running()


# ------------------------------------------------------------------ signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_lets_call_in_flight_finish(crimuxd_binary, daemons, short_dir, fake, sig):
    fake.on(UNARY, sleep(2))
    served = Served(daemons, crimuxd_binary, short_dir, fake, "shutdown_timeout = 10s")
    with CRI(served.endpoint) as client:
        pending = client.channel.unary_unary(UNARY).future(b"in flight", timeout=30)
        fake.wait_call(UNARY)
        os.kill(served.daemon.pid, sig)
        signalled = time.monotonic()

        # No new calls once stopping, while the old one still runs.
        time.sleep(0.3)
        assert served.daemon.running()
        with CRI(served.endpoint) as late:
            with pytest.raises(grpc.RpcError) as err:
                late.Version(version="v1", timeout=1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not pending.done()

        assert pending.result(timeout=10) == b"in flight"
        code, _ = served.wait_exit(10)
        took = time.monotonic() - signalled

    assert code == 0
    assert 1.5 < took < 5, "it should exit once the call is done, not at the grace deadline"
    assert not os.path.exists(served.socket)
    assert not fake.calls(UNARY)[0].cancelled


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_cancels_endless_stream(crimuxd_binary, daemons, short_dir, fake, sig):
    fake.on(STREAM, forever(interval=0.05))
    served = Served(daemons, crimuxd_binary, short_dir, fake, "shutdown_timeout = 1s")
    with CRI(served.endpoint) as client:
        responses = client.raw(STREAM, b"", stream=True, timeout=60)
        assert next(responses) == b"0"
        os.kill(served.daemon.pid, sig)

        code, took = served.wait_exit(10)
        with pytest.raises(grpc.RpcError):
            for _ in responses:
                pass

    assert code == 0
    assert 0.8 < took < 3, f"exit {took:.2f}s after the signal, shutdown_timeout is 1s"
    assert fake.wait_call(STREAM).wait_cancelled(5), "the backend's stream was not cancelled"
    assert not os.path.exists(served.socket)
    assert "cancelled 1 call(s)" in served.daemon.log()


def test_stop_cancels_slow_call_at_grace_deadline(crimuxd_binary, daemons, short_dir, fake):
    fake.on(UNARY, sleep(30))
    served = Served(daemons, crimuxd_binary, short_dir, fake, "shutdown_timeout = 500ms")
    with CRI(served.endpoint) as client:
        pending = client.channel.unary_unary(UNARY).future(b"slow", timeout=60)
        call = fake.wait_call(UNARY)
        os.kill(served.daemon.pid, signal.SIGTERM)
        code, took = served.wait_exit(10)
        error = pending.exception(timeout=5)

    assert code == 0
    assert 0.4 < took < 2.5, f"exit {took:.2f}s after SIGTERM, shutdown_timeout is 500ms"
    assert error is not None and error.code() != grpc.StatusCode.OK
    assert call.wait_cancelled(5), "the backend's call was not cancelled"
    assert not os.path.exists(served.socket)


def test_idle_stop_is_prompt(crimuxd_binary, daemons, short_dir, fake):
    served = Served(daemons, crimuxd_binary, short_dir, fake, "shutdown_timeout = 10s")
    os.kill(served.daemon.pid, signal.SIGTERM)
    code, took = served.wait_exit(15)
    assert code == 0
    assert took < 1, "nothing in flight: no reason to wait for the grace period"
    assert not os.path.exists(served.socket)


def test_sighup_keeps_serving(crimuxd_binary, daemons, short_dir, fake):
    served = Served(daemons, crimuxd_binary, short_dir, fake)
    os.kill(served.daemon.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert served.daemon.running()
    with CRI(served.endpoint) as client:
        assert client.raw(UNARY, b"after hup") == b"after hup"


# ------------------------------------------------------------------ the log

def logged(daemon, pattern, timeout=5):
    """The first match of `pattern` in the daemon's log, waiting for it."""
    return env.wait_for(lambda: re.search(pattern, daemon.log(), re.M), timeout,
                        f"/{pattern}/ in crimuxd's log")


def test_request_log_at_info(crimuxd_binary, daemons, short_dir, fake):
    fake.on(UNARY, reply(b"r" * 500))
    fake.on(STREAM, abort(grpc.StatusCode.FAILED_PRECONDITION, "not today"))
    socket = os.path.join(short_dir, "crimux.sock")
    config = write_config(short_dir, socket, fake.endpoint)
    with open(config, "a") as f:
        f.write("[crimux]\nlog_level = info\n")  # a later line wins
    daemon = spawn(daemons, crimuxd_binary, config, os.path.join(short_dir, "crimuxd.log"),
                   socket)
    with CRI("unix://" + socket) as client:
        client.raw(UNARY, b"q" * 1000)
        with pytest.raises(grpc.RpcError):
            list(client.raw(STREAM, b"", stream=True))
    logged(daemon, r"^INFO: .*GetContainerEvents -> fake: FAILED_PRECONDITION: not today")
    assert "DEBUG" not in daemon.log()
    assert "ContainerStatus" not in daemon.log(), "successful calls are debug messages"


def test_request_log_sizes(crimuxd_binary, daemons, short_dir, fake):
    fake.on(UNARY, reply(b"r" * 500))
    served = Served(daemons, crimuxd_binary, short_dir, fake)
    with CRI(served.endpoint) as client:
        client.raw(UNARY, b"q" * 1000)
    line = logged(served.daemon, r"^DEBUG: .*ContainerStatus -> fake: OK .*$").group(0)
    assert line.endswith(" 1000/500 bytes)"), line


# ------------------------------------------------------------------ secrets in the log

@pytest.fixture
def auth_registry(lab, tmp_path):
    """A loopback registry with basic auth holding busybox, trusted by the
    lab's containerd.  Yields (registry, user, password, image ref)."""
    user, password = "crx-user", "pw-" + uuid.uuid4().hex
    registry = env.Registry(str(tmp_path / "auth-registry"), htpasswd={user: password}).start()
    try:
        image = images.busybox_image(tag="with-auth")
        registry.push(image)
        lab.containerd.trust_registry(registry.host)
        yield registry, user, password, image.ref(registry.host)
    finally:
        registry.stop()


def test_pull_credentials_never_logged(crimuxd_factory, containerd_cri, auth_registry):
    registry, user, password, ref = auth_registry
    daemon = crimuxd_factory()  # in front of the lab's containerd, log_level = debug
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    wrong = "wrong-" + uuid.uuid4().hex
    token = "tok-" + uuid.uuid4().hex
    api = pb()

    with CRI(daemon.endpoint) as client:
        assert client.pull(ref, auth=(user, password))
        containerd_cri.RemoveImage(image=api.ImageSpec(image=ref))
        # The same credentials in AuthConfig.auth ("user:password" in base64).
        assert client.PullImage(image=api.ImageSpec(image=ref),
                                auth=api.AuthConfig(auth=basic), timeout=60).image_ref
        containerd_cri.RemoveImage(image=api.ImageSpec(image=ref))
        with pytest.raises(grpc.RpcError):
            client.pull(ref, auth=(user, wrong))
        with pytest.raises(grpc.RpcError):
            client.PullImage(image=api.ImageSpec(image=ref), timeout=60,
                             auth=api.AuthConfig(registry_token=token, identity_token=token))

    # A call is logged once it is over, which may be just after the client
    # has its answer.
    log = env.wait_for(lambda: (text := daemon.log()).count("PullImage") >= 4 and text, 5,
                       "the four pulls in crimuxd's debug log")
    for secret in (password, basic, wrong, token):
        assert secret not in log, f"a credential is in crimuxd's log:\n{log}"
