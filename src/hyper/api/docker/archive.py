"""Docker Engine API: `docker cp`, files into and out of a container.

The tar is made and unpacked by the agent inside the VM, in the container's
mount namespace and root, and streamed over the agent channel. What comes
back from the guest is hostile by assumption (a container that is root in
its VM may have taken the agent's channel over): its stat answer is checked
and renamed from the path asked for, and its tar goes through
`hyper.archive.guest_tar` before a byte reaches the client. A copy that fails
after the answer has started (a refused archive, a failed read in the guest,
a VM that died) cuts the connection, so the client sees a broken archive
rather than a shorter valid one, and the guest's copy is stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import sys
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentClient, AgentConnectionLost, AgentRequestError, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.api.docker import convert
from hyper.api.docker.common import Handler, container_of, flag
from hyper.archive.guest_tar import ArchiveRefused, GuestTarFilter, archive_name, top_name
from hyper.daemon.pods import Pod
from hyper.errors import DataLoss, HyperError, InvalidArgument, NotFound, Unavailable

# The filter's work is per header: a frame full of tiny members costs a few
# milliseconds per 16 KiB, so frames are filtered in slices with the event
# loop let go in between.
FILTER_SLICE = 16 * 1024
STOP_SECONDS = 30  # for a stopped copy's remaining output to drain
VM_EXIT_SECONDS = 10  # for hyperd to notice that a container's VM died
MAX_LINK_TARGET = 4096


def _archive_path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidArgument("the path parameter is required")
    return path if path.startswith("/") else f"/{path}"


def _vm_lost(pod: Pod, what: str, exc: AgentConnectionLost) -> Unavailable:
    return Unavailable(
        f"{what} container {pod.record.name} failed: its VM stopped or hyperd lost the connection to it "
        f"({exc.message})",
        hint="check the container's state (`docker inspect`) and try again",
    )


async def _stat(pod: Pod, agent: AgentClient, path: str) -> dict[str, Any]:
    try:
        reply = await agent.request("archive_stat", container=pod.id[:12], path=path)
    except AgentRequestError as exc:
        if exc.errno == 2:
            raise NotFound(f"Could not find the file {path} in container {pod.record.name}") from exc
        raise
    except AgentConnectionLost as exc:
        raise _vm_lost(pod, "looking up a path in", exc) from exc
    return convert.path_stat(checked_stat(reply, path))


def checked_stat(reply: dict[str, Any], path: str) -> dict[str, Any]:
    """The guest's archive_stat answer, checked: its name is Docker's name for
    `path`, computed here; the rest must have the types and ranges of a stat."""
    size, mode, mtime, target = (
        reply.get("size"),
        reply.get("mode"),
        reply.get("mtime"),
        reply.get("link_target"),
    )
    if not (
        isinstance(size, int)
        and 0 <= size < 1 << 63
        and isinstance(mode, int)
        and 0 <= mode <= 0o177777
        and isinstance(mtime, int | float)
        and math.isfinite(mtime)
        and isinstance(target, str)
        and len(target) <= MAX_LINK_TARGET
        and "\x00" not in target
    ):
        raise DataLoss(
            f"the container's VM answered the stat of {path} with a malformed reply",
            hint="the guest broke the protocol; do not trust this container",
        )
    return {
        "name": archive_name(path),
        "size": size,
        "mode": mode,
        "mtime": min(max(float(mtime), 0.0), float(1 << 40)),
        "link_target": target,
    }


def _stat_header(stat: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(stat).encode()).decode()


async def archive_head(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    async with pod.files_agent() as agent:
        stat = await _stat(pod, agent, _archive_path(request))
    return web.Response(status=200, headers={"X-Docker-Container-Path-Stat": _stat_header(stat)})


async def archive_get(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    async with pod.files_agent() as agent:
        return await _archive_get(request, pod, agent, _archive_path(request))


async def _next_output(channel: ProcessChannel) -> tuple[FrameKind, bytes, int | None] | None:
    """The process's next output; None at its end, or once its channel failed
    (a failure finds the queue full at times, and then queues no end)."""
    if channel.output.empty() and channel.exit_status.done():
        return None
    return await channel.output.get()


async def _archive_get(request: web.Request, pod: Pod, agent: AgentClient, path: str) -> web.StreamResponse:
    stat = await _stat(pod, agent, path)
    stream = pod.new_stream()
    channel = agent.open_process(stream)
    try:
        await agent.request("archive_get", container=pod.id[:12], process=stream, path=path)
    except AgentConnectionLost as exc:
        raise _vm_lost(pod, "copying from", exc) from exc
    response = web.StreamResponse(
        headers={"Content-Type": "application/x-tar", "X-Docker-Container-Path-Stat": _stat_header(stat)}
    )
    response.enable_chunked_encoding()
    tar_filter = GuestTarFilter(top_name(path))
    errors = bytearray()
    failure = "hyperd stopped the copy"
    try:
        await response.prepare(request)
        while (item := await _next_output(channel)) is not None:
            kind, data, _ = item
            pod.consumed()
            if kind is FrameKind.STDERR:
                errors += data[: max(0, 4096 - len(errors))]
                continue
            for start in range(0, len(data), FILTER_SLICE):
                if start:
                    await asyncio.sleep(0)
                if passed := tar_filter.feed(data[start : start + FILTER_SLICE]):
                    await response.write(passed)
        status = await channel.exit_status
        if status == 0:
            await response.write(tar_filter.close())
            await response.write_eof()
            return response
        text = errors.decode(errors="replace").strip()
        failure = (
            f"reading it failed inside the container (exit status {status}){': ' + text if text else ''}"
        )
    except ArchiveRefused as exc:
        failure = exc.message
    except AgentConnectionLost as exc:
        failure = f"the container's VM stopped or hyperd lost the connection to it ({exc.message})"
        if pod.vm is not None:
            # Let a VM's death be recorded before the client is cut off: `hyper cp`
            # asks then, and says that the VM stopped rather than blame the files.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.exited.wait(), VM_EXIT_SECONDS)
    except ConnectionError:
        failure = "the client went away"
    finally:
        if not channel.exit_status.done():
            await asyncio.shield(_stop_copy(pod, agent, channel, stream))
    # Too late for an error status: cut the connection so the client sees a broken archive.
    print(f"hyperd: the copy of {path} from container {pod.record.name} was cut: {failure}", file=sys.stderr)
    if request.transport is not None:
        request.transport.close()
    return response


async def _stop_copy(pod: Pod, agent: AgentClient, channel: ProcessChannel, stream: int) -> None:
    """Kill the guest's side of an abandoned copy and drain what it still sends,
    so that its output does not fill the channel's queue and stall the agent."""
    with contextlib.suppress(HyperError):
        await agent.request("signal", timeout=5, process=stream, signal=9)
    with contextlib.suppress(TimeoutError, HyperError):
        async with asyncio.timeout(STOP_SECONDS):
            while await _next_output(channel) is not None:
                pod.consumed()


