"""The relay through crimuxd: bytes, metadata, status, streams, deadlines,
cancellation, size limits and unreachable backends.

Most tests put crimuxd in front of tests/lab/fake_backend.py, which records
what arrives and answers on demand; the last ones use the lab's containerd.
"""

import os
import shutil
import tempfile
import time

import grpc
import pytest

from lab.cri import CRI, pb
from lab.fake_backend import (FakeBackend, abort, echo, forever, reply, sleep,
                              status_details_bin, stream)

MIB = 1 << 20
RUNTIME = "/runtime.v1.RuntimeService/"
UNARY = RUNTIME + "ContainerStatus"         # a unary method crimux only relays
STREAM = RUNTIME + "GetContainerEvents"     # CRI's server-streaming method
UNKNOWN = "/runtime.v1.RuntimeService/FutureMethodV9"
UNKNOWN_SERVICE = "/crimux.test.v1.Elsewhere/Echo"

# A valid ContainerStatusRequest followed by a field crimux's schema does not
# have (number 999, bytes): relaying must not re-encode and lose it.
UNKNOWN_FIELD = b"\xba\x3e\x04\x00\xfe\xff\x01"


@pytest.fixture
def fake():
    """A started FakeBackend on a short socket path of its own."""
    tmp = tempfile.mkdtemp(prefix="crx-fake-", dir="/tmp")
    backend = FakeBackend(os.path.join(tmp, "fake.sock")).start()
    yield backend
    backend.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def relay(fake, crimuxd_factory):
    """A CRI client to a crimuxd whose only backend is `fake`."""
    daemon = crimuxd_factory(backends={"fake": fake.endpoint})
    with CRI(daemon.endpoint) as client:
        yield client


def md_pairs(metadata, prefix="x-"):
    """Metadata as (key, value) pairs, only the keys starting with `prefix`."""
    return [(m[0], m[1]) for m in metadata or () if m[0].startswith(prefix)]


def details_bin(metadata):
    return [m[1] for m in metadata or () if m[0] == "grpc-status-details-bin"]


# ------------------------------------------------------------------ bytes

def test_request_and_reply_bytes_unchanged(relay, fake):
    request = pb().ContainerStatusRequest(container_id="c0ffee", verbose=True)
    request_bytes = request.SerializeToString() + UNKNOWN_FIELD
    answer = pb().ContainerStatusResponse(
        status=pb().ContainerStatus(id="c0ffee", state=pb().CONTAINER_RUNNING),
        info={"k": "v"}).SerializeToString() + UNKNOWN_FIELD
    fake.on(UNARY, reply(answer))

    got = relay.raw(UNARY, request_bytes)

    assert got == answer
    assert fake.wait_call(UNARY).request == request_bytes


def test_compressed_request_and_reply(relay, fake):
    # gRPC decompresses on the way in; what the backend sees is the message.
    payload = b"squeeze me " * 10000
    fake.on(UNKNOWN, echo())
    rpc = relay.channel.unary_unary(UNKNOWN)
    assert rpc(payload, timeout=10, compression=grpc.Compression.Gzip) == payload
    assert fake.wait_call(UNKNOWN).request == payload


@pytest.mark.parametrize("payload", [b"", bytes(range(256)) * 4], ids=["empty", "binary"])
def test_unknown_method_is_relayed(relay, fake, payload):
    method = UNKNOWN
    fake.on(method, echo())
    # Unary and server-stream calls of a CRI v1 method crimux has never heard of.
    assert relay.raw(method, payload) == payload
    assert list(relay.raw(method, payload, stream=True)) == [payload]
    calls = fake.calls(method)
    assert [(c.method, c.request) for c in calls] == [(method, payload)] * 2


def test_other_services_are_not_relayed(relay, fake):
    """Only CRI v1 passes: a backend's socket may serve its whole API
    (tests/integration/test_policy_paths.py has the attack)."""
    fake.on(UNKNOWN_SERVICE, echo())
    with pytest.raises(grpc.RpcError) as err:
        relay.raw(UNKNOWN_SERVICE, b"x")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert fake.calls(UNKNOWN_SERVICE) == []


