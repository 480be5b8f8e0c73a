"""Pod sandboxes and containers through the CRI, in real VMs, against a real hyperd.

A CRI client on the same v1 stubs (tests/support/cri.py) drives a hyperd
started with --cri-socket: the whole sandbox and container lifecycle, logs in
the kubelet's format at the path it asks for, ExecSync with its timeout,
idempotent stop and remove, surviving a hyperd restart, and bad requests.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import BUSYBOX
from tests.support.cri import CriClient, CriHyperd, status_of

pytestmark = pytest.mark.vm

CRI_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$")


@pytest.fixture
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[CriHyperd]:
    state = Path(tempfile.mkdtemp(prefix="cri-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True)
    try:
        with CriHyperd(state, shared_cache) as daemon:
            yield daemon
            leftovers = daemon.qemu_processes()
            daemon.stop()
            assert "Traceback" not in daemon.log.read_text(), daemon.log.read_text()[-3000:]
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert not leftovers, f"VMs left running: {leftovers}"


def _sandbox_config(name: str, logs: Path, **linux: object) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}", attempt=0),
        hostname=name,
        log_directory=str(logs),
        labels={"app": name},
        annotations={"note": "hyper"},
        linux=cri.LinuxPodSandboxConfig(**linux),  # type: ignore[arg-type]
    )


def _container_config(name: str, command: list[str], **fields: object) -> cri.ContainerConfig:
    values: dict[str, object] = {"log_path": f"{name}/0.log", "labels": {"container": name}, **fields}
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=BUSYBOX),
        command=command,
        **values,  # type: ignore[arg-type]
    )


def _run_sandbox(client: CriClient, config: cri.PodSandboxConfig) -> str:
    return client.call(
        "RunPodSandbox", cri.RunPodSandboxRequest(config=config), cri.RunPodSandboxResponse
    ).pod_sandbox_id


def _create(
    client: CriClient, sandbox_id: str, config: cri.ContainerConfig, sandbox: cri.PodSandboxConfig
) -> str:
    request = cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox)
    return client.call("CreateContainer", request, cri.CreateContainerResponse).container_id


def _status(client: CriClient, container_id: str) -> cri.ContainerStatus:
    request = cri.ContainerStatusRequest(container_id=container_id)
    return client.call("ContainerStatus", request, cri.ContainerStatusResponse).status


def _until(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _fails(client: CriClient, rpc: str, request: object, response: type, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as failure:
        client.call(rpc, request, response)  # type: ignore[arg-type]
    got, details = status_of(failure.value)
    assert got is code, (got, details)
    return details


def _list_containers(client: CriClient, **filter_fields: object) -> list[str]:
    request = cri.ListContainersRequest(filter=cri.ContainerFilter(**filter_fields))  # type: ignore[arg-type]
    return [c.id for c in client.call("ListContainers", request, cri.ListContainersResponse).containers]


def _list_sandboxes(client: CriClient, **filter_fields: object) -> list[str]:
    request = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(**filter_fields))  # type: ignore[arg-type]
    return [s.id for s in client.call("ListPodSandbox", request, cri.ListPodSandboxResponse).items]


def test_sandbox_and_container_lifecycle_with_kubelet_logs(hyperd: CriHyperd, tmp_path: Path) -> None:
    logs = tmp_path / "pods" / "default_web"
    sandbox_config = _sandbox_config("web", logs)
    with hyperd.client() as client:
        sandbox_id = _run_sandbox(client, sandbox_config)
        script = "echo hello; echo oops >&2; printf partial; echo; echo $HOSTNAME $GREETING; pwd; exit 3"
        config = _container_config(
            "main",
            ["sh", "-c"],
            args=[script],
            envs=[cri.KeyValue(key="GREETING", value="hi")],
            working_dir="/tmp",
        )
        container_id = _create(client, sandbox_id, config, sandbox_config)
        assert _status(client, container_id).state == cri.CONTAINER_CREATED
        client.call(
            "StartContainer", cri.StartContainerRequest(container_id=container_id), cri.StartContainerResponse
        )
        _until(lambda: _status(client, container_id).state == cri.CONTAINER_EXITED, "the container to exit")

        status = _status(client, container_id)
        assert (status.exit_code, status.reason) == (3, "Error")
        assert status.started_at > status.created_at > 0 and status.finished_at >= status.started_at
        assert status.log_path == str(logs / "main/0.log")
        assert status.image_ref.startswith("sha256:") and dict(status.labels) == {"container": "main"}

        log_file = logs / "main" / "0.log"
        _until(lambda: log_file.exists() and b"/tmp" in log_file.read_bytes(), "the log's last line")
        parsed = [CRI_LINE.match(line) for line in log_file.read_bytes().splitlines()]
        assert all(parsed), log_file.read_bytes()
        by_stream: dict[bytes, bytes] = {}
        for match in parsed:
            assert match is not None
            stream, tag, text = match.groups()
            by_stream[stream] = by_stream.get(stream, b"") + text + (b"\n" if tag == b"F" else b"")
        assert by_stream == {b"stdout": b"hello\npartial\nweb hi\n/tmp\n", b"stderr": b"oops\n"}

        sandbox = client.call(
            "PodSandboxStatus",
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
            cri.PodSandboxStatusResponse,
        )
        assert sandbox.status.state == cri.SANDBOX_READY and sandbox.status.metadata.name == "web"
        assert [c.id for c in sandbox.containers_statuses] == [container_id]

        # Filters: by id prefix, sandbox, state and labels; wrong ones find nothing.
        assert _list_containers(client, id=container_id[:12]) == [container_id]
        assert _list_containers(client, pod_sandbox_id=sandbox_id) == [container_id]
        exited = cri.ContainerStateValue(state=cri.CONTAINER_EXITED)
        running = cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)
        assert _list_containers(client, state=exited) == [container_id]
        assert _list_containers(client, state=running) == []
        assert _list_containers(client, label_selector={"container": "main"}) == [container_id]
        assert _list_containers(client, label_selector={"container": "other"}) == []
        assert _list_sandboxes(client, label_selector={"app": "web"}) == [sandbox_id]
        assert _list_sandboxes(client, state=cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)) == []

        # Stop and remove are idempotent; a stopped sandbox is NOTREADY and takes no new container.
        for _ in range(2):
            client.call(
                "StopContainer",
                cri.StopContainerRequest(container_id=container_id),
                cri.StopContainerResponse,
            )
            client.call(
                "StopPodSandbox",
                cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.StopPodSandboxResponse,
            )
        assert _list_sandboxes(client, state=cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)) == [
            sandbox_id
        ]
        _fails(
            client, "CreateContainer",
            cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=_container_config("late", ["true"])),
            cri.CreateContainerResponse, grpc.StatusCode.FAILED_PRECONDITION,
        )  # fmt: skip
        for _ in range(2):
            client.call(
                "RemoveContainer",
                cri.RemoveContainerRequest(container_id=container_id),
                cri.RemoveContainerResponse,
            )
            client.call(
                "RemovePodSandbox",
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.RemovePodSandboxResponse,
            )
        assert _list_containers(client) == [] and _list_sandboxes(client) == []
        _fails(
            client,
            "ContainerStatus",
            cri.ContainerStatusRequest(container_id=container_id),
            cri.ContainerStatusResponse,
            grpc.StatusCode.NOT_FOUND,
        )


def test_exec_sync_stop_and_a_hyperd_restart(hyperd: CriHyperd, tmp_path: Path) -> None:
    logs = tmp_path / "pods" / "default_db"
    sandbox_config = _sandbox_config("db", logs)
    with hyperd.client() as client:
        sandbox_id = _run_sandbox(client, sandbox_config)
        config = _container_config("server", ["sh", "-c", "echo up; while true; do sleep 1; done"])
        container_id = _create(client, sandbox_id, config, sandbox_config)
        client.call(
            "StartContainer", cri.StartContainerRequest(container_id=container_id), cri.StartContainerResponse
        )
        assert _status(client, container_id).state == cri.CONTAINER_RUNNING

        # A second container joins the same VM: it shares the pod's network (localhost) and hostname.
        sidecar_config = _container_config(
            "sidecar", ["sh", "-c", "echo from-sidecar > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        )
        sidecar_id = _create(client, sandbox_id, sidecar_config, sandbox_config)
        client.call(
            "StartContainer", cri.StartContainerRequest(container_id=sidecar_id), cri.StartContainerResponse
        )
        fetch = cri.ExecSyncRequest(
            container_id=container_id,
            cmd=[
                "sh",
                "-c",
                "for i in $(seq 100); do wget -qO- http://127.0.0.1:8080/ && exit; sleep 0.2; done",
            ],
            timeout=120,
        )
        fetched = client.call("ExecSync", fetch, cri.ExecSyncResponse)
        assert fetched.stdout == b"from-sidecar\n", fetched
        names = client.call(
            "ExecSync", cri.ExecSyncRequest(container_id=sidecar_id, cmd=["hostname"]), cri.ExecSyncResponse
        )
        assert names.stdout == b"db\n"
        # Each has its own root: the sidecar's file is not in the server's.
        own = client.call(
            "ExecSync",
            cri.ExecSyncRequest(container_id=container_id, cmd=["ls", "/tmp"]),
            cri.ExecSyncResponse,
        )
        assert b"index.html" not in own.stdout
        assert sorted(_list_containers(client, pod_sandbox_id=sandbox_id)) == sorted(
            [container_id, sidecar_id]
        )
        _fails(
            client, "StartContainer", cri.StartContainerRequest(container_id=container_id),
            cri.StartContainerResponse, grpc.StatusCode.FAILED_PRECONDITION,
        )  # fmt: skip

        done = client.call(
            "ExecSync",
            cri.ExecSyncRequest(
                container_id=container_id, cmd=["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=120
            ),
            cri.ExecSyncResponse,
        )
        assert (done.stdout, done.stderr, done.exit_code) == (b"out\n", b"err\n", 4)
        missing = client.call(
            "ExecSync", cri.ExecSyncRequest(container_id=container_id, cmd=["/no/such"]), cri.ExecSyncResponse
        )
        assert missing.exit_code in (126, 127), missing
        slow = cri.ExecSyncRequest(container_id=container_id, cmd=["sleep", "600"], timeout=2)
        _fails(client, "ExecSync", slow, cri.ExecSyncResponse, grpc.StatusCode.DEADLINE_EXCEEDED)

        # hyperd restarts: the sandbox, its VM and its containers carry on (a pod's
        # members are adopted with its VM), and another container still joins the sandbox.
        hyperd.stop()
        hyperd.start()
        with hyperd.client() as again:
            assert _list_sandboxes(again) == [sandbox_id]
            status = _status(again, container_id)
            assert status.state == cri.CONTAINER_RUNNING, status
            assert (logs / "server/0.log").read_bytes().count(b" stdout F up\n") == 1
            retry = _container_config("server", ["sh", "-c", "echo again; while true; do sleep 1; done"])
            retry.metadata.attempt = 1
            retry.log_path = "server/1.log"
            retry_id = _create(again, sandbox_id, retry, sandbox_config)
            again.call(
                "StartContainer", cri.StartContainerRequest(container_id=retry_id), cri.StartContainerResponse
            )
            after = again.call(
                "ExecSync",
                cri.ExecSyncRequest(container_id=retry_id, cmd=["echo", "back"]),
                cri.ExecSyncResponse,
            )
            assert after.stdout == b"back\n"
            again.call(
                "StopContainer",
                cri.StopContainerRequest(container_id=retry_id, timeout=1),
                cri.StopContainerResponse,
            )
            stopped = _status(again, retry_id)
            assert stopped.state == cri.CONTAINER_EXITED and stopped.exit_code == 137, stopped
            _until(lambda: b" stdout F again\n" in (logs / "server/1.log").read_bytes(), "the retry's log")
            again.call(
                "RemovePodSandbox",
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.RemovePodSandboxResponse,
            )
            assert _list_containers(again) == [] and _list_sandboxes(again) == []


def test_bad_requests_are_refused_with_reasons(hyperd: CriHyperd, tmp_path: Path) -> None:
    with hyperd.client() as client:
        host_network = _sandbox_config(
            "host", tmp_path,
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(network=cri.NODE)),
        )  # fmt: skip
        details = _fails(
            client,
            "RunPodSandbox",
            cri.RunPodSandboxRequest(config=host_network),
            cri.RunPodSandboxResponse,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "host's network namespace" in details and "kernel of its own" in details, details
        host_pid = _sandbox_config(
            "pid", tmp_path,
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(pid=cri.NODE)),
        )  # fmt: skip
        assert "PID" in _fails(
            client,
            "RunPodSandbox",
            cri.RunPodSandboxRequest(config=host_pid),
            cri.RunPodSandboxResponse,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        handler = cri.RunPodSandboxRequest(config=_sandbox_config("x", tmp_path), runtime_handler="runc")
        assert "runc" in _fails(
            client, "RunPodSandbox", handler, cri.RunPodSandboxResponse, grpc.StatusCode.INVALID_ARGUMENT
        )
        nameless = cri.RunPodSandboxRequest(config=cri.PodSandboxConfig())
        _fails(client, "RunPodSandbox", nameless, cri.RunPodSandboxResponse, grpc.StatusCode.INVALID_ARGUMENT)

        config = _sandbox_config("ok", tmp_path)
        sandbox_id = _run_sandbox(client, config)
        _fails(
            client,
            "RunPodSandbox",
            cri.RunPodSandboxRequest(config=config),
            cri.RunPodSandboxResponse,
            grpc.StatusCode.ALREADY_EXISTS,
        )
        unknown = cri.CreateContainerRequest(pod_sandbox_id="f" * 64, config=_container_config("c", ["true"]))
        _fails(client, "CreateContainer", unknown, cri.CreateContainerResponse, grpc.StatusCode.NOT_FOUND)
        no_image = _container_config("c", ["true"])
        no_image.image.image = "localhost/nothing:here"
        _fails(
            client,
            "CreateContainer",
            cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=no_image),
            cri.CreateContainerResponse,
            grpc.StatusCode.NOT_FOUND,
        )
        escaping = _container_config("c", ["true"], log_path="../../escape.log")
        _fails(
            client,
            "CreateContainer",
            cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=escaping),
            cri.CreateContainerResponse,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        _fails(
            client,
            "StopContainer",
            cri.StopContainerRequest(container_id="f" * 64),
            cri.StopContainerResponse,
            grpc.StatusCode.NOT_FOUND,
        )
        client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
            cri.RemovePodSandboxResponse,
        )


def test_container_events_stream_a_containers_life(hyperd: CriHyperd, tmp_path: Path) -> None:
    sandbox_config = _sandbox_config("events", tmp_path / "logs")
    with hyperd.client() as client, hyperd.client() as watcher:
        stream = watcher.stream("GetContainerEvents", cri.GetEventsRequest(), cri.ContainerEventResponse)
        seen: list[tuple[str, int]] = []
        done = threading.Event()

        def watch() -> None:
            try:
                for event in stream:
                    seen.append((event.container_id, event.container_event_type))
                    assert event.pod_sandbox_status.metadata.name == "events"
                    if event.container_event_type == cri.CONTAINER_DELETED_EVENT:
                        return
            except grpc.RpcError:
                pass  # cancelled below if the test fails first
            finally:
                done.set()

        reader = threading.Thread(target=watch)
        reader.start()
        try:
            sandbox_id = _run_sandbox(client, sandbox_config)
            container_id = _create(
                client, sandbox_id, _container_config("main", ["sleep", "600"]), sandbox_config
            )
            client.call(
                "StartContainer",
                cri.StartContainerRequest(container_id=container_id),
                cri.StartContainerResponse,
            )
            client.call(
                "StopContainer",
                cri.StopContainerRequest(container_id=container_id, timeout=0),
                cri.StopContainerResponse,
            )
            client.call(
                "RemovePodSandbox",
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.RemovePodSandboxResponse,
            )
            assert done.wait(120), seen
        finally:
            stream.cancel()  # type: ignore[attr-defined]
            reader.join(30)
        # Only the CRI container's events: the pod's infra VM is hyperd's own.
        assert seen == [
            (container_id, cri.CONTAINER_CREATED_EVENT),
            (container_id, cri.CONTAINER_STARTED_EVENT),
            (container_id, cri.CONTAINER_STOPPED_EVENT),
            (container_id, cri.CONTAINER_DELETED_EVENT),
        ]
