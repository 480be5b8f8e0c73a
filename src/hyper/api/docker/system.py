"""Docker Engine API: disk usage (`docker system df`) and the build cache's prune
(volumes prune in hyper.api.docker.volumes, networks prune in hyper.api.docker.networks).

Sizes are what files take on disk (allocated blocks): a container's writable
disk and the layer disks are sparse files whose apparent size (10 GiB for a
writable disk) says nothing of their use. `docker system prune` prunes every
kind in turn and fails as a whole if one fails; Hyper does not build images,
so its build cache is always empty and answers as Docker's does when there is
nothing to prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from hyper.api.docker import convert, image_json
from hyper.api.docker.common import Handler, daemon_of, filters, scope_of, tenants_of, visible_pods
from hyper.daemon.state import ContainerRecord
from hyper.errors import InvalidArgument
from hyper.image import Image, ImageStore
from hyper.image.store import allocated_bytes
from hyper.storage.volumes import VolumeStore, directory_size

DF_TYPES = frozenset({"container", "image", "volume", "build-cache"})
PRUNE_FILTERS = {
    "networks": frozenset({"until", "label", "label!"}),
    "volumes": frozenset({"label", "label!", "all"}),
    "build cache": frozenset({"until", "id", "parent", "type", "description", "inuse", "shared", "private"}),
}


def check_prune_filters(kind: str, wanted: Mapping[str, Sequence[str]]) -> None:
    unknown = sorted(set(wanted) - PRUNE_FILTERS[kind])
    if unknown:
        raise InvalidArgument(
            f"invalid filter {unknown[0]!r} for pruning {kind}",
            hint=f"use {', '.join(sorted(PRUNE_FILTERS[kind]))}",
        )


async def prune_build_cache(request: web.Request) -> web.StreamResponse:
    """No build cache to prune: Hyper does not build images."""
    check_prune_filters("build cache", filters(request))
    return web.json_response({"CachesDeleted": [], "SpaceReclaimed": 0})


def image_usage_documents(
    images: Sequence[Image], usage: Mapping[str, Mapping[str, int]], users: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Each image's summary with its bytes on disk (`Size`), the part of them it
    shares with other images (`SharedSize`) and its containers (`Containers`)."""
    holders: dict[str, int] = {}
    for parts in usage.values():
        for key in parts:
            holders[key] = holders.get(key, 0) + 1
    documents = []
    for summary, image in zip(
        image_json.image_summaries(images, image_json.ImageFilters()), images, strict=True
    ):
        parts = usage.get(image.id, {})
        size = sum(parts.values())
        shared = sum(bytes_ for key, bytes_ in parts.items() if holders.get(key, 0) > 1)
        documents.append(
            summary
            | {"Size": size, "VirtualSize": size, "SharedSize": shared, "Containers": users.get(image.id, 0)}
        )
    return documents


def container_usage_document(
    record: ContainerRecord, size_rw: int, image_size: int, now: float
) -> dict[str, Any]:
    return convert.summary(record, now) | {"SizeRw": size_rw, "SizeRootFs": size_rw + image_size}


def _writable_bytes(container_dir: Path) -> int:
    """What a container's own files take: its writable disk and log, on disk."""
    total = 0
    for name in ("writable.ext4", "log.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            total += allocated_bytes(container_dir / name)
    return total


async def disk_usage(request: web.Request) -> web.StreamResponse:
    """GET /system/df: images, containers, volumes and build cache on disk (`type` selects)."""
    daemon = daemon_of(request)
    kinds = set(request.query.getall("type", [])) or set(DF_TYPES)
    unknown = sorted(kinds - DF_TYPES)
    if unknown:
        raise InvalidArgument(
            f"unknown type {unknown[0]!r}", hint="use container, image, volume or build-cache"
        )
    records = [pod.record for pod in visible_pods(request)]
    users: dict[str, int] = {}
    for record in records:
        users[record.image_id] = users.get(record.image_id, 0) + 1
    tenants = tenants_of(request)
    # A tenant's own image store (public images are the admin's, and take none of its room).
    scope = scope_of(request)
    store = tenants.image_view(scope).store if tenants else ImageStore(daemon.paths.images)

    def measure() -> tuple[int, list[Image], dict[str, dict[str, int]], dict[str, int], list[dict[str, Any]]]:
        images = store.images()
        usage = {image.id: store.image_usage(image) for image in images}
        writable = {r.id: _writable_bytes(daemon.paths.containers / r.id) for r in records}
        volumes = []
        if "volume" in kinds:
            with VolumeStore(daemon.paths.volumes, daemon.paths.containers) as volume_store:
                for volume in volume_store.all():
                    shown = scope.shown_volume_name(volume.name)  # a tenant's own only, by its names
                    if shown is not None:
                        used = (directory_size(volume.mountpoint), len(volume_store.users(volume.name)))
                        volumes.append({**volume.document(usage=used), "Name": shown})
        return store.disk_usage(), images, usage, writable, volumes

    layers_size, images, usage, writable, volumes = await asyncio.to_thread(measure)
    document: dict[str, Any] = {}
    if "image" in kinds:
        document["LayersSize"] = layers_size
        document["Images"] = image_usage_documents(images, usage, users)
    if "container" in kinds:
        now = time.time()
        image_sizes = {image_id: sum(parts.values()) for image_id, parts in usage.items()}
        document["Containers"] = [
            container_usage_document(r, writable.get(r.id, 0), image_sizes.get(r.image_id, 0), now)
            for r in records
        ]
    if "volume" in kinds:
        document["Volumes"] = volumes
    if "build-cache" in kinds:
        document["BuildCache"] = []
    return web.json_response(document)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/system/df", disk_usage),
    ("POST", "/build/prune", prune_build_cache),
]
