"""hyperd's container logs: records, tail, follow, and lines cut short by a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hyper.daemon.logs import LogFile, LogLimits


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


def test_a_chatty_container_costs_a_bounded_disk_and_readers_keep_their_place(tmp_path: Path) -> None:
    limits = LogLimits(max_size=4000, max_files=3)
    log = LogFile(tmp_path / "log.jsonl", limits)
    _, mid = log.read_from(0)
    for i in range(200):
        log.append("stdout", f"line {i:04d}\n".encode(), i)
        if i == 100:
            _, mid = log.read_from(0)  # a follower's place, before more rotations
    log.sync()
    files = sorted(p.name for p in tmp_path.glob("log.jsonl*"))
    assert files == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert sum(p.stat().st_size for p in tmp_path.glob("log.jsonl*")) <= 3 * 4000
    kept = [r.data for r in log.records()]
    assert kept[-1] == b"line 0199\n"
    numbers = [int(d.split()[1]) for d in kept]
    assert numbers == list(range(numbers[0], 200))  # oldest gone, the rest in order, none twice
    assert log.last_offset() == 199
    # A reader keeps its place across rotations; one whose place was rotated
    # away goes on from the oldest line kept.
    after, end = log.read_from(mid)
    assert [int(r.data.split()[1]) for r in after] == list(range(101, 200))
    assert end == log.size()
    from_start, _ = log.read_from(0)
    assert [int(r.data.split()[1]) for r in from_start] == numbers
    log.close()
    # A new hyperd finds the same logical positions.
    again = LogFile(tmp_path / "log.jsonl", limits)
    assert again.size() == end and [r.data for r in again.records()] == kept
    again.close()


def test_one_file_kept_means_the_current_one_only(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.jsonl", LogLimits(max_size=500, max_files=1))
    for i in range(50):
        log.append("stdout", f"{i}\n".encode(), i)
    assert sorted(p.name for p in tmp_path.glob("log.jsonl*")) == ["log.jsonl"]
    assert log.records()[-1].data == b"49\n"
    log.close()


def test_docker_log_options() -> None:
    import pytest

    from hyper.daemon.logs import log_driver, log_limits
    from hyper.errors import InvalidArgument

    assert log_limits(()) == LogLimits(20_000_000, 5)
    assert log_limits(("max-size=10m", "max-file=3")) == LogLimits(10_000_000, 3)
    assert log_limits(("max-size=512k",)).max_size == 512_000
    for bad in ("max-size=0", "max-size=ten", "max-file=0", "compress=true", "max-size"):
        with pytest.raises(InvalidArgument):
            log_limits((bad,))
    log_driver("local")
    with pytest.raises(InvalidArgument):
        log_driver("syslog")
