"""The Debian package (debian/) as a node admin gets it: built with
`dpkg-buildpackage -us -uc -b` from a copy of the source tree, its files and
fields checked, linted, then installed on this machine with `dpkg -i`, run,
upgraded, removed and purged, after which nothing of it may remain.

The package is built from the source, not from the build under test, so one
run per CI run is enough: scripts/check sets CRIMUX_TEST_PACKAGE=0 for its
sanitizer run, which skips this module (building the package, unit tests
included, takes about a minute on two cores).  It refuses to start where
crimux is installed or any of its files exists (it would replace an admin's
crimux), and purges what it installed whatever fails.
"""

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from lab.cri import srcdir

if os.environ.get("CRIMUX_TEST_PACKAGE") == "0":
    pytest.skip("CRIMUX_TEST_PACKAGE=0: the package is tested in another run",
                allow_module_level=True)

SRCDIR = srcdir()
PACKAGE = "crimux"
CONF = "/etc/crimux/crimux.conf"
CRIMUXD = "/usr/sbin/crimuxd"

# Every regular file of the package and its mode: nothing else may be in it
# (not the benchmark, the unit tests, stream-testd or the pause program,
# which `make install` does not install either).
FILES = {
    "etc/crimux/crimux.conf": 0o644,
    "lib/systemd/system/crimux.service": 0o644,
    "lib/systemd/system/crimux.socket": 0o644,
    "usr/lib/tmpfiles.d/crimux.conf": 0o644,
    "usr/sbin/crimuxd": 0o755,
    "usr/share/doc/crimux/changelog.gz": 0o644,
    "usr/share/doc/crimux/copyright": 0o644,
    "usr/share/doc/crimux/crimux.conf.sample": 0o644,
    "usr/share/man/man5/crimux.conf.5.gz": 0o644,
    "usr/share/man/man8/crimuxd.8.gz": 0o644,
}

# Where a package's traces could be; whatever is named *crimux* there must be
# the same before the install and after the purge.  Skipped, as never the
# package's: container storage (large); CNI's state, where the plugins keep
# the results of pods on networks named crimux-<bridge> for any test lab
# running beside this test; and man-db's cache of formatted pages, filled
# by `systemd-analyze verify --man=yes` below (the test removes what it
# made there).
TRACE_ROOTS = ("/etc", "/usr", "/var", "/run", "/opt", "/srv")
MAN_CACHE = "/var/cache/man"
TRACE_PRUNED = ("/var/lib/docker", "/var/lib/containerd", "/var/lib/cni", MAN_CACHE)


