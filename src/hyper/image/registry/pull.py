"""Pulling an image from a registry into the local store (`hyper pull`).

The manifest is resolved (an image index to the wanted platform), then the
config and every layer the store lacks are downloaded into the ingest area,
a few at a time, each verified by digest and size while it streams. A
layer's diff ID is checked when it is unpacked into a layer disk (or during the
pull with `RegistryOptions.verify_diff_ids`).
Blobs the store already has are pinned by hard links instead. Only when all
of it is verified is the image committed, blobs and index together under the
store lock, so a failed or interrupted pull leaves the store as it was and
two pulls of one image at once both succeed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hyper.errors import DataLoss, FailedPrecondition, HyperError, InvalidArgument, NotFound, Unavailable
from hyper.image.archive import StagedImage
from hyper.image.blobs import BlobStore, StagedBlob
from hyper.image.model import (
    INDEX_MEDIA_TYPES,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    Image,
    Manifest,
    ParsedConfig,
    decode_json_object,
    parse_config,
    parse_manifest,
)
from hyper.image.reference import Reference, parse_reference
from hyper.image.registry.auth import CredentialStore, repository_scope
from hyper.image.registry.client import RegistryClient, connect, iter_body
from hyper.image.registry.download import Downloaded, download_blob
from hyper.image.registry.hosts import RegistrySettings
from hyper.image.registry.platform import Platform, host_platform, platform_matches, select_manifest
from hyper.image.registry.progress import ProgressCallback, ProgressEvent, ignore_progress, short_id
from hyper.image.store import ImageStore

MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_CONCURRENCY = 3
MEDIA_DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
)
_REPUSH = "the image in the registry is damaged; push it again"


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: settings, credentials and client tuning."""

    settings: RegistrySettings | None = None
    credentials: CredentialStore | None = None
    attempts: int = 5
    backoff: float = 0.25
    timeout: float = 60.0
    concurrency: int = DEFAULT_CONCURRENCY
    # Decompress layers while they stream to check their diff IDs at once. Off by
    # default, as in containerd: `ImageStore.layer_disks` checks every diff ID when
    # it unpacks a layer, before any VM sees it, and the extra inflate pass made
    # pulls ~4x slower than skopeo's (bench/pull.py).
    verify_diff_ids: bool = False

    def resolved_settings(self) -> RegistrySettings:
        return self.settings or RegistrySettings.load()

    def client_options(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "backoff": self.backoff, "timeout": self.timeout}


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


def pull_image(
    store: ImageStore,
    reference: str,
    *,
    platform: Platform | None = None,
    progress: ProgressCallback | None = None,
    options: RegistryOptions | None = None,
) -> Image:
    """Pull `reference` (a tag or digest) for `platform` (default: the host's) into `store`."""
    ref = parse_reference(reference)
    options = options or RegistryOptions()
    settings = options.resolved_settings()
    credentials = (options.credentials or CredentialStore()).get(ref.domain)
    wanted = platform or host_platform()
    report = progress or ignore_progress
    store.blobs.clean_ingest()  # what a killed pull left behind
    last_error: HyperError | None = None
    for client in connect(ref.domain, settings, credentials, **options.client_options()):
        try:
            return _pull_from(client, store, ref, wanted=wanted, report=report, options=options)
        except (NotFound, Unavailable) as exc:
            if not client.endpoint.mirror:
                raise
            report(ProgressEvent("", f"Mirror {client.endpoint.url} failed ({exc.message}); trying the next"))
            last_error = exc
    raise last_error or Unavailable(
        f"no endpoint for registry {ref.domain}", hint="check the registry settings"
    )


