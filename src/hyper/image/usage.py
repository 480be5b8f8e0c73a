"""Which images containers use, read from the runtime's records.

The runtime keeps one `<state>/containers/<id>/config.json` per container
with an `image_id`; any record there counts as a user of the image, whatever
its state, since a stopped container can be started again. Unreadable records
are skipped: they cannot protect an image they do not name.
"""

from __future__ import annotations

import json
from pathlib import Path


def images_in_use(containers_dir: Path) -> dict[str, list[str]]:
    """Image ID → IDs of the containers recorded as using it."""
    users: dict[str, list[str]] = {}
    if not containers_dir.is_dir():
        return users
    for record in sorted(containers_dir.glob("*/config.json")):
        try:
            document = json.loads(record.read_bytes())
        except (OSError, ValueError):
            continue
        image_id = document.get("image_id") if isinstance(document, dict) else None
        if isinstance(image_id, str) and image_id:
            users.setdefault(image_id, []).append(record.parent.name)
    return users
