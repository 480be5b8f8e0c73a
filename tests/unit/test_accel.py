"""Choosing KVM or TCG from what the host offers and what kernel is booted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.vm.accel import Accel, HostFacts, choose_accel, probe_host

NO_KVM = HostFacts(kvm_device=False, kvm_openable=False, kvm_open_error="", pvm_host=False)
UNOPENABLE = HostFacts(
    kvm_device=True, kvm_openable=False, kvm_open_error="Permission denied", pvm_host=False
)
KVM = HostFacts(kvm_device=True, kvm_openable=True, kvm_open_error="", pvm_host=False)
PVM = HostFacts(kvm_device=True, kvm_openable=True, kvm_open_error="", pvm_host=True)


@pytest.mark.parametrize(
    ("setting", "facts", "kernel_is_pvm", "accel"),
    [
        ("tcg", KVM, False, Accel.TCG),
        ("tcg", NO_KVM, False, Accel.TCG),
        ("TCG", PVM, True, Accel.TCG),
        ("kvm", KVM, False, Accel.KVM),
        ("kvm", PVM, False, Accel.KVM),  # the user insists
        ("auto", NO_KVM, False, Accel.TCG),
        ("auto", UNOPENABLE, False, Accel.TCG),
        ("auto", PVM, False, Accel.TCG),
        ("auto", PVM, True, Accel.KVM),
        ("auto", KVM, False, Accel.KVM),
        ("auto", KVM, True, Accel.KVM),
        ("", KVM, False, Accel.KVM),
        (" Auto ", NO_KVM, False, Accel.TCG),
    ],
)
def test_choose_accel(setting: str, facts: HostFacts, kernel_is_pvm: bool, accel: Accel) -> None:
    choice = choose_accel(setting, facts, kernel_is_pvm)
    assert choice.accel is accel
    assert choice.reason


def test_reasons_say_why() -> None:
    assert "does not exist" in choose_accel("auto", NO_KVM, False).reason
    assert "Permission denied" in choose_accel("auto", UNOPENABLE, False).reason
    assert "PVM" in choose_accel("auto", PVM, False).reason
    assert "HYPER_KERNEL_PVM" in choose_accel("auto", PVM, False).reason


@pytest.mark.parametrize(
    ("facts", "problem"), [(NO_KVM, "does not exist"), (UNOPENABLE, "Permission denied")]
)
def test_forced_kvm_without_usable_kvm_fails(facts: HostFacts, problem: str) -> None:
    with pytest.raises(FailedPrecondition, match=problem) as caught:
        choose_accel("kvm", facts, False)
    assert caught.value.hint is not None


@pytest.mark.parametrize("setting", ["xen", "hvf", "kvm,tcg"])
def test_invalid_setting(setting: str) -> None:
    with pytest.raises(InvalidArgument, match="HYPER_ACCEL"):
        choose_accel(setting, KVM, False)


def test_probe_host_without_kvm(tmp_path: Path) -> None:
    (tmp_path / "module").mkdir()
    facts = probe_host(tmp_path / "kvm", tmp_path / "module")
    assert facts == HostFacts(kvm_device=False, kvm_openable=False, kvm_open_error="", pvm_host=False)


def test_probe_host_with_an_openable_device_and_pvm(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    (tmp_path / "module" / "kvm_pvm").mkdir(parents=True)
    facts = probe_host(device, tmp_path / "module")
    assert facts == HostFacts(kvm_device=True, kvm_openable=True, kvm_open_error="", pvm_host=True)


def test_probe_host_with_a_device_that_cannot_be_opened(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root opens a mode-000 file anyway; a directory cannot be opened for writing by anyone.
        device = tmp_path / "kvm"
        device.mkdir()
    else:
        device = tmp_path / "kvm"
        device.write_bytes(b"")
        device.chmod(0)
    facts = probe_host(device, tmp_path / "module")
    assert facts.kvm_device is True
    assert facts.kvm_openable is False
    assert facts.kvm_open_error
    assert choose_accel("auto", facts, False).accel is Accel.TCG
