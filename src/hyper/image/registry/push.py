"""Pushing an image from the local store to a registry (`hyper push`).

Each blob (layers, then the config) is first asked for with HEAD and skipped
when the registry has it; failing that, it is mounted from another repository
of the same registry that the image is also tagged in (or that the caller
names), which copies nothing; failing that, it is uploaded, in one PUT or in
PATCH chunks. The manifest goes last, byte for byte as stored, so the digest
in the registry is the digest in the store.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from hyper.errors import DataLoss, InvalidArgument, Unavailable
from hyper.image.model import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    decode_json_object,
    parse_manifest,
)
from hyper.image.reference import Reference, parse_reference
from hyper.image.registry.auth import CredentialStore, repository_scope
from hyper.image.registry.client import RegistryClient, connect
from hyper.image.registry.progress import ProgressCallback, ProgressEvent, ignore_progress, short_id
from hyper.image.registry.pull import RegistryOptions
from hyper.image.store import ImageStore

MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_UPLOAD_PIECE = 1 << 20


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str
    size: int


def push_image(
    store: ImageStore,
    reference: str,
    *,
    progress: ProgressCallback | None = None,
    options: RegistryOptions | None = None,
    chunk_size: int | None = None,
    mount_from: Sequence[str] = (),
) -> PushResult:
    """Push the local image tagged `reference` to the registry that the name points at.

    `chunk_size` switches blobs larger than it to chunked uploads; `mount_from`
    names repositories (`host/path`) to try mounting blobs from.
    """
    ref = parse_reference(reference)
    if ref.digest is not None:
        raise InvalidArgument(
            f"cannot push to {reference!r}: give a tag, not a digest", hint="push NAME[:TAG]"
        )
    options = options or RegistryOptions()
    report = progress or ignore_progress
    image = store.get(str(ref))
    if image.manifest_digest is None:
        raise DataLoss(f"image {image.id} has no manifest in the store", hint="load or pull the image again")
    manifest_data = store.blobs.read_bytes(image.manifest_digest)
    manifest = parse_manifest(manifest_data, f"manifest {image.manifest_digest}")
    media_type = manifest_media_type(manifest_data, manifest.config)
    sources = mount_sources(ref, (*image.repo_tags, *mount_from))
    scopes = [repository_scope(ref.path, "pull", "push"), *(repository_scope(s, "pull") for s in sources)]
    settings = options.resolved_settings()
    credentials = (options.credentials or CredentialStore()).get(ref.domain)
    for client in connect(ref.domain, settings, credentials, for_push=True, **options.client_options()):
        report(ProgressEvent("", f"The push refers to repository [{ref.repository}]"))
        descriptors = [*manifest.layers, manifest.config]
        with concurrent.futures.ThreadPoolExecutor(
            max(1, options.concurrency), thread_name_prefix="push"
        ) as pool:
            futures = [
                pool.submit(
                    _push_blob,
                    client,
                    ref,
                    descriptor=descriptor,
                    path=store.blobs.path(descriptor.digest),
                    scopes=scopes,
                    sources=sources,
                    chunk_size=chunk_size,
                    report=report,
                )
                for descriptor in descriptors
            ]
            for future in futures:
                future.result()
        response = client.request(
            "PUT",
            f"/v2/{ref.path}/manifests/{ref.tag}",
            scopes=scopes,
            headers={"Content-Type": media_type},
            content=manifest_data,
            ok=(201, 200),
            what=f"upload of the manifest of {ref}",
        )
        answered = response.headers.get("docker-content-digest")
        if answered and answered != image.manifest_digest:
            raise DataLoss(
                f"registry {ref.domain} stored the manifest of {ref} as {answered}, "
                f"not {image.manifest_digest}",
                hint="the registry rewrote the manifest; report it to its operator",
            )
        return PushResult(str(ref), image.manifest_digest, len(manifest_data))
    raise Unavailable(f"no endpoint for registry {ref.domain}", hint="check the registry settings")


def manifest_media_type(data: bytes, config: Descriptor) -> str:
    declared = decode_json_object(data, "manifest").get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return MEDIA_DOCKER_MANIFEST if config.media_type == MEDIA_DOCKER_CONFIG else MEDIA_OCI_MANIFEST


def mount_sources(target: Reference, names: Sequence[str]) -> list[str]:
    """Repository paths on the target's registry, other than the target, to mount blobs from."""
    found: list[str] = []
    for name in names:
        try:
            other = parse_reference(name)
        except InvalidArgument:
            continue
        if other.domain == target.domain and other.path != target.path and other.path not in found:
            found.append(other.path)
    return found


