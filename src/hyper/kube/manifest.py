"""Kubernetes Pod manifests parsed and checked into frozen dataclasses; pure.

`parse_manifests` turns the documents of a YAML file (yaml.safe_load_all)
into `PodManifest`s. Every field is either honoured, listed as having no
effect on one host (scheduling, service accounts: `IGNORED_SPEC`), or
refused by its path, e.g. `spec.initContainers: not supported`: a manifest
never runs with part of it silently dropped. Each error is one line that
names the field's path, as `spec.containers[1].image: required`.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hyper.errors import InvalidArgument
from hyper.kube.fields import Fields, fail, parse_quantity, shown
from hyper.runtime import resources

KUBE_LABEL = "hyper.kube"  # on a pod played from a manifest: its file's name
KUBE_POD_LABEL = "hyper.kube.pod"  # on its containers and emptyDir volumes: the pod's name
KUBE_VOLUME_LABEL = "hyper.kube.volume"  # on an emptyDir volume: the manifest's volume name

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
RESTART_POLICIES = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}
PULL_POLICIES = {"Always": "always", "IfNotPresent": "missing", "Never": "never"}
HOST_PATH_TYPES = ("", "Directory", "DirectoryOrCreate", "File", "FileOrCreate")
# A unix socket over 9p connects nowhere, and a VM gets no host devices.
_OTHER_HOST_PATH_TYPES = ("Socket", "CharDevice", "BlockDevice")
# Fields of a Pod's spec that mean nothing on one host with no cluster:
# where to schedule it, and its service account. Accepted and ignored.
IGNORED_SPEC = frozenset(
    {
        "nodeName",
        "nodeSelector",
        "affinity",
        "tolerations",
        "schedulerName",
        "priority",
        "priorityClassName",
        "preemptionPolicy",
        "topologySpreadConstraints",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "enableServiceLinks",
    }
)
_IGNORED_METADATA = frozenset(
    {
        "namespace",
        "annotations",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "managedFields",
        "selfLink",
    }
)
_IGNORED_CONTAINER = frozenset({"terminationMessagePath", "terminationMessagePolicy"})
_CAPABILITY = re.compile(r"^[A-Z_]+$")


@dataclass(frozen=True)
class Port:
    container_port: int
    protocol: str = "tcp"
    host_port: int | None = None  # None: not published (as Kubernetes and podman)
    host_ip: str | None = None

    def publish(self) -> str | None:
        """The pod's `-p` form, or None when it is not published."""
        if self.host_port is None:
            return None
        address = f"{self.host_ip}:" if self.host_ip else ""
        return f"{address}{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Resources:
    """Memory in bytes, CPU in millicores; None where the manifest says nothing."""

    memory_request: int | None = None
    memory_limit: int | None = None
    cpu_request: int | None = None
    cpu_limit: int | None = None


