"""The CRI's statistics (ContainerStats, PodSandboxStats and their lists) and
UpdateContainerResources, from what the guest kernel counts.

A container's figures are its own cgroup's inside the pod's VM (CPU time,
memory current, anon, inactive file, page faults), which the agent reads with
the VM's (`stats` with the container's id); its writable layer is its disk on
the host (allocated blocks, as `docker ps -s` counts it). A sandbox's figures
are the VM's: its CPU time, its memory in use, its network interfaces and
its containers' processes. Rates (`usage_nano_cores`) come from the previous
sample of the same container or sandbox, as containerd computes them.

Limits go to the container's cgroup in the guest, as `docker update` would
have them: the VM's own size does not change (no memory or CPU hotplug).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from hyper.cri import translate
from hyper.cri.cni import CniPlugins
from hyper.cri.records import ContainerRecord, SandboxRecord
from hyper.cri.sandboxes import PodSandboxes
from hyper.daemon.daemon import Daemon
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.runtime import spec as specs

CPU_PERIOD_US = 100_000  # the CFS period when the kubelet gives a quota without one
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # runc's floor for a memory limit


@dataclass(frozen=True)
class CpuSample:
    at_ns: int
    usage_ns: int


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=max(int(value), 0))


def cpu_usage(now_ns: int, usage_ns: int, previous: CpuSample | None) -> api_pb2.CpuUsage:
    """CPU time so far and, against the previous sample, the rate in nanocores."""
    usage = api_pb2.CpuUsage(timestamp=now_ns, usage_core_nano_seconds=_u64(usage_ns))
    if previous is not None and now_ns > previous.at_ns and usage_ns >= previous.usage_ns:
        rate = (usage_ns - previous.usage_ns) * 1_000_000_000 // (now_ns - previous.at_ns)
        usage.usage_nano_cores.CopyFrom(_u64(rate))
    return usage


def container_memory(now_ns: int, cgroup: Mapping[str, int], vm_total: int) -> api_pb2.MemoryUsage:
    """The kubelet's figures from a cgroup v2: the working set is what is in use
    but the inactive page cache (which the kernel reclaims first), as runc and
    cAdvisor count it; the available bytes are up to the limit, the VM's
    memory where the container has none of its own."""
    current = cgroup.get("memory.current", 0)
    working_set = max(current - cgroup.get("memory.inactive_file", 0), 0)
    limit = cgroup.get("memory.max") or vm_total  # "max" (no limit) is not a number: absent
    return api_pb2.MemoryUsage(
        timestamp=now_ns,
        working_set_bytes=_u64(working_set),
        available_bytes=_u64(limit - working_set),
        usage_bytes=_u64(current),
        rss_bytes=_u64(cgroup.get("memory.anon", 0)),
        page_faults=_u64(cgroup.get("memory.pgfault", 0)),
        major_page_faults=_u64(cgroup.get("memory.pgmajfault", 0)),
    )


def vm_memory(now_ns: int, memory: Mapping[str, int]) -> api_pb2.MemoryUsage:
    used = int(memory.get("used", 0))
    return api_pb2.MemoryUsage(
        timestamp=now_ns,
        working_set_bytes=_u64(used),
        available_bytes=_u64(int(memory.get("available", 0))),
        usage_bytes=_u64(used + int(memory.get("cache", 0))),
    )


def network_usage(now_ns: int, networks: Mapping[str, Mapping[str, int]]) -> api_pb2.NetworkUsage:
    """The VM's interfaces but loopback; the default one is eth0 (the pod's)."""
    interfaces = [
        api_pb2.NetworkInterfaceUsage(
            name=name,
            rx_bytes=_u64(figures.get("rx_bytes", 0)),
            rx_errors=_u64(figures.get("rx_errors", 0)),
            tx_bytes=_u64(figures.get("tx_bytes", 0)),
            tx_errors=_u64(figures.get("tx_errors", 0)),
        )
        for name, figures in sorted(networks.items())
    ]
    usage = api_pb2.NetworkUsage(timestamp=now_ns)
    default = next((i for i in interfaces if i.name == "eth0"), interfaces[0] if interfaces else None)
    if default is not None:
        usage.default_interface.CopyFrom(default)
        usage.interfaces.extend(i for i in interfaces if i is not default)
    return usage


def cpu_weight(shares: int) -> int:
    """cgroup v1 CPU shares as cgroup v2's cpu.weight, by runc's formula."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def cgroup_values(linux: api_pb2.LinuxContainerResources) -> dict[str, str]:
    """UpdateContainerResources' Linux resources as the cgroup v2 files they set
    (0, the proto's default, leaves a limit as it is). Refused: what the
    guest cannot apply to one container's cgroup."""
    values: dict[str, str] = {}
    if linux.cpu_quota > 0 or linux.cpu_quota == -1:
        period = linux.cpu_period if linux.cpu_period > 0 else CPU_PERIOD_US
        if not 1000 <= period <= 1_000_000:
            raise InvalidArgument(f"cpu_period {period} µs is out of range", hint="give 1000 to 1000000")
        quota = "max" if linux.cpu_quota == -1 else str(max(linux.cpu_quota, 1000))
        values["cpu.max"] = f"{quota} {period}"
    if linux.cpu_shares > 0:
        values["cpu.weight"] = str(cpu_weight(linux.cpu_shares))
    if linux.memory_limit_in_bytes > 0:
        if linux.memory_limit_in_bytes < MIN_MEMORY_BYTES:
            raise InvalidArgument(
                f"memory limit {linux.memory_limit_in_bytes} bytes is below the minimum",
                hint=f"give at least {MIN_MEMORY_BYTES} bytes",
            )
        values["memory.max"] = str(linux.memory_limit_in_bytes)
        swap = linux.memory_swap_limit_in_bytes
        if swap > 0:  # memory and swap together, as Docker's --memory-swap
            values["memory.swap.max"] = str(max(swap - linux.memory_limit_in_bytes, 0))
    if linux.cpuset_cpus:
        values["cpuset.cpus"] = linux.cpuset_cpus
    if linux.cpuset_mems and linux.cpuset_mems != "0":
        raise InvalidArgument("a VM has one memory node (0)", hint="leave cpuset_mems empty or 0")
    return values


