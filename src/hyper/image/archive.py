"""Reading image archives: `docker save` (docker-archive) and OCI image layouts in a tar.

Both formats are detected by their contents (`manifest.json` or `index.json`), the
tar may be gzip-compressed. Every blob is staged into the store's ingest area and
verified (digest, size, and for layers the uncompressed digest against the config's
`rootfs.diff_ids`) before anything is committed; on any error everything staged is
discarded, so a bad archive leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from hyper.image.blobs import BlobStore, StagedBlob, ingest_owner
from hyper.image.layers import GZIP_MAGIC, LayerInfo, inspect_layer
from hyper.image.model import (
    INDEX_MEDIA_TYPES,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    Descriptor,
    Manifest,
    ParsedConfig,
    decode_json_object,
    host_architecture,
    manifest_blob,
    parse_config,
    parse_descriptor,
    parse_manifest,
)
from hyper.image.reference import parse_reference

_REEXPORT = "the archive is incomplete or corrupt; export it again (docker save / skopeo copy)"
_BLOB_MEMBER = re.compile(r"blobs/sha256/([a-f0-9]{64})")
_LEGACY_CONFIG = re.compile(r"([a-f0-9]{64})\.json")
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class StagedImage:
    """One image of an archive, verified and waiting in the ingest area."""

    config: StagedBlob
    manifest: StagedBlob
    layers: tuple[StagedBlob, ...]
    parsed: ParsedConfig
    repo_tags: tuple[str, ...]

    @property
    def blobs(self) -> tuple[StagedBlob, ...]:
        return (self.config, self.manifest, *self.layers)


class _Reader:
    """Looks up members of an open archive and stages them as blobs."""

    def __init__(self, archive: tarfile.TarFile, source: Path, blobs: BlobStore) -> None:
        self.archive = archive
        self.source = source
        self.blobs = blobs
        self.members = {_normalize(m.name): m for m in archive.getmembers()}
        self.staged: list[StagedBlob] = []
        self._layers: dict[str, tuple[StagedBlob, LayerInfo]] = {}

    def has(self, name: str) -> bool:
        return name in self.members

    def stage(self, name: str, *, digest: str | None = None, size: int | None = None) -> StagedBlob:
        member = self.members.get(name)
        stream = self.archive.extractfile(member) if member is not None else None
        if stream is None:
            raise DataLoss(f"{self.source} has no file {name!r}", hint=_REEXPORT)
        try:
            with stream:
                staged = self.blobs.stage(
                    stream,  # type: ignore[arg-type]
                    expected_digest=digest,
                    expected_size=size,
                    what=f"{name!r} in {self.source}",
                )
        except (tarfile.TarError, EOFError) as exc:
            raise DataLoss(f"{self.source} is truncated or corrupt: {exc}", hint=_REEXPORT) from exc
        self.staged.append(staged)
        return staged

    def read_json(self, name: str) -> Any:
        staged = self.stage(name)
        return decode_json_object_or_list(staged.path.read_bytes(), f"{name} in {self.source}")

    def stage_layer(
        self, name: str, *, digest: str | None = None, size: int | None = None
    ) -> tuple[StagedBlob, LayerInfo]:
        if name not in self._layers:
            staged = self.stage(name, digest=digest, size=size)
            self._layers[name] = (staged, inspect_layer(staged.path, f"layer {name!r}"))
        return self._layers[name]

    def discard_all(self) -> None:
        for staged in self.staged:
            self.blobs.discard(staged)


def read_archive(path: Path, blobs: BlobStore) -> list[StagedImage]:
    """Stage every image in the archive at `path`; the caller commits or discards them."""
    if not path.is_file():
        raise NotFound(f"image archive {path} does not exist", hint="check the path given to -i")
    with _plain_tar(path, blobs) as tar_path:
        try:
            archive = tarfile.open(tar_path, "r:")  # noqa: SIM115 - closed by the `with` below
        except (tarfile.TarError, OSError) as exc:
            raise DataLoss(
                f"{path} is not a tar archive: {exc}",
                hint="give a file written by `docker save`, `podman save` or `skopeo copy`",
            ) from exc
        with archive:
            try:
                reader = _Reader(archive, path, blobs)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataLoss(f"{path} is a corrupt tar archive: {exc}", hint=_REEXPORT) from exc
            try:
                if reader.has("manifest.json"):
                    images = _read_docker_archive(reader)
                elif reader.has("index.json"):
                    images = _read_oci_layout(reader)
                else:
                    raise DataLoss(
                        f"{path} has neither manifest.json (docker-archive) nor index.json (OCI layout)",
                        hint="give a file written by `docker save`, `podman save` or `skopeo copy`",
                    )
            except BaseException:
                reader.discard_all()
                raise
            kept = {blob.path for image in images for blob in image.blobs}
            for staged in reader.staged:
                if staged.path not in kept:
                    reader.blobs.discard(staged)
            return images


def decode_json_object_or_list(data: bytes, source: str) -> Any:
    if data.lstrip().startswith(b"["):
        return decode_json_object(b'{"list":' + data + b"}", source)["list"]
    return decode_json_object(data, source)


def _read_docker_archive(reader: _Reader) -> list[StagedImage]:
    entries = reader.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise DataLoss(f"manifest.json in {reader.source} lists no images", hint=_REEXPORT)
    images = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DataLoss(f"manifest.json in {reader.source} is malformed", hint=_REEXPORT)
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise DataLoss(f"manifest.json in {reader.source} lacks Config or Layers", hint=_REEXPORT)
        config = reader.stage(_normalize(config_name), digest=_digest_from_name(config_name))
        parsed = parse_config(config.path.read_bytes(), f"{config_name} in {reader.source}")
        layers: list[tuple[StagedBlob, LayerInfo]] = []
        for name in layer_names:
            if not isinstance(name, str):
                raise DataLoss(f"manifest.json in {reader.source} is malformed", hint=_REEXPORT)
            layers.append(reader.stage_layer(_normalize(name), digest=_digest_from_name(name)))
        _check_diff_ids(parsed, [info for _, info in layers], reader.source)
        manifest = Manifest(
            config=Descriptor(MEDIA_OCI_CONFIG, config.digest, config.size),
            layers=tuple(
                Descriptor(
                    MEDIA_OCI_LAYER_GZIP if info.compressed else MEDIA_OCI_LAYER,
                    blob.digest,
                    blob.size,
                )
                for blob, info in layers
            ),
        )
        manifest_staged = reader.blobs.stage_bytes(manifest_blob(manifest), what="manifest")
        reader.staged.append(manifest_staged)
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataLoss(f"manifest.json in {reader.source} has bad RepoTags", hint=_REEXPORT)
        images.append(
            StagedImage(
                config=config,
                manifest=manifest_staged,
                layers=tuple(blob for blob, _ in layers),
                parsed=parsed,
                repo_tags=tuple(_normalize_tag(t, reader.source) for t in tags),
            )
        )
    return images


def _read_oci_layout(reader: _Reader) -> list[StagedImage]:
    index = reader.read_json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise DataLoss(f"index.json in {reader.source} lists no manifests", hint=_REEXPORT)
    images = []
    for value in manifests:
        descriptor = parse_descriptor(value, f"index.json in {reader.source}")
        annotations = value.get("annotations") or {}
        tags = _names_from_annotations(annotations if isinstance(annotations, dict) else {})
        if descriptor.media_type in INDEX_MEDIA_TYPES:
            descriptor = _pick_platform(reader, descriptor)
        images.append(_read_oci_image(reader, descriptor, tags))
    return images


def _read_oci_image(reader: _Reader, descriptor: Descriptor, tags: tuple[str, ...]) -> StagedImage:
    manifest_staged = reader.stage(
        _blob_member(descriptor.digest), digest=descriptor.digest, size=descriptor.size
    )
    manifest = parse_manifest(manifest_staged.path.read_bytes(), f"manifest {descriptor.digest}")
    config = reader.stage(
        _blob_member(manifest.config.digest),
        digest=manifest.config.digest,
        size=manifest.config.size,
    )
    parsed = parse_config(config.path.read_bytes(), f"config {manifest.config.digest}")
    layers = [
        reader.stage_layer(_blob_member(layer.digest), digest=layer.digest, size=layer.size)
        for layer in manifest.layers
    ]
    _check_diff_ids(parsed, [info for _, info in layers], reader.source)
    return StagedImage(
        config=config,
        manifest=manifest_staged,
        layers=tuple(blob for blob, _ in layers),
        parsed=parsed,
        repo_tags=tuple(_normalize_tag(t, reader.source) for t in tags),
    )


def _pick_platform(reader: _Reader, descriptor: Descriptor) -> Descriptor:
    staged = reader.stage(_blob_member(descriptor.digest), digest=descriptor.digest, size=descriptor.size)
    index = decode_json_object(staged.path.read_bytes(), f"index {descriptor.digest}")
    arch = host_architecture()
    for value in index.get("manifests") or []:
        platform = value.get("platform") if isinstance(value, dict) else None
        if isinstance(platform, dict) and (platform.get("os"), platform.get("architecture")) == (
            "linux",
            arch,
        ):
            return parse_descriptor(value, f"index {descriptor.digest}")
    raise FailedPrecondition(
        f"{reader.source} has no image for linux/{arch}",
        hint="export the image for this machine's platform",
    )


def _check_diff_ids(parsed: ParsedConfig, infos: list[LayerInfo], source: Path) -> None:
    if len(parsed.diff_ids) != len(infos):
        raise DataLoss(
            f"image config in {source} lists {len(parsed.diff_ids)} layers but the manifest has {len(infos)}",
            hint=_REEXPORT,
        )
    for position, (expected, info) in enumerate(zip(parsed.diff_ids, infos, strict=True)):
        if expected != info.diff_id:
            raise DataLoss(
                f"layer {position} in {source} has uncompressed digest {info.diff_id}, "
                f"but the image config says {expected}",
                hint=_REEXPORT,
            )


def _names_from_annotations(annotations: dict[str, Any]) -> tuple[str, ...]:
    # Like `docker load`: a bare ref.name ("latest") names no repository.
    for key in (_CONTAINERD_NAME, _REF_NAME):
        name = annotations.get(key)
        if isinstance(name, str) and ("/" in name or ":" in name):
            return (name,)
    return ()


def _normalize_tag(tag: str, source: Path) -> str:
    try:
        return str(parse_reference(tag))
    except InvalidArgument as exc:
        raise DataLoss(f"{source} names an image {tag!r}: {exc.message}", hint=_REEXPORT) from exc


def _normalize(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _digest_from_name(name: str) -> str | None:
    normalized = _normalize(name)
    match = _BLOB_MEMBER.fullmatch(normalized) or _LEGACY_CONFIG.fullmatch(normalized)
    return f"sha256:{match.group(1)}" if match else None


def _blob_member(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[a-f0-9]{64}", encoded):
        raise DataLoss(f"unsupported digest {digest!r} in the archive", hint=_REEXPORT)
    return f"blobs/sha256/{encoded}"


@contextlib.contextmanager
def _plain_tar(path: Path, blobs: BlobStore) -> Iterator[Path]:
    """The archive itself, or a decompressed copy of it in the ingest area."""
    with path.open("rb") as file:
        magic = file.read(2)
    if magic != GZIP_MAGIC:
        yield path
        return
    blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{ingest_owner(blobs.ingest_dir)}.archive-"
    with tempfile.NamedTemporaryFile(dir=blobs.ingest_dir, prefix=prefix) as plain:
        try:
            with gzip.open(path, "rb") as compressed:
                shutil.copyfileobj(compressed, plain, 1 << 20)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataLoss(f"{path} is a corrupt gzip file: {exc}", hint=_REEXPORT) from exc
        plain.flush()
        yield Path(plain.name)
