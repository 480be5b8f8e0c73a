"""A bare VM spec for tests that talk to the guest agent directly, without hyper's runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hyper.runtime.run import VmInputs
from hyper.runtime.spec import host_tsc_khz, kernel_cmdline
from hyper.vm.driver import DiskSpec, VmSpec


def agent_vm_spec(name: str, inputs: VmInputs, run_dir: Path, disks: Sequence[DiskSpec]) -> VmSpec:
    """256 MiB, one vCPU, the appliance as init. Always with the host's TSC
    frequency, as hyper passes it: without it about one TCG boot in three
    hangs calibrating the TSC."""
    return VmSpec(
        name=name,
        kernel=inputs.kernel.image,
        initrd=inputs.appliance.initrd,
        cmdline=kernel_cmdline(
            inputs.appliance, inputs.accel.accel, host_tsc_khz(Path("/proc/cpuinfo").read_text())
        ),
        accel=inputs.accel.accel,
        memory_mib=256,
        cpus=1,
        run_dir=run_dir,
        disks=tuple(disks),
    )


def docker_confinement() -> dict[str, object]:
    """The agent's `start` confinement for Docker's defaults (capabilities, seccomp)."""
    from hyper.runtime.security import confinement

    return confinement(kernel=(6, 1)).message()
