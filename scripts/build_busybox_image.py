"""Build the demo image `localhost/busybox:latest` (CMD ["sh"]) into Hyper's default store.

`make demo` runs this before `hyper run`. It needs nothing from the network: the
image is Debian's static busybox plus a symlink per applet. Running it again does
nothing when the image is already there.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hyper.errors import HyperError, NotFound
from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths

REFERENCE = "localhost/busybox:latest"


def build(store: ImageStore, reference: str = REFERENCE) -> str:
    """Import the busybox image unless `reference` already exists; returns its ID."""
    try:
        return store.get(reference).id
    except NotFound:
        pass
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = write_busybox_rootfs_tar(Path(scratch) / "busybox-rootfs.tar")
        return store.import_rootfs(rootfs, reference, ImageConfig(cmd=("sh",))).id


def main() -> int:
    store = ImageStore(default_paths().images)
    try:
        image_id = build(store)
    except HyperError as exc:
        print(f"build_busybox_image: {exc}", file=sys.stderr)
        return 1
    print(f"{REFERENCE} {image_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
