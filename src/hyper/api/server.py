"""hyperd's own REST API (docs/hyperd-api.md) on aiohttp."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from hyper import __version__
from hyper.api.errors import HTTP_STATUS, error_body
from hyper.daemon.daemon import Daemon, create_request
from hyper.daemon.pods import parse_signal
from hyper.errors import HyperError, InvalidArgument

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON = web.AppKey("daemon", Daemon)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HyperError as exc:
        return web.json_response(error_body(exc), status=HTTP_STATUS[exc.category])


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


def _number(request: web.Request, name: str, default: float | None) -> float | None:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{name}={text!r} is not a number") from None


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({"version": __version__, "pid": os.getpid()})


async def create(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise InvalidArgument("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    daemon = request.app[DAEMON]
    if body.get("start", True):
        pod = await daemon.run(create_request(body))
    else:
        pod = await daemon.create(create_request(body))
    return web.json_response({"id": pod.id}, status=201)


async def list_containers(request: web.Request) -> web.StreamResponse:
    records = request.app[DAEMON].state.all()
    if not _flag(request, "all"):
        # As Docker's ps: paused and restarting containers are not stopped ones.
        records = [r for r in records if r.state in ("running", "paused", "restarting")]
    return web.json_response([r.public() for r in records])


async def inspect(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    return web.json_response(pod.record.public())


async def logs(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    tail = _number(request, "tail", None)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    since = _number(request, "since", None)
    if pod.log is not None:
        async for record in pod.log.read(
            tail=None if tail is None else int(tail), follow=_flag(request, "follow")
        ):
            if since is None or record.time >= since:
                await response.write((json.dumps(record.wire()) + "\n").encode())
    await response.write_eof()
    return response


async def stop(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    await pod.stop(_number(request, "t", 10.0) or 0.0)
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    await pod.kill(parse_signal(request.query.get("signal", "SIGKILL")))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    condition = request.query.get("condition", "not-running")
    return web.json_response({"exit_code": await pod.wait(condition)})


async def start(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    started = await pod.start()
    return web.Response(status=204 if started else 304)


async def restart(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    await pod.restart(_number(request, "t", 10.0) or 0.0)
    return web.Response(status=204)


async def pause(request: web.Request) -> web.StreamResponse:
    await request.app[DAEMON].find(request.match_info["ref"]).pause()
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.StreamResponse:
    await request.app[DAEMON].find(request.match_info["ref"]).unpause()
    return web.Response(status=204)


async def rename(request: web.Request) -> web.StreamResponse:
    request.app[DAEMON].find(request.match_info["ref"]).rename(request.query.get("name", ""))
    return web.Response(status=204)


async def remove(request: web.Request) -> web.StreamResponse:
    await request.app[DAEMON].remove(request.match_info["ref"], force=_flag(request, "force"))
    return web.Response(status=204)


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[errors_as_json])
    app[DAEMON] = daemon
    app.add_routes(
        [
            web.get("/v1/ping", ping),
            web.post("/v1/containers", create),
            web.get("/v1/containers", list_containers),
            web.get("/v1/containers/{ref}", inspect),
            web.get("/v1/containers/{ref}/logs", logs),
            web.post("/v1/containers/{ref}/stop", stop),
            web.post("/v1/containers/{ref}/kill", kill),
            web.post("/v1/containers/{ref}/wait", wait),
            web.post("/v1/containers/{ref}/start", start),
            web.post("/v1/containers/{ref}/restart", restart),
            web.post("/v1/containers/{ref}/pause", pause),
            web.post("/v1/containers/{ref}/unpause", unpause),
            web.post("/v1/containers/{ref}/rename", rename),
            web.delete("/v1/containers/{ref}", remove),
        ]
    )
    return app
