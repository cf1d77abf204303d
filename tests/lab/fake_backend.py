"""A scriptable gRPC backend for relay tests: what containerd cannot do on demand.

`FakeBackend` is an in-process gRPC server on a unix socket.  It accepts
every method path (a generic handler, raw bytes in and out), records each
call, and answers according to the behaviour set for that method:

    fake = FakeBackend("/tmp/x/fake.sock").start()
    fake.on("/runtime.v1.RuntimeService/ContainerStatus", reply(b"\\x0a\\x00"))
    fake.on(STREAM_METHOD, stream([b"a", b"b"]), initial_metadata=[("x-a", "1")])
    fake.default = echo()          # every method without a behaviour of its own
    ...
    call = fake.wait_call(method)  # a Call: metadata, request, time_remaining
    call.wait_cancelled(5)
    fake.stop()

Behaviours are small objects built by the functions below (echo, reply,
abort, sleep, stream, forever); each call runs one on a server thread.
Nothing is random.  Records are kept under a lock; a Call is listed once
its arrival data is filled in, and its `ended` event is set only after
`cancelled` is known.
"""

import os
import threading
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 64 << 20  # well above crimux's 16 MiB, so crimux's limits show
NO_DEADLINE = 10 ** 9     # seconds: beyond this a deadline counts as none


def _identity(data):
    return data


# --------------------------------------------------------------- status details

def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, data):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def status_details_bin(code, message, details=()):
    """A serialized google.rpc.Status, the value of `grpc-status-details-bin`.

    `code` is a grpc.StatusCode, `details` (type_url, bytes) pairs packed as
    google.protobuf.Any.  Hand-encoded: google.rpc is not installed here.
    """
    out = _varint(1 << 3) + _varint(code.value[0])
    out += _field(2, message.encode())
    for type_url, value in details:
        out += _field(3, _field(1, type_url.encode()) + _field(2, value))
    return out


# --------------------------------------------------------------- behaviours

class Behaviour:
    """What the backend does with one call.  `run(request, context, call)`
    returns the reply bytes (unary) or an iterator of them (stream)."""

    streaming = False

    def run(self, request, context, call):
        raise NotImplementedError


class _Echo(Behaviour):
    def run(self, request, context, call):
        return request


class _Reply(Behaviour):
    def __init__(self, data):
        self.data = data

    def run(self, request, context, call):
        return self.data


class _Abort(Behaviour):
    def __init__(self, code, message, details_bin=None):
        self.code, self.message, self.details_bin = code, message, details_bin

    def run(self, request, context, call):
        if self.details_bin is not None:
            # Trailing metadata set earlier (see FakeBackend.on) is kept.
            md = tuple(call.sent_trailing_metadata)
            context.set_trailing_metadata(md + (("grpc-status-details-bin", self.details_bin),))
        context.abort(self.code, self.message)


class _Sleep(Behaviour):
    def __init__(self, seconds, then):
        self.seconds, self.then = seconds, then

    def run(self, request, context, call):
        # Wake early when the call ends (cancelled, deadline), like a real
        # backend that notices its context is done.
        if call.wait_ended(self.seconds):
            return b""
        return self.then.run(request, context, call)


class _Stream(Behaviour):
    streaming = True

    def __init__(self, messages, interval=0.0, then_abort=None):
        self.messages, self.interval, self.then_abort = list(messages), interval, then_abort

    def run(self, request, context, call):
        for msg in self.messages:
            if call.ended.is_set():
                return
            yield msg
            if self.interval:
                call.wait_ended(self.interval)
        if self.then_abort is not None:
            self.then_abort.run(request, context, call)


class _Forever(Behaviour):
    streaming = True

    def __init__(self, interval):
        self.interval = interval

    def run(self, request, context, call):
        n = 0
        while not call.ended.is_set():
            yield b"%d" % n
            n += 1
            call.wait_ended(self.interval)


def echo():
    """Reply with the request's bytes."""
    return _Echo()


def reply(data):
    """Reply with these bytes."""
    return _Reply(bytes(data))


def abort(code, message, details_bin=None):
    """Fail with a grpc.StatusCode and message; `details_bin` becomes the
    `grpc-status-details-bin` trailer (see status_details_bin)."""
    return _Abort(code, message, details_bin)


def sleep(seconds, then=None):
    """Wait `seconds` (less if the call ends first), then behave as `then`
    (default: echo)."""
    return _Sleep(seconds, then or echo())


def stream(messages, interval=0.0, then_abort=None):
    """A server stream of these messages in order, `interval` seconds apart,
    ending OK or with the `then_abort` behaviour."""
    return _Stream(messages, interval, then_abort)


def forever(interval=0.05):
    """A server stream of b"0", b"1", ... until the call is cancelled."""
    return _Forever(interval)


# --------------------------------------------------------------- records

