"""One image store as the kubelet sees it, across stores that share nothing.

crimuxd sits in front of the lab's containerd (backend "containerd":
handlers "runc" and "kata", one image store) and the lab's dockerd (backend
"docker": handler "docker", a store of its own); "runc" is the default. No
KVM here: containerd's "kata" handler runs the runc shim, which changes
nothing for images.

Three groups of tests:

- The CRI validation suite's image behaviours (cri-tools pkg/validate
  image.go: pull with and without a tag and by digest, status by every kind
  of reference, the image's user, lists, removal by the ID the status gave),
  run against containerd alone, the dockershim alone, and crimuxd without a
  handler and with each handler: the same test bodies pass on all six.
- The rows of the truth table in docs/routing.md, checked against the
  stores themselves (containerd's CRI socket, dockerd's API), a store down
  included.
- The kubelet's flows: imagePullPolicy IfNotPresent, Always and Never,
  image garbage collection, ImageFsInfo.
"""

import base64
import os
import uuid

import grpc
import pytest

from conftest import docker_backend_config, rpc_error, stop_checked
from lab import env, images
from lab.cri import CRI, container_config, linux_resources, pb, sandbox_config

RUN = uuid.uuid4().hex[:10]
LABELS = {"crimux-test-images": RUN}
MIB = 1 << 20
IMAGE_SERVICE = "/runtime.v1.ImageService/"

HANDLERS = """
[crimux]
default_handler = runc
[handler "runc"]
backend = containerd
[handler "kata"]
backend = containerd
policy = kata
[handler "docker"]
backend = docker
"""
STORE_OF = {"runc": "containerd", "kata": "containerd", "docker": "docker"}


# ------------------------------------------------------------------ images

def new_image(name, user="", tag="t1"):
    """An image of this run's own (unique content, so a unique ID)."""
    layer = images.Layer()
    layer.file("id", f"{name} {RUN} {uuid.uuid4().hex}\n".encode())
    return images.Image(f"crimux/img-{name}-{RUN}", tag, [layer], user=user)


def push(registry, image, *tags):
    """Push `image` under its own tag and `tags`; returns the refs."""
    refs = []
    own = image.tag
    for tag in (own,) + tags:
        image.tag = tag
        refs.append(registry.push(image))
    image.tag = own
    return refs


def by_digest(registry, image):
    return f"{registry.host}/{image.repository}@{image.digest}"


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def three(lab, dockerd, crimuxd_binary, tmp_path_factory):
    """crimuxd in front of containerd (runc, kata) and docker (docker)."""
    state = str(tmp_path_factory.mktemp("docker-state"))
    daemon = lab.crimuxd(crimuxd_binary,
                         {"containerd": lab.containerd.endpoint, "docker": dockerd.endpoint},
                         docker_backend_config(lab, state) + HANDLERS)
    yield daemon
    stop_checked([daemon], must_run=True)


@pytest.fixture(scope="module")
def three_docker_first(lab, dockerd, crimuxd_binary, tmp_path_factory):
    """The same, with docker (the second backend) the default handler: its
    store's descriptions and filesystem come first."""
    state = str(tmp_path_factory.mktemp("docker-state"))
    daemon = lab.crimuxd(crimuxd_binary,
                         {"containerd": lab.containerd.endpoint, "docker": dockerd.endpoint},
                         docker_backend_config(lab, state) +
                         HANDLERS.replace("default_handler = runc", "default_handler = docker"))
    yield daemon
    stop_checked([daemon], must_run=True)


@pytest.fixture(scope="module")
def mux(three):
    with CRI(three.endpoint) as client:
        yield client
        for item in client.ListPodSandbox(filter=pb().PodSandboxFilter(
                label_selector=LABELS)).items:
            client.remove_pod(item.id)


@pytest.fixture(scope="module")
def stores(lab, dockerd):
    """Where an image really is, asked of each store itself."""
    return Stores(lab.containerd.endpoint, dockerd)


class Stores:
    def __init__(self, containerd_endpoint, dockerd):
        self.containerd = CRI(containerd_endpoint)
        self.dockerd = dockerd

    def where(self, ref):
        """Names of the stores holding the image `ref` names (a tag, a
        digest reference or an ID)."""
        found = []
        if self.containerd.ImageStatus(image=pb().ImageSpec(image=ref)).HasField("image"):
            found.append("containerd")
        if self.dockerd.image_exists(ref):
            found.append("docker")
        return found

    def remove(self, ref):
        self.containerd.RemoveImage(image=pb().ImageSpec(image=ref))
        self.dockerd.remove_image(ref)


class Target:
    """A CRI endpoint and the handler every image call names ("" for none),
    with the stores an image pulled through it must land on."""

    def __init__(self, name, client, handler, lands_on):
        self.name, self.client, self.handler, self.lands_on = name, client, handler, lands_on

    def spec(self, ref):
        return pb().ImageSpec(image=ref, runtime_handler=self.handler)

    def pull(self, ref, **kwargs):
        """As critest pulls: with the config of a pod that is never run."""
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("sandbox_config", CRITEST_POD)
        return self.client.PullImage(image=self.spec(ref), **kwargs).image_ref

    def status(self, ref):
        """The Image, or None when the endpoint says it has none."""
        reply = self.client.ImageStatus(image=self.spec(ref))
        return reply.image if reply.HasField("image") else None

    def remove(self, ref):
        self.client.RemoveImage(image=self.spec(ref))

    def list(self):
        request = pb().ListImagesRequest()
        if self.handler:
            request.filter.image.runtime_handler = self.handler
        return list(self.client.ListImages(request).images)


CRITEST_POD = sandbox_config("critest-image-pod", namespace="cri-test", uid="critest-image-uid")

TARGETS = [("containerd", ""), ("dockershim", ""), ("crimux", ""), ("crimux", "runc"),
           ("crimux", "kata"), ("crimux", "docker"), ("crimux-docker-first", "")]


