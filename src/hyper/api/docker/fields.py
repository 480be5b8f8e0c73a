"""Every field of the Engine API's container create body, and what Hyper does with it.

Each field is honoured (it does what Docker's does), recorded (kept and shown
by inspect; it has no effect in Docker either, or the client acts on it), or
refused by name when set. A field not in this table is refused too when it
carries a value, so a field a newer client sends cannot be silently ignored.
docs/docker-api.md shows this table; a unit test keeps the two equal.

The confinement options (capabilities, privileged, security options, ulimits,
shm size, init) are parsed for every front end, and refused here while the
runtime does not honour them yet (hyper.runtime.confinement says which).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hyper.errors import InvalidArgument
from hyper.runtime.confinement import NOT_YET_HONOURED

DOCS = "see docs/docker-api.md for what Hyper supports"


class Decision(enum.Enum):
    HONOURED = "honoured"
    RECORDED = "recorded"
    REFUSED = "refused"


def empty(value: Any) -> bool:
    """Go's zero values, as clients send them for what they do not ask for."""
    return value is None or value is False or value == 0 or value in ("", [], {})


def one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: empty(value) or value in allowed


@dataclass(frozen=True)
class Field:
    path: str  # "HostConfig.CapAdd"; Config fields are top-level in the body
    what: str  # what it asks for, with the flag that sets it
    decision: Decision
    note: str = ""
    unset: Callable[[Any], bool] = empty  # a value that asks for nothing (accepted when refused)
    option: str | None = None  # the RunOptions field of a confinement option
    limit: Callable[[Any], bool] | None = None  # the values an honoured field takes; others are refused

    @property
    def effective(self) -> Decision:
        """Refused while the runtime does not honour the option yet."""
        if self.option is not None and self.option in NOT_YET_HONOURED:
            return Decision.REFUSED
        return self.decision


H, R, X = Decision.HONOURED, Decision.RECORDED, Decision.REFUSED
_NET = "not supported by Hyper's networking (docs/networking.md)"
_CGROUP = "a container's limits are its VM's size: use -m/--memory and --cpus"
_WIN = "Windows containers only"

