"""One lock between Hyper processes: an exclusive flock on a file.

Builders of shared things (kernel cache, appliance, layer disks, the image
index, hyperd's start) take it so that two processes doing the same first
run wait for each other instead of doing the work twice or corrupting it.
The lock goes with the process, so a crash never leaves it held.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, with its directory, if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
