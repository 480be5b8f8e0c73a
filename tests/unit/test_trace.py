"""hyper.trace: marks from several processes land whole and in order in one
file; nothing is written without HYPER_TRACE; a trace reads back into steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hyper.trace import Mark, parse, phase_rows, run_marks

MARKER = """
import sys
from hyper import trace
trace.set_role(sys.argv[1])
for i in range(int(sys.argv[2])):
    trace.mark(f"step {i}", sys.argv[3])
"""


def _marker(role: str, count: int, ref: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", MARKER, role, str(count), ref], env=env)


def test_two_processes_share_one_file_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    env = dict(os.environ, HYPER_TRACE=str(path))
    count = 2000
    writers = [_marker("cli", count, "a" * 64, env), _marker("hyperd", count, "", env)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0

    lines = path.read_text().splitlines()
    assert len(lines) == 2 * count
    marks = parse(path.read_text())
    assert len(marks) == 2 * count  # no line torn or mixed with another
    by_role = {role: [m for m in marks if m.role == role] for role in ("cli", "hyperd")}
    assert {m.pid for m in by_role["cli"]} == {writers[0].pid}
    assert {m.pid for m in by_role["hyperd"]} == {writers[1].pid}
    for role_marks in by_role.values():
        # Each process's marks are in the order it made them, their times too.
        assert [m.phase for m in role_marks] == [f"step {i}" for i in range(count)]
        assert [m.time for m in role_marks] == sorted(m.time for m in role_marks)
    assert {m.ref for m in by_role["cli"]} == {"a" * 12}  # the container's ID, cut to 12
    assert {m.ref for m in by_role["hyperd"]} == {""}
    assert all(len(line.split(" ", 4)[0].split(".")[1]) == 6 for line in lines)  # µs


def test_nothing_is_written_without_hyper_trace(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYPER_TRACE"}
    env["HYPER_TRACE"] = ""  # empty is unset too
    writer = subprocess.Popen([sys.executable, "-c", MARKER, "cli", "3", "x"], env=env, cwd=tmp_path)
    assert writer.wait(timeout=60) == 0
    del env["HYPER_TRACE"]
    writer = subprocess.Popen([sys.executable, "-c", MARKER, "cli", "3", "x"], env=env, cwd=tmp_path)
    assert writer.wait(timeout=60) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_mark_that_cannot_be_written_is_dropped(tmp_path: Path) -> None:
    env = dict(os.environ, HYPER_TRACE=str(tmp_path / "missing" / "trace"))
    writer = _marker("cli", 2, "", env)
    assert writer.wait(timeout=60) == 0
    assert not (tmp_path / "missing").exists()


def test_parse_skips_torn_lines() -> None:
    text = "1.000001 10 cli - cli started\n1.5 20 hyperd abc create received\ngarbage\n2.0 x cli - y\n3.25"
    assert parse(text) == [
        Mark(1.000001, 10, "cli", "", "cli started"),
        Mark(1.5, 20, "hyperd", "abc", "create received"),
    ]


def _m(time: float, role: str, ref: str, phase: str) -> Mark:
    return Mark(time, 1 if role == "cli" else 2, role, ref, phase)


def test_a_run_takes_its_client_marks_and_the_daemons_about_its_container() -> None:
    marks = [
        _m(0.5, "hyperd", "c0", "vm powered off"),  # the run before
        _m(1.0, "cli", "", "cli started"),
        _m(1.2, "hyperd", "", "create received"),
        _m(1.3, "hyperd", "pool0", "vm resumed"),  # the pool refilling meanwhile
        _m(1.4, "cli", "c1", "create answered"),
        _m(1.6, "hyperd", "c1", "container removed"),
        _m(1.5, "hyperd", "c1", "process exited"),  # marks are sorted by time
        _m(1.7, "cli", "c1", "cli exiting"),
        _m(2.5, "cli", "", "cli started"),  # the next run
    ]
    run = run_marks(marks, 0.9, 1.8)
    assert [m.phase for m in run] == [
        "cli started",
        "create received",
        "create answered",
        "process exited",
        "container removed",
        "cli exiting",
    ]


def test_phase_rows_are_median_steps_in_the_order_they_end() -> None:
    def run(*times: tuple[str, float]) -> list[Mark]:
        return [_m(t, "cli", "", phase) for phase, t in times]

    runs = [
        run(("spawned", 0.0), ("started", 0.2), ("exited", 1.0), ("answered", 1.1), ("reaped", 1.2)),
        run(("spawned", 0.0), ("started", 0.4), ("exited", 1.2), ("answered", 1.3), ("reaped", 1.5)),
        # Racing steps in the other order: their own rows, in 1 run of 3.
        run(("spawned", 0.0), ("started", 0.3), ("answered", 0.9), ("exited", 1.0), ("reaped", 1.4)),
    ]
    rows = phase_rows(runs)
    table = [(row.start, row.end, round(row.seconds, 6), row.runs) for row in rows]
    assert table == [
        ("spawned", "started", 0.3, 3),
        ("started", "answered", 0.6, 1),
        ("answered", "exited", 0.1, 1),
        ("started", "exited", 0.8, 2),
        ("exited", "answered", 0.1, 2),
        ("answered", "reaped", 0.15, 2),
        ("exited", "reaped", 0.4, 1),
    ]
