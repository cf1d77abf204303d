"""Prometheus metrics of a live crimuxd (docs/metrics.md).

One crimuxd (shared by the module) serves three handlers: "runc" and "kata"
(policy kata) on the lab's containerd, "docker" on the lab's dockerd, and
its metrics on a loopback port.  The tests make known CRI calls through it
and check that the scraped counters moved by exactly those calls; validate
a live scrape with `promtool check metrics`; let a real Prometheus server
scrape it; and show that scrapers which never send or never read hold up
no CRI call.
"""

import collections
import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest

from lab import streaming as st
from lab.cri import CRI, container_config, linux_resources, pb, sandbox_config
from lab.env import wait_for
from lab.fake_backend import FakeBackend
from conftest import docker_backend_config, stop_checked

MIB = 1 << 20
RUN = uuid.uuid4().hex[:12]
LABELS = {"crimux-test-metrics": RUN}
UNKNOWN_ID = "bad1d" * 12 + "0bad"
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_text(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return r.read().decode()


def parse(text):
    """{(name, frozenset of (label, value)): float} of an exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def total(samples, name, **want):
    """The sum of `name` over the series whose labels include `want`."""
    want = set(want.items())
    return sum(v for (n, labels), v in samples.items() if n == name and want <= labels)


def by_method(samples, name="crimux_cri_calls_total"):
    counts = collections.Counter()
    for (n, labels), v in samples.items():
        if n == name:
            counts[dict(labels)["method"]] += v
    return counts


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def daemon(lab, dockerd, crimuxd_binary, containerd_cri, tmp_path_factory):
    port = free_port()
    config = docker_backend_config(lab, str(tmp_path_factory.mktemp("docker-state"))) + f"""
[crimux]
default_handler = runc
metrics_address = 127.0.0.1:{port}
[handler "runc"]
backend = one
# The lab's containerd runs "kata" with the runc shim: there is no KVM here.
[handler "kata"]
backend = one
policy = kata
[handler "docker"]
backend = docker
"""
    d = lab.crimuxd(crimuxd_binary, {"one": lab.containerd.endpoint,
                                     "docker": dockerd.endpoint}, config)
    d.metrics_port = port
    yield d
    with CRI(d.endpoint) as client:
        for item in client.ListPodSandbox(
                filter=pb().PodSandboxFilter(label_selector=LABELS)).items:
            client.remove_pod(item.id)
    stop_checked([d], must_run=True)


@pytest.fixture(scope="module")
def mux(daemon):
    with CRI(daemon.endpoint) as client:
        yield client


def scrape(daemon):
    return parse(scrape_text(daemon.metrics_port))


def settled(daemon):
    """A scrape once every call made so far is counted.  A call is counted
    just after its status went out, so the probe that found crimuxd ready
    can still be on its way into the counters: wait until two scrapes some
    time apart agree."""
    deadline = time.monotonic() + 30
    last = scrape(daemon)
    while True:
        time.sleep(0.3)
        now = scrape(daemon)
        if by_method(now) == by_method(last) or time.monotonic() > deadline:
            return now
        last = now


def calls_for_every_handler(mux, lab):
    """Makes a known set of CRI calls through crimuxd; returns how many of
    each method it made."""
    made = collections.Counter()

    def call(method, **kwargs):
        made[method] += 1
        return getattr(mux, method)(**kwargs)

    for _ in range(3):
        call("Version")
    call("ListPodSandbox")
    # runc: a pod with a container, then gone again.
    sandbox = sandbox_config("metrics-runc-" + RUN, labels=LABELS)
    pod_id = call("RunPodSandbox", config=sandbox, runtime_handler="runc",
                  timeout=120).pod_sandbox_id
    call("PullImage", image=pb().ImageSpec(image=lab.busybox_ref), sandbox_config=sandbox,
         timeout=120)
    cid = call("CreateContainer", pod_sandbox_id=pod_id, sandbox_config=sandbox,
               config=container_config("main", lab.busybox_ref, ["sleep", "3600"]),
               timeout=60).container_id
    call("StartContainer", container_id=cid, timeout=60)
    call("ContainerStatus", container_id=cid)
    call("StopPodSandbox", pod_sandbox_id=pod_id, timeout=60)
    call("RemovePodSandbox", pod_sandbox_id=pod_id, timeout=60)
    # docker: a pod through the dockershim.
    sandbox = sandbox_config("metrics-docker-" + RUN, labels=LABELS)
    pod_id = call("RunPodSandbox", config=sandbox, runtime_handler="docker",
                  timeout=120).pod_sandbox_id
    call("PodSandboxStatus", pod_sandbox_id=pod_id)
    call("StopPodSandbox", pod_sandbox_id=pod_id, timeout=60)
    call("RemovePodSandbox", pod_sandbox_id=pod_id, timeout=60)
    # kata: refused by its rules before any backend sees it.
    with pytest.raises(grpc.RpcError) as refused:
        call("RunPodSandbox", runtime_handler="kata", config=sandbox_config(
            "metrics-kata-" + RUN, labels=LABELS, host_network=True,
            resources=linux_resources(500, 500, 512 * MIB)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An unknown container: NOT_FOUND.
    with pytest.raises(grpc.RpcError) as missing:
        call("ContainerStatus", container_id=UNKNOWN_ID)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    return made


# ------------------------------------------------------------------ tests

def test_counters_match_the_calls_made(daemon, mux, lab):
    before = settled(daemon)
    made = calls_for_every_handler(mux, lab)

    # Every call counted once, under its method: nothing more, nothing less.
    # A call is counted when gRPC lets go of it, just after the client has
    # its status: the last one may take a moment (under ASan above all).
    def counted():
        now = scrape(daemon)
        return now if by_method(now) - by_method(before) == made else None
    try:
        after = wait_for(counted, 10, "every call to be counted")
    except TimeoutError:
        assert by_method(scrape(daemon)) - by_method(before) == made

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    calls = "crimux_cri_calls_total"
    assert delta(calls, method="Version", handler="", backend="", code="OK") == 3
    assert delta(calls, method="RunPodSandbox", handler="runc", backend="one", code="OK") == 1
    assert delta(calls, method="RunPodSandbox", handler="docker", backend="docker",
                 code="OK") == 1
    assert delta(calls, method="CreateContainer", handler="runc", backend="one",
                 code="OK") == 1
    assert delta(calls, method="PodSandboxStatus", backend="docker", code="OK") == 1
    assert delta(calls, method="RunPodSandbox", handler="kata", backend="",
                 code="INVALID_ARGUMENT") == 1
    assert delta(calls, method="ContainerStatus", code="NOT_FOUND") == 1
    assert delta("crimux_kata_refusals_total", handler="kata", rule="host_namespace") == 1
    assert delta("crimux_kata_refusals_total") == 1

    # Latency: one observation per call, in the histogram of its method and
    # backend, and crimux's own part for the unary calls it relayed.
    for method, n in made.items():
        assert delta("crimux_cri_call_duration_seconds_count", method=method) == n, method
    assert delta("crimux_cri_call_duration_seconds_count", method="RunPodSandbox",
                 backend="docker") == 1
    assert delta("crimux_cri_relay_overhead_seconds_count", method="StartContainer",
                 backend="one") == 1
    assert delta("crimux_cri_relay_overhead_seconds_count", backend="docker") == 0
    # The dockershim's own part: every call it served, less Docker's time.
    docker = "crimux_cri_docker_overhead_seconds"
    for method in ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox"):
        assert delta(docker + "_count", method=method, backend="docker") == 1, method
    assert delta(docker + "_count") == 4
    run_total = delta("crimux_cri_call_duration_seconds_sum", method="RunPodSandbox",
                      backend="docker")
    run_own = delta(docker + "_sum", method="RunPodSandbox", backend="docker")
    # Docker's create and start are many milliseconds of a pod's start.
    assert 0 < run_own < run_total - 0.005, (run_own, run_total)
    assert delta("crimux_cri_call_duration_seconds_sum", method="RunPodSandbox") > 0
    for key, value in after.items():
        if key[0] == "crimux_cri_call_duration_seconds_bucket" and ("le", "+Inf") in key[1]:
            count = after[("crimux_cri_call_duration_seconds_count",
                           key[1] - {("le", "+Inf")})]
            assert value == count

    # The rest of what the issue names is there.
    assert total(after, "crimux_backend_up", backend="one") == 1
    assert total(after, "crimux_backend_up", backend="docker") == 1
    assert total(after, "crimux_backend_reconnects_total", backend="one") == 0
    assert ("crimux_owner_entries", frozenset({("kind", "sandbox")})) in after
    assert total(after, "crimux_reloads_total", result="success") == 0
    assert total(after, "process_open_fds") > 0
    assert total(after, "process_resident_memory_bytes") > 1 * MIB
    assert total(after, "process_threads") > 2


def test_docker_logs_and_streaming_sessions_are_counted(daemon, mux, lab, tmp_path):
    before = scrape(daemon)
    log_dir = str(tmp_path / "logs")
    os.makedirs(log_dir)
    sandbox = sandbox_config("metrics-stream-" + RUN, labels=LABELS, log_directory=log_dir)
    pod_id = mux.run_pod(sandbox, "docker")
    try:
        mux.pull(lab.busybox_ref, sandbox=sandbox)
        cid = mux.start_container(pod_id, sandbox, container_config(
            "main", lab.busybox_ref, ["sh", "-c", "seq 1 500; sleep 3600"],
            log_path="main.log"))
        log_path = os.path.join(log_dir, "main.log")
        wait_for(lambda: os.path.exists(log_path) and
                 open(log_path).read().endswith(" stdout F 500\n"), 30, "the log's last line")
        url = mux.Exec(container_id=cid, cmd=["echo", "hi"], stdout=True, stderr=True).url
        assert st.spdy_exec(url).stdout == b"hi\n"

        def open_now(kind):
            return total(scrape(daemon), "crimux_streaming_sessions_open", kind=kind)
        # An attach and a port-forward session, each counted open, then left.
        attach = st.SpdyConnection(mux.Attach(container_id=cid, stdout=True).url)
        attach.open_stream({"streamType": "error"})
        attach.open_stream({"streamType": "stdout"})
        wait_for(lambda: open_now("attach") == 1, 30, "the attach session to count")
        attach.abort()
        forward = st.SpdyPortForward(mux.PortForward(pod_sandbox_id=pod_id, port=[9000]).url)
        wait_for(lambda: open_now("port_forward") == 1, 30, "the port-forward to count")
        forward.close()
        # The session's end is counted after its last byte: wait for it.
        wait_for(lambda: total(scrape(daemon), "crimux_streaming_sessions_open") ==
                 total(before, "crimux_streaming_sessions_open"), 30, "the session to end")
        after = scrape(daemon)
        with open(log_path, "rb") as f:
            written = len(f.read())
    finally:
        mux.remove_pod(pod_id)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # Every byte of the CRI log file was counted, and nothing was dropped.
    assert delta("crimux_docker_log_bytes_total") == written
    assert delta("crimux_docker_log_lines_dropped_total") == 0
    for kind in ("exec", "attach", "port_forward"):
        assert delta("crimux_streaming_sessions_total", kind=kind) == 1, kind
    assert delta("crimux_streaming_sessions_total") == 3


def test_pods_and_containers_by_handler_and_state(daemon, mux, lab):
    """Counted from the backends' lists with each health check (every 10 s):
    the figures must come to what crimux lists."""
    runc = sandbox_config("metrics-census-runc-" + RUN, labels=LABELS)
    docker = sandbox_config("metrics-census-docker-" + RUN, labels=LABELS)
    runc_id = mux.run_pod(runc, "runc")
    docker_id = mux.run_pod(docker, "docker")
    try:
        mux.pull(lab.busybox_ref, sandbox=runc)
        cid = mux.start_container(runc_id, runc, container_config(
            "main", lab.busybox_ref, ["sleep", "3600"]))
        mux.StopPodSandbox(pod_sandbox_id=docker_id)

        def listed():
            """{(metric, handler, state): n} from crimux's own lists."""
            api = pb()
            counts = collections.Counter()
            handler_of = {}
            for p in mux.ListPodSandbox().items:
                handler_of[p.id] = p.runtime_handler
                state = "ready" if p.state == api.SANDBOX_READY else "notready"
                counts[("crimux_pod_sandboxes", p.runtime_handler, state)] += 1
            names = {api.CONTAINER_CREATED: "created", api.CONTAINER_RUNNING: "running",
                     api.CONTAINER_EXITED: "exited", api.CONTAINER_UNKNOWN: "unknown"}
            for c in mux.ListContainers().containers:
                counts[("crimux_containers", handler_of.get(c.pod_sandbox_id),
                        names[c.state])] += 1
            return counts

        def agree():
            want = listed()
            got = scrape(daemon)
            for name in ("crimux_pod_sandboxes", "crimux_containers"):
                for (n, labels), v in got.items():
                    if n != name:
                        continue
                    d = dict(labels)
                    if v != want.get((name, d["handler"], d["state"]), 0):
                        return False
            return (want[("crimux_pod_sandboxes", "runc", "ready")] >= 1 and
                    want[("crimux_pod_sandboxes", "docker", "notready")] >= 1 and
                    want[("crimux_containers", "runc", "running")] >= 1)

        wait_for(agree, 60, "the pod and container figures to match crimux's lists")
        after = scrape(daemon)
        for handler in ("runc", "kata", "docker"):  # every handler, every state
            for state in ("ready", "notready"):
                assert ("crimux_pod_sandboxes",
                        frozenset({("handler", handler), ("state", state)})) in after
        assert cid
    finally:
        mux.remove_pod(runc_id)
        mux.remove_pod(docker_id)


def test_promtool_checks_a_live_scrape(daemon, mux, lab):
    calls_for_every_handler(mux, lab)
    # A client may name a handler that is not configured, and not even UTF-8
    # (protobuf-c does not check): it is refused and counted, without
    # becoming a label value, and must not spoil the exposition.
    refused = total(scrape(daemon), "crimux_cri_calls_total", method="RunPodSandbox",
                    handler="", code="INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as bad:
        mux.raw("/runtime.v1.RuntimeService/RunPodSandbox", b"\x0a\x00\x12\x05bad\xff!")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A call is counted when gRPC lets go of it, just after the client has
    # its status.
    wait_for(lambda: total(scrape(daemon), "crimux_cri_calls_total", method="RunPodSandbox",
                           handler="", code="INVALID_ARGUMENT") == refused + 1,
             10, "the refused call to be counted")
    text = scrape_text(daemon.metrics_port)
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", \
        proc.stdout + proc.stderr
    # Every handler served calls in this scrape.
    samples = parse(text)
    for handler in ("runc", "kata", "docker"):
        assert total(samples, "crimux_cri_calls_total", handler=handler) > 0, handler
    assert total(samples, "crimux_cri_calls_total", method="RunPodSandbox", handler="",
                 code="INVALID_ARGUMENT") == refused + 1
    assert "bad" not in text


def test_a_reload_is_counted(daemon):
    before = total(scrape(daemon), "crimux_reloads_total", result="success")
    os.kill(daemon.pid, 1)  # SIGHUP
    wait_for(lambda: total(scrape(daemon), "crimux_reloads_total", result="success")
             == before + 1, 30, "the reload to be counted")


def test_backend_health_reloads_and_rebuild_live(lab, crimuxd_binary):
    """Against two scripted backends: crimux_backend_up follows a backend's
    health checks down and up, its return counts as one reconnect and the
    other backend's none; a reload the file refuses counts as a failure and
    keeps crimuxd serving; the ownership rebuild's duration is a figure."""
    import tempfile
    short = tempfile.mkdtemp(prefix="crxm-", dir="/tmp")  # socket paths are short
    first = FakeBackend(os.path.join(short, "one.sock")).start()
    second = FakeBackend(os.path.join(short, "two.sock")).start()
    port = free_port()
    d = lab.crimuxd(crimuxd_binary, {"one": first.endpoint, "two": second.endpoint}, f"""
[crimux]
default_handler = a
metrics_address = 127.0.0.1:{port}
[handler "a"]
backend = one
[handler "b"]
backend = two
""")
    d.metrics_port = port
    try:
        def up(backend):
            return total(scrape(d), "crimux_backend_up", backend=backend)
        wait_for(lambda: up("one") == 1 and up("two") == 1, 30, "both backends up")
        rebuild = total(scrape(d), "crimux_owner_rebuild_duration_seconds")
        assert 0 < rebuild < 10, rebuild

        second.stop()
        wait_for(lambda: up("two") == 0, 40, "backend two reported down")
        assert up("one") == 1
        second.start()
        wait_for(lambda: up("two") == 1, 40, "backend two reported up again")
        after = scrape(d)
        assert total(after, "crimux_backend_reconnects_total", backend="two") == 1
        assert total(after, "crimux_backend_reconnects_total", backend="one") == 0

        failures = total(after, "crimux_reloads_total", result="failure")
        with open(d.config_path, "a") as f:
            f.write("[crimux]\ndefault_handler = nosuch\n")
        os.kill(d.pid, 1)  # SIGHUP
        wait_for(lambda: total(scrape(d), "crimux_reloads_total", result="failure")
                 == failures + 1, 30, "the refused reload to be counted")
        assert total(scrape(d), "crimux_reloads_total", result="success") == 0
        with CRI(d.endpoint) as client:
            assert client.Version().runtime_name == "crimux"
    finally:
        stop_checked([d], must_run=True)
        first.stop()
        second.stop()
        os.rmdir(short)


def test_stuck_scrapers_do_not_hold_up_calls(daemon, mux):
    # More scrapers than the server has slots: some send half a request and
    # wait, some send a whole one and never read the answer.
    stuck = []
    try:
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /metrics HTTP/1.1\r\n" + (b"\r\n" if i % 2 else b""))
            stuck.append(s)
        # The CRI side does not notice.
        for _ in range(20):
            assert mux.Version().runtime_name == "crimux"
        assert mux.ListPodSandbox() is not None
    finally:
        for s in stuck:
            s.close()
    # Once they are gone, scrapes are served again.
    wait_for(lambda: _try_scrape(daemon.metrics_port), 30, "a scrape to be served")


def _try_scrape(port):
    try:
        return "crimux_cri_calls_total" in scrape_text(port)
    except OSError:
        return False


def test_a_prometheus_server_scrapes_it(daemon, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: crimux
    static_configs:
      - targets: ["127.0.0.1:{daemon.metrics_port}"]
""")
    log = open(tmp_path / "prometheus.log", "w")
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def query(expr):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + \
                  urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.load(r)["data"]["result"]
            except OSError:
                return None

        up = wait_for(lambda: query('up{job="crimux"}'), 60, "Prometheus to scrape crimux")
        assert up[0]["value"][1] == "1", up
        calls = wait_for(lambda: query('sum(crimux_cri_calls_total{method="Version"})'), 30,
                         "crimux's calls in Prometheus")
        assert float(calls[0]["value"][1]) > 0
        # Prometheus's own account of the scrape: nothing it had to drop.
        assert query('scrape_samples_post_metric_relabeling{job="crimux"}')[0]["value"][1] \
            != "0"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_served_on_ipv6_loopback(lab, crimuxd_binary):
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    d = lab.crimuxd(crimuxd_binary, extra_config=f"[crimux]\nmetrics_address = [::1]:{port}\n")
    try:
        with CRI(d.endpoint) as client:
            client.Version()

        def versions():
            with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=30) as r:
                return total(parse(r.read().decode()), "crimux_cri_calls_total",
                             method="Version")
        wait_for(versions, 10, "the Version call counted, scraped over ::1")
    finally:
        stop_checked([d], must_run=True)


def test_a_remote_address_needs_consent(lab, crimuxd_binary, tmp_path):
    config = tmp_path / "crimux.conf"
    config.write_text(f"""[crimux]
socket = {tmp_path}/crimux.sock
metrics_address = 0.0.0.0:{free_port()}
[backend "one"]
endpoint = {lab.containerd.endpoint}
""")
    proc = subprocess.run([crimuxd_binary, "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "metrics_address 0.0.0.0:" in proc.stderr and "not a loopback address" in \
        proc.stderr, proc.stderr
    assert not os.path.exists(f"{tmp_path}/crimux.sock")


def test_check_names_the_endpoint(lab, crimuxd_binary, tmp_path):
    port = free_port()
    for address, extra, verdict, says in (
            (f"127.0.0.1:{port}", "", "OK", "on this node only"),
            (f"0.0.0.0:{port}", "metrics_allow_remote = true\n", "WARN",
             "to other machines, without authentication")):
        config = tmp_path / "crimux.conf"
        config.write_text(f"""[crimux]
socket = {tmp_path}/crimux.sock
metrics_address = {address}
{extra}[backend "one"]
endpoint = {lab.containerd.endpoint}
""")
        proc = subprocess.run([crimuxd_binary, "--config", str(config), "--check"],
                              capture_output=True, text=True, timeout=120)
        line = f"{verdict:<6}metrics: served on {address} at /metrics"
        assert line in proc.stdout and says in proc.stdout, proc.stdout
