"""hyperd's container logs: records, tail, follow, and lines cut short by a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hyper.daemon.logs import LogFile


def test_records_keep_stream_data_and_offset(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl")
    log.append("stdout", b"one\n", 10)
    log.append("stderr", b"\xff\x00binary", 20)
    log.sync()
    records = log.records()
    assert [(r.stream, r.data, r.offset) for r in records] == [
        ("stdout", b"one\n", 10),
        ("stderr", b"\xff\x00binary", 20),
    ]
    assert log.last_offset() == 20
    log.close()


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl")
    log.append("stdout", b"kept", 5)
    log.close()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"stream": "stdout", "time": 1, "da')
    again = LogFile(tmp_path / "log.jsonl")
    assert [r.data for r in again.records()] == [b"kept"]
    assert again.last_offset() == 5
    again.close()


def test_tail_and_follow_until_finished(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        log = LogFile(tmp_path / "log.jsonl")
        for i in range(3):
            log.append("stdout", f"old{i}".encode(), i)
        received: list[bytes] = []

        async def follow() -> None:
            async for record in log.read(tail=1, follow=True):
                received.append(record.data)

        reader = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        for i in range(3):
            log.append("stdout", f"new{i}".encode(), 10 + i)
            await log.notify()
            await asyncio.sleep(0.01)
        await log.finish()
        await asyncio.wait_for(reader, 5)
        log.close()
        return received

    assert asyncio.run(main()) == [b"old2", b"new0", b"new1", b"new2"]


def test_tail_zero_shows_nothing_old(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        log = LogFile(tmp_path / "log.jsonl")
        log.append("stdout", b"old", 1)
        out = [r.data async for r in log.read(tail=0, follow=False)]
        log.close()
        return out

    assert asyncio.run(main()) == []
