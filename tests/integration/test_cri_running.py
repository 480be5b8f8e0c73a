"""A running pod through the CRI, against a real hyperd and a real VM: statistics,
UpdateContainerResources, and the streaming server (exec, attach, port-forward).

One hyperd and one pod sandbox serve every test here (the module's fixture),
so the VM boots once: a container serving busybox httpd keeps running, others
join the same VM. The figures come from the guest kernel (the container's
cgroup, the VM's counters); the limits are read back from inside the
container. The streams are driven by aiohttp's WebSocket client and, over SPDY/3.1, by
npm's spdy-transport (tests/support/spdy.py): implementations independent
of the server's, speaking Kubernetes' remotecommand and port-forward
protocols.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
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
from tests.support.spdy import SpdyClient

pytestmark = pytest.mark.vm

WEB_SCRIPT = (
    "mkdir -p /www && echo hello-from-the-pod > /www/index.html && httpd -p 8080 -h /www && "
    "echo serving && exec sleep 100000"
)


POD_SYSCTLS = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"}


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
            # The pod's namespaced sysctls, read back by test_security_context_reaches_the_process.
            config = _sandbox_config("stats", logs, sysctls=POD_SYSCTLS)
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


def test_security_context_reaches_the_process(pod: Pod, tmp_path: Path) -> None:
    """Supplemental groups, masked and read-only paths, a Localhost seccomp
    profile and the pod's sysctls, seen from inside the VM (through ExecSync,
    which is confined as its container)."""
    client = pod.client
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    context = cri.LinuxContainerSecurityContext(
        supplemental_groups=[1234, 5678],
        masked_paths=["/proc/version"],
        readonly_paths=["/proc/uptime"],
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile)),
    )
    config = _container_config(
        "secured", ["sleep", "100000"], linux=cri.LinuxContainerConfig(security_context=context)
    )
    secured = _create(client, pod.sandbox_id, config, pod.config)
    start(client, secured)
    script = (
        "echo groups=$(id -G | tr ' ' ,); echo version=$(wc -c < /proc/version); "
        "echo kcore=$(stat -c %s /proc/kcore); "
        "echo uptime_ro=$(grep ' /proc/uptime ' /proc/self/mountinfo | grep -c ' ro,'); "
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward); echo shmmax=$(cat /proc/sys/kernel/shmmax); "
        "mkdir /tmp/d 2>/dev/null && echo mkdir=ok || echo mkdir=denied"
    )
    read = exec_sync(client, secured, "sh", "-c", script)
    assert read.exit_code == 0, read.stderr
    seen = dict(line.split("=", 1) for line in read.stdout.decode().split())
    assert seen["groups"] == "0,1234,5678"
    assert (seen["version"], seen["uptime_ro"]) == ("0", "1")
    assert seen["kcore"] != "0"  # the given list replaced runc's
    assert (seen["forward"], seen["shmmax"]) == ("1", "123456789")
    assert seen["mkdir"] == "denied"
    client.call(
        "StopContainer", cri.StopContainerRequest(container_id=secured, timeout=0), cri.StopContainerResponse
    )
    client.call(
        "RemoveContainer", cri.RemoveContainerRequest(container_id=secured), cri.RemoveContainerResponse
    )

    profile.write_text('{"defaultAction": "SCMP_ACT_SOMETIMES"}')
    bad = cri.CreateContainerRequest(pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.config)
    message = _fails(
        client, "CreateContainer", bad, cri.CreateContainerResponse, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert f"the Localhost seccomp profile {profile}" in message
    not_namespaced = cri.RunPodSandboxRequest(
        config=_sandbox_config("panicky", tmp_path, sysctls={"kernel.panic": "1"})
    )
    message = _fails(
        client, "RunPodSandbox", not_namespaced, cri.RunPodSandboxResponse, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "sysctl 'kernel.panic' is not in a separate kernel namespace" in message


# -- streaming ----------------------------------------------------------------------
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"


def exec_url(client: CriClient, container_id: str, cmd: list[str], **flags: bool) -> str:
    request = cri.ExecRequest(container_id=container_id, cmd=cmd, **flags)
    return client.call("Exec", request, cri.ExecResponse).url


class Channels:
    """What a remotecommand or port-forward server sent, by channel, in order of arrival."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []

    def of(self, channel: int) -> bytes:
        return b"".join(data for c, data in self.messages if c == channel)

    async def read_until(self, ws: aiohttp.ClientWebSocketResponse, done: object = None) -> None:
        """Messages until `done(self)` holds, or until the server closes the connection."""
        while not (callable(done) and done(self)):
            message = await asyncio.wait_for(ws.receive(), 120)
            if message.type is not aiohttp.WSMsgType.BINARY:
                return
            self.messages.append((message.data[0], message.data[1:]))


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_exec_streams_stdin_stdout_stderr_and_the_exit_status(pod: Pod) -> None:
    script = "read line; echo out:$line; echo err:$line >&2; exit 3"
    url = exec_url(pod.client, pod.web, ["sh", "-c", script], stdin=True, stdout=True, stderr=True)
    assert url.startswith("http://127.0.0.1:")

    async def session() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, protocols=(V5,)) as ws:
                assert ws.protocol == V5
                got = Channels()
                await got.read_until(ws, lambda c: len(c.messages) >= 1)
                assert got.messages[0] == (1, b"")  # the streams are up
                await ws.send_bytes(b"\x00hello\n")
                await ws.send_bytes(b"\xff\x00")  # v5: stdin is closed
                await got.read_until(ws)
            assert got.of(1) == b"out:hello\n" and got.of(2) == b"err:hello\n"
            status = json.loads(got.of(3))
            assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
            assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
            # The token was for one connection.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, protocols=(V5,))
            assert refused.value.status == 404

            # v4, a command that succeeds; and a request upgraded to neither is refused with the reason.
            url4 = exec_url(pod.client, pod.web, ["sh", "-c", "echo v4"], stdout=True)
            async with http.ws_connect(url4, protocols=(V4,)) as ws:
                assert ws.protocol == V4
                got = Channels()
                await got.read_until(ws)
            assert got.of(1) == b"v4\n" and json.loads(got.of(3)) == {"metadata": {}, "status": "Success"}
            plain = exec_url(pod.client, pod.web, ["true"], stdout=True)
            async with http.get(plain, headers={"X-Stream-Protocol-Version": V4}) as answer:
                assert answer.status == 400 and "WebSocket and SPDY/3.1" in await answer.text()

    run(session())
    bad = cri.ExecRequest(container_id=pod.web, cmd=["sh"], tty=True, stderr=True)
    _fails(pod.client, "Exec", bad, cri.ExecResponse, grpc.StatusCode.INVALID_ARGUMENT)
    absent = cri.ExecRequest(container_id="absent", cmd=["sh"], stdout=True)
    _fails(pod.client, "Exec", absent, cri.ExecResponse, grpc.StatusCode.NOT_FOUND)


