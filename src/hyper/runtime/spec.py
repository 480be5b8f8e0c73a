"""Pure functions that decide what runs: the process, the kernel command line, /etc files.

No file, process or socket is touched here, so all of it is unit-tested.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hyper.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from hyper.runtime import resources

if TYPE_CHECKING:
    # Imported where used: the CLI builds RunOptions on every `run`, and these
    # (image store, seccomp, appliance) cost more than the rest of a thin client.
    from hyper.image import ImageConfig
    from hyper.runtime import security
    from hyper.vm.accel import Accel
    from hyper.vm.appliance import Appliance

DEFAULT_MEMORY_MIB = 512
MIN_MEMORY_MIB = 128
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"  # the whole VM is stopped
    RESTARTING = "restarting"  # exited; its restart policy starts it again after a delay
    EXITED = "exited"
    REMOVED = "removed"


CONTAINER_TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    ContainerState.CREATED: frozenset(
        {ContainerState.RUNNING, ContainerState.EXITED, ContainerState.REMOVED}
    ),
    ContainerState.RUNNING: frozenset({ContainerState.PAUSED, ContainerState.EXITED}),
    ContainerState.PAUSED: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
    ContainerState.EXITED: frozenset(
        {ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.REMOVED}
    ),
    ContainerState.RESTARTING: frozenset(
        {ContainerState.RUNNING, ContainerState.EXITED, ContainerState.REMOVED}
    ),
    ContainerState.REMOVED: frozenset(),
}


@dataclass(frozen=True)
class RunOptions:
    """What `hyper run` was asked for."""

    image: str
    command: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False
    remove: bool = False
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = 1
    hostname: str | None = None
    name: str | None = None
    # Confinement and limits, kept in Docker's own textual forms (as the docker
    # CLI and the Engine API give them) and checked when the process is specified.
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    security_opt: tuple[str, ...] = ()  # no-new-privileges, seccomp=unconfined|<profile JSON>
    ulimits: tuple[str, ...] = ()  # NAME=SOFT[:HARD], as `--ulimit`
    shm_size: int = 0  # bytes of /dev/shm; 0 is Docker's 64 MiB
    init: bool = False  # a minimal init as the container's PID 1
    group_add: tuple[str, ...] = ()  # --group-add: group names or numbers
    sysctls: tuple[str, ...] = ()  # --sysctl NAME=VALUE, namespaced ones only
    # CRI's masked and read-only paths, replacing runc's defaults; None keeps them.
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    stop_signal: str | None = None  # None: the image's StopSignal, else SIGTERM
    stop_timeout: int | None = None  # seconds `stop` waits before SIGKILL; None: 10
    # Docker's Healthcheck: an empty test inherits the image's, ("NONE",) disables it;
    # zero durations and retries take the image's values, then Docker's defaults.
    health_test: tuple[str, ...] = ()
    health_interval: float = 0.0
    health_timeout: float = 0.0
    health_start_period: float = 0.0
    health_retries: int = 0
    log_opts: tuple[str, ...] = ()  # Docker's --log-opt KEY=VALUE: max-size, max-file
    # Networking, in Docker's textual forms (hyper.network.request checks them).
    network: str = ""  # a network's name or ID, "none", or "" for the default
    network_aliases: tuple[str, ...] = ()
    ip: str | None = None
    publish: tuple[str, ...] = ()  # -p [IP:][HOSTPORT:]PORT[/PROTO]
    publish_all: bool = False  # -P
    expose: tuple[str, ...] = ()  # --expose and the image's EXPOSE, "80/tcp"
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()  # --add-host NAME:IP
    # Storage (hyper.storage): mounts in Docker's --mount form (volumes named,
    # anonymous ones too, once the container is created), a read-only root.
    mounts: tuple[str, ...] = ()
    read_only: bool = False
    # --volumes-from CONTAINER[:ro|rw]: hyperd adds those containers' mounts to
    # `mounts` at create; kept to show them (HostConfig.VolumesFrom).
    volumes_from: tuple[str, ...] = ()
    # --storage-opt size=SIZE: the writable disk's size (hyper.storage.mounts.storage_size);
    # none: WRITABLE_DISK_BYTES.
    storage_opt: tuple[str, ...] = ()
    # A container's own limits in the guest (hyper.runtime.resources): exact
    # --cpus (memory_mib and cpus above also size a pod of one's VM),
    # --cpuset-cpus, --pids-limit (0: none), --memory-swap in bytes (0: unset, -1: unlimited).
    nano_cpus: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0
    memory_swap: int = 0
    # The pod it belongs to (hyperd's pods; "" is a pod of its own), and
    # whether it is that pod's infra container: its main process only keeps
    # the VM up (the guest's, not the image's command), its network is the pod's.
    pod: str = ""
    infra: bool = False
    # The tenant the container belongs to ("": hyperd's admin). Set by the
    # tenant front end (hyper.tenants), never taken from a request body.
    owner: str = ""


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str
    tty: bool
    stdin: bool
    # A container's main process: Docker's confinement from its options. An
    # exec leaves it None and is confined as its container.
    confinement: security.Confinement | None = None
    init: bool = False


def joins_another_vm(options: RunOptions) -> bool:
    """Whether the container runs in a VM it does not size: its pod's, or by
    --network container: another's (hyper.daemon.members)."""
    return (bool(options.pod) and not options.infra) or options.network.startswith("container:")


