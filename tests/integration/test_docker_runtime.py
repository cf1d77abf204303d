"""The docker backend's runtime and image calls, through crimuxd: Status,
RuntimeConfig, the calls it does not offer, and the image service against
the lab's registries (with and without credentials)."""

import os
import time

import grpc

from lab import images
from lab.cri import pb
from lab.env import Registry
from conftest import rpc_error


def test_status_and_runtime_config(dcri):
    status = dcri.Status(verbose=True)
    conditions = {c.type: c for c in status.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True
    assert "docker" in [h.name for h in status.runtime_handlers]
    assert "cgroupfs" in status.info["config"]
    assert dcri.RuntimeConfig().linux.cgroup_driver == pb().CGROUPFS


def test_network_not_ready_without_cni_config(docker_crimuxd_factory, tmp_path, lab):
    empty = tmp_path / "no-cni"
    empty.mkdir()
    daemon = docker_crimuxd_factory(cni_conf_dir=str(empty))
    from lab.cri import CRI
    with CRI(daemon.endpoint) as client:
        cond = {c.type: c for c in client.Status().status.conditions}
        assert cond["RuntimeReady"].status is True
        assert cond["NetworkReady"].status is False
        assert cond["NetworkReady"].reason == "NetworkPluginNotReady"
        # A valid configuration appears: the network becomes ready.
        src = os.path.join(lab.net.conf_dir, os.listdir(lab.net.conf_dir)[0])
        with open(src) as f, open(empty / "10-net.conflist", "w") as g:
            g.write(f.read())
        cond = {c.type: c for c in client.Status().status.conditions}
        assert cond["NetworkReady"].status is True


def test_calls_not_offered(dcri):
    err = rpc_error(dcri.CheckpointContainer, container_id="0" * 64, location="/tmp/x")
    assert err.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)
    assert len(dcri.ListMetricDescriptors().descriptors) == 0


def test_pull_status_list_remove(dcri, lab, dockerd):
    ref = lab.busybox_ref
    dockerd.remove_image(ref)
    assert not dcri.ImageStatus(image=pb().ImageSpec(image=ref)).HasField("image")
    image_id = dcri.pull(ref)
    assert image_id == lab.images["busybox"].config_digest
    status = dcri.ImageStatus(image=pb().ImageSpec(image=ref)).image
    assert status.id == image_id and ref in status.repo_tags and status.size > 0
    assert not status.pinned
    listed = [i for i in dcri.ListImages().images if i.id == image_id]
    assert len(listed) == 1 and ref in listed[0].repo_tags
    filtered = dcri.ListImages(filter=pb().ImageFilter(image=pb().ImageSpec(image=ref))).images
    assert [i.id for i in filtered] == [image_id]
    # A second tag: RemoveImage takes the image with all its tags.
    other = ref.rsplit(":", 1)[0] + ":other"
    dockerd.request("POST", f"/images/{ref}/tag?repo={other.rsplit(':', 1)[0]}&tag=other")
    assert dockerd.image_exists(other)
    dcri.RemoveImage(image=pb().ImageSpec(image=ref))
    assert not dockerd.image_exists(other) and not dockerd.image_exists(ref)
    dcri.RemoveImage(image=pb().ImageSpec(image=ref))  # idempotent
    assert dcri.pull(ref) == image_id


def test_pause_image_is_crimux_own_and_pinned(dcri, lab):
    pod = dcri.run_pod(pb().PodSandboxConfig(
        metadata=pb().PodSandboxMetadata(name="pinned", namespace="default", uid="pin-1"),
        hostname="pinned"))
    dcri.remove_pod(pod)
    pause = [i for i in dcri.ListImages().images if any("pause" in t for t in i.repo_tags)]
    assert len(pause) == 1 and pause[0].pinned
    status = dcri.ImageStatus(image=pb().ImageSpec(image=pause[0].id)).image
    assert status.pinned


def test_pull_errors(dcri, lab):
    err = rpc_error(dcri.pull, f"{lab.registry.host}/crimux/no-such-image:1")
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()