def writable_bytes(container_dir: Path) -> int:
    try:
        return (container_dir / "writable.ext4").stat().st_blocks * 512
    except OSError:
        return 0


class Statistics(PodSandboxes):
    """The stats RPCs and UpdateContainerResources over the sandboxes and containers."""

    def __init__(self, daemon: Daemon, cni: CniPlugins | None = None) -> None:
        super().__init__(daemon, cni)
        self.cpu_samples: dict[str, CpuSample] = {}  # the last of each container and sandbox

    def _rate_from(self, key: str, now_ns: int, usage_ns: int) -> api_pb2.CpuUsage:
        usage = cpu_usage(now_ns, usage_ns, self.cpu_samples.get(key))
        self.cpu_samples[key] = CpuSample(now_ns, usage_ns)
        return usage

    async def _guest(self, container_id: str, **fields: Any) -> dict[str, Any] | None:
        """The agent's figures through a running container (None when it does not run)."""
        pod = self.daemon.pods.get(container_id)
        if pod is None or pod.status is not specs.ContainerState.RUNNING:
            return None
        try:
            return await pod.running_agent().request("stats", timeout=10, **fields)
        except HyperError:
            return None  # it stopped meanwhile: no figures, as for a stopped one

    async def _container_stats(self, record: ContainerRecord) -> api_pb2.ContainerStats:
        now = time.time_ns()
        answer = api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=record.id,
                metadata=translate.cri_metadata(record.metadata),
                labels=record.labels,
                annotations=record.annotations,
            )
        )
        used = await asyncio.to_thread(writable_bytes, self.daemon.paths.containers / record.id)
        answer.writable_layer.CopyFrom(
            api_pb2.FilesystemUsage(
                timestamp=now,
                fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(self.daemon.paths.containers)),
                used_bytes=_u64(used),
            )
        )
        guest = await self._guest(record.id, container=record.id[:12])
        if guest is None:
            return answer
        cgroup = {str(k): int(v) for k, v in (guest.get("cgroup") or {}).items()}
        memory = guest.get("memory") or {}
        answer.cpu.CopyFrom(self._rate_from(record.id, now, cgroup.get("cpu.usage_usec", 0) * 1000))
        answer.memory.CopyFrom(container_memory(now, cgroup, int(memory.get("total", 0))))
        return answer

    def _stats_filter_match(
        self, record: ContainerRecord, wanted: api_pb2.ContainerStatsFilter | None
    ) -> bool:
        if wanted is None:
            return True
        return (
            (not wanted.id or record.id.startswith(wanted.id))
            and (not wanted.pod_sandbox_id or record.sandbox_id.startswith(wanted.pod_sandbox_id))
            and translate.labels_match(record.labels, dict(wanted.label_selector))
        )

    async def container_stats(self, request: api_pb2.ContainerStatsRequest) -> api_pb2.ContainerStatsResponse:
        record = self._container(request.container_id)
        return api_pb2.ContainerStatsResponse(stats=await self._container_stats(record))

    async def list_container_stats(
        self, request: api_pb2.ListContainerStatsRequest
    ) -> api_pb2.ListContainerStatsResponse:
        wanted = request.filter if request.HasField("filter") else None
        records = sorted(
            (r for r in self.containers.values() if self._stats_filter_match(r, wanted)),
            key=lambda r: r.created_at,
        )
        found = await asyncio.gather(*(self._container_stats(r) for r in records))
        return api_pb2.ListContainerStatsResponse(stats=found)

    async def _sandbox_stats(self, sandbox: SandboxRecord) -> api_pb2.PodSandboxStats:
        now = time.time_ns()
        members = sorted(self._in(sandbox), key=lambda r: r.created_at)
        answer = api_pb2.PodSandboxStats(
            attributes=api_pb2.PodSandboxAttributes(
                id=sandbox.id,
                metadata=translate.sandbox_metadata(sandbox.metadata),
                labels=sandbox.labels,
                annotations=sandbox.annotations,
            ),
            linux=api_pb2.LinuxPodSandboxStats(),
        )
        answer.linux.containers.extend(await asyncio.gather(*(self._container_stats(r) for r in members)))
        guest = None
        for record in members:  # the VM's figures, through any container that runs in it
            if (guest := await self._guest(record.id)) is not None:
                break
        if guest is None:
            return answer
        cpu = guest.get("cpu") or {}
        answer.linux.cpu.CopyFrom(self._rate_from(f"sandbox:{sandbox.id}", now, int(cpu.get("total_ns", 0))))
        answer.linux.memory.CopyFrom(vm_memory(now, guest.get("memory") or {}))
        answer.linux.network.CopyFrom(network_usage(now, guest.get("networks") or {}))
        answer.linux.process.CopyFrom(
            api_pb2.ProcessUsage(timestamp=now, process_count=_u64(int(guest.get("pids", 0))))
        )
        return answer

    async def pod_sandbox_stats(
        self, request: api_pb2.PodSandboxStatsRequest
    ) -> api_pb2.PodSandboxStatsResponse:
        sandbox = self._sandbox(request.pod_sandbox_id)
        return api_pb2.PodSandboxStatsResponse(stats=await self._sandbox_stats(sandbox))

    async def list_pod_sandbox_stats(
        self, request: api_pb2.ListPodSandboxStatsRequest
    ) -> api_pb2.ListPodSandboxStatsResponse:
        wanted = request.filter if request.HasField("filter") else None
        found = [
            s
            for s in sorted(self.sandboxes.values(), key=lambda s: s.created_at)
            if wanted is None
            or (
                (not wanted.id or s.id.startswith(wanted.id))
                and translate.labels_match(s.labels, dict(wanted.label_selector))
            )
        ]
        stats = await asyncio.gather(*(self._sandbox_stats(s) for s in found))
        return api_pb2.ListPodSandboxStatsResponse(stats=stats)

    async def update_container_resources(
        self, request: api_pb2.UpdateContainerResourcesRequest
    ) -> api_pb2.UpdateContainerResourcesResponse:
        record = self._container(request.container_id)
        values = cgroup_values(request.linux) if request.HasField("linux") else {}
        if not values:
            return api_pb2.UpdateContainerResourcesResponse()
        pod = self._pod(record)
        if pod.status is not specs.ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {record.id[:12]} is {pod.status.value}: only a running container's "
                "limits can be changed (its cgroup lives in the VM)",
                hint="give the limits in CreateContainer",
            )
        await pod.running_agent().request(
            "update_resources", timeout=10, container=record.id[:12], values=values
        )
        return api_pb2.UpdateContainerResourcesResponse()
