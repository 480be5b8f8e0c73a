"""A container's mounts as Docker's front ends give them, parsed and checked; pure.

Four spellings reach Hyper: `-v SRC:DST[:OPTS]` and `-v DST`, `--mount
type=…,source=…,target=…` (CSV, as the docker CLI), `--tmpfs DST[:OPTS]`, and
the Engine API's `Binds`, `Mounts`, `Tmpfs` and `Config.Volumes`. Each
becomes a `Mount`; a container keeps its mounts as canonical `--mount`
strings (RunOptions.mounts), with anonymous volumes named once it is
created. Every bad input is refused here, before a VM boots, with what to do.
"""

from __future__ import annotations

import csv
import enum
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hyper.errors import InvalidArgument

VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# Destinations no mount may take: the root, and the kernel's own file systems.
FORBIDDEN_TARGETS = ("/", "/proc", "/sys")
_SIZE = re.compile(r"^(\d+)([kmgKMG]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PROPAGATION = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
# -v options that change nothing in a VM: SELinux labels, macOS consistency.
_IGNORED_OPTIONS = ("z", "Z", "consistent", "cached", "delegated")
_TMPFS_FLAGS = ("ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev")


class MountType(enum.Enum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class Mount:
    type: MountType
    target: str
    source: str = ""  # bind: a host path; volume: a name ("" until an anonymous one is named)
    read_only: bool = False
    no_copy: bool = False  # volume: no copy-up of the image's files
    create_source: bool = False  # bind from -v: a missing host directory is made, as Docker does
    anonymous: bool = False  # volume: made for this container (removed with it by rm -v)
    tmpfs_size: int | None = None  # bytes
    tmpfs_mode: int | None = None
    tmpfs_flags: tuple[str, ...] = ()
    # volume: the labels of a volume this mount creates (Docker's volume-label); one that exists keeps its own
    volume_labels: tuple[tuple[str, str], ...] = ()
    # volume: the size of a volume this mount creates (volume-opt=size=…); one that exists keeps its own
    volume_size: int | None = None

    def canonical(self) -> str:
        """The --mount form a container keeps (parse_mount reads it back)."""
        fields = [f"type={self.type.value}"]
        if self.source:
            fields.append(f"source={self.source}")
        fields.append(f"target={self.target}")
        if self.read_only:
            fields.append("readonly")
        if self.no_copy:
            fields.append("volume-nocopy")
        if self.create_source:
            fields.append("bind-create-src")
        if self.anonymous:
            fields.append("volume-anonymous")
        if self.tmpfs_size is not None:
            fields.append(f"tmpfs-size={self.tmpfs_size}")
        if self.tmpfs_mode is not None:
            fields.append(f"tmpfs-mode={self.tmpfs_mode:o}")
        fields += [f"tmpfs-flag={flag}" for flag in self.tmpfs_flags]
        fields += [f"volume-label={key}={value}" for key, value in self.volume_labels]
        if self.volume_size is not None:
            fields.append(f"volume-opt=size={self.volume_size}")
        return _csv_line(fields)

    def document(self) -> dict[str, Any]:
        """Docker's `Mounts` entry of inspect (Source and Name filled in by the caller)."""
        return {
            "Type": self.type.value,
            "Destination": self.target,
            "Mode": "ro" if self.read_only else "",
            "RW": not self.read_only,
            "Propagation": "rprivate" if self.type is MountType.BIND else "",
        }


def _csv_line(fields: list[str]) -> str:
    quoted = []
    for field in fields:
        quoted.append(f'"{field.replace(chr(34), chr(34) * 2)}"' if any(c in field for c in ',"') else field)
    return ",".join(quoted)


def check_target(target: str, what: str = "mount") -> str:
    """An absolute, normalized destination that is not / or a kernel file system."""
    if not target or not target.startswith("/"):
        raise InvalidArgument(
            f"invalid {what} destination {target!r}: it must be an absolute path",
            hint="give the path inside the container, such as /data",
        )
    if "\0" in target:
        raise InvalidArgument(f"invalid {what} destination {target!r}")
    normal = posixpath.normpath(target)
    normal = "/" + normal.lstrip("/")
    for forbidden in FORBIDDEN_TARGETS:
        if normal == forbidden or (forbidden != "/" and normal.startswith(forbidden + "/")):
            raise InvalidArgument(
                f"invalid {what} destination {target!r}: {forbidden} cannot be mounted over",
                hint="choose another directory",
            )
    return normal


def check_volume_name(name: str) -> str:
    if not VOLUME_NAME.match(name):
        raise InvalidArgument(
            f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed,"
            " two characters or more",
            hint="to mount a host directory, give its absolute path",
        )
    return name


def parse_size(text: str, what: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidArgument(f"invalid {what} {text!r}", hint="a number of bytes, or with k, m or g: 64m")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise InvalidArgument(f"invalid tmpfs mode {text!r}", hint="an octal mode such as 1777") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"invalid tmpfs mode {text!r}")
    return mode


def parse_volume(text: str) -> Mount:
    """`-v`/`Binds`: SRC:DST[:OPTS] (SRC a host path or a volume name) or DST alone (anonymous)."""
    parts = text.split(":")
    if len(parts) == 1:
        return Mount(MountType.VOLUME, check_target(parts[0], "volume"), anonymous=True)
    if len(parts) > 3 or not parts[0]:
        raise InvalidArgument(f"invalid volume specification {text!r}", hint="use SOURCE:DESTINATION[:ro]")
    source, target = parts[0], check_target(parts[1], "volume")
    read_only = no_copy = False
    for option in parts[2].split(",") if len(parts) == 3 else []:
        if option in ("ro", "rw"):
            read_only = option == "ro"
        elif option == "nocopy":
            no_copy = True
        elif option in _IGNORED_OPTIONS or option == "rprivate":
            continue
        elif option in _PROPAGATION:
            raise InvalidArgument(
                f"volume option {option!r} is not supported: mounts do not propagate into a VM",
                hint="leave it out (the default is rprivate)",
            )
        else:
            raise InvalidArgument(f"invalid volume option {option!r} in {text!r}", hint="use ro or rw")
    if source.startswith("/"):
        if no_copy:
            raise InvalidArgument(f"nocopy applies to volumes, not to the host path {source}")
        return Mount(MountType.BIND, target, posixpath.normpath(source), read_only, create_source=True)
    return Mount(MountType.VOLUME, target, check_volume_name(source), read_only, no_copy)


def _flag(value: str | None, key: str) -> bool:
    if value is None or value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise InvalidArgument(f"invalid value {value!r} for {key}", hint="use true or false")


def parse_mount(text: str) -> Mount:
    """`--mount`, Docker's CSV of key=value (type=bind|volume|tmpfs, source, target, readonly, …)."""
    try:
        [fields] = list(csv.reader([text]))
    except (csv.Error, ValueError):
        raise InvalidArgument(f"invalid --mount {text!r}", hint="use type=…,source=…,target=…") from None
    values: dict[str, str | None] = {}
    flags: list[str] = []
    labels: list[tuple[str, str]] = []
    volume_options: dict[str, str] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        if key == "tmpfs-flag" and sep:
            flags.append(value)
            continue
        if key == "volume-label" and sep:
            name, _, label = value.partition("=")
            if not name:
                raise InvalidArgument(f"invalid volume-label {value!r}", hint="use volume-label=KEY=VALUE")
            labels.append((name, label))
            continue
        if key == "volume-opt" and sep:
            name, _, option = value.partition("=")
            volume_options[name.strip()] = option
            continue
        if key in values:
            raise InvalidArgument(f"--mount names {key} twice: {text!r}")
        values[key] = value if sep else None
    kind = values.pop("type", None) or "volume"
    try:
        mount_type = MountType(kind)
    except ValueError:
        raise InvalidArgument(f"invalid mount type {kind!r}", hint="use bind, volume or tmpfs") from None
    source = values.pop("source", None) or values.pop("src", None) or ""
    target_value = values.pop("target", None) or values.pop("destination", None) or values.pop("dst", None)
    if not target_value:
        raise InvalidArgument(f"--mount {text!r} has no target", hint="add target=/path/in/container")
    target = check_target(target_value)
    read_only = False
    for key in ("readonly", "ro"):
        if key in values:
            read_only = _flag(values.pop(key), key)
    mount = Mount(mount_type, target, source, read_only)
    values.pop("consistency", None)
    if mount_type is MountType.BIND:
        if not source.startswith("/"):
            raise InvalidArgument(f"invalid bind source {source!r}: it must be an absolute host path")
        mount = replace(mount, source=posixpath.normpath(source))
        propagation = values.pop("bind-propagation", None)
        if propagation not in (None, "rprivate"):
            raise InvalidArgument(
                f"bind-propagation={propagation} is not supported: mounts do not propagate into a VM"
            )
        if "bind-nonrecursive" in values and _flag(values.pop("bind-nonrecursive"), "bind-nonrecursive"):
            raise InvalidArgument("bind-nonrecursive is not supported: binds include their submounts")
        if "bind-create-src" in values:
            mount = replace(mount, create_source=_flag(values.pop("bind-create-src"), "bind-create-src"))
    elif mount_type is MountType.VOLUME:
        if source:
            check_volume_name(source)
        if "volume-nocopy" in values:
            mount = replace(mount, no_copy=_flag(values.pop("volume-nocopy"), "volume-nocopy"))
        if "volume-anonymous" in values:
            mount = replace(mount, anonymous=_flag(values.pop("volume-anonymous"), "volume-anonymous"))
        elif not source:
            mount = replace(mount, anonymous=True)
        driver = values.pop("volume-driver", None)
        if driver not in (None, "local"):
            raise InvalidArgument(
                f"volume driver {driver!r} is not supported", hint="Hyper has the local driver"
            )
        asked = volume_size(volume_options) if volume_options else None
        mount = replace(mount, volume_labels=tuple(labels), volume_size=asked)
    else:
        if source:
            raise InvalidArgument("a tmpfs mount takes no source")
        size = values.pop("tmpfs-size", None)
        mode = values.pop("tmpfs-mode", None)
        mount = replace(
            mount,
            tmpfs_size=None if size is None else parse_size(size, "tmpfs-size"),
            tmpfs_mode=None if mode is None else _parse_mode(mode),
            tmpfs_flags=tuple(_tmpfs_flag(f) for f in flags),
        )
    if labels and mount_type is not MountType.VOLUME:
        raise InvalidArgument(f"volume-label applies to volumes, not to a {kind} mount")
    if volume_options and mount_type is not MountType.VOLUME:
        raise InvalidArgument(f"volume-opt applies to volumes, not to a {kind} mount")
    if values:
        raise InvalidArgument(f"unknown --mount key {sorted(values)[0]!r} for a {kind} mount")
    return mount


def _tmpfs_flag(flag: str) -> str:
    if flag not in _TMPFS_FLAGS:
        raise InvalidArgument(
            f"invalid tmpfs option {flag!r}", hint=f"use size=, mode= or {', '.join(_TMPFS_FLAGS)}"
        )
    return flag


def parse_tmpfs(text: str) -> Mount:
    """`--tmpfs DST[:OPTS]` and the API's Tmpfs entries: size=, mode= and mount flags."""
    target, _, options = text.partition(":")
    return tmpfs_mount(target, options)


def tmpfs_mount(target: str, options: str) -> Mount:
    size = mode = None
    flags = []
    for option in [o for o in options.split(",") if o]:
        key, sep, value = option.partition("=")
        if key == "size" and sep:
            size = parse_size(value, "tmpfs size")
        elif key == "mode" and sep:
            mode = _parse_mode(value)
        else:
            flags.append(_tmpfs_flag(option))
    return Mount(
        MountType.TMPFS,
        check_target(target, "tmpfs"),
        read_only="ro" in flags,
        tmpfs_size=size,
        tmpfs_mode=mode,
        tmpfs_flags=tuple(f for f in flags if f not in ("ro", "rw")),
    )


# What Hyper reads of an Engine API mount; another key with a value is refused, not ignored.
_API_MOUNT_KEYS = {
    "": {
        "Type",
        "Source",
        "Target",
        "ReadOnly",
        "Consistency",
        "BindOptions",
        "VolumeOptions",
        "TmpfsOptions",
    },
    "BindOptions": {"Propagation", "NonRecursive"},
    "VolumeOptions": {"NoCopy", "DriverConfig", "Labels"},
    "TmpfsOptions": {"SizeBytes", "Mode"},
}


def _api_options(item: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    options = item.get(key) if key else item
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"{key or 'each of HostConfig.Mounts'} must be an object")
    for name, value in options.items():
        if name not in _API_MOUNT_KEYS[key] and value not in (None, False, 0, "", [], {}):
            where = f"{key}.{name}" if key else name
            raise InvalidArgument(
                f"Hyper does not support the mount setting {where}",
                hint="leave it out; see docs/docker-api.md",
            )
    return options


def _api_text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or "\0" in value:
        raise InvalidArgument(f"{what} of a mount must be a string")
    return value


def _api_integer(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what} of a mount must be a non-negative integer")
    return value


def from_api_mount(item: Mapping[str, Any]) -> Mount:
    """An Engine API `HostConfig.Mounts` entry."""
    _api_options(item, "")
    bind, volume, tmpfs = (_api_options(item, k) for k in ("BindOptions", "VolumeOptions", "TmpfsOptions"))
    kind = _api_text(item.get("Type"), "Type") or "volume"
    target = _api_text(item.get("Target"), "Target")
    source = _api_text(item.get("Source"), "Source")
    fields = [f"type={kind}", f"target={target}"]
    if source:
        fields.append(f"source={source}")
    if item.get("ReadOnly"):
        fields.append("readonly")
    if bind.get("Propagation"):
        fields.append(f"bind-propagation={_api_text(bind['Propagation'], 'BindOptions.Propagation')}")
    if bind.get("NonRecursive"):
        fields.append("bind-nonrecursive")
    if volume.get("NoCopy"):
        fields.append("volume-nocopy")
    labels = volume.get("Labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("VolumeOptions.Labels must map names to strings")
    fields += [f"volume-label={key}={value}" for key, value in labels.items()]
    driver_config = volume.get("DriverConfig") or {}
    if not isinstance(driver_config, Mapping):
        raise InvalidArgument("VolumeOptions.DriverConfig must be an object")
    opts = driver_config.get("Options") or {}
    if not isinstance(opts, Mapping) or not all(isinstance(v, str) for v in opts.values()):
        raise InvalidArgument("VolumeOptions.DriverConfig.Options must map names to strings")
    fields += [f"volume-opt={key}={value}" for key, value in opts.items()]
    driver = _api_text(driver_config.get("Name"), "VolumeOptions.DriverConfig.Name")
    if driver:
        fields.append(f"volume-driver={driver}")
    if tmpfs.get("SizeBytes"):
        fields.append(f"tmpfs-size={_api_integer(tmpfs['SizeBytes'], 'TmpfsOptions.SizeBytes')}")
    if tmpfs.get("Mode"):
        fields.append(f"tmpfs-mode={_api_integer(tmpfs['Mode'], 'TmpfsOptions.Mode'):o}")
    return parse_mount(_csv_line(fields))


def check_unique(mounts: Iterable[Mount]) -> tuple[Mount, ...]:
    """No two mounts at one path (Docker's "Duplicate mount point")."""
    seen: set[str] = set()
    result = []
    for mount in mounts:
        if mount.target in seen:
            raise InvalidArgument(
                f"duplicate mount point: {mount.target}", hint="mount one volume or directory per path"
            )
        seen.add(mount.target)
        result.append(mount)
    return tuple(result)


def with_image_volumes(mounts: tuple[Mount, ...], image_volumes: Iterable[str]) -> tuple[Mount, ...]:
    """The image's VOLUME paths (and Config.Volumes) not mounted otherwise: anonymous volumes."""
    taken = {m.target for m in mounts}
    extra = []
    for path in image_volumes:
        target = check_target(path, "volume")
        if target not in taken:
            taken.add(target)
            extra.append(Mount(MountType.VOLUME, target, anonymous=True))
    return (*mounts, *extra)


# A sized volume's bounds (hyper.storage.volume_disk): below, ext4's own tables leave
# almost no room; above, ext4's largest file on the host (16 TiB with 4 KiB blocks).
MIN_VOLUME_BYTES = 4 << 20
MAX_VOLUME_BYTES = 1 << 44
_VOLUME_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_VOLUME_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_volume_size(text: str) -> int:
    """A volume's `size` option in bytes: `64m`, `10g`, `1GiB` or a number of bytes."""
    match = _VOLUME_SIZE.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"invalid volume size {text!r}", hint="give a size such as 64m or 10g")
    size = int(match.group(1)) << _VOLUME_SHIFT[match.group(2).lower()]
    if not MIN_VOLUME_BYTES <= size <= MAX_VOLUME_BYTES:
        raise InvalidArgument(
            f"volume size {text.strip()} is out of range", hint="give between 4m and 16t, such as 1g"
        )
    return size


def volume_size(options: Mapping[str, str]) -> int | None:
    """The size a volume's driver options ask for (None: no size, a plain directory).
    `size` is the one option of Hyper's local driver; others are refused."""
    unknown = sorted(key for key in options if key != "size")
    if unknown:
        raise InvalidArgument(
            f"volume option {unknown[0]!r} is not supported",
            hint="the local driver takes size=SIZE (a volume of that size); leave the others out",
        )
    return parse_volume_size(options["size"]) if "size" in options else None


# The writable disk's bounds: below, ext4 and its journal leave no room; above,
# the host's disk is the limit, which Hyper does not guess.
MIN_STORAGE_BYTES = 64 << 20
MAX_STORAGE_BYTES = 1 << 40
_STORAGE_SIZE = re.compile(r"^(\d+)([kmgtKMGT]?)[bB]?$")


def storage_size(options: Iterable[str]) -> int | None:
    """`--storage-opt size=SIZE` (Docker's only per-container option for a
    writable layer): its bytes, or None when not given. Other keys are refused."""
    size = None
    for option in options:
        key, sep, value = option.partition("=")
        if key.strip().lower() != "size" or not sep:
            raise InvalidArgument(
                f"invalid --storage-opt {option!r}", hint="Hyper takes size=SIZE (the writable disk's size)"
            )
        match = _STORAGE_SIZE.match(value.strip())
        if not match:
            raise InvalidArgument(f"invalid storage size {value!r}", hint="a size such as 512m or 20g")
        size = int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[match.group(2).lower()]
        if not MIN_STORAGE_BYTES <= size <= MAX_STORAGE_BYTES:
            raise InvalidArgument(f"storage size {value} is out of range", hint="give between 64m and 1t")
    return size


def parse_volumes_from(text: str) -> tuple[str, bool | None]:
    """`--volumes-from CONTAINER[:ro|rw]`: the container, and whether its mounts
    become read-only (True), writable (False) or keep their own mode (None)."""
    container, sep, mode = text.partition(":")
    if not container or (sep and mode not in ("ro", "rw")):
        raise InvalidArgument(
            f"invalid --volumes-from {text!r}", hint="use CONTAINER, CONTAINER:ro or CONTAINER:rw"
        )
    return container, None if not sep else mode == "ro"


def check_volumes_from(texts: Iterable[str]) -> tuple[str, ...]:
    """The --volumes-from values, each checked (the containers are looked up at create)."""
    texts = tuple(texts)
    for text in texts:
        parse_volumes_from(text)
    return texts


def inherited_mounts(mounts: Iterable[str], read_only: bool | None) -> tuple[Mount, ...]:
    """Another container's volumes and bind mounts (canonical strings), as
    `--volumes-from` gives them: its tmpfs mounts are its own, as in Docker, and
    its anonymous volumes stay its own (its `rm -v` takes them once unused)."""
    result = []
    for mount in (parse_mount(text) for text in mounts):
        if mount.type is MountType.TMPFS:
            continue
        if mount.type is MountType.VOLUME and not mount.source:
            raise InvalidArgument(f"the volume at {mount.target} has no name yet")
        mode = mount.read_only if read_only is None else read_only
        result.append(replace(mount, read_only=mode, anonymous=False, create_source=False, volume_labels=()))
    return tuple(result)


def merge_mounts(own: Iterable[Mount], inherited: Iterable[Mount]) -> tuple[Mount, ...]:
    """A container's own mounts over those it inherits: at one destination its own
    wins, as Docker's binds do over --volumes-from; two inherited ones conflict."""
    own = check_unique(own)
    taken = {m.target for m in own}
    return check_unique((*own, *(m for m in inherited if m.target not in taken)))


def parse_all(
    *, volumes: Iterable[str] = (), mounts: Iterable[str] = (), tmpfs: Iterable[str] = ()
) -> tuple[Mount, ...]:
    """The front ends' three options together, checked: canonical order -v, --mount, --tmpfs."""
    parsed = [parse_volume(v) for v in volumes]
    parsed += [parse_mount(m) for m in mounts]
    parsed += [parse_tmpfs(t) for t in tmpfs]
    return check_unique(parsed)