def parse_memory(text: str, minimum: int = MIN_MEMORY_MIB) -> int:
    """Docker's --memory forms (`512m`, `1g`, `1073741824`) in MiB; at least
    `minimum` (a VM's, unless the container joins another's VM)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidArgument(
            f"invalid memory size {text!r}", hint="use a number with b, k, m or g, e.g. 512m"
        )
    mib = int(float(match.group(1)) * _UNITS[match.group(2).lower()]) // (1 << 20)
    if mib < minimum:
        what = "for a VM" if minimum == MIN_MEMORY_MIB else "for a container"
        raise InvalidArgument(f"memory {text!r} is below the minimum of {minimum}m {what}")
    return mib


def admit_vm_size(memory_mib: int, cpus: int, host_memory_mib: int, host_cpus: int) -> None:
    """A VM no bigger than the host: guest RAM below the host's memory and no
    more vCPUs than it has (each new size also costs a VM template on disk)."""
    if not MIN_MEMORY_MIB <= memory_mib <= host_memory_mib:
        raise ResourceExhausted(
            f"a VM of {memory_mib} MiB does not fit this host ({host_memory_mib} MiB of memory)",
            hint=f"ask for between {MIN_MEMORY_MIB}m and {host_memory_mib}m with --memory",
        )
    if not 1 <= cpus <= host_cpus:
        raise ResourceExhausted(
            f"a VM of {cpus} vCPUs does not fit this host ({host_cpus} CPUs)",
            hint=f"ask for 1 to {host_cpus} with --cpus",
        )


def host_memory_mib(meminfo: str) -> int:
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else 1 << 20


def parse_cpus(text: str, host_cpus: int) -> int:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid --cpus {text!r}", hint="give a number such as 1 or 2") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"--cpus {text} is not a positive number")
    if value > host_cpus:
        raise InvalidArgument(f"--cpus {text} is more than the {host_cpus} CPUs of this host")
    # A VM has whole vCPUs; a fraction rounds up, as Kata does.
    return max(1, int(-(-value // 1)))


def merge_env(
    image_env: tuple[str, ...], user_env: tuple[str, ...], host_env: Mapping[str, str]
) -> tuple[str, ...]:
    """Image env, overridden by `-e`; `-e NAME` alone takes NAME from the host, as Docker does."""
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    for item in user_env:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}", hint="use -e NAME=VALUE")
        if sep:
            merged[key] = value
        elif key in host_env:
            merged[key] = host_env[key]
        else:
            merged.pop(key, None)
    return tuple(f"{k}={v}" for k, v in merged.items())


# The guest kernel Hyper ships (Debian 12's): options are checked against it
# when the container is created, before any VM says which kernel it runs.
DEFAULT_GUEST_KERNEL = (6, 1)


def container_confinement(
    options: RunOptions, kernel: tuple[int, int] = DEFAULT_GUEST_KERNEL
) -> security.Confinement:
    """Capabilities, seccomp, no-new-privileges and rlimits from Docker's options;
    bad ones raise InvalidArgument."""
    from hyper.runtime import security

    return security.confinement(
        cap_add=options.cap_add,
        cap_drop=options.cap_drop,
        privileged=options.privileged,
        security_opt=options.security_opt,
        ulimits=security.ulimits_from_flags(options.ulimits),
        kernel=kernel,
        group_add=options.group_add,
        sysctls=options.sysctls,
        masked_paths=options.masked_paths,
        readonly_paths=options.readonly_paths,
    )


def process_spec(
    config: ImageConfig,
    options: RunOptions,
    host_env: Mapping[str, str],
    kernel: tuple[int, int] = DEFAULT_GUEST_KERNEL,
) -> ProcessSpec:
    if options.entrypoint is not None:
        # Docker: --entrypoint replaces the image's entrypoint and drops its CMD.
        entrypoint: tuple[str, ...] = (options.entrypoint,) if options.entrypoint else ()
        cmd = options.command
    else:
        entrypoint = config.entrypoint or ()
        cmd = options.command or config.cmd or ()
    args = entrypoint + cmd
    if not args:
        raise FailedPrecondition(
            f"no command specified for {options.image}", hint="give a command after the image name"
        )
    cwd = options.workdir or config.working_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory {cwd!r} is not an absolute path")
    return ProcessSpec(
        args=args,
        env=merge_env(config.env, options.env, host_env),
        cwd=cwd,
        user=options.user or config.user or "0",
        tty=options.tty,
        stdin=options.interactive,
        confinement=container_confinement(options, kernel),
        init=options.init,
    )


def kernel_cmdline(appliance: Appliance, accel: Accel, tsc_khz: int | None, extra: str = "") -> str:
    from hyper.vm.accel import Accel

    words = ["console=ttyS0", "quiet", "panic=-1", "reboot=t"]
    if tsc_khz and accel is Accel.TCG:
        # Under TCG the guest sometimes fails to calibrate its TSC against the
        # PIT and never reaches init; telling it the frequency avoids that.
        words.append(f"tsc_early_khz={tsc_khz}")
    init, *init_args = appliance.init_command()
    words.append(f"rdinit={init}")
    # The user's words come last so that they can override ours (the kernel
    # takes the last value of a parameter given twice).
    words += extra.split()
    words += ["--", *init_args]
    return " ".join(words)


def host_tsc_khz(cpuinfo: str) -> int | None:
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    return int(float(match.group(1)) * 1000) if match else None


def etc_files(hostname: str, host_resolv_conf: str) -> dict[str, str]:
    nameservers = [line for line in host_resolv_conf.splitlines() if not _loopback_nameserver(line)]
    return {
        "hostname": f"{hostname}\n",
        "hosts": (
            f"127.0.0.1\tlocalhost {hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
        ),
        "resolv.conf": "\n".join(nameservers) + ("\n" if nameservers else ""),
    }


def _loopback_nameserver(line: str) -> bool:
    """A host's loopback resolver (systemd-resolved's 127.0.0.53, ::1) is unreachable from a guest."""
    words = line.split()
    if words[:1] != ["nameserver"] or len(words) < 2:
        return False
    try:
        return ipaddress.ip_address(words[1].split("%")[0]).is_loopback
    except ValueError:
        return False


def start_failure_status(stage: str | None, errno: int | None) -> int:
    """Docker's statuses: 127 when the command is not found, 126 when it cannot be invoked."""
    if stage == "exec" and errno == 2:
        return 127
    return 126


def container_resources(options: RunOptions, host_cpus: int | None = None) -> resources.Resources:
    """The container's own limits, checked as Docker checks them (and, given
    `host_cpus`, that a pod of one's VM can hold them)."""
    found = resources.Resources(
        memory_mib=options.memory_mib,
        memory_swap=options.memory_swap,
        nano_cpus=options.nano_cpus,
        cpuset_cpus=options.cpuset_cpus,
        pids_limit=options.pids_limit,
    )
    found.check()
    if host_cpus is not None and not options.pod:
        resources.check_single_vm(found, options.cpus, host_cpus)
    return found
