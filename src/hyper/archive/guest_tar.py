"""A streaming filter for the tar a guest sends the host (`docker cp CTR:PATH`).

The guest agent makes the archive of a container path inside the VM. A
container that took the agent's channel over can send any bytes instead, and
a crafted tar extracted on the host by the docker CLI (which trusts the
daemon's archive) or by `hyper cp` could then write beside the destination,
through a symlink, or link to a host file. So hyperd serves only what passes
this filter, and the hyper CLI runs it again before extracting.

What passes is re-emitted, not copied: every header is parsed, checked and
written anew as a canonical PAX header (by tarfile), so a client's tar reader
(Go's archive/tar in the docker CLI, Python's in the hyper CLI, GNU tar behind
`docker cp CTR:PATH -`) sees exactly what was checked, and no parser
difference (ustar prefixes, repeated extended headers, header-only types with
a size) can carry a different name past it. File data passes through as it
arrives: memory is bounded by one extended header plus the names seen (which
the link rules need), never by the archive's size.

The rules; the first one broken ends the stream with ArchiveRefused:
- names: under the requested top-level name (Docker's archive of `path` has
  top entry `basename(path)`, or `.` for a directory's contents and the root),
  relative, without `..` or NUL, at most 4096 bytes and 255 per component;
  repeated slashes and `.` components are cleaned away;
- each name once: no duplicates, and nothing where an earlier member made or
  implied a directory (umoci's rule that a layer never clobbers what it wrote);
- nothing below an earlier symlink member (nor below one that differs only in
  case, for a destination on a case-insensitive file system), nor below a
  non-directory;
- hard links only to a regular file that came earlier in this archive
  (Docker only checks that the link's path stays under the destination,
  which a symlink inside that path defeats; umoci links only to what it
  extracted itself);
- symlinks are kept, whatever they point at: they are data, and neither
  Docker's extractor, umoci's nor the hyper CLI's follows one to write;
- character and block devices are dropped (a `docker cp` run as root would
  make them on the host: raw disk access); FIFOs are kept; every other type
  (GNU sparse, volume labels, multi-volume parts, global PAX headers, unknown
  ones) ends the stream;
- modes: permission bits and the sticky bit only (set-user-ID and
  set-group-ID stripped); owners numeric, owner names dropped; no xattrs
  (`security.capability` is a set-user-ID bit by another name) and no other
  extended records;
- sizes: a PAX header at most 1 MiB (Go's archive/tar limit), a GNU long
  name 8 KiB; no negative sizes, none past 2**63-1; header-only types (links,
  directories, FIFOs, devices) with a size are refused; checksums must match
  and headers carry ustar magic (POSIX or GNU);
- the end: the archive must end with its end-of-archive block. The end marker
  is emitted only by `close`, which hyperd calls once the guest reported that
  its copy succeeded, so a copy that fails after its last member still reads
  as a broken archive rather than a shorter valid one.

Docker's extraction rules this keeps (pkg/archive): names cleaned and held
under the destination, links checked to stay under it, no devices without
privilege. umoci's (oci/layer): paths joined under the root, hard links only
to what was extracted, nothing written through a symlink, the extractor
fuzzed. Stricter than both: members only under the requested name, no
duplicates, no devices at all, no set-ID bits, no xattrs.
"""

from __future__ import annotations

import enum
import posixpath
import struct
import tarfile
import unicodedata
from dataclasses import dataclass

from hyper.errors import DataLoss

BLOCK = tarfile.BLOCKSIZE
END_MARKER = bytes(2 * BLOCK)
_ZERO_BLOCK = bytes(BLOCK)
_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_MAX_SIZE = (1 << 63) - 1  # Go's int64
_MAX_ID = (1 << 32) - 1
_MAX_MTIME = 8**11 - 1  # what the ustar field holds: later times are clamped, earlier ones made 0
_HINT = "the container's VM sent an archive that breaks the copy rules; do not trust this container"