def run(argv, timeout=120, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def quiet_env(**extra):
    """The environment without the flags of a `make check` around us (its
    jobserver and variables must not reach the package's own make)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    env.update(LC_ALL="C.UTF-8", **extra)
    return env


def configure_version():
    with open(os.path.join(SRCDIR, "configure.ac")) as f:
        return re.search(r"^AC_INIT\(\[crimux\],\s*\[([^]]+)\]", f.read(), re.M).group(1)


def field(text, name):
    """A field of a deb822 paragraph, continuation lines joined."""
    m = re.search(rf"^{name}:(.*(?:\n[ \t].*)*)", text, re.M)
    return " ".join(m.group(1).split()) if m else None


def relation_names(value):
    """Package names of a relationship field (versions and arches dropped)."""
    return {re.sub(r"\s*[(\[<:].*", "", d).strip() for d in (value or "").split(",")
            if d.strip()}


def owner(path):
    """The package that holds `path` (with and without the merged /usr)."""
    candidates = [path, os.path.realpath(path)]
    candidates += [p[4:] if p.startswith("/usr/") else "/usr" + p for p in list(candidates)]
    for candidate in candidates:
        proc = run(["dpkg-query", "-S", candidate])
        if proc.returncode == 0:
            return re.match(r"[^:,\s]+", proc.stdout).group(0)
    raise AssertionError(f"no package holds {path}")


def git(tree, *args):
    proc = run(["git", "-C", tree, "-c", "user.name=crimux test",
                "-c", "user.email=test@crimux.invalid", "-c", "commit.gpgsign=false", *args])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Built:
    """One `dpkg-buildpackage -us -uc -b` of a copy of the source tree (and a
    source package of the same copy, for lintian)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.tree = os.path.join(workdir, PACKAGE)
        self.arch = run(["dpkg", "--print-architecture"]).stdout.strip()

    def copy_source(self):
        # The files git knows or would add: uncommitted work is tested too,
        # build trees and other ignored files are not copied.
        # A clone owned by another user than root (a CI checkout) is
        # "dubious" to git, which then refuses to list it.
        listed = run(["git", "-c", "safe.directory=*", "-C", SRCDIR, "ls-files", "-z",
                      "--cached", "--others", "--exclude-standard"])
        if listed.returncode != 0:
            pytest.skip("the package is built from a git checkout: " + listed.stderr.strip())
        for rel in filter(None, listed.stdout.split("\0")):
            src = os.path.join(SRCDIR, rel)
            if not os.path.lexists(src):
                continue  # deleted, not committed yet
            dst = os.path.join(self.tree, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)

    def build(self):
        self.copy_source()
        proc = run(["dpkg-source", "-b", PACKAGE], cwd=self.workdir, env=quiet_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # A repository of its own, to see what the build leaves behind.
        git(self.tree, "init", "-q")
        git(self.tree, "add", "-A")
        git(self.tree, "commit", "-q", "-m", "the source as copied")
        self.version = run(["dpkg-parsechangelog", "-l", "debian/changelog", "-SVersion"],
                           cwd=self.tree).stdout.strip()
        proc = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=self.tree, timeout=1800,
                   env=quiet_env(DEB_BUILD_OPTIONS=f"parallel={os.cpu_count() or 1}"))
        self.log = proc.stdout + proc.stderr
        with open(os.path.join(self.workdir, "build.log"), "w") as f:
            f.write(self.log)
        assert proc.returncode == 0, "dpkg-buildpackage failed:\n" + self.log[-6000:]
        self.status_after_build = git(self.tree, "status", "--porcelain")
        proc = run(["dpkg-buildpackage", "-T", "clean"], cwd=self.tree, timeout=300,
                   env=quiet_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.left_after_clean = git(self.tree, "status", "--porcelain", "--ignored")

        self.deb = self.output(f"{PACKAGE}_{self.version}_{self.arch}.deb")
        self.changes = self.output(f"{PACKAGE}_{self.version}_{self.arch}.changes")
        self.dsc = self.output(f"{PACKAGE}_{self.version}.dsc")
        self.root = os.path.join(self.workdir, "contents")
        proc = run(["dpkg-deb", "-x", self.deb, self.root])
        assert proc.returncode == 0, proc.stderr
        self.control_dir = os.path.join(self.workdir, "control")
        proc = run(["dpkg-deb", "-e", self.deb, self.control_dir])
        assert proc.returncode == 0, proc.stderr
        with open(os.path.join(self.control_dir, "control")) as f:
            self.control = f.read()
        return self

    def output(self, name):
        return os.path.join(self.workdir, name)

    def members(self):
        """{path: TarInfo} of the package's data, without the leading ./"""
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", self.deb], capture_output=True,
                              check=True, timeout=60)
        path = self.output("data.tar")
        with open(path, "wb") as f:
            f.write(proc.stdout)
        with tarfile.open(path) as tar:
            # dpkg-deb names members "./usr/..."; the root itself is "." or "./".
            return {m.name[2:].rstrip("/"): m for m in tar.getmembers()
                    if m.name not in (".", "./")}


@pytest.fixture(scope="module")
def package():
    if not os.path.isfile(os.path.join(SRCDIR, "debian", "control")):
        pytest.skip("no debian/ in this source tree (make dist does not ship it)")
    workdir = tempfile.mkdtemp(prefix="crimux-deb-")
    try:
        yield Built(workdir).build()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------- the build

def test_version_is_crimuxs(package):
    version = configure_version()
    assert package.version == version, "debian/changelog and configure.ac disagree"
    debs = sorted(os.path.basename(p) for p in glob.glob(package.output("*.deb")))
    assert debs == [f"{PACKAGE}-dbgsym_{version}_{package.arch}.deb",
                    f"{PACKAGE}_{version}_{package.arch}.deb"], debs
    assert field(package.control, "Version") == version


def test_build_runs_the_unit_tests_and_has_no_warning(package):
    totals = re.findall(r"^# TOTAL: +(\d+)$", package.log, re.M)
    passes = re.findall(r"^# PASS: +(\d+)$", package.log, re.M)
    assert totals and int(totals[0]) > 0 and passes == totals, "unit tests did not run"
    # Only the unit tests: the integration suite needs root and real runtimes.
    assert "tests/integration" not in package.log
    # -Werror is off for packagers (a new compiler must not break the build):
    # the package build is where a warning under Debian's flags shows.
    warnings = re.findall(r"^\S+:\d+:\d+: warning: .*$", package.log, re.M)
    assert not warnings, "\n".join(warnings)


def test_build_leaves_the_tree_clean(package):
    # Everything the build makes is ignored by .gitignore, and
    # `debian/rules clean` takes it all away again.
    assert package.status_after_build == "", package.status_after_build
    assert package.left_after_clean == "", package.left_after_clean


# --------------------------------------------------------------- what is in it

def test_files_of_the_package(package):
    members = package.members()
    files = {name: m for name, m in members.items() if not m.isdir()}
    missing = sorted(set(FILES) - set(files))
    unexpected = sorted(set(files) - set(FILES))
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"
    for name, mode in FILES.items():
        m = files[name]
        assert m.isfile(), f"{name} is not a regular file"
        assert (m.mode & 0o7777, m.uname, m.gname) == (mode, "root", "root"), \
            f"{name}: {oct(m.mode)} {m.uname}:{m.gname}"
    # No directory of its own beyond those its files need.
    needed = set()
    for path in FILES:
        while "/" in path:
            path = os.path.dirname(path)
            needed.add(path)
    stray = sorted(name for name, m in members.items() if m.isdir() and name not in needed)
    assert not stray, f"empty directories in the package: {stray}"


def test_installed_files_are_the_sources(package):
    with open(os.path.join(package.root, CONF.lstrip("/"))) as a, \
            open(os.path.join(SRCDIR, "systemd", "crimux.conf.sample")) as b:
        assert a.read() == b.read()
    with open(os.path.join(package.root, "lib/systemd/system/crimux.service")) as f:
        service = f.read()
    assert re.search(rf"^ExecStart={CRIMUXD} --config {CONF}$", service, re.M), service
    for unit in ("crimux.socket",):
        with open(os.path.join(package.root, "lib/systemd/system", unit)) as a, \
                open(os.path.join(SRCDIR, "systemd", unit)) as b:
            assert a.read() == b.read()
    with open(os.path.join(package.root, "usr/lib/tmpfiles.d/crimux.conf")) as a, \
            open(os.path.join(SRCDIR, "systemd", "crimux-tmpfiles.conf")) as b:
        assert a.read() == b.read()


def test_control_fields(package):
    c = package.control
    assert field(c, "Package") == PACKAGE
    assert field(c, "Architecture") == package.arch
    assert field(c, "Recommends") == "containerd"
    assert field(c, "Suggests") == "docker.io"
    assert field(c, "Pre-Depends") is None
    with open(os.path.join(package.control_dir, "conffiles")) as f:
        assert f.read().split() == [CONF]


def test_depends_are_the_libraries_crimuxd_links(package):
    """Depends is exactly the packages of crimuxd's NEEDED libraries
    (${shlibs:Depends}; ${misc:Depends} adds nothing here)."""
    readelf = run(["readelf", "-d", os.path.join(package.root, CRIMUXD.lstrip("/"))])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", readelf.stdout)
    assert needed, readelf.stdout + readelf.stderr
    multiarch = run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).stdout.strip()
    cache = run(["ldconfig", "-p"]).stdout
    owners = set()
    for soname in needed:
        paths = re.findall(rf"^\s+{re.escape(soname)} \(.*\) => (\S*/{multiarch}/\S+)$",
                           cache, re.M)
        assert paths, f"{soname} is not in the linker cache"
        owners.add(owner(paths[0]))
    assert relation_names(field(package.control, "Depends")) == owners, \
        f"Depends: {field(package.control, 'Depends')}; NEEDED come from {sorted(owners)}"


