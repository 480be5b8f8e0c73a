"""From a container's mounts to what its VM gets: volumes made, host paths checked, the share laid out.

`resolve_mounts` runs when a container is created and again at each start
(it is idempotent): it names anonymous volumes (the image's VOLUME paths
among them), creates named volumes on first use, makes a missing `-v` host
directory as Docker does, refuses a missing `--mount` bind source, and
records the container as a user of its volumes. `share_plan` then says what
goes into the VM's share (`CONTAINER/mN` entries) and what the guest mounts
where (hyper.agent.guest_volumes reads that list).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.storage.mounts import Mount, MountType, check_unique, parse_mount, with_image_volumes
from hyper.storage.share import ShareEntry
from hyper.storage.volumes import VOLUME_SEPARATOR, VolumeStore


@dataclass(frozen=True)
class SharePlan:
    entries: tuple[ShareEntry, ...]  # into the VM's share, on the host
    guest: tuple[dict[str, Any], ...]  # the agent's mount list

    @property
    def needs_share(self) -> bool:
        return bool(self.entries)


def parse_canonical(mounts: Iterable[str]) -> tuple[Mount, ...]:
    return check_unique(parse_mount(text) for text in mounts)


def resolve_mounts(
    store: VolumeStore,
    mounts: Iterable[str],
    image_volumes: Iterable[str],
    container_id: str,
    *,
    owner: str = "",
) -> tuple[str, ...]:
    """The container's mounts with every volume named and made; canonical strings. Blocking.
    A tenant's (`owner`) anonymous volumes are named as its own: OWNER.RANDOM."""
    resolved = []
    for mount in with_image_volumes(parse_canonical(mounts), image_volumes):
        if mount.type is MountType.VOLUME:
            if owner and mount.volume_size is None and not store.exists(mount.source):
                # A tenant's volume is made only with the size its quota was charged for.
                raise FailedPrecondition(
                    f"volume {mount.source.partition(VOLUME_SEPARATOR)[2] or mount.source} no longer exists",
                    hint="create the container again",
                )
            name = mount.source or (anonymous_volume_name(owner) if owner else None)
            volume = store.create(
                name, labels=dict(mount.volume_labels), size=mount.volume_size, anonymous=not mount.source
            )
            resolved.append(replace(mount, source=volume.name))
            continue
        if mount.type is MountType.BIND:
            check_bind_source(mount)
        resolved.append(mount)
    store.use((m.source for m in resolved if m.type is MountType.VOLUME), container_id)
    return tuple(m.canonical() for m in resolved)


def anonymous_volume_name(owner: str) -> str:
    """A tenant's anonymous volume: named in its own space (hyper.tenants.scope), so it
    shows in its `docker volume ls` and nowhere else."""
    return f"{owner}{VOLUME_SEPARATOR}{secrets.token_hex(32)}"


def release_volumes(store: VolumeStore, container_id: str, *, anonymous: bool) -> list[str]:
    """The container no longer uses its volumes; with `anonymous` its anonymous
    ones are removed too (Docker's --rm and rm -v). Returns those removed."""
    used = store.release(container_id)
    return store.remove_anonymous(used) if anonymous else []


def check_bind_source(mount: Mount) -> None:
    if os.path.lexists(mount.source):
        if not os.path.exists(mount.source):
            raise InvalidArgument(f"bind source path {mount.source} is a dangling symlink")
        if stat.S_ISSOCK(os.stat(mount.source).st_mode):
            # Over 9p the guest would see a socket file that connects nowhere.
            raise InvalidArgument(
                f"bind source path {mount.source} is a unix socket, which a VM cannot reach",
                hint="publish the service on a port, or share a directory",
            )
        return
    if not mount.create_source:
        raise InvalidArgument(
            f"bind source path does not exist: {mount.source}",
            hint="create it first (-v creates a missing directory, --mount does not)",
        )
    os.makedirs(mount.source, 0o755, exist_ok=True)


def _empty(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def share_plan(store: VolumeStore, mounts: Iterable[str], container: str) -> SharePlan:
    """What the VM's share holds for `container` (its short id) and what the guest mounts."""
    entries: list[ShareEntry] = []
    guest: list[dict[str, Any]] = []
    for mount in parse_canonical(mounts):
        if mount.type is MountType.TMPFS:
            options = list(mount.tmpfs_flags) + (["ro"] if mount.read_only else [])
            if mount.tmpfs_size is not None:
                options.append(f"size={mount.tmpfs_size}")
            if mount.tmpfs_mode is not None:
                options.append(f"mode={mount.tmpfs_mode:o}")
            guest.append({"type": "tmpfs", "target": mount.target, "options": options})
            continue
        if mount.type is MountType.VOLUME:
            if not mount.source:
                raise FailedPrecondition(f"the volume for {mount.target} has no name yet")
            source = str(store.ensure_mounted(store.get(mount.source)).mountpoint)
        else:
            check_bind_source(mount)
            source = mount.source
        copy_up = mount.type is MountType.VOLUME and not mount.no_copy
        # An empty volume mounted read-only still takes the image's files
        # (Docker's copy-up): the guest writes them, then mounts it read-only;
        # the host enforces read-only on it from the first start that finds it filled.
        host_read_only = mount.read_only and not (copy_up and _empty(source))
        place = f"{container}/m{len(entries)}"
        entries.append(ShareEntry(source, place, host_read_only))
        guest.append(
            {
                "type": "bind",
                "source": place,
                "target": mount.target,
                "read_only": mount.read_only,
                "copy_up": copy_up,
            }
        )
    return SharePlan(tuple(entries), tuple(guest))