async def archive_put(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    async with pod.files_agent() as agent:
        return await _archive_put(request, pod, agent, _archive_path(request))


async def _archive_put(request: web.Request, pod: Pod, agent: AgentClient, path: str) -> web.StreamResponse:
    stream = pod.new_stream()
    channel = agent.open_process(stream)
    try:
        await agent.request(
            "archive_put",
            container=pod.id[:12],
            process=stream,
            path=path,
            # Docker's cp refuses to replace a directory with a file (or the reverse).
            no_overwrite_dir_non_dir=flag(request, "noOverwriteDirNonDir"),
        )
    except AgentRequestError as exc:
        if exc.errno == 2:
            raise NotFound(f"Could not find the file {path} in container {pod.record.name}") from exc
        if exc.errno == 20:
            raise InvalidArgument(f"{path} in container {pod.record.name} is not a directory") from exc
        raise
    except AgentConnectionLost as exc:
        raise _vm_lost(pod, "copying into", exc) from exc
    errors = bytearray()

    async def collect() -> None:
        while (item := await channel.output.get()) is not None:
            pod.consumed()
            errors.extend(item[1][:4096])

    collector = asyncio.create_task(collect())
    try:
        async for chunk in request.content.iter_chunked(256 * 1024):
            await agent.write_stdin(stream, chunk)
        await agent.close_stdin(stream)
        status = await asyncio.wait_for(channel.exit_status, 600)
        await collector
    except AgentConnectionLost as exc:
        raise _vm_lost(pod, "copying into", exc) from exc
    finally:
        collector.cancel()
    if status != 0:
        text = errors.decode(errors="replace").strip() or f"extracting into {path} failed"
        raise InvalidArgument(f"copying into container {pod.record.name} failed: {text}")
    return web.Response(status=200)


ROUTES: list[tuple[str, str, Handler]] = [
    ("HEAD", "/containers/{id}/archive", archive_head),
    ("GET", "/containers/{id}/archive", archive_get),
    ("PUT", "/containers/{id}/archive", archive_put),
]
