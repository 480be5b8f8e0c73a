"""Docker Engine API: containers and execs (create, start, attach, logs, exec, cp, …)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentConnectionLost, AgentRequestError
from hyper.agent.protocol import FrameKind
from hyper.api.docker import convert
from hyper.api.docker.common import (
    DAEMON,
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    STDERR,
    STDOUT,
    DetachScanner,
    Handler,
    Hijacked,
    filters,
    flag,
    frame,
    integer,
    json_body,
    parse_detach_keys,
    parse_time,
    rfc3339,
)
from hyper.daemon.daemon import Daemon
from hyper.daemon.execs import ExecSession, ExecState
from hyper.daemon.logs import LogRecord
from hyper.daemon.pods import Pod, parse_signal
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.image import ImageStore
from hyper.runtime import spec as specs
from hyper.runtime.run import ContainerExit

FOLLOW_POLL_SECONDS = 0.5


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def _pod(request: web.Request) -> Pod:
    return _daemon(request).find(request.match_info["id"])


# -- create, list, inspect ------------------------------------------------------
async def create(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    body = await json_body(request)
    create_request = convert.create_request(body, request.query.get("name"))
    image = create_request.options.image
    try:
        await asyncio.to_thread(ImageStore(daemon.paths.images).get, image)
    except NotFound:
        # The docker CLI pulls on a 404 that says so, then creates again.
        raise NotFound(f"No such image: {image}") from None
    pod = await daemon.create(create_request)
    return web.json_response({"Id": pod.id, "Warnings": []}, status=201)


async def list_containers(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    wanted = filters(request)
    records = [r for r in daemon.state.all() if r.id in daemon.pods]
    if not flag(request, "all") and "status" not in wanted:
        records = [r for r in records if r.state in ("running", "paused", "restarting")]
    records = [r for r in records if convert.matches_filters(r, wanted)]
    limit = integer(request, "limit", -1)
    if limit is not None and limit > 0:
        records = records[:limit]
    now = time.time()
    return web.json_response([convert.summary(r, now) for r in records])


async def inspect(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    pod = _pod(request)
    exec_ids = [key for key, session in daemon.execs.items() if session.pod is pod]
    log_path = str(pod.log.path) if pod.log is not None else ""
    return web.json_response(convert.inspect(pod.record, exec_ids, log_path))


# -- lifecycle --------------------------------------------------------------------
async def start(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    try:
        started = await pod.start()
    except ContainerExit as exc:
        raise FailedPrecondition(
            f"failed to create task for container: unable to start container process: {exc.message}"
        ) from exc
    return web.Response(status=204 if started else 304)


async def stop(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    if not pod.running and pod.status is not specs.ContainerState.RESTARTING:
        return web.Response(status=304)
    await pod.stop(float(integer(request, "t", 10) or 0))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.StreamResponse:
    await _pod(request).restart(float(integer(request, "t", 10) or 0))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    if not pod.running:
        raise FailedPrecondition(f"Container {pod.id} is not running")
    await pod.kill(parse_signal(request.query.get("signal") or "SIGKILL"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    condition = request.query.get("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise InvalidArgument(f"unknown wait condition {condition!r}")
    # Headers now, the body at the exit: the docker CLI starts the container
    # only once its wait has been answered this far.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    code = await pod.wait(condition)
    error = {"Message": pod.record.reason} if pod.record.reason else None
    await response.write(json.dumps({"StatusCode": code, "Error": error}).encode())
    await response.write_eof()
    return response


async def remove(request: web.Request) -> web.StreamResponse:
    if flag(request, "link"):
        raise InvalidArgument("Hyper has no container links to remove")
    await _daemon(request).remove(request.match_info["id"], force=flag(request, "force"))
    return web.Response(status=204)


async def pause(request: web.Request) -> web.StreamResponse:
    await _pod(request).pause()
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.StreamResponse:
    await _pod(request).unpause()
    return web.Response(status=204)


async def rename(request: web.Request) -> web.StreamResponse:
    _pod(request).rename(request.query.get("name", ""))
    return web.Response(status=204)


async def resize(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    rows, cols = integer(request, "h", 0) or 0, integer(request, "w", 0) or 0
    with contextlib.suppress(AgentRequestError):
        await pod.resize(rows, cols)
    return web.Response(status=200)


# -- output ------------------------------------------------------------------------
def _encode(record: LogRecord, tty: bool, timestamps: bool) -> bytes:
    data = record.data
    if timestamps:
        stamp = rfc3339(record.time).encode() + b" "
        data = b"".join(stamp + line for line in data.splitlines(keepends=True))
    if tty:
        return data
    return frame(STDERR if record.stream == "stderr" else STDOUT, data)


def _lines(records: list[LogRecord]) -> list[LogRecord]:
    """Records cut at newlines, so that `tail` counts lines as Docker does."""
    lines = []
    for record in records:
        for line in record.data.splitlines(keepends=True):
            lines.append(LogRecord(record.stream, record.time, line, record.offset))
    return lines


async def logs(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    want_out, want_err = flag(request, "stdout"), flag(request, "stderr")
    if not (want_out or want_err):
        raise InvalidArgument("you must choose at least one stream (stdout or stderr)")
    follow, timestamps = flag(request, "follow"), flag(request, "timestamps")
    since, until = parse_time(request.query.get("since")), parse_time(request.query.get("until"))
    tail_text = request.query.get("tail", "all")
    tail = None if tail_text in ("all", "") else int(tail_text) if tail_text.lstrip("-").isdigit() else None
    tty = bool(pod.record.options.get("tty"))

    def wanted(record: LogRecord) -> bool:
        if (record.stream == "stdout" and not want_out) or (record.stream == "stderr" and not want_err):
            return False
        return (since is None or record.time >= since) and (until is None or record.time <= until)

    response = web.StreamResponse(headers={"Content-Type": RAW_STREAM if tty else MULTIPLEXED_STREAM})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if pod.log is None:
        await response.write_eof()
        return response
    records, position = pod.log.read_from(0)
    shown = [r for r in _lines(records) if wanted(r)]
    if tail is not None:
        shown = shown[len(shown) - max(tail, 0) :] if tail > 0 else []
    try:
        for record in shown:
            await response.write(_encode(record, tty, timestamps))
        if follow:
            async for record in _follow(pod, position, stop_at_exit=False):
                if wanted(record):
                    await response.write(_encode(record, tty, timestamps))
    except ConnectionError:
        return response
    await response.write_eof()
    return response


async def _follow(pod: Pod, position: int, *, stop_at_exit: bool) -> AsyncIterator[LogRecord]:
    """The log from byte `position` on as it grows, until the container's current
    (or, before it starts, next) run ends."""
    assert pod.log is not None
    log = pod.log
    exits = pod.exit_count  # a run ends when this count moves
    while True:
        records, position = log.read_from(position)
        for record in records:
            yield record
        ended = pod.exit_count > exits or pod.removed.is_set()
        idle = not pod.running and not stop_at_exit
        if ended or idle:
            records, position = log.read_from(position)
            for record in records:
                yield record
            return
        await log.wait_for_more(FOLLOW_POLL_SECONDS)


async def attach(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    tty = bool(pod.record.options.get("tty"))
    want_stdin = flag(request, "stdin") and bool(pod.record.options.get("interactive"))
    want_out, want_err = flag(request, "stdout"), flag(request, "stderr")
    detach_keys = parse_detach_keys(request.query.get("detachKeys"))
    if pod.log is None:
        raise FailedPrecondition(f"container {pod.record.name} has no log to attach to")
    position = 0 if flag(request, "logs") else pod.log.size()
    conn = await Hijacked.accept(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    detached = asyncio.Event()
    stdin_task = asyncio.create_task(_attach_stdin(pod, conn, detach_keys, detached)) if want_stdin else None
    try:
        output = _follow(pod, position, stop_at_exit=flag(request, "stream", True))
        follow_task = asyncio.create_task(_copy_output(output, conn, tty, want_out, want_err))
        waiters = {follow_task, asyncio.create_task(detached.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in waiters:
            task.cancel()
    finally:
        if stdin_task is not None:
            stdin_task.cancel()
        await conn.close()
    return conn.response


async def _copy_output(
    records: AsyncIterator[LogRecord], conn: Hijacked, tty: bool, want_out: bool, want_err: bool
) -> None:
    async for record in records:
        wanted = (record.stream == "stdout" and want_out) or (record.stream == "stderr" and want_err)
        if wanted and not await conn.write(_encode(record, tty, False)):
            return


async def _attach_stdin(pod: Pod, conn: Hijacked, keys: bytes, detached: asyncio.Event) -> None:
    scanner = DetachScanner(keys)
    while data := await conn.read():
        forward, detach = scanner.feed(data)
        with contextlib.suppress(HyperError):
            if forward:
                await pod.write_stdin(forward)
        if detach:
            detached.set()
            return
    if pod.record.stdin_once:
        with contextlib.suppress(HyperError):
            await pod.close_stdin()


# -- exec --------------------------------------------------------------------------
async def exec_create(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    pod = _pod(request)
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


async def exec_start(request: web.Request) -> web.StreamResponse:
    session = _daemon(request).find_exec(request.match_info["id"])
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
    scanner = DetachScanner(parse_detach_keys(session.detach_keys or None))
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
    session = _daemon(request).find_exec(request.match_info["id"])
    with contextlib.suppress(AgentRequestError):
        await session.resize(integer(request, "h", 0) or 0, integer(request, "w", 0) or 0)
    return web.Response(status=201)


async def exec_inspect(request: web.Request) -> web.StreamResponse:
    session = _daemon(request).find_exec(request.match_info["id"])
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


# -- top, stats ----------------------------------------------------------------------
async def top(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    reply = await pod.running_agent().request("top", container=pod.id[:12])
    return web.json_response({"Titles": reply.get("titles", []), "Processes": reply.get("processes", [])})


def _host_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(v) for v in fields[:8]) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def _process_cpu_ns(pid: int | None) -> tuple[int, int]:
    """User and system CPU time of the VM's QEMU process, in ns."""
    if pid is None:
        return 0, 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0, 0
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


