"""A container's output on disk, and waiting for more of it.

One JSON line per output frame: stream, time, data (base64) and the guest
stream `offset` after it. The last offset says where to resume the agent's
stream when hyperd adopts the pod again, so no output is lost or repeated.

The log is bounded, as Docker's `--log-opt max-size=… max-file=…` bound
json-file logs: past `max_size` bytes the file is rotated (`log.jsonl.1`
holds the one before, and so on) and files beyond `max_files` are deleted,
so a container printing without end costs a bounded disk. Readers address
the log by *logical* positions (bytes since the container's first output),
which stay valid across rotations; what was rotated away is simply gone, as
with Docker. `log.start` records where the current file begins.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import InvalidArgument


@dataclass(frozen=True)
class LogRecord:
    stream: str
    time: float
    data: bytes
    offset: int | None

    def wire(self) -> dict[str, object]:
        return {"stream": self.stream, "time": self.time, "data": base64.b64encode(self.data).decode()}


def split_lines(records: list[LogRecord]) -> list[LogRecord]:
    """Records cut at newlines, so that `tail` counts lines as Docker does."""
    lines = []
    for record in records:
        for line in record.data.splitlines(keepends=True):
            lines.append(LogRecord(record.stream, record.time, line, record.offset))
    return lines


def _parse(line: str) -> LogRecord | None:
    try:
        doc = json.loads(line)
        return LogRecord(doc["stream"], doc["time"], base64.b64decode(doc["data"]), doc.get("offset"))
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


# Docker's `local` log driver defaults: 20 MB a file, 5 files.
DEFAULT_MAX_SIZE = 20 * 1000 * 1000
DEFAULT_MAX_FILES = 5


@dataclass(frozen=True)
class LogLimits:
    max_size: int = DEFAULT_MAX_SIZE  # bytes of one file before it is rotated; 0: never
    max_files: int = DEFAULT_MAX_FILES  # files kept, the current one included


LOG_DRIVERS = ("json-file", "local")  # both are hyperd's own bounded log
_LOG_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.IGNORECASE)


def log_limits(options: Sequence[str]) -> LogLimits:
    """Docker's `--log-opt max-size=10m --log-opt max-file=3` (the json-file and
    local drivers' options); any other option is refused by name."""
    limits = LogLimits()
    for option in options:
        key, sep, value = option.partition("=")
        if key == "max-size" and sep and (match := _LOG_SIZE.match(value)):
            size = (
                int(match.group(1)) * {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}[match.group(2).lower()]
            )
            if size <= 0:
                raise InvalidArgument(
                    f"invalid log option {option!r}", hint="max-size must be positive, e.g. 10m"
                )
            limits = dataclasses.replace(limits, max_size=size)
        elif key == "max-file" and sep and value.isdigit() and int(value) >= 1:
            limits = dataclasses.replace(limits, max_files=int(value))
        elif key in ("max-size", "max-file"):
            raise InvalidArgument(
                f"invalid log option {option!r}", hint="use e.g. max-size=10m or max-file=3"
            )
        else:
            raise InvalidArgument(
                f"Hyper does not support the log option {key!r}",
                hint="hyperd's log takes max-size and max-file",
            )
    return limits


def log_driver(name: str | None) -> None:
    if (name or "json-file") not in LOG_DRIVERS:
        raise InvalidArgument(
            f"Hyper does not support the log driver {name!r}",
            hint="hyperd keeps each container's log itself (json-file or local, read by `docker logs`)",
        )


class LogFile:
    def __init__(self, path: Path, limits: LogLimits | None = None) -> None:
        self.path = path
        self.limits = limits or LogLimits()
        self._changed = asyncio.Condition()
        self._generation = 0
        self._file = path.open("a")
        self._start = self._read_start()
        self._written = self._file.tell()
        self.closed = False  # set when the container has exited and everything is written

    def _read_start(self) -> int:
        try:
            return int(self.path.with_name("log.start").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def append(self, stream: str, data: bytes, offset: int | None) -> None:
        line = json.dumps(LogRecord(stream, time.time(), data, offset).wire() | {"offset": offset}) + "\n"
        if self.limits.max_size and self._written and self._written + len(line) > self.limits.max_size:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._written += len(line)

    def _rotate(self) -> None:
        """The current file becomes `.1` (and `.1` `.2` …); the oldest beyond max_files goes."""
        os.fsync(self._file.fileno())
        self._file.close()
        keep = max(self.limits.max_files, 1) - 1  # rotated files kept beside the current one
        if keep:
            for path in (self._segment(keep), self._starts_path(keep)):
                path.unlink(missing_ok=True)
            for index in range(keep - 1, 0, -1):
                for old, new in (
                    (self._segment(index), self._segment(index + 1)),
                    (self._starts_path(index), self._starts_path(index + 1)),
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(old, new)
            self._starts_path(1).write_text(str(self._start))
            os.replace(self.path, self._segment(1))
        else:
            self.path.unlink()
        self._start += self._written
        tmp = self.path.with_name("log.start.tmp")
        tmp.write_text(str(self._start))
        os.replace(tmp, self.path.with_name("log.start"))
        self._file = self.path.open("a")
        self._written = 0

    def _segment(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _starts_path(self, index: int) -> Path:
        return self.path.with_name(f"log.start.{index}")

    def _segments(self) -> list[tuple[int, Path]]:
        """(logical start, file), oldest first, the current file last."""
        found = []
        for index in range(max(self.limits.max_files, 1) - 1, 0, -1):
            segment = self._segment(index)
            try:
                start = int(self._starts_path(index).read_text())
            except (FileNotFoundError, ValueError):
                continue
            if segment.exists():
                found.append((start, segment))
        found.append((self._start, self.path))
        return found

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
        """Whole lines from logical `position` on (or from the oldest kept, if
        that was rotated away), and where the next read starts."""
        records: list[LogRecord] = []
        for start, segment in self._segments():
            try:
                with segment.open("rb") as f:
                    f.seek(max(position - start, 0))
                    data = f.read()
            except FileNotFoundError:
                continue  # rotated meanwhile: the next read finds it under its new name
            begin = max(position, start)
            if segment != self.path:
                records += [r for line in data.decode(errors="replace").splitlines() if (r := _parse(line))]
                position = begin + len(data)
                continue
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
            lines = data[:end].decode(errors="replace").splitlines()
            records += [record for line in lines if (record := _parse(line)) is not None]
            position = begin + end
        return records, position

    def last_offset(self, since: int = 0) -> int | None:
        """The guest stream offset of the last record written from byte `since` on
        (where the current run of the container began)."""
        offsets = [r.offset for r in self._records_from(since)[0] if r.offset is not None]
        return offsets[-1] if offsets else None

    def size(self) -> int:
        """The logical end: every byte ever written, rotated away or not."""
        try:
            return self._start + self.path.stat().st_size
        except FileNotFoundError:
            return self._start

    def reopen(self) -> None:
        """The container starts again: more output will come."""
        self.closed = False

    async def read(self, *, tail: int | None, follow: bool) -> AsyncIterator[LogRecord]:
        seen = self._generation
        records, position = self._records_from(0)
        if tail is not None:
            lines = split_lines(records)
            records = lines[len(lines) - max(tail, 0) :] if tail > 0 else []
        shown = records
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
