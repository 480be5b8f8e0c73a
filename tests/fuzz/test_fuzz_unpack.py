"""Fuzzing the image layer unpacker (hyper.image.unpack) with hostile layer
tars and arbitrary bytes: it never writes outside the directory it unpacks
into and never raises anything but Hyper's own errors (a layer is refused,
not a crash of the pull that brought it)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyper.errors import HyperError
from hyper.image.unpack import unpack_layer
from tests.fuzz.conftest import all_paths, corpus, fuzz_settings
from tests.fuzz.strategies import hostile_tars


def tree(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under `root`, symlinks not followed: mode, size, mtime."""
    found = {}
    for path in all_paths(root):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime)
    return found


def run_unpack_case(data: bytes, *, privileged: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-unpack-") as scratch:
        base = Path(scratch)
        (base / "outside").write_bytes(b"precious")
        (base / "outside-dir").mkdir()
        layer = base / "layer"
        layer.mkdir()
        before = tree(base)
        with contextlib.suppress(HyperError):  # refusing is fine; anything else fails the test
            unpack_layer(io.BytesIO(data), layer, privileged=privileged)
        after = tree(base)
        outside = {path: value for path, value in after.items() if not path.startswith("layer")}
        assert outside == {path: value for path, value in before.items() if not path.startswith("layer")}
        real_layer = os.path.realpath(layer)
        for path in all_paths(layer)[1:]:
            if not path.is_symlink():  # a symlink's target is data; what it sits in must be inside
                assert os.path.realpath(path).startswith(real_layer + os.sep), path


@pytest.mark.parametrize("seed", corpus("unpack"), ids=lambda path: path.name)
def test_corpus(seed: Path) -> None:
    run_unpack_case(seed.read_bytes())


@fuzz_settings(250)
@given(hostile_tars() | hostile_tars(hostile=False, root="."))
def test_hostile_layers_stay_inside(data: bytes) -> None:
    run_unpack_case(data)


@fuzz_settings(100)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    run_unpack_case(data)
