"""Docker Engine API: volumes (`docker volume create|ls|inspect|rm|prune`).

The handlers are thin over hyper.storage.volumes, the same local store the
`hyper volume` commands and foreground runs use, so a volume made by one
front end is every front end's. The store is SQLite: each request opens it
in a thread and closes it. Filters are Docker's, and one Docker does not
know for an endpoint is refused rather than ignored (a prune with a filter
it did not apply would remove what the user meant to keep).

A tenant (hyper.tenants) sees only its own volumes, by the names it gave:
the store keeps them as TENANT_ID.NAME (Scope.volume_name), and every
handler here maps names both ways, so another tenant's volume is "no such
volume" exactly as one that does not exist. A tenant's volume always has a
size (`--opt size=`, else its tenant's `volume-size`), charged to its
`volume-bytes` quota when it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from hyper.api.docker.common import Handler, daemon_of, filters, flag, json_body, scope_of, tenants_of
from hyper.api.docker.labels import label_matches
from hyper.api.docker.system import check_prune_filters
from hyper.daemon.events import volume_event
from hyper.errors import FailedPrecondition, InvalidArgument, NotFound
from hyper.storage.mounts import volume_size
from hyper.storage.volumes import Volume, VolumeStore, directory_size
from hyper.tenants.quotas import Claim
from hyper.tenants.scope import Scope

LIST_FILTERS = frozenset({"dangling", "driver", "label", "name"})
T = TypeVar("T")


def _boolean(values: Sequence[str], what: str) -> bool | None:
    """The last of a boolean filter's values (Docker's), or None when not given."""
    if not values:
        return None
    value = values[-1].lower()
    if value not in ("true", "1", "false", "0"):
        raise InvalidArgument(f"invalid filter '{what}={values[-1]}'", hint="use true or false")
    return value in ("true", "1")


def _check_filters(wanted: Mapping[str, Sequence[str]], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(wanted) - allowed)
    if unknown:
        raise InvalidArgument(
            f"invalid filter {unknown[0]!r} for {what}", hint=f"use {', '.join(sorted(allowed))}"
        )


def labels_match(volume: Volume, wanted: Mapping[str, Sequence[str]]) -> bool:
    """The `label` and `label!` filters."""
    labels = volume.labels
    return all(label_matches(labels, v) for v in wanted.get("label", ())) and not any(
        label_matches(labels, v) for v in wanted.get("label!", ())
    )


def list_matches(volume: Volume, in_use: bool, wanted: Mapping[str, Sequence[str]]) -> bool:
    """GET /volumes' filters: name (a substring), driver, label, dangling (used by no container)."""
    names = wanted.get("name", ())
    if names and not any(n in volume.name for n in names):
        return False
    drivers = wanted.get("driver", ())
    if drivers and "local" not in drivers:
        return False
    dangling = _boolean(wanted.get("dangling", ()), "dangling")
    if dangling is not None and dangling == in_use:
        return False
    return labels_match(volume, wanted)


async def _with_store(request: web.Request, work: Callable[[VolumeStore], T]) -> T:
    daemon = daemon_of(request)

    def run() -> T:
        with VolumeStore(daemon.paths.volumes, daemon.paths.containers) as store:
            return work(store)

    return await asyncio.to_thread(run)


def _mine(scope: Scope, store: VolumeStore) -> list[Volume]:
    return [v for v in store.all() if scope.shown_volume_name(v.name) is not None]


def _docker_not_found(name: str) -> NotFound:
    # Docker's words: the docker CLI's users and scripts match on them.
    return NotFound(f"get {name}: no such volume")


async def list_volumes(request: web.Request) -> web.StreamResponse:
    wanted = filters(request)
    _check_filters(wanted, LIST_FILTERS, "volumes")
    _boolean(wanted.get("dangling", ()), "dangling")

    scope = scope_of(request)

    def listing(store: VolumeStore) -> list[dict[str, Any]]:
        found = []
        for volume in _mine(scope, store):
            shown = dataclasses.replace(volume, name=scope.shown_volume_name(volume.name) or volume.name)
            if list_matches(shown, bool(store.users(volume.name)), wanted):
                found.append(shown.document())
        return found

    return web.json_response({"Volumes": await _with_store(request, listing), "Warnings": []})


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"{what} must map names to strings")
    return dict(value)


