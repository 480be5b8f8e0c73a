"""hyperd's own REST API (docs/hyperd-api.md) on aiohttp."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from hyper import __version__
from hyper.api import pods
from hyper.api.body import MAX_JSON_BODY, BodyTooLarge, read_json_body, refuse_at_once
from hyper.api.errors import error_body, http_status
from hyper.daemon.daemon import Daemon, create_request
from hyper.daemon.requests import parse_signal
from hyper.errors import HyperError, InvalidArgument, Unavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON = web.AppKey("daemon", Daemon)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BodyTooLarge as exc:
        return await refuse_at_once(request, web.json_response(error_body(exc), status=http_status(exc)))
    except HyperError as exc:
        return web.json_response(error_body(exc), status=http_status(exc))
    except ConnectionError:
        return web.Response(status=499)  # the client went away: nobody reads this, nothing to log


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


def _number(request: web.Request, name: str, default: float | None) -> float | None:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgument(f"{name}={text!r} is not a finite number")
    return value


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({"version": __version__, "pid": os.getpid()})


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    daemon = request.app[DAEMON]
    if body.get("start", True):
        pod = await daemon.run(create_request(body, daemon.settings))
    else:
        pod = await daemon.create(create_request(body, daemon.settings))
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
    await pod.stop(_number(request, "t", None))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    await pod.kill(parse_signal(request.query.get("signal", "SIGKILL")))
    return web.Response(status=204)


async def pool_status(request: web.Request) -> web.StreamResponse:
    """The pool of ready VMs: its bounds, what is ready, how many runs it served."""
    return web.json_response(request.app[DAEMON].pool.status())


async def wait(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    pod = daemon.find(request.match_info["ref"])
    waiting = asyncio.ensure_future(pod.wait(request.query.get("condition", "not-running")))
    stopping = asyncio.ensure_future(daemon.stopping.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not waiting.done():
            waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        raise Unavailable("hyperd is stopping", hint="wait again once it is back; the container runs on")
    return web.json_response({"exit_code": waiting.result()})


async def start(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    started = await pod.start()
    return web.Response(status=204 if started else 304)


async def restart(request: web.Request) -> web.StreamResponse:
    pod = request.app[DAEMON].find(request.match_info["ref"])
    await pod.restart(_number(request, "t", None))
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
    await request.app[DAEMON].remove(
        request.match_info["ref"], force=_flag(request, "force"), volumes=_flag(request, "v")
    )
    return web.Response(status=204)


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_JSON_BODY)
    app[DAEMON] = daemon
    app.add_routes(
        [
            web.get("/v1/ping", ping),
            web.get("/v1/pool", pool_status),
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
    pods.add_routes(app, daemon)
    return app
