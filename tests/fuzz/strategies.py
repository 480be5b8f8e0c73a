"""Hypothesis strategies for hostile inputs: tars a compromised guest or a
malicious image could send, and JSON bodies a Docker API client could post.

Tars are built from member specs (tests/support/tars.py packs them), so the
generator reaches the interesting cases quickly: path traversal, absolute
names, a symlink and then a write through it, hard links to the outside, to
later or missing members, devices, set-ID bits, duplicate names, a directory
over a file, long names through PAX and GNU headers, sizes on header-only
types, odd types; then some bytes flipped or the end cut off.
"""

from __future__ import annotations

import dataclasses
import tarfile
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.support import tars

TOP = "d"
# Path pieces that collide with each other, with the top name, with the host
# files the extraction tests keep beside and inside the destination, and
# with the case-folding and length limits.
PIECES = [
    TOP,
    "D",
    "other",
    "..",
    ".",
    "",
    "a",
    "A",
    "sub",
    "link",
    "existing.txt",
    "existing-dir",
    "host-link",
    "café",
    "cafe\u0301",
    "\udcff",
    "x" * 120,
    "n" * 256,
    "nul\x00byte",
]
# Benign pieces, under the top name: most members pass the filter, so that
# the extractor meets many of them (and the host files of the same names).
BENIGN_PIECES = ["a", "b", "A", "sub", "link", "existing.txt", "existing-dir", "inner", "host-link", "café"]
# Weighted by repetition: ordinary members mostly, every odd type now and then.
KINDS = [
    *[tarfile.REGTYPE] * 4,
    *[tarfile.DIRTYPE] * 3,
    *[tarfile.SYMTYPE] * 2,
    *[tarfile.LNKTYPE] * 2,
    tarfile.AREGTYPE,
    tarfile.CONTTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.GNUTYPE_SPARSE,
    tarfile.XGLTYPE,
    b"V",
    b"Z",
]
MODES = [0o644, 0o755, 0o777, 0o4755, 0o2755, 0o6777, 0o1777, 0o100644, 0o170777, 0]

hostile_names = st.builds(
    lambda lead, parts, trail: lead + "/".join(parts) + trail,
    st.sampled_from(["", "", "", "./", "/", "../", "//"]),
    st.lists(st.sampled_from(PIECES), min_size=0, max_size=5),
    st.sampled_from(["", "", "/"]),
)


def benign_names(root: str = TOP) -> st.SearchStrategy[str]:
    """Names under `root` (the top name, or `.` for a directory's contents, whose
    members land among the host's files)."""
    return st.builds(
        lambda lead, parts, trail: lead + "/".join([root, *parts]) + trail,
        st.sampled_from(["", "", "", "./"]),
        st.lists(st.sampled_from(BENIGN_PIECES), min_size=0, max_size=3),
        st.sampled_from([*[""] * 7, "/"]),
    )


names = st.one_of(benign_names(), benign_names(), benign_names(), hostile_names)


def link_targets(root: str = TOP) -> st.SearchStrategy[str]:
    return st.one_of(
        benign_names(root),
        benign_names(root),
        hostile_names,
        st.sampled_from(
            ["/", "/etc", "/etc/passwd", "../..", "../outside", "..", "../../outside", "", "a", "../a"]
        ),
    )


@dataclass(frozen=True)
class MemberSpec:
    kind: bytes
    name: str
    linkname: str
    mode: int
    data: bytes
    wrapping: str  # plain | pax | gnu | prefix | pax+gnu
    size_delta: int  # added to the size field: a size on a header-only type, or a wrong one
    uid: int
    extra_pax: tuple[tuple[str, str], ...]


member_specs = st.builds(
    MemberSpec,
    kind=st.sampled_from(KINDS),
    name=names,
    linkname=link_targets(),
    mode=st.sampled_from(MODES),
    data=st.one_of(st.just(b""), st.binary(max_size=700)),
    wrapping=st.sampled_from([*["plain"] * 6, "pax", "pax", "gnu", "prefix", "pax+gnu"]),
    size_delta=st.sampled_from([*[0] * 12, 1, -1, 512, -(1 << 40), 1 << 70]),
    uid=st.sampled_from([*[0] * 6, 1000, -1, 1 << 33]),
    extra_pax=st.just(())
    | st.just(())
    | st.just(())
    | st.lists(
        st.tuples(
            st.sampled_from(
                ["SCHILY.xattr.security.capability", "size", "mtime", "uid", "GNU.sparse.map", "hdrcharset"]
            ),
            st.sampled_from(["1", "-1", "1.5", "x", "", "BINARY", "\x00"]),
        ),
        max_size=2,
    ).map(tuple),
)


def benign_specs(root: str = TOP) -> st.SearchStrategy[MemberSpec]:
    """Members an honest guest could send (modes aside), which mostly pass the filter."""
    return st.builds(
        MemberSpec,
        kind=st.sampled_from(
            [
                *[tarfile.REGTYPE] * 4,
                *[tarfile.DIRTYPE] * 3,
                *[tarfile.SYMTYPE] * 2,
                tarfile.LNKTYPE,
                tarfile.FIFOTYPE,
            ]
        ),
        name=benign_names(root),
        linkname=link_targets(root),
        mode=st.sampled_from(MODES),
        data=st.one_of(st.just(b""), st.binary(max_size=700)),
        wrapping=st.sampled_from([*["plain"] * 4, "pax"]),
        size_delta=st.just(0),
        uid=st.just(0),
        extra_pax=st.just(()),
    )


