"""The appliance initramfs: what goes in it, and when it is rebuilt."""

from __future__ import annotations

import importlib.util
import multiprocessing
import multiprocessing.queues
import os
import stat
from pathlib import Path

import pytest

from hyper.agent.guest import LAZY_IMPORTS
from hyper.vm.appliance import (
    AGENT_DIR,
    AGENT_INIT,
    Appliance,
    _manifest_ok,
    _stat_line,
    appliance_key,
    ensure_appliance,
    guest_python,
    shared_libraries,
)
from hyper.vm.kernel import Kernel
from tests.support.cpio_reader import Archive, Member, read_newc


def fake_kernel(directory: Path, release: str = "test") -> Kernel:
    image = directory / "vmlinux"
    if not image.exists():
        image.write_bytes(b"\x7fELF not really a kernel")
    return Kernel(image=image, release=release, modules=None, config=None, origin="test")


def test_shared_libraries_of_python_include_libc() -> None:
    libraries = shared_libraries(Path("/usr/bin/python3"))
    assert any(p.name.startswith("libc.so") for p in libraries)
    assert all(p.is_absolute() and p.exists() for p in libraries)


def test_shared_libraries_of_a_non_binary_is_empty(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert shared_libraries(text) == []


def write_manifest(manifest: Path, inputs: list[Path]) -> None:
    manifest.write_text("".join(_stat_line(p) + "\n" for p in inputs))


def test_manifest_ok_while_inputs_are_unchanged(tmp_path: Path) -> None:
    inputs = [tmp_path / "a", tmp_path / "we:ird name"]
    for path in inputs:
        path.write_text(path.name)
    manifest = tmp_path / "inputs"
    write_manifest(manifest, inputs)
    assert _manifest_ok(manifest)


def test_manifest_not_ok_after_touching_an_input(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("a")
    manifest = tmp_path / "inputs"
    write_manifest(manifest, [path])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not _manifest_ok(manifest)


def test_manifest_not_ok_after_a_change_of_size(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("a")
    manifest = tmp_path / "inputs"
    write_manifest(manifest, [path])
    st = path.stat()
    path.write_text("ab")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not _manifest_ok(manifest)


def test_manifest_not_ok_after_deleting_an_input(tmp_path: Path) -> None:
    inputs = [tmp_path / "a", tmp_path / "b"]
    for path in inputs:
        path.write_text(path.name)
    manifest = tmp_path / "inputs"
    write_manifest(manifest, inputs)
    inputs[1].unlink()
    assert not _manifest_ok(manifest)


def test_missing_manifest_is_not_ok(tmp_path: Path) -> None:
    assert not _manifest_ok(tmp_path / "inputs")


def test_key_depends_on_the_kernel(tmp_path: Path) -> None:
    python = guest_python()
    assert appliance_key(python, fake_kernel(tmp_path, "a")) != appliance_key(
        python, fake_kernel(tmp_path, "b")
    )
    assert appliance_key(python, fake_kernel(tmp_path, "a")) == appliance_key(
        python, fake_kernel(tmp_path, "a")
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Appliance, Archive, Path]:
    base = tmp_path_factory.mktemp("appliance")
    cache = base / "cache"
    appliance = ensure_appliance(cache, fake_kernel(base))
    return appliance, read_newc(appliance.initrd.read_bytes()), base


def test_appliance_holds_the_interpreter_at_its_real_path(built: tuple[Appliance, Archive, Path]) -> None:
    appliance, archive, _ = built
    python = os.path.realpath(appliance.python)
    member = archive.by_path()[python]
    assert member.mode == stat.S_IFREG | 0o755
    assert member.data == Path(python).read_bytes()
    assert appliance.init_command()[0] == appliance.python


def test_appliance_holds_the_compiled_agent(built: tuple[Appliance, Archive, Path]) -> None:
    _, archive, _ = built
    members = archive.by_path()
    for path in (AGENT_INIT, f"{AGENT_DIR}/hyper/agent/guest.pyc", f"{AGENT_DIR}/hyper/agent/protocol.pyc"):
        assert members[path].data.startswith(importlib.util.MAGIC_NUMBER), path
    assert not [p for p in members if p.startswith(AGENT_DIR) and p.endswith(".py")]
    assert any(p.endswith("/os.pyc") for p in members)


def test_appliance_holds_what_the_agent_imports_lazily(built: tuple[Appliance, Archive, Path]) -> None:
    # os.execvpe imports warnings inside the call; when nothing imported it
    # beforehand, every exec in the guest failed with ModuleNotFoundError.
    _, archive, _ = built
    stdlib = os.path.dirname(os.__file__)
    for name in (*LAZY_IMPORTS, "warnings"):
        assert f"{stdlib}/{name}.pyc" in archive.by_path(), name


def test_appliance_holds_device_nodes_and_libraries(built: tuple[Appliance, Archive, Path]) -> None:
    _, archive, _ = built
    members = archive.by_path()

    def char(member: Member) -> tuple[int, int]:
        assert stat.S_ISCHR(member.mode)
        return member.rdev

    assert char(members["/dev/console"]) == (5, 1)
    assert char(members["/dev/urandom"]) == (1, 9)
    assert char(members["/dev/null"]) == (1, 3)
    assert any(os.path.basename(p).startswith("libc.so") for p in members)
    assert members[f"{AGENT_DIR}/modules.list"].data.strip() == b""


def test_appliance_is_not_rebuilt_while_inputs_are_unchanged(built: tuple[Appliance, Archive, Path]) -> None:
    appliance, _, base = built
    mtime = appliance.initrd.stat().st_mtime_ns
    again = ensure_appliance(appliance.initrd.parent, fake_kernel(base))
    assert again == appliance
    assert appliance.initrd.stat().st_mtime_ns == mtime
    assert not list(appliance.initrd.parent.glob(".build-*"))


def test_appliance_is_rebuilt_when_an_input_changes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ensure_appliance(cache, fake_kernel(tmp_path))
    extra_input = tmp_path / "input"
    extra_input.write_text("x")
    manifest = first.initrd.with_suffix(".inputs")
    manifest.write_text(manifest.read_text() + _stat_line(extra_input) + "\n")
    os.utime(first.initrd, ns=(0, 0))
    assert ensure_appliance(cache, fake_kernel(tmp_path)).initrd.stat().st_mtime_ns == 0
    extra_input.write_text("changed")
    second = ensure_appliance(cache, fake_kernel(tmp_path))
    assert second.initrd == first.initrd
    assert second.initrd.stat().st_mtime_ns != 0
    assert read_newc(second.initrd.read_bytes()).members


def test_concurrent_first_builds_both_succeed(tmp_path: Path) -> None:
    fake_kernel(tmp_path)
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    results: multiprocessing.queues.Queue[str] = context.Queue()

    def build() -> None:
        barrier.wait(10)  # both start at once, on an empty cache
        results.put(str(ensure_appliance(cache, fake_kernel(tmp_path)).initrd))

    children = [context.Process(target=build) for _ in range(2)]
    for child in children:
        child.start()
    paths = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
    assert [child.exitcode for child in children] == [0, 0]
    assert paths[0] == paths[1]
    archive = read_newc(Path(paths[0]).read_bytes())
    assert AGENT_INIT in archive.by_path()
    assert not list(cache.glob(".build-*"))
