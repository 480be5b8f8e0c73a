"""Docker Engine API: `docker cp`, files into and out of a running container.

The tar is made and unpacked by the agent inside the VM, in the container's
mount namespace and root, and streamed over the agent channel.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentClient, AgentConnectionLost, AgentRequestError
from hyper.agent.protocol import FrameKind
from hyper.api.docker import convert
from hyper.api.docker.common import Handler, container_of, flag
from hyper.daemon.pods import Pod
from hyper.errors import InvalidArgument, NotFound


def _archive_path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidArgument("the path parameter is required")
    return path if path.startswith("/") else f"/{path}"


async def _stat(pod: Pod, agent: AgentClient, path: str) -> dict[str, Any]:
    try:
        reply = await agent.request("archive_stat", container=pod.id[:12], path=path)
    except AgentRequestError as exc:
        if exc.errno == 2:
            raise NotFound(f"Could not find the file {path} in container {pod.record.name}") from exc
        raise
    return convert.path_stat(reply)


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


async def _archive_get(request: web.Request, pod: Pod, agent: AgentClient, path: str) -> web.StreamResponse:
    stat = await _stat(pod, agent, path)
    stream = pod.new_stream()
    channel = agent.open_process(stream)
    await agent.request("archive_get", container=pod.id[:12], process=stream, path=path)
    response = web.StreamResponse(
        headers={"Content-Type": "application/x-tar", "X-Docker-Container-Path-Stat": _stat_header(stat)}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    errors = bytearray()
    while (item := await channel.output.get()) is not None:
        kind, data, _ = item
        pod.consumed()
        if kind is FrameKind.STDERR:
            errors += data[:4096]
        else:
            await response.write(data)
    try:
        status = await channel.exit_status
    except AgentConnectionLost:
        status = -1
    if status != 0:
        # Too late for an error status: cut the connection so the client sees a broken archive.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


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
