"""GetContainerEvents: hyperd's container events as the CRI's stream, for the kubelet's evented PLEG.

A CRI container's creation, start, exit and removal become CONTAINER_CREATED,
STARTED, STOPPED and DELETED events, each with its sandbox's status and its
containers' statuses at that moment. The pods' infra containers (their VMs)
are hyperd's own and not reported. A subscriber that falls behind loses the
stream (UNAVAILABLE) and subscribes again, as the kubelet does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from cri_api.v1 import api_pb2

from hyper.errors import Unavailable

if TYPE_CHECKING:
    from hyper.cri.sandboxes import PodSandboxes

WAIT_SECONDS = 1.0  # between looks at whether hyperd is stopping
EVENT_TYPES = {
    "create": api_pb2.CONTAINER_CREATED_EVENT,
    "start": api_pb2.CONTAINER_STARTED_EVENT,
    "die": api_pb2.CONTAINER_STOPPED_EVENT,
    "destroy": api_pb2.CONTAINER_DELETED_EVENT,
}


async def container_events(service: PodSandboxes) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    daemon = service.daemon
    subscription = daemon.events.subscribe()
    sandbox_of: dict[str, str] = {}  # containers seen, so that their removal still names the sandbox
    try:
        while not daemon.stopping.is_set():
            event = await subscription.next(WAIT_SECONDS)
            if event is None:
                if subscription.ended:
                    raise Unavailable("the container event stream fell behind", hint="subscribe again")
                continue
            kind = EVENT_TYPES.get(event.action) if event.type == "container" else None
            if kind is None:
                continue
            pod = daemon.pods.get(event.actor_id)
            if pod is not None and not pod.options.infra and pod.options.pod in service.sandboxes:
                sandbox_of[event.actor_id] = pod.options.pod
            sandbox_id = sandbox_of.get(event.actor_id)
            if sandbox_id is None:
                continue  # not a CRI container
            if kind == api_pb2.CONTAINER_DELETED_EVENT:
                del sandbox_of[event.actor_id]
            sandbox = service.sandboxes.get(sandbox_id)
            answer = api_pb2.ContainerEventResponse(
                container_id=event.actor_id, container_event_type=kind, created_at=event.time_ns
            )
            if sandbox is not None:
                answer.pod_sandbox_status.CopyFrom(service.sandbox_status(sandbox))
                answer.containers_statuses.extend(service.container_statuses(sandbox))
            yield answer
    finally:
        subscription.close()
        daemon.events.unsubscribe(subscription.queue)