def test_exec_with_a_terminal_follows_its_resizes(pod: Pod) -> None:
    script = "read x; stty size; read y; stty size"
    url = exec_url(pod.client, pod.web, ["sh", "-c", script], stdin=True, stdout=True, tty=True)

    async def session() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=(V5,)) as ws:
            got = Channels()
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 100, "Height": 30}).encode())
            await ws.send_bytes(b"\x00a\n")
            await got.read_until(ws, lambda c: b"30 100" in c.of(1))
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 120, "Height": 40}).encode())
            await ws.send_bytes(b"\x00b\n")
            await got.read_until(ws)
            assert b"40 120" in got.of(1) and got.of(2) == b""
            assert json.loads(got.of(3))["status"] == "Success"

    run(session())


def _attach_url_of_a_talker(pod: Pod, name: str) -> tuple[str, str]:
    """A running container that echoes each stdin line to stdout and stderr and
    says bye when its stdin ends, and an Attach URL for it."""
    client = pod.client
    script = "while read line; do echo got:$line; echo err:$line >&2; done; echo bye"
    config = _container_config(name, ["sh", "-c", script], stdin=True, stdin_once=True)
    talk = _create(client, pod.sandbox_id, config, pod.config)
    start(client, talk)
    _until(lambda: _status(client, talk).state == cri.CONTAINER_RUNNING, "the container to run")
    request = cri.AttachRequest(container_id=talk, stdin=True, stdout=True, stderr=True)
    url: str = client.call("Attach", request, cri.AttachResponse).url
    return talk, url