async def _stats_sample(pod: Pod) -> dict[str, Any]:
    agent = pod.running_agent()
    guest = await agent.request("stats")
    blocks = await pod.vm.block_stats() if pod.vm is not None else {}
    user_ns, system_ns = _process_cpu_ns(pod.record.qemu_pid)
    memory = guest.get("memory") or {}
    io = []
    for index, (name, figures) in enumerate(sorted(blocks.items())):
        del name
        for op, key in (("read", "read_bytes"), ("write", "write_bytes")):
            io.append({"major": 254, "minor": index * 16, "op": op, "value": figures[key]})
    guest_networks = guest.get("networks") or {}
    networks = {iface: {k: int(v) for k, v in figures.items()} for iface, figures in guest_networks.items()}
    return {
        "read": rfc3339(time.time()),
        "pids_stats": {"current": int(guest.get("pids", 0))},
        "num_procs": 0,
        "cpu_stats": {
            "cpu_usage": {
                "total_usage": user_ns + system_ns,
                "usage_in_kernelmode": system_ns,
                "usage_in_usermode": user_ns,
            },
            "system_cpu_usage": _host_cpu_ns(),
            "online_cpus": os.cpu_count() or 1,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": {
            "usage": int(memory.get("used", 0)),
            "limit": int(memory.get("total", 0)),
            "stats": {"cache": int(memory.get("cache", 0)), "available": int(memory.get("available", 0))},
        },
        "blkio_stats": {"io_service_bytes_recursive": io},
        "networks": networks,
        "name": f"/{pod.record.name}",
        "id": pod.id,
    }


