"""What `make install` puts on a node for systemd: the units, the tmpfiles
snippet, the sample configuration and the man pages.

systemd is not PID 1 here, so the units are checked with `systemd-analyze
verify` (which loads them like the manager would, and looks up the man pages
of Documentation= through MANPATH) on the tree installed under a DESTDIR:
the copies verified differ from the installed ones only in the path of
ExecStart=, moved under the DESTDIR so that it exists.  ExecReload= is run
for real against a crimuxd, the tmpfiles snippet with `systemd-tmpfiles
--root`, and the man pages are rendered with warnings on.
"""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from lab import env
from lab.fake_backend import FakeBackend

SRCDIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pkg_var(name):
    return subprocess.run(["pkg-config", "--variable=" + name, "systemd"], check=True,
                          capture_output=True, text=True).stdout.strip()


def parse_unit(path):
    """{section: [(key, value), ...]}; keys may repeat, as in systemd."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(unit, section, key):
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit, section, key):
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= in [{section}]: {found}"
    return found[0]


class Installed:
    """A `make install DESTDIR=root` of the build under test."""

    def __init__(self, builddir, root):
        self.builddir, self.root = builddir, root
        self.unitdir = root + pkg_var("systemdsystemunitdir")
        self.tmpfilesdir = root + pkg_var("tmpfilesdir")

    def make(self, *targets):
        # Under `make check` the parent's flags (jobserver, variables) must
        # not leak into this make.
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        return subprocess.run(["make", "-s", "-C", self.builddir, *targets,
                               "DESTDIR=" + self.root],
                              capture_output=True, text=True, timeout=600, env=clean)

    def install(self):
        proc = self.make("install")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.service = parse_unit(os.path.join(self.unitdir, "crimux.service"))
        self.socket = parse_unit(os.path.join(self.unitdir, "crimux.socket"))
        # ExecStart= names the installed daemon and configuration.
        argv = value(self.service, "Service", "ExecStart").split()
        assert argv[1:3] == ["--config", argv[2]] and len(argv) == 3, argv
        self.sbin_crimuxd, self.config = argv[0], argv[2]
        mans = [os.path.join(d, f) for d, _, files in os.walk(self.root)
                for f in files if f == "crimuxd.8"]
        self.mandir = os.path.dirname(os.path.dirname(mans[0])) if mans else None
        return self

    def path(self, installed_path):
        return self.root + installed_path


@pytest.fixture(scope="module")
def installed(crimuxd_binary):
    root = tempfile.mkdtemp(prefix="crimux-destdir-")
    try:
        yield Installed(os.path.dirname(crimuxd_binary), root).install()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------- where things go

def test_install_puts_everything_where_systemd_and_man_look(installed):
    for unit in ("crimux.service", "crimux.socket"):
        assert os.path.isfile(os.path.join(installed.unitdir, unit)), unit
    assert os.path.isfile(os.path.join(installed.tmpfilesdir, "crimux.conf"))
    assert os.access(installed.path(installed.sbin_crimuxd), os.X_OK)
    assert os.path.basename(installed.sbin_crimuxd) == "crimuxd"
    # The configuration ExecStart= reads is the sample, installed.
    assert installed.config.endswith("/crimux/crimux.conf")
    with open(installed.path(installed.config)) as a, \
            open(os.path.join(SRCDIR, "systemd", "crimux.conf.sample")) as b:
        assert a.read() == b.read()
    assert installed.mandir, "no man pages installed"
    for page in ("man8/crimuxd.8", "man5/crimux.conf.5"):
        assert os.path.isfile(os.path.join(installed.mandir, page)), page
    # Nothing of the source template is left in the service.
    with open(os.path.join(installed.unitdir, "crimux.service")) as f:
        assert "@" not in re.sub(r"#.*", "", f.read())


def test_install_keeps_an_admins_configuration(installed):
    path = installed.path(installed.config)
    mine = "# the admin's own\n[backend \"c\"]\nendpoint = /run/c.sock\n"
    with open(path, "w") as f:
        f.write(mine)
    try:
        proc = installed.make("install")
        assert proc.returncode == 0, proc.stderr
        with open(path) as f:
            assert f.read() == mine
        # Uninstall leaves a changed configuration too, and takes the rest.
        proc = installed.make("uninstall")
        assert proc.returncode == 0, proc.stderr
        with open(path) as f:
            assert f.read() == mine
        assert not os.path.exists(os.path.join(installed.unitdir, "crimux.service"))
        assert not os.path.exists(os.path.join(installed.tmpfilesdir, "crimux.conf"))
        assert not os.path.exists(os.path.join(installed.mandir, "man8", "crimuxd.8"))
        # An unchanged sample is removed with the rest.
        os.unlink(path)
        assert installed.make("install").returncode == 0
        assert os.path.exists(path)
        assert installed.make("uninstall").returncode == 0
        assert not os.path.exists(path)
        assert not os.path.exists(os.path.dirname(path))
    finally:
        installed.install()


# --------------------------------------------------------------- the units

def verify(unit_dir, mandir):
    """systemd-analyze verify of both units: (exit code, everything it said)."""
    env_ = dict(os.environ, MANPATH=mandir, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=yes",
                           os.path.join(unit_dir, "crimux.socket"),
                           os.path.join(unit_dir, "crimux.service")],
                          capture_output=True, text=True, env=env_, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.fixture
def verifiable(installed, tmp_path):
    """Copies of the installed units whose ExecStart= is under the DESTDIR."""
    for unit in ("crimux.service", "crimux.socket"):
        with open(os.path.join(installed.unitdir, unit)) as f:
            text = f.read()
        text = text.replace("ExecStart=" + installed.sbin_crimuxd,
                            "ExecStart=" + installed.path(installed.sbin_crimuxd))
        (tmp_path / unit).write_text(text)
    return tmp_path


def test_units_verify_cleanly(installed, verifiable):
    code, said = verify(verifiable, installed.mandir)
    assert code == 0 and said == "", said


@pytest.mark.parametrize("change,complaint", [
    (("Type=notify", "Type=notiffy"), "Failed to parse service type"),
    (("Documentation=man:crimuxd(8)", "Documentation=man:crimuxd-missing(8)"), "crimuxd-missing"),
    (("ExecReload=/bin/kill", "ExecReload=/nonexistent/kill"), "not executable"),
], ids=["bad-type", "missing-man-page", "missing-binary"])
def test_verify_would_notice(installed, verifiable, change, complaint):
    """The way the units are verified catches mistakes: verify reports some
    only as warnings, which is why test_units_verify_cleanly wants silence."""
    path = verifiable / "crimux.service"
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1]))
    code, said = verify(verifiable, installed.mandir)
    assert complaint in said, said


def seconds(text):
    """A systemd time span such as 30s, 1min 30s or 500ms, in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def test_service_settings(installed):
    s = installed.service
    assert value(s, "Service", "Type") == "notify"
    assert 0 < seconds(value(s, "Service", "WatchdogSec")) <= 120
    assert value(s, "Service", "Restart") == "on-failure"
    after = " ".join(values(s, "Unit", "After")).split()
    assert "containerd.service" in after and "docker.service" in after
    assert "crimux.socket" in after
    assert "crimux.socket" in " ".join(values(s, "Unit", "Wants")).split()
    assert value(s, "Install", "WantedBy") == "multi-user.target"
    assert value(s, "Install", "Also") == "crimux.socket"
    # Stopping must leave crimuxd time for its own shutdown_timeout (10s).
    assert seconds(value(s, "Service", "TimeoutStopSec")) > 10
    assert value(s, "Service", "KillMode") == "mixed"
    docs = value(s, "Unit", "Documentation").split()
    assert docs == ["man:crimuxd(8)", "man:crimux.conf(5)"]


