"""Docker Engine API: execs, processes started in a running container
(`docker exec`), created and started in Docker's two steps."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentRequestError
from hyper.agent.protocol import FrameKind
from hyper.api.docker import convert
from hyper.api.docker.common import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    STDERR,
    STDOUT,
    DetachScanner,
    Handler,
    Hijacked,
    container_of,
    daemon_of,
    frame,
    integer,
    json_body,
    parse_detach_keys,
    scope_of,
)
from hyper.daemon.execs import ExecSession, ExecState
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.runtime import spec as specs


async def exec_create(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    pod = container_of(request)
    body = await json_body(request)
    command = convert.strings(body.get("Cmd"), "Cmd")
    if not command:
        raise InvalidArgument("no exec command specified")
    if body.get("Privileged"):
        raise InvalidArgument("Hyper does not support privileged exec")
    process_doc = pod.record.process or {}
    env = specs.merge_env(tuple(process_doc.get("env", [])), convert.strings(body.get("Env"), "Env"), {})
    process = specs.ProcessSpec(
        args=command,
        env=env,
        cwd=convert.text(body.get("WorkingDir"), "WorkingDir") or process_doc.get("cwd") or "/",
        user=convert.text(body.get("User"), "User") or process_doc.get("user") or "0",
        tty=bool(body.get("Tty")),
        stdin=bool(body.get("AttachStdin")),
    )
    if not process.cwd.startswith("/"):
        raise InvalidArgument(f"the working directory {process.cwd!r} is not an absolute path")
    session = daemon.exec_create(pod, process)
    detach_keys = body.get("DetachKeys") or ""
    if not isinstance(detach_keys, str):
        raise InvalidArgument("DetachKeys must be a string such as ctrl-p,ctrl-q")
    parse_detach_keys(detach_keys or None)
    session.detach_keys = detach_keys
    return web.json_response({"Id": session.id}, status=201)


def _console_size(body: dict[str, Any]) -> tuple[int, int]:
    size = body.get("ConsoleSize")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return size[0], size[1]
    return 24, 80


def _exec(request: web.Request) -> ExecSession:
    exec_id = request.match_info["id"]
    try:
        return daemon_of(request).find_exec(exec_id, scope_of(request).owner)
    except NotFound:
        raise NotFound(f"No such exec instance: {exec_id}") from None


async def exec_start(request: web.Request) -> web.StreamResponse:
    session = _exec(request)
    body = await json_body(request)
    rows, cols = _console_size(body)
    if session.state is not ExecState.CREATED:
        raise FailedPrecondition(f"exec {session.id[:12]} has already been started")
    if body.get("Detach"):
        await session.start(rows, cols)
        session.drain_in_background()
        return web.Response(status=200)
    tty = session.process.tty
    conn = await Hijacked.accept(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    try:
        try:
            await session.start(rows, cols)
        except HyperError as exc:
            # Docker reports a failed exec in the stream; the client reads ExitCode (126/127).
            message = f"OCI runtime exec failed: unable to start container process: {exc.message}\r\n"
            await conn.write(message.encode() if tty else frame(STDOUT, message.encode()))
            return conn.response
        stdin_task = asyncio.create_task(_exec_stdin(session, conn)) if session.process.stdin else None
        try:
            async for kind, data in session.output():
                payload = data if tty else frame(STDERR if kind is FrameKind.STDERR else STDOUT, data)
                if not await conn.write(payload):
                    break
        finally:
            if stdin_task is not None:
                stdin_task.cancel()
    finally:
        await conn.close()
    return conn.response


async def _exec_stdin(session: ExecSession, conn: Hijacked) -> None:
    # Detach keys only on a terminal, as in Docker: in a pipe they are data.
    keys = parse_detach_keys(session.detach_keys or None) if session.process.tty else b""
    scanner = DetachScanner(keys)
    while data := await conn.read():
        forward, detach = scanner.feed(data)
        with contextlib.suppress(HyperError):
            if forward:
                await session.write_stdin(forward)
        if detach:
            await conn.close()
            return
    await session.close_stdin()


async def exec_resize(request: web.Request) -> web.StreamResponse:
    session = _exec(request)
    with contextlib.suppress(AgentRequestError):
        await session.resize(integer(request, "h", 0) or 0, integer(request, "w", 0) or 0)
    return web.Response(status=201)


async def exec_inspect(request: web.Request) -> web.StreamResponse:
    session = _exec(request)
    process = session.process
    return web.json_response(
        {
            "ID": session.id,
            "Running": session.state is ExecState.RUNNING,
            "ExitCode": session.exit_code,
            "ProcessConfig": {
                "tty": process.tty,
                "entrypoint": process.args[0],
                "arguments": list(process.args[1:]),
                "privileged": False,
                "user": process.user,
            },
            "OpenStdin": process.stdin,
            "OpenStderr": True,
            "OpenStdout": True,
            "CanRemove": False,
            "ContainerID": session.pod.id,
            "DetachKeys": "",
            "Pid": 0,
        }
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/containers/{id}/exec", exec_create),
    ("POST", "/exec/{id}/start", exec_start),
    ("POST", "/exec/{id}/resize", exec_resize),
    ("GET", "/exec/{id}/json", exec_inspect),
]
