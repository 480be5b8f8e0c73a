"""Pure translations between CRI messages and Hyper's own requests and records.

A sandbox becomes a hyperd pod (one VM: its hostname, DNS, ports and size)
and each of its containers a member of that pod (command, env, mounts,
security context, limits). What
a VM cannot do (the host's network, PID or IPC namespace) is refused here with
the reason, as Kata refuses it.
"""

from __future__ import annotations

import datetime
import math
import posixpath
import re
from collections.abc import Mapping, Sequence

from cri_api.v1 import api_pb2

from hyper.cri.records import Metadata, PortMapping, SandboxRecord
from hyper.daemon.named_pods import PodOptions
from hyper.daemon.requests import CreateRequest
from hyper.errors import InvalidArgument
from hyper.runtime import seccomp, security
from hyper.runtime import spec as specs
from hyper.runtime.settings import Settings

MIB = 1 << 20
SANDBOX_LABEL = "io.hyper.cri.sandbox"  # on hyperd's pods and containers: which sandbox
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
_VM_HAS_ITS_OWN = "a Hyper pod is a virtual machine with a kernel of its own"


def metadata(value: api_pb2.PodSandboxMetadata | api_pb2.ContainerMetadata) -> Metadata:
    if not value.name:
        raise InvalidArgument("the metadata needs a name", hint="set metadata.name")
    if isinstance(value, api_pb2.PodSandboxMetadata):
        return Metadata(value.name, value.namespace, value.uid, value.attempt)
    return Metadata(value.name, attempt=value.attempt)


def refuse_host_namespaces(options: api_pb2.NamespaceOption, what: str) -> None:
    """The host's network, PID or IPC namespace cannot reach into a VM."""
    for kind, mode in (("network", options.network), ("PID", options.pid), ("IPC", options.ipc)):
        if mode == api_pb2.NODE:
            raise InvalidArgument(
                f"{what} asks for the host's {kind} namespace, and {_VM_HAS_ITS_OWN}",
                hint=f"run it without host{kind.capitalize() if kind != 'PID' else 'PID'}, "
                "or with a runtime class that uses the host's kernel",
            )
        if mode == api_pb2.TARGET:
            raise InvalidArgument(
                f"{what} asks to share another container's {kind} namespace, which Hyper cannot do"
            )
    if options.HasField("userns_options") and options.userns_options.mode == api_pb2.POD:
        raise InvalidArgument(f"{what} asks for a user namespace, which Hyper does not set up yet")


def _sysctls(sysctls: Mapping[str, str]) -> tuple[str, ...]:
    """The pod's sysctls, checked now (runc's namespaced ones only): its VM's kernel is the pod's own."""
    texts = tuple(f"{name}={value}" for name, value in sorted(sysctls.items()))
    security.parse_sysctls(texts)
    return texts


def _memory_and_cpus(resources: api_pb2.LinuxContainerResources) -> tuple[int, int]:
    cpu_millis = (
        resources.cpu_quota * 1000 // resources.cpu_period
        if resources.cpu_quota > 0 and resources.cpu_period > 0
        else 0
    )
    return resources.memory_limit_in_bytes, cpu_millis


def sandbox_record(request: api_pb2.RunPodSandboxRequest, sandbox_id: str, now_ns: int) -> SandboxRecord:
    config = request.config
    linux = config.linux
    refuse_host_namespaces(linux.security_context.namespace_options, "the pod")
    sysctls = _sysctls(linux.sysctls)
    ports = []
    for port in config.port_mappings:
        if not 0 < port.container_port < 65536 or not 0 <= port.host_port < 65536:
            raise InvalidArgument(f"port mapping {port.host_port}:{port.container_port} is out of range")
        ports.append(
            PortMapping(
                _PROTOCOLS.get(port.protocol, "tcp"), port.container_port, port.host_port, port.host_ip
            )
        )
    memory, cpus = _memory_and_cpus(linux.resources)
    overhead_memory, overhead_cpus = _memory_and_cpus(linux.overhead)
    if config.log_directory and not config.log_directory.startswith("/"):
        raise InvalidArgument(f"log_directory {config.log_directory!r} is not an absolute path")
    return SandboxRecord(
        id=sandbox_id,
        metadata=metadata(config.metadata),
        created_at=now_ns,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns_servers=tuple(config.dns_config.servers),
        dns_searches=tuple(config.dns_config.searches),
        dns_options=tuple(config.dns_config.options),
        port_mappings=tuple(ports),
        runtime_handler=request.runtime_handler,
        memory_limit_bytes=memory + overhead_memory if memory else 0,
        cpu_millis=cpus + overhead_cpus if cpus else 0,
        sysctls=sysctls,
    )