def test_socket_settings(installed, crimuxd_binary):
    s = installed.socket
    assert value(s, "Socket", "SocketMode") == "0660"
    listen = value(s, "Socket", "ListenStream")
    # The same socket as crimuxd's default and as the sample configuration's.
    out = subprocess.run([crimuxd_binary, "--check", "--config",
                          installed.path(installed.config)],
                         capture_output=True, text=True, timeout=120).stdout
    assert re.search(rf"^\S+ +socket {re.escape(listen)}[ :]", out, re.M), out
    with open(installed.path(installed.config)) as f:
        sample = f.read()
    assert f"#socket = {listen}\n" in sample
    assert "#socket_mode = 0660\n" in sample
    assert value(s, "Install", "WantedBy") == "sockets.target"


def test_exec_reload_reloads_crimuxd(installed, crimuxd_binary, tmp_path):
    """ExecReload= run as systemd would, with $MAINPID: crimuxd re-reads its
    configuration."""
    with tempfile.TemporaryDirectory(prefix="crxu-", dir="/tmp") as short:
        backend = FakeBackend(os.path.join(short, "fake.sock")).start()
        try:
            daemon = env.Crimuxd(crimuxd_binary, os.path.join(short, "d"),
                                 {"fake": backend.endpoint}).start()
            try:
                command = value(installed.service, "Service", "ExecReload")
                argv = [a.replace("$MAINPID", str(daemon.pid)) for a in command.split()]
                subprocess.run(argv, check=True, timeout=30)
                env.wait_for(lambda: "configuration reloaded" in daemon.log(), 20,
                             "crimuxd to reload")
                assert daemon.daemon.running()
            finally:
                assert daemon.stop() == 0, daemon.log()
        finally:
            backend.stop()