def test_attach_joins_the_containers_stdio(pod: Pod) -> None:
    client = pod.client
    talk, url = _attach_url_of_a_talker(pod, "talk")

    async def session() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=(V5,)) as ws:
            got = Channels()
            await got.read_until(ws, lambda c: len(c.messages) >= 1)
            await ws.send_bytes(b"\x00hi\n")
            await got.read_until(ws, lambda c: b"got:hi" in c.of(1) and b"err:hi" in c.of(2))
            await ws.send_bytes(b"\xff\x00")  # stdin_once: the container's stdin ends with ours
            await got.read_until(ws)
            assert got.of(1) == b"got:hi\nbye\n" and got.of(2) == b"err:hi\n"
            assert json.loads(got.of(3))["status"] == "Success"

    run(session())
    _until(lambda: _status(client, talk).state == cri.CONTAINER_EXITED, "the container to exit")
    client.call("RemoveContainer", cri.RemoveContainerRequest(container_id=talk), cri.RemoveContainerResponse)
    no_stdin = cri.AttachRequest(container_id=pod.web, stdin=True, stdout=True)
    _fails(client, "Attach", no_stdin, cri.AttachResponse, grpc.StatusCode.INVALID_ARGUMENT)


def test_attach_to_a_terminal_follows_its_resizes(pod: Pod) -> None:
    client = pod.client
    config = _container_config("term", ["sh", "-c", "read x; stty size; read y"], stdin=True, tty=True)
    term = _create(client, pod.sandbox_id, config, pod.config)
    start(client, term)
    _until(lambda: _status(client, term).state == cri.CONTAINER_RUNNING, "the container to run")
    request = cri.AttachRequest(container_id=term, stdin=True, stdout=True, tty=True)
    url = client.call("Attach", request, cri.AttachResponse).url

    async def session() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=(V4,)) as ws:
            got = Channels()
            await got.read_until(ws, lambda c: len(c.messages) >= 1)
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 90, "Height": 20}).encode())
            await ws.send_bytes(b"\x00a\n")
            await got.read_until(ws, lambda c: b"20 90" in c.of(1))
            await ws.send_bytes(b"\x00b\n")  # the container's last read: it exits, the attach ends
            await got.read_until(ws)
            assert json.loads(got.of(3))["status"] == "Success"

    run(session())
    _until(lambda: _status(client, term).state == cri.CONTAINER_EXITED, "the container to exit")
    client.call("RemoveContainer", cri.RemoveContainerRequest(container_id=term), cri.RemoveContainerResponse)


def test_port_forward_reaches_a_port_inside_the_vm(pod: Pod) -> None:
    def forward_url(*ports: int) -> str:
        request = cri.PortForwardRequest(pod_sandbox_id=pod.sandbox_id, port=list(ports))
        return pod.client.call("PortForward", request, cri.PortForwardResponse).url

    async def session() -> None:
        async with aiohttp.ClientSession() as http:
            url = forward_url(8080) + "?port=8080"
            async with http.ws_connect(url, protocols=("portforward.k8s.io",)) as ws:
                got = Channels()
                await got.read_until(ws, lambda c: len(c.messages) >= 2)
                assert got.messages[:2] == [(0, struct.pack("<H", 8080)), (1, struct.pack("<H", 8080))]
                await ws.send_bytes(b"\x00GET /index.html HTTP/1.0\r\n\r\n")
                await got.read_until(ws)  # httpd answers and closes: so does the stream
            data = got.of(0)[2:]
            assert data.startswith(b"HTTP/1.") and data.endswith(b"hello-from-the-pod\n"), data
            assert got.of(1)[2:] == b""

            # Nothing listens on port 9: the error channel says so, and the stream ends.
            async with http.ws_connect(forward_url() + "?port=9", protocols=("v4.channel.k8s.io",)) as ws:
                got = Channels()
                await got.read_until(ws)
            error = got.of(1)[2:].decode()
            assert error.startswith("error forwarding port 9 to pod") and "refused" in error, error

    run(session())


