"""The store's index: which images exist and which tags point at them.

One small JSON file, `index.json`, replaced atomically (write a temporary file,
fsync, rename) while an exclusive `flock` on `lock` is held, so that concurrent
`hyper load`/`rmi` processes never lose each other's updates and readers never see
a half-written file. Everything else about an image is read from its blobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from hyper.errors import DataLoss
from hyper.locks import exclusive_lock

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    added: str


@dataclass(frozen=True)
class StoreIndex:
    images: Mapping[str, ImageRecord] = field(default_factory=lambda: MappingProxyType({}))
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def tags_of(self, image_id: str) -> tuple[str, ...]:
        return tuple(sorted(tag for tag, target in self.tags.items() if target == image_id))

    def with_image(self, record: ImageRecord, tags: tuple[str, ...]) -> StoreIndex:
        images = dict(self.images)
        images.setdefault(record.id, record)
        new_tags = dict(self.tags)
        new_tags.update(dict.fromkeys(tags, record.id))
        return StoreIndex(MappingProxyType(images), MappingProxyType(new_tags))

    def without_tag(self, tag: str) -> StoreIndex:
        tags = {name: target for name, target in self.tags.items() if name != tag}
        return replace(self, tags=MappingProxyType(tags))

    def without_image(self, image_id: str) -> StoreIndex:
        images = {key: value for key, value in self.images.items() if key != image_id}
        tags = {name: target for name, target in self.tags.items() if target != image_id}
        return StoreIndex(MappingProxyType(images), MappingProxyType(tags))


def encode_index(index: StoreIndex) -> bytes:
    document = {
        "schemaVersion": SCHEMA_VERSION,
        "images": {
            image_id: {"manifest": record.manifest_digest, "added": record.added}
            for image_id, record in sorted(index.images.items())
        },
        "tags": dict(sorted(index.tags.items())),
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def decode_index(data: bytes, source: Path) -> StoreIndex:
    hint = f"the image store index {source} is damaged; move it aside and load the images again"
    try:
        document = json.loads(data)
        images = {
            image_id: ImageRecord(image_id, str(entry["manifest"]), str(entry.get("added", "")))
            for image_id, entry in document["images"].items()
        }
        tags = {str(tag): str(target) for tag, target in document["tags"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataLoss(f"cannot read {source}: {exc}", hint=hint) from exc
    if any(target not in images for target in tags.values()):
        raise DataLoss(f"{source} has a tag pointing at no image", hint=hint)
    return StoreIndex(MappingProxyType(images), MappingProxyType(tags))


class IndexFile:
    def __init__(self, root: Path) -> None:
        self.path = root / "index.json"
        self.lock_path = root / "lock"

    def read(self) -> StoreIndex:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return StoreIndex()
        return decode_index(data, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's write lock (also taken by garbage collection)."""
        with exclusive_lock(self.lock_path):
            yield

    def write(self, index: StoreIndex) -> None:
        """Replace the index atomically; call with the lock held."""
        write_atomically(self.path, encode_index(index))


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
