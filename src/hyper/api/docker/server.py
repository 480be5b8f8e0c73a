"""The Docker Engine API app: versioned routes, Docker's error shape, and the
system endpoints (ping, version, info, events).

Every path is served bare and under `/v<version>`; versions from
MIN_API_VERSION to API_VERSION are accepted. A path Hyper does not implement
answers 501 naming it, never a silent wrong result.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time

from aiohttp import web

from hyper import __version__
from hyper.api.body import MAX_JSON_BODY, BodyTooLarge, refuse_at_once
from hyper.api.docker import archive, containers, execs, images, networks, system, volumes
from hyper.api.docker.common import (
    API_VERSION,
    DAEMON,
    MIN_API_VERSION,
    TENANTS,
    Handler,
    docker_error,
    error_response,
    filters,
    parse_time,
    scope_of,
    tenants_of,
    visible_pods,
)
from hyper.api.docker.labels import label_matches
from hyper.daemon.daemon import Daemon
from hyper.daemon.events import Event
from hyper.errors import HyperError
from hyper.runtime import spec as specs
from hyper.tenants.scope import ADMIN, Scope
from hyper.tenants.service import TenantService
from hyper.vm.accel import choose_accel, probe_host

Route = tuple[str, str, Handler]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


@web.middleware
async def docker_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    version = request.match_info.get("api_version")
    if version is not None:
        if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
            return docker_error(
                400,
                f"client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, "
                "please upgrade your client to a newer version",
            )
        if _version_tuple(version) > _version_tuple(API_VERSION):
            return docker_error(
                400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}"
            )
    try:
        response = await handler(request)
    except BodyTooLarge as exc:
        return await refuse_at_once(request, error_response(exc))
    except HyperError as exc:
        return error_response(exc)
    except ConnectionError:
        return _client_gone()
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        # "not supported" in the text lets `docker inspect NAME` skip object kinds Hyper lacks.
        return docker_error(
            501,
            f"Hyper does not implement {request.method} {request.path} of the Docker Engine API "
            f"(API {API_VERSION}), so it is not supported; see docs/docker-api.md for what it serves",
        )
    if not response.prepared:
        response.headers.setdefault("API-Version", API_VERSION)
    return response


def _client_gone() -> web.Response:
    """The answer to a client that went away mid-request: nobody reads it, and a
    client leaving (the docker CLI drops its waits) is no error for the log."""
    return web.Response(status=499)


def _headers() -> dict[str, str]:
    return {
        "API-Version": API_VERSION,
        "Docker-Experimental": "false",
        "OSType": "linux",
        "Server": f"hyperd/{__version__}",
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }


async def ping(request: web.Request) -> web.StreamResponse:
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, content_type="text/plain", headers=_headers())


def _host_os() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "Linux"


def _kernel() -> str:
    return platform.release()


def version_document() -> dict[str, object]:
    """GET /version. The docker CLI prints the Engine component's Details, so
    they repeat the top-level fields, as dockerd's do."""
    engine = {
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "Os": "linux",
        "Arch": "amd64" if platform.machine() == "x86_64" else platform.machine(),
        "KernelVersion": _kernel(),
        "BuildTime": "",
    }
    details = {key: value for key, value in engine.items() if key != "Version"} | {"Experimental": "false"}
    return {
        "Platform": {"Name": "Hyper (VM-isolated containers)"},
        "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
        **engine,
    }


async def version(request: web.Request) -> web.StreamResponse:
    return web.json_response(version_document(), headers=_headers())


async def info(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    states = [pod.status for pod in visible_pods(request)]
    running = sum(1 for s in states if s is specs.ContainerState.RUNNING)
    paused = sum(1 for s in states if s is specs.ContainerState.PAUSED)
    tenants = tenants_of(request)
    if tenants is None:
        image_count = len(await images.list_store_images(daemon))
    else:
        image_count = len(await asyncio.to_thread(tenants.image_view(scope_of(request)).images))
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    try:
        choice = choose_accel(daemon.settings.accel, probe_host(), daemon.settings.kernel_is_pvm)
        accel = f"{choice.accel.value}: {choice.reason}"
    except HyperError as exc:
        accel = f"unusable setting: {exc.message}"
    return web.json_response(
        {
            "ID": f"hyperd-{os.uname().nodename}",
            "Containers": len(states),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(states) - running - paused,
            "Images": image_count,
            "Driver": "erofs+overlay (one VM per container)",
            "DriverStatus": [["Isolation", "QEMU virtual machine per container"], ["Accelerator", accel]],
            "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": ["json-file"]},
            "MemoryLimit": True,
            "SwapLimit": False,
            "CpuCfsPeriod": False,
            "CpuCfsQuota": False,
            "CPUShares": False,
            "CPUSet": False,
            "PidsLimit": False,
            "IPv4Forwarding": False,
            "BridgeNfIptables": False,
            "BridgeNfIp6tables": False,
            "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")),
            "OomKillDisable": False,
            "NGoroutines": 0,
            "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "LoggingDriver": "json-file",
            "CgroupDriver": "none",
            "CgroupVersion": "",
            "NEventsListener": 0,
            "KernelVersion": _kernel(),
            "OperatingSystem": f"Hyper {__version__} on {_host_os()}",
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": platform.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": []},
            "NCPU": os.cpu_count() or 1,
            "MemTotal": mem_kib * 1024,
            "DockerRootDir": str(daemon.paths.state) if tenants is None else "",
            "Name": os.uname().nodename,
            "Labels": [],
            "ExperimentalBuild": False,
            "ServerVersion": __version__,
            "Runtimes": {"hyper": {"path": "qemu-system-x86_64"}},
            "DefaultRuntime": "hyper",
            "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": False},
            "LiveRestoreEnabled": True,
            "Isolation": "",
            "InitBinary": "",
            "SecurityOptions": ["name=vm-isolation"],
            "Warnings": [],
        },
        headers=_headers(),
    )