# -- the same over SPDY/3.1 ---------------------------------------------------------------
def test_spdy_exec_streams_stdin_stdout_stderr_and_the_exit_status(pod: Pod) -> None:
    script = "read line; echo out:$line; echo err:$line >&2; exit 3"
    url = exec_url(pod.client, pod.web, ["sh", "-c", script], stdin=True, stdout=True, stderr=True)

    async def session() -> None:
        async with await SpdyClient.connect(url, V4, "v3.channel.k8s.io") as client:
            assert client.protocol == V4  # the client's first that the server has
            for kind in ("error", "stdin", "stdout", "stderr"):  # client-go's order
                await client.open(kind, streamtype=kind)
            await client.until(lambda c: len(c.replied) == 4)
            await client.write("stdin", b"hello\n")
            await client.end("stdin")  # the process reads EOF
            await client.until(lambda c: {"stdout", "stderr", "error"} <= c.ended)
            assert client.of("stdout") == b"out:hello\n" and client.of("stderr") == b"err:hello\n"
            status = json.loads(client.of("error"))
            assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
            assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
            await client.until()  # the server ends the session
            assert not client.errors, client.errors

        # v3: the error stream carries a failure's message only.
        url3 = exec_url(pod.client, pod.web, ["sh", "-c", "echo v3; exit 2"], stdout=True)
        async with await SpdyClient.connect(url3, "v3.channel.k8s.io") as client:
            assert client.protocol == "v3.channel.k8s.io"
            await client.open("error", streamtype="error")
            await client.open("stdout", streamtype="stdout")
            await client.until()
            assert client.of("stdout") == b"v3\n"
            assert client.of("error").startswith(b"command terminated with non-zero exit code")

        # A version the server does not speak: refused before the upgrade, with the reason.
        refused = exec_url(pod.client, pod.web, ["true"], stdout=True)
        async with await SpdyClient.connect(refused, "v5.channel.k8s.io") as client:
            assert client.refused is not None and client.refused[0] == 403
            assert "unable to negotiate protocol" in client.refused[1]

    run(session())


def test_spdy_exec_with_a_terminal_follows_its_resizes(pod: Pod) -> None:
    url = exec_url(
        pod.client,
        pod.web,
        ["sh", "-c", 'while read x && [ "$x" != q ]; do stty size; done'],
        stdin=True,
        stdout=True,
        tty=True,
    )

    def lines_over(count: int, client: SpdyClient) -> bool:
        return client.of("stdout").count(b"\n") >= count

    async def until_size(client: SpdyClient, size: bytes) -> None:
        """A line at a time until the terminal has `size`: SPDY does not order the resize
        stream against stdin (spdy-transport schedules streams' frames as it likes)."""
        for _ in range(50):
            lines = client.of("stdout").count(b"\n")
            await client.write("stdin", b"\n")
            await client.until(partial(lines_over, lines + 2))  # the echo and the size
            if client.of("stdout").endswith(size + b"\r\n"):
                return
        raise AssertionError(f"the terminal never became {size!r}: {client.of('stdout')!r}")

    async def session() -> None:
        async with await SpdyClient.connect(url, V4) as client:
            for kind in ("error", "stdin", "stdout", "resize"):
                await client.open(kind, streamtype=kind)
            await client.until(lambda c: len(c.replied) == 4)
            await client.write("resize", json.dumps({"Width": 100, "Height": 30}).encode())
            await until_size(client, b"30 100")
            # Two sizes in one write, as a JSON stream: the last one holds.
            sizes = {"Width": 90, "Height": 20}, {"Width": 120, "Height": 40}
            await client.write("resize", b"".join(json.dumps(size).encode() for size in sizes))
            await until_size(client, b"40 120")
            await client.write("stdin", b"q\n")  # a terminal's stdin does not end with the stream
            await client.until()
            assert json.loads(client.of("error"))["status"] == "Success"

    run(session())


