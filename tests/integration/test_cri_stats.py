"""CRI statistics and UpdateContainerResources against a real hyperd and a real VM.

One hyperd and one pod sandbox serve every test here (the module's fixture),
so the VM boots once: a container serving busybox httpd keeps running, others
join the same VM. The figures come from the guest kernel (the container's
cgroup, the VM's counters); the limits are read back from inside the container.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.test_cri_pods import (
    _container_config,
    _create,
    _fails,
    _run_sandbox,
    _sandbox_config,
    _status,
    _until,
)
from tests.support.cri import CriClient, CriHyperd

pytestmark = pytest.mark.vm

WEB_SCRIPT = (
    "mkdir -p /www && echo hello-from-the-pod > /www/index.html && httpd -p 8080 -h /www && "
    "echo serving && exec sleep 100000"
)


@dataclass
class Pod:
    hyperd: CriHyperd
    client: CriClient
    sandbox_id: str
    config: cri.PodSandboxConfig
    web: str  # a running container serving port 8080


def start(client: CriClient, container_id: str) -> None:
    client.call(
        "StartContainer", cri.StartContainerRequest(container_id=container_id), cri.StartContainerResponse
    )


def exec_sync(client: CriClient, container_id: str, *cmd: str) -> cri.ExecSyncResponse:
    request = cri.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=60)
    return client.call("ExecSync", request, cri.ExecSyncResponse)


@pytest.fixture(scope="module")
def pod(image_state: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    state = Path(tempfile.mkdtemp(prefix="cri-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True)
    logs = tmp_path_factory.mktemp("cri-logs")
    try:
        with CriHyperd(state, shared_cache) as daemon, daemon.client() as client:
            config = _sandbox_config("stats", logs)
            sandbox_id = _run_sandbox(client, config)
            web = _create(client, sandbox_id, _container_config("web", ["sh", "-c", WEB_SCRIPT]), config)
            start(client, web)
            log = logs / "web" / "0.log"
            _until(lambda: log.exists() and b"serving" in log.read_bytes(), "httpd to serve")
            yield Pod(daemon, client, sandbox_id, config, web)
            client.call(
                "RemovePodSandbox",
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.RemovePodSandboxResponse,
            )
            leftovers = daemon.qemu_processes()
            daemon.stop()
            assert "Traceback" not in daemon.log.read_text(), daemon.log.read_text()[-3000:]
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert not leftovers, f"VMs left running: {leftovers}"


def container_stats(client: CriClient, container_id: str) -> cri.ContainerStats:
    request = cri.ContainerStatsRequest(container_id=container_id)
    return client.call("ContainerStats", request, cri.ContainerStatsResponse).stats


def listed(client: CriClient, **filter_fields: object) -> list[str]:
    request = cri.ListContainerStatsRequest(filter=cri.ContainerStatsFilter(**filter_fields))  # type: ignore[arg-type]
    return [
        s.attributes.id
        for s in client.call("ListContainerStats", request, cri.ListContainerStatsResponse).stats
    ]


def test_container_stats_come_from_its_cgroup(pod: Pod) -> None:
    client = pod.client
    first = container_stats(client, pod.web)
    assert first.attributes.id == pod.web and first.attributes.metadata.name == "web"
    assert dict(first.attributes.labels) == {"container": "web"}
    assert first.cpu.usage_core_nano_seconds.value > 0
    memory = first.memory
    assert 0 < memory.working_set_bytes.value <= memory.usage_bytes.value
    assert memory.rss_bytes.value > 0 and memory.available_bytes.value > 0
    assert first.writable_layer.used_bytes.value > 0 and first.writable_layer.fs_id.mountpoint

    # Memory the container takes (a tmpfs file: shared memory, which is not reclaimable page cache).
    exec_sync(client, pod.web, "sh", "-c", "head -c 24000000 /dev/zero > /dev/shm/fill")
    second = container_stats(client, pod.web)
    assert second.memory.working_set_bytes.value >= memory.working_set_bytes.value + 16_000_000
    assert second.cpu.usage_core_nano_seconds.value >= first.cpu.usage_core_nano_seconds.value
    assert second.cpu.HasField("usage_nano_cores")  # a rate, against the previous sample
    exec_sync(client, pod.web, "rm", "/dev/shm/fill")

    assert listed(client, pod_sandbox_id=pod.sandbox_id[:10]) == [pod.web]
    assert listed(client, label_selector={"container": "web"}) == [pod.web]
    assert listed(client, label_selector={"container": "other"}) == []
    assert listed(client, id=pod.web) == [pod.web]
    _fails(
        client,
        "ContainerStats",
        cri.ContainerStatsRequest(container_id="absent"),
        cri.ContainerStatsResponse,
        grpc.StatusCode.NOT_FOUND,
    )

    # A container that exited has its writable layer's figures and no CPU or memory.
    done = _create(client, pod.sandbox_id, _container_config("done", ["true"]), pod.config)
    start(client, done)
    _until(lambda: _status(client, done).state == cri.CONTAINER_EXITED, "the container to exit")
    stopped = container_stats(client, done)
    assert stopped.attributes.id == done and not stopped.HasField("cpu")
    assert sorted(listed(client, pod_sandbox_id=pod.sandbox_id)) == sorted([pod.web, done])
    client.call("RemoveContainer", cri.RemoveContainerRequest(container_id=done), cri.RemoveContainerResponse)


def test_pod_sandbox_stats_are_the_vms(pod: Pod) -> None:
    client = pod.client
    request = cri.PodSandboxStatsRequest(pod_sandbox_id=pod.sandbox_id)
    stats = client.call("PodSandboxStats", request, cri.PodSandboxStatsResponse).stats
    assert stats.attributes.id == pod.sandbox_id and stats.attributes.metadata.name == "stats"
    assert dict(stats.attributes.labels) == {"app": "stats"}
    linux = stats.linux
    assert linux.cpu.usage_core_nano_seconds.value > 0
    assert linux.memory.working_set_bytes.value > 0 and linux.memory.available_bytes.value > 0
    assert linux.process.process_count.value >= 2  # httpd and the sleep, at least
    assert [c.attributes.id for c in linux.containers] == [pod.web]
    assert linux.containers[0].cpu.usage_core_nano_seconds.value > 0

    def sandboxes(**filter_fields: object) -> list[str]:
        request = cri.ListPodSandboxStatsRequest(filter=cri.PodSandboxStatsFilter(**filter_fields))  # type: ignore[arg-type]
        answer = client.call("ListPodSandboxStats", request, cri.ListPodSandboxStatsResponse)
        return [s.attributes.id for s in answer.stats]

    assert sandboxes() == [pod.sandbox_id]
    assert sandboxes(label_selector={"app": "stats"}) == [pod.sandbox_id]
    assert sandboxes(label_selector={"app": "other"}) == []
    assert sandboxes(id=pod.sandbox_id[:8]) == [pod.sandbox_id]
    _fails(
        client,
        "PodSandboxStats",
        cri.PodSandboxStatsRequest(pod_sandbox_id="absent"),
        cri.PodSandboxStatsResponse,
        grpc.StatusCode.NOT_FOUND,
    )


def test_update_container_resources_changes_its_cgroup(pod: Pod) -> None:
    client = pod.client
    limits = cri.LinuxContainerResources(
        cpu_quota=50_000,
        cpu_period=100_000,
        cpu_shares=512,
        memory_limit_in_bytes=96 * 1024 * 1024,
        cpuset_cpus="0",
    )
    request = cri.UpdateContainerResourcesRequest(container_id=pod.web, linux=limits)
    client.call("UpdateContainerResources", request, cri.UpdateContainerResourcesResponse)
    read = exec_sync(
        client, pod.web, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max",
        "/sys/fs/cgroup/cpu.weight", "/sys/fs/cgroup/cpuset.cpus",
    )  # fmt: skip
    assert read.exit_code == 0, read.stderr
    assert read.stdout.decode().split("\n")[:4] == [str(96 * 1024 * 1024), "50000 100000", "20", "0"]
    # The kubelet's available bytes are now up to the new limit.
    stats = container_stats(client, pod.web)
    assert stats.memory.available_bytes.value + stats.memory.working_set_bytes.value == 96 * 1024 * 1024

    too_small = cri.UpdateContainerResourcesRequest(
        container_id=pod.web, linux=cri.LinuxContainerResources(memory_limit_in_bytes=1024)
    )
    assert "minimum" in _fails(
        client,
        "UpdateContainerResources",
        too_small,
        cri.UpdateContainerResourcesResponse,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    absent = cri.UpdateContainerResourcesRequest(container_id="absent", linux=limits)
    _fails(
        client,
        "UpdateContainerResources",
        absent,
        cri.UpdateContainerResourcesResponse,
        grpc.StatusCode.NOT_FOUND,
    )
    created = _create(client, pod.sandbox_id, _container_config("later", ["true"]), pod.config)
    not_running = cri.UpdateContainerResourcesRequest(container_id=created, linux=limits)
    assert "running" in _fails(
        client,
        "UpdateContainerResources",
        not_running,
        cri.UpdateContainerResourcesResponse,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    client.call(
        "RemoveContainer", cri.RemoveContainerRequest(container_id=created), cri.RemoveContainerResponse
    )
    # A quota of -1 lifts the CPU limit, as the kubelet's resize does.
    unlimited = cri.UpdateContainerResourcesRequest(
        container_id=pod.web, linux=cri.LinuxContainerResources(cpu_quota=-1, cpu_period=100_000)
    )
    client.call("UpdateContainerResources", unlimited, cri.UpdateContainerResourcesResponse)
    assert exec_sync(client, pod.web, "cat", "/sys/fs/cgroup/cpu.max").stdout == b"max 100000\n"
