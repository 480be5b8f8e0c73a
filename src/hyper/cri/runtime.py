"""The CRI RuntimeService: what hyperd is (Version, Status, RuntimeConfig) and,
through `hyper.cri.sandboxes`, pod sandboxes and their containers.

RPCs that Hyper does not serve yet are named in MISSING with what is missing,
and answer UNIMPLEMENTED with that text (`hyper.cri.service`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cri_api.v1 import api_pb2

import hyper
from hyper.cri.events import container_events
from hyper.cri.sandboxes import RUNTIME_HANDLERS
from hyper.cri.stats import Statistics

RUNTIME_NAME = "hyper"
CRI_VERSION = "0.1.0"  # the kubelet's "version of the kubelet runtime API" (containerd's too)
RUNTIME_API_VERSION = "v1"

MISSING: dict[str, str] = {
    "Exec": "the streaming server (remotecommand over SPDY and WebSocket) is not built yet",
    "Attach": "the streaming server (remotecommand over SPDY and WebSocket) is not built yet",
    "PortForward": "the streaming server (the portforward protocol) is not built yet",
    "UpdateRuntimeConfig": "the pod CIDR comes from CNI, which Hyper's CRI does not call yet",
    "CheckpointContainer": "checkpointing a container out of its VM is not supported",
    "ListMetricDescriptors": "CRI metrics are not served yet",
    "ListPodSandboxMetrics": "CRI metrics are not served yet",
    "UpdatePodSandboxResources": "a running VM's memory and CPUs cannot be changed yet (no hotplug)",
}


class RuntimeService(Statistics):
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
        # Pods join hyperd's own network (its bridge, or user-mode networking), which
        # is ready whenever hyperd serves; CNI is not called yet (docs/cri.md).
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
