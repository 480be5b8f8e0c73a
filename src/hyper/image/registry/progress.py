"""Progress of a pull or push, as events that a display turns into bars or lines.

The events follow Docker's per-layer statuses (`Pulling fs layer`,
`Downloading`, `Download complete`, `Already exists`, `Pull complete`,
`Pushing`, `Pushed`, `Layer already exists`, `Mounted from …`) so a display
can look like Docker's. Callbacks may be called from several download threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    id: str  # the layer's short digest (12 hex digits), or "" for a whole-image message
    status: str
    current: int = 0
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def ignore_progress(event: ProgressEvent) -> None:
    del event