def _push_blob(
    client: RegistryClient,
    ref: Reference,
    *,
    descriptor: Descriptor,
    path: Path,
    scopes: list[str],
    sources: Sequence[str],
    chunk_size: int | None,
    report: ProgressCallback,
) -> None:
    ident = short_id(descriptor.digest)
    blob_url = f"/v2/{ref.path}/blobs/{descriptor.digest}"
    head = client.request(
        "HEAD", blob_url, scopes=scopes, ok=(200, 404), what=f"check of blob {descriptor.digest}"
    )
    if head.status_code == 200:
        report(ProgressEvent(ident, "Layer already exists", descriptor.size, descriptor.size))
        return
    if not path.is_file():
        raise DataLoss(
            f"blob {descriptor.digest} is missing from the image store", hint="pull or load the image again"
        )
    location: str | None = None
    for source in sources:
        response = client.request(
            "POST",
            f"/v2/{ref.path}/blobs/uploads/",
            scopes=scopes,
            params={"mount": descriptor.digest, "from": source},
            ok=(201, 202),
            what=f"mount of blob {descriptor.digest} from {source}",
        )
        if response.status_code == 201:
            report(ProgressEvent(ident, f"Mounted from {source}", descriptor.size, descriptor.size))
            return
        location = _location(response, client)
        break
    attempts = 0
    while True:
        attempts += 1
        try:
            if location is None:
                response = client.request(
                    "POST",
                    f"/v2/{ref.path}/blobs/uploads/",
                    scopes=scopes,
                    ok=(202,),
                    what="start of an upload",
                )
                location = _location(response, client)
            _upload(
                client,
                location,
                descriptor=descriptor,
                path=path,
                scopes=scopes,
                chunk_size=chunk_size,
                report=report,
            )
            break
        except Unavailable:
            location = None
            if attempts >= client.attempts:
                raise
            report(ProgressEvent(ident, "Retrying"))
    report(ProgressEvent(ident, "Pushed", descriptor.size, descriptor.size))


def _upload(
    client: RegistryClient,
    location: str,
    *,
    descriptor: Descriptor,
    path: Path,
    scopes: list[str],
    chunk_size: int | None,
    report: ProgressCallback,
) -> None:
    ident = short_id(descriptor.digest)
    what = f"upload of blob {descriptor.digest}"
    octets = {"Content-Type": "application/octet-stream"}
    if chunk_size is None or descriptor.size <= chunk_size:
        client.request(
            "PUT",
            _with_digest(location, descriptor.digest),
            scopes=scopes,
            headers={**octets, "Content-Length": str(descriptor.size)},
            content=_read_pieces(path, 0, descriptor.size, ident, report),
            ok=(201,),
            what=what,
            retry_body=False,
        )
        return
    offset = 0
    with path.open("rb") as source:
        while offset < descriptor.size:
            piece = source.read(chunk_size)
            end = offset + len(piece) - 1
            response = client.request(
                "PATCH",
                location,
                scopes=scopes,
                headers={**octets, "Content-Range": f"{offset}-{end}", "Content-Length": str(len(piece))},
                content=piece,
                ok=(202,),
                what=what,
                retry_body=False,
            )
            location = _location(response, client)
            offset += len(piece)
            report(ProgressEvent(ident, "Pushing", offset, descriptor.size))
    client.request(
        "PUT",
        _with_digest(location, descriptor.digest),
        scopes=scopes,
        headers={"Content-Length": "0"},
        ok=(201,),
        what=what,
        retry_body=False,
    )


def _read_pieces(path: Path, start: int, size: int, ident: str, report: ProgressCallback) -> Iterator[bytes]:
    with path.open("rb") as source:
        source.seek(start)
        sent = 0
        while piece := source.read(_UPLOAD_PIECE):
            sent += len(piece)
            report(ProgressEvent(ident, "Pushing", sent, size))
            yield piece


def _location(response: httpx.Response, client: RegistryClient) -> str:
    location = response.headers.get("location")
    if not location:
        raise Unavailable(
            f"registry {client.name} started an upload without a Location",
            hint="the registry is not compliant",
        )
    return str(httpx.URL(client.url("/")).join(location))


def _with_digest(location: str, digest: str) -> str:
    return str(httpx.URL(location).copy_merge_params({"digest": digest}))
