"""A node with pods on all three kinds of handler, as the fault tests need it:
"runc" and "kata" on the lab's containerd (backend "one"; there is no KVM
here, so the lab's containerd runs its "kata" handler with the runc shim:
routing and the Kata rules are real, the isolation is not), and "docker" on
crimux's dockershim in front of a private dockerd (backend "docker").

Also what a test needs to say "nothing leaked": every pause container,
IPAM allocation and network namespace on the node, whoever made it.
"""

import glob
import os
import uuid

from lab import env
from lab.cri import container_config, linux_resources, sandbox_config

MIB = 1 << 20
HANDLERS = ("runc", "kata", "docker")
SLEEP = ["sleep", "3600"]
# A line every 10 ms, numbered, until stopped.
COUNTER = "i=0; while true; do i=$((i+1)); echo n-$i; usleep 10000; done"

CONFIG = """
[crimux]
default_handler = runc
[handler "runc"]
backend = one
[handler "kata"]
backend = one
policy = kata
[handler "docker"]
backend = docker
"""


def docker_keys(lab, state_dir, **overrides):
    """The [backend "docker"] keys: the lab's CNI network, crimux's own pause
    image, short poll intervals."""
    keys = {"type": "docker", "state_dir": state_dir, "cni_conf_dir": lab.net.conf_dir,
            "cni_bin_dir": env.CNI_BIN_DIR, "pause_binary": lab.pause_binary,
            "log_poll_interval": "50ms", "stats_layer_ttl": "1s"}
    keys.update(overrides)
    return '[backend "docker"]\n' + "".join(f"{k} = {v}\n" for k, v in keys.items())


def crimuxd(lab, dockerd, binary, state_dir, log_level="debug", **docker):
    """A started env.Crimuxd serving the three handlers (docker: keys of the
    docker backend to change)."""
    return lab.crimuxd(binary, {"one": lab.containerd.endpoint, "docker": dockerd.endpoint},
                       docker_keys(lab, state_dir, **docker) + CONFIG, log_level)


def kata_resources():
    """0.5 CPU request == limit and 512 MiB: a pod (or container) Kata accepts."""
    return linux_resources(500, 500, 512 * MIB)


def pod_config(handler, name=None, labels=None, **kwargs):
    if handler == "kata":
        kwargs.setdefault("resources", kata_resources())
    return sandbox_config(name or f"{handler}-{uuid.uuid4().hex[:8]}", labels=labels,
                          **kwargs)


def ctr_config(handler, name, image, command=SLEEP, **kwargs):
    if handler == "kata":
        kwargs.setdefault("resources", kata_resources())
    return container_config(name, image, command, **kwargs)


# ------------------------------------------------------------------ leaks

def ipam_ips(lab):
    """The addresses host-local has handed out on the lab's network."""
    d = os.path.join(lab.net.ipam_dir, lab.net.name)
    if not os.path.isdir(d):
        return set()
    return {f for f in os.listdir(d) if f[0].isdigit()}


# dockerd's own network namespaces (under its exec root) are not probed: its
# network library deletes them on a timer, up to a minute after the
# container has gone. crimux makes none for docker pods (CNI gets the pause
# process's namespace).

def containerd_netns(lab):
    """Network namespaces containerd keeps mounted (under its state dir)."""
    root = os.path.join(lab.containerd.root_dir, "state")
    return {p for d in glob.glob(os.path.join(root, "**", "netns"), recursive=True)
            for p in glob.glob(os.path.join(d, "*"))}


def docker_sandboxes(dockerd):
    """IDs of every pause container dockerd has (crimux's label)."""
    return {c["Id"] for c in dockerd.containers(label="io.kubernetes.docker.type=podsandbox")}


def containerd_sandboxes(direct):
    """IDs of every sandbox containerd has."""
    return {p.id for p in direct.ListPodSandbox().items}


# ------------------------------------------------------------------ sessions

class Session:
    """An exec session running `cat`, kept open over SPDY as `kubectl exec -i`
    keeps it."""

    def __init__(self, url):
        from lab.streaming import SpdyConnection
        self.conn = SpdyConnection(url)
        self.error = self.conn.open_stream({"streamType": "error"})
        self.stdin = self.conn.open_stream({"streamType": "stdin"})
        self.stdout = self.conn.open_stream({"streamType": "stdout"})

    def echo(self, text, timeout=10):
        want = text.encode()
        self.stdin.write(want)
        self.stdout.wait_for(lambda data: data.endswith(want), timeout)

    def close(self):
        self.conn.close()


