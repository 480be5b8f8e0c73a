"""Downloading one blob into the store's ingest area, verified and resumable.

The blob streams into a file under `ingest/` while its sha256 and size are
computed; a layer's uncompressed digest (diff ID) is computed in the same pass
by decompressing as it arrives, so a pulled layer is read once. When the
connection drops, the download continues from the bytes already written with
a `Range` request (a registry that ignores the range and answers 200 makes it
start over). Nothing leaves the ingest area until the caller commits it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

from hyper.errors import DataLoss, FailedPrecondition, ResourceExhausted
from hyper.image.blobs import BlobStore, StagedBlob
from hyper.image.layers import GZIP_MAGIC, ZSTD_MAGIC
from hyper.image.model import Descriptor
from hyper.image.registry.client import RegistryClient, TransferInterrupted, iter_body
from hyper.image.registry.progress import ProgressCallback, ProgressEvent, short_id

_MAX_INFLATE = 8 << 20
_REPUSH = "the registry holds damaged content; push the image again"


class Cancelled(Exception):
    """Another download of the same pull failed; this one stops."""


def write_chunk(out: IO[bytes], chunk: bytes) -> None:
    """Write to an ingest file (a seam for tests that simulate a full disk)."""
    out.write(chunk)


@dataclass
class _Digests:
    """Running digests of one download: the blob's and, for a layer, its diff ID."""

    layer: bool
    size: int = 0
    blob: Any = field(default_factory=hashlib.sha256)
    diff: Any = None
    inflater: Any = None
    kind: str | None = None  # "gzip", "tar" once the first bytes are seen
    head: bytes = b""

    def reset(self) -> None:
        """Start over (the registry ignored a range request and sent the whole blob)."""
        self.size, self.blob, self.diff, self.inflater, self.kind, self.head = (
            0,
            hashlib.sha256(),
            None,
            None,
            None,
            b"",
        )

    def update(self, chunk: bytes, what: str) -> None:
        self.size += len(chunk)
        self.blob.update(chunk)
        if not self.layer:
            return
        if self.kind is None:
            self.head += chunk
            if len(self.head) < 4:
                return
            chunk, self.head = self.head, b""
            self.kind = self._detect(chunk, what)
        if self.kind == "gzip":
            self._inflate(chunk, what)

    def _detect(self, head: bytes, what: str) -> str:
        if head.startswith(ZSTD_MAGIC):
            raise FailedPrecondition(
                f"{what} is zstd-compressed, which Hyper cannot unpack yet",
                hint="push the image with gzip-compressed or uncompressed layers",
            )
        if head.startswith(GZIP_MAGIC):
            self.diff = hashlib.sha256()
            self.inflater = zlib.decompressobj(wbits=31)
            return "gzip"
        return "tar"

    def _inflate(self, data: bytes, what: str) -> None:
        try:
            while data:
                if self.inflater.eof:  # a gzip stream of several members
                    data = self.inflater.unused_data + data
                    self.inflater = zlib.decompressobj(wbits=31)
                    if not data.lstrip(b"\0"):
                        return
                self.diff.update(self.inflater.decompress(data, _MAX_INFLATE))
                data = self.inflater.unconsumed_tail
        except zlib.error as exc:
            raise DataLoss(f"{what} is not valid gzip: {exc}", hint=_REPUSH) from exc

    def finish(self, what: str) -> str | None:
        """The diff ID (None for a non-layer blob)."""
        if not self.layer:
            return None
        if self.kind == "gzip":
            if not self.inflater.eof:
                raise DataLoss(f"{what} is a truncated gzip stream", hint=_REPUSH)
            return "sha256:" + str(self.diff.hexdigest())
        return "sha256:" + str(self.blob.hexdigest())


@dataclass(frozen=True)
class Downloaded:
    blob: StagedBlob
    diff_id: str | None


def download_blob(
    client: RegistryClient,
    repository_path: str,
    descriptor: Descriptor,
    blobs: BlobStore,
    *,
    scopes: list[str],
    layer: bool,
    progress: ProgressCallback,
    cancelled: threading.Event | None = None,
) -> Downloaded:
    """Fetch `descriptor` from the registry into the ingest area and verify it."""
    what = f"blob {descriptor.digest} of {client.name}/{repository_path}"
    fd, path = blobs.new_ingest_file("pull-")
    ident = short_id(descriptor.digest)
    failures = 0
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _Digests(layer)
            while True:
                try:
                    _fetch_into(
                        client,
                        repository_path,
                        descriptor,
                        out=out,
                        digests=digests,
                        scopes=scopes,
                        what=what,
                        progress=progress,
                        cancelled=cancelled,
                    )
                except TransferInterrupted:
                    failures += 1
                    if failures >= client.attempts:
                        raise
                    delay = client.backoff * 2 ** (failures - 1)
                    progress(ProgressEvent(ident, f"Retrying in {delay:.1f}s"))
                    time.sleep(delay)
                    continue
                if digests.size >= descriptor.size:
                    break
                failures += 1  # the body ended early without an error: resume as after a drop
                if failures >= client.attempts:
                    break
            progress(ProgressEvent(ident, "Verifying Checksum", digests.size, descriptor.size))
        if digests.size != descriptor.size:
            raise DataLoss(f"{what} has {digests.size} bytes, expected {descriptor.size}", hint=_REPUSH)
        digest = "sha256:" + digests.blob.hexdigest()
        if digest != descriptor.digest:
            raise DataLoss(f"{what} arrived with digest {digest}", hint=_REPUSH)
        diff_id = digests.finish(what)
        os.chmod(path, 0o444)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left on the device holding the image store ({blobs.root}) while pulling {what}",
                hint="free disk space or move the store (HYPER_STATE_DIR), then pull again",
            ) from exc
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    progress(ProgressEvent(ident, "Download complete", descriptor.size, descriptor.size))
    return Downloaded(StagedBlob(digest, descriptor.size, path), diff_id)


def _fetch_into(
    client: RegistryClient,
    repository_path: str,
    descriptor: Descriptor,
    *,
    out: IO[bytes],
    digests: _Digests,
    scopes: list[str],
    what: str,
    progress: ProgressCallback,
    cancelled: threading.Event | None,
) -> None:
    """One GET (ranged when resuming), appending to `out` and updating `digests`."""
    headers = {"Accept-Encoding": "identity"}
    if digests.size:
        headers["Range"] = f"bytes={digests.size}-"
    ident = short_id(descriptor.digest)
    with client.stream(
        "GET",
        f"/v2/{repository_path}/blobs/{descriptor.digest}",
        scopes=scopes,
        headers=headers,
        ok=(200, 206),
        what=f"download of {what}",
    ) as response:
        content_range = response.headers.get("content-range", "")
        if digests.size and not (
            response.status_code == 206 and content_range.startswith(f"bytes {digests.size}-")
        ):
            out.seek(0)
            out.truncate()
            digests.reset()
        last_report = 0.0
        for chunk in iter_body(response):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled
            if digests.size + len(chunk) > descriptor.size:
                raise DataLoss(f"{what} is larger than its declared size {descriptor.size}", hint=_REPUSH)
            digests.update(chunk, what)
            write_chunk(out, chunk)
            now = time.monotonic()
            if now - last_report > 0.1:
                last_report = now
                progress(ProgressEvent(ident, "Downloading", digests.size, descriptor.size))
