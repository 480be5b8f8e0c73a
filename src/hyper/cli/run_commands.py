"""`hyper run` (in the foreground, or `-d` through hyperd), the container options
`create` shares, and `hyper info`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Only what every `run` needs is imported here: the CLI's own cost is part of
# every run's (bench/start.py measures it); the rest is imported where used.
from hyper.cli.context import CliContext
from hyper.errors import InvalidArgument, NotFound
from hyper.humanize import parse_size
from hyper.runtime import resources
from hyper.runtime import spec as specs
from hyper.storage import mounts

if TYPE_CHECKING:
    from hyper.cli.client import ContainerCreate
    from hyper.runtime.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser("run", help="run a command in a new container, in its own VM")
    add_container_options(run)
    run.add_argument("--kernel", type=Path, metavar="PATH", help="guest kernel (vmlinux or bzImage)")
    run.add_argument(
        "-d", "--detach", action="store_true", help="run in the background (through hyperd); print its ID"
    )
    run.add_argument(
        "--direct",
        action="store_true",
        help=f"run the VM in this process, not through hyperd (also {DIRECT_ENV}=1)",
    )
    run.add_argument("image", metavar="IMAGE")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    run.set_defaults(func=run_command)

    info = subparsers.add_parser("info", help="show the hypervisor, accelerator, kernel and directories")
    info.set_defaults(func=info_command)


def add_container_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a new container, shared by `run` and `create`."""
    parser.add_argument("--rm", action="store_true", help="remove the container when it exits")
    parser.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("-w", "--workdir", metavar="DIR")
    parser.add_argument("-u", "--user", metavar="USER[:GROUP]")
    parser.add_argument("--entrypoint", metavar="CMD")
    network = parser.add_argument_group("network (a --direct run: the default network or none)")
    network.add_argument(
        "--network", "--net", default="", metavar="NETWORK", help="bridge, none, or a network"
    )
    network.add_argument("--network-alias", action="append", default=[], metavar="NAME")
    network.add_argument("--pod", default="", metavar="POD", help="run in this pod's VM (hyper pod create)")
    network.add_argument("--ip", metavar="IPv4")
    network.add_argument(
        "-p", "--publish", action="append", default=[], metavar="[IP:][HOSTPORT:]PORT[/PROTO]"
    )
    network.add_argument("-P", "--publish-all", action="store_true", help="publish every exposed port")
    network.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]")
    network.add_argument("--dns", action="append", default=[], metavar="IP")
    network.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN")
    network.add_argument("--dns-option", action="append", default=[], metavar="OPTION")
    network.add_argument("--add-host", action="append", default=[], metavar="NAME:IP")
    parser.add_argument(
        "-m", "--memory", metavar="SIZE", help="the VM's RAM (default: the configuration's, else 512m)"
    )
    parser.add_argument(
        "--cpus", metavar="N", help="CPUs (the VM's vCPUs, rounded up; default: the configuration's, else 1)"
    )
    parser.add_argument("--cpuset-cpus", metavar="CPUS", help="the VM's vCPUs it may run on (0-1,3)")
    parser.add_argument("--pids-limit", type=int, metavar="N", help="at most N processes (-1: no limit)")
    parser.add_argument(
        "--memory-swap", metavar="SIZE", help="memory and swap together (-1: unlimited); the VM has no swap"
    )
    parser.add_argument("--hostname", metavar="NAME")
    parser.add_argument(
        "--pull",
        choices=("missing", "always", "never"),
        default="missing",
        help="pull the image before running (default: when it is missing)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no pull output")
    parser.add_argument(
        "--platform", metavar="OS/ARCH", help="the image's platform; Hyper's VMs run the host's only"
    )
    parser.add_argument("--name", metavar="NAME", help="name the container (through hyperd)")
    parser.add_argument(
        "-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="set a label (through hyperd)"
    )
    parser.add_argument(
        "--restart",
        metavar="POLICY",
        help="no, always, unless-stopped or on-failure[:N] (through hyperd; default: no)",
    )
    add_lifecycle_options(parser)
    add_storage_options(parser)


