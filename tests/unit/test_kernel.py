"""Kernel images: release strings, unpacking a bzImage, and kernels the user brings."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from hyper.errors import InvalidArgument, NotFound
from hyper.vm.kernel import Kernel, bzimage_release, extract_vmlinux, kernel_from_file, vmlinux_release

RELEASE = "6.1.0-99-test"
FAKE_VMLINUX = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"Linux version " + RELEASE.encode() + b" (gcc) #1 SMP\0"


def bzimage(
    payload: bytes, *, setup_sects: int = 3, version: str = RELEASE, payload_offset: int = 0x40
) -> bytes:
    """A bzImage as the boot protocol lays it out, with `payload` as its compressed kernel."""
    setup_size = ((setup_sects or 4) + 1) * 512
    data = bytearray(setup_size + payload_offset + len(payload) + 64)
    data[0x1F1] = setup_sects
    data[0x202:0x206] = b"HdrS"
    version_at = 0x300
    struct.pack_into("<H", data, 0x20E, version_at - 0x200)
    text = f"{version} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian".encode() + b"\0"
    data[version_at : version_at + len(text)] = text
    struct.pack_into("<II", data, 0x248, payload_offset, len(payload))
    start = setup_size + payload_offset
    data[start : start + len(payload)] = payload
    return bytes(data)


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def test_bzimage_release() -> None:
    assert bzimage_release(bzimage(xz(FAKE_VMLINUX))) == RELEASE


@pytest.mark.parametrize("data", [b"", b"\0" * 0x300, FAKE_VMLINUX, b"HdrS" * 200])
def test_bzimage_release_of_something_else_is_none(data: bytes) -> None:
    assert bzimage_release(data) is None


def test_vmlinux_release() -> None:
    assert vmlinux_release(FAKE_VMLINUX) == RELEASE
    assert vmlinux_release(b"\x7fELF no banner") is None


@pytest.mark.parametrize("compress", [xz, gzip.compress], ids=["xz", "gzip"])
@pytest.mark.parametrize("setup_sects", [0, 3, 30])
def test_extract_vmlinux(compress: object, setup_sects: int) -> None:
    assert callable(compress)
    assert extract_vmlinux(bzimage(compress(FAKE_VMLINUX), setup_sects=setup_sects)) == FAKE_VMLINUX


@pytest.mark.parametrize(
    "payload",
    [
        xz(b"not an ELF kernel"),
        gzip.compress(b"not an ELF kernel"),
        gzip.compress(FAKE_VMLINUX)[:40],
        b"\x28\xb5\x2f\xfd" + b"zstd is not supported",
        b"",
    ],
    ids=["xz-not-elf", "gzip-not-elf", "gzip-truncated", "zstd", "empty"],
)
def test_extract_vmlinux_gives_up_cleanly(payload: bytes) -> None:
    assert extract_vmlinux(bzimage(payload)) is None


def test_extract_vmlinux_refuses_a_truncated_xz_payload() -> None:
    assert extract_vmlinux(bzimage(xz(FAKE_VMLINUX)[:40])) is None


def test_extract_vmlinux_of_a_non_bzimage_is_none() -> None:
    assert extract_vmlinux(FAKE_VMLINUX + b"\0" * 0x300) is None


def test_extract_vmlinux_of_a_truncated_header_is_none() -> None:
    assert extract_vmlinux(bzimage(xz(FAKE_VMLINUX))[:0x220]) is None


def test_kernel_from_a_bzimage_is_unpacked_into_the_cache(tmp_path: Path) -> None:
    boot = tmp_path / "root" / "boot"
    boot.mkdir(parents=True)
    image = boot / f"vmlinuz-{RELEASE}"
    image.write_bytes(bzimage(xz(FAKE_VMLINUX)))
    (boot / f"config-{RELEASE}").write_text("# comment\nCONFIG_PVM_GUEST=y\nCONFIG_X=m\n")
    modules = tmp_path / "root" / "lib" / "modules" / RELEASE
    modules.mkdir(parents=True)
    cache = tmp_path / "cache"

    kernel = kernel_from_file(image, cache)
    assert kernel.release == RELEASE
    assert kernel.image.parent == cache / "byo"
    assert kernel.image.read_bytes() == FAKE_VMLINUX
    assert kernel.modules == modules
    assert kernel.config == boot / f"config-{RELEASE}"
    assert kernel.config_value("CONFIG_PVM_GUEST") == "y"
    assert kernel.config_value("CONFIG_MISSING") is None
    assert str(image) in kernel.origin
    # The bzImage itself is booted for KASLR; the vmlinux when that is off.
    assert (kernel.boot_image(kaslr=True), kernel.boot_image(kaslr=False)) == (image, kernel.image)

    mtime = kernel.image.stat().st_mtime_ns
    again = kernel_from_file(image, cache)
    assert again.image == kernel.image
    assert again.image.stat().st_mtime_ns == mtime
    assert list((cache / "byo").iterdir()) == [kernel.image]


def test_kernel_from_a_vmlinux_is_used_as_it_is(tmp_path: Path) -> None:
    image = tmp_path / "vmlinux"
    image.write_bytes(FAKE_VMLINUX)
    kernel = kernel_from_file(image, tmp_path / "cache")
    assert kernel == Kernel(image, RELEASE, None, None, f"file {image}")
    assert not (tmp_path / "cache").exists()


def test_bzimage_that_cannot_be_unpacked_is_booted_as_it_is(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(b"\x28\xb5\x2f\xfd zstd"))
    kernel = kernel_from_file(image, tmp_path / "cache")
    assert kernel.image == image
    assert kernel.release == RELEASE


def test_a_file_that_is_no_kernel_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"just some text\n" * 100)
    with pytest.raises(InvalidArgument) as caught:
        kernel_from_file(path, tmp_path / "cache")
    assert caught.value.hint is not None


@pytest.mark.parametrize("name", ["missing", "."])
def test_a_missing_kernel_is_not_found(tmp_path: Path, name: str) -> None:
    with pytest.raises(NotFound):
        kernel_from_file(tmp_path / name, tmp_path / "cache")


def test_config_value_without_a_config() -> None:
    assert Kernel(Path("/k"), "r", None, None, "test").config_value("CONFIG_PVM_GUEST") is None
    assert Kernel(Path("/k"), "r", None, Path("/nonexistent/config"), "t").config_value("CONFIG_X") is None
