"""VMs nobody owns: QEMUs a killed hyperd had started but not yet recorded.

hyperd records a VM once QEMU is up; killed between the two (a burst of
`docker run -d` and a `kill -9`), it leaves QEMU processes that its state
does not name, holding their disks' locks and their run directories. At
start-up, after adopting what its state names, hyperd finds the others by
their run directory (every QEMU's command line names its console log in
RUNTIME/NAME/), kills them and removes what they left. Blocking: run it in a
thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

RUN_DIR_NAME = re.compile(r"^[0-9a-f]{12}$")
EXIT_WAIT_SECONDS = 10.0


def qemu_processes(runtime: Path) -> dict[str, int]:
    """{run directory name: pid} of the QEMUs whose run directory is under `runtime`."""
    marker = f"{runtime.resolve()}/"
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not words or "qemu-system" not in os.path.basename(words[0]):
            continue
        for word in words:
            at = word.find(marker)
            if at < 0:
                continue
            name = word[at + len(marker) :].split("/", 1)[0]
            if RUN_DIR_NAME.match(name):
                found[name] = int(entry)
                break
    return found


def _kill_and_wait(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        select.select([pidfd], [], [], EXIT_WAIT_SECONDS)
    finally:
        os.close(pidfd)


def reap_orphans(runtime: Path, keep: Iterable[str]) -> list[str]:
    """Kill the QEMUs under `runtime` whose run directory is not in `keep`
    (names of the VMs hyperd owns), and remove every run directory not kept.
    Returns the names of the VMs killed."""
    kept = set(keep)
    killed = []
    for name, pid in sorted(qemu_processes(runtime).items()):
        if name not in kept:
            _kill_and_wait(pid)
            killed.append(name)
    with contextlib.suppress(FileNotFoundError):
        for entry in runtime.iterdir():
            if RUN_DIR_NAME.match(entry.name) and entry.name not in kept and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
    return killed