class ArchiveRefused(DataLoss):
    """A guest's archive broke a rule; the copy ends here."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refusing the archive from the container: {message}", hint=_HINT)


@dataclass(frozen=True)
class TarLimits:
    max_pax_bytes: int = 1 << 20
    max_long_name_bytes: int = 8 << 10
    max_path_bytes: int = 4096
    max_component_bytes: int = 255
    max_members: int = 1_000_000  # the names kept for the link rules: ~100 MB at most


class MemberKind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    FIFO = "fifo"
    DEVICE = "device"


_KINDS = {
    tarfile.REGTYPE: MemberKind.FILE,
    tarfile.AREGTYPE: MemberKind.FILE,
    tarfile.CONTTYPE: MemberKind.FILE,
    tarfile.DIRTYPE: MemberKind.DIRECTORY,
    tarfile.SYMTYPE: MemberKind.SYMLINK,
    tarfile.LNKTYPE: MemberKind.HARDLINK,
    tarfile.FIFOTYPE: MemberKind.FIFO,
    tarfile.CHRTYPE: MemberKind.DEVICE,
    tarfile.BLKTYPE: MemberKind.DEVICE,
}
_EMITTED_TYPES = {
    MemberKind.FILE: tarfile.REGTYPE,
    MemberKind.DIRECTORY: tarfile.DIRTYPE,
    MemberKind.SYMLINK: tarfile.SYMTYPE,
    MemberKind.HARDLINK: tarfile.LNKTYPE,
    MemberKind.FIFO: tarfile.FIFOTYPE,
}
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _Seen(enum.Enum):
    """What a name already stands for in the archive."""

    DIRECTORY = "directory"
    IMPLIED_DIRECTORY = "implied directory"  # a parent of a member, with no member of its own
    FILE = "file"  # a regular file or a hard link to one: what a hard link may name
    SYMLINK = "symlink"
    OTHER = "other"  # a FIFO, or a dropped device


class _Phase(enum.Enum):
    HEADER = "header"
    EXTENDED = "extended header"
    DATA = "member data"
    PADDING = "padding"
    END = "end"
    CLOSED = "closed"
    FAILED = "failed"


def archive_name(path: str) -> str:
    """The name Docker gives the container path `path` in its stat: the cleaned
    path's last component, `.` for a path ending in `/.` (a directory's
    contents), `/` for the root. Computed on the host from the path asked
    for: the guest's own answer is not trusted."""
    stripped = path.rstrip("/")
    if stripped and posixpath.basename(stripped) == ".":
        return "."
    return posixpath.basename(posixpath.normpath("/" + path)) or "/"


def top_name(path: str) -> str:
    """The top-level name in Docker's archive of `path`: its archive_name, but
    `.` for the root, since no member can be called `/`."""
    name = archive_name(path)
    return "." if name == "/" else name


@dataclass(frozen=True)
class _Header:
    name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    type: bytes
    linkname: str


