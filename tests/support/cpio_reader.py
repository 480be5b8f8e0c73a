"""A small, strict reader for `newc` cpio archives, to check what Hyper writes.

Independent of hyper.vm.cpio on purpose: it parses the format from its
specification (cpio(5)), and checks the 4-byte alignment the kernel needs.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)


class CpioFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    name: str  # as stored: no leading slash
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes

    @property
    def path(self) -> str:
        return "/" + self.name


@dataclass(frozen=True)
class Archive:
    members: list[Member]
    trailer_end: int  # offset just past the trailer's padded name

    def by_path(self) -> dict[str, Member]:
        return {m.path: m for m in self.members}


def _align(offset: int) -> int:
    return (offset + 3) & ~3


def read_newc(data: bytes) -> Archive:
    """Every member up to the trailer; raises CpioFormatError on anything malformed."""
    members: list[Member] = []
    offset = 0
    while True:
        if offset % 4:
            raise CpioFormatError(f"header at {offset} is not 4-byte aligned")
        header = data[offset : offset + HEADER_SIZE]
        if len(header) < HEADER_SIZE:
            raise CpioFormatError(f"truncated header at {offset} (no trailer)")
        if header[:6] != MAGIC:
            raise CpioFormatError(f"bad magic {header[:6]!r} at {offset}")
        try:
            values = {name: int(header[6 + 8 * i : 14 + 8 * i], 16) for i, name in enumerate(FIELDS)}
        except ValueError as exc:
            raise CpioFormatError(f"non-hex header field at {offset}") from exc
        name_start = offset + HEADER_SIZE
        name_end = name_start + values["namesize"]
        raw_name = data[name_start:name_end]
        if len(raw_name) != values["namesize"] or not raw_name.endswith(b"\0"):
            raise CpioFormatError(f"name at {name_start} is not NUL-terminated")
        name = raw_name[:-1].decode()
        data_start = _align(name_end)
        if data[name_end:data_start].strip(b"\0"):
            raise CpioFormatError(f"non-zero padding after the name at {name_end}")
        if name == TRAILER:
            return Archive(members, data_start)
        data_end = data_start + values["filesize"]
        content = data[data_start:data_end]
        if len(content) != values["filesize"]:
            raise CpioFormatError(f"truncated data for {name}")
        next_offset = _align(data_end)
        if data[data_end:next_offset].strip(b"\0"):
            raise CpioFormatError(f"non-zero padding after the data of {name}")
        members.append(
            Member(
                name=name,
                ino=values["ino"],
                mode=values["mode"],
                uid=values["uid"],
                gid=values["gid"],
                nlink=values["nlink"],
                mtime=values["mtime"],
                rdev=(values["rdevmajor"], values["rdevminor"]),
                data=content,
            )
        )
        offset = next_offset
