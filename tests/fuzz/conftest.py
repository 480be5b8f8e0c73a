"""Fuzzing in the test suite: hypothesis, bounded in time, with a corpus in the repo.

Every target replays its seed files (`corpus/<target>/`, kept in git: known
attacks and inputs that once broke something) and then tries inputs that
hypothesis generates. The number of generated examples is kept small so the
whole set stays well under a minute on a loaded two-core machine; set
HYPER_FUZZ_EXAMPLES (e.g. 20000) for a longer hunt, and add what it finds to
the corpus. No example database is written: a failure prints the input
(`@reproduce_failure`) to turn into a corpus file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).parent / "corpus"
SCALE = int(os.environ.get("HYPER_FUZZ_EXAMPLES", "0") or 0)

_BASE = settings(
    deadline=None,  # a loaded machine makes timings meaningless
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz_settings(examples: int) -> settings:
    """Settings for one target: `examples` generated inputs, or HYPER_FUZZ_EXAMPLES."""
    return settings(_BASE, max_examples=SCALE or examples)


def corpus(target: str) -> list[Path]:
    """The seed files of one target, in a stable order."""
    return sorted(path for path in (CORPUS / target).iterdir() if path.is_file())


def all_paths(root: Path) -> list[Path]:
    """`root` and everything below it, sorted, never following a symlink (not
    even to ask whether it leads to a directory: a fuzzed link may be a loop
    or too long to resolve)."""
    found = [root]
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                found.append(path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
    return sorted(found)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.fuzz)