@pytest.fixture(params=TARGETS, ids=lambda t: "-".join(filter(None, t)))
def target(request, lab, stores):
    kind, handler = request.param
    if kind == "containerd":
        yield Target("containerd", stores.containerd, "", ["containerd"])
        return
    daemon = request.getfixturevalue({"dockershim": "docker_crimuxd", "crimux": "three",
                                      "crimux-docker-first": "three_docker_first"}[kind])
    lands_on = (["docker"] if kind == "dockershim" else
                [STORE_OF[handler]] if handler else ["containerd", "docker"])
    with CRI(daemon.endpoint) as client:
        yield Target(f"{kind}-{handler}", client, handler, lands_on)


# ------------------------------------------------------------------ helpers

def remove_image(t, ref):
    """What critest does before and after each case: ImageStatus, then
    RemoveImage by the ID it gave."""
    status = t.status(ref)
    if status is not None:
        t.remove(status.id)


def remove_and_check(t, stores, ref, image_id):
    remove_image(t, ref)
    assert t.status(ref) is None, f"{t.name}: {ref} still there after its removal"
    for store in t.lands_on:
        assert store not in stores.where(image_id), f"{t.name}: a copy is left on {store}"


# ------------------------------------------------------------------ the validation suite's cases

def test_pull_with_tag(target, lab, stores):
    image = new_image("tag")
    (ref,) = push(lab.registry, image)
    remove_image(target, ref)
    assert target.pull(ref) == image.config_digest
    assert stores.where(image.config_digest) == target.lands_on
    status = target.status(ref)
    assert status is not None, f"{target.name}: ImageStatus does not find what was pulled"
    assert status.id == image.config_digest and status.size > 0
    assert list(status.repo_tags) == [ref]
    remove_and_check(target, stores, ref, image.config_digest)


def test_pull_without_tag(target, lab, stores):
    image = new_image("notag", tag="latest")
    (ref,) = push(lab.registry, image)
    name = ref.rsplit(":", 1)[0]
    remove_image(target, name)
    assert target.pull(name) == image.config_digest
    status = target.status(name)
    assert status is not None and list(status.repo_tags) == [name + ":latest"]
    remove_and_check(target, stores, name, image.config_digest)


def test_pull_by_digest(target, lab, stores):
    image = new_image("digest")
    push(lab.registry, image)
    ref = by_digest(lab.registry, image)
    remove_image(target, ref)
    assert target.pull(ref) == image.config_digest
    status = target.status(ref)
    assert status is not None
    assert list(status.repo_tags) == [] and list(status.repo_digests) == [ref]
    remove_and_check(target, stores, ref, image.config_digest)


def test_image_status_by_every_kind_of_reference(target, lab, stores):
    image = new_image("refs")
    ref, second = push(lab.registry, image, "t2")
    target.pull(ref)
    target.pull(second)
    status = target.status(ref)
    assert sorted(status.repo_tags) == sorted([ref, second])
    assert list(status.repo_digests) == [by_digest(lab.registry, image)]
    # The ID, every tag, every digest, and the short IDs crictl uses: the
    # same answer, field for field.
    short = status.id[len("sha256:"):][:12]
    for other in [status.id, short, "sha256:" + short, *status.repo_tags, *status.repo_digests]:
        assert target.status(other) == status, f"{target.name}: ImageStatus({other})"
    remove_and_check(target, stores, ref, image.config_digest)
    assert target.status(second) is None


@pytest.mark.parametrize("user, uid, username", [
    ("1234", 1234, ""), ("crx", None, "crx"), ("1234:1234", 1234, ""), ("crx:crx", None, "crx")])
def test_image_user(target, lab, stores, user, uid, username):
    image = new_image("user", user=user)
    (ref,) = push(lab.registry, image)
    target.pull(ref)
    status = target.status(ref)
    assert status.HasField("uid") == (uid is not None)
    assert (status.uid.value if uid is not None else None, status.username) == (uid, username)
    remove_and_check(target, stores, ref, image.config_digest)


def test_list_three_images_one_tag_each(target, lab, stores):
    made = [new_image(f"list{i}") for i in range(3)]
    refs = [push(lab.registry, image)[0] for image in made]
    ids = [target.pull(ref) for ref in refs]
    assert ids == [image.config_digest for image in made]
    listed = {i.id: i for i in target.list()}
    for ref, image_id in zip(refs, ids):
        assert list(listed[image_id].repo_tags) == [ref]
    for ref, image in zip(refs, made):
        remove_and_check(target, stores, ref, image.config_digest)


def test_list_one_image_three_tags(target, lab, stores):
    image = new_image("tags")
    refs = push(lab.registry, image, "t2", "t3")
    assert {target.pull(ref) for ref in refs} == {image.config_digest}
    entries = [i for i in target.list() if i.id == image.config_digest]
    assert len(entries) == 1 and sorted(entries[0].repo_tags) == sorted(refs)
    # Removal by the ID from the list takes every tag, from every store.
    target.remove(entries[0].id)
    for ref in refs:
        assert target.status(ref) is None
    assert not set(stores.where(image.config_digest)) & set(target.lands_on)


def test_not_listed_right_after_removal(target, lab, stores):
    image = new_image("gone")
    (ref,) = push(lab.registry, image)
    target.pull(ref)
    assert any(ref in i.repo_tags for i in target.list())
    remove_image(target, ref)
    assert not any(ref in i.repo_tags for i in target.list())
    assert target.status(ref) is None


def test_simultaneous_removals(target, lab, stores):
    """Eight RemoveImage calls by the ID at once, a few times over: each
    succeeds, and after each the image is gone (Docker answers the losers
    of the race before the winner has deleted the layers)."""
    import concurrent.futures
    for round in range(3):
        image = new_image("simul%d" % round)
        (ref,) = push(lab.registry, image)
        target.pull(ref)
        image_id = target.status(ref).id

        def remove_and_look():
            target.remove(image_id)
            return target.status(image_id)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            after = list(pool.map(lambda _: remove_and_look(), range(8)))
        assert after == [None] * 8
        assert not set(stores.where(image_id)) & set(target.lands_on)