def test_concurrent_calls_get_their_own_replies(relay, fake):
    fake.on(UNKNOWN, sleep(0.2))  # overlap in time, then echo
    rpc = relay.channel.unary_unary(UNKNOWN)
    payloads = [b"call-%02d" % i * (i + 1) for i in range(16)]
    pending = [rpc.future(p, timeout=20) for p in payloads]
    assert [f.result() for f in pending] == payloads
    assert sorted(c.request for c in fake.calls(UNKNOWN)) == sorted(payloads)


# ------------------------------------------------------------------ metadata and status

def test_client_metadata_reaches_backend(relay, fake):
    sent = [("x-crimux-test", "hello relay"), ("x-crimux-test", "second value"),
            ("x-crimux-trace-bin", b"\x00\x01\xfe\xff")]
    relay.raw(UNARY, b"", metadata=sent)
    call = fake.wait_call(UNARY)
    assert md_pairs(call.metadata) == sent
    # The outgoing leg is crimux's own call: its user agent is crimux's.
    assert any(ua.startswith("crimux/") for ua in call.md("user-agent")), call.metadata


def test_reply_metadata_comes_back(relay, fake):
    initial = [("x-backend-initial", "one"), ("x-backend-initial-bin", b"\x00\x80\xff")]
    trailing = [("x-backend-trailing", "two"), ("x-backend-trailing-bin", b"\xff\x00")]
    fake.on(UNARY, reply(b"\x0a\x02ok"), initial_metadata=initial,
            trailing_metadata=trailing)

    got, call = relay.raw(UNARY, b"", with_call=True)

    assert got == b"\x0a\x02ok"
    assert call.code() == grpc.StatusCode.OK
    assert md_pairs(call.initial_metadata()) == initial
    assert md_pairs(call.trailing_metadata()) == trailing


def test_trailers_only_error(relay, fake):
    # No initial metadata and no message: the backend answers with trailers only.
    fake.on(UNARY, abort(grpc.StatusCode.PERMISSION_DENIED, "go away"),
            trailing_metadata=[("x-only", "trailers")])
    with pytest.raises(grpc.RpcError) as err:
        relay.raw(UNARY, b"")
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                       "go away")
    assert md_pairs(err.value.trailing_metadata()) == [("x-only", "trailers")]


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_error_status_comes_back_unchanged(relay, fake, code):
    message = f"backend says {code.name}: ünïcödé, 100% \"quoted\"\nsecond line"
    details = status_details_bin(code, message, [
        ("type.googleapis.com/google.rpc.ErrorInfo", b"\x0a\x06reason\x12\x06domain"),
        ("type.googleapis.com/crimux.test.Blob", bytes(range(256)))])
    initial = [("x-backend-initial", "before the error")]
    trailing = [("x-backend-trailing", "after the error"), ("x-backend-bin", b"\x00\x01")]
    fake.on(UNARY, abort(code, message, details), initial_metadata=initial,
            trailing_metadata=trailing)

    with pytest.raises(grpc.RpcError) as err:
        relay.raw(UNARY, b"")

    e = err.value
    assert (e.code(), e.details()) == (code, message)
    assert md_pairs(e.initial_metadata()) == initial
    assert md_pairs(e.trailing_metadata()) == trailing
    assert details_bin(e.trailing_metadata()) == [details]


# ------------------------------------------------------------------ streams

def test_server_stream_relayed_in_order(relay, fake):
    messages = [b"event-%03d:" % i + bytes([i]) * i for i in range(100)]
    initial = [("x-stream-initial", "hi")]
    fake.on(STREAM, stream(messages), initial_metadata=initial,
            trailing_metadata=[("x-stream-trailing", "bye")])

    responses = relay.raw(STREAM, b"", stream=True)
    got = list(responses)

    assert got == messages
    assert responses.code() == grpc.StatusCode.OK
    assert md_pairs(responses.initial_metadata()) == initial
    assert md_pairs(responses.trailing_metadata()) == [("x-stream-trailing", "bye")]


def test_empty_stream_keeps_its_metadata(relay, fake):
    fake.on(STREAM, stream([]), initial_metadata=[("x-empty", "initial")],
            trailing_metadata=[("x-empty", "trailing")])
    responses = relay.raw(STREAM, b"", stream=True)
    assert list(responses) == []
    assert md_pairs(responses.initial_metadata()) == [("x-empty", "initial")]
    assert md_pairs(responses.trailing_metadata()) == [("x-empty", "trailing")]