def pod_options(sandbox: SandboxRecord, cni: bool) -> PodOptions:
    """The hyperd pod a sandbox is: its hostname and size, and its network, unless
    its VM joins the namespace CNI made (then hyperd's own network stays out)."""
    publish = tuple(
        f"{p.host_ip + ':' if p.host_ip else ''}{p.host_port}:{p.container_port}/{p.protocol}"
        for p in sandbox.port_mappings
        if p.host_port
    )
    memory = sandbox.memory_limit_bytes
    return PodOptions(
        hostname=sandbox.hostname or None,
        memory_mib=max(math.ceil(memory / MIB), specs.MIN_MEMORY_MIB) if memory else None,
        cpus=max(1, math.ceil(sandbox.cpu_millis / 1000)) if sandbox.cpu_millis else None,
        network="none" if cni else "",
        publish=() if cni else publish,
        dns=() if cni else sandbox.dns_servers,
        dns_search=() if cni else sandbox.dns_searches,
        dns_options=() if cni else sandbox.dns_options,
    )


def pod_name(metadata: Metadata) -> str | None:
    """The hyperd pod's name, as dockershim named a pod's infra container, or None
    (hyperd uses the ID) where Kubernetes' names do not fit hyperd's rules."""
    name = f"k8s_{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"
    return name if len(name) <= 128 and _NAME.fullmatch(name) else None


def hyperd_name(sandbox: SandboxRecord, container: Metadata) -> str | None:
    """The hyperd container's name, as dockershim named Kubernetes' containers, or
    None (hyperd picks one) where Kubernetes' names do not fit hyperd's rules."""
    pod = sandbox.metadata
    name = f"k8s_{container.name}_{pod.name}_{pod.namespace}_{pod.uid}_{container.attempt}"
    return name if len(name) <= 128 and _NAME.fullmatch(name) else None


def _user(context: api_pb2.LinuxContainerSecurityContext) -> str | None:
    if context.HasField("run_as_user"):
        user = str(context.run_as_user.value)
    elif context.run_as_username:
        user = context.run_as_username
    elif context.HasField("run_as_group"):
        raise InvalidArgument("run_as_group needs run_as_user or run_as_username", hint="set the user too")
    else:
        return None
    return f"{user}:{context.run_as_group.value}" if context.HasField("run_as_group") else user


def _security_options(context: api_pb2.LinuxContainerSecurityContext) -> tuple[str, ...]:
    options = []
    if context.no_new_privs:
        options.append("no-new-privileges")
    profile = context.seccomp
    if profile.profile_type == api_pb2.SecurityProfile.Unconfined:
        options.append("seccomp=unconfined")
    elif profile.profile_type == api_pb2.SecurityProfile.Localhost:
        options.append("seccomp=" + localhost_profile(profile.localhost_ref))
    elif not profile.profile_type and context.seccomp_profile_path == "unconfined":
        options.append("seccomp=unconfined")
    elif not profile.profile_type and context.seccomp_profile_path.startswith("localhost/"):
        # The deprecated field's form of a Localhost profile.
        options.append(
            "seccomp=" + localhost_profile(context.seccomp_profile_path.removeprefix("localhost/"))
        )
    return tuple(options)