@dataclass(frozen=True)
class Security:
    """The securityContext fields Hyper honours (a container's own over its pod's)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    privileged: bool = False
    read_only_root: bool = False
    no_new_privileges: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    ports: tuple[Port, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    resources: Resources = Resources()
    pull_policy: str = "missing"  # hyper's --pull: missing, always, never
    security: Security = Security()


@dataclass(frozen=True)
class EmptyDir:
    name: str


@dataclass(frozen=True)
class HostPath:
    name: str
    path: str
    type: str = ""  # HOST_PATH_TYPES: "" checks nothing


Volume = EmptyDir | HostPath


@dataclass(frozen=True)
class PodManifest:
    name: str
    containers: tuple[Container, ...]
    volumes: tuple[Volume, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    restart_policy: str = "Always"
    hostname: str | None = None
    share_pid: bool = False
    grace_seconds: int | None = None


def parse_manifests(documents: Iterable[object]) -> tuple[PodManifest, ...]:
    """The Pods of a manifest file's documents (empty documents skipped); the
    first bad field raises InvalidArgument naming its path."""
    given = [doc for doc in documents if doc is not None]
    if not given:
        raise InvalidArgument("the manifest has no documents", hint="give a file with a kind: Pod")
    pods: list[PodManifest] = []
    for index, doc in enumerate(given):
        try:
            pod = parse_pod(doc)
        except InvalidArgument as exc:
            if len(given) > 1:
                exc.message = f"document {index + 1}: {exc.message}"
                exc.args = (exc.message,)
            raise
        if any(p.name == pod.name for p in pods):
            raise InvalidArgument(f"document {index + 1}: metadata.name: pod {pod.name} is given twice")
        pods.append(pod)
    return tuple(pods)


def parse_pod(doc: object) -> PodManifest:
    top = Fields(doc, "")
    kind = top.text("kind", required=True)
    if kind != "Pod":
        raise fail("kind", f"{shown(kind)} is not supported: hyper kube play runs Pods (kind: Pod)")
    version = top.text("apiVersion", required=True)
    if version != "v1":
        raise fail("apiVersion", f"{shown(version)} is not supported: a Pod is apiVersion v1")
    metadata = Fields(top.take("metadata"), "metadata")
    name = metadata.text("name", required=True) or ""
    if len(name) > 63 or not _POD_NAME.match(name):
        raise fail("metadata.name", f"{name!r} is not a valid pod name (lower-case letters, digits, - and .)")
    labels = _labels(metadata.take("labels"), "metadata.labels")
    metadata.done(_IGNORED_METADATA)
    spec = Fields(top.take("spec"), "spec")
    top.done(("status",))

    pod_security = _security(spec.take("securityContext"), "spec.securityContext", Security(), pod=True)
    volumes = _volumes(spec)
    container_items = spec.items("containers")
    if not container_items:
        raise fail("spec.containers", "required (at least one container)")
    containers = tuple(_container(item, path, pod_security) for path, item in container_items)
    _check_containers(containers, volumes)
    restart = spec.text("restartPolicy") or "Always"
    if restart not in RESTART_POLICIES:
        raise fail("spec.restartPolicy", f"{restart!r} is not one of Always, OnFailure, Never")
    hostname = spec.text("hostname")
    if hostname is not None and not _DNS_LABEL.match(hostname):
        raise fail("spec.hostname", f"{hostname!r} is not a valid host name")
    subdomain = spec.text("subdomain")
    if subdomain is not None:
        raise fail("spec.subdomain", "not supported (there is no cluster DNS)")
    grace = spec.integer("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        raise fail("spec.terminationGracePeriodSeconds", "must not be negative")
    share_pid = spec.flag("shareProcessNamespace")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        spec.refuse_true(key, "true is not supported: a pod's network and processes are its VM's own")
    dns_policy = spec.text("dnsPolicy")
    if dns_policy not in (None, "ClusterFirst", "Default"):
        raise fail("spec.dnsPolicy", f"{shown(dns_policy)} is not supported (ClusterFirst and Default are)")
    spec.refuse("imagePullSecrets", "not supported (hyper login stores registry credentials)")
    spec.done(IGNORED_SPEC)
    return PodManifest(
        name=name,
        containers=containers,
        volumes=volumes,
        labels=labels,
        restart_policy=restart,
        hostname=hostname,
        share_pid=share_pid,
        grace_seconds=grace,
    )


def _labels(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise fail(path, "must be a mapping")
    result = []
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise fail(f"{path}.{shown(key)}", "must be a string")
        result.append((str(key), str(item)))
    return tuple(result)


def _volumes(spec: Fields) -> tuple[Volume, ...]:
    volumes: list[Volume] = []
    for path, item in spec.items("volumes"):
        fields = Fields(item, path)
        name = fields.text("name", required=True) or ""
        if not _DNS_LABEL.match(name):
            raise fail(f"{path}.name", f"{name!r} is not a valid volume name (a DNS label)")
        if any(v.name == name for v in volumes):
            raise fail(f"{path}.name", f"volume {name} is given twice")
        volume: Volume
        if "emptyDir" in fields.values:
            empty = Fields(fields.take("emptyDir"), f"{path}.emptyDir")
            medium = empty.text("medium")
            if medium is not None:
                raise fail(f"{path}.emptyDir.medium", f"{shown(medium)} is not supported (the default is)")
            empty.refuse("sizeLimit", "not supported (an emptyDir is a volume of the pod, unbounded)")
            empty.done()
            volume = EmptyDir(name)
        elif "hostPath" in fields.values:
            host = Fields(fields.take("hostPath"), f"{path}.hostPath")
            host_path = host.text("path", required=True) or ""
            if not host_path.startswith("/"):
                raise fail(f"{path}.hostPath.path", f"{host_path!r} must be an absolute path")
            kind = host.text("type") or ""
            if kind in _OTHER_HOST_PATH_TYPES:
                raise fail(
                    f"{path}.hostPath.type",
                    f"{kind} is not supported (Directory, DirectoryOrCreate, File, FileOrCreate or none are)",
                )
            if kind not in HOST_PATH_TYPES:
                raise fail(f"{path}.hostPath.type", f"unknown type {kind!r}")
            host.done()
            volume = HostPath(name, posixpath.normpath(host_path), kind)
        else:
            kinds = sorted(shown(k) for k in fields.values)
            what = f"volume type {kinds[0]} is not supported" if kinds else "no volume type"
            raise fail(path, f"{what} (emptyDir and hostPath are)")
        fields.done()
        volumes.append(volume)
    return tuple(volumes)


def _container(item: object, path: str, pod_security: Security) -> Container:
    fields = Fields(item, path)
    name = fields.text("name", required=True) or ""
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise fail(f"{path}.name", f"{name!r} is not a valid container name (a DNS label)")
    image = fields.text("image", required=True) or ""
    working_dir = fields.text("workingDir")
    if working_dir is not None and not working_dir.startswith("/"):
        raise fail(f"{path}.workingDir", f"{working_dir!r} must be an absolute path")
    pull = fields.text("imagePullPolicy") or "IfNotPresent"
    if pull not in PULL_POLICIES:
        raise fail(f"{path}.imagePullPolicy", f"{pull!r} is not one of Always, IfNotPresent, Never")
    env = _env(fields)
    for key in ("stdin", "stdinOnce", "tty"):
        fields.refuse_true(key, "not supported (hyper attach and exec -it reach a running container)")
    for key, why in (
        ("envFrom", "not supported (there are no ConfigMaps or Secrets; give env)"),
        ("livenessProbe", "not supported"),
        ("readinessProbe", "not supported"),
        ("startupProbe", "not supported"),
        ("lifecycle", "not supported"),
        ("restartPolicy", "not supported (the pod's restartPolicy applies to every container)"),
    ):
        fields.refuse(key, why)
    container = Container(
        name=name,
        image=image,
        command=fields.strings("command"),
        args=fields.strings("args"),
        env=env,
        working_dir=working_dir,
        ports=_ports(fields),
        volume_mounts=_mounts(fields),
        resources=_resources(fields.take("resources"), f"{path}.resources"),
        pull_policy=PULL_POLICIES[pull],
        security=_security(fields.take("securityContext"), f"{path}.securityContext", pod_security),
    )
    fields.done(_IGNORED_CONTAINER)
    return container


def _env(fields: Fields) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for path, item in fields.items("env"):
        var = Fields(item, path)
        name = var.text("name", required=True) or ""
        if "=" in name:
            raise fail(f"{path}.name", f"{name!r} must not contain =")
        var.refuse("valueFrom", "not supported (there are no ConfigMaps, Secrets or field references)")
        value = var.take("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise fail(f"{path}.value", "must be a string")
        var.done()
        # Kubernetes: $(NAME) in a value is an earlier variable's value; the last of a name wins.
        env.pop(name, None)
        env[name] = expand("" if value is None else str(value), env)
    return tuple(env.items())


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(NAME)` in command, args and env values: NAME's value when
    the container's env defines it, else left as written; `$$` is one `$`."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _ports(fields: Fields) -> tuple[Port, ...]:
    ports = []
    for path, item in fields.items("ports"):
        port = Fields(item, path)
        number = port.integer("containerPort")
        if number is None:
            raise fail(f"{path}.containerPort", "required")
        if not 1 <= number <= 65535:
            raise fail(f"{path}.containerPort", f"{number} is not a port (1-65535)")
        host_port = port.integer("hostPort") or None
        if host_port is not None and not 1 <= host_port <= 65535:
            raise fail(f"{path}.hostPort", f"{host_port} is not a port (1-65535)")
        protocol = port.text("protocol") or "TCP"
        if protocol not in ("TCP", "UDP"):
            raise fail(f"{path}.protocol", f"{shown(protocol)} is not supported (TCP and UDP are)")
        host_ip = port.text("hostIP")
        port.take("name")  # a name for Services, which there are none of
        port.done()
        ports.append(Port(number, protocol.lower(), host_port, host_ip))
    return tuple(ports)


def _mounts(fields: Fields) -> tuple[VolumeMount, ...]:
    mounts: list[VolumeMount] = []
    for path, item in fields.items("volumeMounts"):
        mount = Fields(item, path)
        name = mount.text("name", required=True) or ""
        target = mount.text("mountPath", required=True) or ""
        if not target.startswith("/"):
            raise fail(f"{path}.mountPath", f"{target!r} must be an absolute path")
        normal = posixpath.normpath(target)
        if normal in ("/", "/proc", "/sys") or normal.startswith(("/proc/", "/sys/")):
            raise fail(f"{path}.mountPath", f"{shown(target)} cannot be mounted over")
        if any(m.mount_path == normal for m in mounts):
            raise fail(f"{path}.mountPath", f"{shown(target)} is mounted twice")
        read_only = mount.flag("readOnly")
        if mount.text("mountPropagation") not in (None, "None"):
            raise fail(f"{path}.mountPropagation", "not supported: mounts do not propagate into a VM")
        mount.refuse("subPath", "not supported (mount the volume's directory)")
        mount.refuse("subPathExpr", "not supported (mount the volume's directory)")
        mount.done(("recursiveReadOnly",) if mount.values.get("recursiveReadOnly") == "Disabled" else ())
        mounts.append(VolumeMount(name, normal, read_only))
    return tuple(mounts)


def _resources(value: object, path: str) -> Resources:
    fields = Fields(value, path)
    found: dict[str, int | None] = {}
    for kind in ("requests", "limits"):
        amounts = Fields(fields.take(kind), f"{path}.{kind}")
        memory = amounts.take("memory")
        cpu = amounts.take("cpu")
        found[f"memory_{kind}"] = (
            None if memory is None else math.ceil(parse_quantity(memory, amounts.at("memory")))
        )
        found[f"cpu_{kind}"] = (
            None if cpu is None else math.ceil(parse_quantity(cpu, amounts.at("cpu")) * 1000)
        )
        amounts.done()
    fields.done()
    result = Resources(
        memory_request=found["memory_requests"],
        memory_limit=found["memory_limits"],
        cpu_request=found["cpu_requests"],
        cpu_limit=found["cpu_limits"],
    )
    least = resources.MIN_CONTAINER_MEMORY_MIB << 20
    if result.memory_limit is not None and result.memory_limit < least:
        raise fail(
            f"{path}.limits.memory",
            f"{result.memory_limit} bytes is below the least a container may have"
            f" ({resources.MIN_CONTAINER_MEMORY_MIB}Mi)",
        )
    if result.cpu_limit == 0:
        raise fail(f"{path}.limits.cpu", "must be more than 0")
    for kind in ("memory", "cpu"):
        request, limit = getattr(result, f"{kind}_request"), getattr(result, f"{kind}_limit")
        if request is not None and limit is not None and request > limit:
            raise fail(f"{path}.requests.{kind}", f"must be no more than limits.{kind}")
    return result


def _security(value: object, path: str, inherited: Security, *, pod: bool = False) -> Security:
    fields = Fields(value, path)
    user = fields.integer("runAsUser")
    group = fields.integer("runAsGroup")
    for key, number in (("runAsUser", user), ("runAsGroup", group)):
        if number is not None and number < 0:
            raise fail(f"{path}.{key}", "must not be negative")
    if pod:
        fields.done()
        return Security(run_as_user=user, run_as_group=group)
    privileged = fields.flag("privileged")
    read_only = fields.flag("readOnlyRootFilesystem")
    escalation = fields.take("allowPrivilegeEscalation")
    if escalation is not None and not isinstance(escalation, bool):
        raise fail(f"{path}.allowPrivilegeEscalation", "must be true or false")
    caps = Fields(fields.take("capabilities"), f"{path}.capabilities")
    add, drop = caps.strings("add"), caps.strings("drop")
    for key, names in (("add", add), ("drop", drop)):
        for name in names:
            if not _CAPABILITY.match(name):
                raise fail(
                    f"{path}.capabilities.{key}", f"{name!r} is not a capability name (such as NET_ADMIN)"
                )
    caps.done()
    fields.done()
    user = inherited.run_as_user if user is None else user
    group = inherited.run_as_group if group is None else group
    if group is not None and user is None:
        raise fail(f"{path}.runAsGroup", "needs runAsUser (here or in spec.securityContext)")
    return Security(
        run_as_user=user,
        run_as_group=group,
        privileged=privileged,
        read_only_root=read_only,
        no_new_privileges=escalation is False,
        cap_add=add,
        cap_drop=drop,
    )


def _check_containers(containers: tuple[Container, ...], volumes: tuple[Volume, ...]) -> None:
    """What no container alone can get wrong: names, ports and volumes of the pod."""
    names = {v.name for v in volumes}
    ports: dict[tuple[int, str], str] = {}
    host_ports: dict[tuple[str, int, str], str] = {}
    for i, container in enumerate(containers):
        path = f"spec.containers[{i}]"
        if any(c.name == container.name for c in containers[:i]):
            raise fail(f"{path}.name", f"container {container.name} is given twice")
        for j, port in enumerate(container.ports):
            key = (port.container_port, port.protocol)
            if key in ports:
                raise fail(
                    f"{path}.ports[{j}].containerPort",
                    f"{port.container_port}/{port.protocol.upper()} is already used by container {ports[key]}"
                    " (a pod's containers share one network)",
                )
            ports[key] = container.name
            if port.host_port is not None:
                host = (port.host_ip or "", port.host_port, port.protocol)
                if host in host_ports:
                    raise fail(
                        f"{path}.ports[{j}].hostPort",
                        f"{port.host_port}/{port.protocol.upper()} is already published by container"
                        f" {host_ports[host]}",
                    )
                host_ports[host] = container.name
        for j, mount in enumerate(container.volume_mounts):
            if mount.name not in names:
                raise fail(
                    f"{path}.volumeMounts[{j}].name", f"no volume named {mount.name!r} in spec.volumes"
                )