async def stats(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    stream = flag(request, "stream", True) and not flag(request, "one-shot")
    empty_pre = {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": 0}
    if not stream:
        first = await _stats_sample(pod)
        if flag(request, "one-shot"):
            return web.json_response(first | {"precpu_stats": empty_pre, "preread": rfc3339(None)})
        await asyncio.sleep(1)
        second = await _stats_sample(pod)
        return web.json_response(second | {"precpu_stats": first["cpu_stats"], "preread": first["read"]})
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    previous: dict[str, Any] | None = None
    try:
        while pod.running:
            sample = await _stats_sample(pod)
            pre = previous or {"cpu_stats": empty_pre, "read": rfc3339(None)}
            document = sample | {"precpu_stats": pre["cpu_stats"], "preread": pre["read"]}
            await response.write(json.dumps(document).encode() + b"\n")
            previous = sample
            await asyncio.sleep(1)
    except (ConnectionError, HyperError):
        pass
    return response


# -- archive (docker cp) ---------------------------------------------------------------
def _archive_path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidArgument("the path parameter is required")
    return path if path.startswith("/") else f"/{path}"


async def _stat(pod: Pod, path: str) -> dict[str, Any]:
    try:
        reply = await pod.running_agent().request("archive_stat", container=pod.id[:12], path=path)
    except AgentRequestError as exc:
        if exc.errno == 2:
            raise NotFound(f"Could not find the file {path} in container {pod.record.name}") from exc
        raise
    return convert.path_stat(reply)


def _stat_header(stat: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(stat).encode()).decode()


async def archive_head(request: web.Request) -> web.StreamResponse:
    stat = await _stat(_pod(request), _archive_path(request))
    return web.Response(status=200, headers={"X-Docker-Container-Path-Stat": _stat_header(stat)})


async def archive_get(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    path = _archive_path(request)
    stat = await _stat(pod, path)
    agent = pod.running_agent()
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
    pod = _pod(request)
    path = _archive_path(request)
    agent = pod.running_agent()
    stream = pod.new_stream()
    channel = agent.open_process(stream)
    try:
        await agent.request("archive_put", container=pod.id[:12], process=stream, path=path)
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
    ("POST", "/containers/create", create),
    ("GET", "/containers/json", list_containers),
    ("GET", "/containers/{id}/json", inspect),
    ("POST", "/containers/{id}/start", start),
    ("POST", "/containers/{id}/stop", stop),
    ("POST", "/containers/{id}/restart", restart),
    ("POST", "/containers/{id}/kill", kill),
    ("POST", "/containers/{id}/wait", wait),
    ("DELETE", "/containers/{id}", remove),
    ("POST", "/containers/{id}/pause", pause),
    ("POST", "/containers/{id}/unpause", unpause),
    ("POST", "/containers/{id}/rename", rename),
    ("POST", "/containers/{id}/resize", resize),
    ("GET", "/containers/{id}/logs", logs),
    ("POST", "/containers/{id}/attach", attach),
    ("POST", "/containers/{id}/exec", exec_create),
    ("POST", "/exec/{id}/start", exec_start),
    ("POST", "/exec/{id}/resize", exec_resize),
    ("GET", "/exec/{id}/json", exec_inspect),
    ("GET", "/containers/{id}/top", top),
    ("GET", "/containers/{id}/stats", stats),
    ("HEAD", "/containers/{id}/archive", archive_head),
    ("GET", "/containers/{id}/archive", archive_get),
    ("PUT", "/containers/{id}/archive", archive_put),
]