def test_slow_reader_gets_every_message(relay, fake):
    # 40 MiB in 1 MiB messages: flow control, not buffering, must carry them.
    messages = [bytes([i]) * MIB for i in range(40)]
    fake.on(STREAM, stream(messages))
    got = []
    for msg in relay.raw(STREAM, b"", stream=True):
        got.append(msg)
        if len(got) % 10 == 0:
            time.sleep(0.1)
    assert got == messages


def test_stream_error_after_messages(relay, fake):
    details = status_details_bin(grpc.StatusCode.ABORTED, "stream broke", [])
    fake.on(STREAM, stream([b"one", b"two", b"three"],
                           then_abort=abort(grpc.StatusCode.ABORTED, "stream broke", details)),
            trailing_metadata=[("x-why", "test")])

    responses = relay.raw(STREAM, b"", stream=True)
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for msg in responses:
            got.append(msg)

    assert got == [b"one", b"two", b"three"]
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.ABORTED, "stream broke")
    assert md_pairs(err.value.trailing_metadata()) == [("x-why", "test")]
    assert details_bin(err.value.trailing_metadata()) == [details]


def test_client_cancel_of_stream_reaches_backend(relay, fake):
    fake.on(STREAM, forever(interval=0.02))
    responses = relay.raw(STREAM, b"", stream=True, timeout=60)
    assert [next(responses) for _ in range(3)] == [b"0", b"1", b"2"]
    call = fake.wait_call(STREAM)
    assert not call.ended.is_set()

    responses.cancel()

    assert call.wait_cancelled(5), f"the backend's stream was not cancelled: {call}"


def test_client_cancel_of_quiet_stream_reaches_backend(relay, fake):
    # One message, then nothing for a long time: crimux is waiting on the
    # backend, not on the client, when the client goes.
    fake.on(STREAM, stream([b"only", b"much later"], interval=60))
    responses = relay.raw(STREAM, b"", stream=True, timeout=120)
    assert next(responses) == b"only"
    responses.cancel()
    call = fake.wait_call(STREAM)
    assert call.wait_cancelled(5), f"the backend's stream was not cancelled: {call}"


def test_client_cancel_of_unary_reaches_backend(relay, fake):
    fake.on(UNARY, sleep(30))
    pending = relay.channel.unary_unary(UNARY).future(b"", timeout=60)
    call = fake.wait_call(UNARY)
    pending.cancel()
    assert call.wait_cancelled(5), f"the backend's call was not cancelled: {call}"


# ------------------------------------------------------------------ deadlines

def wire_rounding(timeout):
    """How much later than set a deadline may arrive: grpc-timeout is sent
    rounded up, in gRPC core to about three significant digits (a 120 s
    deadline whose float sum lands a microsecond over goes out as 121 S)."""
    return max(0.05, timeout / 100)


@pytest.mark.parametrize("timeout", [5, 120])
def test_client_deadline_reaches_backend(relay, fake, timeout):
    relay.raw(UNARY, b"", timeout=timeout)
    remaining = fake.wait_call(UNARY).time_remaining
    assert remaining is not None, "the backend saw no deadline"
    assert timeout - 1 < remaining <= timeout + wire_rounding(timeout)


def test_no_deadline_stays_no_deadline(relay, fake):
    # Image pulls may take long: crimux must not invent a deadline of its own.
    rpc = relay.channel.unary_unary(UNARY)
    rpc(b"", timeout=None)
    assert fake.wait_call(UNARY).time_remaining is None


def test_short_deadline_on_slow_call(relay, fake):
    fake.on(UNARY, sleep(10))
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        relay.raw(UNARY, b"", timeout=0.5)
    elapsed = time.monotonic() - start

    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2
    call = fake.wait_call(UNARY)
    assert call.wait_cancelled(5), f"the backend did not see the call end: {call}"
    assert call.ended_at - call.arrived < 2


def test_deadline_ends_a_stream(relay, fake):
    fake.on(STREAM, forever(interval=0.02))
    got = []
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        for msg in relay.raw(STREAM, b"", stream=True, timeout=1):
            got.append(msg)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 3
    assert got[:3] == [b"0", b"1", b"2"]
    assert fake.wait_call(STREAM).wait_cancelled(5)


