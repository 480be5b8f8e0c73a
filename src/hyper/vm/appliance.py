"""The appliance: the guest's own root, as an initramfs, in the spirit of supermin.

It holds the host's Python interpreter and its shared libraries, the part of
the standard library the agent imports (precompiled, no sources), the agent,
and the kernel modules the guest needs. Nothing is downloaded for it. It is
cached under a hash of its inputs and rebuilt when one changes; the build
writes to a temporary file and renames it, so concurrent first runs cannot
corrupt it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hyper
from hyper.errors import FailedPrecondition
from hyper.locks import exclusive_lock
from hyper.paths import make_readable
from hyper.vm import cpio
from hyper.vm.kernel import Kernel
from hyper.vm.kmod import GUEST_MODULES, MODULE_GROUPS, ModuleTree

BUILDER_VERSION = "1"
AGENT_DIR = "/opt/hyper-agent"
AGENT_INIT = f"{AGENT_DIR}/init.pyc"
# Python flags for the agent: isolated, no site, no bytecode writing.
AGENT_PYTHON_FLAGS = ("-I", "-S", "-B")

_INIT_SOURCE = f"""\
import sys
sys.path.insert(0, {AGENT_DIR!r})
from hyper.agent.guest import main
main()
"""

# Runs under the guest's interpreter: imports the agent, lists every module
# that came with it, and compiles the pure-Python ones for that interpreter.
_PROBE = r"""
import importlib.util, json, os, py_compile, sys
agent_root, out_dir, init_source = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, agent_root)
import hyper.agent.guest
for lazy in hyper.agent.guest.LAZY_IMPORTS:
    __import__(lazy)
modules = []
for index, (name, module) in enumerate(sorted(sys.modules.items())):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    if not origin or origin in ("built-in", "frozen") or not os.path.isabs(origin):
        continue
    compiled = None
    if origin.endswith(".py"):
        compiled = os.path.join(out_dir, f"{index}.pyc")
        py_compile.compile(origin, cfile=compiled, dfile=origin, doraise=True)
    modules.append([name, origin, compiled])
# os is frozen into the interpreter, but its file is the landmark by which
# Python finds its prefix at start-up, so it must be there.
landmark = os.path.join(out_dir, "landmark.pyc")
py_compile.compile(os.__file__, cfile=landmark, dfile=os.__file__, doraise=True)
modules.append(["os", os.__file__, landmark])
init_py = os.path.join(out_dir, "init.py")
with open(init_py, "w") as f:
    f.write(init_source)