def fetch_manifest(client: RegistryClient, path: str, target: str, scopes: Sequence[str]) -> FetchedManifest:
    """GET a manifest or index by tag or digest, bounded in size, its digest checked."""
    what = f"manifest {client.name}/{path}:{target}" if ":" not in target else f"manifest {path}@{target}"
    with client.stream(
        "GET",
        f"/v2/{path}/manifests/{target}",
        scopes=scopes,
        headers={"Accept": MANIFEST_ACCEPT},
        what=what,
    ) as response:
        chunks: list[bytes] = []
        size = 0
        for chunk in iter_body(response):
            size += len(chunk)
            if size > MAX_MANIFEST_SIZE:
                raise DataLoss(f"{what} is larger than {MAX_MANIFEST_SIZE} bytes", hint=_REPUSH)
            chunks.append(chunk)
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        header_digest = response.headers.get("docker-content-digest", "")
    data = b"".join(chunks)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    expected = target if target.startswith("sha256:") else header_digest
    if expected.startswith("sha256:") and expected != digest:
        raise DataLoss(f"{what} arrived with digest {digest}, expected {expected}", hint=_REPUSH)
    document = decode_json_object_or_fail(data, what)
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        media_type = declared
    elif "manifests" in document:
        media_type = MEDIA_OCI_INDEX
    return FetchedManifest(data, media_type, digest)


def decode_json_object_or_fail(data: bytes, what: str) -> dict[str, Any]:
    try:
        return decode_json_object(data, what)
    except DataLoss as exc:
        raise DataLoss(f"registry sent a malformed {what}: {exc.message}", hint=_REPUSH) from exc


def resolve_image_manifest(
    client: RegistryClient, ref: Reference, wanted: Platform, scopes: Sequence[str]
) -> FetchedManifest:
    """The image manifest `ref` names for `wanted`, going through an index if there is one."""
    target = ref.digest or ref.tag or "latest"
    fetched = fetch_manifest(client, ref.path, target, scopes)
    if fetched.media_type in INDEX_MEDIA_TYPES:
        document = decode_json_object_or_fail(fetched.data, f"index of {ref}")
        descriptor = select_manifest(document, wanted, f"the image index of {ref.familiar_repository}")
        fetched = fetch_manifest(client, ref.path, descriptor.digest, scopes)
        if fetched.media_type in INDEX_MEDIA_TYPES:
            raise FailedPrecondition(f"{ref}: nested image indexes are not supported", hint=_REPUSH)
    if fetched.media_type in MEDIA_DOCKER_SCHEMA1:
        raise FailedPrecondition(
            f"{ref} has a Docker schema 1 manifest, which is deprecated and not supported",
            hint="push the image again with a current Docker, podman or skopeo",
        )
    return fetched


def _parse_manifest(fetched: FetchedManifest, ref: Reference) -> Manifest:
    try:
        manifest = parse_manifest(fetched.data, f"manifest {fetched.digest}")
    except DataLoss as exc:
        raise DataLoss(f"registry sent a malformed manifest for {ref}: {exc.message}", hint=_REPUSH) from exc
    for layer in manifest.layers:
        if layer.media_type.endswith("+zstd"):
            raise FailedPrecondition(
                f"{ref} has zstd-compressed layers, which Hyper cannot unpack yet",
                hint="pull a variant with gzip layers, or push the image with gzip compression",
            )
    return manifest


