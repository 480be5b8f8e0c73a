"""Container output in the CRI log format at the path the kubelet asked for.

hyperd keeps each container's output in its own log (hyper.daemon.logs); a
copier follows that log and appends each record, as CRI lines, to the
kubelet's `log_path`, remembering how far it got in a position file so that a
restarted hyperd neither loses nor repeats output. The file is opened for each
batch, so after the kubelet renames it to rotate it (ReopenContainerLog) the
next output lands in a new file at the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from hyper.cri.translate import cri_log_lines
from hyper.daemon.pods import Pod

WAIT_SECONDS = 1.0  # a bound on each wait for more output; removal ends the copy sooner


class LogCopier:
    def __init__(self, pod: Pod, path: Path, position_file: Path) -> None:
        self.pod = pod
        self.path = path
        self.position_file = position_file
        self.task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # the follower and a flush copy one at a time

    def start(self) -> None:
        self.task = asyncio.create_task(self._copy())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def forget(self) -> None:
        self.position_file.unlink(missing_ok=True)

    async def flush(self) -> None:
        """Copy what the log holds now (at a stop, before the container's status is read)."""
        async with self._lock:
            await asyncio.to_thread(self._copy_once, self._position())

    def _position(self) -> int:
        try:
            return int(self.position_file.read_text())
        except (OSError, ValueError):
            return 0

    async def _copy(self) -> None:
        log = self.pod.log
        if log is None:
            return
        while not self.pod.removed.is_set():
            async with self._lock:
                moved = await asyncio.to_thread(self._copy_once, self._position())
            if not moved:
                await log.wait_for_more(WAIT_SECONDS)

    def _copy_once(self, position: int) -> bool:
        log = self.pod.log
        if log is None:
            return False
        records, next_position = log.read_from(position)
        if next_position == position:
            return False
        data = b"".join(cri_log_lines(r.stream, r.time, r.data) for r in records)
        if data:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                f.write(data)
        self.position_file.write_text(str(next_position))
        return True