def add_lifecycle_options(parser: argparse.ArgumentParser) -> None:
    """Docker's stop, health-check and confinement options."""
    group = parser.add_argument_group("stopping and health checks (through hyperd)")
    group.add_argument(
        "--stop-signal", metavar="SIGNAL", help="the signal `stop` sends first (default SIGTERM)"
    )
    group.add_argument(
        "--stop-timeout", type=int, metavar="SECONDS", help="seconds `stop` waits before SIGKILL"
    )
    group.add_argument("--health-cmd", metavar="COMMAND", help="a command (run by sh -c) that checks health")
    for name, what in (
        ("interval", "between checks"),
        ("timeout", "one check may take"),
        ("start-period", "to start before failures count"),
    ):
        group.add_argument(f"--health-{name}", metavar="DURATION", help=f"time {what} (e.g. 30s)")
    group.add_argument(
        "--health-retries", type=int, metavar="N", help="failures in a row that make it unhealthy"
    )
    group.add_argument("--no-healthcheck", action="store_true", help="disable the image's HEALTHCHECK")
    confinement = parser.add_argument_group(
        "confinement (Docker's default capabilities and seccomp otherwise)"
    )
    confinement.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability")
    confinement.add_argument(
        "--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability"
    )
    confinement.add_argument(
        "--privileged", action="store_true", help="every capability, no seccomp, the VM's devices"
    )
    confinement.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPTION",
        help="no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json",
    )
    confinement.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]")
    confinement.add_argument(
        "--group-add", action="append", default=[], metavar="GROUP", help="an extra group (name or number)"
    )
    confinement.add_argument(
        "--sysctl", action="append", default=[], metavar="NAME=VALUE", help="a namespaced sysctl in the VM"
    )
    parser.add_argument(
        "--log-driver", metavar="DRIVER", help="json-file or local: hyperd's bounded log (through hyperd)"
    )
    parser.add_argument(
        "--log-opt", action="append", default=[], metavar="KEY=VALUE", help="max-size=20m, max-file=5"
    )
    confinement.add_argument("--shm-size", metavar="SIZE", help="the size of /dev/shm (default 64m)")
    confinement.add_argument("--init", action="store_true", help="a minimal init as PID 1")


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """Volumes, bind mounts, tmpfs and the root's mode (hyper.storage parses them)."""
    parser.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="a volume or host directory",
    )
    parser.add_argument("--mount", action="append", default=[], metavar="type=…,source=…,target=…")
    parser.add_argument("--tmpfs", action="append", default=[], metavar="DST[:size=…,mode=…]")
    parser.add_argument("--read-only", action="store_true", help="mount the container's root read-only")
    parser.add_argument(
        "--storage-opt",
        action="append",
        default=[],
        metavar="size=SIZE",
        help="the writable disk's size (default 10g)",
    )
    parser.add_argument(
        "--volumes-from",
        action="append",
        default=[],
        metavar="CONTAINER[:ro|rw]",
        help="another container's volumes (through hyperd: with -d, or `create`)",
    )


DIRECT_ENV = "HYPER_RUN_DIRECT"
CONFINEMENT = (
    "cap_add", "cap_drop", "privileged", "security_opt", "ulimits", "shm_size", "init",
    "group_add", "sysctls",
)  # fmt: skip
# What shapes a VM from the environment (hyper.runtime.settings): they are the
# settings of the process that runs it, so a run that sets one runs here, where
# it applies, rather than in a hyperd that was started without it.
VM_ENVIRONMENT = (
    "HYPER_KERNEL",
    "HYPER_KERNEL_PVM",
    "HYPER_KERNEL_PARAMS",
    "HYPER_QEMU",
    "HYPER_ACCEL",
    "HYPER_BOOT_TIMEOUT",
    "HYPER_TEMPLATES",
    "HYPER_KASLR",
)


def run_command(args: argparse.Namespace, ctx: CliContext) -> int:
    """`run`: through hyperd (started when none runs), as Docker's; in this process
    when asked (--direct, HYPER_RUN_DIRECT=1) or when hyperd cannot be used."""
    if args.detach:
        return run_detached(args, ctx)
    explicit = args.direct or os.environ.get(DIRECT_ENV, "") not in ("", "0", "false", "no")
    why_direct = "--kernel is a foreground run's own" if args.kernel is not None else None
    vm_env = [name for name in VM_ENVIRONMENT if os.environ.get(name)]
    if vm_env and why_direct is None:
        why_direct = f"{vm_env[0]} is set here, and configures the VM of the process that runs it"
    if not explicit and why_direct is None:
        from hyper.cli.foreground import DaemonUnusable, run_through_daemon

        try:
            return run_through_daemon(args, ctx)
        except DaemonUnusable as exc:
            why_direct = f"hyperd cannot be used: {exc.message}"
    if why_direct is not None:
        print(f"hyper: running without hyperd ({why_direct})", file=ctx.stderr, flush=True)
    return run_direct(args, ctx)