FIELDS: tuple[Field, ...] = (
    # -- Config (the body's top level) ------------------------------------------------------
    Field("Image", "the image", H),
    Field("Cmd", "the command", H),
    Field(
        "Entrypoint",
        "--entrypoint",
        H,
        "several words: the first is the entrypoint, the rest lead the command",
    ),
    Field("Env", "-e/--env, --env-file", H),
    Field("WorkingDir", "-w/--workdir", H),
    Field("User", "-u/--user", H),
    Field("Hostname", "-h/--hostname", H),
    Field("Labels", "-l/--label, --label-file", H, "merged over the image's labels, as Docker does"),
    Field("Tty", "-t/--tty", H),
    Field("OpenStdin", "-i/--interactive", H),
    Field("StdinOnce", "-i with -a stdin (docker run -i)", H),
    Field("AttachStdin", "-a/--attach stdin", R, "the client attaches itself; shown by inspect"),
    Field("AttachStdout", "-a/--attach stdout", R, "the client attaches itself; shown by inspect"),
    Field("AttachStderr", "-a/--attach stderr", R, "the client attaches itself; shown by inspect"),
    Field(
        "ExposedPorts",
        "--expose, the image's EXPOSE",
        H,
        "what -P publishes (with the image's EXPOSE); in inspect's Ports",
    ),
    Field(
        "StopSignal", "--stop-signal", H, "the signal `stop` and `restart` send first; the image's when unset"
    ),
    Field(
        "StopTimeout",
        "--stop-timeout",
        H,
        "seconds `stop` waits before SIGKILL when `t` is not given (-1: no limit)",
    ),
    Field(
        "Healthcheck",
        "--health-cmd, --health-interval/-timeout/-start-period/-retries, --no-healthcheck",
        H,
        "probes run by hyperd as execs in the container; StartInterval (API 1.44) is refused",
    ),
    Field("Shell", "the image's SHELL", H, "what CMD-SHELL health checks run in"),
    Field("NetworkDisabled", "no network", H, "the same as --network none"),
    Field("Domainname", "--domainname", X, "the NIS domain name is not set in the VM yet"),
    Field("MacAddress", "--mac-address", X, _NET),
    Field(
        "Volumes",
        "anonymous volumes (-v DST)",
        H,
        "an anonymous volume at each path nothing else is mounted at, as the image's VOLUME",
    ),
    Field("OnBuild", "ONBUILD", X, "ONBUILD applies to image builds, which Hyper does not do"),
    Field("ArgsEscaped", "ArgsEscaped", X, _WIN),
    # -- HostConfig ---------------------------------------------------------------------------------
    Field(
        "HostConfig.Memory",
        "-m/--memory",
        H,
        "memory.max of the container's cgroup in the guest; a pod of one's VM has that much RAM"
        " (at least 128 MiB; default 512 MiB)",
    ),
    Field(
        "HostConfig.NanoCpus",
        "--cpus",
        H,
        "cpu.max of the container's cgroup; a pod of one's VM has that many vCPUs, rounded up; default 1",
    ),
    Field("HostConfig.RestartPolicy", "--restart", H),
    Field("HostConfig.AutoRemove", "--rm", H),
    Field(
        "HostConfig.ConsoleSize",
        "the terminal's size with -t",
        H,
        "the TTY's size at start",
        unset=lambda v: empty(v) or v == [0, 0],
    ),
    Field(
        "HostConfig.NetworkMode",
        "--network",
        H,
        "`bridge` (the default), `none`, or a network's name or ID; `host` is refused (a VM's own kernel)",
    ),
    Field(
        "HostConfig.LogConfig",
        "--log-driver, --log-opt",
        H,
        "hyperd's json-lines log, read by `docker logs`, rotated by max-size (20m) and max-file (5);"
        " json-file and local drivers; others refused",
    ),
    Field("HostConfig.Runtime", "--runtime", H, "`hyper` (a VM per container); any other is refused"),
    Field("HostConfig.Isolation", "--isolation", H, "`default` only, as on Linux"),
    Field(
        "HostConfig.IpcMode",
        "--ipc",
        H,
        "`private`: the VM is the container's own; others refused",
        limit=one_of("private"),
    ),
    Field(
        "HostConfig.UsernsMode",
        "--userns",
        H,
        "`host`: no user namespace remapping, as every Hyper container",
        limit=one_of("host"),
    ),
    Field(
        "HostConfig.MemorySwap",
        "--memory-swap",
        H,
        "the container's cgroup's memory.swap.max in the guest (-1: unlimited); the VM has no swap device",
    ),
    Field("HostConfig.MemorySwappiness", "--memory-swappiness", X, "the VM has no swap", unset=one_of(-1)),
    Field("HostConfig.ContainerIDFile", "--cidfile", R, "the client writes the file"),
    Field(
        "HostConfig.CapAdd", "--cap-add", H, "capabilities added to Docker's default set", option="cap_add"
    ),
    Field(
        "HostConfig.CapDrop",
        "--cap-drop",
        H,
        "capabilities removed from Docker's default set",
        option="cap_drop",
    ),
    Field(
        "HostConfig.Privileged",
        "privileged containers (--privileged)",
        H,
        "every capability, no seccomp filter, no masked paths, a writable /sys and the VM's devices "
        "(not the agent's channel)",
        option="privileged",
    ),
    Field(
        "HostConfig.SecurityOpt",
        "--security-opt",
        H,
        "no-new-privileges, seccomp=unconfined or a profile (Docker's default profile otherwise)",
        option="security_opt",
    ),
    Field(
        "HostConfig.Ulimits", "--ulimit", H, "resource limits of the container's processes", option="ulimits"
    ),
    Field("HostConfig.ShmSize", "--shm-size", H, "the size of /dev/shm (default 64 MiB)", option="shm_size"),
    Field(
        "HostConfig.Init",
        "--init",
        H,
        "the agent's minimal init as PID 1: it reaps orphans and passes signals on",
        option="init",
    ),
    Field(
        "HostConfig.Binds",
        "-v SRC:DST[:OPTS]",
        H,
        "host directories and named volumes over virtio-9p; ro/rw/nocopy (z, Z ignored); "
        "propagation other than rprivate refused",
    ),
    Field(
        "HostConfig.Mounts",
        "--mount",
        H,
        "bind, volume and tmpfs with Docker's options; other types, volume drivers and "
        "propagation other than rprivate refused",
    ),
    Field(
        "HostConfig.VolumesFrom",
        "--volumes-from",
        H,
        "the volumes and bind mounts of other containers, taken at create (:ro, :rw)",
    ),
    Field(
        "HostConfig.VolumeDriver",
        "--volume-driver",
        H,
        "`local` only: Hyper's volumes are directories under its state directory",
        limit=one_of("local"),
    ),
    Field("HostConfig.Tmpfs", "--tmpfs", H, "a tmpfs in the VM; size=, mode= and mount flags"),
    Field("HostConfig.PortBindings", "published ports (-p)", H, "DNAT on the host's addresses and 127.0.0.1"),
    Field("HostConfig.PublishAllPorts", "published ports (-P)", H, "every exposed port, to a free host port"),
    Field("HostConfig.Links", "--link", X, _NET),
    Field("HostConfig.Dns", "--dns", H, "hyperd's resolver forwards to them (default bridge: resolv.conf)"),
    Field("HostConfig.DnsOptions", "--dns-option", H, "in resolv.conf"),
    Field("HostConfig.DnsSearch", "--dns-search", H, "in resolv.conf"),
    Field("HostConfig.ExtraHosts", "--add-host", H, "in /etc/hosts; host-gateway is refused"),
    Field("HostConfig.Devices", "host devices (--device)", X, "a VM has no host devices"),
    Field("HostConfig.DeviceCgroupRules", "--device-cgroup-rule", X, "a VM has no host devices"),
    Field("HostConfig.DeviceRequests", "--gpus", X, "a VM has no host devices"),
    Field(
        "HostConfig.ReadonlyRootfs",
        "--read-only",
        H,
        "the container's root mounted read-only; its volumes, tmpfs and /dev keep their own modes",
    ),
    Field(
        "HostConfig.GroupAdd",
        "--group-add",
        H,
        "supplementary groups (names from the container's /etc/group, or numbers) added to the user's",
    ),
    Field(
        "HostConfig.Sysctls",
        "--sysctl",
        H,
        "namespaced sysctls (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*) written in the "
        "VM before the process starts; others refused, as runc does",
    ),
    Field("HostConfig.OomScoreAdj", "--oom-score-adj", X, "not set in the VM yet"),
    Field("HostConfig.OomKillDisable", "--oom-kill-disable", X, "the VM's kernel kills on OOM"),
    Field("HostConfig.PidsLimit", "--pids-limit", H, "pids.max of the container's cgroup in the guest"),
    Field("HostConfig.PidMode", "--pid", X, "a container sees its own VM only"),
    Field("HostConfig.UTSMode", "--uts", X, "a container sees its own VM only"),
    Field("HostConfig.CgroupnsMode", "--cgroupns", X, "cgroup namespaces are not chosen yet"),
    Field("HostConfig.Cgroup", "Cgroup", X, _CGROUP),
    Field("HostConfig.CgroupParent", "--cgroup-parent", X, _CGROUP),
    Field("HostConfig.CpuShares", "-c/--cpu-shares", X, _CGROUP),
    Field("HostConfig.CpuPeriod", "--cpu-period", X, _CGROUP),
    Field("HostConfig.CpuQuota", "--cpu-quota", X, _CGROUP),
    Field("HostConfig.CpuRealtimePeriod", "--cpu-rt-period", X, _CGROUP),
    Field("HostConfig.CpuRealtimeRuntime", "--cpu-rt-runtime", X, _CGROUP),
    Field(
        "HostConfig.CpusetCpus",
        "--cpuset-cpus",
        H,
        "cpuset.cpus of the container's cgroup: the VM's vCPUs (a pod of one gets enough of them)",
    ),
    Field("HostConfig.CpusetMems", "--cpuset-mems", X, _CGROUP),
    Field("HostConfig.MemoryReservation", "--memory-reservation", X, _CGROUP),
    Field("HostConfig.KernelMemory", "--kernel-memory", X, _CGROUP),
    Field("HostConfig.KernelMemoryTCP", "KernelMemoryTCP", X, _CGROUP),
    Field("HostConfig.BlkioWeight", "--blkio-weight", X, _CGROUP),
    Field("HostConfig.BlkioWeightDevice", "--blkio-weight-device", X, _CGROUP),
    Field("HostConfig.BlkioDeviceReadBps", "--device-read-bps", X, _CGROUP),
    Field("HostConfig.BlkioDeviceWriteBps", "--device-write-bps", X, _CGROUP),
    Field("HostConfig.BlkioDeviceReadIOps", "--device-read-iops", X, _CGROUP),
    Field("HostConfig.BlkioDeviceWriteIOps", "--device-write-iops", X, _CGROUP),
    Field(
        "HostConfig.StorageOpt",
        "--storage-opt",
        H,
        "`size`: the writable disk's size (64m to 1t; default 10g); other keys refused",
    ),
    Field("HostConfig.Annotations", "--annotation", X, "there is no OCI runtime to pass them to"),
    Field("HostConfig.MaskedPaths", "MaskedPaths", X, "the masked paths are the runtime's"),
    Field("HostConfig.ReadonlyPaths", "ReadonlyPaths", X, "the read-only paths are the runtime's"),
    Field("HostConfig.CpuCount", "--cpu-count", X, _WIN),
    Field("HostConfig.CpuPercent", "--cpu-percent", X, _WIN),
    Field("HostConfig.IOMaximumIOps", "--io-maxiops", X, _WIN),
    Field("HostConfig.IOMaximumBandwidth", "--io-maxbandwidth", X, _WIN),
    # -- NetworkingConfig ---------------------------------------------------------------------------
    Field(
        "NetworkingConfig.EndpointsConfig",
        "--ip, --ip6, --network-alias, --link-local-ip",
        H,
        "one network per create: its --network-alias and --ip; --ip6 and --link are refused",
    ),
)
BY_PATH: Mapping[str, Field] = {field.path: field for field in FIELDS}
SECTIONS = ("HostConfig", "NetworkingConfig")


def check_create_body(body: Mapping[str, Any]) -> None:
    """Refuse, by name, every field of `body` that asks for what Hyper does not do."""
    sections: list[tuple[str, Mapping[str, Any]]] = [("", body)]
    for name in SECTIONS:
        section = body.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise InvalidArgument(f"{name} must be an object")
        sections.append((f"{name}.", section))
    for prefix, section in sections:
        for key, value in section.items():
            path = prefix + key
            if path in SECTIONS:
                continue
            field = BY_PATH.get(path)
            if field is None:
                if not empty(value):
                    raise InvalidArgument(
                        f"Hyper does not know the container setting {path}, so it refuses it rather "
                        "than ignore it",
                        hint=f"leave it out; {DOCS}",
                    )
                continue
            refused = field.effective is Decision.REFUSED and not field.unset(value)
            if refused or (field.limit is not None and not field.limit(value)):
                hint = f"{field.note}; {DOCS}" if field.note else DOCS
                raise InvalidArgument(f"Hyper does not support {field.what} yet ({path})", hint=hint)