class Call:
    """One call as the backend saw it."""

    def __init__(self, method, metadata, request, time_remaining):
        self.method = method
        self.metadata = metadata            # tuple of (key, value) as received
        self.request = request              # bytes
        self.time_remaining = time_remaining  # seconds, None without a deadline
        self.arrived = time.monotonic()
        self.sent_trailing_metadata = ()
        self.ended = threading.Event()      # the RPC terminated, however
        self.handler_done = False           # the behaviour ran to its end
        self.cancelled = None               # set when ended: True if cut short
        self.ended_at = None
        self._lock = threading.Lock()

    def md(self, key):
        """Values of a metadata key, in order."""
        return [v for k, v in self.metadata if k == key]

    def wait_ended(self, timeout):
        return self.ended.wait(timeout)

    def wait_cancelled(self, timeout):
        """True once the call ended before the backend finished it."""
        return self.ended.wait(timeout) and self.cancelled

    def _on_end(self):
        with self._lock:
            self.cancelled = not self.handler_done
            self.ended_at = time.monotonic()
            self.ended.set()

    def __repr__(self):
        return (f"Call({self.method}, {len(self.request)} bytes, "
                f"time_remaining={self.time_remaining}, cancelled={self.cancelled})")


# --------------------------------------------------------------- the server

def _finished(call):
    """The behaviour got to its end; if the call had already ended by then
    (client cancelled, deadline passed) it stays recorded as cancelled."""
    with call._lock:
        if not call.ended.is_set():
            call.handler_done = True


class _Rule:
    def __init__(self, behaviour, initial_metadata, trailing_metadata):
        self.behaviour = behaviour
        self.initial_metadata = tuple(initial_metadata or ())
        self.trailing_metadata = tuple(trailing_metadata or ())


class FakeBackend(grpc.GenericRpcHandler):
    """A gRPC server on a unix socket answering every method path."""

    def __init__(self, socket_path, default=None, workers=32):
        self.socket_path = os.path.abspath(socket_path)
        self.endpoint = "unix://" + self.socket_path
        self.workers = workers
        self.default = default or echo()
        self._rules = {}
        self._calls = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = None

    # configuration ------------------------------------------------------

    def on(self, method, behaviour, initial_metadata=None, trailing_metadata=None):
        """Answer `method` (a full path, "/pkg.Service/Method") with
        `behaviour`, sending these metadata pairs first and last."""
        with self._lock:
            self._rules[method] = _Rule(behaviour, initial_metadata, trailing_metadata)
        return self

    # records ------------------------------------------------------------

    def calls(self, method=None):
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_call(self, method=None, count=1, timeout=10):
        """The `count`-th call of `method` (any method if None), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [c for c in self._calls if method is None or c.method == method]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no call #{count} of {method or 'any method'} "
                                       f"within {timeout}s; saw {self._calls}")
                self._changed.wait(left)

    def clear(self):
        with self._lock:
            self._calls.clear()

    # lifecycle ----------------------------------------------------------

    def start(self):
        """Listen on the socket (again, after stop(): records are kept)."""
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers),
            handlers=[self],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE)])
        if server.add_insecure_port(self.endpoint) == 0:
            raise RuntimeError(f"fake backend cannot listen on {self.endpoint}")
        server.start()
        self._server = server
        return self

    def stop(self, grace=0):
        """Stop serving (calls in flight are cancelled after `grace` seconds)
        and remove the socket.  Safe to call more than once."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # grpc.GenericRpcHandler ---------------------------------------------

    def service(self, handler_call_details):
        method = handler_call_details.method
        with self._lock:
            rule = self._rules.get(method) or _Rule(self.default, (), ())
        if rule.behaviour.streaming:
            def handle_stream(request, context):
                call = self._begin(method, request, context, rule)
                try:
                    yield from rule.behaviour.run(request, context, call)
                except Exception:
                    _finished(call)  # an abort: the behaviour's own ending
                    raise
                _finished(call)
            return grpc.unary_stream_rpc_method_handler(
                handle_stream, request_deserializer=_identity,
                response_serializer=_identity)

        def handle_unary(request, context):
            call = self._begin(method, request, context, rule)
            try:
                return rule.behaviour.run(request, context, call)
            finally:
                _finished(call)
        return grpc.unary_unary_rpc_method_handler(
            handle_unary, request_deserializer=_identity, response_serializer=_identity)

    def _begin(self, method, request, context, rule):
        remaining = context.time_remaining()
        if remaining is not None and remaining > NO_DEADLINE:
            remaining = None  # gRPC Python's "infinite" deadline
        call = Call(method, tuple(context.invocation_metadata()), bytes(request), remaining)
        if not context.add_callback(call._on_end):
            call._on_end()  # the RPC had already terminated (deadline passed)
        if rule.initial_metadata:
            context.send_initial_metadata(rule.initial_metadata)
        if rule.trailing_metadata:
            call.sent_trailing_metadata = rule.trailing_metadata
            context.set_trailing_metadata(rule.trailing_metadata)
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()
        return call