def render(spec: MemberSpec) -> bytes:
    """A member spec as tar bytes: its extended headers, header, data and padding."""
    data = spec.data if spec.kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else b""
    fields: dict[str, Any] = {
        "kind": spec.kind,
        "mode": spec.mode,
        "uid": spec.uid,
        "size": len(data) + spec.size_delta,
        "linkname": spec.linkname,
    }
    before = b""
    name = spec.name
    if "pax" in spec.wrapping:
        records = [("path", spec.name), *spec.extra_pax]
        if spec.linkname:
            records.append(("linkpath", spec.linkname))
        before += tars.pax(records)
        name = "placeholder"
    if "gnu" in spec.wrapping:
        before += tars.gnu_long(spec.name)
        if spec.linkname:
            before += tars.gnu_long(spec.linkname, kind=tarfile.GNUTYPE_LONGLINK)
        name = "placeholder"
    if spec.wrapping == "prefix" and "/" in spec.name:
        prefix, _, name = spec.name.rpartition("/")
        fields["prefix"] = prefix
    try:
        header = tars.header(name, **fields)
    except (OverflowError, ValueError):
        header = tars.header(name, **{**fields, "size": len(data), "uid": 0})
    return before + header + tars.padded(data)


def _cleaned(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


@st.composite
def hostile_tars(draw: st.DrawFn, *, hostile: bool = True, root: str | None = None) -> bytes:
    """A tar of members an honest guest could send mixed with hostile ones, sometimes
    cut short, corrupted or followed by junk; without `hostile`, only the first kind
    (whose mode bits, symlink targets and collisions with host files still test the
    extractor). `root` is the top name of the benign members (by default the
    top name or `.`, drawn)."""
    root = root or draw(st.sampled_from([TOP, TOP, "."]))
    specs = draw(
        st.lists(benign_specs(root), min_size=1, max_size=10, unique_by=lambda spec: _cleaned(spec.name))
    )
    parents = {part for spec in specs for part in _parents(_cleaned(spec.name))}
    if draw(st.integers(0, 7)):  # mostly, what has children is a directory
        specs = [
            dataclasses.replace(spec, kind=tarfile.DIRTYPE) if _cleaned(spec.name) in parents else spec
            for spec in specs
        ]
    if draw(st.integers(0, 3)):
        specs.sort(key=lambda spec: _cleaned(spec.name).count("/"))  # parents first, as a guest writes them
    hostile_count = draw(st.sampled_from([0, 0, 0, 1, 1, 2])) if hostile else 0
    for bad in draw(st.lists(member_specs, min_size=hostile_count, max_size=hostile_count)):
        specs.insert(draw(st.integers(0, len(specs))), bad)
    data = b"".join(render(spec) for spec in specs) + tars.END
    damage = draw(st.sampled_from([*["none"] * 8, "truncate", "flip", "junk"])) if hostile else "none"
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        flips = draw(
            st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=4)
        )
        changed = bytearray(data)
        for position, value in flips:
            changed[position] = value
        data = bytes(changed)
    elif damage == "junk":
        data += draw(st.binary(min_size=1, max_size=600))
    return data


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes (cycled), as a stream delivers it."""
    pieces, start, index = [], 0, 0
    while start < len(data):
        size = max(1, sizes[index % len(sizes)]) if sizes else len(data)
        pieces.append(data[start : start + size])
        start += size
        index += 1
    return pieces


# -- JSON ------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
DOCKER_CREATE_KEYS = [
    "Image",
    "Cmd",
    "Entrypoint",
    "Env",
    "WorkingDir",
    "User",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Hostname",
    "Labels",
    "Volumes",
    "HostConfig",
]
HOST_CONFIG_KEYS = [
    "Memory",
    "NanoCpus",
    "RestartPolicy",
    "AutoRemove",
    "NetworkMode",
    "Binds",
    "Privileged",
    "Init",
    "PortBindings",
]
plausible_values = st.one_of(
    json_values,
    st.just("busybox"),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2),
    st.fixed_dictionaries({"Name": json_values, "MaximumRetryCount": json_values}),
    st.sampled_from(["no", "always", "on-failure:3", "on-failure:x", "unless-stopped", "bogus", ""]),
)
host_configs = st.dictionaries(st.sampled_from(HOST_CONFIG_KEYS), plausible_values, max_size=4)
docker_create_bodies = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(DOCKER_CREATE_KEYS), st.one_of(plausible_values, host_configs), max_size=8
    ),
    st.builds(
        lambda body, host: {**body, "Image": "busybox", "HostConfig": host},
        st.dictionaries(st.sampled_from(DOCKER_CREATE_KEYS), plausible_values, max_size=6),
        host_configs,
    ),
)