py_compile.compile(init_py, cfile=os.path.join(out_dir, "init.pyc"), doraise=True)
print(json.dumps({"executable": os.path.realpath(sys.executable), "modules": modules}))
"""


@dataclass(frozen=True)
class Appliance:
    initrd: Path
    python: str  # the interpreter's path inside the guest (the same as on the host)
    key: str

    def init_command(self) -> tuple[str, ...]:
        """`rdinit` and the arguments the kernel passes to it after `--`."""
        return (self.python, *AGENT_PYTHON_FLAGS, AGENT_INIT)


def guest_python() -> Path:
    """The interpreter the guest runs: the one running Hyper (its base, outside a venv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def _agent_root() -> Path:
    return Path(hyper.__file__).resolve().parent.parent


def _agent_sources() -> list[Path]:
    """The agent, and the builder itself: a change to either makes a new appliance."""
    root = _agent_root() / "hyper"
    builder = [root / "vm" / name for name in ("appliance.py", "cpio.py", "kmod.py")]
    return [root / "__init__.py", *sorted((root / "agent").glob("*.py")), *builder]


def _stat_line(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def appliance_key(python: Path, kernel: Kernel) -> str:
    digest = hashlib.sha256()
    digest.update(f"builder {BUILDER_VERSION}\n{' '.join(GUEST_MODULES)}\n".encode())
    digest.update(_stat_line(python).encode())
    digest.update(f"{kernel.release}:{kernel.modules}\n".encode())
    if kernel.modules is not None:
        digest.update(_stat_line(kernel.modules).encode())
    for source in _agent_sources():
        digest.update(source.read_bytes())
    return digest.hexdigest()


def shared_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader maps for `binary`, as `ldd` resolves it on this host."""
    try:
        output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    except OSError as exc:
        raise FailedPrecondition("ldd is missing", hint="install Debian's libc-bin") from exc
    libraries = []
    for line in output.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def _manifest_ok(manifest: Path) -> bool:
    """True when every input recorded at build time is unchanged."""
    try:
        lines = manifest.read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        path = Path(line.rsplit(":", 2)[0])
        try:
            if _stat_line(path) != line:
                return False
        except OSError:
            return False
    return True


def _build_entries(python: Path, kernel: Kernel, work: Path) -> tuple[list[cpio.Entry], list[Path]]:
    probe = subprocess.run(
        [str(python), "-I", "-S", "-c", _PROBE, str(_agent_root()), str(work), _INIT_SOURCE],
        capture_output=True,
        text=True,
        env={},
        check=False,
    )
    if probe.returncode != 0:
        raise FailedPrecondition(
            f"{python} could not import the guest agent: {probe.stderr.strip()[-800:]}",
            hint="the guest runs the host's Python; it must be CPython 3.11 or newer",
        )
    found = json.loads(probe.stdout)
    executable = Path(found["executable"])
    agent_root = str(_agent_root())
    entries = [
        cpio.directory(d) for d in ("/dev", "/proc", "/sys", "/run", "/tmp", "/mnt", "/etc", AGENT_DIR)
    ]
    entries.append(cpio.char_device("/dev/console", 5, 1))
    # Until the agent mounts devtmpfs, the interpreter itself needs these:
    # it seeds its hash randomization from /dev/urandom when getrandom(2)
    # would block this early in boot.
    entries.append(cpio.char_device("/dev/null", 1, 3, 0o666))
    entries.append(cpio.char_device("/dev/urandom", 1, 9, 0o666))
    entries.append(cpio.regular(str(executable), perms=0o755, source=executable))
    inputs = [executable]
    binaries = [executable]
    for _name, origin, compiled in found["modules"]:
        destination = AGENT_DIR + origin[len(agent_root) :] if origin.startswith(agent_root + "/") else origin
        inputs.append(Path(origin))
        if compiled is not None:
            entries.append(cpio.regular(destination[: -len(".py")] + ".pyc", source=Path(compiled)))
        else:
            entries.append(cpio.regular(destination, perms=0o755, source=Path(origin)))
            binaries.append(Path(origin))
    entries.append(cpio.regular(AGENT_INIT, source=work / "init.pyc"))
    for binary in binaries:
        for library in shared_libraries(binary):
            entries.append(cpio.regular(str(library), perms=0o755, source=library.resolve()))
            inputs.append(library.resolve())
    listing = []
    if kernel.modules is not None:
        tree = ModuleTree(kernel.modules)
        loaded: set[str] = set()
        for group, names in MODULE_GROUPS.items():
            for module in tree.resolve(names, loaded):
                loaded.add(module.name)
                guest_path = f"/lib/modules/{kernel.release}/{module.path.relative_to(kernel.modules)}"
                entries.append(cpio.regular(guest_path, source=module.path))
                listing.append(f"{guest_path} {1 if module.required else 0} {group}")
                inputs.append(module.path)
    entries.append(cpio.regular(f"{AGENT_DIR}/modules.list", ("\n".join(listing) + "\n").encode()))
    return entries, inputs


def ensure_appliance(
    cache: Path, kernel: Kernel, python: Path | None = None, notify: Callable[[str], None] | None = None
) -> Appliance:
    python = python or guest_python()
    key = appliance_key(python, kernel)
    cache.mkdir(parents=True, exist_ok=True)
    initrd = cache / f"appliance-{key[:24]}.cpio"
    manifest = initrd.with_suffix(".inputs")
    appliance = Appliance(initrd, str(python), key)
    if initrd.exists() and _manifest_ok(manifest):
        return appliance
    with exclusive_lock(cache / ".lock"):
        if initrd.exists() and _manifest_ok(manifest):
            return appliance  # another process built it while we waited
        if notify is not None:
            notify("building the guest appliance (once per kernel, Python and agent)")
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as work_name:
            work = Path(work_name)
            entries, inputs = _build_entries(python, kernel, work)
            buffer = io.BytesIO()
            cpio.write_archive(buffer, entries)
            tmp = work / "appliance.cpio"
            tmp.write_bytes(buffer.getvalue())
            make_readable(tmp)  # QEMU, as a user of its own, opens it
            tmp_manifest = work / "inputs"
            tmp_manifest.write_text("".join(_stat_line(p) + "\n" for p in sorted(set(inputs))))
            os.replace(tmp, initrd)
            os.replace(tmp_manifest, manifest)
    return appliance
