"""The daemon's state in memory: its pods, found again from SQLite at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hyper.daemon.pods import Pod
from hyper.daemon.state import StateStore
from hyper.errors import InvalidArgument, NotFound
from hyper.paths import HyperPaths
from hyper.runtime import spec as specs
from hyper.runtime.settings import Settings


class Daemon:
    def __init__(self, paths: HyperPaths, settings: Settings) -> None:
        self.paths = paths
        self.settings = settings
        self.state = StateStore(paths.state / "hyperd.db")
        self.pods: dict[str, Pod] = {}

    async def adopt_all(self) -> None:
        """Every container of the state: running ones are adopted, the others listed."""
        adoptions = []
        for record in self.state.all():
            pod = Pod(self.paths, self.settings, self.state, record)
            self.pods[record.id] = pod
            if record.state == specs.ContainerState.RUNNING.value:
                adoptions.append(pod.adopt())
            else:
                pod.exited.set()
                if pod.log is not None:
                    pod.log.closed = True
        await asyncio.gather(*adoptions)

    async def create(self, body: dict[str, Any]) -> Pod:
        options = run_options(body)
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise InvalidArgument("labels must map names to strings")
        pod = await Pod.create(self.paths, self.settings, self.state, options, labels)
        self.pods[pod.id] = pod
        return pod

    def find(self, ref: str) -> Pod:
        record = self.state.resolve(ref)
        pod = self.pods.get(record.id)
        if pod is None:
            raise NotFound(f"no such container: {ref}")
        return pod

    async def remove(self, ref: str, *, force: bool) -> None:
        pod = self.find(ref)
        await pod.remove(force=force)
        self.pods.pop(pod.id, None)

    async def shutdown(self) -> None:
        """Let go of every pod; their VMs run on until the next hyperd adopts them."""
        for pod in self.pods.values():
            with contextlib.suppress(Exception):
                await pod.release()
        self.state.close()


def run_options(body: dict[str, Any]) -> specs.RunOptions:
    """The POST /v1/containers body as RunOptions, type-checked field by field."""

    def text(key: str, *, required: bool = False) -> str | None:
        value = body.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value):
            raise InvalidArgument(f"{key!r} must be a string")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{key!r} must be a list of strings")
        return tuple(value)

    def number(key: str, default: int) -> int:
        value = body.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgument(f"{key!r} must be a positive integer")
        return value

    memory = number("memory_mib", specs.DEFAULT_MEMORY_MIB)
    if memory < specs.MIN_MEMORY_MIB:
        raise InvalidArgument(f"memory_mib must be at least {specs.MIN_MEMORY_MIB}")
    return specs.RunOptions(
        image=text("image", required=True) or "",
        command=strings("command"),
        entrypoint=text("entrypoint"),
        env=strings("env"),
        workdir=text("workdir"),
        user=text("user"),
        memory_mib=memory,
        cpus=number("cpus", 1),
        hostname=text("hostname"),
        name=text("name"),
    )
