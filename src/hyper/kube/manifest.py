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
from fractions import Fraction

from hyper.errors import InvalidArgument
from hyper.runtime import resources

KUBE_LABEL = "hyper.kube"  # on a pod played from a manifest: its file's name
KUBE_POD_LABEL = "hyper.kube.pod"  # on its containers and emptyDir volumes: the pod's name
KUBE_VOLUME_LABEL = "hyper.kube.volume"  # on an emptyDir volume: the manifest's volume name

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_QUANTITY = re.compile(
    r"^(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$"
)
_SUFFIXES = {
    None: Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(1 << 10),
    "Mi": Fraction(1 << 20),
    "Gi": Fraction(1 << 30),
    "Ti": Fraction(1 << 40),
    "Pi": Fraction(1 << 50),
    "Ei": Fraction(1 << 60),
}
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


def _fail(path: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{path}: {what}", hint="see docs/kube.md for what hyper kube play takes")


class _Fields:
    """One mapping of the manifest at `path`: its fields taken one by one, so
    that whatever is left over can be refused by name."""

    def __init__(self, value: object, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise (
                _fail(path, "must be a mapping")
                if path
                else InvalidArgument("the document must be a mapping")
            )
        self.values: dict[object, object] = dict(value)
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str) -> object:
        return self.values.pop(key, None)

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.take(key)
        if value is None or value == "":
            if required:
                raise _fail(self.at(key), "required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _fail(self.at(key), "must be a string")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.take(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _fail(self.at(key), "must be true or false")
        return value

    def integer(self, key: str) -> int | None:
        value = self.take(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(self.at(key), "must be an integer")
        return value

    def items(self, key: str) -> list[tuple[str, object]]:
        """A list field: (path of each item, item)."""
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _fail(self.at(key), "must be a list")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, key: str) -> tuple[str, ...]:
        result = []
        for path, item in self.items(key):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise _fail(path, "must be a string")
            result.append(str(item))
        return tuple(result)

    def refuse(self, key: str, why: str) -> None:
        if key in self.values:
            raise _fail(self.at(key), why)

    def refuse_true(self, key: str, why: str) -> None:
        if self.flag(key):
            raise _fail(self.at(key), why)

    def done(self, ignored: Iterable[str] = ()) -> None:
        """Refuse the fields nobody took (those `ignored` excepted), the first by name."""
        for key in ignored:
            self.values.pop(key, None)
        for name, value in self.values.items():
            if value in (None, [], {}):  # an empty field asks for nothing
                continue
            raise _fail(self.at(str(name)), "not supported")


def parse_quantity(text: object, path: str) -> Fraction:
    """A Kubernetes quantity (`500m`, `1`, `1.5`, `128Mi`, `1G`, `1e3`), exactly."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise _fail(path, f"{text!r} is not a quantity")
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise _fail(path, f"{text!r} is not a quantity (such as 500m, 2, 128Mi or 1G)")
    value = Fraction(match.group("number"))
    if match.group("exponent"):
        value *= Fraction(10) ** int(match.group("exponent")[1:])
    return value * _SUFFIXES[match.group("suffix")]


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
    top = _Fields(doc, "")
    kind = top.text("kind", required=True)
    if kind != "Pod":
        raise _fail("kind", f"{kind} is not supported: hyper kube play runs Pods (kind: Pod)")
    version = top.text("apiVersion", required=True)
    if version != "v1":
        raise _fail("apiVersion", f"{version} is not supported: a Pod is apiVersion v1")
    metadata = _Fields(top.take("metadata"), "metadata")
    name = metadata.text("name", required=True) or ""
    if len(name) > 63 or not _POD_NAME.match(name):
        raise _fail(
            "metadata.name", f"{name!r} is not a valid pod name (lower-case letters, digits, - and .)"
        )
    labels = _labels(metadata.take("labels"), "metadata.labels")
    metadata.done(_IGNORED_METADATA)
    spec = _Fields(top.take("spec"), "spec")
    top.done(("status",))

    pod_security = _security(spec.take("securityContext"), "spec.securityContext", Security(), pod=True)
    volumes = _volumes(spec)
    container_items = spec.items("containers")
    if not container_items:
        raise _fail("spec.containers", "required (at least one container)")
    containers = tuple(_container(item, path, pod_security) for path, item in container_items)
    _check_containers(containers, volumes)
    restart = spec.text("restartPolicy") or "Always"
    if restart not in RESTART_POLICIES:
        raise _fail("spec.restartPolicy", f"{restart!r} is not one of Always, OnFailure, Never")
    hostname = spec.text("hostname")
    if hostname is not None and not _DNS_LABEL.match(hostname):
        raise _fail("spec.hostname", f"{hostname!r} is not a valid host name")
    subdomain = spec.text("subdomain")
    if subdomain is not None:
        raise _fail("spec.subdomain", "not supported (there is no cluster DNS)")
    grace = spec.integer("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        raise _fail("spec.terminationGracePeriodSeconds", "must not be negative")
    share_pid = spec.flag("shareProcessNamespace")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        spec.refuse_true(key, "true is not supported: a pod's network and processes are its VM's own")
    dns_policy = spec.text("dnsPolicy")
    if dns_policy not in (None, "ClusterFirst", "Default"):
        raise _fail("spec.dnsPolicy", f"{dns_policy} is not supported (ClusterFirst and Default are)")
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
        raise _fail(path, "must be a mapping")
    result = []
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _fail(f"{path}.{key}", "must be a string")
        result.append((str(key), str(item)))
    return tuple(result)


def _volumes(spec: _Fields) -> tuple[Volume, ...]:
    volumes: list[Volume] = []
    for path, item in spec.items("volumes"):
        fields = _Fields(item, path)
        name = fields.text("name", required=True) or ""
        if not _DNS_LABEL.match(name):
            raise _fail(f"{path}.name", f"{name!r} is not a valid volume name (a DNS label)")
        if any(v.name == name for v in volumes):
            raise _fail(f"{path}.name", f"volume {name} is given twice")
        volume: Volume
        if "emptyDir" in fields.values:
            empty = _Fields(fields.take("emptyDir"), f"{path}.emptyDir")
            medium = empty.text("medium")
            if medium is not None:
                raise _fail(f"{path}.emptyDir.medium", f"{medium} is not supported (the default disk is)")
            empty.refuse("sizeLimit", "not supported (an emptyDir is a volume of the pod, unbounded)")
            empty.done()
            volume = EmptyDir(name)
        elif "hostPath" in fields.values:
            host = _Fields(fields.take("hostPath"), f"{path}.hostPath")
            host_path = host.text("path", required=True) or ""
            if not host_path.startswith("/"):
                raise _fail(f"{path}.hostPath.path", f"{host_path!r} must be an absolute path")
            kind = host.text("type") or ""
            if kind in _OTHER_HOST_PATH_TYPES:
                raise _fail(
                    f"{path}.hostPath.type",
                    f"{kind} is not supported (Directory, DirectoryOrCreate, File, FileOrCreate or none are)",
                )
            if kind not in HOST_PATH_TYPES:
                raise _fail(f"{path}.hostPath.type", f"unknown type {kind!r}")
            host.done()
            volume = HostPath(name, posixpath.normpath(host_path), kind)
        else:
            kinds = sorted(str(k) for k in fields.values)
            what = f"volume type {kinds[0]} is not supported" if kinds else "no volume type"
            raise _fail(path, f"{what} (emptyDir and hostPath are)")
        fields.done()
        volumes.append(volume)
    return tuple(volumes)


def _container(item: object, path: str, pod_security: Security) -> Container:
    fields = _Fields(item, path)
    name = fields.text("name", required=True) or ""
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise _fail(f"{path}.name", f"{name!r} is not a valid container name (a DNS label)")
    image = fields.text("image", required=True) or ""
    working_dir = fields.text("workingDir")
    if working_dir is not None and not working_dir.startswith("/"):
        raise _fail(f"{path}.workingDir", f"{working_dir!r} must be an absolute path")
    pull = fields.text("imagePullPolicy") or "IfNotPresent"
    if pull not in PULL_POLICIES:
        raise _fail(f"{path}.imagePullPolicy", f"{pull!r} is not one of Always, IfNotPresent, Never")
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


def _env(fields: _Fields) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for path, item in fields.items("env"):
        var = _Fields(item, path)
        name = var.text("name", required=True) or ""
        if "=" in name:
            raise _fail(f"{path}.name", f"{name!r} must not contain =")
        var.refuse("valueFrom", "not supported (there are no ConfigMaps, Secrets or field references)")
        value = var.take("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise _fail(f"{path}.value", "must be a string")
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


def _ports(fields: _Fields) -> tuple[Port, ...]:
    ports = []
    for path, item in fields.items("ports"):
        port = _Fields(item, path)
        number = port.integer("containerPort")
        if number is None:
            raise _fail(f"{path}.containerPort", "required")
        if not 1 <= number <= 65535:
            raise _fail(f"{path}.containerPort", f"{number} is not a port (1-65535)")
        host_port = port.integer("hostPort") or None
        if host_port is not None and not 1 <= host_port <= 65535:
            raise _fail(f"{path}.hostPort", f"{host_port} is not a port (1-65535)")
        protocol = port.text("protocol") or "TCP"
        if protocol not in ("TCP", "UDP"):
            raise _fail(f"{path}.protocol", f"{protocol} is not supported (TCP and UDP are)")
        host_ip = port.text("hostIP")
        port.take("name")  # a name for Services, which there are none of
        port.done()
        ports.append(Port(number, protocol.lower(), host_port, host_ip))
    return tuple(ports)


def _mounts(fields: _Fields) -> tuple[VolumeMount, ...]:
    mounts: list[VolumeMount] = []
    for path, item in fields.items("volumeMounts"):
        mount = _Fields(item, path)
        name = mount.text("name", required=True) or ""
        target = mount.text("mountPath", required=True) or ""
        if not target.startswith("/"):
            raise _fail(f"{path}.mountPath", f"{target!r} must be an absolute path")
        normal = posixpath.normpath(target)
        if normal in ("/", "/proc", "/sys") or normal.startswith(("/proc/", "/sys/")):
            raise _fail(f"{path}.mountPath", f"{target} cannot be mounted over")
        if any(m.mount_path == normal for m in mounts):
            raise _fail(f"{path}.mountPath", f"{target} is mounted twice")
        read_only = mount.flag("readOnly")
        if mount.text("mountPropagation") not in (None, "None"):
            raise _fail(f"{path}.mountPropagation", "not supported: mounts do not propagate into a VM")
        mount.refuse("subPath", "not supported (mount the volume's directory)")
        mount.refuse("subPathExpr", "not supported (mount the volume's directory)")
        mount.done(("recursiveReadOnly",) if mount.values.get("recursiveReadOnly") == "Disabled" else ())
        mounts.append(VolumeMount(name, normal, read_only))
    return tuple(mounts)


def _resources(value: object, path: str) -> Resources:
    fields = _Fields(value, path)
    found: dict[str, int | None] = {}
    for kind in ("requests", "limits"):
        amounts = _Fields(fields.take(kind), f"{path}.{kind}")
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
        raise _fail(
            f"{path}.limits.memory",
            f"{result.memory_limit} bytes is below the least a container may have"
            f" ({resources.MIN_CONTAINER_MEMORY_MIB}Mi)",
        )
    if result.cpu_limit == 0:
        raise _fail(f"{path}.limits.cpu", "must be more than 0")
    for kind in ("memory", "cpu"):
        request, limit = getattr(result, f"{kind}_request"), getattr(result, f"{kind}_limit")
        if request is not None and limit is not None and request > limit:
            raise _fail(f"{path}.requests.{kind}", f"must be no more than limits.{kind}")
    return result


def _security(value: object, path: str, inherited: Security, *, pod: bool = False) -> Security:
    fields = _Fields(value, path)
    user = fields.integer("runAsUser")
    group = fields.integer("runAsGroup")
    for key, number in (("runAsUser", user), ("runAsGroup", group)):
        if number is not None and number < 0:
            raise _fail(f"{path}.{key}", "must not be negative")
    if pod:
        fields.done()
        return Security(run_as_user=user, run_as_group=group)
    privileged = fields.flag("privileged")
    read_only = fields.flag("readOnlyRootFilesystem")
    escalation = fields.take("allowPrivilegeEscalation")
    if escalation is not None and not isinstance(escalation, bool):
        raise _fail(f"{path}.allowPrivilegeEscalation", "must be true or false")
    caps = _Fields(fields.take("capabilities"), f"{path}.capabilities")
    add, drop = caps.strings("add"), caps.strings("drop")
    for key, names in (("add", add), ("drop", drop)):
        for name in names:
            if not _CAPABILITY.match(name):
                raise _fail(
                    f"{path}.capabilities.{key}", f"{name!r} is not a capability name (such as NET_ADMIN)"
                )
    caps.done()
    fields.done()
    user = inherited.run_as_user if user is None else user
    group = inherited.run_as_group if group is None else group
    if group is not None and user is None:
        raise _fail(f"{path}.runAsGroup", "needs runAsUser (here or in spec.securityContext)")
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
            raise _fail(f"{path}.name", f"container {container.name} is given twice")
        for j, port in enumerate(container.ports):
            key = (port.container_port, port.protocol)
            if key in ports:
                raise _fail(
                    f"{path}.ports[{j}].containerPort",
                    f"{port.container_port}/{port.protocol.upper()} is already used by container {ports[key]}"
                    " (a pod's containers share one network)",
                )
            ports[key] = container.name
            if port.host_port is not None:
                host = (port.host_ip or "", port.host_port, port.protocol)
                if host in host_ports:
                    raise _fail(
                        f"{path}.ports[{j}].hostPort",
                        f"{port.host_port}/{port.protocol.upper()} is already published by container"
                        f" {host_ports[host]}",
                    )
                host_ports[host] = container.name
        for j, mount in enumerate(container.volume_mounts):
            if mount.name not in names:
                raise _fail(
                    f"{path}.volumeMounts[{j}].name", f"no volume named {mount.name!r} in spec.volumes"
                )
