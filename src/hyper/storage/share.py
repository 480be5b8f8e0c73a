"""A VM's file share: the 9p server behind its virtio-9p device, and the volumes in it.

Every VM has one virtio-9p device (tag `hyper`), in the VM template too,
because a microvm cannot hot-plug one. QEMU's `proxy` driver serves it: the
file system work is done by QEMU's `virtfs-proxy-helper`, which keeps the
capabilities that giving files their owners needs, while QEMU itself stays
jailed without any (docs/confinement.md). `ProxyShare` starts the helper
through the share launcher (hyper.storage.share_launcher), which confines it
to a mount namespace holding only the VM's volumes, and hands QEMU the other
end of its socket.

The share's layout serves a pod of several containers: `CONTAINER/mN`, one
entry per volume or bind mount of each container, so that a container added
to a running VM gets its volumes with `attach`, in the same share.

What the guest sees: owners, modes, links, sockets and fsync as on the host
(QEMU's passthrough model: the host's uids are the container's, as with
Docker); symlinks are resolved by the guest's kernel, and anything the
helper resolves on the host is resolved inside its own root, which holds
only the share.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import FailedPrecondition, Unavailable
from hyper.vm.jail import LIBRARY_DIRS, LOADER_FILES

LAUNCHER = Path(__file__).with_name("share_launcher.py")
DEFAULT_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"
MOUNT_TAG = "hyper"
LAUNCH_TIMEOUT = 30.0
RECORD = "share.json"


@dataclass(frozen=True)
class ShareEntry:
    """One volume or bind mount in the share: the host path and its place `CONTAINER/mN`."""

    source: str
    target: str
    read_only: bool = False

    def document(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "read_only": self.read_only}


def helper_binary() -> str:
    return os.environ.get("HYPER_9P_HELPER", DEFAULT_HELPER)


def share_mode() -> str | None:
    """How shares run here: "privileged" as root, "user-namespace" otherwise where
    user namespaces are allowed; None where no share can run (and why is in
    `share_unavailable`)."""
    from hyper.vm import confine

    if not os.access(helper_binary(), os.X_OK):
        return None
    if os.geteuid() == 0:
        return "privileged"
    return "user-namespace" if confine.user_namespaces()[0] else None


def share_unavailable() -> str:
    if not os.access(helper_binary(), os.X_OK):
        return f"{helper_binary()} is missing (Debian's qemu-system-common has it)"
    return "user namespaces are not allowed here, and a share without root needs one"


def _libraries() -> tuple[list[dict[str, str]], list[list[str]]]:
    """The helper's libraries, as the QEMU jail binds them: real dirs, and merged-/usr links."""
    binds, links = [], []
    for path in (*LIBRARY_DIRS, *LOADER_FILES):
        if not os.path.lexists(path):
            continue
        if os.path.islink(path) and path in LIBRARY_DIRS:
            links.append([path, os.readlink(path)])
        else:
            binds.append({"path": path, "kind": "dir" if path in LIBRARY_DIRS else "file"})
    return binds, links


def _start_time(pid: int) -> int | None:
    """A live process's start time in clock ticks: with its pid, names it uniquely.
    None once it is gone or a zombie (its parent, init here, may reap it late)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


class ProxyShare:
    """The 9p server of one VM (the vm driver's FileShare); `close` is idempotent."""

    def __init__(
        self, directory: Path, entries: tuple[ShareEntry, ...] = (), *, mode: str | None = None
    ) -> None:
        self.directory = directory  # the VM's run directory
        self.entries = entries
        self.mode = mode or share_mode()
        self.pid: int | None = None
        self.start_time: int | None = None

    @property
    def log(self) -> Path:
        return self.directory / "share.log"

    def _plan(self, **extra: Any) -> dict[str, Any]:
        binds, links = _libraries()
        return {
            "mode": self.mode,
            "helper": helper_binary(),
            "root": str(self.directory / "share-root"),
            "libraries": binds,
            "symlinks": links,
            "entries": [e.document() for e in self.entries],
            "host_uid": os.getuid(),
            "host_gid": os.getgid(),
            **extra,
        }

    def _run_launcher(self, command: str, plan: dict[str, Any], pass_fds: tuple[int, ...]) -> None:
        with self.log.open("ab") as log:
            done = subprocess.run(
                [sys.executable, "-I", "-S", str(LAUNCHER), command, json.dumps(plan)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=pass_fds,
                timeout=LAUNCH_TIMEOUT,
                check=False,
            )
        if done.returncode != 0:
            said = self.log.read_text(errors="replace").strip().splitlines()
            raise Unavailable(
                f"the VM's file share did not start: {said[-1] if said else f'status {done.returncode}'}",
                hint=f"its log is {self.log}",
            )

    def start(self) -> int:
        """Start the helper; returns QEMU's end of its socket (the caller closes it). Blocking."""
        if self.mode is None:
            raise FailedPrecondition(f"volumes cannot be shared with a VM here: {share_unavailable()}")
        (self.directory / "share-root").mkdir(mode=0o700, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        report_read, report_write = os.pipe()
        try:
            plan = self._plan(socket_fd=theirs.fileno(), report_fd=report_write)
            try:
                self._run_launcher("launch", plan, (theirs.fileno(), report_write))
            finally:
                os.close(report_write)
                theirs.close()
            with os.fdopen(report_read, "rb") as report:
                report_read = -1
                lines = report.read().decode(errors="replace").split()
            if len(lines) < 2 or lines[0] != "pid":
                raise Unavailable("the VM's file share did not report its process", hint=f"see {self.log}")
            self.pid = int(lines[1])
            self.start_time = _start_time(self.pid)
            (self.directory / RECORD).write_text(json.dumps(self.document()))
            return ours.detach()
        except BaseException:
            if report_read >= 0:
                os.close(report_read)
            ours.close()
            self.close()
            raise

    def document(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "mode": self.mode,
            "entries": [e.document() for e in self.entries],
        }

    @classmethod
    def adopt(cls, directory: Path) -> ProxyShare:
        """The share of a VM an earlier process started (from its run directory's record)."""
        share = cls(directory)
        try:
            doc = json.loads((directory / RECORD).read_text())
        except (OSError, ValueError):
            return share
        share.mode = doc.get("mode") or share.mode
        share.entries = tuple(ShareEntry(**e) for e in doc.get("entries") or ())
        share.pid, share.start_time = doc.get("pid"), doc.get("start_time")
        return share

    def running(self) -> bool:
        if self.pid is None or self.start_time is None:
            return False
        return _start_time(self.pid) == self.start_time

    def attach(self, entries: tuple[ShareEntry, ...]) -> None:
        """Add volumes to the running share (a container joining the VM's pod). Root only."""
        if not self.running():
            raise FailedPrecondition("the VM's file share is not running")
        plan = self._plan(pid=self.pid) | {"entries": [e.document() for e in entries]}
        self._run_launcher("attach", plan, ())
        self.entries = (*self.entries, *entries)
        (self.directory / RECORD).write_text(json.dumps(self.document()))

    def close(self) -> None:
        """Stop the helper if it still runs (it ends by itself when QEMU closes its socket). Blocking."""
        if self.running():
            assert self.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.pid = self.start_time = None
        with contextlib.suppress(OSError):
            (self.directory / RECORD).unlink()