def test_build_depends_are_what_configure_needs():
    """Build-Depends: debhelper, pkgconf, protoc-c's package, the package of
    every pkg-config module configure.ac asks for, and the interpreter of the
    unit suite's script (dh_auto_test runs it), nothing else."""
    with open(os.path.join(SRCDIR, "configure.ac")) as f:
        configure = f.read()
    modules = []
    for spec in re.findall(r"PKG_CHECK_MODULES\(\[\w+\],\s*\[([^]]+)\]", configure):
        words = spec.split()
        modules += [w for i, w in enumerate(words)
                    if w not in ("<", "<=", "=", ">=", ">")
                    and (i == 0 or words[i - 1] not in ("<", "<=", "=", ">=", ">"))]
    assert len(modules) >= 8, modules
    with open(os.path.join(SRCDIR, "tests", "check-layers")) as f:
        interpreter = os.path.basename(f.readline()[2:].split()[0])
    wanted = {"debhelper-compat", owner(shutil.which("pkg-config")),
              owner(shutil.which("protoc-c")), interpreter}
    for module in modules:
        pcdir = run(["pkg-config", "--variable=pcfiledir", module]).stdout.strip()
        wanted.add(owner(os.path.join(pcdir, module + ".pc")))
    with open(os.path.join(SRCDIR, "debian", "control")) as f:
        source = f.read().split("\n\n")[0]
    assert relation_names(field(source, "Build-Depends")) == wanted