def localhost_profile(path: str) -> str:
    """A Localhost seccomp profile's JSON text, read from the host (the one
    effect of this module: the kubelet names a file on the node) and checked
    now, so that a bad profile fails CreateContainer naming the file."""
    if not path.startswith("/"):
        raise InvalidArgument(
            f"the Localhost seccomp profile {path!r} is not an absolute path",
            hint="set localhost_ref to the profile's absolute path on the node",
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidArgument(
            f"cannot read the Localhost seccomp profile {path}: {reason}",
            hint="put the profile's JSON on the node at that path",
        ) from exc
    try:
        parsed = seccomp.parse_profile(text)
        if parsed is not None:
            seccomp.compile_profile(parsed, security.DEFAULT_CAPABILITIES, specs.DEFAULT_GUEST_KERNEL)
    except InvalidArgument as exc:
        raise InvalidArgument(f"the Localhost seccomp profile {path}: {exc.message}", hint=exc.hint) from exc
    return text  # a JSON object: parse_security_opts takes its text, as Docker's CLI sends it


def _mounts(config: api_pb2.ContainerConfig) -> tuple[str, ...]:
    mounts = []
    for mount in config.mounts:
        if not mount.container_path.startswith("/") or not mount.host_path.startswith("/"):
            raise InvalidArgument(f"mount {mount.host_path}:{mount.container_path} needs absolute paths")
        if mount.propagation != api_pb2.PROPAGATION_PRIVATE:
            raise InvalidArgument(
                f"mount {mount.container_path} asks for mount propagation; mounts do not propagate into a VM",
                hint="use private propagation",
            )
        if "," in mount.host_path or "," in mount.container_path:
            raise InvalidArgument(
                f"mount {mount.host_path}:{mount.container_path}: a path with ',' is not supported"
            )
        mounts.append(
            f"type=bind,source={mount.host_path},target={mount.container_path}"
            + (",readonly" if mount.readonly else "")
        )
    return tuple(mounts)


def create_request(
    sandbox: SandboxRecord, config: api_pb2.ContainerConfig, image: str, settings: Settings
) -> CreateRequest:
    """The hyperd container that runs `config` in `sandbox`'s VM."""
    if config.devices:
        raise InvalidArgument(
            "devices are not passed into a Hyper VM yet", hint="run the container without devices"
        )
    linux = config.linux
    context = linux.security_context
    refuse_host_namespaces(context.namespace_options, "the container")
    memory, cpu_millis = _memory_and_cpus(linux.resources)
    memory_mib = max(math.ceil(memory / MIB), specs.MIN_MEMORY_MIB) if memory else settings.default_memory_mib
    command, args = tuple(config.command), tuple(config.args)
    workdir = config.working_dir or None
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidArgument(f"working_dir {workdir!r} is not an absolute path")
    options = specs.RunOptions(
        image=image,
        # Kubernetes' command replaces the image's entrypoint (and drops its CMD); args replace CMD.
        entrypoint="" if command else None,
        command=command + args,
        env=tuple(f"{kv.key}={kv.value}" for kv in config.envs),
        workdir=workdir,
        user=_user(context),
        tty=config.tty,
        interactive=config.stdin,
        memory_mib=memory_mib,
        nano_cpus=cpu_millis * 1_000_000,
        cpuset_cpus=linux.resources.cpuset_cpus,
        name=None,
        pod=sandbox.id,  # a member of the sandbox's hyperd pod: its VM, network and hostname
        cap_add=tuple(_capability(c) for c in context.capabilities.add_capabilities),
        cap_drop=tuple(_capability(c) for c in context.capabilities.drop_capabilities),
        privileged=context.privileged,
        security_opt=_security_options(context),
        read_only=context.readonly_rootfs,
        mounts=_mounts(config),
        group_add=tuple(str(group) for group in context.supplemental_groups),
        sysctls=sandbox.sysctls,
        # The kubelet sends runc's defaults; a request without them keeps the
        # agent's (a privileged container has none either way).
        masked_paths=_paths(context.masked_paths, "masked_paths"),
        readonly_paths=_paths(context.readonly_paths, "readonly_paths"),
    )
    return CreateRequest(options=options, labels={SANDBOX_LABEL: sandbox.id}, stdin_once=config.stdin_once)


def _paths(paths: Sequence[str], what: str) -> tuple[str, ...] | None:
    """A CRI path list, checked; None (the agent's runc defaults) when empty:
    proto3 cannot tell an empty list from none, and containerd reads it so too."""
    if not paths:
        return None
    return security.check_paths(paths, what)


def _capability(name: str) -> str:
    return name if name.upper() == "ALL" else name.upper().removeprefix("CAP_")


def log_path(sandbox: SandboxRecord, config: api_pb2.ContainerConfig) -> str:
    if not config.log_path:
        return ""
    if config.log_path.startswith("/") or not sandbox.log_directory:
        raise InvalidArgument(
            f"log_path {config.log_path!r} must be relative to the pod's log_directory",
            hint="set log_directory on the pod sandbox and a relative log_path on the container",
        )
    joined = posixpath.normpath(posixpath.join(sandbox.log_directory, config.log_path))
    if not joined.startswith(sandbox.log_directory.rstrip("/") + "/"):
        raise InvalidArgument(f"log_path {config.log_path!r} leaves the pod's log directory")
    return joined


def container_state(state: specs.ContainerState | None) -> api_pb2.ContainerState.ValueType:
    if state is None:
        return api_pb2.CONTAINER_UNKNOWN
    return {
        specs.ContainerState.CREATED: api_pb2.CONTAINER_CREATED,
        specs.ContainerState.RUNNING: api_pb2.CONTAINER_RUNNING,
        specs.ContainerState.PAUSED: api_pb2.CONTAINER_RUNNING,
        specs.ContainerState.RESTARTING: api_pb2.CONTAINER_EXITED,
        specs.ContainerState.EXITED: api_pb2.CONTAINER_EXITED,
    }.get(state, api_pb2.CONTAINER_UNKNOWN)


def exit_reason(exit_code: int, oom_killed: bool) -> str:
    """Kubernetes' reasons for a finished container."""
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def cri_metadata(value: Metadata) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=value.name, attempt=value.attempt)


