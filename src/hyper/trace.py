"""Phase marks for benchmarks and operators: where the time of a run goes.

When the environment variable `HYPER_TRACE` names a file, `mark(phase, ref)`
appends one line to it; when it is unset (the usual case) `mark` returns at
once: the choice is made once, at import, and this module imports only
standard modules every marking process has loaded already, so the marks on
the hot paths cost next to nothing.

Each line is one `write` on a descriptor opened with O_APPEND, so the CLI and
hyperd (and any number of processes) can share one file without their lines
mixing. The format, fields separated by single spaces:

    TIME PID ROLE REF PHASE

- TIME: wall-clock seconds since the epoch (`time.time()`), with microseconds
  (six decimals): comparable across the processes of one host;
- PID: the process that marked;
- ROLE: what that process is (`cli`, `hyperd`; `hyper` when it did not say);
- REF: what the mark is about, a container's ID cut to its first 12
  characters, or `-` when the process does not know it yet (the CLI before
  hyperd answers its create);
- PHASE: the phase that just ended, as words that read well in a table
  (the rest of the line; it may hold spaces).

A mark says that something just happened (`create sent`, `pool vm claimed`);
the gap since the mark before it in the same run is what that step cost.
`parse`, `run_marks` and `phase_rows` read a trace back: `bench/start.py`
prints with them the median cost of each step of runs from hyperd's pool.

The file is a diagnostic: a mark that cannot be written (no such directory,
disk full) is dropped without a word, never a run's failure.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

ENV = "HYPER_TRACE"

_path = os.environ.get(ENV) or None
_role = "hyper"


def set_role(role: str) -> None:
    """Name this process in its marks (one word: `cli`, `hyperd`)."""
    global _role
    _role = role


def mark(phase: str, ref: str = "") -> None:
    """Append `phase` (just ended, about `ref`) to the trace file, if there is one."""
    if _path is None:
        return
    line = f"{time.time():.6f} {os.getpid()} {_role} {ref[:12] or '-'} {phase}\n".encode()
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading a trace --------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    time: float
    pid: int
    role: str
    ref: str  # "" for the file's `-`
    phase: str


@dataclass(frozen=True)
class PhaseRow:
    """One step of a kind of run: from the mark `start` to the mark `end`."""

    start: str
    end: str
    seconds: float  # the median over the runs that had this step
    runs: int  # how many runs had it (marks of racing steps may come in either order)
    at: float  # the median time of its end since the run's first mark: the table's order


def parse(text: str) -> list[Mark]:
    """The marks of a trace file, in its order; a line that does not parse (a
    torn write at the end of a full disk) is skipped."""
    marks = []
    for line in text.splitlines():
        fields = line.split(" ", 4)
        if len(fields) < 5 or not fields[1].isdigit():
            continue
        try:
            moment = float(fields[0])
        except ValueError:
            continue
        ref = "" if fields[3] == "-" else fields[3]
        marks.append(Mark(moment, int(fields[1]), fields[2], ref, fields[4]))
    return marks


def run_marks(marks: list[Mark], start: float, end: float, client_role: str = "cli") -> list[Mark]:
    """One run's marks, for a trace whose runs came one after another, the run
    between `start` and `end`: its client's, the others' about the containers
    its client named, and the others' that name none (made before the ID
    existed, such as hyperd's `create received`); sorted by time."""
    window = [mark for mark in marks if start <= mark.time <= end]
    refs = {mark.ref for mark in window if mark.role == client_role and mark.ref}
    chosen = [mark for mark in window if mark.role == client_role or not mark.ref or mark.ref in refs]
    return sorted(chosen, key=lambda mark: mark.time)


def phase_rows(runs: list[list[Mark]]) -> list[PhaseRow]:
    """The steps of runs of one kind (each run's marks sorted by time): each gap
    between consecutive marks, its median over the runs, in the order the
    steps end in a median run."""
    seconds: dict[tuple[str, str], list[float]] = {}
    ends: dict[tuple[str, str], list[float]] = {}
    for marks in runs:
        for before, after in itertools.pairwise(marks):
            step = (before.phase, after.phase)
            seconds.setdefault(step, []).append(after.time - before.time)
            ends.setdefault(step, []).append(after.time - marks[0].time)
    rows = [
        PhaseRow(step[0], step[1], _median(values), len(values), _median(ends[step]))
        for step, values in seconds.items()
    ]
    return sorted(rows, key=lambda row: row.at)


def _median(values: list[float]) -> float:
    """statistics.median, without importing statistics (and its imports) here."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