def _actor(event: Event, scope: Scope) -> str:
    """The event's actor as `scope` names it: a tenant's volume by the name it gave."""
    if event.type == "volume":
        return scope.shown_volume_name(event.actor_id) or event.actor_id
    return event.actor_id


def _event_document(event: Event, scope: Scope = ADMIN) -> dict[str, object]:
    doc: dict[str, object] = {
        "Type": event.type,
        "Action": event.action,
        "Actor": {"ID": _actor(event, scope), "Attributes": event.attributes},
        "scope": "local",
        "time": event.time_ns // 1_000_000_000,
        "timeNano": event.time_ns,
    }
    if event.type == "container":
        doc.update(status=event.action, id=event.actor_id, **{"from": event.attributes.get("image", "")})
    return doc


def _event_matches(event: Event, wanted: dict[str, list[str]], scope: Scope = ADMIN) -> bool:
    actor = _actor(event, scope)
    named = [actor, actor[:12], event.attributes.get("name", "")]  # Docker's fuzzy match of each type
    checks = {
        "type": [event.type],
        "event": [event.action, event.action.split(":")[0]],
        "container": named if event.type == "container" else [],
        "image": [event.attributes.get("image", "")],
        "volume": [actor] if event.type == "volume" else [],
        "network": named if event.type == "network" else [],
    }
    for key, values in wanted.items():
        have = checks.get(key)
        if have is None:
            if key == "label":
                if not all(label_matches(event.attributes, v) for v in values):
                    return False
                continue
            return False
        if not any(v in have for v in values):
            return False
    return True


async def events(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    wanted = filters(request)
    since, until = parse_time(request.query.get("since")), parse_time(request.query.get("until"))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    until_ns = None if until is None else int(until * 1e9)
    scope = scope_of(request)
    subscription = daemon.events.subscribe(since_ns=None if since is None else int(since * 1e9))
    try:
        transport = request.transport
        while not daemon.stopping.is_set() and transport is not None and not transport.is_closing():
            # The backlog (events since `since`) comes first, even when `until` is already past.
            wait = 1.0 if until is None else max(0.0, min(1.0, until - time.time()))
            event = await subscription.next(wait)
            if event is None:
                if subscription.ended or wait <= 0:
                    break  # past `until`, or fell behind
                continue
            if until_ns is not None and event.time_ns > until_ns:
                break
            if scope.sees(event.owner) and _event_matches(event, wanted, scope):
                await response.write(json.dumps(_event_document(event, scope)).encode() + b"\n")
    except ConnectionError:
        pass
    finally:
        subscription.close()
    return response


def _routes() -> list[Route]:
    return [
        ("GET", "/_ping", ping),
        ("HEAD", "/_ping", ping),
        ("GET", "/version", version),
        ("GET", "/info", info),
        ("GET", "/events", events),
        *containers.ROUTES,
        *execs.ROUTES,
        *archive.ROUTES,
        *images.ROUTES,
        *system.ROUTES,
        *networks.ROUTES,
        *volumes.ROUTES,
    ]


def make_docker_app(daemon: Daemon, tenants: TenantService | None = None) -> web.Application:
    """The Docker Engine API; with `tenants`, for tenants: every request through
    the tenant gate (authenticated, scoped, capped and audited) first."""
    from hyper.api.tenant_gate import tenant_gate

    # Bodies read whole are JSON, bounded; archives and image loads stream instead.
    middlewares = [docker_errors] if tenants is None else [tenant_gate, docker_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY)
    app[DAEMON] = daemon
    if tenants is not None:
        app[TENANTS] = tenants
    for method, path, handler in _routes():
        for prefix in ("", "/v{api_version:[0-9]+[.][0-9]+}"):
            app.router.add_route(method, prefix + path, handler)
    return app