def test_spdy_attach_joins_the_containers_stdio(pod: Pod) -> None:
    client = pod.client
    talk, url = _attach_url_of_a_talker(pod, "spdytalk")

    async def session() -> None:
        async with await SpdyClient.connect(url, V4) as spdy:
            for kind in ("error", "stdin", "stdout", "stderr"):
                await spdy.open(kind, streamtype=kind)
            await spdy.until(lambda c: len(c.replied) == 4)
            await spdy.write("stdin", b"hi\n")
            await spdy.until(lambda c: b"got:hi" in c.of("stdout") and b"err:hi" in c.of("stderr"))
            await spdy.end("stdin")  # stdin_once: the container's stdin ends with ours
            await spdy.until()
            assert spdy.of("stdout") == b"got:hi\nbye\n" and spdy.of("stderr") == b"err:hi\n"
            assert json.loads(spdy.of("error"))["status"] == "Success"

    run(session())
    _until(lambda: _status(client, talk).state == cri.CONTAINER_EXITED, "the container to exit")
    client.call("RemoveContainer", cri.RemoveContainerRequest(container_id=talk), cri.RemoveContainerResponse)


def test_spdy_port_forward_reaches_a_port_inside_the_vm(pod: Pod) -> None:
    request = cri.PortForwardRequest(pod_sandbox_id=pod.sandbox_id, port=[8080])
    url = pod.client.call("PortForward", request, cri.PortForwardResponse).url

    async def session() -> None:
        async with await SpdyClient.connect(url, "portforward.k8s.io") as client:
            assert client.protocol == "portforward.k8s.io"
            # Two connections on one session, as kubectl port-forward makes them: one to
            # httpd, one to a port where nothing listens.
            for request_id, port in (("0", "8080"), ("1", "9")):
                for kind in ("error", "data"):
                    await client.open(f"{kind}{request_id}", streamtype=kind, port=port, requestid=request_id)
            await client.until(lambda c: len(c.replied) == 4)
            await client.write("data0", b"GET /index.html HTTP/1.0\r\n\r\n")
            await client.until(lambda c: {"data0", "error0", "data1", "error1"} <= c.ended)
            data = client.of("data0")
            assert data.startswith(b"HTTP/1.") and data.endswith(b"hello-from-the-pod\n"), data
            assert client.of("error0") == b""
            error = client.of("error1").decode()
            assert error.startswith("error forwarding port 9 to pod") and "refused" in error, error
            await client.close()
            await client.until()
            assert not client.errors, client.errors

    run(session())


def test_spdy_flow_control_carries_hundreds_of_kib_both_ways(pod: Pod) -> None:
    """More than the 64 KiB windows each way: stdin through cat and back, with a client
    that keeps SPDY/3.1's windows (a 64 KiB one of its own)."""
    payload = bytes(range(256)) * 1600  # 400 KiB
    url = exec_url(pod.client, pod.web, ["cat"], stdin=True, stdout=True)

    async def session() -> None:
        async with await SpdyClient.connect(url, V4, window=65535) as client:
            for kind in ("error", "stdin", "stdout"):
                await client.open(kind, streamtype=kind)
            await client.until(lambda c: len(c.replied) == 3)
            for at in range(0, len(payload), 32768):
                await client.write("stdin", payload[at : at + 32768])
            await client.end("stdin")
            await client.until()
            assert len(client.of("stdout")) == len(payload) and client.of("stdout") == payload
            assert json.loads(client.of("error"))["status"] == "Success"
            assert not client.errors, client.errors

    run(session())
