"""Writes the fuzz targets' seed corpus (tests/fuzz/corpus/<target>/).

Run `python -m tests.fuzz.make_corpus` to write the seeds again after
changing them here. The files are committed: the fuzz tests replay every
file of their target on each run, and inputs a longer fuzzing run found are
added to the same directories by hand (any name), beside these.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from hyper.agent.protocol import FrameKind, encode_frame, encode_message
from tests.support import tars
from tests.support.tars import (
    archive,
    device,
    directory,
    fifo,
    file,
    gnu_long,
    hardlink,
    member,
    pax,
    symlink,
)

CORPUS = Path(__file__).parent / "corpus"
HONEST = archive(
    directory("d"),
    file("d/a", b"alpha\n", mode=0o640),
    directory("d/sub"),
    file("d/sub/b", b"beta\n"),
    symlink("d/rel", "a"),
    symlink("d/abs", "/etc/passwd"),
    hardlink("d/hard", "d/a"),
    fifo("d/pipe"),
)

GUEST_TARS = {
    "honest.tar": HONEST,
    "honest-contents.tar": archive(directory("."), file("./a", b"a"), directory("./sub"), file("./sub/b")),
    "honest-long-names.tar": archive(
        directory("d"),
        pax([("path", "d/" + "long/" * 30 + "name"), ("linkpath", "d/" + "x" * 150)]),
        file("placeholder", b"long"),
        pax([("path", "d/caf\udce9")]),
        file("placeholder", b"latin-1 name"),
    ),
    "honest-gnu-long.tar": archive(directory("d"), gnu_long("d/" + "g" * 200), file("x", b"gnu")),
    # The review's crafted tar: a file beside the destination, another file
    # overwritten, an existing host directory chmod'ed, a hard link to a host file.
    "review-beside.tar": archive(directory("d"), file("beside", b"owned")),
    "review-overwrite-through-symlink.tar": archive(
        directory("d"), symlink("d/l", "../existing.txt"), file("d/l", b"owned")
    ),
    "review-chmod-existing-dir.tar": archive(
        directory(".", mode=0o777), directory("./existing-dir", mode=0o777)
    ),
    "review-hardlink-host-file.tar": archive(directory("d"), hardlink("d/h", "existing.txt")),
    "review-hardlink-outside.tar": archive(directory("d"), hardlink("d/h", "../outside")),
    "review-hardlink-through-symlink.tar": archive(
        directory("d"), symlink("d/s", "/etc"), hardlink("d/h", "d/s/passwd")
    ),
    # Against the host files the extraction tests keep in the destination
    # (existing.txt, existing-dir/inner, host-link -> outside, and the same
    # inside an existing `copy`): merged, replaced, or refused part way.
    "host-through-link.tar": archive(directory("."), file("./a", b"a"), file("./host-link/escape", b"x")),
    "host-replace-then-fail.tar": archive(
        directory("."), file("./existing.txt", b"new"), directory("./new"), file("./existing-dir/inner/x")
    ),
    "host-merge-then-fail.tar": archive(
        directory("d"), file("d/a", b"new"), directory("d/existing-dir/new"), file("d/existing.txt/x")
    ),
    "host-dir-over-file.tar": archive(directory("d"), file("d/b"), directory("d/existing.txt")),
    "host-hardlink-to-replaced.tar": archive(
        directory("d"), file("d/existing.txt", b"new"), hardlink("d/h", "d/existing.txt")
    ),
    # Found by fuzzing (the test's own walk): links too long to resolve.
    "found-symlink-long-chain.tar": archive(
        directory("d"), symlink("d/a", "a/" + "x" * 120 + "/" + "a/" * 1900), symlink("d/b", "b/b/b/b")
    ),
    "absolute.tar": archive(file("/d/x", b"x")),
    "dotdot.tar": archive(directory("d"), file("d/../../escape", b"x")),
    "symlink-write-through.tar": archive(directory("d"), symlink("d/l", "/tmp"), file("d/l/escape", b"x")),
    "symlink-casefold.tar": archive(directory("d"), symlink("d/L", "/tmp"), file("d/l/escape", b"x")),
    "symlink-then-dir.tar": archive(directory("d"), symlink("d/l", "/tmp"), directory("d/l")),
    "hardlink-later.tar": archive(directory("d"), hardlink("d/h", "d/f"), file("d/f")),
    "hardlink-to-dir.tar": archive(directory("d"), directory("d/sub"), hardlink("d/h", "d/sub")),
    "devices-and-setuid.tar": archive(
        directory("d"),
        device("d/sda", kind=tarfile.BLKTYPE),
        device("d/mem", major=1, minor=1),
        file("d/suid", b"#!/bin/sh\n", mode=0o4755),
        file("d/sgid", b"", mode=0o2755),
    ),
    "duplicate.tar": archive(directory("d"), file("d/x", b"1"), file("d/x", b"2")),
    "dir-over-file.tar": archive(directory("d"), file("d/x"), directory("d/x")),
    "file-over-implied-dir.tar": archive(file("d/sub/x"), file("d/sub")),
    "below-file.tar": archive(file("d/f"), file("d/f/x")),
    "pax-too-big.tar": tars.header("pax", kind=tarfile.XHDTYPE, size=2 << 20) + bytes(4096),
    "pax-malformed.tar": archive(member("pax", b"99 path=d\n", kind=tarfile.XHDTYPE), file("d")),
    "pax-nul-path.tar": archive(pax([("path", "d/a\x00b")]), file("d/x")),
    "pax-xattr-capability.tar": archive(
        pax([("SCHILY.xattr.security.capability", "\x01\x00\x00\x02")]), file("d", b"cap")
    ),
    "pax-sparse.tar": archive(pax([("GNU.sparse.major", "1"), ("GNU.sparse.name", "d")]), file("d")),
    "pax-global.tar": archive(pax([("path", "d/g")], kind=tarfile.XGLTYPE), file("d")),
    "two-pax-headers.tar": archive(pax([("path", "d/a")]), pax([("path", "beside")]), file("d/x")),
    "pax-and-gnu-name.tar": archive(gnu_long("beside"), pax([("path", "d/a")]), file("d/x")),
    "gnu-long-too-big.tar": archive(gnu_long("d/" + "n" * 9000), file("d")),
    "negative-size.tar": archive(tars.header("d", size=-512)),
    "huge-size.tar": archive(tars.header("d", size=1 << 80)),
    "symlink-with-size.tar": tars.header("d", kind=tarfile.SYMTYPE, linkname="x", size=1024)
    + bytes(1024)
    + tars.END,
    "gnu-sparse-type.tar": archive(tars.header("d", kind=tarfile.GNUTYPE_SPARSE)),
    "bad-checksum.tar": archive(tars.header("d", checksum_delta=7)),
    "v7-no-magic.tar": archive(tars.header("d", magic=bytes(8))),
    "prefix-escape.tar": archive(tars.header("x", prefix="../..")),
    "truncated.tar": HONEST[:1500],
    "no-end.tar": HONEST[: -len(tars.END)],
    "junk-after-end.tar": HONEST + b"junk" * 300,
    "empty.tar": b"",
    "not-a-tar.tar": b"this is not a tar archive\n" * 40,
}

LAYER_TARS = {
    "honest.tar": archive(
        directory("etc"), file("etc/passwd", b"root:x:0:0\n"), symlink("bin", "usr/bin"), directory("usr/bin")
    ),
    "whiteouts.tar": archive(
        directory("etc"), file("etc/.wh.shadow"), file("usr/.wh..wh..opq"), file(".wh.tmp")
    ),
    "whiteout-own-file.tar": archive(file("a", b"kept"), file(".wh.a")),
    "traversal.tar": archive(file("../escape", b"x")),
    "absolute.tar": archive(file("/etc/escape", b"x")),
    "symlink-escape-write.tar": archive(symlink("l", "../../.."), file("l/escape", b"x")),
    "symlink-absolute-write.tar": archive(symlink("l", "/"), file("l/tmp/escape", b"x")),
    "symlink-loop.tar": archive(symlink("a", "b"), symlink("b", "a"), file("a/x")),
    "hardlink-outside.tar": archive(hardlink("h", "../outside")),
    "hardlink-missing.tar": archive(hardlink("h", "nothing")),
    "hardlink-through-symlink.tar": archive(symlink("s", "/etc"), hardlink("h", "s/passwd")),
    "long-name.tar": archive(pax([("path", "n" * 300)]), file("x")),
    "long-path.tar": archive(pax([("path", "a/" * 3000)]), file("x")),
    "nul-path.tar": archive(pax([("path", "a\x00b")]), file("x")),
    "devices.tar": archive(device("sda", kind=tarfile.BLKTYPE), device("null", major=1, minor=3)),
    "root-not-dir.tar": archive(file("./")),
    "xattr-overlay.tar": archive(pax([("SCHILY.xattr.trusted.overlay.opaque", "y")]), directory("d")),
    "dir-replaces-file.tar": archive(file("x"), directory("x"), file("x/y")),
    "unknown-type.tar": archive(tars.header("x", kind=b"Z")),
    # Found by fuzzing: each raised something other than a HyperError.
    "found-pax-sparse-bad-number.tar": archive(pax([("GNU.sparse.map", "1.5")]), file("x")),
    "found-xattr-bad-capability.tar": archive(
        pax([("SCHILY.xattr.security.capability", "x")]), directory("d")
    ),
    "found-symlink-empty-target.tar": archive(symlink("l", "")),
    "found-nul-in-pax-path.tar": archive(
        pax([("path", "nul\x00byte/"), ("linkpath", "/etc/passwd")]), hardlink("p", "x")
    ),
    "truncated.tar": archive(file("a", b"x" * 2000))[:1000],
    "not-a-tar.tar": b"\x1f\x8b not really gzip",
}


def _stream(*frames: bytes) -> bytes:
    return b"".join(frames)


AGENT_STREAMS = {
    "exit.bin": _stream(
        encode_frame(FrameKind.STDOUT, 7, b"hello"),
        encode_message({"type": "exited", "process": 7, "status": 0}),
    ),
    "answer-then-exit.bin": _stream(
        encode_message({"type": "response", "id": 2, "ok": True}),
        encode_message({"type": "exited", "process": 7, "status": 3}),
    ),
    "refusal.bin": encode_message({"type": "response", "id": 2, "ok": False, "error": "no", "errno": "x"}),
    "unknown-response.bin": encode_message({"type": "response", "id": 99, "ok": True}),
    "response-id-string.bin": encode_message({"type": "response", "id": "2", "ok": True}),
    "exit-status-out-of-range.bin": encode_message({"type": "exited", "process": 7, "status": 256}),
    "exit-status-bool.bin": encode_message({"type": "exited", "process": 7, "status": True}),
    "unexpected-message.bin": encode_message({"type": "hello"}),
    "not-json.bin": encode_frame(FrameKind.CONTROL, 0, b"{not json"),
    "json-array.bin": encode_frame(FrameKind.CONTROL, 0, b"[1, 2]"),
    "deep-json.bin": encode_frame(FrameKind.CONTROL, 0, b"[" * 5000),
    "invalid-utf8.bin": encode_frame(FrameKind.CONTROL, 0, b'{"type": "\xff"}'),
    "unknown-kind.bin": bytes([9]) + bytes(8),
    "oversized-frame.bin": bytes([FrameKind.STDOUT]) + (7).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big"),
    "stdin-from-guest.bin": encode_frame(FrameKind.STDIN, 7, b"x"),
    "sync-after-hello.bin": encode_frame(FrameKind.SYNC, 0, b"nonce"),
    "half-header.bin": bytes([FrameKind.STDOUT, 0, 0]),
    "half-payload.bin": bytes([FrameKind.STDOUT])
    + (7).to_bytes(4, "big")
    + (100).to_bytes(4, "big")
    + b"x" * 10,
    "flood.bin": encode_frame(FrameKind.STDOUT, 7, b"y" * 100) * 300,
    "other-stream.bin": encode_frame(FrameKind.STDERR, 12345, b"nobody listens"),
}

DOCKER_BODIES: dict[str, object] = {
    "empty.json": {},
    "image-only.json": {"Image": "busybox"},
    "image-number.json": {"Image": 5},
    "host-config-list.json": {"Image": "busybox", "HostConfig": []},
    "memory-huge.json": {"Image": "busybox", "HostConfig": {"Memory": 10**30}},
    "memory-float.json": {"Image": "busybox", "HostConfig": {"Memory": 1.5e9}},
    "memory-bool.json": {"Image": "busybox", "HostConfig": {"Memory": True}},
    "cpus-negative.json": {"Image": "busybox", "HostConfig": {"NanoCpus": -1}},
    "cpus-huge.json": {"Image": "busybox", "HostConfig": {"NanoCpus": 10**40}},
    "labels-not-strings.json": {"Image": "busybox", "Labels": {"a": 1}},
    "labels-list.json": {"Image": "busybox", "Labels": ["a"]},
    "restart-bad-count.json": {
        "Image": "busybox",
        "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}},
    },
    "restart-unknown.json": {"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}},
    "restart-name-list.json": {"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": ["always"]}}},
    "entrypoint-object.json": {"Image": "busybox", "Entrypoint": {"a": "b"}},
    "cmd-nested.json": {"Image": "busybox", "Cmd": [["sh"]]},
    "env-numbers.json": {"Image": "busybox", "Env": [1, 2]},
    "workdir-number.json": {"Image": "busybox", "WorkingDir": 7},
    "network-object.json": {"Image": "busybox", "HostConfig": {"NetworkMode": {"x": 1}}},
    "binds.json": {"Image": "busybox", "HostConfig": {"Binds": ["/:/host"]}},
    "privileged.json": {"Image": "busybox", "HostConfig": {"Privileged": True}},
    "hostname-list.json": {"Image": "busybox", "Hostname": ["a"]},
    "volumes.json": {"Image": "busybox", "Volumes": {"/data": {}}},
    "array-body.json": [1, 2, 3],
    "string-body.json": "busybox",
}


def write() -> None:
    for target, files in (("guest_tar", GUEST_TARS), ("unpack", LAYER_TARS), ("agent_frames", AGENT_STREAMS)):
        directory_ = CORPUS / target
        directory_.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory_ / name).write_bytes(data)
    bodies = CORPUS / "docker_json"
    bodies.mkdir(parents=True, exist_ok=True)
    for name, body in DOCKER_BODIES.items():
        (bodies / name).write_text(json.dumps(body) + "\n")
    (bodies / "not-json.raw").write_bytes(b'{"Image": "busybox",')
    (bodies / "invalid-utf8.raw").write_bytes(b'{"Image": "\xff"}')
    (bodies / "deep.raw").write_bytes(b"[" * 5000)


if __name__ == "__main__":
    write()