def run_direct(args: argparse.Namespace, ctx: CliContext) -> int:
    """A foreground run in this process: the VM dies with it (hyper.runtime.run)."""
    import asyncio

    from hyper.network import usermode
    from hyper.network.passt import find_passt
    from hyper.network.request import NetworkConfig, request_for
    from hyper.runtime.run import ContainerExit, run_foreground
    from hyper.runtime.settings import Settings
    from hyper.runtime.stdio import Attachment

    through = "run it through hyperd (without --direct and HYPER_RUN_DIRECT)"
    if args.name is not None or args.label or args.restart is not None:
        raise InvalidArgument("--name, --label and --restart need hyperd", hint=through)
    if args.volumes_from:
        raise InvalidArgument(
            "--volumes-from needs hyperd: it knows the other containers' volumes", hint=through
        )
    daemon_only = [flag for flag, given in _daemon_options(args) if given]
    if daemon_only:
        raise InvalidArgument(
            f"{daemon_only[0]} needs hyperd: it stops containers, checks their health, keeps their logs",
            hint=through,
        )
    settings = Settings.from_env()
    if args.kernel is not None:
        settings = Settings(**{**settings.__dict__, "kernel": args.kernel})
    attachment = Attachment()
    if args.tty and args.interactive and not attachment.stdin_is_tty():
        raise InvalidArgument("the input device is not a TTY", hint="drop -t, or run from a terminal")
    if args.pod:
        raise InvalidArgument("--pod needs hyperd: a pod's containers run in its VM", hint=through)
    options = _run_options(args, settings)
    # Network options a direct run cannot honour are refused before the image is pulled.
    usermode.foreground_mode(
        request_for(options),
        default_bridge=NetworkConfig.from_env().default_bridge,
        passt=find_passt() is not None,
    )
    ensure_image(args.image, args.pull, ctx, quiet=args.quiet, platform=args.platform)
    try:
        return asyncio.run(run_foreground(options, ctx.paths, settings, attachment))
    except ContainerExit as exc:
        print(f"hyper: {exc.message}", file=ctx.stderr)
        return exc.status
    except asyncio.CancelledError:
        print("hyper: interrupted; the VM and its files were removed", file=ctx.stderr)
        return 130


