"""Kubernetes Pod manifests (hyper.kube): parsed, refused by field path, planned as a pod."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hyper.cli.kube_commands import read_manifests
from hyper.errors import InvalidArgument
from hyper.kube.fields import parse_quantity
from hyper.kube.manifest import EmptyDir, HostPath, Port, parse_manifests, parse_pod
from hyper.kube.plan import plan_pod, vm_size
from hyper.storage.mounts import parse_mount

MANIFEST = """
apiVersion: v1
kind: Pod
metadata:
  name: shop
  labels: {app: shop}
spec:
  restartPolicy: OnFailure
  containers:
  - name: web
    image: localhost/busybox:latest
    command: [sh, -c]
    args: ["echo $(GREETING) $$(HOME) && exec httpd -f -p 8080"]
    env:
    - {name: GREETING, value: hello}
    - {name: FULL, value: "$(GREETING) world"}
    workingDir: /srv
    ports:
    - {containerPort: 8080, hostPort: 18080}
    - {containerPort: 9090, protocol: UDP}
    volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: site, mountPath: /site/, readOnly: true}
    resources:
      requests: {memory: 64Mi, cpu: 250m}
      limits: {memory: 128Mi, cpu: "1"}
  - name: side
    image: localhost/busybox:latest
    args: [sleep, "1000"]
    volumeMounts:
    - {name: cache, mountPath: /data}
  volumes:
  - name: cache
    emptyDir: {}
  - name: site
    hostPath: {path: /srv/site, type: DirectoryOrCreate}
