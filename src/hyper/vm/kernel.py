"""The guest kernel: bring your own, or Debian's generic kernel fetched as a .deb.

The default is Debian's `linux-image-amd64` (the generic flavour: the cloud
one has no 9p). Its versioned package is downloaded with `apt-get download`
(nothing is installed on the host), unpacked into Hyper's cache, and the
uncompressed kernel is extracted from the bzImage: booting it directly saves
the decompression, which is slow under TCG. The modules stay in the cache for
the appliance builder, which carries only the few the guest needs.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from hyper.locks import exclusive_lock
from hyper.paths import make_readable

DEBIAN_META_PACKAGE = "linux-image-amd64"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"


@dataclass(frozen=True)
class Kernel:
    image: Path  # what QEMU boots: an uncompressed vmlinux, or a bzImage we could not unpack
    release: str
    modules: Path | None  # lib/modules/<release>, when the kernel has loadable modules
    config: Path | None
    origin: str  # for `hyper info`
    # The compressed bzImage, when there is one. Booted, its decompressor
    # places the kernel at a random address (KASLR); the vmlinux, entered
    # directly, always runs at the same one, but boots faster.
    bzimage: Path | None = None

    def boot_image(self, kaslr: bool) -> Path:
        """What QEMU boots: the bzImage for a randomized layout, else the vmlinux."""
        return self.bzimage if kaslr and self.bzimage is not None else self.image

    def config_value(self, option: str) -> str | None:
        if self.config is None or not self.config.exists():
            return None
        for line in self.config.read_text(errors="replace").splitlines():
            if line.startswith(f"{option}="):
                return line.partition("=")[2]
        return None


def bzimage_release(data: bytes) -> str | None:
    """The release string in a bzImage's setup header, e.g. '6.1.0-56-amd64'."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    offset = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    end = data.find(b"\0", offset)
    text = data[offset:end].decode(errors="replace").split()
    return text[0] if text else None