# --------------------------------------------------------------- lintian

def lintian(*paths):
    """(errors and warnings, what lintian said) for the given files."""
    proc = run(["lintian", "--fail-on", "none", *paths], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    findings = re.findall(r"^[EW]: .*$", proc.stdout, re.M)
    return findings, proc.stdout + proc.stderr


def test_lintian_is_clean(package):
    findings, said = lintian(package.changes, package.dsc)
    assert not findings, said
    # Overrides, if any, each say why (a comment right above it).
    for path in glob.glob(os.path.join(SRCDIR, "debian", "*lintian-overrides")) + \
            glob.glob(os.path.join(SRCDIR, "debian", "source", "lintian-overrides")):
        with open(path) as f:
            lines = [line.strip() for line in f]
        for i, line in enumerate(lines):
            if line and not line.startswith("#"):
                assert i > 0 and lines[i - 1].startswith("#"), \
                    f"{path}:{i + 1}: an override without a reason above it"


def test_lintian_would_notice(package, tmp_path):
    """The lint is real: the package without its copyright file is an error."""
    tree = tmp_path / "broken"
    assert run(["dpkg-deb", "-R", package.deb, str(tree)]).returncode == 0
    os.unlink(tree / "usr/share/doc/crimux/copyright")
    broken = str(tmp_path / os.path.basename(package.deb))
    proc = run(["dpkg-deb", "--root-owner-group", "-b", str(tree), broken])
    assert proc.returncode == 0, proc.stderr
    findings, said = lintian(broken)
    assert any(f.startswith("E: crimux: no-copyright-file") for f in findings), said


# --------------------------------------------------------------- on this machine

def dpkg(*args):
    """dpkg without a terminal, so that a question (a conffile prompt) fails
    it; waits while another dpkg or apt holds the lock."""
    deadline = time.monotonic() + 300
    while True:
        proc = run(["dpkg", *args], timeout=600, stdin=subprocess.DEVNULL,
                   env=quiet_env(DEBIAN_FRONTEND="noninteractive"))
        if proc.returncode == 0 or time.monotonic() > deadline or \
                not re.search(r"lock.*another process", proc.stderr):
            return proc
        time.sleep(2)


def dpkg_status():
    """dpkg's Status of the package, None when dpkg does not know it."""
    proc = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    if proc.returncode != 0 or proc.stdout.endswith(" not-installed"):
        return None
    return proc.stdout


def traces():
    """Every path named *crimux* where a package leaves things."""
    prune = []
    for path in TRACE_PRUNED:
        prune += ["-path", path, "-o"]
    proc = run(["find", *TRACE_ROOTS, "-xdev", "(", *prune[:-1], ")", "-prune", "-o",
                "-iname", "*crimux*", "-print"], timeout=600)
    return set(proc.stdout.split("\n")) - {""}


def man_cache():
    return set(glob.glob(os.path.join(MAN_CACHE, "**", "*crimux*"), recursive=True))


def repack(package, version, tmp_path):
    """The built package as another version: an upgrade to install."""
    tree = tmp_path / "newer"
    assert run(["dpkg-deb", "-R", package.deb, str(tree)]).returncode == 0
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(),
                              flags=re.M))
    out = str(tmp_path / f"{PACKAGE}_{version}_{package.arch}.deb")
    proc = run(["dpkg-deb", "--root-owner-group", "-b", str(tree), out])
    assert proc.returncode == 0, proc.stderr
    return out


def unit_enabled(unit):
    # systemctl reads the unit files and links itself where systemd is not PID 1.
    return run(["systemctl", "is-enabled", unit]).stdout.strip()


def mode(path):
    return os.stat(path).st_mode & 0o7777


def check_node(tmp_path):
    """`crimuxd --check` as installed, on its default configuration."""
    proc = run([CRIMUXD, "--check"], timeout=120, cwd=str(tmp_path))
    findings = re.findall(r"^(OK|WARN|FAIL) +(.*)$", proc.stdout, re.M)
    return proc, findings