class Events:
    """A GetContainerEvents stream read on a thread of its own."""

    def __init__(self, endpoint):
        import threading
        from lab.cri import CRI
        self.client = CRI(endpoint, timeout=3600)
        self.stream = self.client.GetContainerEvents()
        self.seen, self.error = [], None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        import grpc
        try:
            for event in self.stream:
                self.seen.append(event)
        except grpc.RpcError as e:
            self.error = e
        self.done.set()

    def close(self):
        self.stream.cancel()
        self.thread.join(10)
        self.client.close()


class Follower:
    """Reads a CRI log file from one open file descriptor, like tail -f."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self.data = b""

    def read_all(self):
        self.data += self.f.read()
        self.f.close()
        return [int(line.split(b" ", 3)[3][2:]) for line in self.data.splitlines()
                if line.count(b" ") >= 3 and line.split(b" ", 3)[2] == b"F"
                and line.split(b" ", 3)[3].startswith(b"n-")]


def numbers(path, prefix="n-"):
    """The numbers of COUNTER's complete lines in a CRI log file."""
    from lab.docker import read_cri_log
    return [int(text[len(prefix):]) for _, _, tag, text in read_cri_log(path)
            if tag == "F" and text.startswith(prefix)]


def texts(path):
    from lab.docker import read_cri_log
    return [text for _, _, _, text in read_cri_log(path)]


# ------------------------------------------------------------------ crimuxd killed

def _rebuild_figures(log):
    """(sandboxes, containers, seconds) from the last start-up census line."""
    import re
    found = re.findall(r"found (\d+) pod sandboxes and (\d+) containers on the backends "
                       r"in ([0-9.]+) s", log)
    assert found, "crimuxd did not log its ownership rebuild"
    pods, ctrs, secs = found[-1]
    return int(pods), int(ctrs), float(secs)


