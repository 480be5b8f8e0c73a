"""The CRI RuntimeService: what hyperd is (Version, Status, RuntimeConfig) and,
through `hyper.cri.sandboxes`, pod sandboxes and their containers.

RPCs that Hyper does not serve yet are named in MISSING with what is missing,
and answer UNIMPLEMENTED with that text (`hyper.cri.service`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cri_api.v1 import api_pb2
from google.protobuf.message import Message

import hyper
from hyper.cri.events import container_events
from hyper.cri.records import SandboxState
from hyper.cri.sandboxes import RUNTIME_HANDLERS
from hyper.cri.stats import Statistics
from hyper.cri.streaming import StreamingServer
from hyper.errors import FailedPrecondition, InvalidArgument, Unavailable

RUNTIME_NAME = "hyper"
CRI_VERSION = "0.1.0"  # the kubelet's "version of the kubelet runtime API" (containerd's too)
RUNTIME_API_VERSION = "v1"

MISSING: dict[str, str] = {
    "UpdateRuntimeConfig": "the pod CIDR is the CNI configuration's (--cni-conf-dir); "
    "hyperd does not take one from the kubelet yet",
    "CheckpointContainer": "checkpointing a container out of its VM is not supported",
    "ListMetricDescriptors": "CRI metrics (Prometheus descriptors) are not served yet; "
    "ContainerStats and PodSandboxStats are",
    "ListPodSandboxMetrics": "CRI metrics (Prometheus descriptors) are not served yet; "
    "ContainerStats and PodSandboxStats are",
    "UpdatePodSandboxResources": "a running VM's memory and CPUs cannot be changed yet (no hotplug)",
}


def _check_streams(request: api_pb2.ExecRequest | api_pb2.AttachRequest) -> None:
    """The kubelet's own rules for a stream's flags."""
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true", hint="a terminal has one output")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be set")


class RuntimeService(Statistics):
    streaming: StreamingServer | None = None  # set once the streaming server serves

    def _stream_url(self, kind: str, request: Message) -> str:
        if self.streaming is None:
            raise Unavailable("the CRI streaming server is not serving", hint="restart hyperd")
        return self.streaming.url(kind, request)

    async def exec(self, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
        """A one-time URL where the command runs over the remotecommand protocol."""
        record = self._container(request.container_id)
        if not request.cmd:
            raise InvalidArgument("Exec needs a command")
        _check_streams(request)
        if not self._pod(record).running:
            raise FailedPrecondition(f"container {record.id[:12]} is not running", hint="start it first")
        return api_pb2.ExecResponse(url=self._stream_url("exec", request))

    async def attach(self, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
        record = self._container(request.container_id)
        _check_streams(request)
        pod = self._pod(record)
        if not pod.running:
            raise FailedPrecondition(f"container {record.id[:12]} is not running", hint="start it first")
        if request.stdin and not pod.record.options.get("interactive"):
            raise InvalidArgument(
                f"container {record.id[:12]} was created without stdin", hint="attach without stdin"
            )
        return api_pb2.AttachResponse(url=self._stream_url("attach", request))

    async def port_forward(self, request: api_pb2.PortForwardRequest) -> api_pb2.PortForwardResponse:
        sandbox = self._sandbox(request.pod_sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} is stopped")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"no TCP port {port}", hint="give ports from 1 to 65535")
        return api_pb2.PortForwardResponse(url=self._stream_url("portforward", request))

    async def version(self, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
        del request
        return api_pb2.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=hyper.__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def status(self, request: api_pb2.StatusRequest) -> api_pb2.StatusResponse:
        del request
        # Pods join hyperd's own network (its bridge, or user-mode networking), ready
        # whenever hyperd serves, or CNI's, whose configuration hyperd checked at start.
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(type="NetworkReady", status=True),
        ]
        handlers = [
            api_pb2.RuntimeHandler(
                name=name,
                features=api_pb2.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=False, user_namespaces=False
                ),
            )
            for name in RUNTIME_HANDLERS
        ]
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(conditions=conditions),
            runtime_handlers=handlers,
            features=api_pb2.RuntimeFeatures(supplemental_groups_policy=False),
        )

    async def get_container_events(
        self, request: api_pb2.GetEventsRequest
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        del request
        async for event in container_events(self):
            yield event

    async def runtime_config(self, request: api_pb2.RuntimeConfigRequest) -> api_pb2.RuntimeConfigResponse:
        del request
        # hyperd makes each VM's cgroup in the cgroup filesystem itself (hyper.vm.cgroups).
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.CGROUPFS)
        )
