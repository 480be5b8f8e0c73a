"""A container's resources, and the size of the VM that holds a pod. Pure functions.

Each container's limits are Docker's (`--memory`, `--memory-swap`, `--cpus`,
`--cpuset-cpus`, `--pids-limit`), enforced by the guest's kernel in a cgroup
of the container's own (hyper.agent.guest_cgroups); `limits_message` is what
the agent is sent. The VM bounds them all:

- a pod of one (`hyper run`, `run -d`, `create` without `--pod`) is sized as
  Hyper always sized it: the container's `--memory` (default 512 MiB) is the
  VM's RAM, and its `--cpus` rounded up (at least one more than the highest
  CPU of `--cpuset-cpus`) its vCPUs;
- a pod of several (`hyper pod create`, `--pod`, `kube play`) gets RAM for
  each container's `--memory` plus POD_OVERHEAD_MIB for the guest's kernel
  and agent, rounded up to POD_MEMORY_STEP_MIB (each VM size has its own VM
  template, so sizes are few), and as many vCPUs as its containers ask for
  together, within the host's; unless `hyper pod create --memory/--cpus`
  fixes the size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hyper.errors import InvalidArgument, ResourceExhausted

NANO = 1_000_000_000
CPU_PERIOD_US = 100_000
# Measured (Debian 6.1 guest, the agent idle, 512 MiB VM): the kernel keeps
# about 44 MiB of the RAM for itself and the agent with its tmpfs root uses
# about 20 MiB more; the rest is headroom for page cache and the share.
POD_OVERHEAD_MIB = 128
POD_MEMORY_STEP_MIB = 256
# The least memory a container of a pod may be limited to (Docker's is 6 MiB).
MIN_CONTAINER_MEMORY_MIB = 6


def parse_cpuset(text: str) -> frozenset[int]:
    """Docker's --cpuset-cpus: `0-2,4`."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise InvalidArgument(f"invalid --cpuset-cpus {text!r}", hint="give CPU numbers such as 0-1,3")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise InvalidArgument(f"invalid --cpuset-cpus {text!r}: {part} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def parse_nano_cpus(text: str, host_cpus: int) -> int:
    """--cpus as Docker's NanoCpus (1.5 → 1_500_000_000)."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid --cpus {text!r}", hint="give a number such as 1 or 1.5") from None
    if not value > 0 or value > host_cpus:
        raise InvalidArgument(f"--cpus {text} must be more than 0 and at most the {host_cpus} CPUs here")
    return round(value * NANO)


@dataclass(frozen=True)
class Resources:
    """A container's limits: None is no limit of its own (the VM's)."""

    memory_mib: int
    memory_swap: int = 0  # Docker's MemorySwap: memory + swap in bytes; 0 unset, -1 unlimited
    nano_cpus: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0  # 0 or less: unlimited

    def check(self) -> None:
        """Docker's checks of the combination, before anything is made."""
        memory = self.memory_mib << 20
        if self.memory_swap > 0 and self.memory_swap < memory:
            raise InvalidArgument(
                "Minimum memoryswap limit should be larger than memory limit, see usage",
                hint="--memory-swap is memory and swap together: give at least --memory",
            )
        if self.memory_swap < -1:
            raise InvalidArgument("--memory-swap must be a size, or -1 for unlimited swap")
        if self.cpuset_cpus:
            parse_cpuset(self.cpuset_cpus)

    def cpus_needed(self) -> int:
        """The vCPUs this container's own limits need to mean anything."""
        whole = -(-self.nano_cpus // NANO) if self.nano_cpus else 1
        highest = max(parse_cpuset(self.cpuset_cpus)) + 1 if self.cpuset_cpus else 1
        return max(whole, highest)

    def message(self) -> dict[str, Any]:
        """The agent's `resources` (hyper.agent.guest_cgroups.read_limits)."""
        swap: int | None = None
        if self.memory_swap > 0:
            swap = self.memory_swap - (self.memory_mib << 20)
        return {
            "memory_max": self.memory_mib << 20,
            "swap_max": swap,
            "cpu_quota_us": self.nano_cpus * CPU_PERIOD_US // NANO if self.nano_cpus else None,
            "cpuset_cpus": self.cpuset_cpus or None,
            "pids_max": self.pids_limit if self.pids_limit > 0 else None,
        }


def check_fits_vm(resources: Resources, vm_cpus: int, vm_memory_mib: int, name: str) -> None:
    """A container's limits against the VM it will run in."""
    if resources.cpuset_cpus:
        beyond = sorted(c for c in parse_cpuset(resources.cpuset_cpus) if c >= vm_cpus)
        if beyond:
            raise InvalidArgument(
                f"{name}: --cpuset-cpus {resources.cpuset_cpus} names CPU {beyond[0]}, "
                f"and its VM has {vm_cpus} vCPUs (0-{vm_cpus - 1})",
                hint="name CPUs the VM has, or give the pod more with --cpus",
            )
    if resources.nano_cpus > vm_cpus * NANO:
        raise InvalidArgument(
            f"{name}: --cpus {resources.nano_cpus / NANO:g} is more than its VM's {vm_cpus} vCPUs",
            hint="ask for fewer, or give the pod more with --cpus",
        )
    if resources.memory_mib > vm_memory_mib:
        raise ResourceExhausted(
            f"{name}: --memory {resources.memory_mib}m is more than its pod's VM has ({vm_memory_mib} MiB)",
            hint="ask for less, or give the pod more with --memory",
        )


def single_vm_cpus(resources: Resources, cpus: int) -> int:
    """A pod of one's vCPUs: its --cpus rounded up, enough for its --cpuset-cpus."""
    return max(cpus, resources.cpus_needed())


def check_single_vm(resources: Resources, cpus: int, host_cpus: int) -> None:
    """A pod of one's CPUs fit the host (its --cpuset-cpus may ask for more vCPUs)."""
    if resources.cpuset_cpus:
        beyond = sorted(c for c in parse_cpuset(resources.cpuset_cpus) if c >= host_cpus)
        if beyond:
            raise InvalidArgument(
                f"--cpuset-cpus {resources.cpuset_cpus} names CPU {beyond[0]}, and this host has"
                f" {host_cpus} CPUs (0-{host_cpus - 1})",
                hint="a container's VM has at most as many vCPUs as the host has CPUs",
            )
    check_fits_vm(resources, single_vm_cpus(resources, cpus), resources.memory_mib, "the container")


def pod_vm_size(
    containers: Iterable[Resources],
    host_cpus: int,
    *,
    memory_mib: int | None = None,
    cpus: int | None = None,
    default_cpus: int = 1,
) -> tuple[int, int]:
    """(RAM MiB, vCPUs) of a pod's VM: the pod's own size when given, else
    its containers' memory plus the overhead (rounded up to the step), and
    the CPUs they ask for together, at least the default, at most the host's."""
    members = list(containers)
    if memory_mib is None:
        wanted = POD_OVERHEAD_MIB + sum(r.memory_mib for r in members)
        memory_mib = -(-wanted // POD_MEMORY_STEP_MIB) * POD_MEMORY_STEP_MIB
    if cpus is None:
        asked = sum(r.nano_cpus for r in members)
        cpus = max(default_cpus, -(-asked // NANO), *(r.cpus_needed() for r in members))
        cpus = min(cpus, host_cpus)
    return memory_mib, cpus
