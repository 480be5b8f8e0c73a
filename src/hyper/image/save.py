"""Writing images to a tar archive (`hyper save`): docker-archive or OCI layout.

docker-archive is what `docker save` writes and `docker load`, `podman load`
and `skopeo` read: `manifest.json` naming each image's config and layers,
layers as uncompressed tars named by their diff ID (Docker 25's
`blobs/sha256/<hex>` paths). The OCI layout (`--format oci`) keeps the stored
manifests and blobs byte for byte, so digests survive, and names each image
with `io.containerd.image.name` (the full name) and
`org.opencontainers.image.ref.name` (the tag), as Docker 25 does.

The archive is written to a temporary file beside the output and renamed
into place, so a failed save leaves no half-written file behind.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hyper.errors import InvalidArgument, ResourceExhausted
from hyper.image.blobs import BlobStore, digest_hex, ingest_owner
from hyper.image.layers import is_gzip
from hyper.image.model import MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Image, canonical_json, decode_json_object
from hyper.image.reference import lookup_candidates, parse_reference
from hyper.image.store import ImageStore, familiar_name

FORMAT_DOCKER = "docker-archive"
FORMAT_OCI = "oci"
FORMATS = (FORMAT_DOCKER, FORMAT_OCI)
_MTIME = 0


def save_images(store: ImageStore, names: Sequence[str], output: Path, *, fmt: str = FORMAT_DOCKER) -> None:
    """Write the images `names` refer to into the archive `output`."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown archive format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if not names:
        raise InvalidArgument("no image to save", hint="name at least one image")
    chosen: list[tuple[Image, tuple[str, ...]]] = []
    for name in names:
        image = store.get(name)
        tags = _tags_for(name, image)
        for position, (seen, seen_tags) in enumerate(chosen):
            if seen.id == image.id:
                chosen[position] = (seen, tuple(dict.fromkeys((*seen_tags, *tags))))
                break
        else:
            chosen.append((image, tags))
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}-", dir=output.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            if fmt == FORMAT_DOCKER:
                _write_docker_archive(tar, store, chosen)
            else:
                _write_oci_layout(tar, store, chosen)
        os.chmod(name, 0o644)
        os.replace(name, output)
    except OSError as exc:
        Path(name).unlink(missing_ok=True)
        if exc.errno == 28:
            raise ResourceExhausted(f"no space left writing {output}", hint="free disk space") from exc
        raise
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _tags_for(name: str, image: Image) -> tuple[str, ...]:
    """The names to record: the tag `name` spells, else (an ID was given) all the image's tags."""
    try:
        candidates = lookup_candidates(name)
    except InvalidArgument:
        return image.repo_tags
    for candidate in candidates:
        if str(candidate) in image.repo_tags:
            return (str(candidate),)
    return image.repo_tags


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, _MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, _MTIME
    with path.open("rb") as source:
        tar.addfile(info, source)


def _add_directory(tar: tarfile.TarFile, name: str, written: set[str]) -> None:
    if name in written:
        return
    written.add(name)
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
    tar.addfile(info)


@contextmanager
def _uncompressed(blobs: BlobStore, digest: str) -> Iterator[Path]:
    """The layer blob as a plain tar: itself, or a decompressed copy in the ingest area."""
    path = blobs.path(digest)
    if not is_gzip(path):
        yield path
        return
    blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{ingest_owner(blobs.ingest_dir)}.save-"
    with tempfile.NamedTemporaryFile(prefix=prefix, dir=blobs.ingest_dir) as plain:
        with gzip.open(path, "rb") as compressed:
            shutil.copyfileobj(compressed, plain, 1 << 20)
        plain.flush()
        yield Path(plain.name)


def _write_docker_archive(
    tar: tarfile.TarFile, store: ImageStore, images: list[tuple[Image, tuple[str, ...]]]
) -> None:
    written: set[str] = set()
    entries = []
    repositories: dict[str, dict[str, str]] = {}
    _add_directory(tar, "blobs", written)
    _add_directory(tar, "blobs/sha256", written)
    for image, tags in images:
        config_name = f"blobs/sha256/{digest_hex(image.id)}"
        if config_name not in written:
            _add_file(tar, config_name, store.blobs.path(image.id))
            written.add(config_name)
        layer_names = []
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            name = f"blobs/sha256/{digest_hex(diff_id)}"
            if name not in written:
                with _uncompressed(store.blobs, layer) as plain:
                    _add_file(tar, name, plain)
                written.add(name)
            layer_names.append(name)
        familiar = [familiar_name(tag) for tag in tags]
        entries.append({"Config": config_name, "RepoTags": familiar, "Layers": layer_names})
        for tag in tags:
            reference = parse_reference(tag)
            repo = repositories.setdefault(reference.familiar_repository, {})
            repo[reference.tag or "latest"] = digest_hex(image.diff_ids[-1]) if image.diff_ids else ""
    _add_bytes(tar, "manifest.json", json.dumps(entries).encode())
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _write_oci_layout(
    tar: tarfile.TarFile, store: ImageStore, images: list[tuple[Image, tuple[str, ...]]]
) -> None:
    written: set[str] = set()
    descriptors = []
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _add_directory(tar, "blobs", written)
    _add_directory(tar, "blobs/sha256", written)

    def add_blob(digest: str) -> None:
        name = f"blobs/sha256/{digest_hex(digest)}"
        if name not in written:
            _add_file(tar, name, store.blobs.path(digest))
            written.add(name)

    for image, tags in images:
        assert image.manifest_digest is not None
        manifest_data = store.blobs.read_bytes(image.manifest_digest)
        media_type = decode_json_object(manifest_data, "manifest").get("mediaType") or MEDIA_OCI_MANIFEST
        for digest in (*image.layers, image.id, image.manifest_digest):
            add_blob(digest)
        base = {"mediaType": media_type, "digest": image.manifest_digest, "size": len(manifest_data)}
        for tag in tags or (None,):
            descriptor: dict[str, object] = dict(base)
            if tag is not None:
                reference = parse_reference(tag)
                descriptor["annotations"] = {
                    "io.containerd.image.name": tag,
                    "org.opencontainers.image.ref.name": reference.tag or "latest",
                }
            descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors}
    _add_bytes(tar, "index.json", canonical_json(index))
