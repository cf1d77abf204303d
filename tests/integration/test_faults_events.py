"""Issue 10: GetContainerEvents subscribers must not starve anything else.

Each subscriber used to hold a worker of crimuxd's (one per backend, from the
pool merged calls fan out on) for its whole life: at 32 subscribers every
merged call that fans out on a worker hung.  And the backends' event streams
were opened one after another, each waiting for its headers, so a backend
that accepted the stream and said nothing kept the next one unsubscribed.

Real containerd 1.6 has no GetContainerEvents and cannot be made to stay
silent on demand: two scripted backends (tests/lab/fake_backend.py) stand in,
as in test_merge_fake.py.  The same bound against real dockerd is in
test_faults_bounds.py.
"""

import os
import shutil
import tempfile
import threading
import time

import grpc
import pytest

from lab import env, procstat
from lab.cri import CRI, pb
from lab.fake_backend import FakeBackend, abort, reply, sleep, stream
from conftest import stop_checked

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGES = "/runtime.v1.ImageService/"
EVENTS = RUNTIME + "GetContainerEvents"

HANDLERS = """
[crimux]
default_handler = runc
[handler "runc"]
backend = a
[handler "blue"]
backend = b
runtime_handler = runc
"""

# More than the fan-out pool's 64 threads and the call workers' 64, so that
# holding either for each subscriber shows.
SUBSCRIBERS = 70


def event(backend, n, handler="runc"):
    api = pb()
    return api.ContainerEventResponse(
        container_id=f"{backend}-ctr-{n}", container_event_type=api.CONTAINER_STARTED_EVENT,
        created_at=1000 + n,
        pod_sandbox_status=api.PodSandboxStatus(id=f"{backend}-pod", runtime_handler=handler,
                                                state=api.SANDBOX_READY))


@pytest.fixture
def fakes():
    # Enough threads that the fakes themselves never run out, whatever
    # crimuxd opens on them.
    tmp = tempfile.mkdtemp(prefix="crx-flt-", dir="/tmp")
    backends = {n: FakeBackend(os.path.join(tmp, n + ".sock"), workers=4 * SUBSCRIBERS).start()
                for n in ("a", "b")}
    yield backends
    for b in backends.values():
        b.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def daemon(crimuxd_binary, fakes, tmp_path):
    d = env.Crimuxd(crimuxd_binary, str(tmp_path / "crimuxd"),
                    {n: f.endpoint for n, f in fakes.items()}, HANDLERS,
                    log_level="info").start()
    yield d
    stop_checked([d], must_run=True)


class Subscriber(threading.Thread):
    """Reads one GetContainerEvents stream in the background."""

    def __init__(self, client, timeout=60, subscribed=True):
        super().__init__(daemon=True)
        self.stream = client.GetContainerEvents(timeout=timeout)
        self.got, self.error = [], None
        self.changed = threading.Condition()
        if subscribed:
            # crimuxd sends the headers once it has subscribed the stream:
            # every event from then on reaches it.
            self.stream.initial_metadata()
        self.start()

    def run(self):
        try:
            for e in self.stream:
                with self.changed:
                    self.got.append(e.container_id)
                    self.changed.notify_all()
        except grpc.RpcError as e:
            self.error = e
        with self.changed:
            self.changed.notify_all()

    def wait(self, count, timeout=20):
        with self.changed:
            self.changed.wait_for(lambda: len(self.got) >= count or self.error, timeout)
        return list(self.got)

    def wait_from(self, backends, timeout=20):
        """Waits for an event of each backend; the backends heard from."""
        def heard():
            return {b for b in backends if any(c.startswith(b + "-") for c in self.got)}
        with self.changed:
            self.changed.wait_for(lambda: heard() == set(backends) or self.error, timeout)
            return heard()


