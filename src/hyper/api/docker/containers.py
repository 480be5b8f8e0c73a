"""Docker Engine API: containers (create, list, inspect, lifecycle, logs,
attach, top, stats). Execs are in `execs`, `docker cp` in `archive`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentRequestError
from hyper.api.docker import convert, networks
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
    filters,
    find_container,
    flag,
    frame,
    integer,
    json_body,
    parse_detach_keys,
    parse_time,
    rfc3339,
    scope_of,
    tenants_of,
)
from hyper.daemon.logs import LogRecord, split_lines
from hyper.daemon.pod_requests import process_cpu_ns
from hyper.daemon.pods import Pod
from hyper.daemon.requests import parse_signal
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.image import ImageStore
from hyper.image.registry.platform import image_platform, parse_platform, platform_matches, require_runnable
from hyper.runtime import spec as specs
from hyper.runtime.run import ContainerExit
from hyper.tenants.scope import Scope
from hyper.tenants.service import claim_of

FOLLOW_POLL_SECONDS = 0.5


# -- create, list, inspect ------------------------------------------------------
async def create(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    scope = scope_of(request)
    tenants = tenants_of(request)
    body = await json_body(request)
    create_request = convert.create_request(body, request.query.get("name"), daemon.settings)
    if tenants is not None:
        create_request = tenants.confine(scope, create_request)  # its owner, no host paths
    image = create_request.options.image
    wanted = parse_platform(request.query["platform"]) if request.query.get("platform") else None
    if wanted is not None:
        require_runnable(wanted)
    try:
        if tenants is not None:  # a public image is linked into the tenant's own store
            found = await asyncio.to_thread(tenants.image_view(scope).localize, image)
        else:
            found = await asyncio.to_thread(ImageStore(daemon.paths.images).get, image)
    except NotFound:
        # The docker CLI pulls on a 404 that says so, then creates again.
        raise NotFound(f"No such image: {image}") from None
    have = image_platform(found.os, found.architecture)
    if wanted is not None and have is not None and not platform_matches(wanted, have):
        # Docker's 404: the docker CLI pulls the platform asked for, then creates again.
        raise NotFound(
            f"image with reference {image} was found but does not match the specified platform: "
            f"wanted {wanted}, actual: {have}"
        )
    if tenants is None:
        pod = await daemon.create(create_request)
    else:
        # Its volumes sized (the image's VOLUME paths too), their bytes charged.
        create_request, volume_bytes = await asyncio.to_thread(
            tenants.size_volumes, scope, create_request, found.config.volumes
        )
        claim = dataclasses.replace(
            claim_of(create_request.options, found.config.exposed_ports), volume_bytes=volume_bytes
        )
        async with tenants.admitted(scope, claim):  # its quotas, atomically
            pod = await daemon.create(create_request)
    return web.json_response({"Id": pod.id, "Warnings": []}, status=201)


def _mounts_shown(scope: Scope, options: dict[str, Any], volumes_root: Path) -> list[dict[str, Any]]:
    """Inspect's and list's `Mounts`, a tenant's volumes by the names it gave them."""
    documents = convert.mount_documents(options, volumes_root)
    for document in documents:
        if document.get("Name"):
            document["Name"] = scope.shown_volume_name(document["Name"]) or document["Name"]
    return documents