def test_same_image_from_two_registries(target, lab, stores, tmp_path):
    """One image pulled from two registries: one ID for both names."""
    other = env.Registry(str(tmp_path / "other")).start()
    lab.containerd.trust_registry(other.host)
    try:
        image = new_image("tworeg")
        (ref1,) = push(lab.registry, image)
        (ref2,) = push(other, image)
        assert target.pull(ref1) == target.pull(ref2) == image.config_digest
        assert target.status(ref1).id == target.status(ref2).id == image.config_digest
        assert sorted(target.status(ref2).repo_tags) == sorted([ref1, ref2])
        remove_and_check(target, stores, ref2, image.config_digest)
        assert target.status(ref1) is None
    finally:
        other.stop()


def test_pull_timeout(target, lab):
    image = new_image("timeout")
    (ref,) = push(lab.registry, image)
    err = rpc_error(target.pull, ref, timeout=0.001)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ------------------------------------------------------------------ PullImage

def test_pull_without_pod_or_handler_reaches_every_store(mux, lab, stores):
    image = new_image("everywhere")
    (ref,) = push(lab.registry, image)
    assert mux.pull(ref) == image.config_digest
    assert stores.where(ref) == ["containerd", "docker"]
    # The CRI contract: after a successful pull, ImageStatus finds it.
    assert mux.ImageStatus(image=pb().ImageSpec(image=ref)).image.id == image.config_digest
    mux.RemoveImage(image=pb().ImageSpec(image=ref))
    assert stores.where(ref) == []


@pytest.mark.parametrize("handler", ["runc", "kata", "docker"])
def test_pull_for_a_handler_reaches_its_store_only(mux, lab, stores, handler):
    image = new_image("handler")
    (ref,) = push(lab.registry, image)
    assert mux.PullImage(image=pb().ImageSpec(image=ref, runtime_handler=handler)).image_ref \
        == image.config_digest
    assert stores.where(ref) == [STORE_OF[handler]]
    stores.remove(ref)


def run_pod(client, handler):
    resources = linux_resources(500, 500, 512 * MIB) if handler == "kata" else None
    config = sandbox_config("img-" + uuid.uuid4().hex[:8], labels=LABELS, resources=resources)
    return client.run_pod(config, handler), config


@pytest.mark.parametrize("handler", ["kata", "docker"])
def test_pull_for_a_pod_reaches_the_pods_store_only(mux, lab, stores, handler):
    image = new_image("pod")
    (ref,) = push(lab.registry, image)
    pod_id, config = run_pod(mux, handler)
    try:
        assert mux.pull(ref, sandbox=config) == image.config_digest
        assert stores.where(ref) == [STORE_OF[handler]]
    finally:
        mux.remove_pod(pod_id)
        stores.remove(ref)


def test_pull_for_a_pod_crimux_does_not_know_reaches_every_store(mux, lab, stores):
    """critest sends the config of a pod that was never run: no pod, so
    every store."""
    image = new_image("nopod")
    (ref,) = push(lab.registry, image)
    mux.pull(ref, sandbox=sandbox_config("never-run", labels=LABELS))
    assert stores.where(ref) == ["containerd", "docker"]
    stores.remove(ref)


