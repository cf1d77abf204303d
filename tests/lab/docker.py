"""A private Docker Engine for the tests of crimux's docker backend.

`Dockerd` runs dockerd 20.10 (API 1.41) with everything under a directory of
its own: data root, exec root (with its managed containerd), socket and pid
file.  It has no bridge and no iptables rules (`--bridge=none
--iptables=false`): pods get their network from CNI, through crimux.  The
storage driver is overlay2.  Docker treats 127.0.0.0/8 registries as
insecure by default, so the lab's loopback registries work over plain HTTP.

`stop()` removes every container, stops dockerd, kills shims a crash may
have left and unmounts what is left under the directory.
"""

import http.client
import io
import json
import os
import signal
import socket
import urllib.parse

from . import env

API = "/v1.41"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class DockerError(Exception):
    def __init__(self, status, message):
        super().__init__(f"docker API {status}: {message}")
        self.status, self.message = status, message


class Dockerd:
    def __init__(self, root_dir):
        self.root_dir = os.path.abspath(root_dir)
        os.makedirs(self.root_dir, exist_ok=True)
        self.socket = os.path.join(self.root_dir, "docker.sock")
        self.endpoint = "unix://" + self.socket
        self.data_root = os.path.join(self.root_dir, "data")
        # Short: containerd's socket lives under it (108-byte limit).
        self.exec_root = os.path.join(self.root_dir, "x")
        config = os.path.join(self.root_dir, "daemon.json")
        with open(config, "w") as f:
            json.dump({}, f)  # not /etc/docker/daemon.json
        argv = ["dockerd", "--config-file", config,
                "--data-root", self.data_root, "--exec-root", self.exec_root,
                "--pidfile", os.path.join(self.root_dir, "docker.pid"),
                "-H", self.endpoint,
                "--bridge=none", "--iptables=false",
                "--ip-forward=false", "--ip-masq=false",
                "--storage-driver=overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--oom-score-adjust=0", "--log-level=warn"]
        self.daemon = env.Daemon("dockerd", argv, os.path.join(self.root_dir, "dockerd.log"))

    # -- the Engine API ---------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=60, raw=False):
        """One API call; returns the decoded JSON (or bytes with raw=True).
        Raises DockerError for HTTP status >= 400."""
        conn = _UnixConnection(self.socket, timeout)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                if isinstance(body, (bytes, bytearray)):
                    data = bytes(body)
                    hdrs.setdefault("Content-Type", "application/x-tar")
                else:
                    data = json.dumps(body).encode()
                    hdrs["Content-Type"] = "application/json"
            conn.request(method, API + path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status >= 400:
                try:
                    message = json.loads(payload).get("message", "")
                except ValueError:
                    message = payload.decode(errors="replace")
                raise DockerError(resp.status, message)
            if raw:
                return payload
            if not payload:
                return None
            try:
                return json.loads(payload)
            except ValueError:  # a stream of JSON messages
                return [json.loads(line) for line in payload.splitlines() if line.strip()]
        finally:
            conn.close()

    def ping(self):
        try:
            return self.request("GET", "/_ping", timeout=2, raw=True) == b"OK"
        except (OSError, DockerError):
            return False

    def containers(self, all=True, label=None):
        filters = {"label": [label]} if label else {}
        q = urllib.parse.urlencode({"all": int(all), "filters": json.dumps(filters)})
        return self.request("GET", "/containers/json?" + q)

    def inspect(self, container_id):
        return self.request("GET", f"/containers/{container_id}/json")

    def images(self):
        return self.request("GET", "/images/json")

    def image_exists(self, ref):
        try:
            self.request("GET", f"/images/{ref}/json")
            return True
        except DockerError as e:
            if e.status == 404:
                return False
            raise

    def load(self, image, ref):
        """`docker load` an images.Image under `ref`."""
        path = os.path.join(self.root_dir, "load.tar")
        image.write_archive(path, ref)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        for message in self.request("POST", "/images/load", body=data) or []:
            if "error" in message:
                raise DockerError(500, message["error"])

    def remove_image(self, ref):
        try:
            self.request("DELETE", f"/images/{ref}?force=1")
        except DockerError as e:
            if e.status != 404:
                raise

    def kill(self, container_id):
        self.request("POST", f"/containers/{container_id}/kill")

    def remove_container(self, container_id):
        try:
            self.request("DELETE", f"/containers/{container_id}?force=1&v=1")
        except DockerError as e:
            if e.status != 404:
                raise

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout=60):
        self.daemon.spawn()
        self.daemon.wait_ready(self.ping, timeout)
        return self

    def stop(self):
        """Remove all containers, stop dockerd, then clear what may survive it."""
        try:
            if self.daemon.running():
                for c in self.containers():
                    self.remove_container(c["Id"])
        finally:
            self.daemon.terminate()
            self._kill_shims()
            env.unmount_under(self.root_dir)

    def _kill_shims(self):
        address = os.path.join(self.exec_root, "containerd")
        shims = [pid for pid, argv in env._processes()
                 if argv and os.path.basename(argv[0]).startswith("containerd-shim")
                 and any(a.startswith(address) for a in argv)]
        for pid in shims:
            env._signal(pid, signal.SIGKILL)
        env.wait_for(lambda: all(env._started(pid) is None for pid in shims), 10,
                     "docker's containerd shims to exit")

    def log(self):
        return self.daemon.log()


def read_cri_log(path):
    """Lines of a CRI log file as (time, stream, tag, text) tuples."""
    out = []
    if not os.path.exists(path):
        return out
    with io.open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            parts = line.split(" ", 3)
            if len(parts) == 4:
                out.append(tuple(parts))
            elif len(parts) == 3:
                out.append((parts[0], parts[1], parts[2], ""))
    return out