# --------------------------------------------------------------- tmpfiles, sample, man pages

def test_tmpfiles_snippet(installed, tmp_path):
    snippet = os.path.join(installed.tmpfilesdir, "crimux.conf")
    proc = subprocess.run(["systemd-tmpfiles", "--root=" + str(tmp_path), "--create", snippet],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    listen = value(installed.socket, "Socket", "ListenStream")
    run_dir = tmp_path / os.path.dirname(listen).lstrip("/")
    assert run_dir.is_dir() and (run_dir.stat().st_mode & 0o7777) == 0o755
    state = tmp_path / "var/lib/crimux"
    assert state.is_dir() and (state.stat().st_mode & 0o7777) == 0o700


def config_line(crimuxd_binary, path):
    out = subprocess.run([crimuxd_binary, "--check", "--config", path], capture_output=True,
                         text=True, timeout=120).stdout
    return next(line for line in out.splitlines() if " configuration: " in line)


def test_sample_configuration(installed, crimuxd_binary, tmp_path):
    path = installed.path(installed.config)
    line = config_line(crimuxd_binary, path)
    assert line.startswith("OK ") and "1 backend, 2 handlers (default: runc)" in line, line
    with open(path) as f:
        sample = f.read()
    assert re.search(r'\[handler "kata"\]\nbackend = containerd\n(#.*\n)*policy = kata\n',
                     sample)
    # Every documented default, uncommented, is accepted; and the docker
    # backend too where this build has it.
    enabled = re.sub(r"^#(\w+ = .*)$", r"\1", sample, flags=re.M)
    enabled = re.sub(r'^#(\[(backend|handler) "docker"\])$', r"\1", enabled, flags=re.M)
    assert enabled.count("\n#") < sample.count("\n#") - 20
    (tmp_path / "all.conf").write_text(enabled)
    line = config_line(crimuxd_binary, str(tmp_path / "all.conf"))
    if 'unknown backend type "docker"' in line:
        pytest.skip("this build has no docker backend")
    assert line.startswith("OK ") and "2 backends, 3 handlers (default: runc)" in line, line


def render(page):
    env_ = {k: v for k, v in os.environ.items() if k != "MAN_KEEP_FORMATTING"}
    proc = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True,
                          env=dict(env_, MANWIDTH="80"), timeout=60)
    proc.stdout = re.sub(r".\x08", "", proc.stdout)  # overstrike, should man keep it
    return proc


@pytest.mark.parametrize("page", ["man8/crimuxd.8", "man5/crimux.conf.5"])
def test_man_page_renders_without_warnings(installed, page):
    if not shutil.which("man"):
        pytest.skip("man (Debian: man-db) is not installed")
    proc = render(os.path.join(installed.mandir, page))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "SEE ALSO"):
        assert re.search(rf"^{section}$", proc.stdout, re.M), section


def plain(page):
    """The rendered page as words: hyphenation and line breaks undone."""
    text = render(page).stdout.replace("\u2010\n", "").replace("-\n", "")
    return re.sub(r"\s+", " ", text)


def test_man_pages_name_every_option_and_key(installed):
    """Keys and options are taken from the code, so a new one without
    documentation fails here."""
    if not shutil.which("man"):
        pytest.skip("man (Debian: man-db) is not installed")
    with open(os.path.join(SRCDIR, "daemon", "conf.c")) as f:
        conf = f.read()
    keys = set(re.findall(r'streq\(key, "(\w+)"\)', conf))
    keys |= set(re.findall(r'\{"(kata_\w+)"', conf))
    docker = os.path.join(SRCDIR, "runtimes", "docker", "dockershim.c")
    if os.path.exists(docker):
        with open(docker) as f:
            block = re.search(r"keys\[\] = \{(.*?)\};", f.read(), re.S)
        keys |= set(re.findall(r'"(\w+)"', block.group(1))) if block else set()
    assert {"socket", "socket_mode", "log_level", "shutdown_timeout", "default_handler",
            "type", "endpoint", "backend", "runtime_handler", "policy",
            "kata_min_cpu"} <= keys, keys
    conf5 = plain(os.path.join(installed.mandir, "man5", "crimux.conf.5"))
    missing = sorted(k for k in keys if not re.search(rf"\b{k}=", conf5))
    assert not missing, f"crimux.conf(5) does not document {missing}"

    with open(os.path.join(SRCDIR, "daemon", "main.c")) as f:
        options = re.findall(r'\{"([\w-]+)", \w+_argument', f.read())
    assert "config" in options and "check" in options
    page8 = plain(os.path.join(installed.mandir, "man8", "crimuxd.8"))
    missing = sorted(o for o in options if f"--{o}" not in page8)
    assert not missing, f"crimuxd(8) does not document {missing}"
    for signal_name in ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM"):
        assert signal_name in page8