def _text(field: bytes) -> str:
    """A NUL-terminated header field (names are bytes: undecodable ones kept as surrogates)."""
    end = field.find(0)
    return bytes(field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal digits, or GNU's base-256 (which may be negative)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    digits = bytes(field).split(b"\x00", 1)[0].strip(b" ")
    if digits.translate(None, b"01234567"):  # anything but octal digits left
        raise ArchiveRefused(f"a header has a malformed number field ({bytes(field)!r})")
    return int(digits or b"0", 8)


def _checksum_matches(block: bytes, expected: int) -> bool:
    """The header's checksum, as unsigned or as signed bytes (old tars used either)."""
    unsigned: int = 256 + sum(struct.unpack_from("148B8x356B", block))
    if expected == unsigned:
        return True
    signed: int = 256 + sum(struct.unpack_from("148b8x356b", block))
    return expected == signed


def parse_header(block: bytes) -> _Header:
    """One 512-byte ustar header (POSIX or GNU magic), its checksum verified."""
    if not _checksum_matches(block, _number(block[148:156])):
        raise ArchiveRefused("a header's checksum does not match")
    magic = block[257:265]
    if magic not in (_POSIX_MAGIC, _GNU_MAGIC):
        raise ArchiveRefused(f"a header has no ustar magic ({bytes(magic)!r})")
    name = _text(block[0:100])
    if magic == _POSIX_MAGIC and (prefix := _text(block[345:500])):
        name = f"{prefix}/{name}"
    return _Header(
        name=name,
        mode=_number(block[100:108]),
        uid=_number(block[108:116]),
        gid=_number(block[116:124]),
        size=_number(block[124:136]),
        mtime=_number(block[136:148]),
        type=bytes(block[156:157]),
        linkname=_text(block[157:257]),
    )


def parse_pax_records(data: bytes) -> dict[str, bytes]:
    """A PAX extended header's `LENGTH KEY=VALUE\\n` records (the last of a key wins)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ArchiveRefused("a PAX header has a record without a length")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise ArchiveRefused("a PAX header has a record of the wrong length")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key:
            raise ArchiveRefused("a PAX header has a record without a key")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


def _pax_number(records: dict[str, bytes], key: str) -> int | None:
    """A numeric PAX record: decimal digits (an mtime may have a sign and a fraction)."""
    value = records.get(key)
    if value is None:
        return None
    negative = False
    if key == "mtime":
        negative = value.startswith(b"-")
        value, _, fraction = value.removeprefix(b"-").partition(b".")
        if fraction and not fraction.isdigit():
            raise ArchiveRefused(f"a PAX header has a bad mtime ({records[key][:40]!r})")
    if not value.isdigit() or len(value) > 24:
        raise ArchiveRefused(f"a PAX header has a bad {key} ({records[key][:40]!r})")
    return 0 if negative else int(value)  # a time before 1970 is clamped, as every out-of-range one


def _fold(name: str) -> str:
    """A name as a case-insensitive file system compares it."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


class GuestTarFilter:
    """Checks a guest's tar as it streams and re-emits what passes.

    `feed` takes bytes as they come and returns the bytes to pass on (possibly
    none yet); `close` checks that the archive ended properly and returns its
    end marker. After an ArchiveRefused every call raises it again.
    """

    def __init__(self, top: str, limits: TarLimits = TarLimits()) -> None:
        if top != "." and (not top or "/" in top or top == ".."):
            raise ValueError(f"{top!r} is not a top-level archive name")
        self.top = top
        self.limits = limits
        self.members = 0  # members passed on
        self._phase = _Phase.HEADER
        self._pending = bytearray()  # a header or extended header being collected
        self._want = BLOCK
        self._remaining = 0  # data bytes of the current member still to pass on
        self._padding = 0  # padding bytes after the data or extended header still to skip
        self._extended_type = b""
        self._pax: dict[str, bytes] | None = None
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._seen: dict[str, _Seen] = {}
        self._folded_links: set[str] = set()
        self._failure: ArchiveRefused | None = None

    # -- the stream ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._failure is not None:
            raise self._failure
        if self._phase is _Phase.CLOSED:
            raise ValueError("the filter is closed")
        out: list[bytes] = []
        try:
            self._consume(memoryview(data), out)
        except ArchiveRefused as exc:
            self._fail(exc)
            raise
        return b"".join(out)

    def close(self) -> bytes:
        """The end marker, once the archive has ended where it should."""
        if self._failure is not None:
            raise self._failure
        if self._phase is not _Phase.END:
            where = "before its end-of-archive block" if self._phase is _Phase.HEADER else "in the middle"
            self._fail(ArchiveRefused(f"the archive stopped {where} ({self._phase.value})"))
            assert self._failure is not None
            raise self._failure
        self._phase = _Phase.CLOSED
        return END_MARKER

    def _fail(self, error: ArchiveRefused) -> None:
        self._failure = error
        self._phase = _Phase.FAILED
        self._pending.clear()

    def _consume(self, view: memoryview, out: list[bytes]) -> None:
        pos, end = 0, len(view)
        while pos < end:
            phase = self._phase
            if phase is _Phase.DATA:
                count = min(self._remaining, end - pos)
                out.append(bytes(view[pos : pos + count]))
                pos += count
                self._remaining -= count
                if not self._remaining:
                    out.append(bytes(self._padding))  # the same size in and out
                    self._skip_padding()
            elif phase is _Phase.PADDING:
                count = min(self._padding, end - pos)
                pos += count
                self._padding -= count
                if not self._padding:
                    self._phase = _Phase.HEADER
                    self._want = BLOCK
            elif phase is _Phase.END:
                return  # the record padding after the end marker, or anything else: ignored
            else:
                count = min(self._want - len(self._pending), end - pos)
                self._pending += view[pos : pos + count]
                pos += count
                if len(self._pending) == self._want:
                    block = bytes(self._pending)
                    self._pending.clear()
                    if phase is _Phase.HEADER:
                        self._header(block, out)
                    else:
                        self._extended(block)

    def _skip_padding(self) -> None:
        if self._padding:
            self._phase = _Phase.PADDING
        else:
            self._phase, self._want = _Phase.HEADER, BLOCK

    @staticmethod
    def _padding_of(size: int) -> int:
        return -size % BLOCK

    # -- headers ---------------------------------------------------------------
    def _header(self, block: bytes, out: list[bytes]) -> None:
        if block == _ZERO_BLOCK:
            if self._pax is not None or self._long_name is not None or self._long_link is not None:
                raise ArchiveRefused("the archive ends right after an extended header")
            self._phase = _Phase.END
            return
        header = parse_header(block)
        if header.type in _EXTENDED_TYPES:
            self._start_extended(header)
            return
        emitted, size = self._member(header)
        if emitted is not None:
            out.append(emitted)
            self.members += 1
        self._padding = self._padding_of(size)
        if size:
            self._phase, self._remaining = _Phase.DATA, size
        else:
            self._skip_padding()

    def _start_extended(self, header: _Header) -> None:
        pax = header.type == tarfile.XHDTYPE
        limit = self.limits.max_pax_bytes if pax else self.limits.max_long_name_bytes
        if not 0 <= header.size <= limit:
            raise ArchiveRefused(f"an extended header of {header.size} bytes (the limit is {limit})")
        already = {
            tarfile.XHDTYPE: self._pax is not None,
            tarfile.GNUTYPE_LONGNAME: self._long_name is not None,
            tarfile.GNUTYPE_LONGLINK: self._long_link is not None,
        }[header.type]
        if already:
            raise ArchiveRefused("two extended headers of one kind before a member")
        self._extended_type = header.type
        self._padding = self._padding_of(header.size)
        if header.size:
            self._phase, self._want = _Phase.EXTENDED, header.size
        else:
            self._extended(b"")

    def _extended(self, data: bytes) -> None:
        if self._extended_type == tarfile.XHDTYPE:
            records = parse_pax_records(data)
            if any(key.startswith("GNU.sparse.") for key in records):
                raise ArchiveRefused("a sparse member (GNU.sparse PAX records)")
            self._pax = records
        elif self._extended_type == tarfile.GNUTYPE_LONGNAME:
            self._long_name = _text(data)
        else:
            self._long_link = _text(data)
        self._skip_padding()

    # -- members ---------------------------------------------------------------
    def _member(self, header: _Header) -> tuple[bytes | None, int]:
        """The header to emit for this member (None when it is dropped) and its data size."""
        kind = _KINDS.get(header.type)
        if kind is None:
            raise ArchiveRefused(f"a member of tar type {header.type!r}, which a copy never holds")
        pax, long_name, long_link = self._pax or {}, self._long_name, self._long_link
        self._pax = self._long_name = self._long_link = None
        if ("path" in pax and long_name is not None) or ("linkpath" in pax and long_link is not None):
            raise ArchiveRefused("a member named by both a PAX header and a GNU long name")
        raw_name = header.name if long_name is None else long_name
        raw_link = header.linkname if long_link is None else long_link
        if "path" in pax:  # whole: a NUL inside is refused below, not cut at
            raw_name = pax["path"].decode("utf-8", "surrogateescape")
        if "linkpath" in pax:
            raw_link = pax["linkpath"].decode("utf-8", "surrogateescape")
        size = _pax_number(pax, "size")
        size = header.size if size is None else size
        if not 0 <= size <= _MAX_SIZE:
            raise ArchiveRefused(f"member {raw_name[:200]!r} has a size of {size}")
        if kind is not MemberKind.FILE and size:
            raise ArchiveRefused(f"{kind.value} {raw_name[:200]!r} claims {size} bytes of data")
        uid, gid = _pax_number(pax, "uid"), _pax_number(pax, "gid")
        uid, gid = header.uid if uid is None else uid, header.gid if gid is None else gid
        if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
            raise ArchiveRefused(f"member {raw_name[:200]!r} has owner {uid}:{gid}")
        mtime = _pax_number(pax, "mtime")
        mtime = min(max(header.mtime if mtime is None else mtime, 0), _MAX_MTIME)
        if len(self._seen) >= self.limits.max_members:
            raise ArchiveRefused(f"more than {self.limits.max_members} members; copy smaller parts")
        if kind is MemberKind.FILE and raw_name.endswith("/"):
            raise ArchiveRefused(f"regular file {raw_name[:200]!r} is named like a directory")

        name = self._canonical(raw_name)
        if self.top == "." and name == "." and kind is not MemberKind.DIRECTORY:
            raise ArchiveRefused(f"the top of a directory's archive is a {kind.value}")
        self._place(name)
        linkname = ""
        if kind is MemberKind.SYMLINK:
            linkname = self._symlink_target(name, raw_link)
        elif kind is MemberKind.HARDLINK:
            linkname = self._canonical(raw_link)
            if self._seen.get(linkname) is not _Seen.FILE:
                raise ArchiveRefused(
                    f"hard link {name[:200]!r} points at {linkname[:200]!r}, "
                    "which is not a regular file earlier in the archive"
                )
        self._seen[name] = {
            MemberKind.FILE: _Seen.FILE,
            MemberKind.HARDLINK: _Seen.FILE,
            MemberKind.DIRECTORY: _Seen.DIRECTORY,
            MemberKind.SYMLINK: _Seen.SYMLINK,
        }.get(kind, _Seen.OTHER)
        if kind is MemberKind.SYMLINK:
            self._folded_links.add(_fold(name))
        if kind is MemberKind.DEVICE:
            return None, 0
        info = tarfile.TarInfo(name)
        info.type = _EMITTED_TYPES[kind]
        info.mode = 0o777 if kind is MemberKind.SYMLINK else header.mode & 0o1777
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mtime = mtime
        info.size = size
        info.linkname = linkname
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), size

    def _canonical(self, raw: str) -> str:
        """`raw` cleaned, as `top/…` (or `./…`), or refused."""
        shown = raw[:200]
        if "\x00" in raw:
            raise ArchiveRefused(f"member name {shown!r} contains a NUL byte")
        if raw.startswith("/"):
            raise ArchiveRefused(f"member name {shown!r} is absolute")
        if len(raw.encode("utf-8", "surrogateescape")) > self.limits.max_path_bytes:
            raise ArchiveRefused(f"member name {shown!r}… is longer than {self.limits.max_path_bytes} bytes")
        parts = [part for part in raw.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ArchiveRefused(f"member name {shown!r} has a '..' component")
        for part in parts:
            if len(part.encode("utf-8", "surrogateescape")) > self.limits.max_component_bytes:
                raise ArchiveRefused(
                    f"member name {shown!r} has a component longer than "
                    f"{self.limits.max_component_bytes} bytes"
                )
        if self.top == ".":
            return "/".join([".", *parts])
        if not parts or parts[0] != self.top:
            raise ArchiveRefused(f"member {shown!r} is not under {self.top!r}, the name asked for")
        return "/".join(parts)

    def _place(self, name: str) -> None:
        """Refuse a second member of one name, and one below a symlink or a non-directory."""
        if name in self._seen:
            raise ArchiveRefused(f"{name[:200]!r} appears twice")
        parts = name.split("/")
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            seen = self._seen.get(prefix)
            if seen is None:
                self._seen[prefix] = _Seen.IMPLIED_DIRECTORY
            elif seen is _Seen.SYMLINK:
                raise ArchiveRefused(f"{name[:200]!r} would be written through the symlink {prefix[:200]!r}")
            elif seen not in (_Seen.DIRECTORY, _Seen.IMPLIED_DIRECTORY):
                raise ArchiveRefused(f"{name[:200]!r} is below {prefix[:200]!r}, which is not a directory")
            if self._folded_links and _fold(prefix) in self._folded_links:
                raise ArchiveRefused(
                    f"{name[:200]!r} is below {prefix[:200]!r}, which a symlink's name matches "
                    "on a case-insensitive file system"
                )

    def _symlink_target(self, name: str, target: str) -> str:
        if not target:
            raise ArchiveRefused(f"symlink {name[:200]!r} has no target")
        if "\x00" in target:
            raise ArchiveRefused(f"symlink {name[:200]!r} has a NUL byte in its target")
        if len(target.encode("utf-8", "surrogateescape")) > self.limits.max_path_bytes:
            raise ArchiveRefused(
                f"symlink {name[:200]!r} has a target longer than {self.limits.max_path_bytes}"
            )
        return target