def sandbox_metadata(value: Metadata) -> api_pb2.PodSandboxMetadata:
    return api_pb2.PodSandboxMetadata(
        name=value.name, namespace=value.namespace, uid=value.uid, attempt=value.attempt
    )


def exec_process(
    main: Mapping[str, object], cmd: list[str], *, tty: bool = False, stdin: bool = False
) -> specs.ProcessSpec:
    """A command run in a container (ExecSync, Exec) with its main process's
    environment, working directory and user (`main`: hyperd's record of it)."""
    env = main.get("env")
    return specs.ProcessSpec(
        args=tuple(cmd),
        env=tuple(str(e) for e in env) if isinstance(env, list) else (),
        cwd=str(main.get("cwd") or "/"),
        user=str(main.get("user") or "0"),
        tty=tty,
        stdin=stdin,
    )


def labels_match(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def cri_log_lines(stream: str, when: float, data: bytes) -> bytes:
    """Output in the CRI log format the kubelet reads: `<RFC3339Nano> <stream> <F|P> <text>`
    per line; a chunk that ends without a newline is a partial line (P)."""
    whole = math.floor(when)  # the fraction alone: `when * 1e9` loses the nanoseconds to rounding
    carry, nanoseconds = divmod(round((when - whole) * 1e9), 10**9)
    seconds = whole + carry
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    stamp += f".{nanoseconds:09d}Z"
    out = []
    for line in data.splitlines(keepends=True):
        if line.endswith(b"\n"):
            out.append(b"%s %s F %s" % (stamp.encode(), stream.encode(), line))
        else:
            out.append(b"%s %s P %s\n" % (stamp.encode(), stream.encode(), line))
    return b"".join(out)
