"""Kernel module tables: which .ko files a set of drivers needs, in load order.

Debian's kernel package ships no modules.dep (depmod makes it at install
time), so dependencies are read from each module's own `.modinfo` ELF
section: `depends=` (hard) and `softdep=pre:` (soft, often an alias such as
`crypto-crc32c`, resolved against the modules' `alias=` entries).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import FailedPrecondition, InvalidArgument

# What the guest needs, by group. "boot" is loaded before the agent serves:
# the virtio transport and disks, its own channel, and the filesystems of
# layer disks (erofs, or ext4), the writable layer (ext4) and overlayfs.
# The others are loaded when a pod first needs them (each module costs a
# signature check and relocation, slow under TCG).
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "boot": ("virtio_mmio", "virtio_blk", "virtio_console", "overlay", "erofs", "ext4"),
    "9p": ("9p", "9pnet_virtio"),
    "net": ("virtio_net",),
    # Disks hot-added to a running pod's VM (a container joining it): a
    # microvm cannot hot-plug virtio-blk, but a SCSI controller takes disks.
    "scsi": ("virtio_scsi", "sd_mod"),
    # Free-page reporting to the host, for VMs whose RAM is anonymous (booted,
    # not resumed from a template: hyper.vm.qemu_command says why).
    "balloon": ("virtio_balloon",),
}
GUEST_MODULES = tuple(name for group in MODULE_GROUPS.values() for name in group)


@dataclass(frozen=True)
class ModuleToLoad:
    name: str
    path: Path
    required: bool


def normalize(name: str) -> str:
    return name.replace("-", "_")


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The key=value pairs of an ELF64 module's .modinfo section."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise InvalidArgument(f"{path} is not a 64-bit little-endian ELF module")
        shoff = struct.unpack_from("<Q", header, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        names_offset, names_size = sections[shstrndx][4], sections[shstrndx][5]
        f.seek(names_offset)
        names = f.read(names_size)
        for name_index, _type, _flags, _addr, offset, size in sections:
            end = names.find(b"\0", name_index)
            if names[name_index:end] == b".modinfo":
                f.seek(offset)
                info: dict[str, list[str]] = {}
                for item in f.read(size).split(b"\0"):
                    key, sep, value = item.decode(errors="replace").partition("=")
                    if sep:
                        info.setdefault(key, []).append(value)
                return info
    return {}


class ModuleTree:
    """The modules of one kernel release: `lib/modules/<release>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {
            normalize(p.name.split(".ko")[0]): p for p in sorted(root.rglob("*.ko*")) if p.is_file()
        }
        builtin = root / "modules.builtin"
        self.builtin = (
            {normalize(Path(line).name.split(".ko")[0]) for line in builtin.read_text().split()}
            if builtin.exists()
            else set()
        )
        self._aliases: dict[str, list[str]] | None = None

    def _alias_index(self) -> dict[str, list[str]]:
        if self._aliases is None:
            index: dict[str, list[str]] = {}
            for name, path in self.files.items():
                parts = path.relative_to(self.root).parts
                if "crypto" not in parts and "lib" not in parts:
                    continue  # soft dependencies name crypto algorithms and libraries
                for alias in read_modinfo(path).get("alias", []):
                    index.setdefault(normalize(alias), []).append(name)
            self._aliases = index
        return self._aliases

    def _provider(self, wanted: str) -> str | None:
        if wanted in self.files or wanted in self.builtin:
            return wanted
        providers = sorted(self._alias_index().get(wanted, []))
        # A generic implementation loads on any CPU, including TCG's.
        generic = [p for p in providers if p.endswith("_generic")]
        chosen = generic or providers
        return chosen[0] if chosen else None

    def resolve(self, wanted: Iterable[str], loaded: Iterable[str] = ()) -> list[ModuleToLoad]:
        """Load order for `wanted` and everything they need.

        Built-in modules, and those in `loaded` (an earlier group's), are skipped.
        """
        order: dict[str, ModuleToLoad] = {}
        skipped = {normalize(name) for name in loaded}
        visiting: set[str] = set()

        def visit(name: str, required: bool, trail: tuple[str, ...]) -> None:
            name = normalize(name)
            if name in skipped or name in self.builtin:
                return
            known = order.get(name)
            if known is not None:
                if required and not known.required:
                    # First reached as an optional soft dependency, now needed for real.
                    order[name] = ModuleToLoad(name, known.path, True)
                    for dep in self._hard_dependencies(name):
                        visit(dep, True, (*trail, name))
                return
            if name not in self.files:
                if required:
                    raise FailedPrecondition(
                        f"kernel module {name} (needed by {' → '.join(trail) or 'the guest'}) "
                        f"is neither built in nor in {self.root}",
                        hint="use a kernel with virtio, overlayfs and erofs or ext4 support",
                    )
                return
            if name in visiting:
                return  # module dependencies are acyclic; a broken table must not recurse forever
            visiting.add(name)
            info = read_modinfo(self.files[name])
            for alias in _pre_softdeps(info.get("softdep", [])):
                provider = self._provider(normalize(alias))
                if provider is not None:
                    visit(provider, False, (*trail, name))
            for dep in self._hard_dependencies(name):
                visit(dep, required, (*trail, name))
            if name not in order:
                order[name] = ModuleToLoad(name, self.files[name], required)

        for name in wanted:
            visit(name, True, ())
        return list(order.values())

    def _hard_dependencies(self, name: str) -> list[str]:
        depends = read_modinfo(self.files[name]).get("depends", [])
        return [dep for dep in ",".join(depends).split(",") if dep]


def _pre_softdeps(softdeps: list[str]) -> list[str]:
    """The names after `pre:` (and before any `post:`) of modinfo softdep lines."""
    names: list[str] = []
    for line in softdeps:
        collecting = False
        for word in line.split():
            if word.endswith(":"):
                collecting = word == "pre:"
            elif collecting:
                names.append(word)
    return names
