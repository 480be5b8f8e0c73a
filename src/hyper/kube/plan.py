"""From a parsed Pod manifest to what hyperd is asked for: the pod (its VM's
size, published ports, shared PID namespace) and each container as `hyper
create --pod` would make it. Pure.

The VM's size (docs/kube.md): each container counts its memory request, else
its limit, else hyperd's default container size (512 MiB); the sum plus the
pod overhead is rounded up as `hyper pod create` rounds it
(hyper.runtime.resources.pod_vm_size), and the vCPUs are the CPU requests
(else limits) together, rounded up, at least one, at most the host's. Limits
are the containers' cgroup limits in the guest; a limit above the VM's size
is the VM's size, and a container without a memory limit may use the VM's
whole RAM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hyper.kube.manifest import (
    KUBE_LABEL,
    KUBE_POD_LABEL,
    KUBE_VOLUME_LABEL,
    RESTART_POLICIES,
    Container,
    EmptyDir,
    HostPath,
    PodManifest,
    expand,
)
from hyper.runtime import resources


@dataclass(frozen=True)
class ContainerPlan:
    """One container as `hyper create --pod POD` would make it."""

    name: str  # hyperd's: POD-CONTAINER, as podman names them
    image: str
    entrypoint: str | None
    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str | None
    user: str | None
    memory_mib: int
    nano_cpus: int
    mounts: tuple[str, ...]  # canonical --mount strings
    restart: str
    pull_policy: str
    privileged: bool = False
    read_only: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    stop_timeout: int | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PodPlan:
    name: str
    labels: tuple[tuple[str, str], ...]
    hostname: str | None
    publish: tuple[str, ...]
    memory_mib: int
    cpus: int
    share: tuple[str, ...]
    containers: tuple[ContainerPlan, ...]
    empty_dirs: tuple[tuple[str, str], ...]  # (the manifest's name, the Hyper volume's)
    host_paths: tuple[HostPath, ...]


def vm_size(
    containers: Iterable[Container], host_cpus: int, default_memory_mib: int, default_cpus: int = 1
) -> tuple[int, int]:
    """(RAM MiB, vCPUs) of the pod's VM from its containers' requests, else
    limits, else `default_memory_mib`; the pod overhead added, in the steps of
    `hyper pod create` (hyper.runtime.resources.pod_vm_size)."""
    asked = []
    for container in containers:
        r = container.resources
        memory = r.memory_request if r.memory_request is not None else r.memory_limit
        cpu = r.cpu_request if r.cpu_request is not None else r.cpu_limit
        asked.append(
            resources.Resources(
                memory_mib=default_memory_mib if memory is None else -(-memory // (1 << 20)),
                nano_cpus=(cpu or 0) * 1_000_000,
            )
        )
    return resources.pod_vm_size(asked, host_cpus, default_cpus=default_cpus)


def plan_pod(
    pod: PodManifest,
    *,
    source: str,
    host_cpus: int,
    default_memory_mib: int,
    default_cpus: int = 1,
    volume_suffix: str,
) -> PodPlan:
    """What hyperd is asked for to run `pod` (from the file `source`);
    emptyDir volumes are named POD-VOLUME-`volume_suffix`, new for each play."""
    memory_mib, cpus = vm_size(pod.containers, host_cpus, default_memory_mib, default_cpus)
    empty_dirs = tuple(
        (v.name, f"{pod.name}-{v.name}-{volume_suffix}") for v in pod.volumes if isinstance(v, EmptyDir)
    )
    volume_names = dict(empty_dirs)
    host_paths = {v.name: v for v in pod.volumes if isinstance(v, HostPath)}
    plans = []
    for container in pod.containers:
        env = dict(container.env)
        mounts = []
        for mount in container.volume_mounts:
            readonly = ",readonly" if mount.read_only else ""
            if mount.name in volume_names:
                volume = volume_names[mount.name]
                labels = (
                    f"volume-label={KUBE_POD_LABEL}={pod.name},volume-label={KUBE_VOLUME_LABEL}={mount.name}"
                )
                # An emptyDir starts empty: no copy-up of the image's files.
                mounts.append(
                    f"type=volume,source={volume},target={mount.mount_path}{readonly},volume-nocopy,{labels}"
                )
            else:
                host = host_paths[mount.name]
                create = ",bind-create-src" if host.type == "DirectoryOrCreate" else ""
                mounts.append(f"type=bind,source={host.path},target={mount.mount_path}{readonly}{create}")
        command = tuple(expand(word, env) for word in container.command)
        args = tuple(expand(word, env) for word in container.args)
        r, s = container.resources, container.security
        # A limit is the container's cgroup's; none, or one above the VM, is the VM's size.
        memory_limit = (
            memory_mib if r.memory_limit is None else min(memory_mib, -(-r.memory_limit // (1 << 20)))
        )
        cpu_limit = 0 if r.cpu_limit is None else min(cpus * 1000, r.cpu_limit) * 1_000_000
        user = None
        if s.run_as_user is not None:
            user = str(s.run_as_user) + ("" if s.run_as_group is None else f":{s.run_as_group}")
        plans.append(
            ContainerPlan(
                name=f"{pod.name}-{container.name}",
                image=container.image,
                entrypoint=command[0] if command else None,
                command=command[1:] + args,
                env=tuple(f"{k}={v}" for k, v in container.env),
                workdir=container.working_dir,
                user=user,
                memory_mib=memory_limit,
                nano_cpus=cpu_limit,
                mounts=tuple(mounts),
                restart=RESTART_POLICIES[pod.restart_policy],
                pull_policy=container.pull_policy,
                privileged=s.privileged,
                read_only=s.read_only_root,
                cap_add=s.cap_add,
                cap_drop=s.cap_drop,
                security_opt=("no-new-privileges",) if s.no_new_privileges else (),
                stop_timeout=pod.grace_seconds,
                labels=((KUBE_POD_LABEL, pod.name), ("hyper.kube.container", container.name)),
            )
        )
    publish = tuple(p for c in pod.containers for port in c.ports if (p := port.publish()) is not None)
    return PodPlan(
        name=pod.name,
        labels=(*pod.labels, (KUBE_LABEL, source)),
        hostname=pod.hostname,
        publish=publish,
        memory_mib=memory_mib,
        cpus=cpus,
        share=("pid",) if pod.share_pid else (),
        containers=tuple(plans),
        empty_dirs=empty_dirs,
        host_paths=tuple(host_paths.values()),
    )
