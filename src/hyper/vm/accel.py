"""Which accelerator QEMU should use, and why.

KVM when /dev/kvm is usable for the kernel we boot; TCG (software emulation)
otherwise. A host whose KVM is PVM (the `kvm_pvm` module) runs only
PVM-enabled guest kernels at speed: a stock kernel under it crawls, so there
TCG is chosen unless the kernel's config says CONFIG_PVM_GUEST=y or the user
declares it with HYPER_KERNEL_PVM=1. HYPER_ACCEL=kvm|tcg|auto overrides.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import FailedPrecondition, InvalidArgument


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


@dataclass(frozen=True)
class HostFacts:
    """What the choice depends on, gathered once so the choice itself is pure."""

    kvm_device: bool
    kvm_openable: bool
    kvm_open_error: str
    pvm_host: bool


def probe_host(dev_kvm: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> HostFacts:
    exists = dev_kvm.exists()
    openable, error = False, ""
    if exists:
        try:
            fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
            openable = True
        except OSError as exc:
            error = exc.strerror or str(exc)
    return HostFacts(exists, openable, error, (sys_module / "kvm_pvm").exists())


def choose_accel(setting: str, facts: HostFacts, kernel_is_pvm: bool) -> AccelChoice:
    setting = (setting or "auto").strip().lower()
    if setting not in ("auto", "kvm", "tcg"):
        raise InvalidArgument(f"HYPER_ACCEL={setting!r} is not one of kvm, tcg, auto")
    if setting == "tcg":
        return AccelChoice(Accel.TCG, "HYPER_ACCEL=tcg")
    kvm_problem = None
    if not facts.kvm_device:
        kvm_problem = "/dev/kvm does not exist"
    elif not facts.kvm_openable:
        kvm_problem = f"/dev/kvm cannot be opened ({facts.kvm_open_error})"
    if setting == "kvm":
        if kvm_problem:
            raise FailedPrecondition(
                f"HYPER_ACCEL=kvm but {kvm_problem}",
                hint="load kvm_intel or kvm_amd and allow access to /dev/kvm, or use HYPER_ACCEL=tcg",
            )
        return AccelChoice(Accel.KVM, "HYPER_ACCEL=kvm")
    if kvm_problem:
        return AccelChoice(Accel.TCG, f"{kvm_problem}; using software emulation")
    if facts.pvm_host and not kernel_is_pvm:
        return AccelChoice(
            Accel.TCG,
            "KVM here is PVM (kvm_pvm is loaded) and the guest kernel is not PVM-enabled, "
            "so it would crawl; using software emulation (set HYPER_KERNEL_PVM=1 for a PVM kernel)",
        )
    if facts.pvm_host:
        return AccelChoice(Accel.KVM, "KVM (PVM) with a PVM-enabled guest kernel")
    return AccelChoice(Accel.KVM, "/dev/kvm is usable")