async def list_containers(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    wanted = filters(request)
    scope = scope_of(request)
    if "volume" in wanted:  # a tenant's volumes by the names it gave (a destination is a path)
        wanted["volume"] = [v if v.startswith("/") else scope.volume_name(v) for v in wanted["volume"]]
    records = [r for r in daemon.state.all() if r.id in daemon.pods and scope.sees(r.owner)]
    if not flag(request, "all") and "status" not in wanted:
        records = [r for r in records if r.state in ("running", "paused", "restarting")]
    records = [r for r in records if convert.matches_filters(r, wanted)]
    limit = integer(request, "limit", -1)
    if limit is not None and limit > 0:
        records = records[:limit]
    now = time.time()
    summaries = []
    for record in records:
        summary = convert.summary(record, now)
        view = networks.container_network(daemon.network, record.id, record.options)
        summary["Ports"] = networks.summary_ports(daemon.network.publications(record.id))
        summary["HostConfig"] = {"NetworkMode": view["host_config"]["NetworkMode"]}
        summary["NetworkSettings"] = {"Networks": view["settings"]["Networks"]}
        summary["Mounts"] = _mounts_shown(scope, record.options, daemon.paths.volumes)
        summaries.append(summary)
    return web.json_response(summaries)


async def inspect(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    pod = container_of(request)
    exec_ids = [key for key, session in daemon.execs.items() if session.pod is pod]
    log_path = str(pod.log.path) if pod.log is not None else ""
    try:
        images = ImageStore(daemon.paths.scoped(pod.record.owner).images)
        image = await asyncio.to_thread(images.get, pod.record.image_id)
    except NotFound:
        image_config = None  # removed since: inspect still answers, from the record alone
    else:
        image_config = image.config
    document = convert.inspect(pod.record, exec_ids, log_path, image_config)
    document["Mounts"] = _mounts_shown(scope_of(request), pod.record.options, daemon.paths.volumes)
    view = networks.container_network(daemon.network, pod.id, pod.record.options)
    document["HostConfig"].update(view["host_config"])
    document["NetworkSettings"] = view["settings"]
    return web.json_response(document)


# -- lifecycle --------------------------------------------------------------------
def start_failure_message(message: str) -> str:
    """Docker's words for a command that cannot start. The docker CLI picks its exit
    status by this text (127 for "executable file not found" or "no such file or
    directory", 126 for "permission denied" or "is a directory"), so the shape is kept."""
    return (
        "failed to create task for container: failed to create shim task: OCI runtime create failed: "
        f"hyper create failed: unable to start container process: {message}: unknown"
    )


async def start(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    pod = container_of(request)
    tenants = tenants_of(request)
    if tenants is not None and not pod.running:
        tenants.admit_boot(scope_of(request))  # its boots-per-minute
    try:
        started = await pod.start()
    except ContainerExit as exc:
        if pod.record.auto_remove:
            # As dockerd does: `docker run --rm` waits for the removal even when the start fails.
            with contextlib.suppress(HyperError):
                await daemon.remove(pod.id, force=True)
        raise InvalidArgument(start_failure_message(exc.message)) from exc
    return web.Response(status=204 if started else 304)


async def stop(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    if not pod.running and pod.status is not specs.ContainerState.RESTARTING:
        return web.Response(status=304)
    await pod.stop(*_stop_options(request))
    return web.Response(status=204)


def _stop_options(request: web.Request) -> tuple[float | None, int | None]:
    """`t` (seconds before SIGKILL; absent: the container's StopTimeout, else 10)
    and `signal` (absent: the container's StopSignal, else SIGTERM)."""
    timeout = integer(request, "t")
    signal = request.query.get("signal")
    return None if timeout is None else float(timeout), parse_signal(signal) if signal else None


async def restart(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    tenants = tenants_of(request)
    if tenants is not None:
        tenants.admit_boot(scope_of(request))  # a restart boots a new VM
    await pod.restart(*_stop_options(request))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    if not pod.running:
        ref = request.match_info["id"]
        raise FailedPrecondition(f"Cannot kill container: {ref}: Container {pod.id} is not running")
    await pod.kill(parse_signal(request.query.get("signal") or "SIGKILL"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    condition = request.query.get("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise InvalidArgument(f"unknown wait condition {condition!r}")
    # Headers now, the body at the exit: the docker CLI starts the container
    # only once its wait has been answered this far.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    waiting = asyncio.create_task(pod.wait(condition))
    # A container removed meanwhile will not exit again: its last exit answers.
    removal = asyncio.create_task(pod.removed.wait())
    # A client that went away (the docker CLI leaves its waits behind) or a
    # stopping hyperd ends the wait with no answer.
    abandoned = asyncio.create_task(_until_gone(request))
    stopping = asyncio.create_task(daemon_of(request).stopping.wait())
    try:
        await asyncio.wait({waiting, removal, abandoned, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, removal, abandoned, stopping):
            task.cancel()
    if not (waiting.done() or removal.done()):
        return response
    code = pod.record.exit_code or 0
    # An OOM kill is the container's own exit (State.OOMKilled), not an error of the wait.
    error = {"Message": pod.record.reason} if pod.record.reason and not pod.record.oom_killed else None
    with contextlib.suppress(ConnectionError):
        await response.write(json.dumps({"StatusCode": code, "Error": error}).encode())
        await response.write_eof()
    return response


async def remove(request: web.Request) -> web.StreamResponse:
    if flag(request, "link"):
        raise InvalidArgument("Hyper has no container links to remove")
    daemon = daemon_of(request)
    await daemon.remove(
        find_container(daemon, request.match_info["id"], scope_of(request)).id,
        force=flag(request, "force"),
        volumes=flag(request, "v"),
    )
    return web.Response(status=204)


async def prune(request: web.Request) -> web.StreamResponse:
    """POST /containers/prune: remove every stopped container (filters: until, label)."""
    daemon = daemon_of(request)
    wanted = filters(request)
    unknown = set(wanted) - {"until", "label"}
    if unknown:
        raise InvalidArgument(
            f"invalid filter {sorted(unknown)[0]!r} for pruning containers", hint="use until or label"
        )
    until = parse_time(wanted["until"][-1]) if wanted.get("until") else None
    labels = {"label": wanted["label"]} if wanted.get("label") else {}
    deleted = []
    scope = scope_of(request)
    for record in daemon.state.all():
        if not scope.sees(record.owner):
            continue
        stopped = record.state in (specs.ContainerState.EXITED.value, specs.ContainerState.CREATED.value)
        if record.id not in daemon.pods or not stopped or not convert.matches_filters(record, labels):
            continue
        if until is not None and record.created >= until:
            continue
        with contextlib.suppress(NotFound, FailedPrecondition):  # gone or started meanwhile
            await daemon.remove(record.id, force=False)
            deleted.append(record.id)
    return web.json_response({"ContainersDeleted": deleted or None, "SpaceReclaimed": 0})


async def pause(request: web.Request) -> web.StreamResponse:
    await container_of(request).pause()
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.StreamResponse:
    await container_of(request).unpause()
    return web.Response(status=204)


async def rename(request: web.Request) -> web.StreamResponse:
    container_of(request).rename(request.query.get("name", ""))
    return web.Response(status=204)


async def resize(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
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


async def logs(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
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
    shown = [r for r in split_lines(records) if wanted(r)]
    if tail is not None:
        shown = shown[len(shown) - max(tail, 0) :] if tail > 0 else []
    try:
        for record in shown:
            await response.write(_encode(record, tty, timestamps))
        if follow:
            async for record in _follow(pod, position, stop_at_exit=False, client_gone=_gone(request)):
                if wanted(record):
                    await response.write(_encode(record, tty, timestamps))
    except ConnectionError:
        return response
    await response.write_eof()
    return response


def _gone(request: web.Request) -> Callable[[], bool]:
    """Whether the client of `request` has gone: a silent container gives no
    write to fail, and aiohttp does not cancel the handler."""
    return lambda: request.transport is None or request.transport.is_closing()


async def _until_gone(request: web.Request) -> None:
    """Returns once the client of `request` has gone."""
    gone = _gone(request)
    while not gone():
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


async def _follow(
    pod: Pod, position: int, *, stop_at_exit: bool, client_gone: Callable[[], bool] = lambda: False
) -> AsyncIterator[LogRecord]:
    """The log from byte `position` on as it grows, until the container's current
    (or, before it starts, next) run ends, or the client goes."""
    assert pod.log is not None
    log = pod.log
    exits = pod.exit_count  # a run ends when this count moves
    while True:
        records, position = log.read_from(position)
        for record in records:
            yield record
        ended = pod.exit_count > exits or pod.removed.is_set() or client_gone()
        idle = not pod.running and not stop_at_exit
        if ended or idle:
            records, position = log.read_from(position)
            for record in records:
                yield record
            return
        await log.wait_for_more(FOLLOW_POLL_SECONDS)


async def attach(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    tty = bool(pod.record.options.get("tty"))
    want_stdin = flag(request, "stdin") and bool(pod.record.options.get("interactive"))
    want_out, want_err = flag(request, "stdout"), flag(request, "stderr")
    # As in Docker, detach keys are looked for only on a terminal: in a pipe
    # they are data (a binary input holds ctrl-p ctrl-q sooner or later).
    detach_keys = parse_detach_keys(request.query.get("detachKeys")) if tty else b""
    if pod.log is None:
        raise FailedPrecondition(f"container {pod.record.name} has no log to attach to")
    position = 0 if flag(request, "logs") else pod.log.size()
    conn = await Hijacked.accept(request, RAW_STREAM if tty else MULTIPLEXED_STREAM)
    detached = asyncio.Event()
    stdin_task = asyncio.create_task(_attach_stdin(pod, conn, detach_keys, detached)) if want_stdin else None
    try:
        output = _follow(pod, position, stop_at_exit=flag(request, "stream", True))
        follow_task = asyncio.create_task(_copy_output(output, conn, tty, want_out, want_err))
        # A client that went away ends the attach too, though the container may stay silent.
        waiters = {follow_task, asyncio.create_task(detached.wait()), asyncio.create_task(conn.gone())}
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
        if forward:
            await _until_running(pod)
            with contextlib.suppress(HyperError):
                await pod.write_stdin(forward)
        if detach:
            detached.set()
            return
    if pod.record.stdin_once:
        await _until_running(pod)
        with contextlib.suppress(HyperError):
            await pod.close_stdin()


async def _until_running(pod: Pod) -> None:
    """Wait for the container's process to run. `docker run -i` attaches, and
    may send all of its input and its EOF, before it starts the container;
    Docker holds that input in the container's stdin until the process reads it."""
    subscription = pod.events.subscribe()
    try:
        while pod.status is not specs.ContainerState.RUNNING or pod.agent is None:
            # The start event wakes this; the timeout only re-checks the state.
            await subscription.next(FOLLOW_POLL_SECONDS)
    finally:
        subscription.close()


# -- top, stats ----------------------------------------------------------------------
async def top(request: web.Request) -> web.StreamResponse:
    pod = container_of(request)
    ps_args = request.query.get("ps_args") or "-ef"
    if ps_args != "-ef":
        raise InvalidArgument(
            f"Hyper's top does not take ps options ({ps_args!r})",
            hint="its columns are UID, PID, PPID, STAT, TIME and CMD; leave the options out",
        )
    reply = await pod.running_agent().request("top", container=pod.id[:12])
    return web.json_response({"Titles": reply.get("titles", []), "Processes": reply.get("processes", [])})


def _host_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(v) for v in fields[:8]) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


async def _stats_sample(pod: Pod) -> dict[str, Any]:
    if pod.status is specs.ContainerState.PAUSED:
        # A paused guest cannot answer: its memory, processes and CPU time are
        # as they were at the pause, as Docker shows a frozen container's.
        guest = pod.figures_at_pause
        frozen_cpu = guest.get("qemu_cpu_ns")
    else:
        guest = await pod.running_agent().request("stats")
        frozen_cpu = None
    blocks = await pod.vm.block_stats() if pod.vm is not None else {}
    if isinstance(frozen_cpu, list) and len(frozen_cpu) == 2:
        user_ns, system_ns = int(frozen_cpu[0]), int(frozen_cpu[1])
    else:  # running, or paused by a hyperd that kept no CPU time
        user_ns, system_ns = process_cpu_ns(pod.record.qemu_pid)
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
    pod = container_of(request)
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


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/containers/create", create),
    ("GET", "/containers/json", list_containers),
    ("POST", "/containers/prune", prune),
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
    ("GET", "/containers/{id}/top", top),
    ("GET", "/containers/{id}/stats", stats),
]
