"""What happened to containers, images, volumes and networks, for `events` subscribers.

Each subscriber gets its own bounded queue; one that does not keep up loses
its subscription (and is told so) rather than slowing hyperd down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

SUBSCRIBER_QUEUE = 1024
RECENT_EVENTS = 256  # kept for `since`


@dataclass(frozen=True)
class Event:
    type: str  # container | image | volume | network
    # create, start, die, stop, kill, pause, unpause, rename, destroy, exec_start, ...;
    # volumes: create, mount, unmount, destroy; networks: create, connect, disconnect, destroy
    action: str
    actor_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    time_ns: int = field(default_factory=time.time_ns)
    owner: str = ""  # the tenant whose object it is ("": the admin's); tenants see only their own


def volume_event(action: str, name: str, owner: str, **attributes: str) -> Event:
    """Docker's volume event: its name (the store's) as the actor, its driver among the attributes."""
    return Event("volume", action, name, {"driver": "local", **attributes}, owner=owner)


def network_event(action: str, network_id: str, name: str, owner: str, **attributes: str) -> Event:
    """Docker's network event: its ID as the actor, its name and type among the attributes."""
    return Event("network", action, network_id, {"name": name, "type": "bridge", **attributes}, owner=owner)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._recent: list[Event] = []

    def publish(self, event: Event) -> None:
        self._recent = [*self._recent[-(RECENT_EVENTS - 1) :], event]
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)  # the subscriber learns it fell behind

    def subscribe(self, *, since_ns: int | None = None) -> Subscription:
        """Events from now on (and the recent ones from `since_ns`); close it when done."""
        subscription = Subscription(self, since_ns)
        self._subscribers.add(subscription.queue)
        return subscription

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)

    def recent(self) -> list[Event]:
        return list(self._recent)


class Subscription:
    def __init__(self, bus: EventBus, since_ns: int | None) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._backlog = [e for e in bus.recent() if since_ns is not None and e.time_ns >= since_ns]
        self.ended = False  # fell behind, or closed

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None after `timeout` seconds (or once ended)."""
        if self._backlog:
            return self._backlog.pop(0)
        if self.ended:
            return None
        try:
            event = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if event is None:
            self.ended = True
        return event

    def close(self) -> None:
        self.ended = True
        self._bus.unsubscribe(self.queue)