status: {phase: Running}
"""


def manifest() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(MANIFEST)
    return doc


def refused(doc: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_pod(doc)
    message = caught.value.message
    assert "\n" not in message
    return message


def test_a_pod_manifest_is_parsed_field_by_field() -> None:
    pod = parse_pod(manifest())
    assert pod.name == "shop" and pod.labels == (("app", "shop"),) and pod.restart_policy == "OnFailure"
    web, side = pod.containers
    assert web.command == ("sh", "-c") and web.working_dir == "/srv"
    assert web.env == (("GREETING", "hello"), ("FULL", "hello world"))
    assert web.ports == (Port(8080, "tcp", 18080), Port(9090, "udp"))
    assert [m.mount_path for m in web.volume_mounts] == ["/cache", "/site"]
    assert web.volume_mounts[1].read_only
    assert web.resources.memory_request == 64 << 20 and web.resources.cpu_limit == 1000
    assert web.resources.cpu_request == 250
    assert side.args == ("sleep", "1000") and side.command == ()
    assert pod.volumes == (EmptyDir("cache"), HostPath("site", "/srv/site", "DirectoryOrCreate"))


def test_the_plan_is_what_hyper_create_pod_would_ask_for() -> None:
    pod = parse_pod(manifest())
    plan = plan_pod(pod, source="/m.yaml", host_cpus=2, default_memory_mib=512, volume_suffix="abc")
    # Requests (64 MiB), else the default (512 MiB), plus 128 MiB, in 256 MiB steps.
    assert (plan.memory_mib, plan.cpus) == (768, 1)
    assert plan.publish == ("18080:8080/tcp",)  # no hostPort: not published
    assert ("hyper.kube", "/m.yaml") in plan.labels and ("app", "shop") in plan.labels
    web, side = plan.containers
    assert web.name == "shop-web" and side.name == "shop-side"
    assert web.entrypoint == "sh"
    assert web.command == ("-c", "echo hello $(HOME) && exec httpd -f -p 8080")
    assert side.entrypoint is None and side.command == ("sleep", "1000")  # the image's entrypoint
    assert web.env == ("GREETING=hello", "FULL=hello world") and web.workdir == "/srv"
    assert web.restart == "on-failure"
    assert web.memory_mib == 128 and web.nano_cpus == 1_000_000_000
    assert side.memory_mib == 768 and side.nano_cpus == 0  # no limit: the VM's
    assert plan.empty_dirs == (("cache", "shop-cache-abc"),)
    cache = parse_mount(web.mounts[0])
    assert (cache.source, cache.target, cache.no_copy) == ("shop-cache-abc", "/cache", True)
    assert dict(cache.volume_labels) == {"hyper.kube.pod": "shop", "hyper.kube.volume": "cache"}
    assert parse_mount(side.mounts[0]).source == "shop-cache-abc"  # one volume, shared
    site = parse_mount(web.mounts[1])
    assert (site.source, site.target, site.read_only, site.create_source) == (
        "/srv/site",
        "/site",
        True,
        True,
    )


def test_vm_size_counts_requests_else_limits_else_the_default() -> None:
    doc = manifest()
    pod = parse_pod(doc)
    assert vm_size(pod.containers, 8, 512) == (768, 1)
    doc["spec"]["containers"][1]["resources"] = {"limits": {"memory": "1Gi", "cpu": "1500m"}}
    pod = parse_pod(doc)
    # 128 + 64 + 1024 = 1216 → 1280; CPUs 0.25 + 1.5 → 2, at most the host's.
    assert vm_size(pod.containers, 8, 512) == (1280, 2)
    assert vm_size(pod.containers, 1, 512) == (1280, 1)
    plan = plan_pod(pod, source="-", host_cpus=1, default_memory_mib=512, volume_suffix="x")
    assert plan.containers[1].nano_cpus == 1_000_000_000  # a limit above the VM is the VM's


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("1", 1),
        ("1.5", 1.5),
        ("128Mi", 128 << 20),
        ("1G", 10**9),
        ("1e3", 1000),
        (2, 2),
        ("2Ki", 2048),
        (".5", 0.5),
    ],
)
def test_quantities(text: object, value: float) -> None:
    assert parse_quantity(text, "x") == value


@pytest.mark.parametrize("text", ["", "-1", "1.2.3", "12 Mi", "1mi", "Mi", "1KiB", True, "0x10"])
def test_bad_quantities(text: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^x: .* is not a quantity"):
        parse_quantity(text, "x")


def changed(path: str, value: object) -> dict[str, Any]:
    """The manifest with the field at `path` (dotted, [i] for items) set; deleted when value is ...."""
    doc = copy.deepcopy(manifest())
    parts = path.replace("[", ".").replace("]", "").split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.containers[1].image", ..., "spec.containers[1].image: required"),
        ("spec.containers[0].image", "", "spec.containers[0].image: required"),
        ("spec.containers[0].resources.limits.memory", "12 Mi", "resources.limits.memory: '12 Mi' is not a"),
        ("spec.containers[0].resources.requests.cpu", "lots", "resources.requests.cpu: 'lots' is not a"),
        ("spec.containers[1].name", "web", "spec.containers[1].name: container web is given twice"),
        ("spec.containers[1].ports", [{"containerPort": 8080}], "spec.containers[1].ports[0].containerPort:"),
        ("spec.containers[1].volumeMounts[0].name", "nope", "volumeMounts[0].name: no volume named 'nope'"),
        ("spec.containers[0].volumeMounts[0].mountPath", "data", "volumeMounts[0].mountPath: 'data' must be"),
        ("spec.containers[0].volumeMounts[1].mountPath", "/cache", "/cache is mounted twice"),
        ("spec.containers[0].volumeMounts[0].mountPath", "/proc", "/proc cannot be mounted over"),
        ("spec.containers[0].volumeMounts[0].subPath", "x", "volumeMounts[0].subPath: not supported"),
        ("spec.containers[0].workingDir", "srv", "spec.containers[0].workingDir: 'srv' must be an absolute"),
        (
            "spec.containers[0].securityContext",
            {"seccompProfile": {"type": "Unconfined"}},
            "securityContext.seccompProfile",
        ),
        ("spec.containers[0].livenessProbe", {"exec": {}}, "spec.containers[0].livenessProbe: not supported"),
        ("spec.containers[0].env[0].valueFrom", {"fieldRef": {}}, "env[0].valueFrom: not supported"),
        ("spec.containers[0].ports[1].protocol", "SCTP", "ports[1].protocol: SCTP is not supported"),
        ("spec.containers[0].ports[0].containerPort", 70000, "70000 is not a port"),
        ("spec.containers[0].resources.limits.memory", "1Mi", "limits.memory: 1048576 bytes is below"),
        ("spec.containers[0].resources.requests.memory", "1Gi", "requests.memory: must be no more than"),
        ("spec.containers[0].resources.limits.ephemeral-storage", "1Gi", "limits.ephemeral-storage: not"),
        ("spec.containers[0].tty", True, "spec.containers[0].tty: not supported"),
        ("spec.containers[0].name", "Web_1", "'Web_1' is not a valid container name"),
        ("spec.initContainers", [{"name": "x"}], "spec.initContainers: not supported"),
        ("spec.hostNetwork", True, "spec.hostNetwork: true is not supported"),
        ("spec.securityContext", {"fsGroup": 1}, "spec.securityContext.fsGroup: not supported"),
        ("spec.restartPolicy", "Sometimes", "spec.restartPolicy: 'Sometimes' is not one of"),
        ("spec.containers", [], "spec.containers: required"),
        ("spec.volumes[0]", {"name": "cache", "configMap": {}}, "volume type configMap is not supported"),
        ("spec.volumes[1].hostPath.type", "Socket", "hostPath.type: Socket is not supported (Directory,"),
        ("spec.volumes[1].hostPath.type", "Dir", "hostPath.type: unknown type 'Dir'"),
        ("spec.volumes[1].hostPath.path", "srv", "hostPath.path: 'srv' must be an absolute path"),
        ("spec.volumes[1].name", "cache", "spec.volumes[1].name: volume cache is given twice"),
        ("spec.volumes[0].emptyDir", {"medium": "Memory"}, "emptyDir.medium: Memory is not supported"),
        ("metadata.name", "Shop!", "metadata.name: 'Shop!' is not a valid pod name"),
        ("metadata", {}, "metadata.name: required"),
        ("kind", "Deployment", "kind: Deployment is not supported: hyper kube play runs Pods"),
        ("apiVersion", "apps/v1", "apiVersion: apps/v1 is not supported"),
        ("spec.overhead", {"cpu": 1}, "spec.overhead: not supported"),
    ],
)
def test_bad_manifests_are_refused_by_field_path(path: str, value: object, message: str) -> None:
    assert message in refused(changed(path, value))


def test_fields_that_mean_nothing_on_one_host_are_accepted() -> None:
    doc = changed("spec.nodeSelector", {"disk": "ssd"})
    doc["spec"]["dnsPolicy"] = "ClusterFirst"
    doc["spec"]["hostNetwork"] = False
    doc["spec"]["initContainers"] = []
    doc["metadata"]["namespace"] = "default"
    doc["spec"]["containers"][0]["terminationMessagePolicy"] = "File"
    assert parse_pod(doc).name == "shop"


def test_security_context_maps_to_hyper_create_options() -> None:
    doc = changed("spec.securityContext", {"runAsUser": 1000, "runAsGroup": 100})
    doc["spec"]["containers"][0]["securityContext"] = {
        "runAsUser": 0,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
    }
    plan = plan_pod(parse_pod(doc), source="-", host_cpus=2, default_memory_mib=512, volume_suffix="x")
    web, side = plan.containers
    assert (web.user, web.read_only, web.security_opt) == ("0:100", True, ("no-new-privileges",))
    assert (web.cap_add, web.cap_drop) == (("NET_ADMIN",), ("ALL",))
    assert side.user == "1000:100" and not side.read_only
    assert "runAsGroup: needs runAsUser" in refused(changed("spec.securityContext", {"runAsGroup": 1}))


def test_multi_document_files() -> None:
    other = changed("metadata.name", "other")
    pods = parse_manifests([manifest(), None, other])
    assert [p.name for p in pods] == ["shop", "other"]
    with pytest.raises(InvalidArgument, match=r"^document 2: kind: Service is not supported"):
        parse_manifests([manifest(), {"apiVersion": "v1", "kind": "Service"}])
    with pytest.raises(InvalidArgument, match="pod shop is given twice"):
        parse_manifests([manifest(), manifest()])
    with pytest.raises(InvalidArgument, match="no documents"):
        parse_manifests([None])
    with pytest.raises(InvalidArgument, match=r"^kind: required"):
        parse_manifests([{"apiVersion": "v1"}])
    with pytest.raises(InvalidArgument, match=r"^the document must be a mapping"):
        parse_manifests(["just text"])


def test_hostports_clash_across_containers() -> None:
    doc = changed("spec.containers[1].ports", [{"containerPort": 81, "hostPort": 18080}])
    assert "ports[0].hostPort: 18080/TCP is already published by container web" in refused(doc)
    doc = changed("spec.containers[1].ports", [{"containerPort": 8080, "protocol": "UDP"}])
    assert parse_pod(doc).containers[1].ports == (Port(8080, "udp"),)  # another protocol: no clash


def test_manifest_files_are_read_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(MANIFEST + "---\n" + MANIFEST.replace("name: shop", "name: two"))
    assert [p.name for p in read_manifests(str(path))] == ["shop", "two"]
    path.write_text("kind: Pod\n  bad: [\n")
    with pytest.raises(InvalidArgument, match=r"pod\.yaml is not valid YAML at line 2"):
        read_manifests(str(path))
    with pytest.raises(InvalidArgument, match=r"cannot read .*nosuch\.yaml: No such file"):
        read_manifests(str(tmp_path / "nosuch.yaml"))


def test_host_path_files_are_bound_as_they_are() -> None:
    doc = changed("spec.volumes[1].hostPath", {"path": "/etc/app.conf", "type": "FileOrCreate"})
    plan = plan_pod(parse_pod(doc), source="-", host_cpus=2, default_memory_mib=512, volume_suffix="x")
    site = parse_mount(plan.containers[0].mounts[1])
    assert (site.source, site.create_source) == ("/etc/app.conf", False)  # the CLI makes the file
    assert plan.host_paths == (HostPath("site", "/etc/app.conf", "FileOrCreate"),)


_KEYS = st.text(max_size=6) | st.integers(0, 3)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
_PATHS = [
    "kind",
    "metadata",
    "metadata.name",
    "spec",
    "spec.volumes",
    "spec.volumes[0]",
    "spec.volumes[1].hostPath",
    "spec.containers",
    "spec.containers[0]",
    "spec.containers[0].env",
    "spec.containers[0].env[0]",
    "spec.containers[0].ports[0]",
    "spec.containers[0].volumeMounts",
    "spec.containers[0].resources",
    "spec.containers[0].resources.limits",
    "spec.containers[0].securityContext",
    "spec.containers[1].command",
    "spec.securityContext",
]


@given(path=st.sampled_from(_PATHS), value=_JSON)
@settings(max_examples=300, deadline=None)
def test_any_value_anywhere_is_planned_or_refused_in_one_line(path: str, value: object) -> None:
    try:
        pod = parse_pod(changed(path, value))
    except InvalidArgument as exc:
        assert "\n" not in str(exc)
        return
    plan_pod(pod, source="-", host_cpus=2, default_memory_mib=512, volume_suffix="x")