def _pull_from(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    *,
    wanted: Platform,
    report: ProgressCallback,
    options: RegistryOptions,
) -> Image:
    scopes = [repository_scope(ref.path, "pull")]
    fetched = resolve_image_manifest(client, ref, wanted, scopes)
    manifest = _parse_manifest(fetched, ref)
    blobs = store.blobs
    staged: list[StagedBlob] = []
    try:
        staged.append(blobs.stage_bytes(fetched.data, what=f"manifest of {ref}"))
        config_blob = blobs.stage_existing(manifest.config.digest)
        if config_blob is None:
            config_blob = download_blob(
                client, ref.path, manifest.config, blobs, scopes=scopes, layer=False, progress=ignore_progress
            ).blob
        staged.append(config_blob)
        parsed = _read_config(config_blob, ref, wanted)
        if len(parsed.diff_ids) != len(manifest.layers):
            raise DataLoss(
                f"{ref}: the config lists {len(parsed.diff_ids)} layers, the manifest {len(manifest.layers)}",
                hint=_REPUSH,
            )
        layers = _fetch_layers(
            client,
            ref,
            layers=manifest.layers,
            diff_ids=parsed.diff_ids,
            blobs=blobs,
            scopes=scopes,
            report=report,
            concurrency=options.concurrency,
            verify_diff_ids=options.verify_diff_ids,
        )
        staged.extend(layers)
        image = StagedImage(
            config=config_blob,
            manifest=staged[0],
            layers=tuple(layers),
            parsed=parsed,
            repo_tags=(str(ref),) if ref.digest is None else (),
        )
        [committed] = store.add_staged([image])
    finally:
        for blob in staged:
            blobs.discard(blob)
    for layer in manifest.layers:
        report(ProgressEvent(short_id(layer.digest), "Pull complete"))
    return committed


def _read_config(blob: StagedBlob, ref: Reference, wanted: Platform) -> ParsedConfig:
    try:
        parsed = parse_config(blob.path.read_bytes(), f"config of {ref}")
    except DataLoss as exc:
        raise DataLoss(
            f"registry sent a malformed image config for {ref}: {exc.message}", hint=_REPUSH
        ) from exc
    if parsed.os and parsed.architecture:
        offered = Platform(parsed.os, parsed.architecture)
        if not platform_matches(Platform(wanted.os, wanted.architecture), offered):
            raise NotFound(
                f"{ref} is an image for {offered} only, not {wanted}",
                hint=f"pull it with --platform {offered} if that is what you want",
            )
    return parsed


def _fetch_layers(
    client: RegistryClient,
    ref: Reference,
    *,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    blobs: BlobStore,
    scopes: list[str],
    report: ProgressCallback,
    concurrency: int,
    verify_diff_ids: bool,
) -> list[StagedBlob]:
    """Every layer staged in order: present ones pinned, missing ones downloaded concurrently."""
    result: dict[int, StagedBlob] = {}
    missing: list[int] = []
    for position, layer in enumerate(layers):
        if layer.media_type and "layer" not in layer.media_type and "rootfs" not in layer.media_type:
            raise InvalidArgument(f"{ref}: unknown layer media type {layer.media_type!r}", hint=_REPUSH)
        existing = blobs.stage_existing(layer.digest)
        if existing is not None:
            result[position] = existing
            report(ProgressEvent(short_id(layer.digest), "Already exists", layer.size, layer.size))
        else:
            missing.append(position)
            report(ProgressEvent(short_id(layer.digest), "Pulling fs layer", 0, layer.size))
    cancelled = threading.Event()
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="pull") as pool:
            futures = {
                pool.submit(
                    download_blob,
                    client,
                    ref.path,
                    layers[position],
                    blobs,
                    scopes=scopes,
                    layer=verify_diff_ids,
                    progress=report,
                    cancelled=cancelled,
                ): position
                for position in missing
            }
            try:
                for future in concurrent.futures.as_completed(futures):
                    position = futures[future]
                    downloaded: Downloaded = future.result()
                    result[position] = downloaded.blob
                    if downloaded.diff_id is not None and downloaded.diff_id != diff_ids[position]:
                        raise DataLoss(
                            f"{ref}: layer {layers[position].digest} unpacks to {downloaded.diff_id}, "
                            f"but the image config says {diff_ids[position]}",
                            hint=_REPUSH,
                        )
            except BaseException:
                cancelled.set()
                for other in futures:
                    other.cancel()
                concurrent.futures.wait(futures)
                for other in futures:
                    if other.done() and not other.cancelled() and other.exception() is None:
                        blobs.discard(other.result().blob)
                raise
    except BaseException:
        for blob in result.values():
            blobs.discard(blob)
        raise
    return [result[position] for position in range(len(layers))]