def test_pull_with_auth(dcri, lab, tmp_path, dockerd, docker_crimuxd):
    users = {"crimux": "s3cr3t-pa55"}
    registry = Registry(str(tmp_path / "auth-registry"), htpasswd=users).start()
    try:
        image = images.busybox_image()
        ref = registry.push(image)
        err = rpc_error(dcri.pull, ref)
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNKNOWN)
        err = rpc_error(dcri.pull, ref, auth=("crimux", "wrong"))
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNKNOWN)
        assert dcri.pull(ref, auth=("crimux", "s3cr3t-pa55")) == image.config_digest
        dockerd.remove_image(ref)
        # The base64 "auth" form works too.
        import base64
        token = base64.b64encode(b"crimux:s3cr3t-pa55").decode()
        api = pb()
        assert dcri.PullImage(image=api.ImageSpec(image=ref),
                              auth=api.AuthConfig(auth=token)).image_ref == image.config_digest
        dockerd.remove_image(ref)
    finally:
        registry.stop()
    # The password appears in no log.
    assert "s3cr3t-pa55" not in docker_crimuxd.log()
    assert "s3cr3t-pa55" not in dockerd.log()


def test_image_fs_info(dcri, lab):
    dcri.pull(lab.busybox_ref)
    fs = dcri.ImageFsInfo().image_filesystems
    assert len(fs) == 1
    assert fs[0].fs_id.mountpoint.endswith("/overlay2")
    assert fs[0].used_bytes.value > 0 and fs[0].timestamp > 0


class _StallingProxy:
    """A registry front that holds back layer blobs for `delay` seconds
    (no progress at all), then passes everything on from the lab registry."""

    def __init__(self, upstream, delay):
        import http.server
        import threading
        import urllib.request
        proxy = self
        self.delay, self.blob_requests = delay, 0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, head_only):
                if "/blobs/" in self.path:
                    proxy.blob_requests += 1
                    time.sleep(proxy.delay)
                # Docker sends several Accept headers: all of them, or the
                # registry falls back to schema 1 (another image ID).
                accept = ", ".join(self.headers.get_all("Accept") or [])
                req = urllib.request.Request(upstream + self.path,
                                             method="HEAD" if head_only else "GET",
                                             headers={"Accept": accept} if accept else {})
                try:
                    resp = opener.open(req, timeout=30)
                    status, body, headers = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as e:
                    status, body, headers = e.code, e.read(), e.headers
                try:
                    self.send_response(status)
                    for k in ("Content-Type", "Docker-Content-Digest"):
                        if headers.get(k):
                            self.send_header(k, headers[k])
                    self.send_header("Content-Length", headers.get("Content-Length",
                                                                   str(len(body))))
                    self.end_headers()
                    if not head_only:
                        self.wfile.write(body)
                except OSError:
                    pass  # the puller gave up

            def do_GET(self):
                self._forward(False)

            def do_HEAD(self):
                self._forward(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_slow_pull_is_not_cut_short(dcri, lab, dockerd):
    import uuid
    # An image of its own, so Docker has none of its layers yet.
    layer = images.Layer()
    layer.file("token", uuid.uuid4().hex.encode())
    image = images.Image("crimux/slow", uuid.uuid4().hex[:8], [layer], cmd=["/token"])
    lab.registry.push(image)
    proxy = _StallingProxy(lab.registry.url, delay=5)
    ref = f"{proxy.host}/{image.repository}:{image.tag}"
    try:
        # The client's deadline ends a pull that makes no progress...
        t0 = time.monotonic()
        err = rpc_error(dcri.pull, ref, timeout=3)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 6
        assert not dockerd.image_exists(ref)
        # ...but crimux sets no deadline of its own: five silent seconds
        # per blob, and the pull completes.
        t0 = time.monotonic()
        assert dcri.pull(ref, timeout=120) == image.config_digest
        assert time.monotonic() - t0 >= 5 and proxy.blob_requests >= 2
    finally:
        proxy.stop()
        dockerd.remove_image(ref)


def test_dockerd_down(crimuxd_factory, lab, tmp_path):
    from conftest import docker_backend_config
    from lab.cri import CRI
    daemon = crimuxd_factory({"docker": f"unix://{tmp_path}/no-docker.sock"},
                             docker_backend_config(lab, str(tmp_path / "state")))
    with CRI(daemon.endpoint) as client:
        cond = {c.type: c for c in client.Status().status.conditions}
        assert cond["RuntimeReady"].status is False
        assert "docker" in cond["RuntimeReady"].message
        err = rpc_error(client.ListPodSandbox)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        err = rpc_error(client.ImageStatus, image=pb().ImageSpec(image="busybox"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