def test_subscribers_do_not_starve_merged_calls(daemon, fakes):
    for name, fake in fakes.items():
        # One event every 50 ms, heard by whoever subscribes by then.
        fake.on(EVENTS, stream([event(name, i).SerializeToString() for i in range(2400)],
                               interval=0.05, then_abort=sleep(120)))
        fake.on(IMAGES + "ListImages", reply(b""))
        fake.on(RUNTIME + "ListContainers", reply(b""))
    fakes["a"].on(RUNTIME + "ContainerStatus", abort(grpc.StatusCode.NOT_FOUND, "no such"))
    before = procstat.usage(daemon.pid)
    with CRI(daemon.endpoint) as client:
        subs = [Subscriber(client) for _ in range(SUBSCRIBERS)]
        for s in subs:
            assert s.wait_from(fakes) == set(fakes), s.error
        during = procstat.usage(daemon.pid)

        # Merged calls that fan out on workers are served: StreamImages ...
        got = list(client.StreamImages(timeout=10))
        assert [len(r.images) for r in got] == [0]
        # ... and the lookup of an ID no backend knows (ListContainers on
        # each), which then goes to the default backend.
        with pytest.raises(grpc.RpcError) as err:
            client.ContainerStatus(container_id="nobody-has-this", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Merged on the event thread, as before.
        assert len(client.ListPodSandbox(timeout=10).items) == 0

        # No thread per subscriber: one stream per backend, whatever their number.
        assert len(fakes["a"].calls(EVENTS)) == 1 and len(fakes["b"].calls(EVENTS)) == 1
        assert during.threads < before.threads + 16, (before, during)
        for s in subs:
            s.stream.cancel()
        for s in subs:
            s.join(10)
        # Nobody listens any more: the backends' streams end.
        for fake in fakes.values():
            assert fake.calls(EVENTS)[0].wait_cancelled(10)
        after = procstat.settled(daemon.pid, before)
    procstat.report(f"{SUBSCRIBERS} event subscribers on two fake backends", before, after,
                    during_threads=during.threads)


def test_a_silent_backend_does_not_hold_the_others_events(daemon, fakes):
    # a accepts the stream and never answers, not even its headers.
    fakes["a"].on(EVENTS, stream([], then_abort=sleep(120)))
    fakes["b"].on(EVENTS, stream([event("b", i).SerializeToString() for i in range(3)],
                                 then_abort=sleep(120)))
    with CRI(daemon.endpoint) as client:
        sub = Subscriber(client, timeout=30)
        assert sub.wait(3, timeout=10) == ["b-ctr-0", "b-ctr-1", "b-ctr-2"], sub.error
        assert sub.error is None
        sub.stream.cancel()
        sub.join(10)
    for fake in fakes.values():
        assert fake.calls(EVENTS)[0].wait_cancelled(10)


def test_a_new_subscriber_reopens_a_backends_ended_stream(daemon, fakes):
    fakes["a"].on(EVENTS, stream([event("a", 0).SerializeToString()], then_abort=sleep(120)))
    fakes["b"].on(EVENTS, stream([event("b", 0).SerializeToString()],
                                 then_abort=abort(grpc.StatusCode.UNAVAILABLE, "going away")))
    with CRI(daemon.endpoint) as client:
        first = [Subscriber(client, timeout=30, subscribed=False) for _ in range(3)]
        for s in first:
            s.join(10)
            assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE
            assert s.error.details() == "backend b: going away"
        # The other backend's stream is not left running for nobody. crimux
        # may cancel it before the fake backend's handler runs, and then the
        # fake never records it: give a late one time to show up.
        time.sleep(0.5)
        assert all(c.wait_cancelled(10) for c in fakes["a"].calls(EVENTS))

        fakes["b"].on(EVENTS, stream([event("b", 1).SerializeToString()],
                                     then_abort=sleep(120)))
        again = Subscriber(client, timeout=30)
        assert sorted(again.wait(2)) == ["a-ctr-0", "b-ctr-1"], again.error
        again.stream.cancel()
        again.join(10)


def test_a_subscriber_that_stops_reading_is_ended_not_buffered(daemon, fakes):
    """crimuxd queues at most 1 MiB of events for a subscriber beyond what gRPC
    flow control holds; one that falls further behind is ended with
    RESOURCE_EXHAUSTED, while a subscriber that keeps up with the events (a
    few hundred a second, of 40 kB) gets every one."""
    big = "x" * 40000
    n = 1500
    api = pb()
    msgs = [api.ContainerEventResponse(container_id=f"a-{i}-{big}").SerializeToString()
            for i in range(n)]
    gate = threading.Event()

    class Gated(type(stream([]))):  # a stream() that waits for the gate
        def __init__(self):
            super().__init__(msgs, interval=0.003, then_abort=sleep(120))

        def run(self, request, context, call):
            gate.wait(20)
            yield from super().run(request, context, call)

    fakes["a"].on(EVENTS, Gated())
    fakes["b"].on(EVENTS, stream([], then_abort=sleep(120)))
    before = procstat.usage(daemon.pid)
    with CRI(daemon.endpoint) as client, CRI(daemon.endpoint) as reader_client:
        stuck = client.GetContainerEvents(timeout=120)
        stuck.initial_metadata()
        reader = Subscriber(reader_client, timeout=120)
        gate.set()
        reader.wait(n, timeout=90)
        assert reader.error is None and len(reader.got) == n
        during = procstat.usage(daemon.pid)
        got = 0
        with pytest.raises(grpc.RpcError) as err:
            for _ in stuck:
                got += 1
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fell more than 1 MiB of events behind" in err.value.details()
        assert got < n
        reader.stream.cancel()
    procstat.report(f"a subscriber that stops reading, {n} events of 40 kB", before,
                    procstat.usage(daemon.pid), during=during, stuck_received=got)


def test_a_dead_backend_fails_subscribers_at_once_and_is_followed_again(daemon, fakes):
    fakes["a"].on(EVENTS, stream([event("a", 0).SerializeToString()], then_abort=sleep(120)))
    fakes["b"].stop()  # its socket is gone: nothing listens
    with CRI(daemon.endpoint) as client:
        sub = Subscriber(client, timeout=30, subscribed=False)
        sub.join(20)
        assert sub.error is not None and sub.error.code() == grpc.StatusCode.UNAVAILABLE
        details = sub.error.details()
        assert details.startswith("backend b") and details.count("backend b") == 1, details
        # The other backend's stream, if b's failure did not come first, is
        # not left open for nobody.
        for call in fakes["a"].calls(EVENTS):
            assert call.wait_cancelled(10)

        fakes["b"].start()
        fakes["b"].on(EVENTS, stream([event("b", 0).SerializeToString()],
                                     then_abort=sleep(120)))
        # crimuxd's channel reconnects within its 1 s backoff; the kubelet
        # re-subscribes until it can.
        def both():
            s = Subscriber(client, timeout=30)
            heard = s.wait_from(fakes, timeout=5)
            s.stream.cancel()
            return heard == set(fakes)
        env.wait_for(both, 20, "events of both backends again")