def vmlinux_release(data: bytes) -> str | None:
    match = re.search(rb"Linux version (\S+) \(", data)
    return match.group(1).decode() if match else None


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """Decompress the kernel inside a bzImage (xz or gzip payloads); None if not possible."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if len(payload) != payload_length:
        return None  # truncated file
    try:
        if payload.startswith(_XZ_MAGIC):
            decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = decompressor.decompress(payload)
            if not decompressor.eof:
                return None  # a partial kernel must never be booted
        elif payload.startswith(_GZIP_MAGIC):
            out = gzip.decompress(payload)
        else:
            return None
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return out if out.startswith(b"\x7fELF") else None


def kernel_from_file(path: Path, cache: Path) -> Kernel:
    """A kernel the user brought: a vmlinux ELF or a bzImage (unpacked into the cache if we can)."""
    if not path.is_file():
        raise NotFound(f"kernel {path} does not exist", hint="pass --kernel PATH to a vmlinux or bzImage")
    data = path.read_bytes()
    release = bzimage_release(data) if data[0x202:0x206] == b"HdrS" else vmlinux_release(data)
    if data[:4] != b"\x7fELF" and data[0x202:0x206] != b"HdrS":
        raise InvalidArgument(
            f"{path} is neither a vmlinux (ELF) nor a bzImage",
            hint="pass --kernel PATH to a Linux kernel image",
        )
    image = path
    if data[:4] != b"\x7fELF":
        vmlinux = extract_vmlinux(data)
        if vmlinux is not None:
            import hashlib

            image = cache / "byo" / f"{hashlib.sha256(data).hexdigest()[:16]}.vmlinux"
            if not image.exists():
                image.parent.mkdir(parents=True, exist_ok=True)
                tmp = image.with_suffix(".tmp")
                tmp.write_bytes(vmlinux)
                make_readable(tmp)  # QEMU, as a user of its own, opens it
                tmp.rename(image)
    modules = None
    config = None
    if release:
        # Beside a kernel in /boot, its modules are where Debian puts them.
        for candidate in (
            path.parent.parent / "lib/modules" / release,
            Path("/lib/modules") / release,
        ):
            if candidate.is_dir():
                modules = candidate
                break
        beside = path.parent / f"config-{release}"
        config = beside if beside.exists() else None
    bzimage = path if data[:4] != b"\x7fELF" else None
    return Kernel(image, release or "unknown", modules, config, f"file {path}", bzimage)


def _debian_versioned_package() -> tuple[str, str]:
    try:
        shown = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", DEBIAN_META_PACKAGE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Unavailable(
            f"cannot look up {DEBIAN_META_PACKAGE} with apt-cache: {exc}",
            hint="run `apt-get update`, or pass --kernel PATH (or set HYPER_KERNEL)",
        ) from exc
    match = re.search(r"^Depends:.*?(linux-image-[\w.+-]+) \(= ([^)]+)\)", shown, re.MULTILINE)
    if not match:
        raise Unavailable(f"apt-cache shows no kernel package behind {DEBIAN_META_PACKAGE}")
    return match.group(1), match.group(2)


def _kernel_in(root: Path, origin: str) -> Kernel:
    release = (root / "release").read_text().strip()
    config = root / "boot" / f"config-{release}"
    bzimage = root / "boot" / f"vmlinuz-{release}"
    return Kernel(
        image=root / "vmlinux",
        release=release,
        modules=root / "lib" / "modules" / release,
        config=config if config.exists() else None,
        origin=origin,
        bzimage=bzimage if bzimage.exists() else None,
    )


Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def debian_kernel(cache: Path, notify: Notify = _quiet) -> Kernel:
    """Debian's generic kernel, fetched and unpacked once into `cache`."""
    current = cache / "debian-current"
    with exclusive_lock(cache / ".lock"):
        if current.exists():
            name = current.read_text().strip()
            if (cache / name / "vmlinux").exists():
                return _kernel_in(cache / name, f"Debian package {name}")
        package, version = _debian_versioned_package()
        name = f"{package}_{version}"
        target = cache / name
        if not (target / "vmlinux").exists():
            notify(f"fetching the guest kernel {package} {version} (once)")
            _fetch_debian_kernel(package, target)
        tmp = current.with_suffix(".tmp")
        tmp.write_text(name + "\n")
        tmp.rename(current)
        return _kernel_in(target, f"Debian package {name}")


def _fetch_debian_kernel(package: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            subprocess.run(
                ["apt-get", "download", "-q", package],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=True,
            )
            debs = list(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise Unavailable(f"apt-get download {package} produced no .deb")
            unpacked = tmp / "root"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            stderr = getattr(exc, "stderr", "") or ""
            raise Unavailable(
                f"could not fetch the guest kernel {package}: {str(stderr).strip() or exc}",
                hint="check apt's sources, or pass --kernel PATH (or set HYPER_KERNEL)",
            ) from exc
        bzimages = list((unpacked / "boot").glob("vmlinuz-*"))
        if not bzimages:
            raise FailedPrecondition(f"{package} holds no /boot/vmlinuz-*")
        data = bzimages[0].read_bytes()
        release = bzimage_release(data) or bzimages[0].name.removeprefix("vmlinuz-")
        vmlinux = extract_vmlinux(data)
        (unpacked / "vmlinux").write_bytes(vmlinux if vmlinux is not None else data)
        for kernel_file in (unpacked / "vmlinux", *bzimages):
            make_readable(kernel_file)  # QEMU, as a user of its own, opens it
        (unpacked / "release").write_text(release + "\n")
        shutil.rmtree(unpacked / "usr", ignore_errors=True)  # documentation only
        debs[0].unlink()
        unpacked.rename(target)


def resolve_kernel(explicit: Path | None, cache: Path, notify: Notify = _quiet) -> Kernel:
    if explicit is not None:
        return kernel_from_file(explicit, cache)
    return debian_kernel(cache, notify)