def test_install_run_upgrade_remove_purge(package, tmp_path):
    before = traces()
    cached_pages = man_cache()
    status = dpkg_status()
    assert status is None, (f"dpkg knows {PACKAGE} already ({status}): this test would "
                            f"replace it; `dpkg --purge {PACKAGE}` first")
    present = [p for p in ["/" + f for f in FILES] + ["/var/lib/crimux", "/run/crimux"]
               if os.path.lexists(p)]
    assert not present, f"already on this machine, not from the package: {present}"
    newer_version = package.version + "+upgrade1"
    newer = repack(package, newer_version, tmp_path)
    admins_line = "# the admin's own line\n"
    try:
        # --- install
        proc = dpkg("-i", package.deb)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert dpkg_status() == "install ok installed"
        listed = set(run(["dpkg-query", "-L", PACKAGE]).stdout.split("\n"))
        for rel in FILES:
            assert "/" + rel in listed and os.path.isfile("/" + rel), rel
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout.split()
        with open(CONF, "rb") as f:
            assert conffiles == [CONF, hashlib.md5(f.read()).hexdigest()], conffiles
        # The socket is enabled; the service is left to it.
        assert unit_enabled("crimux.socket") == "enabled"
        assert unit_enabled("crimux.service") == "disabled"
        # The tmpfiles.d snippet was applied.
        assert mode("/run/crimux") == 0o755 and mode("/var/lib/crimux") == 0o700
        # The installed units load as systemd would load them (man pages too).
        verify = run(["systemd-analyze", "verify", "--man=yes",
                      "/lib/systemd/system/crimux.socket", "/lib/systemd/system/crimux.service"],
                     env=quiet_env(SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""))
        assert verify.returncode == 0 and (verify.stdout + verify.stderr).strip() == "", \
            verify.stdout + verify.stderr

        # --- run
        proc = run([CRIMUXD, "--version"])
        assert (proc.returncode, proc.stdout) == (0, f"crimuxd {package.version} (CRI v1)\n"), \
            proc.stdout + proc.stderr
        proc, findings = check_node(tmp_path)
        assert proc.stderr == "", proc.stderr
        assert f"node check of {CONF}" in proc.stdout, proc.stdout
        assert ("OK", "configuration: 1 backend, 2 handlers (default: runc)") in findings, \
            proc.stdout
        backend = [f for f in findings if f[1].startswith("backend containerd: ")]
        assert len(backend) == 1, proc.stdout
        if not os.path.exists("/run/containerd/containerd.sock"):
            # No containerd where the configuration says: a failure, exit 2.
            assert backend[0][0] == "FAIL" and "not reachable" in backend[0][1], proc.stdout
            assert proc.returncode == 2, proc.stdout
        verdicts = {v for v, _ in findings}
        assert proc.returncode == (2 if "FAIL" in verdicts else 1 if "WARN" in verdicts else 0)

        # --- upgrade: the admin's configuration stays, without a question
        with open(CONF, "a") as f:
            f.write(admins_line)
        proc = dpkg("-i", newer)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert run(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).stdout == newer_version
        with open(CONF) as f:
            assert f.read().endswith(admins_line)
        assert not glob.glob(CONF + ".dpkg-*") and not glob.glob(CONF + ".ucf-*")
        assert unit_enabled("crimux.socket") == "enabled"
        assert os.access(CRIMUXD, os.X_OK)

        # --- remove: the configuration and the state stay, the rest goes
        proc = dpkg("-r", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert dpkg_status() == "deinstall ok config-files"
        for rel in FILES:
            assert os.path.lexists("/" + rel) == ("/" + rel == CONF), rel
        with open(CONF) as f:
            assert f.read().endswith(admins_line)
        assert not os.path.exists("/run/crimux")
        assert os.path.isdir("/var/lib/crimux")

        # --- purge: nothing of it remains
        proc = dpkg("--purge", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert dpkg_status() is None
        after = traces()
        assert after == before, (f"left behind: {sorted(after - before)}; "
                                 f"gone: {sorted(before - after)}")
    finally:
        for page in man_cache() - cached_pages:
            os.unlink(page)
        if dpkg_status() is not None:
            proc = dpkg("--purge", PACKAGE)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        # Whatever a broken purge left (dpkg's own database aside, which only
        # dpkg may change), so that a failure does not outlive the test.
        if dpkg_status() is None:
            for path in sorted(traces() - before, key=len, reverse=True):
                if not path.startswith("/var/lib/dpkg/"):
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    elif os.path.lexists(path):
                        os.unlink(path)
