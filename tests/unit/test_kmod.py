"""Kernel module tables: .modinfo parsing and load order, on hand-made ELF modules."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.vm.kmod import GUEST_MODULES, MODULE_GROUPS, ModuleToLoad, ModuleTree, read_modinfo

RELEASE = "6.1.0-test-amd64"
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
SHT_PROGBITS, SHT_STRTAB = 1, 3


def elf_module(modinfo: dict[str, list[str]], *, extra_sections: tuple[str, ...] = (".text",)) -> bytes:
    """A minimal relocatable ELF64 with a .shstrtab and a .modinfo section."""
    info = b"".join(f"{key}={value}".encode() + b"\0" for key, values in modinfo.items() for value in values)
    names = [*extra_sections, ".modinfo", ".shstrtab"]
    shstrtab = b"\0"
    name_offsets = {}
    for name in names:
        name_offsets[name] = len(shstrtab)
        shstrtab += name.encode() + b"\0"
    body = bytearray(64)
    sections = [SECTION_HEADER.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for name in names:
        content = {".modinfo": info, ".shstrtab": shstrtab}.get(name, b"\x90" * 16)
        kind = SHT_STRTAB if name == ".shstrtab" else SHT_PROGBITS
        offset = len(body)
        body += content
        sections.append(SECTION_HEADER.pack(name_offsets[name], kind, 0, 0, offset, len(content), 0, 0, 1, 0))
    while len(body) % 8:
        body += b"\0"
    shoff = len(body)
    body += b"".join(sections)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, SECTION_HEADER.size, len(sections), len(names)
    )
    body[:64] = header
    return bytes(body)


def add_module(root: Path, relative: str, **modinfo: list[str]) -> Path:
    path = root / "kernel" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(elf_module({"license": ["GPL"], **modinfo}))
    return path


@pytest.fixture
def tree_root(tmp_path: Path) -> Path:
    root = tmp_path / "lib" / "modules" / RELEASE
    add_module(root, "drivers/virtio/virtio_ring.ko", depends=[""])
    add_module(root, "drivers/virtio/virtio.ko", depends=["virtio_ring"])
    add_module(root, "drivers/virtio/virtio_mmio.ko", depends=["virtio,virtio_ring"])
    add_module(root, "drivers/block/virtio_blk.ko", depends=["virtio,virtio_ring"])
    add_module(root, "lib/crc16.ko")
    add_module(root, "fs/mbcache.ko")
    add_module(root, "fs/jbd2/jbd2.ko", softdep=["pre: crc32c"])
    add_module(
        root,
        "fs/ext4/ext4.ko",
        depends=["mbcache,jbd2", "crc16"],
        softdep=["pre: crc32c"],
        alias=["fs-ext4", "ext3"],
    )
    add_module(root, "crypto/crc32c_generic.ko", alias=["crypto-crc32c", "crc32c", "crypto-crc32c-generic"])
    add_module(root, "arch/x86/crypto/crc32c-intel.ko", alias=["crypto-crc32c", "crc32c"])
    add_module(root, "crypto/aaa_crc32c_fast.ko", alias=["crc32c"])
    add_module(root, "fs/fat/vfat.ko", depends=["fat"])  # fat is missing from the tree
    add_module(root, "fs/nls/nls_base.ko")
    (root / "modules.builtin").write_text(
        "kernel/fs/nls/nls_base.ko\nkernel/drivers/char/hw_random/rng-core.ko\n"
    )
    return root


def names(order: list[ModuleToLoad]) -> list[str]:
    return [m.name for m in order]


def assert_dependencies_first(tree: ModuleTree, order: list[ModuleToLoad]) -> None:
    position = {m.name: i for i, m in enumerate(order)}
    for module in order:
        for dep in ",".join(read_modinfo(module.path).get("depends", [])).split(","):
            if dep and dep.replace("-", "_") not in tree.builtin:
                assert position[dep.replace("-", "_")] < position[module.name], f"{dep} after {module.name}"


def test_read_modinfo(tree_root: Path) -> None:
    info = read_modinfo(tree_root / "kernel/fs/ext4/ext4.ko")
    assert info == {
        "license": ["GPL"],
        "depends": ["mbcache,jbd2", "crc16"],
        "softdep": ["pre: crc32c"],
        "alias": ["fs-ext4", "ext3"],
    }


def test_read_modinfo_without_a_modinfo_section(tmp_path: Path) -> None:
    path = tmp_path / "plain.ko"
    data = bytearray(elf_module({}, extra_sections=(".text",)))
    data = data.replace(b".modinfo\0", b".notinfo\0")
    path.write_bytes(bytes(data))
    assert read_modinfo(path) == {}


@pytest.mark.parametrize(
    "data",
    [b"not an elf at all" * 8, b"\x7fELF\x01\x01\x01" + b"\0" * 60, b"\x7fELF\x02\x02\x01" + b"\0" * 60],
    ids=["text", "elf32", "big-endian"],
)
def test_read_modinfo_refuses_what_is_not_an_elf64_le_module(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.ko"
    path.write_bytes(data)
    with pytest.raises(InvalidArgument):
        read_modinfo(path)


def test_tree_indexes_files_and_builtins(tree_root: Path) -> None:
    tree = ModuleTree(tree_root)
    assert tree.files["crc32c_intel"] == tree_root / "kernel/arch/x86/crypto/crc32c-intel.ko"
    assert {"nls_base", "rng_core"} <= tree.builtin


def test_resolve_orders_dependencies_before_dependents(tree_root: Path) -> None:
    tree = ModuleTree(tree_root)
    order = tree.resolve(["virtio_mmio", "virtio_blk"])
    assert names(order) == ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"]
    assert all(m.required for m in order)
    assert order[0].path == tree_root / "kernel/drivers/virtio/virtio_ring.ko"


def test_softdep_alias_prefers_a_generic_provider_and_is_optional(tree_root: Path) -> None:
    tree = ModuleTree(tree_root)
    order = tree.resolve(["ext4"])
    assert names(order) == ["crc32c_generic", "mbcache", "jbd2", "crc16", "ext4"]
    required = {m.name: m.required for m in order}
    assert required == {"crc32c_generic": False, "mbcache": True, "jbd2": True, "crc16": True, "ext4": True}
    assert_dependencies_first(tree, order)


def test_softdep_without_a_generic_provider_takes_the_first(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "fs/x.ko", softdep=["pre: crc32c"])
    add_module(root, "lib/zzz_crc.ko", alias=["crc32c"])
    add_module(root, "lib/aaa_crc.ko", alias=["crc32c"])
    order = ModuleTree(root).resolve(["x"])
    assert [(m.name, m.required) for m in order] == [("aaa_crc", False), ("x", True)]


def test_unresolvable_softdep_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "fs/x.ko", softdep=["pre: no-such-alias"])
    assert names(ModuleTree(root).resolve(["x"])) == ["x"]


def test_builtin_modules_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "drivers/virtio/virtio_ring.ko")
    add_module(root, "drivers/virtio/virtio_mmio.ko", depends=["virtio,virtio_ring"])
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    assert names(ModuleTree(root).resolve(["virtio", "virtio_mmio"])) == ["virtio_ring", "virtio_mmio"]


def test_modules_an_earlier_group_loaded_are_skipped(tree_root: Path) -> None:
    tree = ModuleTree(tree_root)
    boot = tree.resolve(["virtio_mmio"])
    later = tree.resolve(["virtio_blk", "ext4"], [m.name for m in boot])
    assert names(later) == ["virtio_blk", "crc32c_generic", "mbcache", "jbd2", "crc16", "ext4"]


def test_names_with_dashes_are_normalized(tree_root: Path) -> None:
    assert names(ModuleTree(tree_root).resolve(["virtio-ring"])) == ["virtio_ring"]


def test_missing_required_module_names_the_chain(tree_root: Path) -> None:
    with pytest.raises(FailedPrecondition, match="fat \\(needed by vfat\\)") as caught:
        ModuleTree(tree_root).resolve(["vfat"])
    assert caught.value.hint is not None
    with pytest.raises(FailedPrecondition, match="needed by the guest"):
        ModuleTree(tree_root).resolve(["nonexistent"])


def test_missing_module_deep_in_the_chain(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "a.ko", depends=["b"])
    add_module(root, "b.ko", depends=["c"])
    with pytest.raises(FailedPrecondition, match="c \\(needed by a → b\\)"):
        ModuleTree(root).resolve(["a"])


def test_a_dependency_cycle_terminates(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "a.ko", depends=["b"])
    add_module(root, "b.ko", depends=["a"])
    assert sorted(names(ModuleTree(root).resolve(["a"]))) == ["a", "b"]


def test_a_module_both_soft_and_hard_dependency_is_required(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "fs/x.ko", softdep=["pre: crc32c"], depends=["crc32c_generic"])
    add_module(root, "crypto/crc32c_generic.ko", alias=["crc32c"])
    order = ModuleTree(root).resolve(["x"])
    assert [(m.name, m.required) for m in order] == [("crc32c_generic", True), ("x", True)]


def test_post_softdeps_are_not_loaded_first(tmp_path: Path) -> None:
    root = tmp_path / "modules"
    add_module(root, "fs/x.ko", softdep=["pre: crc32c post: crc16"])
    add_module(root, "crypto/crc32c_generic.ko", alias=["crc32c"])
    add_module(root, "lib/crc16.ko")
    order = names(ModuleTree(root).resolve(["x"]))
    assert "crc16" not in order[: order.index("x")]


def _real_module_trees() -> list[Path]:
    trees: list[Path] = []
    for cache in (Path("/var/cache/hyper/kernels"), Path("/tmp/hcache/kernels")):
        if cache.is_dir():
            trees += sorted(p.parent for p in cache.glob("*/lib/modules/*/kernel") if p.is_dir())
    return trees


REAL_TREES = _real_module_trees()


@pytest.mark.skipif(not REAL_TREES, reason="no Debian kernel in Hyper's cache")
def test_guest_modules_of_a_real_debian_kernel() -> None:
    tree = ModuleTree(REAL_TREES[0])
    order = tree.resolve(GUEST_MODULES)
    found = {m.name: m for m in order}
    for name in (
        "virtio_mmio",
        "virtio",
        "virtio_ring",
        "erofs",
        "libcrc32c",
        "ext4",
        "jbd2",
        "mbcache",
        "crc16",
        "overlay",
        "9p",
        "9pnet",
        "9pnet_virtio",
    ):
        assert name in found or name in tree.builtin, name
        if name in found:
            assert found[name].required, name
    if "crc32c_generic" in found:
        assert found["crc32c_generic"].required is False
    assert len(found) == len(order)
    assert_dependencies_first(tree, order)


@pytest.mark.skipif(not REAL_TREES, reason="no Debian kernel in Hyper's cache")
def test_module_groups_of_a_real_debian_kernel_load_in_order() -> None:
    tree = ModuleTree(REAL_TREES[0])
    order: list[ModuleToLoad] = []
    by_group: dict[str, list[str]] = {}
    for group, wanted in MODULE_GROUPS.items():
        resolved = tree.resolve(wanted, [m.name for m in order])
        by_group[group] = names(resolved)
        order += resolved
    assert len({m.name for m in order}) == len(order)  # no module in two groups
    assert_dependencies_first(tree, order)
    assert {"virtio_mmio", "virtio", "virtio_ring", "erofs", "ext4", "overlay"} <= set(by_group["boot"])
    assert {"9p", "9pnet", "9pnet_virtio"} <= set(by_group["9p"])
    assert "virtio_net" in by_group["net"]
    assert set(GUEST_MODULES) <= {m.name for m in order} | tree.builtin
