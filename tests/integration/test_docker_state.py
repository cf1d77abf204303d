"""The docker backend's state cache and stats (issue 12): lists and stats
make no Docker call per container, StopContainer makes one Docker call,
the cache follows changes made behind crimux's back (docker stop, start,
kill, rm), and stats are what the container's cgroup files say.

A counting proxy sits between crimuxd and dockerd and records the request
line of every Engine API call crimuxd makes (crimux opens one connection
per call). The cache's own calls are told apart from the handlers' by
`?size=0` on its inspects, its label-only list filter, and /events."""

import json
import os
import socket
import threading
import time
import urllib.parse
import uuid

import grpc
import pytest

from lab.cri import CRI, container_config, pb, sandbox_config
from lab.env import wait_for


class CountingProxy:
    """A unix-socket relay in front of dockerd that notes each request line."""

    def __init__(self, path, target):
        self.path, self.target = path, target
        self.lines = []
        self.lock = threading.Lock()
        self.hold_cache_inspects = 0.0  # seconds each of the cache's inspects waits
        self.hold_inspects = 0.0  # the same for every other inspect
        self.fail_deletes = False  # answer every DELETE with a 500, dockerd never sees it
        self.fail_inspects = set()  # IDs whose inspects (not the cache's) get a 500
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            return
        first = [True]

        def pump(src, dst, note):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if note and first[0]:
                        first[0] = False
                        line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                        with self.lock:
                            self.lines.append(line)
                        inspect = self.inspected(line)
                        if self.hold_cache_inspects and "/json?size=0" in line:
                            time.sleep(self.hold_cache_inspects)
                        if self.hold_inspects and inspect:
                            time.sleep(self.hold_inspects)
                        if (self.fail_deletes and line.startswith("DELETE ")) or \
                                inspect in self.fail_inspects:
                            body = b'{"message": "injected failure"}'
                            src.sendall(b"HTTP/1.1 500 Internal Server Error\r\n"
                                        b"Content-Type: application/json\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                            break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        t.start()
        pump(client, upstream, True)
        t.join(5)
        client.close()
        upstream.close()

    @staticmethod
    def inspected(line):
        """The container an inspect that is not the cache's asks about."""
        method, target = line.split(" ")[:2]
        parts = target.split("/")
        if method == "GET" and len(parts) == 5 and parts[2] == "containers" and \
                parts[4] == "json":
            return parts[3]
        return None

    def take(self):
        """The calls since the last take, without the cache's own."""
        with self.lock:
            lines, self.lines = self.lines, []
        return [line for line in lines if not self.is_cache(line)]

    @staticmethod
    def is_cache(line):
        method, target = line.split(" ")[:2]
        path, _, query = target.partition("?")
        if path.endswith("/events") or "size=0" in query.split("&"):
            return True
        if path.endswith("/containers/json"):
            filters = json.loads(urllib.parse.parse_qs(query).get("filters", ["{}"])[0])
            return filters.get("label") == ["io.kubernetes.docker.type"]
        return False

    def cache_inspects(self, cid):
        """The cache's inspects of cid since the last call, noting nothing
        else (take() still sees the rest)."""
        with self.lock:
            mine = [line for line in self.lines if f"/containers/{cid}/json?size=0" in line]
            self.lines = [line for line in self.lines if line not in mine]
        return len(mine)

    def close(self):
        self.closed = True
        self.server.close()


@pytest.fixture
def proxied(lab, dockerd, crimuxd_binary, tmp_path):
    """(crimuxd, proxy, CRI client): a crimuxd whose dockerd is behind the
    counting proxy; reconciling rarely, so what a test sees is events."""
    from conftest import docker_backend_config, stop_checked
    proxy = CountingProxy(str(tmp_path / "docker.sock"), dockerd.socket)
    state = tmp_path / "state"
    state.mkdir()
    daemon = lab.crimuxd(crimuxd_binary, {"docker": "unix://" + proxy.path},
                         docker_backend_config(lab, str(state),
                                               state_reconcile_interval="3600s"))
    try:
        with CRI(daemon.endpoint) as cri:
            cri.pull(lab.busybox_ref)
            yield daemon, proxy, cri
            cri.remove_all_pods()
    finally:
        stop_checked([daemon])
        proxy.close()


def pod_with_container(cri, lab, name, command=("sleep", "1000")):
    sb = sandbox_config(name + "-" + uuid.uuid4().hex[:6])
    pod = cri.run_pod(sb)
    cid = cri.start_container(pod, sb, container_config("main", lab.busybox_ref,
                                                        list(command)))
    return pod, cid


def cached(proxy, cri):
    """True once lists are answered without asking Docker: the cache is
    live, and the start events of the containers just started are in (till
    then their stats ask Docker for the process)."""
    proxy.take()
    cri.ListContainers()
    cri.ListContainerStats()
    return not proxy.take()


def test_lists_and_stats_make_no_docker_call_per_container(proxied, lab):
    _, proxy, cri = proxied
    pods = [pod_with_container(cri, lab, f"quiet{i}") for i in range(3)]
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    proxy.take()
    containers = cri.ListContainers().containers
    sandboxes = cri.ListPodSandbox().items
    cstats = cri.ListContainerStats().stats
    pstats = cri.ListPodSandboxStats().stats
    assert proxy.take() == []
    mine = {cid for _, cid in pods}
    assert mine <= {c.id for c in containers}
    assert {p for p, _ in pods} <= {s.id for s in sandboxes if s.state == pb().SANDBOX_READY}
    assert mine <= {s.attributes.id for s in cstats}
    assert {p for p, _ in pods} <= {s.attributes.id for s in pstats}
    # The relist's answer (memoised packed replies) is the filtered path's.
    api = pb()
    running = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    assert ({c.id: c for c in containers if c.state == api.CONTAINER_RUNNING} ==
            {c.id: c for c in cri.ListContainers(filter=running).containers})
    ready = api.PodSandboxFilter(state=api.PodSandboxStateValue(state=api.SANDBOX_READY))
    assert ({s.id: s for s in sandboxes if s.state == api.SANDBOX_READY} ==
            {s.id: s for s in cri.ListPodSandbox(filter=ready).items})
    proxy.take()
    # Lookups by ID too: status, stats of one.
    cri.ContainerStatus(container_id=pods[0][1])
    cri.PodSandboxStatus(pod_sandbox_id=pods[0][0])
    cri.ContainerStats(container_id=pods[0][1])
    assert proxy.take() == []


def test_stop_container_is_one_docker_call(proxied, lab):
    _, proxy, cri = proxied
    pod, cid = pod_with_container(cri, lab, "stop1")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    proxy.take()
    cri.StopContainer(container_id=cid, timeout=0)
    assert proxy.take() == [f"POST /v1.41/containers/{cid}/stop?t=0 HTTP/1.1"]
    # And what crimux changed shows at once, before Docker's event is in.
    [c] = cri.ListContainers(filter=pb().ContainerFilter(id=cid)).containers
    assert c.state == pb().CONTAINER_EXITED
    assert cri.ContainerStatus(container_id=cid).status.state == pb().CONTAINER_EXITED
    # A stopped container is removed without another stop first.
    proxy.take()
    cri.RemoveContainer(container_id=cid)
    assert proxy.take() == [f"DELETE /v1.41/containers/{cid}?force=1&v=1 HTTP/1.1"]
    assert state_of(cri, cid) is None


def test_pod_teardown_makes_the_calls_it_needs(proxied, lab):
    """The kubelet's teardown, each call right after the one before (before
    Docker's events are in): StopContainer a stop, RemoveContainer a
    delete, StopPodSandbox the pause's stop, RemovePodSandbox its delete;
    nothing looked up again."""
    _, proxy, cri = proxied
    pod, cid = pod_with_container(cri, lab, "teardown")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    calls = []
    for call, args in (("StopContainer", dict(container_id=cid, timeout=0)),
                       ("RemoveContainer", dict(container_id=cid)),
                       ("StopPodSandbox", dict(pod_sandbox_id=pod)),
                       ("RemovePodSandbox", dict(pod_sandbox_id=pod))):
        proxy.take()
        getattr(cri, call)(**args)
        calls.append((call, [" ".join(line.split(" ")[:2]) for line in proxy.take()]))
    assert calls == [
        ("StopContainer", [f"POST /v1.41/containers/{cid}/stop?t=0"]),
        ("RemoveContainer", [f"DELETE /v1.41/containers/{cid}?force=1&v=1"]),
        ("StopPodSandbox", [f"POST /v1.41/containers/{pod}/stop?t=10"]),
        ("RemovePodSandbox", [f"DELETE /v1.41/containers/{pod}?force=1&v=1"])]
    assert sandbox_state(cri, pod) is None


def test_a_failed_delete_loses_nothing(proxied, lab, tmp_path):
    """crimux drops its own file for a container or pod while dockerd
    deletes it. When the delete fails, the container is still listed, and
    the pod keeps its checkpoint (listed, not ready); a retry removes both."""
    _, proxy, cri = proxied
    api = pb()
    pod, cid = pod_with_container(cri, lab, "faildel")
    cri.StopContainer(container_id=cid, timeout=0)
    cri.StopPodSandbox(pod_sandbox_id=pod)
    checkpoint = tmp_path / "state" / "sandboxes" / (pod + ".json")
    recorded = json.loads(checkpoint.read_text())
    proxy.fail_deletes = True
    with pytest.raises(grpc.RpcError) as failed:
        cri.RemoveContainer(container_id=cid)
    assert "injected failure" in failed.value.details()
    assert [c.state for c in cri.ListContainers().containers if c.id == cid] == \
        [api.CONTAINER_EXITED]
    proxy.fail_deletes = False
    cri.RemoveContainer(container_id=cid)
    proxy.fail_deletes = True
    with pytest.raises(grpc.RpcError) as failed:
        cri.RemovePodSandbox(pod_sandbox_id=pod)
    assert "injected failure" in failed.value.details()
    assert json.loads(checkpoint.read_text()) == recorded  # put back after the failed delete
    assert sandbox_state(cri, pod) == api.SANDBOX_NOTREADY
    assert cri.PodSandboxStatus(pod_sandbox_id=pod).status.state == api.SANDBOX_NOTREADY
    proxy.fail_deletes = False
    cri.RemovePodSandbox(pod_sandbox_id=pod)
    assert sandbox_state(cri, pod) is None
    assert not checkpoint.exists()


def test_run_pod_sandbox_makes_the_calls_it_needs(proxied, lab, dockerd):
    """create, start, inspect (for the pid): the name and the sandbox image
    are not looked up first while the cache and an earlier pod vouch for
    them; when that is wrong Docker says so and the checks run."""
    _, proxy, cri = proxied
    pod_with_container(cri, lab, "first")  # loads the sandbox image
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    proxy.take()
    pod = cri.run_pod(sandbox_config("counted-" + uuid.uuid4().hex[:6]))
    calls = [" ".join(line.split(" ")[:2]).split("?")[0] for line in proxy.take()]
    assert calls == ["POST /v1.41/containers/create", f"POST /v1.41/containers/{pod}/start",
                     f"GET /v1.41/containers/{pod}/json"]
    # CreateContainer: create alone (the cache's inspect on Docker's create
    # event fills the entry); StartContainer: start alone (Docker's log file
    # is where it always is).
    sb = sandbox_config("counted2-" + uuid.uuid4().hex[:6])
    pod = cri.run_pod(sb)
    proxy.take()
    cfg = container_config("main", lab.busybox_ref, ["sh", "-c", "echo hello; sleep 1000"],
                           log_path="main.log")
    sb.log_directory = str(lab.workdir) + "/counted-logs-" + uuid.uuid4().hex[:6]
    os.makedirs(sb.log_directory)
    cid = cri.CreateContainer(pod_sandbox_id=pod, config=cfg, sandbox_config=sb).container_id
    calls = [" ".join(line.split(" ")[:2]).split("?")[0] for line in proxy.take()]
    assert calls == ["POST /v1.41/containers/create"]
    # A list right after the create shows it, every field (the image's ID
    # among them), from the cache.
    [c] = cri.ListContainers(filter=pb().ContainerFilter(id=cid)).containers
    assert c.state == pb().CONTAINER_CREATED
    assert c.image_ref == dockerd.inspect(cid)["Image"]
    assert c.metadata.name == "main"
    assert proxy.take() == []
    cri.StartContainer(container_id=cid)
    assert proxy.take() == [f"POST /v1.41/containers/{cid}/start HTTP/1.1"]
    assert state_of(cri, cid) == pb().CONTAINER_RUNNING
    log = os.path.join(sb.log_directory, "main.log")
    wait_for(lambda: os.path.exists(log) and "hello" in open(log).read(), 10,
             "the container's log line in its CRI log")


def test_a_slow_create_event_costs_a_list_at_most_a_second(proxied, lab):
    """While Docker is slow to answer the inspect its create event brings,
    a list waits for the pending container at most a second, then asks
    Docker itself: it never misses the container, and never hangs."""
    _, proxy, cri = proxied
    pod, _ = pod_with_container(cri, lab, "slowev")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    sb = sandbox_config("slowev2-" + uuid.uuid4().hex[:6])
    proxy.hold_cache_inspects = 5.0
    try:
        cid = cri.CreateContainer(pod_sandbox_id=pod, config=container_config(
            "slow", lab.busybox_ref, ["sleep", "1000"]), sandbox_config=sb).container_id
        proxy.take()
        t0 = time.monotonic()
        found = cri.ListContainers(filter=pb().ContainerFilter(id=cid)).containers
        waited = time.monotonic() - t0
    finally:
        proxy.hold_cache_inspects = 0.0
    assert [c.id for c in found] == [cid]
    assert 0.9 < waited < 4, waited
    assert any(line.startswith("GET /v1.41/containers/json") for line in proxy.take())
    # Once the event's inspect is in, the cache answers again.
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists again")


def test_events_that_change_nothing_cost_no_inspect(proxied, lab, dockerd):
    """Docker reports an exec's creation, start and end, each kill signal
    and the stop that follows a container's die: none changes what the
    cache keeps, so none costs an inspect (the kubelet's exec probes would
    otherwise cost three each). The die does. An update is the barrier:
    Docker's events come in order, so once its inspect is seen, every
    earlier event was handled."""
    _, proxy, cri = proxied
    pod, cid = pod_with_container(cri, lab, "quietev")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    proxy.cache_inspects(cid)

    def inspected_after(action):
        dockerd.request("POST", f"/containers/{cid}/update", {"CpuShares": 512})
        counted = []
        wait_for(lambda: counted.append(proxy.cache_inspects(cid)) or sum(counted), 10,
                 f"the cache's inspect for the update after {action}")
        time.sleep(0.2)  # what an earlier event cost may still be on its way
        return sum(counted) + proxy.cache_inspects(cid) - 1  # less the update's own

    for _ in range(3):
        assert cri.ExecSync(container_id=cid, cmd=["true"], timeout=10).exit_code == 0
    assert inspected_after("three execs") == 0
    dockerd.request("POST", f"/containers/{cid}/kill?signal=SIGWINCH")
    assert inspected_after("a kill signal the container survives") == 0
    assert state_of(cri, cid) == pb().CONTAINER_RUNNING
    # Behind crimux's back, so only the events tell the cache.
    dockerd.request("POST", f"/containers/{cid}/stop?t=0")
    assert inspected_after("a stop") == 1  # the die's
    status = cri.ContainerStatus(container_id=cid).status
    assert status.state == pb().CONTAINER_EXITED and status.finished_at > 0
    assert status.exit_code == 137


def test_sandbox_image_removed_behind_crimux(proxied, lab, dockerd):
    _, proxy, cri = proxied
    pod, _ = pod_with_container(cri, lab, "img1")
    image = dockerd.inspect(pod)["Image"]
    cri.remove_pod(pod)
    dockerd.request("DELETE", f"/images/{image}?force=1")
    _, cid = pod_with_container(cri, lab, "img2")  # loaded again
    assert state_of(cri, cid) == pb().CONTAINER_RUNNING


def test_name_taken_behind_crimux(proxied, lab, dockerd):
    """Not in the cache yet, a container of the sandbox's name made with
    Docker's API: the create conflicts, and the answer is as before."""
    _, proxy, cri = proxied
    pod_with_container(cri, lab, "warm")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    sb = sandbox_config("taken-" + uuid.uuid4().hex[:6])
    md = sb.metadata
    name = f"k8s_POD_{md.name}_{md.namespace}_{md.uid}_{md.attempt}"
    other = dockerd.request("POST", "/containers/create?name=" + name,
                            {"Image": lab.busybox_ref, "Cmd": ["true"],
                             "HostConfig": {"NetworkMode": "none"}})["Id"]
    try:
        import grpc
        with pytest.raises(grpc.RpcError) as err:
            cri.run_pod(sb)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, err.value.details()
    finally:
        dockerd.request("DELETE", f"/containers/{other}?force=1")
    assert cri.run_pod(sb)  # and with the name free, it works


def state_of(cri, cid):
    found = cri.ListContainers(filter=pb().ContainerFilter(id=cid)).containers
    return found[0].state if found else None


def sandbox_state(cri, pod):
    found = cri.ListPodSandbox(filter=pb().PodSandboxFilter(id=pod)).items
    return found[0].state if found else None


def test_cache_follows_changes_behind_crimux(proxied, lab, dockerd):
    _, proxy, cri = proxied
    api = pb()
    pod, cid = pod_with_container(cri, lab, "oob")
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    assert state_of(cri, cid) == api.CONTAINER_RUNNING

    dockerd.request("POST", f"/containers/{cid}/stop?t=0")
    wait_for(lambda: state_of(cri, cid) == api.CONTAINER_EXITED, 10, "exited after docker stop")
    status = cri.ContainerStatus(container_id=cid).status
    assert status.state == api.CONTAINER_EXITED and status.finished_at > 0

    dockerd.request("POST", f"/containers/{cid}/start")
    wait_for(lambda: state_of(cri, cid) == api.CONTAINER_RUNNING, 10, "running after docker start")
    pid = dockerd.inspect(cid)["State"]["Pid"]
    stats = cri.ContainerStats(container_id=cid).stats
    assert stats.cpu.usage_core_nano_seconds.value > 0  # the new process's cgroup
    assert cgroup_file(pid, "memory", "memory.usage_in_bytes") is not None

    dockerd.request("DELETE", f"/containers/{cid}?force=1")
    wait_for(lambda: state_of(cri, cid) is None, 10, "gone after docker rm")

    pause = pod
    dockerd.request("POST", f"/containers/{pause}/kill")
    wait_for(lambda: sandbox_state(cri, pod) == api.SANDBOX_NOTREADY, 10,
             "not ready after the pause container was killed")
    # None of that needed a Docker call per list.
    proxy.take()
    cri.ListContainers()
    cri.ListPodSandbox()
    assert proxy.take() == []


def test_first_sync_finds_pods_and_only_crimux_containers(proxied, lab, dockerd,
                                                          docker_crimuxd_factory):
    """A container made with Docker's own API (no CRI labels) never shows;
    pods made before a crimuxd started are found by its first sync."""
    _, proxy, cri = proxied
    stranger = dockerd.request("POST", "/containers/create?name=stranger-" + uuid.uuid4().hex[:6],
                               {"Image": lab.busybox_ref, "Cmd": ["sleep", "100"],
                                "HostConfig": {"NetworkMode": "none"}})["Id"]
    try:
        pod, cid = pod_with_container(cri, lab, "seen")
        wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
        ids = {c.id for c in cri.ListContainers().containers}
        assert cid in ids and stranger not in ids
        later = docker_crimuxd_factory()
        with CRI(later.endpoint) as other:
            wait_for(lambda: cid in {c.id for c in other.ListContainers().containers}, 20,
                     "the pod in a second crimuxd")
            [c] = other.ListContainers(filter=pb().ContainerFilter(id=cid)).containers
            assert c.state == pb().CONTAINER_RUNNING and c.pod_sandbox_id == pod
    finally:
        dockerd.request("DELETE", f"/containers/{stranger}?force=1")


# --- stats against the cgroup files -------------------------------------------

def _mounts():
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            root, point, fstype, opts = fields[3], fields[4], rfields[0], rfields[2]
            if fstype == "cgroup2":
                out.setdefault("", (root, point))
            elif fstype == "cgroup":
                for o in opts.split(","):
                    out.setdefault(o, (root, point))
    return out


def cgroup_file(pid, controller, name):
    """The text of a cgroup file of pid's (v1 controller, else v2)."""
    mounts = _mounts()
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, ctrls, path in lines:
        names = ctrls.split(",") if ctrls else [""]
        for key in ([controller] if controller in mounts else [""]):
            if key in names and key in mounts:
                root, point = mounts[key]
                rel = path[len(root):] if root != "/" and path.startswith(root) else path
                try:
                    with open(os.path.join(point + rel, name)) as g:
                        return g.read()
                except FileNotFoundError:
                    return None
    return None


def stat_value(text, key):
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    raise KeyError(key)


def host_sample(pid):
    """(cpu ns, working set, rss) as the cgroup files say, v1 or v2."""
    usage = cgroup_file(pid, "cpuacct", "cpuacct.usage")
    if usage is not None:
        cpu = int(usage)
        mem = int(cgroup_file(pid, "memory", "memory.usage_in_bytes"))
        st = cgroup_file(pid, "memory", "memory.stat")
        inactive, rss = stat_value(st, "total_inactive_file"), stat_value(st, "total_rss")
    else:
        cpu = stat_value(cgroup_file(pid, "", "cpu.stat"), "usage_usec") * 1000
        mem = int(cgroup_file(pid, "", "memory.current"))
        st = cgroup_file(pid, "", "memory.stat")
        inactive, rss = stat_value(st, "inactive_file"), stat_value(st, "anon")
    return cpu, max(mem - inactive, 0), rss


def test_stats_are_the_cgroup_values(proxied, lab, dockerd):
    _, proxy, cri = proxied
    burner = "while true; do :; done & sleep 1000"
    pod, cid = pod_with_container(cri, lab, "burn", ("sh", "-c", burner))
    wait_for(lambda: cached(proxy, cri), 20, "the state cache to answer lists")
    pid = dockerd.inspect(cid)["State"]["Pid"]
    # The rate is taken against the last sample at least a second older:
    # let the waiting's samples age, so the next one becomes that sample.
    time.sleep(1.2)

    def mine(stats):
        return [s for s in stats if s.attributes.id == cid]

    before = host_sample(pid)
    [one] = mine(cri.ListContainerStats().stats)
    after = host_sample(pid)
    # CPU only grows: crimux's reading lies between two of ours.
    assert before[0] <= one.cpu.usage_core_nano_seconds.value <= after[0]
    # Memory of a container that only spins barely moves: within the two.
    lo, hi = min(before[1], after[1]), max(before[1], after[1])
    assert lo - 65536 <= one.memory.working_set_bytes.value <= hi + 65536
    lo, hi = min(before[2], after[2]), max(before[2], after[2])
    assert lo - 65536 <= one.memory.rss_bytes.value <= hi + 65536

    time.sleep(0.5)
    [two] = mine(cri.ListContainerStats().stats)
    # usage_nano_cores: the rate between crimux's two samples, exactly.
    dt = two.cpu.timestamp - one.cpu.timestamp
    dcpu = two.cpu.usage_core_nano_seconds.value - one.cpu.usage_core_nano_seconds.value
    assert dt > 0 and dcpu > 0
    assert two.cpu.usage_nano_cores.value == pytest.approx(dcpu * 1e9 / dt, rel=1e-6, abs=2)
    # A spinning shell uses a good part of a core.
    assert two.cpu.usage_nano_cores.value > 50_000_000

    # The pod's figure is its containers' plus the pause container's.
    [p] = [s for s in cri.ListPodSandboxStats().stats if s.attributes.id == pod]
    [c] = [c for c in p.linux.containers if c.attributes.id == cid]
    assert p.linux.cpu.usage_core_nano_seconds.value >= c.cpu.usage_core_nano_seconds.value
    assert p.linux.process.process_count.value >= 3  # pause, sh, the loop (and sleep)


# --- recovery after a restart -------------------------------------------------

@pytest.fixture
def restartable(lab, dockerd, crimuxd_binary, tmp_path):
    """(start, proxy, state dir): start() runs a crimuxd on the same state
    behind the counting proxy; each is stopped after the test."""
    from conftest import docker_backend_config, stop_checked
    proxy = CountingProxy(str(tmp_path / "docker.sock"), dockerd.socket)
    state = tmp_path / "state"
    state.mkdir()
    config = docker_backend_config(lab, str(state), state_reconcile_interval="3600s")
    started = []

    def start():
        started.append(lab.crimuxd(crimuxd_binary, {"docker": "unix://" + proxy.path}, config))
        return started[-1]
    try:
        yield start, proxy, state
    finally:
        if started:
            with CRI(started[-1].endpoint) as cri:
                cri.remove_all_pods()
        stop_checked(started)
        proxy.close()


def test_calls_wait_for_the_one_recovery(restartable, lab, log_dir):
    """The kubelet's first calls after a restart wait for the recovery
    thread instead of each making the recovery again (an inspect of every
    container whose log it follows, when dockerd is busiest); all are
    answered."""
    start, proxy, _ = restartable
    first = start()
    cids = set()
    with CRI(first.endpoint) as cri:
        cri.pull(lab.busybox_ref)
        for i in range(3):
            sb = sandbox_config(f"again{i}-" + uuid.uuid4().hex[:6], log_directory=log_dir)
            cids.add(cri.start_container(cri.run_pod(sb), sb, container_config(
                "main", lab.busybox_ref, ["sleep", "1000"], log_path=f"again{i}.log")))
    first.kill()
    proxy.hold_inspects = 1.0  # a recovery of 3 s at least
    proxy.take()
    second = start()
    answers, errors = [], []

    def kubelet_call():
        try:
            with CRI(second.endpoint) as cri:
                answers.append({c.id for c in cri.ListContainers(timeout=60).containers})
        except grpc.RpcError as e:
            errors.append(e)
    calls = [threading.Thread(target=kubelet_call) for _ in range(6)]
    for t in calls:
        t.start()
    for t in calls:
        t.join(90)
    proxy.hold_inspects = 0.0
    assert not errors, errors
    assert answers == [cids] * 6
    inspects = [CountingProxy.inspected(line) for line in proxy.take()]
    assert sorted(i for i in inspects if i in cids) == sorted(cids), inspects


def test_no_answer_is_not_a_pod_gone(restartable, lab, dockerd):
    """A torn checkpoint's pod whose inspect gets no answer is left torn for
    the next attempt, not taken for a pod Docker lost (its checkpoint
    dropped, and its running pause container listed READY)."""
    start, proxy, state = restartable
    first = start()
    with CRI(first.endpoint) as cri:
        cri.pull(lab.busybox_ref)
        pod, _ = pod_with_container(cri, lab, "noanswer")
    first.kill()
    checkpoint = state / "sandboxes" / (pod + ".json")
    text = checkpoint.read_bytes()
    checkpoint.write_bytes(text[:len(text) // 2])
    proxy.fail_inspects = {pod}
    with CRI(start().endpoint) as cri:
        for _ in range(3):  # each waits for an attempt, which fails
            assert sandbox_state(cri, pod) == pb().SANDBOX_NOTREADY
            assert checkpoint.read_bytes() == text[:len(text) // 2]
            time.sleep(0.5)
        proxy.fail_inspects = set()
        wait_for(lambda: checkpoint.read_bytes() != text[:len(text) // 2], 10,
                 "the next attempt")
        assert json.loads(checkpoint.read_text())["distrusted"] is True
        assert sandbox_state(cri, pod) == pb().SANDBOX_NOTREADY