def sigkill_scenario(lab, dockerd, binary, workdir, n_pods, started, report=print,
                     parallel=1):
    """n_pods pods spread over the handlers (one container each; the first
    pod of each handler logs a numbered line every 10 ms), exec sessions and
    a GetContainerEvents stream open; crimuxd is SIGKILLed, left down a
    second, started again. Asserts that the new crimuxd lists and operates
    everything, that no log line was lost, and that nothing leaked. Returns
    the figures (printed through report). The crimuxd is appended to
    started, for the caller to stop."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from lab.cri import CRI, pb
    from lab.env import wait_for
    from lab.streaming import spdy_exec

    api = pb()
    state = os.path.join(workdir, "docker-state")
    base_ips, base_netns = ipam_ips(lab), containerd_netns(lab)
    direct = CRI(lab.containerd.endpoint, timeout=120)
    base_containerd = containerd_sandboxes(direct)
    base_docker = docker_sandboxes(dockerd)
    daemon = crimuxd(lab, dockerd, binary, state, log_level="info")
    started.append(daemon)
    cri = CRI(daemon.endpoint, timeout=120)
    try:
        for h in HANDLERS:  # each backend pulls for its own pods
            cri.PullImage(image=api.ImageSpec(image=lab.busybox_ref, runtime_handler=h),
                          timeout=120)

        def make(job):
            h, i = job
            logs = os.path.join(workdir, "logs", f"{h}-{i}")
            os.makedirs(logs, exist_ok=True)
            cfg = pod_config(h, name=f"killed-{h}-{i}", log_directory=logs)
            pod = cri.run_pod(cfg, h)
            cmd = ["sh", "-c", COUNTER if i == 0 else f"echo hello-{h}-{i}; exec sleep 3600"]
            cid = cri.start_container(pod, cfg, ctr_config(h, "main", lab.busybox_ref, cmd,
                                                           log_path="main.log"))
            return pod, {"handler": h, "config": cfg, "container": cid, "hello": f"hello-{h}-{i}",
                         "log": os.path.join(logs, "main.log"), "logger": i == 0}

        jobs = [(HANDLERS[k % len(HANDLERS)], k // len(HANDLERS)) for k in range(n_pods)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            pods = dict(pool.map(make, jobs))
        made = time.monotonic() - t0
        loggers = {p: v for p, v in pods.items() if v["logger"]}
        for v in loggers.values():
            wait_for(lambda: len(numbers(v["log"])) > 20, 20, "the first lines")

        # Open at the kill: an exec session per handler and an event stream.
        sessions = {}
        for p, v in pods.items():
            if v["handler"] not in sessions:
                url = cri.Exec(container_id=v["container"], cmd=["cat"], stdin=True,
                               stdout=True).url
                sessions[v["handler"]] = Session(url)
                sessions[v["handler"]].echo("before\n")
        events = Events(daemon.endpoint)
        # A follower per logger, as `kubectl logs -f` reads through the
        # kubelet: the file opened once, read on as it grows.
        followers = {p: Follower(v["log"]) for p, v in loggers.items()}

        daemon.kill()
        at_kill = {p: len(numbers(v["log"])) for p, v in loggers.items()}
        time.sleep(1)  # the containers keep writing
        t0 = time.monotonic()
        daemon.start(timeout=120)
        ready = time.monotonic() - t0
        n_pods, n_ctrs, rebuild = _rebuild_figures(daemon.log())
        figures = {"pods": len(pods), "created_s": round(made, 1),
                   "restart_ready_s": round(ready, 3), "rebuild_s": rebuild,
                   "rebuild_pods": n_pods, "rebuild_containers": n_ctrs}
        report(f"crimuxd SIGKILLed with {len(pods)} pods over {', '.join(HANDLERS)}: "
               f"ownership of {n_pods} sandboxes and {n_ctrs} containers rebuilt in "
               f"{rebuild:.3f} s; serving again {ready:.3f} s after the start")
        assert n_pods >= len(pods) and n_ctrs >= len(pods)

        cri.close()
        cri = CRI(daemon.endpoint, timeout=120)
        # The event stream broke with crimuxd (it does not hang); a new one opens.
        assert events.done.wait(10), "the event stream hangs after crimuxd died"
        assert events.error is not None
        events.close()
        events = Events(daemon.endpoint)

        # Sessions: containerd's stream server outlives crimuxd; crimux's own
        # (docker pods) died with it and says so by closing.
        for h, s in sessions.items():
            if h == "docker":
                assert s.conn.wait_closed(10), "a docker exec session outlived crimuxd"
            else:
                s.echo("after\n")
            s.close()

        # Every pod and container is listed, with its handler.
        listed = {p.id: p for p in cri.ListPodSandbox().items}
        assert {p: listed[p].runtime_handler for p in pods if p in listed} == \
            {p: v["handler"] for p, v in pods.items()}
        assert all(listed[p].state == api.SANDBOX_READY for p in pods)
        ctrs = {c.id: c for c in cri.ListContainers().containers}
        for p, v in pods.items():
            c = ctrs[v["container"]]
            assert (c.pod_sandbox_id, c.state) == (p, api.CONTAINER_RUNNING)
        # No pause container or sandbox crimux does not know of.
        assert docker_sandboxes(dockerd) - base_docker <= set(listed)
        assert containerd_sandboxes(direct) - base_containerd <= set(listed)

        # Operate each: exec, logs, a new exec session.
        for p, v in pods.items():
            cid = v["container"]
            out = cri.ExecSync(container_id=cid, cmd=["echo", cid[:12]], timeout=10)
            assert (out.exit_code, out.stdout) == (0, cid[:12].encode() + b"\n")
            assert cri.ContainerStatus(container_id=cid).status.log_path == v["log"]
            if not v["logger"]:
                assert v["hello"] in texts(v["log"])
        for h in HANDLERS:
            v = next(v for v in pods.values() if v["handler"] == h)
            url = cri.Exec(container_id=v["container"], cmd=["echo", "fresh"],
                           stdout=True).url
            assert spdy_exec(url, stderr=False).stdout == b"fresh\n"
        for p, v in loggers.items():
            wait_for(lambda: len(numbers(v["log"])) > at_kill[p] + 150, 20,
                     "lines written after the restart")

        # Stop and remove each, containers first, as the kubelet does.
        for p, v in pods.items():
            cri.StopContainer(container_id=v["container"], timeout=0)
        for p, v in loggers.items():
            got = numbers(v["log"])
            assert sorted(set(got)) == list(range(1, max(got) + 1)), \
                f"{v['handler']}: lines lost while crimuxd was down"
            # The follower saw them too: the file was written on, not replaced.
            followed = followers.pop(p).read_all()
            assert followed and followed[-1] == got[-1], \
                f"{v['handler']}: the follower stopped at {followed[-1:]} of {got[-1]}"
            # A crash between a copy and its position file repeats a batch.
            assert len(got) - len(set(got)) < 100
        for p, v in pods.items():
            cri.RemoveContainer(container_id=v["container"])
            cri.StopPodSandbox(pod_sandbox_id=p)
            cri.RemovePodSandbox(pod_sandbox_id=p)
        listed = {p.id for p in cri.ListPodSandbox().items}
        assert not listed & set(pods)
        assert not {c.id for c in cri.ListContainers().containers} & \
            {v["container"] for v in pods.values()}
        events.close()
    finally:
        cri.close()

    # Nothing leaked: pause containers, sandboxes, addresses, namespaces.
    assert docker_sandboxes(dockerd) == base_docker
    assert containerd_sandboxes(direct) == base_containerd
    direct.close()
    assert ipam_ips(lab) == base_ips
    assert containerd_netns(lab) == base_netns
    return figures