def _daemon_options(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The options only hyperd acts on, and whether each was given."""
    return [
        ("--stop-signal", args.stop_signal is not None),
        ("--stop-timeout", args.stop_timeout is not None),
        ("--health-cmd", args.health_cmd is not None),
        ("--health-interval", args.health_interval is not None),
        ("--health-timeout", args.health_timeout is not None),
        ("--health-start-period", args.health_start_period is not None),
        ("--health-retries", args.health_retries is not None),
        ("--no-healthcheck", args.no_healthcheck),
        ("--log-driver", args.log_driver is not None),
        ("--log-opt", bool(args.log_opt)),
    ]


@dataclass(frozen=True)
class _HealthFlags:
    """The --health-* options, as hyper.image's Healthcheck (not imported by every run)."""

    test: tuple[str, ...] = ()
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0


def _healthcheck(args: argparse.Namespace) -> _HealthFlags:
    """The --health-* options (Docker's CMD-SHELL probe); all zero when none is given."""
    from hyper.humanize import parse_duration

    timings = any(given for flag, given in _daemon_options(args)[3:7])
    if args.no_healthcheck:
        if args.health_cmd is not None or timings:
            raise InvalidArgument("--no-healthcheck conflicts with the --health-* options")
        return _HealthFlags(test=("NONE",))
    if args.health_retries is not None and args.health_retries < 0:
        raise InvalidArgument("--health-retries cannot be negative")

    def duration(value: str | None, flag: str) -> float:
        return 0.0 if value is None else parse_duration(value, flag)

    return _HealthFlags(
        test=("CMD-SHELL", args.health_cmd) if args.health_cmd else (),
        interval=duration(args.health_interval, "--health-interval"),
        timeout=duration(args.health_timeout, "--health-timeout"),
        start_period=duration(args.health_start_period, "--health-start-period"),
        retries=args.health_retries or 0,
    )


def _run_options(args: argparse.Namespace, settings: Settings) -> specs.RunOptions:
    """The options as given; the VM's size, when not given, is the configuration's."""
    from hyper.daemon.logs import log_driver, log_limits
    from hyper.runtime.confinement import NOT_YET_HONOURED, refuse_unhonoured

    check = _healthcheck(args)
    log_driver(args.log_driver)
    log_limits(args.log_opt)
    joins = bool(args.pod) or args.network.startswith("container:")
    minimum = resources.MIN_CONTAINER_MEMORY_MIB if joins else specs.MIN_MEMORY_MIB
    options = specs.RunOptions(
        image=args.image,
        command=tuple(args.command),
        entrypoint=args.entrypoint,
        env=tuple(args.env),
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        interactive=args.interactive,
        remove=args.rm,
        memory_mib=settings.default_memory_mib
        if args.memory is None
        else specs.parse_memory(args.memory, minimum),
        cpus=settings.default_cpus if args.cpus is None else specs.parse_cpus(args.cpus, os.cpu_count() or 1),
        nano_cpus=0 if args.cpus is None else resources.parse_nano_cpus(args.cpus, os.cpu_count() or 1),
        cpuset_cpus=args.cpuset_cpus or "",
        pids_limit=max(args.pids_limit or 0, 0),
        memory_swap=_memory_swap(args),
        hostname=args.hostname,
        stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        privileged=args.privileged,
        security_opt=tuple(security_options(args.security_opt)),
        ulimits=tuple(args.ulimit),
        group_add=tuple(args.group_add),
        sysctls=tuple(args.sysctl),
        log_opts=tuple(args.log_opt),
        shm_size=0 if args.shm_size is None else parse_size(args.shm_size, "--shm-size"),
        init=args.init,
        health_test=check.test,
        health_interval=check.interval,
        health_timeout=check.timeout,
        health_start_period=check.start_period,
        health_retries=check.retries,
        mounts=storage_mounts(args),
        read_only=args.read_only,
        volumes_from=mounts.check_volumes_from(args.volumes_from),
        storage_opt=checked_storage_opt(args.storage_opt),
        network=args.network,
        pod=args.pod,
        network_aliases=tuple(args.network_alias),
        ip=args.ip,
        publish=tuple(args.publish),
        publish_all=args.publish_all,
        expose=tuple(e if "/" in e else f"{e}/tcp" for e in args.expose),
        dns=tuple(args.dns),
        dns_search=tuple(args.dns_search),
        dns_options=tuple(args.dns_option),
        extra_hosts=tuple(args.add_host),
    )
    # Checked only when given: the check loads the seccomp tables, more than the
    # rest of a thin client imports (hyperd checks again either way).
    defaults = specs.RunOptions(image="")
    if any(getattr(options, name) != getattr(defaults, name) for name in (*CONFINEMENT, *NOT_YET_HONOURED)):
        refuse_unhonoured(options)
    specs.container_resources(options, os.cpu_count() or 1)
    return options


def _memory_swap(args: argparse.Namespace) -> int:
    """--memory-swap in bytes, -1 for unlimited, 0 when not given; a size needs --memory, as in Docker."""
    if args.memory_swap is None:
        return 0
    if args.memory_swap.strip() == "-1":
        return -1
    if args.memory is None:
        raise InvalidArgument(
            "You should always set the Memory limit when using Memoryswap limit, see usage",
            hint="add --memory",
        )
    return parse_size(args.memory_swap, "--memory-swap")


def security_options(values: Sequence[str]) -> list[str]:
    """`--security-opt` as the docker CLI sends it: `seccomp=FILE` becomes the
    profile's JSON text, read here, where the file is."""
    options = []
    for value in values:
        key, sep, name = value.partition("=")
        if key != "seccomp" or not sep or name in ("unconfined", "builtin"):
            options.append(value)
            continue
        try:
            options.append(f"seccomp={Path(name).read_text()}")
        except OSError as exc:
            raise InvalidArgument(f"cannot read the seccomp profile {name}: {exc.strerror}") from exc
    return options


def checked_storage_opt(options: Sequence[str]) -> tuple[str, ...]:
    mounts.storage_size(options)
    return tuple(options)


def storage_mounts(args: argparse.Namespace) -> tuple[str, ...]:
    """-v, --mount and --tmpfs, checked, as canonical --mount strings; a relative
    -v host path (./dir, ../dir) is taken from here, as the docker CLI does."""
    volumes = [
        os.path.abspath(v.split(":", 1)[0]) + v[len(v.split(":", 1)[0]) :] if v.startswith(".") else v
        for v in args.volume
    ]
    parsed = mounts.parse_all(volumes=volumes, mounts=args.mount, tmpfs=args.tmpfs)
    return tuple(m.canonical() for m in parsed)


def client_env(items: Sequence[str], local: Mapping[str, str]) -> tuple[str, ...]:
    """`-e NAME=VALUE` as given; a bare `-e NAME` takes NAME's value here, in the
    client, as Docker does (hyperd does not look at its own environment). Unset
    here, it stays bare, which unsets NAME in the container."""
    env = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not name:
            raise InvalidArgument(f"invalid environment variable {item!r}", hint="use -e NAME=VALUE")
        env.append(f"{name}={local[name]}" if not sep and name in local else item)
    return tuple(env)


def create_in_daemon(args: argparse.Namespace, ctx: CliContext, *, start: bool) -> str:
    """`run -d` (start) and `create` (not): hyperd makes the container; its full ID."""
    from hyper.cli.client import connect_or_start

    request = daemon_request(args, ctx, start=start)
    with connect_or_start(ctx.paths, stderr=ctx.stderr) as client:
        return client.create_container(request)


def daemon_request(
    args: argparse.Namespace, ctx: CliContext, *, start: bool, check_image: bool = True
) -> ContainerCreate:
    """The container hyperd is to make of the command line; with `check_image`, the
    image pulled when missing."""
    from hyper.cli.client import ContainerCreate
    from hyper.runtime.settings import Settings

    if getattr(args, "kernel", None) is not None:
        raise InvalidArgument("--kernel cannot be combined with -d", hint="set HYPER_KERNEL for hyperd")
    restart = args.restart or "no"
    if args.rm and restart.partition(":")[0] not in ("", "no"):
        raise InvalidArgument("conflicting options: --restart and --rm", hint="choose one of them")
    options = dataclasses.replace(_run_options(args, Settings()), env=client_env(args.env, os.environ))
    request = ContainerCreate.from_run_options(
        options, name=args.name, labels=_labels(args.label), restart=restart, start=start
    )
    # A size not given is hyperd's to choose, from its configuration.
    request = dataclasses.replace(
        request,
        memory_mib=None if args.memory is None else request.memory_mib,
        cpus=None if args.cpus is None else request.cpus,
    )
    if check_image:
        ensure_image(args.image, args.pull, ctx, quiet=args.quiet, platform=args.platform)
    return request


def _labels(texts: Sequence[str]) -> dict[str, str]:
    if not texts:
        return {}
    from hyper.cli.container_commands import parse_labels

    return parse_labels(texts)


def run_detached(args: argparse.Namespace, ctx: CliContext) -> int:
    """`run -d`: hyperd creates and starts the container; print its full ID."""
    print(create_in_daemon(args, ctx, start=True), file=ctx.stdout)
    return 0


def ensure_image(
    text: str, policy: str, ctx: CliContext, *, quiet: bool, platform: str | None = None
) -> None:
    """Docker's `--pull`: fetch the image when missing (the default), always, or never.

    With `--platform`, which must be the VMs' own, a local image for another
    platform counts as missing, as in Docker.
    """
    from hyper.cli.registry_commands import pull_with_display
    from hyper.image import ImageStore
    from hyper.image.registry.platform import (
        image_platform,
        parse_platform,
        platform_matches,
        require_runnable,
    )

    wanted = parse_platform(platform) if platform else None
    if wanted is not None:
        require_runnable(wanted)
    store = ImageStore(ctx.paths.images)
    if policy != "always":
        try:
            image = store.get(text)
        except NotFound:
            if policy == "never":
                raise
        else:
            have = image_platform(image.os, image.architecture)
            if wanted is None or have is None or platform_matches(wanted, have):
                return
            if policy == "never":
                raise NotFound(f"the local image {text} is for {have}, not {wanted}", hint="pull it")
        if not quiet:
            print(f"Unable to find image '{text}' locally", file=ctx.stderr, flush=True)
    pull_with_display(store, text, ctx.stderr, quiet=quiet, platform=wanted)


def info_command(args: argparse.Namespace, ctx: CliContext) -> int:
    import subprocess

    from hyper.runtime.settings import Settings
    from hyper.vm import confine
    from hyper.vm.accel import choose_accel, probe_host
    from hyper.vm.jail import confinement_lines, jail_mode_for

    settings = Settings.from_env()
    out = ctx.stdout
    try:
        qemu = subprocess.run(
            [settings.qemu_binary, "--version"], capture_output=True, text=True, check=False
        )
        qemu_version = qemu.stdout.splitlines()[0] if qemu.stdout else qemu.stderr.strip()
    except FileNotFoundError:
        qemu_version = f"{settings.qemu_binary} not found (install qemu-system-x86)"
    kernel_line, kernel_is_pvm = _kernel_summary(settings, ctx)
    choice = choose_accel(settings.accel, probe_host(), kernel_is_pvm)
    print(f"QEMU:         {qemu_version}", file=out)
    print(f"Accelerator:  {choice.accel.value} ({choice.reason})", file=out)
    print(f"Kernel:       {kernel_line}", file=out)
    print(f"Appliance:    {_appliance_summary(ctx)}", file=out)
    print(f"State dir:    {ctx.paths.state}", file=out)
    print(f"Cache dir:    {ctx.paths.cache}", file=out)
    print(f"Runtime dir:  {ctx.paths.runtime}", file=out)
    facts = confine.facts(settings.qemu_binary)
    print(f"Confinement:  QEMU runs in a {jail_mode_for(facts).value} jail (docs/confinement.md)", file=out)
    for layer, in_effect, why in confinement_lines(facts):
        print(f"  {'yes' if in_effect else 'no ':3}  {layer}: {why}", file=out)
    from hyper.network.manager import mode_reason

    mode, why = mode_reason()
    print(f"Network:      {mode} ({why})", file=out)
    print(f"  direct runs (--direct): {_direct_summary()}", file=out)
    print(f"Pool:         {_pool_summary(ctx)}", file=out)
    return 0


def _pool_summary(ctx: CliContext) -> str:
    """hyperd's ready VMs, when a hyperd answers (`info` starts none)."""
    from hyper.cli.client import SOCKET_NAME, DaemonClient, daemon_answers
    from hyper.errors import HyperError

    socket = ctx.paths.runtime / SOCKET_NAME
    try:
        if not daemon_answers(socket):
            return "hyperd is not running (hyperd --pool N keeps N ready VMs per VM shape; docs/pool.md)"
        with DaemonClient(socket) as client:
            pool = client.pool()
    except HyperError as exc:
        return f"unknown ({exc.message})"
    if not pool.get("size"):
        return "off (hyperd --pool N, or HYPER_POOL=N for the hyperd the CLI starts; docs/pool.md)"
    return (
        f"{pool.get('size')} ready VMs per VM shape, at most {pool.get('memory_mib')} MiB of guest RAM; "
        f"{pool.get('ready')} ready now, {pool.get('writable_disks')} writable disks made ahead; "
        f"{pool.get('claimed')} runs served, {pool.get('missed')} found none"
    )


def _direct_summary() -> str:
    from hyper.network.passt import find_passt
    from hyper.network.request import NetworkConfig

    if not NetworkConfig.from_env().default_bridge:
        return "loopback only unless --network bridge is given (HYPER_BRIDGE=none)"
    if find_passt() is None:
        return "loopback only: install Debian's passt for a network"
    return "user mode, through a passt of the run's own (outbound, DNS, -p), gone with the run"


def _kernel_summary(settings: Settings, ctx: CliContext) -> tuple[str, bool]:
    from hyper.vm.kernel import kernel_from_file

    if settings.kernel is not None:
        kernel = kernel_from_file(settings.kernel, ctx.paths.kernels)
    else:
        current = ctx.paths.kernels / "debian-current"
        if not current.exists():
            return (
                "Debian's linux-image-amd64, not fetched yet (the first run fetches it)",
                settings.kernel_is_pvm,
            )
        from hyper.vm.kernel import debian_kernel

        kernel = debian_kernel(ctx.paths.kernels)
    pvm = settings.kernel_is_pvm or kernel.config_value("CONFIG_PVM_GUEST") == "y"
    return f"{kernel.release} from {kernel.origin} ({kernel.image})", pvm


def _appliance_summary(ctx: CliContext) -> str:
    built = sorted(ctx.paths.appliances.glob("appliance-*.cpio"), key=lambda p: p.stat().st_mtime)
    if not built:
        return "not built yet (the first run builds it)"
    newest = built[-1]
    return f"{newest} ({newest.stat().st_size / 1e6:.1f} MB)"