def test_many_expired_and_cancelled_calls_leave_crimux_healthy(relay, fake):
    """Calls that end at every stage (before the request is read, while the
    backend works, mid-stream) must all be cleaned up: crimuxd keeps serving
    and (see conftest) still exits 0 on SIGTERM."""
    fake.on(UNARY, sleep(0.05))
    fake.on(STREAM, forever(interval=0.001))
    unary = relay.channel.unary_unary(UNARY)
    streams = relay.channel.unary_stream(STREAM)
    pending = [unary.future(b"x", timeout=0.001 * (i % 80)) for i in range(200)]
    opened = [streams(b"", timeout=0.01 * (i % 20 + 1)) for i in range(40)]
    for i, s in enumerate(opened):
        if i % 2:
            s.cancel()
    for f in pending:
        f.exception(timeout=20)
    for s in opened:
        with pytest.raises(grpc.RpcError):
            list(s)
    for call in fake.calls():
        assert call.wait_ended(10), call
    assert relay.raw(UNKNOWN, b"still here") == b"still here"


def test_client_that_vanishes_cancels_its_calls(relay, fake):
    """A client closing its connection with calls open: every backend call
    is cancelled and crimuxd carries on."""
    fake.on(UNARY, sleep(60))
    fake.on(STREAM, forever(interval=0.01))
    channel = grpc.insecure_channel(relay.endpoint)
    pending = [channel.unary_unary(UNARY).future(b"", timeout=120) for _ in range(10)]
    streams = [channel.unary_stream(STREAM)(b"", timeout=120) for _ in range(10)]
    for s in streams:
        next(s)
    fake.wait_call(UNARY, count=10)

    channel.close()

    for call in fake.calls(UNARY) + fake.calls(STREAM):
        assert call.wait_cancelled(5), call
    assert all(f.done() for f in pending)
    assert relay.raw(UNKNOWN, b"still here") == b"still here"


# ------------------------------------------------------------------ sizes

