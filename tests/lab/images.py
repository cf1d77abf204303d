"""Build small container images without docker and push them to a registry.

Images are a single gzip'd tar layer, an image config and a Docker v2
schema 2 manifest, which both containerd and Docker 20.10 pull.  Every byte
is deterministic (fixed mtimes, owners, ordering), so digests are stable
from one run to the next.
"""

import base64
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"

PAUSE_REPO, PAUSE_TAG = "crimux/pause", "3.9-crimux"
BUSYBOX_REPO, BUSYBOX_TAG = "crimux/busybox", "1.35"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MTIME = 946684800  # 2000-01-01T00:00:00Z, for every tar entry


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layer:
    """A tar layer assembled in memory; entries are written sorted by path."""

    def __init__(self):
        self._entries = {}

    def _add(self, path, kind, mode, data=b"", target="", uid=0, gid=0):
        path = path.strip("/")
        parent = path.rpartition("/")[0]
        if parent and parent not in self._entries:
            self.dir(parent)
        self._entries[path] = (kind, mode, data, target, uid, gid)

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self._add(path, tarfile.DIRTYPE, mode, uid=uid, gid=gid)

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        self._add(path, tarfile.REGTYPE, mode, data=data, uid=uid, gid=gid)

    def symlink(self, path, target):
        self._add(path, tarfile.SYMTYPE, 0o777, target=target)

    def tar(self):
        """The uncompressed tar stream (what the config's diff_id hashes)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self._entries):
                kind, mode, data, target, uid, gid = self._entries[path]
                info = tarfile.TarInfo(path)
                info.type, info.mode, info.mtime = kind, mode, MTIME
                info.uid, info.gid, info.linkname = uid, gid, target
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if data else None)
        return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


class Image:
    """One image: blobs plus manifest, addressed as `repository:tag`."""

    def __init__(self, repository, tag, layers, entrypoint=None, cmd=None,
                 env=(DEFAULT_PATH,), workdir="/", user=""):
        self.repository, self.tag = repository, tag
        tars = [layer.tar() for layer in layers]
        self.layers = [gzip_bytes(t) for t in tars]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2000-01-01T00:00:00Z",
            "config": {
                "Env": list(env),
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "WorkingDir": workdir,
                "User": user,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
            "history": [{"created": "2000-01-01T00:00:00Z",
                         "created_by": "crimux tests/lab/images.py"}] * len(tars),
        }
        self.config = canonical_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(self.config),
                       "digest": sha256(self.config)},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(blob),
                        "digest": sha256(blob)} for blob in self.layers],
        }
        self.manifest = canonical_json(manifest)

    @property
    def digest(self):
        """The manifest digest, as a registry and `repo@digest` refs use it."""
        return sha256(self.manifest)

    @property
    def config_digest(self):
        """The image ID that containerd and Docker report."""
        return sha256(self.config)

    def ref(self, registry_host):
        return f"{registry_host}/{self.repository}:{self.tag}"

    def push(self, registry_host, auth=None):
        """Upload blobs and manifest over the Registry HTTP API v2.

        `auth` is an optional (user, password) pair for basic auth.
        Returns the manifest digest the registry answered with.
        """
        client = _RegistryClient(registry_host, auth)
        name = self.repository
        for blob in [self.config] + self.layers:
            client.upload_blob(name, blob)
        resp = client.request("PUT", f"/v2/{name}/manifests/{self.tag}",
                              self.manifest, {"Content-Type": MANIFEST_TYPE})
        return resp.headers.get("Docker-Content-Digest", self.digest)

    def write_archive(self, path, ref):
        """Write a tarball that both `docker load` and `ctr images import` read.

        It holds an OCI image layout (oci-layout, index.json, blobs/) and a
        docker-archive manifest.json pointing at the same blobs.
        """
        def blob_path(data):
            return "blobs/sha256/" + sha256(data).split(":")[1]

        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": self.digest,
                "size": len(self.manifest),
                "annotations": {"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": self.tag},
            }],
        }
        docker_manifest = [{
            "Config": blob_path(self.config),
            "RepoTags": [ref],
            "Layers": [blob_path(blob) for blob in self.layers],
        }]
        layout = Layer()
        layout.file("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        layout.file("index.json", canonical_json(index))
        layout.file("manifest.json", canonical_json(docker_manifest))
        for blob in [self.manifest, self.config] + self.layers:
            layout.file(blob_path(blob), blob)
        with open(path, "wb") as f:
            f.write(layout.tar())


class _RegistryClient:
    """Just enough of the Registry HTTP API v2 to push blobs and manifests."""

    def __init__(self, host, auth):
        self.base = f"http://{host}"
        self.headers = {}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = "Basic " + token
        # Never route loopback traffic through a proxy from the environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method, url, data=None, headers=None):
        req = urllib.request.Request(urllib.parse.urljoin(self.base, url),
                                     data=data, method=method,
                                     headers={**self.headers, **(headers or {})})
        return self.opener.open(req, timeout=30)

    def upload_blob(self, name, blob):
        digest = sha256(blob)
        try:
            self.request("HEAD", f"/v2/{name}/blobs/{digest}")
            return  # already there
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        resp = self.request("POST", f"/v2/{name}/blobs/uploads/")
        location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                     blob, {"Content-Type": "application/octet-stream"})


def pause_image(pause_binary, tag=PAUSE_TAG):
    """The sandbox image: only `/pause`, which is also the entrypoint."""
    with open(pause_binary, "rb") as f:
        binary = f.read()
    layer = Layer()
    layer.file("pause", binary, mode=0o755)
    return Image(PAUSE_REPO, tag, [layer], entrypoint=["/pause"])


PASSWD = """\
root:x:0:0:root:/root:/bin/sh
crx:x:1234:1234:crimux test user:/home/crx:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
crx:x:1234:
nobody:x:65534:
"""


def busybox_image(busybox="/bin/busybox", tag=BUSYBOX_TAG):
    """A shell image: Debian's static busybox with a symlink per applet."""
    with open(busybox, "rb") as f:
        binary = f.read()
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    layer = Layer()
    for d in ("dev", "proc", "sys", "var", "usr/bin", "usr/sbin", "sbin", "root"):
        layer.dir(d)
    layer.dir("tmp", mode=0o1777)
    layer.dir("home/crx", uid=1234, gid=1234)
    layer.file("bin/busybox", binary, mode=0o755)
    for applet in applets:
        if applet != "busybox":
            layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    return Image(BUSYBOX_REPO, tag, [layer], cmd=["sh"])
