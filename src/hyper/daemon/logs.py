"""A container's output on disk, and waiting for more of it.

One JSON line per output frame: stream, time, data (base64) and the guest
stream `offset` after it. The last offset says where to resume the agent's
stream when hyperd adopts the pod again, so no output is lost or repeated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LogRecord:
    stream: str
    time: float
    data: bytes
    offset: int | None

    def wire(self) -> dict[str, object]:
        return {"stream": self.stream, "time": self.time, "data": base64.b64encode(self.data).decode()}


def _parse(line: str) -> LogRecord | None:
    try:
        doc = json.loads(line)
        return LogRecord(doc["stream"], doc["time"], base64.b64decode(doc["data"]), doc.get("offset"))
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


class LogFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = asyncio.Condition()
        self._generation = 0
        self._file = path.open("a")
        self.closed = False  # set when the container has exited and everything is written

    def append(self, stream: str, data: bytes, offset: int | None) -> None:
        line = json.dumps(LogRecord(stream, time.time(), data, offset).wire() | {"offset": offset})
        self._file.write(line + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Make what was appended durable: only then is it acknowledged to the guest."""
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    async def notify(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def finish(self) -> None:
        self.closed = True
        await self.notify()

    def records(self) -> list[LogRecord]:
        return self._records_from(0)[0]

    def read_from(self, position: int) -> tuple[list[LogRecord], int]:
        """Whole records from byte `position` on, and where the next read starts."""
        return self._records_from(position)

    async def wait_for_more(self, timeout: float) -> None:
        """Until something is appended (or the container finishes), at most `timeout` seconds."""
        async with self._changed:
            seen = self._generation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self._generation != seen), timeout)

    def _records_from(self, position: int) -> tuple[list[LogRecord], int]:
        """Whole lines from byte `position` on, and where the next read starts."""
        try:
            with self.path.open("rb") as f:
                f.seek(position)
                data = f.read()
        except FileNotFoundError:
            return [], position
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        lines = data[:end].decode(errors="replace").splitlines()
        return [record for line in lines if (record := _parse(line)) is not None], position + end

    def last_offset(self, since: int = 0) -> int | None:
        """The guest stream offset of the last record written from byte `since` on
        (where the current run of the container began)."""
        offsets = [r.offset for r in self._records_from(since)[0] if r.offset is not None]
        return offsets[-1] if offsets else None

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def reopen(self) -> None:
        """The container starts again: more output will come."""
        self.closed = False

    async def read(self, *, tail: int | None, follow: bool) -> AsyncIterator[LogRecord]:
        seen = self._generation
        records, position = self._records_from(0)
        shown = records if tail is None else records[len(records) - max(tail, 0) :]
        for record in shown:
            yield record
        while follow:
            if self.closed and seen == self._generation:
                return
            async with self._changed:
                while self._generation == seen:
                    await self._changed.wait()
                seen = self._generation
            # Only what was added since: following a chatty container stays linear.
            records, position = self._records_from(position)
            for record in records:
                yield record
