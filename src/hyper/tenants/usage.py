"""Usage for billing: vCPU-seconds, memory-seconds and container-seconds per tenant.

A container is metered while its VM runs (paused included: its memory is
held): from its `start` event to its `die` event, at the vCPUs and memory it
was given. The time is added to the tenant's totals in SQLite at each of
those events and every RECONCILE_SECONDS for what still runs, so a crash of
hyperd loses nothing but that last interval, and the VMs that kept running
while hyperd was down are billed when the next hyperd finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from hyper.daemon.events import Event, EventBus
from hyper.daemon.pods import Pod
from hyper.tenants.store import Metering, TenantStore

RECONCILE_SECONDS = 30.0


class Meter:
    def __init__(self, store: TenantStore, pods: Callable[[], Mapping[str, Pod]]) -> None:
        self.store = store
        self._pods = pods

    def _metering(self, pod: Pod, since: float) -> Metering:
        options = pod.options
        return Metering(pod.id, pod.record.owner, options.cpus, options.memory_mib, since)

    def observe(self, event: Event) -> None:
        """A container started or died: its metering starts or stops at that moment."""
        if event.type != "container" or not event.owner:
            return
        when = event.time_ns / 1e9
        if event.action == "start":
            pod = self._pods().get(event.actor_id)
            if pod is not None:
                self.store.start_metering(self._metering(pod, when))
        elif event.action in ("die", "destroy"):
            for metering in self.store.meterings():
                if metering.container_id == event.actor_id:
                    self.store.account(metering, when, stop=True)

    def reconcile(self, now: float | None = None) -> None:
        """Bring every tenant's totals up to `now`, and the meters in line with the pods."""
        now = time.time() if now is None else now
        pods = self._pods()
        metered = {m.container_id: m for m in self.store.meterings()}
        for metering in metered.values():
            pod = pods.get(metering.container_id)
            if pod is not None and pod.running:
                self.store.account(metering, now, stop=False)
            else:
                # Stopped or removed while no event reached us: up to its finish, when known.
                finished = pod.record.finished_at if pod is not None else None
                self.store.account(metering, finished or metering.since, stop=True)
        for pod in pods.values():
            if pod.record.owner and pod.running and pod.id not in metered:
                self.store.start_metering(self._metering(pod, pod.record.started_at or now))
                self.store.account(self._metering(pod, pod.record.started_at or now), now, stop=False)

    async def run(self, events: EventBus, stopping: asyncio.Event) -> None:
        """Follow hyperd's events until it stops; reconcile on a timer and whenever
        the subscription fell behind."""
        self.reconcile()
        last = time.monotonic()
        while not stopping.is_set():
            subscription = events.subscribe()
            try:
                while not subscription.ended and not stopping.is_set():
                    event = await subscription.next(1.0)
                    if event is not None:
                        self.observe(event)
                    if time.monotonic() - last >= RECONCILE_SECONDS:
                        self.reconcile()
                        last = time.monotonic()
            finally:
                subscription.close()
            with contextlib.suppress(Exception):
                self.reconcile()
