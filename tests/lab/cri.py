"""A CRI v1 client for tests, built from the project's own `cri/api.proto`.

The Python bindings are generated with protoc on first use into a build or
cache directory (never into the source tree).  `CRI` gets one method per
rpc of RuntimeService and ImageService, named as in the schema:

    cri = CRI("unix:///run/crimux/crimux.sock")
    cri.Version(version="v1")
    cri.PullImage(image=pb().ImageSpec(image=ref))
    cri.RunPodSandbox(pb().RunPodSandboxRequest(config=...), timeout=60)

Each method takes either a request message or the request's fields as
keyword arguments, plus `timeout=` (the gRPC deadline, in seconds; for
requests with a `timeout` field of their own, such as ExecSync, it fills that
field and `deadline=` sets the gRPC deadline), `metadata=` and `with_call=`
(returns (response, call) for metadata and status checks).  Server-streaming rpcs
return the response iterator.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import grpc
from google.protobuf import descriptor_pb2

MAX_MESSAGE = 64 << 20  # above crimux's 16 MiB, so tests can probe its limit
SERVICES = ("RuntimeService", "ImageService")
_pb = None


def srcdir():
    """The source tree: $CRIMUX_SRCDIR, else the repository holding this file."""
    default = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.abspath(os.environ.get("CRIMUX_SRCDIR", default))


def gendir():
    """Where generated bindings go: $CRIMUX_BUILDDIR/tests/gen for an
    out-of-tree build, else a cache directory under /tmp."""
    build = os.environ.get("CRIMUX_BUILDDIR")
    if build and os.path.realpath(build) != os.path.realpath(srcdir()):
        return os.path.join(build, "tests", "gen")
    return "/tmp/crimux-gen"


def pb():
    """The generated `api_pb2` module, (re)generated when api.proto changed."""
    global _pb
    if _pb is None:
        proto = os.path.join(srcdir(), "cri", "api.proto")
        with open(proto, "rb") as f:
            stamp = hashlib.sha256(f.read()).hexdigest()[:16]
        out = os.path.join(gendir(), stamp)
        module = os.path.join(out, "api_pb2.py")
        if not os.path.exists(module):
            os.makedirs(gendir(), exist_ok=True)
            tmp = tempfile.mkdtemp(dir=gendir())
            subprocess.run(["protoc", "-I", os.path.dirname(proto),
                            "--python_out=" + tmp, proto], check=True)
            try:
                os.rename(tmp, out)
            except OSError:  # another process generated it first
                shutil.rmtree(tmp)
        spec = importlib.util.spec_from_file_location("crimux_cri_api_pb2", module)
        _pb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_pb)
    return _pb


def _identity(data):
    return data


class CRI:
    """A client for one CRI endpoint (e.g. `unix:///path/to/sock`)."""

    def __init__(self, endpoint, timeout=30):
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ])
        api = pb()
        for service in SERVICES:
            proto = api.DESCRIPTOR.services_by_name[service]
            shapes = {m.name: m.server_streaming for m in _service_proto(proto).method}
            for method in proto.methods:
                setattr(self, method.name, self._stub(service, method, shapes[method.name]))

    def _stub(self, service, method, streaming):
        request_cls = getattr(pb(), method.input_type.name)
        response_cls = getattr(pb(), method.output_type.name)
        make = self.channel.unary_stream if streaming else self.channel.unary_unary
        rpc = make(f"/runtime.v1.{service}/{method.name}",
                   request_serializer=request_cls.SerializeToString,
                   response_deserializer=response_cls.FromString)

                # ExecSync, StopContainer and CheckpointContainer have a `timeout`
        # field of their own: there `timeout=` fills it, and the gRPC deadline
        # is `deadline=` (default: long enough to cover the field).
        own_timeout = "timeout" in request_cls.DESCRIPTOR.fields_by_name

        def call(request=None, *, timeout=None, deadline=None, metadata=None, with_call=False,
                 **fields):
            if own_timeout and timeout is not None:
                fields["timeout"] = timeout
                deadline = deadline or self.timeout + timeout
            elif deadline is None:
                deadline = timeout
            if request is None:
                request = request_cls(**fields)
            kwargs = {"timeout": deadline or self.timeout, "metadata": metadata}
            if with_call and not streaming:
                return rpc.with_call(request, **kwargs)
            return rpc(request, **kwargs)

        call.__name__ = method.name
        call.__doc__ = f"/runtime.v1.{service}/{method.name}"
        return call

    def raw(self, method_path, request_bytes, *, timeout=None, metadata=None,
            with_call=False, stream=False):
        """Call any method path with raw request bytes; returns raw bytes
        (an iterator of them with stream=True)."""
        make = self.channel.unary_stream if stream else self.channel.unary_unary
        rpc = make(method_path, request_serializer=_identity,
                   response_deserializer=_identity)
        kwargs = {"timeout": timeout or self.timeout, "metadata": metadata}
        if with_call and not stream:
            return rpc.with_call(request_bytes, **kwargs)
        return rpc(request_bytes, **kwargs)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Convenience for tests ------------------------------------------------

    def wait_ready(self, timeout=30):
        """Poll Version until the endpoint answers; re-raise the last error."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Long enough that a slow answer is not a call left behind.
                return self.Version(version="v1", timeout=10)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def pull(self, ref, auth=None, timeout=120, sandbox=None):
        """PullImage; `auth` is an optional (user, password), `sandbox` the
        PodSandboxConfig of the pod the image is for (as the kubelet sends it).
        Returns the image ref."""
        api = pb()
        kwargs = {"image": api.ImageSpec(image=ref)}
        if auth:
            kwargs["auth"] = api.AuthConfig(username=auth[0], password=auth[1])
        if sandbox is not None:
            kwargs["sandbox_config"] = sandbox
        return self.PullImage(timeout=timeout, **kwargs).image_ref

    def run_pod(self, config, runtime_handler="", timeout=120):
        return self.RunPodSandbox(config=config, runtime_handler=runtime_handler,
                                  timeout=timeout).pod_sandbox_id

    def start_container(self, pod_id, sandbox, config, timeout=60):
        """CreateContainer then StartContainer; returns the container ID."""
        cid = self.CreateContainer(pod_sandbox_id=pod_id, config=config,
                                   sandbox_config=sandbox, timeout=timeout).container_id
        self.StartContainer(container_id=cid, timeout=timeout)
        return cid

    def run_pod_with_container(self, image, command, args=(), name=None,
                               runtime_handler="", log_directory=None, pull=True,
                               sandbox_kwargs=None, container_kwargs=None):
        """Run a sandbox holding one started container.

        Returns a `Pod` with .pod_id, .container_id, .sandbox (the
        PodSandboxConfig) and .log_path (None without a log_directory).
        """
        name = name or "pod-" + uuid.uuid4().hex[:8]
        sandbox = sandbox_config(name, log_directory=log_directory,
                                 **(sandbox_kwargs or {}))
        pod_id = self.run_pod(sandbox, runtime_handler)
        if pull:  # after the sandbox and for it, in the kubelet's order
            try:
                self.pull(image, sandbox=sandbox)
            except grpc.RpcError:
                self.remove_pod(pod_id)
                raise
        log_path = "main.log" if log_directory else ""
        config = container_config("main", image, command, args, log_path=log_path,
                                  **(container_kwargs or {}))
        try:
            cid = self.start_container(pod_id, sandbox, config)
        except grpc.RpcError:
            self.remove_pod(pod_id)
            raise
        full_log = os.path.join(log_directory, log_path) if log_directory else None
        return Pod(pod_id, cid, sandbox, full_log)

    def remove_pod(self, pod_id, timeout=60):
        """StopPodSandbox + RemovePodSandbox, ignoring NOT_FOUND."""
        for rpc in (self.StopPodSandbox, self.RemovePodSandbox):
            try:
                rpc(pod_sandbox_id=pod_id, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    def remove_all_pods(self, timeout=60):
        """Stop and remove every sandbox the endpoint lists."""
        for item in self.ListPodSandbox(timeout=timeout).items:
            self.remove_pod(item.id, timeout)

    def wait_container_state(self, container_id, state, timeout=30):
        """Poll ContainerStatus until it reaches `state` (e.g. pb().CONTAINER_EXITED)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.ContainerStatus(container_id=container_id).status
            if status.state == state:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {container_id} stayed in state "
                                   f"{status.state}, wanted {state}")
            time.sleep(0.05)


class Pod:
    """What run_pod_with_container started."""

    def __init__(self, pod_id, container_id, sandbox, log_path):
        self.pod_id, self.container_id = pod_id, container_id
        self.sandbox, self.log_path = sandbox, log_path


def _service_proto(service_descriptor):
    """The ServiceDescriptorProto, which says which methods stream."""
    proto = descriptor_pb2.ServiceDescriptorProto()
    service_descriptor.CopyToProto(proto)
    return proto


def sandbox_config(name, namespace="default", uid=None, attempt=0, labels=None,
                   annotations=None, log_directory=None, hostname=None,
                   host_network=False, port_mappings=(), resources=None,
                   overhead=None, cgroup_parent=""):
    """A PodSandboxConfig.  `resources`/`overhead` are LinuxContainerResources
    (see linux_resources); `port_mappings` are (container_port, host_port) pairs."""
    api = pb()
    ns = api.NamespaceOption(network=api.NODE if host_network else api.POD)
    linux = api.LinuxPodSandboxConfig(
        cgroup_parent=cgroup_parent,
        security_context=api.LinuxSandboxSecurityContext(namespace_options=ns))
    if resources is not None:
        linux.resources.CopyFrom(resources)
    if overhead is not None:
        linux.overhead.CopyFrom(overhead)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=namespace,
                                        uid=uid or uuid.uuid4().hex, attempt=attempt),
        hostname=hostname if hostname is not None else name,
        log_directory=log_directory or "",
        labels=labels or {},
        annotations=annotations or {},
        port_mappings=[api.PortMapping(protocol=api.TCP, container_port=c, host_port=h,
                                       host_ip="127.0.0.1") for c, h in port_mappings],
        linux=linux)


def container_config(name, image, command=(), args=(), labels=None, annotations=None,
                     log_path="", envs=None, working_dir="", attempt=0, tty=False,
                     stdin=False, resources=None, run_as_user=None):
    """A ContainerConfig; `envs` is a dict, `run_as_user` a uid."""
    api = pb()
    linux = api.LinuxContainerConfig()
    if resources is not None:
        linux.resources.CopyFrom(resources)
    if run_as_user is not None:
        linux.security_context.run_as_user.value = run_as_user
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=attempt),
        image=api.ImageSpec(image=image),
        command=list(command), args=list(args), working_dir=working_dir,
        envs=[api.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
        labels=labels or {}, annotations=annotations or {},
        log_path=log_path, tty=tty, stdin=stdin, linux=linux)


def linux_resources(cpu_request_milli=None, cpu_limit_milli=None, memory_limit=None,
                    cpu_period=100000):
    """LinuxContainerResources the way the kubelet fills them from a pod spec."""
    res = pb().LinuxContainerResources()
    if cpu_request_milli is not None:
        res.cpu_shares = cpu_request_milli * 1024 // 1000
    if cpu_limit_milli is not None:
        res.cpu_period = cpu_period
        res.cpu_quota = cpu_limit_milli * cpu_period // 1000
    if memory_limit is not None:
        res.memory_limit_in_bytes = memory_limit
    return res
