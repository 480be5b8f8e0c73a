"""Tar archives built byte by byte, hostile ones included, for the tests of
the guest tar filter, the hyper CLI's extractor and their fuzzing.

`tarfile` refuses to write much of what a hostile guest can send (bad
checksums, sizes on links, two PAX headers in a row, base-256 negatives), so
headers are packed here field by field. `member` is one header plus its data
and padding; an archive is members joined and `END`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from typing import Any

BLOCK = 512
END = bytes(2 * BLOCK)
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"
MTIME = 1_600_000_000


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def octal(value: int, width: int) -> bytes:
    """A ustar number field; base-256 (GNU) when it does not fit or is negative."""
    digits = f"{value:0{width - 1}o}".encode() if value >= 0 else b""
    if value >= 0 and len(digits) < width:
        return digits + b"\0"
    raw = value % (1 << (8 * (width - 1)))
    return bytes([0o377 if value < 0 else 0o200]) + raw.to_bytes(width - 1, "big")


def header(
    name: str | bytes,
    *,
    kind: bytes = tarfile.REGTYPE,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    linkname: str | bytes = b"",
    magic: bytes = POSIX_MAGIC,
    prefix: str | bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    checksum_delta: int = 0,
) -> bytes:
    """One 512-byte header; `checksum_delta` spoils the checksum on purpose."""
    block = bytearray(BLOCK)
    block[0:100] = _bytes(name)[:100].ljust(100, b"\0")
    block[100:108] = octal(mode, 8)
    block[108:116] = octal(uid, 8)
    block[116:124] = octal(gid, 8)
    block[124:136] = octal(size, 12)
    block[136:148] = octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:257] = _bytes(linkname)[:100].ljust(100, b"\0")
    block[257:265] = magic
    block[329:337] = octal(devmajor, 8)
    block[337:345] = octal(devminor, 8)
    block[345:500] = _bytes(prefix)[:155].ljust(155, b"\0")
    checksum = sum(block) + checksum_delta
    block[148:156] = f"{checksum:06o}".encode() + b"\0 "
    return bytes(block)


def patched(block: bytes, offset: int, data: bytes) -> bytes:
    """A header with bytes replaced at `offset` and its checksum made right again."""
    changed = bytearray(block)
    changed[offset : offset + len(data)] = data
    changed[148:156] = b" " * 8
    changed[148:156] = f"{sum(changed):06o}".encode() + b"\0 "
    return bytes(changed)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str | bytes, data: bytes = b"", **fields: Any) -> bytes:
    """A header with its data and padding; `size` defaults to the data's length."""
    fields.setdefault("size", len(data))
    return header(name, **fields) + padded(data)


def pax_record(key: str | bytes, value: str | bytes) -> bytes:
    body = b" " + _bytes(key) + b"=" + _bytes(value) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: Iterable[tuple[str | bytes, str | bytes]], *, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A PAX extended header (`x`, or `g` for a global one) applying to the next member."""
    data = b"".join(pax_record(key, value) for key, value in records)
    return member(b"././@PaxHeader", data, kind=kind)


def gnu_long(value: str | bytes, *, kind: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    """A GNU long name (`L`) or long link target (`K`) for the next member."""
    return member(b"././@LongLink", _bytes(value) + b"\0", kind=kind, magic=GNU_MAGIC)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + END


def file(name: str | bytes, data: bytes = b"", **fields: Any) -> bytes:
    return member(name, data, **fields)


def directory(name: str | bytes, **fields: Any) -> bytes:
    fields.setdefault("mode", 0o755)
    return member(name, kind=tarfile.DIRTYPE, **fields)


def symlink(name: str | bytes, target: str | bytes, **fields: Any) -> bytes:
    return member(name, kind=tarfile.SYMTYPE, linkname=target, mode=0o777, **fields)


def hardlink(name: str | bytes, target: str | bytes, **fields: Any) -> bytes:
    return member(name, kind=tarfile.LNKTYPE, linkname=target, **fields)


def device(name: str | bytes, *, kind: bytes = tarfile.CHRTYPE, major: int = 8, minor: int = 0) -> bytes:
    return member(name, kind=kind, devmajor=major, devminor=minor, mode=0o660)


def fifo(name: str | bytes) -> bytes:
    return member(name, kind=tarfile.FIFOTYPE)