async def create_volume(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    name = body.get("Name") or None
    if name is not None and not isinstance(name, str):
        raise InvalidArgument("Name must be a string")
    driver = body.get("Driver")
    if driver is not None and not isinstance(driver, str):
        raise InvalidArgument("Driver must be a string")
    labels = _string_map(body.get("Labels"), "Labels")
    options = _string_map(body.get("DriverOpts"), "DriverOpts")
    if body.get("ClusterVolumeSpec"):
        raise InvalidArgument("cluster volumes are not supported", hint="Hyper has no swarm")

    scope = scope_of(request)
    tenants = tenants_of(request)
    # `docker volume create` without a name makes a named volume with a random
    # name (not an anonymous one, which a plain prune would take).
    chosen = name if name is not None else secrets.token_hex(32)
    stored = scope.volume_name(chosen)
    asked = volume_size(options)  # bad options refused before anything is made
    default = None if scope.principal is None else scope.principal.tenant.quotas.volume_size

    def create(store: VolumeStore) -> dict[str, Any]:
        made = store.create(stored, labels=labels, options=options, driver=driver, size=default)
        return {**made.document(), "Name": chosen}

    existed = await _with_store(request, lambda store: store.exists(stored))
    if tenants is None or scope.principal is None or existed:
        document = await _with_store(request, create)
    else:  # a tenant's new volume: its size charged to its volume-bytes quota, atomically
        async with tenants.admitted(scope, Claim(volume_bytes=asked or default or 0)):
            document = await _with_store(request, create)
    if not existed:
        _publish(request, "create", stored)
    return web.json_response(document, status=201)


def _publish(request: web.Request, action: str, stored: str) -> None:
    """Docker's volume event, the tenant's own (its request made it) or the admin's."""
    daemon_of(request).events.publish(volume_event(action, stored, scope_of(request).creator))


async def inspect_volume(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    scope = scope_of(request)

    def inspect(store: VolumeStore) -> dict[str, Any]:
        try:
            return {**store.get(scope.volume_name(name)).document(), "Name": name}
        except NotFound:
            raise _docker_not_found(name) from None

    return web.json_response(await _with_store(request, inspect))


async def remove_volume(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    force = flag(request, "force")
    stored = scope_of(request).volume_name(name)

    def remove(store: VolumeStore) -> None:
        try:
            store.get(stored)
        except NotFound:
            if force:
                return  # Docker: -f of a missing volume is not an error
            raise _docker_not_found(name) from None
        users = store.users(stored)  # a tenant's volume is only in its own containers
        if users:  # as Docker's, even with force: a running VM may be writing it
            raise FailedPrecondition(
                f"remove {name}: volume is in use - [{', '.join(users)}]",
                hint="remove those containers first",
            )
        store.remove(stored)
        removed.append(stored)

    removed: list[str] = []
    await _with_store(request, remove)
    for name in removed:
        _publish(request, "destroy", name)
    return web.Response(status=204)


async def prune_volumes(request: web.Request) -> web.StreamResponse:
    """Unused volumes: anonymous ones, or every one with `all=true` (Docker 23+)."""
    wanted = filters(request)
    check_prune_filters("volumes", wanted)
    every = bool(_boolean(wanted.get("all", ()), "all"))
    scope = scope_of(request)

    gone: list[str] = []

    def prune(store: VolumeStore) -> tuple[list[str], int]:
        removed, reclaimed = [], 0
        for volume in _mine(scope, store):
            if not (volume.anonymous or every) or store.users(volume.name):
                continue
            if not labels_match(volume, wanted):
                continue
            size = directory_size(volume.mountpoint)
            with contextlib.suppress(NotFound, FailedPrecondition):  # gone, or used meanwhile
                store.remove(volume.name)
                gone.append(volume.name)
                removed.append(scope.shown_volume_name(volume.name) or volume.name)
                reclaimed += size
        return removed, reclaimed

    removed, reclaimed = await _with_store(request, prune)
    for name in gone:
        _publish(request, "destroy", name)
    return web.json_response({"VolumesDeleted": removed or None, "SpaceReclaimed": reclaimed})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/volumes", list_volumes),
    ("POST", "/volumes/create", create_volume),
    ("POST", "/volumes/prune", prune_volumes),
    ("GET", "/volumes/{name}", inspect_volume),
    ("DELETE", "/volumes/{name}", remove_volume),
]
