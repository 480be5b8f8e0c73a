"""hyperd's REST API for pods (docs/hyperd-api.md): /v1/pods."""

from __future__ import annotations

from aiohttp import web

from hyper.api.body import read_json_body
from hyper.daemon.daemon import Daemon
from hyper.daemon.named_pods import PodOptions
from hyper.errors import InvalidArgument

PODS_DAEMON = web.AppKey("pods_daemon", Daemon)


def _daemon(request: web.Request) -> Daemon:
    return request.app[PODS_DAEMON]


def _options(body: dict[str, object]) -> PodOptions:
    def optional_int(key: str) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{key!r} must be an integer")
        return value

    hostname = body.get("hostname")
    network = body.get("network") or ""
    publish = body.get("publish") or []
    share = body.get("share") or []
    if not isinstance(share, list) or not all(isinstance(p, str) for p in share):
        raise InvalidArgument("'share' must be a list of strings")
    if hostname is not None and not isinstance(hostname, str):
        raise InvalidArgument("'hostname' must be a string")
    if not isinstance(network, str):
        raise InvalidArgument("'network' must be a string")
    if not isinstance(publish, list) or not all(isinstance(p, str) for p in publish):
        raise InvalidArgument("'publish' must be a list of strings")
    return PodOptions(
        hostname=hostname,
        memory_mib=optional_int("memory_mib"),
        cpus=optional_int("cpus"),
        network=network,
        publish=tuple(publish),
        share=tuple(share),
    )


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    unknown = sorted(
        set(body) - {"name", "labels", "hostname", "memory_mib", "cpus", "network", "publish", "share"}
    )
    if unknown:
        raise InvalidArgument(
            f"unknown field {unknown[0]!r} in the pod request", hint="see docs/hyperd-api.md"
        )
    name = body.get("name")
    labels = body.get("labels") or {}
    if name is not None and not isinstance(name, str):
        raise InvalidArgument("'name' must be a string")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("labels must map names to strings")
    record = _daemon(request).named_pods.create(name, _options(body), labels)
    return web.json_response({"id": record.id, "name": record.name}, status=201)


async def list_pods(request: web.Request) -> web.StreamResponse:
    pods = _daemon(request).named_pods
    return web.json_response([pods.describe(record) for record in pods.daemon.state.all_pods()])


async def inspect(request: web.Request) -> web.StreamResponse:
    pods = _daemon(request).named_pods
    return web.json_response(pods.describe(pods.find(request.match_info["ref"])))


async def start(request: web.Request) -> web.StreamResponse:
    started = await _daemon(request).named_pods.start(request.match_info["ref"])
    return web.json_response({"started": started})


async def stop(request: web.Request) -> web.StreamResponse:
    text = request.query.get("t")
    try:
        timeout = None if text is None else float(text)
    except ValueError:
        raise InvalidArgument(f"t={text!r} is not a number") from None
    await _daemon(request).named_pods.stop(request.match_info["ref"], timeout)
    return web.Response(status=204)


async def remove(request: web.Request) -> web.StreamResponse:
    force = request.query.get("force", "0").lower() in ("1", "true", "yes")
    await _daemon(request).named_pods.remove(request.match_info["ref"], force=force)
    return web.Response(status=204)


def add_routes(app: web.Application, daemon: Daemon) -> None:
    app[PODS_DAEMON] = daemon
    app.add_routes(
        [
            web.post("/v1/pods", create),
            web.get("/v1/pods", list_pods),
            web.get("/v1/pods/{ref}", inspect),
            web.post("/v1/pods/{ref}/start", start),
            web.post("/v1/pods/{ref}/stop", stop),
            web.delete("/v1/pods/{ref}", remove),
        ]
    )