def test_15mib_request_passes(relay, fake):
    fake.on(UNKNOWN, reply(b"ok"))
    big = bytes(range(256)) * (15 * MIB // 256)
    assert relay.raw(UNKNOWN, big) == b"ok"
    assert fake.wait_call(UNKNOWN).request == big


def test_15mib_reply_passes(relay, fake):
    big = bytes(reversed(range(256))) * (15 * MIB // 256)
    fake.on(UNARY, reply(big))
    fake.on(STREAM, stream([big, b"small", big]))
    assert relay.raw(UNARY, b"") == big
    assert list(relay.raw(STREAM, b"", stream=True)) == [big, b"small", big]


@pytest.mark.parametrize("size, ok", [(16 * MIB, True), (16 * MIB + 1, False)],
                         ids=["16MiB", "16MiB+1"])
def test_limit_is_exactly_16mib(relay, fake, size, ok):
    """The kubelet's own limit, in both directions."""
    big_reply, big_request = b"\x03" * size, b"\x04" * size
    fake.on(UNARY, reply(big_reply))
    fake.on(UNKNOWN, reply(b"ok"))
    if ok:
        assert relay.raw(UNKNOWN, big_request) == b"ok"
        assert relay.raw(UNARY, b"") == big_reply
        return
    for method, request in ((UNKNOWN, big_request), (UNARY, b"")):
        with pytest.raises(grpc.RpcError) as err:
            relay.raw(method, request)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method


def test_17mib_request_is_refused(relay, fake):
    fake.on(UNKNOWN, echo())
    with pytest.raises(grpc.RpcError) as err:
        relay.raw(UNKNOWN, b"\x01" * (17 * MIB))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Refused at crimux's door: nothing reached the backend.
    relay.raw(UNKNOWN, b"after")
    assert [c.request for c in fake.calls(UNKNOWN)] == [b"after"]


@pytest.mark.parametrize("method", [UNARY, STREAM])
def test_17mib_reply_is_refused(relay, fake, method):
    huge = b"\x02" * (17 * MIB)
    fake.on(method, reply(huge) if method == UNARY else stream([b"first", huge]))
    with pytest.raises(grpc.RpcError) as err:
        list(relay.raw(method, b"", stream=method == STREAM))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fake.wait_call(method)


# ------------------------------------------------------------------ unreachable backend

def expect_unavailable(client, fake):
    """Both a unary call and a stream fail with UNAVAILABLE naming the backend."""
    with pytest.raises(grpc.RpcError) as err:
        client.raw(UNARY, b"", timeout=10)
    with pytest.raises(grpc.RpcError) as stream_err:
        list(client.raw(STREAM, b"", stream=True, timeout=10))
    for e in (err.value, stream_err.value):
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert f"backend fake ({fake.endpoint}) is unavailable: " in e.details()


def succeeds_again_within(client, seconds):
    """Seconds until a relayed call succeeds again (fails after `seconds`)."""
    start = time.monotonic()
    while True:
        try:
            client.raw(UNARY, b"back", timeout=5)
            return time.monotonic() - start
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if time.monotonic() - start > seconds:
                raise AssertionError(f"still unavailable after {seconds}s: {e.details()}")
            time.sleep(0.05)


def test_backend_never_started(crimuxd_factory):
    tmp = tempfile.mkdtemp(prefix="crx-fake-", dir="/tmp")
    fake = FakeBackend(os.path.join(tmp, "fake.sock"))
    try:
        daemon = crimuxd_factory(backends={"fake": fake.endpoint})
        with CRI(daemon.endpoint) as client:
            expect_unavailable(client, fake)
            assert client.Version(version="v1").runtime_name == "crimux"
            fake.start()
            assert succeeds_again_within(client, 3) < 3
        assert fake.calls(UNARY)[-1].request == b"back"
    finally:
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_backend_restarted(relay, fake):
    relay.raw(UNARY, b"before")
    fake.stop()
    expect_unavailable(relay, fake)
    fake.start()
    assert succeeds_again_within(relay, 3) < 3
    assert [c.request for c in fake.calls(UNARY)] == [b"before", b"back"]


def test_backend_dies_during_call(relay, fake):
    fake.on(UNARY, sleep(30))
    pending = relay.channel.unary_unary(UNARY).future(b"", timeout=20)
    fake.wait_call(UNARY)
    fake.stop()
    e = pending.exception(timeout=10)
    assert e is not None and e.code() == grpc.StatusCode.UNAVAILABLE, e
    assert f"backend fake ({fake.endpoint}) is unavailable: " in e.details()
    fake.start()
    fake.on(UNARY, echo())
    assert succeeds_again_within(relay, 3) < 3


# ------------------------------------------------------------------ real containerd

def test_containerd_unimplemented_comes_back(lab, crimuxd, containerd_cri):
    """containerd 1.6 has no GetContainerEvents: its own status reaches the client."""
    def first_event(client):
        with pytest.raises(grpc.RpcError) as err:
            next(client.GetContainerEvents(timeout=10))
        return err.value

    direct = first_event(containerd_cri)
    with CRI(crimuxd.endpoint) as client:
        relayed = first_event(client)
    assert direct.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (relayed.code(), relayed.details()) == (direct.code(), direct.details())


def test_containerd_raw_bytes_unchanged(lab, crimuxd, containerd_cri):
    """A containerd reply arrives byte for byte as containerd sends it."""
    containerd_cri.pull(lab.busybox_ref)
    spec = pb().ImageSpec(image=lab.busybox_ref)
    request = pb().ImageStatusRequest(image=spec, verbose=True).SerializeToString()
    direct = containerd_cri.raw("/runtime.v1.ImageService/ImageStatus", request)
    with CRI(crimuxd.endpoint) as client:
        relayed = client.raw("/runtime.v1.ImageService/ImageStatus", request)
    assert relayed == direct
    assert pb().ImageStatusResponse.FromString(relayed).image.id


def test_relay_threads_are_independent(relay, fake):
    """A slow call does not hold up others on the same connection."""
    fake.on(UNARY, sleep(1.5))
    slow = relay.channel.unary_unary(UNARY).future(b"slow", timeout=20)
    fake.wait_call(UNARY)
    start = time.monotonic()
    assert relay.raw(UNKNOWN, b"quick") == b"quick"
    assert time.monotonic() - start < 1
    assert not slow.done()
    assert slow.result() == b"slow"