def test_pull_for_an_unknown_handler_is_refused(mux, lab, stores):
    image = new_image("gold")
    (ref,) = push(lab.registry, image)
    err = rpc_error(mux.PullImage, image=pb().ImageSpec(image=ref, runtime_handler="gold"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'handler "gold" is not configured' in err.details()
    assert stores.where(ref) == []


def test_pull_failing_on_one_store_names_it(mux, lab, stores, tmp_path):
    """containerd is told (hosts.toml) to fetch a second registry's images
    from a port where nothing listens; Docker reaches it: the pull fails,
    and says where."""
    import shutil
    registry = env.Registry(str(tmp_path / "elsewhere")).start()
    hosts = os.path.join(lab.containerd.certs_dir, registry.host)
    dead = f"http://127.0.0.1:{env.free_port()}"
    os.makedirs(hosts)
    with open(os.path.join(hosts, "hosts.toml"), "w") as f:
        f.write(f'server = "{dead}"\n[host."{dead}"]\n  capabilities = ["pull", "resolve"]\n')
    try:
        image = new_image("elsewhere")
        (ref,) = push(registry, image)
        err = rpc_error(mux.pull, ref)
        assert err.details().startswith("backend containerd: "), err.details()
        assert "backend docker" not in err.details()
        assert stores.where(ref) == ["docker"]
        # ... so ImageStatus does not claim it either.
        assert not mux.ImageStatus(image=pb().ImageSpec(image=ref)).HasField("image")
        stores.remove(ref)
    finally:
        shutil.rmtree(hosts)
        registry.stop()


def test_pull_with_credentials_reaches_every_store(mux, three, lab, stores, tmp_path):
    user, password = "crimux", "pw-" + uuid.uuid4().hex
    registry = env.Registry(str(tmp_path / "auth"), htpasswd={user: password}).start()
    lab.containerd.trust_registry(registry.host)
    try:
        image = new_image("auth")
        (ref,) = push(registry, image)
        err = rpc_error(mux.pull, ref, auth=(user, "wrong"))
        assert err.details().startswith("backend "), err.details()
        assert stores.where(ref) == []
        assert mux.pull(ref, auth=(user, password)) == image.config_digest
        assert stores.where(ref) == ["containerd", "docker"]
        stores.remove(ref)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert mux.PullImage(image=pb().ImageSpec(image=ref),
                             auth=pb().AuthConfig(auth=token)).image_ref == image.config_digest
        assert stores.where(ref) == ["containerd", "docker"]
        stores.remove(ref)
    finally:
        registry.stop()
    assert password not in three.log() and token not in three.log()


class RegistryFront:
    """A front for the lab registry that calls `gate(path, user_agent)`
    before it forwards each request: the gate may hold the request back."""

    def __init__(self, upstream, gate):
        import http.server
        import threading
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def forward(self, head):
                gate(self.path, self.headers.get("User-Agent", ""))
                accept = ", ".join(self.headers.get_all("Accept") or [])
                req = urllib.request.Request(upstream + self.path, method="HEAD" if head else "GET",
                                             headers={"Accept": accept} if accept else {})
                try:
                    resp = opener.open(req, timeout=30)
                    status, body, headers = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as e:
                    status, body, headers = e.code, e.read(), e.headers
                try:
                    self.send_response(status)
                    for k in ("Content-Type", "Docker-Content-Digest", "Content-Length"):
                        if headers.get(k):
                            self.send_header(k, headers[k])
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                except OSError:
                    pass

            def do_GET(self):
                self.forward(False)

            def do_HEAD(self):
                self.forward(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_parallel_pull_ends_with_the_clients_deadline(mux, three, lab, stores):
    """A pull onto every store that makes no progress (the registry holds
    every blob back until the test is over): the client's deadline ends
    every leg, and with them crimuxd's call (its request-log record is
    written when the last leg has returned), while the registry still
    holds."""
    import threading
    image = new_image("stall")
    push(lab.registry, image)
    release = threading.Event()
    front = RegistryFront(lab.registry.url,
                          lambda path, agent: "/blobs/" in path and release.wait())
    lab.containerd.trust_registry(front.host)
    ref = f"{front.host}/{image.repository}:{image.tag}"
    try:
        before = three.log().count("PullImage")
        err = rpc_error(mux.pull, ref, timeout=3)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        env.wait_for(lambda: three.log().count("PullImage") > before, 30,
                     "crimuxd to finish the pull's call")
        assert not release.is_set()
    finally:
        release.set()
        front.stop()
    assert stores.where(ref) == []


def test_pull_onto_every_store_is_parallel(mux, lab, stores):
    """The registry holds containerd's and Docker's first manifest request
    each until the other's has come: a pull that asked the stores one after
    the other would never see the second, and fail."""
    import threading
    image = new_image("parallel")
    push(lab.registry, image)
    lock, both = threading.Lock(), threading.Event()
    seen, waits = set(), []

    def gate(path, agent):
        if "/manifests/" not in path:
            return
        with lock:
            seen.add("docker" if "docker/" in agent else
                     "containerd" if "containerd/" in agent else agent)
            if {"containerd", "docker"} <= seen:
                both.set()
        waits.append(both.wait(30))  # False: the other store never came
    front = RegistryFront(lab.registry.url, gate)
    lab.containerd.trust_registry(front.host)
    ref = f"{front.host}/{image.repository}:{image.tag}"
    try:
        assert mux.pull(ref) == image.config_digest
        assert waits and all(waits), f"the stores came one after the other: {seen}"
        assert stores.where(ref) == ["containerd", "docker"]
    finally:
        both.set()
        front.stop()
        stores.remove(ref)


# ------------------------------------------------------------------ ImageStatus

def status_of(client, ref, handler=""):
    reply = client.ImageStatus(image=pb().ImageSpec(image=ref, runtime_handler=handler))
    return reply.image if reply.HasField("image") else None


def test_image_status_rows(mux, lab, stores):
    image = new_image("status")
    (ref,) = push(lab.registry, image)
    # On no store: an empty reply, as containerd gives.
    assert status_of(mux, ref) is None
    # On one store only: present for its handlers, absent without a handler
    # (the kubelet must pull it for a pod on the other store).
    stores.dockerd.request("POST", f"/images/create?fromImage={ref.rsplit(':', 1)[0]}"
                                   f"&tag={image.tag}")
    assert stores.where(ref) == ["docker"]
    assert status_of(mux, ref, "docker").id == image.config_digest
    assert status_of(mux, ref, "runc") is None and status_of(mux, ref, "kata") is None
    assert status_of(mux, ref) is None
    # On every store: present, one image, tags of both stores joined.
    stores.containerd.pull(ref)
    second = ref.rsplit(":", 1)[0] + ":docker-only"
    stores.dockerd.request("POST", f"/images/{ref}/tag?repo={ref.rsplit(':', 1)[0]}"
                                   f"&tag=docker-only")
    merged = status_of(mux, ref)
    assert merged.id == image.config_digest
    assert list(merged.repo_tags) == [ref, second]
    assert merged == status_of(mux, image.config_digest) == status_of(mux, second)
    # The default store's own fields (its size, not Docker's).
    assert merged.size == status_of(stores.containerd, ref).size
    # The merged list says the same.
    assert [i for i in mux.ListImages().images if i.id == image.config_digest] == [merged]
    stores.remove(ref)
    stores.dockerd.remove_image(second)


def test_image_status_when_a_tag_names_different_images(mux, lab, stores):
    """A tag pulled at different times may name different images on the two
    stores: not present (so the kubelet pulls for its pod's store), and
    both listed under their own IDs."""
    old, new = new_image("moved"), new_image("moved")
    new.repository = old.repository
    (ref,) = push(lab.registry, old)
    stores.containerd.pull(ref)
    push(lab.registry, new)
    stores.dockerd.request("POST", f"/images/create?fromImage={ref.rsplit(':', 1)[0]}"
                                   f"&tag={old.tag}")
    assert status_of(mux, ref, "runc").id == old.config_digest
    assert status_of(mux, ref, "docker").id == new.config_digest
    assert status_of(mux, ref) is None
    listed = {i.id: list(i.repo_tags) for i in mux.ListImages().images}
    assert listed[old.config_digest] == [ref] and listed[new.config_digest] == [ref]
    # RemoveImage by the tag: each store removes what the tag names there.
    mux.RemoveImage(image=pb().ImageSpec(image=ref))
    assert stores.where(old.config_digest) == stores.where(new.config_digest) == []


def test_image_status_for_an_unknown_handler_is_refused(mux):
    err = rpc_error(mux.ImageStatus, image=pb().ImageSpec(image="x", runtime_handler="gold"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ ListImages

def test_list_images_rows(mux, lab, stores):
    on_docker, on_both = new_image("l-docker"), new_image("l-both")
    (ref_docker,) = push(lab.registry, on_docker)
    (ref_both,) = push(lab.registry, on_both)
    mux.PullImage(image=pb().ImageSpec(image=ref_docker, runtime_handler="docker"))
    mux.pull(ref_both)

    listed = mux.ListImages().images
    ids = [i.id for i in listed]
    assert len(ids) == len(set(ids)), "an image is listed twice"
    assert on_docker.config_digest in ids and on_both.config_digest in ids
    # Exactly what the stores hold between them.
    direct = {i.id for i in stores.containerd.ListImages().images} | \
        {"sha256:" + i["Id"].split(":")[-1] for i in stores.dockerd.images()}
    assert set(ids) == direct

    def listed_by(handler):
        request = pb().ListImagesRequest()
        request.filter.image.runtime_handler = handler
        return {i.id for i in mux.ListImages(request).images}
    assert on_docker.config_digest in listed_by("docker")
    assert on_docker.config_digest not in listed_by("runc") | listed_by("kata")
    assert on_both.config_digest in listed_by("runc") & listed_by("docker")
    for ref in (ref_docker, ref_both):
        stores.remove(ref)


def test_one_image_has_one_id_on_every_store(mux, lab, stores):
    """containerd reports an image's config digest as its ID; Docker its
    image ID, which is the digest of the same config: one string, so the
    merged list has one entry, and RemoveImage by it reaches both."""
    image = new_image("one-id")
    (ref,) = push(lab.registry, image)
    mux.pull(ref)
    containerd_id = status_of(stores.containerd, ref).id
    docker_id = stores.dockerd.request("GET", f"/images/{ref}/json")["Id"]
    assert containerd_id == docker_id == image.config_digest
    (entry,) = [i for i in mux.ListImages().images if i.id == image.config_digest]
    mux.RemoveImage(image=pb().ImageSpec(image=entry.id))
    assert stores.where(image.config_digest) == []


@pytest.mark.parametrize("handler", ["", "runc", "kata", "docker"])
def test_stream_images_is_the_list(mux, lab, stores, handler):
    """StreamImages says what ListImages says, for a handler too (containerd
    1.6 has no StreamImages of its own)."""
    image = new_image("stream")
    (ref,) = push(lab.registry, image)
    mux.pull(ref)
    request = pb().StreamImagesRequest()
    request.filter.image.runtime_handler = handler
    streamed = [i for raw in mux.raw(IMAGE_SERVICE + "StreamImages", request.SerializeToString(),
                                     stream=True)
                for i in pb().StreamImagesResponse.FromString(raw).images]
    listed = pb().ListImagesRequest()
    listed.filter.image.runtime_handler = handler
    assert sorted(streamed, key=lambda i: i.id) == \
        sorted(mux.ListImages(listed).images, key=lambda i: i.id)
    assert image.config_digest in {i.id for i in streamed}
    stores.remove(ref)


def test_pinned_if_any_store_pins_it(stores, lab, dockerd, crimuxd_factory, tmp_path):
    """Docker's sandbox image is pinned by the dockershim; containerd 1.6 pins
    nothing. With the same image on both: pinned, in the list and the status."""
    daemon = crimuxd_factory({"containerd": lab.containerd.endpoint, "docker": dockerd.endpoint},
                             docker_backend_config(lab, str(tmp_path / "state"),
                                                   pause_image=lab.pause_ref,
                                                   pause_binary=None) + HANDLERS)
    with CRI(daemon.endpoint) as client:
        client.pull(lab.pause_ref)
        assert stores.where(lab.pause_ref) == ["containerd", "docker"]
        pause_id = lab.images["pause"].config_digest
        assert [i.pinned for i in stores.containerd.ListImages().images
                if i.id == pause_id] == [False]
        assert [i.pinned for i in client.ListImages().images if i.id == pause_id] == [True]
        assert status_of(client, lab.pause_ref).pinned
        # So the kubelet's image GC leaves it on every store.
        assert kubelet_gc(client, {pause_id}) == set()
        assert stores.where(pause_id) == ["containerd", "docker"]


# ------------------------------------------------------------------ RemoveImage

@pytest.mark.parametrize("kind", ["tag", "id", "short-id", "digest"])
def test_remove_without_a_handler_removes_every_copy(mux, lab, stores, kind):
    image = new_image("rm")
    ref, second = push(lab.registry, image, "t2")
    mux.pull(ref)
    mux.pull(second)
    (listed,) = [i for i in mux.ListImages().images if i.id == image.config_digest]
    name = {"tag": ref, "id": listed.id, "short-id": listed.id[len("sha256:"):][:12],
            "digest": by_digest(lab.registry, image)}[kind]
    mux.RemoveImage(image=pb().ImageSpec(image=name))
    assert stores.where(image.config_digest) == []
    assert status_of(mux, second) is None
    mux.RemoveImage(image=pb().ImageSpec(image=name))  # nothing left to do: no error


@pytest.mark.parametrize("handler", ["runc", "kata", "docker"])
def test_remove_for_a_handler_removes_its_stores_copy_only(mux, lab, stores, handler):
    image = new_image("rmh")
    (ref,) = push(lab.registry, image)
    mux.pull(ref)
    mux.RemoveImage(image=pb().ImageSpec(image=image.config_digest, runtime_handler=handler))
    assert stores.where(ref) == [s for s in ("containerd", "docker") if s != STORE_OF[handler]]
    stores.remove(ref)


# ------------------------------------------------------------------ ImageFsInfo

def mountpoints(client):
    return [f.fs_id.mountpoint for f in client.ImageFsInfo().image_filesystems]


def test_docker_first_when_it_is_the_default(three_docker_first, lab, stores, dockerd):
    """The default store's answers win, whichever backend it is: its
    filesystem first, its description of an image (Docker's size is the
    unpacked one, containerd's the compressed one)."""
    image = new_image("dfirst")
    (ref,) = push(lab.registry, image)
    with CRI(three_docker_first.endpoint) as client:
        assert mountpoints(client) == [os.path.join(dockerd.data_root, "overlay2")] + \
            mountpoints(stores.containerd)
        client.pull(ref)
        merged, docker = status_of(client, ref), status_of(client, ref, "docker")
        assert merged.size == docker.size != status_of(client, ref, "runc").size
        assert [i for i in client.ListImages().images if i.id == merged.id] == [merged]
        client.RemoveImage(image=pb().ImageSpec(image=merged.id))
    assert stores.where(image.config_digest) == []


def test_image_fs_info_one_entry_per_store_default_first(mux, stores, dockerd):
    merged = mux.ImageFsInfo().image_filesystems
    # The kubelet watches the first entry only: the default handler's store.
    assert [f.fs_id.mountpoint for f in merged] == \
        mountpoints(stores.containerd) + [os.path.join(dockerd.data_root, "overlay2")]
    # Each store's own usage, not a sum.
    docker = merged[1]
    assert docker.used_bytes.value == sum(i["Size"] for i in stores.dockerd.images())


# ------------------------------------------------------------------ a store down

SPARE_HANDLERS = HANDLERS.replace("default_handler = runc", "default_handler = spare") + """
[handler "spare"]
backend = spare
runtime_handler = runc
"""


@pytest.fixture(scope="module")
def spare(lab, tmp_path_factory):
    """A private containerd of this module's own, to be stopped."""
    containerd = env.Containerd(str(tmp_path_factory.mktemp("spare") / "c"), lab.registry.host,
                                lab.net.conf_dir).start()
    yield containerd
    containerd.stop()


def test_a_store_down(lab, dockerd, spare, stores, crimuxd_factory, tmp_path):
    """The default handler's store (spare) stops: pulls, status, lists and
    filesystems carry on with the stores that answer; a removal cannot be
    sure a copy is gone, and says so."""
    daemon = crimuxd_factory({"spare": spare.endpoint, "containerd": lab.containerd.endpoint,
                              "docker": dockerd.endpoint},
                             docker_backend_config(lab, str(tmp_path / "state")) + SPARE_HANDLERS)
    first, second = new_image("down1"), new_image("down2")
    (ref1,) = push(lab.registry, first)
    (ref2,) = push(lab.registry, second)
    with CRI(daemon.endpoint) as mux, CRI(spare.endpoint) as spare_cri:
        mux.pull(ref1)
        assert status_of(spare_cri, ref1).id == first.config_digest
        up = mountpoints(mux)
        assert len(up) == 3 and up[0] == mountpoints(spare_cri)[0]

        spare.daemon.terminate()
        try:
            assert mux.pull(ref2) == second.config_digest
            assert stores.where(ref2) == ["containerd", "docker"]
            assert status_of(mux, ref2).id == second.config_digest
            assert second.config_digest in {i.id for i in mux.ListImages().images}
            assert mountpoints(mux) == up[1:]
            for call, kwargs in (
                    (mux.PullImage, {"image": pb().ImageSpec(image=ref2,
                                                             runtime_handler="spare")}),
                    (mux.ImageStatus, {"image": pb().ImageSpec(image=ref2,
                                                               runtime_handler="spare")}),
                    (mux.RemoveImage, {"image": pb().ImageSpec(image=ref1)})):
                err = rpc_error(call, **kwargs)
                assert err.code() == grpc.StatusCode.UNAVAILABLE, (call, err)
                assert "backend spare" in err.details(), err.details()
            # The copies that could be removed were.
            assert stores.where(ref1) == []
        finally:
            spare.start()

        def removed():
            try:
                mux.RemoveImage(image=pb().ImageSpec(image=ref1))
                return True
            except grpc.RpcError:
                return False
        env.wait_for(removed, 10, "RemoveImage to work again", interval=0.1)
        assert status_of(spare_cri, ref1) is None
    stores.remove(ref2)


def test_the_docker_store_down(crimuxd_factory, lab, stores, tmp_path):
    """The dockershim's dockerd gone (its socket missing): the same rules as
    for a containerd down, from the dockershim's own errors."""
    daemon = crimuxd_factory({"containerd": lab.containerd.endpoint,
                              "docker": f"unix://{tmp_path}/no-docker.sock"},
                             docker_backend_config(lab, str(tmp_path / "state")) + HANDLERS)
    image = new_image("nodocker")
    (ref,) = push(lab.registry, image)
    with CRI(daemon.endpoint) as mux:
        assert mux.pull(ref) == image.config_digest
        assert stores.where(ref) == ["containerd"]
        assert status_of(mux, ref).id == image.config_digest
        assert status_of(mux, ref, "runc").id == image.config_digest
        assert image.config_digest in {i.id for i in mux.ListImages().images}
        assert mountpoints(mux) == mountpoints(stores.containerd)
        for call, kwargs in (
                (mux.PullImage, {"image": pb().ImageSpec(image=ref, runtime_handler="docker")}),
                (mux.ImageStatus, {"image": pb().ImageSpec(image=ref, runtime_handler="docker")}),
                (mux.RemoveImage, {"image": pb().ImageSpec(image=image.config_digest)}),
                (mux.RemoveImage, {"image": pb().ImageSpec(image=ref)})):
            err = rpc_error(call, **kwargs)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (call, err)
            # Relayed as the dockershim says it, or named in a fan-out.
            assert "cannot connect to dockerd" in err.details(), err.details()
            if call == mux.RemoveImage:
                assert err.details().startswith("backend docker: "), err.details()
            # containerd's copy went all the same; put it back for the next.
            if call == mux.RemoveImage:
                assert stores.where(ref) == []
                stores.containerd.pull(ref)
    stores.remove(ref)


def test_every_store_down(crimuxd_factory, lab, tmp_path):
    daemon = crimuxd_factory({"containerd": f"unix://{tmp_path}/none.sock",
                              "docker": f"unix://{tmp_path}/no-docker.sock"},
                             docker_backend_config(lab, str(tmp_path / "state")) + HANDLERS)
    spec = pb().ImageSpec(image=lab.busybox_ref)
    with CRI(daemon.endpoint) as mux:
        for call, kwargs in ((mux.PullImage, {"image": spec}), (mux.ImageStatus, {"image": spec}),
                             (mux.ListImages, {}), (mux.RemoveImage, {"image": spec}),
                             (mux.ImageFsInfo, {})):
            err = rpc_error(call, **kwargs)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (call, err)
            assert err.details().startswith("backend "), err.details()


# ------------------------------------------------------------------ every combination

TRIO = ("spare", "containerd", "docker")
HANDLER_OF = {"spare": "spare", "containerd": "runc", "docker": "docker"}


@pytest.fixture(scope="module")
def trio(lab, dockerd, spare, crimuxd_binary, tmp_path_factory):
    """crimuxd over three stores, the default (spare) one stoppable."""
    state = str(tmp_path_factory.mktemp("trio-state"))
    daemon = lab.crimuxd(crimuxd_binary, {"spare": spare.endpoint,
                                          "containerd": lab.containerd.endpoint,
                                          "docker": dockerd.endpoint},
                         docker_backend_config(lab, state) + SPARE_HANDLERS)
    yield daemon
    stop_checked([daemon], must_run=True)


def subsets(items):
    return [tuple(x for i, x in enumerate(items) if mask >> i & 1)
            for mask in range(1 << len(items))]


@pytest.mark.parametrize("down", [False, True], ids=["all-up", "spare-down"])
@pytest.mark.parametrize("on", subsets(TRIO), ids=lambda on: "+".join(on) or "nowhere")
def test_every_combination_agrees(trio, spare, stores, lab, on, down):
    """The image on each set of stores (put there behind crimux's back),
    with every store up or the default one down: ImageStatus, ListImages,
    ImageFsInfo, PullImage and RemoveImage, with and without a handler,
    give the answers of the truth table in docs/routing.md, and agree
    with each other."""
    image = new_image("combo-" + uuid.uuid4().hex[:8])
    (ref,) = push(lab.registry, image)
    repo, tag = ref.rsplit(":", 1)
    image_id = image.config_digest
    up = [s for s in TRIO if not (down and s == "spare")]
    with CRI(trio.endpoint) as mux, CRI(spare.endpoint) as spare_cri:
        direct = {"spare": spare_cri, "containerd": stores.containerd}

        def where():
            found = [s for s in ("spare", "containerd") if s in up and
                     direct[s].ImageStatus(image=pb().ImageSpec(image=image_id)).HasField("image")]
            return found + (["docker"] if stores.dockerd.image_exists(image_id) else [])

        for store in on:
            if store == "docker":
                stores.dockerd.request("POST", f"/images/create?fromImage={repo}&tag={tag}")
            else:
                direct[store].pull(ref)
        spare_fs = mountpoints(spare_cri)[0]
        if down:
            spare.daemon.terminate()
        try:
            assert where() == [s for s in on if s in up]
            everywhere = set(up) <= set(on)
            # ImageStatus without a handler: present iff every store up has
            # it; by the tag and by the ID alike.
            for name in (ref, image_id):
                got = status_of(mux, name)
                assert (got is not None) == everywhere, (name, got)
                if got is not None:
                    assert got.id == image_id and list(got.repo_tags) == [ref]
            # With a handler: that store's own answer; a store down says so.
            for store in TRIO:
                if store in up:
                    got = status_of(mux, ref, HANDLER_OF[store])
                    assert (got is not None) == (store in on), (store, got)
                else:
                    err = rpc_error(status_of, mux, ref, HANDLER_OF[store])
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert "backend spare" in err.details(), err.details()
            # ListImages: once if any store up has it, as ImageStatus says.
            entries = [i for i in mux.ListImages().images if i.id == image_id]
            assert len(entries) == (1 if set(on) & set(up) else 0), entries
            if everywhere:
                assert entries == [status_of(mux, ref)]
            for store in TRIO:
                request = pb().ListImagesRequest()
                request.filter.image.runtime_handler = HANDLER_OF[store]
                if store in up:
                    assert (image_id in {i.id for i in mux.ListImages(request).images}) == \
                        (store in on), store
                else:
                    err = rpc_error(mux.ListImages, request)
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
            # ImageFsInfo: one entry per store up, the default's first.
            fs = mountpoints(mux)
            assert len(fs) == len(up)
            assert (fs[0] == spare_fs) == (not down)
            # RemoveImage by the ID from the list (or, for an image nowhere,
            # by the tag): gone from every store up; a store down fails it.
            name = entries[0].id if entries else ref
            if down:
                err = rpc_error(mux.RemoveImage, image=pb().ImageSpec(image=name))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert "backend spare" in err.details(), err.details()
            else:
                mux.RemoveImage(image=pb().ImageSpec(image=name))
            assert where() == []
            assert status_of(mux, ref) is None
            # PullImage without a handler: onto every store up, then
            # present, listed once, removable.
            assert mux.pull(ref) == image_id
            assert where() == up
            assert status_of(mux, ref).id == image_id
            assert [i.id for i in mux.ListImages().images].count(image_id) == 1
        finally:
            if down:
                spare.start()
    with CRI(trio.endpoint) as mux, CRI(spare.endpoint) as spare_cri:
        direct["spare"] = spare_cri
        if down:  # what the spare store had is still there
            assert spare_cri.ImageStatus(
                image=pb().ImageSpec(image=image_id)).HasField("image") == ("spare" in on)
        up = TRIO

        def removed():  # once crimuxd reaches the restarted store again
            try:
                mux.RemoveImage(image=pb().ImageSpec(image=image_id))
                return True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return False
        env.wait_for(removed, 30, "RemoveImage to reach every store", interval=0.1)
        assert where() == []


# ------------------------------------------------------------------ the kubelet's flows

def pause_based(lab, name, user=""):
    """A unique image that runs: crimux's pause program and a file."""
    with open(lab.pause_binary, "rb") as f:
        binary = f.read()
    layer = images.Layer()
    layer.file("pause", binary, mode=0o755)
    layer.file("id", f"{name} {RUN} {uuid.uuid4().hex}\n".encode())
    return images.Image(f"crimux/img-{name}-{RUN}", "v1", [layer], entrypoint=["/pause"],
                        user=user)


class NeverPull(Exception):
    pass


def kubelet_start(client, pod, handler, ref, policy):
    """The image part of the kubelet's startContainer (1.23): EnsureImageExists
    (ImageStatus with the pod's annotations; a pull with the sandbox config
    when the policy says so), getImageUser (ImageStatus of the pod spec's
    image), CreateContainer with the image's ID. Returns (pulled, container
    ID, the image user the kubelet saw)."""
    pod_id, config = pod
    annotations = {"kubernetes.io/config.source": "api"}
    spec = pb().ImageSpec(image=ref, annotations=annotations)
    status = client.ImageStatus(image=spec)
    present = status.HasField("image")
    pulled = policy == "Always" or (policy == "IfNotPresent" and not present)
    if pulled:
        image_ref = client.PullImage(image=spec, sandbox_config=config, timeout=60).image_ref
    elif not present:
        raise NeverPull(ref)
    else:
        image_ref = status.image.id
    user = client.ImageStatus(image=pb().ImageSpec(image=ref))
    seen = (user.image.uid.value if user.image.HasField("uid") else None) \
        if user.HasField("image") else "absent"
    resources = linux_resources(500, 500, 512 * MIB) if handler == "kata" else None
    ccfg = container_config("c" + uuid.uuid4().hex[:6], image_ref, labels=LABELS,
                            resources=resources)
    cid = client.start_container(pod_id, config, ccfg)
    assert client.ContainerStatus(container_id=cid).status.state == pb().CONTAINER_RUNNING
    return pulled, cid, seen


@pytest.fixture(scope="module")
def pods(mux):
    """A pod on every handler, for the kubelet flows."""
    return {handler: run_pod(mux, handler) for handler in ("runc", "kata", "docker")}


def test_kubelet_if_not_present(mux, lab, stores, pods):
    image = pause_based(lab, "ifnp")
    (ref,) = push(lab.registry, image)
    # Not on every store: pulled for each pod, onto its store, until it is.
    pulled, _, _ = kubelet_start(mux, pods["docker"], "docker", ref, "IfNotPresent")
    assert pulled and stores.where(ref) == ["docker"]
    pulled, _, _ = kubelet_start(mux, pods["kata"], "kata", ref, "IfNotPresent")
    assert pulled and stores.where(ref) == ["containerd", "docker"]
    # Now everywhere: no more pulls, on any handler.
    for handler in ("runc", "kata", "docker"):
        pulled, _, _ = kubelet_start(mux, pods[handler], handler, ref, "IfNotPresent")
        assert not pulled


def test_kubelet_always(mux, lab, stores, pods):
    image = pause_based(lab, "always")
    (ref,) = push(lab.registry, image)
    for handler in ("runc", "docker", "kata"):
        pulled, _, _ = kubelet_start(mux, pods[handler], handler, ref, "Always")
        assert pulled
    assert stores.where(ref) == ["containerd", "docker"]


def test_kubelet_never(mux, lab, stores, pods):
    on_one, everywhere = pause_based(lab, "never1"), pause_based(lab, "never2")
    (ref_one,) = push(lab.registry, on_one)
    (ref_all,) = push(lab.registry, everywhere)
    with pytest.raises(NeverPull):
        kubelet_start(mux, pods["runc"], "runc", ref_all, "Never")
    # On one store only is not enough: without a handler the kubelet does
    # not say which store it asks about.
    mux.PullImage(image=pb().ImageSpec(image=ref_one, runtime_handler="docker"))
    with pytest.raises(NeverPull):
        kubelet_start(mux, pods["docker"], "docker", ref_one, "Never")
    # Pre-pulled by an admin (crictl pull: no pod, no handler): every store.
    mux.pull(ref_all)
    for handler in ("runc", "kata", "docker"):
        kubelet_start(mux, pods[handler], handler, ref_all, "Never")


def test_kubelet_sees_the_image_user_once_the_image_is_everywhere(mux, lab, pods):
    image = pause_based(lab, "user", user="1234")
    (ref,) = push(lab.registry, image)
    mux.pull(ref)
    for handler in ("runc", "docker"):
        _, _, seen = kubelet_start(mux, pods[handler], handler, ref, "IfNotPresent")
        assert seen == 1234


def kubelet_gc(client, among):
    """The kubelet's image GC (freeing everything it may): ListContainers
    for the images in use (by Container.image_ref), ListImages, then
    RemoveImage by ID of every image not in use and not pinned. Only
    images in `among` are candidates (the lab's other images are not this
    test's). Returns the IDs removed."""
    in_use = {c.image_ref for c in client.ListContainers().containers}
    removed = set()
    for image in client.ListImages().images:
        if image.id in among and image.id not in in_use and not image.pinned:
            client.RemoveImage(image=pb().ImageSpec(image=image.id))
            removed.add(image.id)
    return removed


def test_kubelet_image_gc(mux, lab, stores, pods):
    """ListImages, then RemoveImage by ID of every image no container uses
    and no store pins: what is in use stays where it is, the rest goes from
    every store."""
    used, unused, unused_one = (pause_based(lab, n) for n in ("gc-used", "gc-unused", "gc-one"))
    refs = {}
    for image in (used, unused, unused_one):
        (refs[image.config_digest],) = push(lab.registry, image)
    kubelet_start(mux, pods["docker"], "docker", refs[used.config_digest], "IfNotPresent")
    mux.pull(refs[unused.config_digest])
    mux.PullImage(image=pb().ImageSpec(image=refs[unused_one.config_digest],
                                       runtime_handler="runc"))

    assert used.config_digest in {c.image_ref for c in mux.ListContainers().containers}
    assert kubelet_gc(mux, refs) == {unused.config_digest, unused_one.config_digest}
    assert stores.where(used.config_digest) == ["docker"]
    assert stores.where(unused.config_digest) == stores.where(unused_one.config_digest) == []
