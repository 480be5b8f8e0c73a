"""User-mode networking: one passt per pod (a hyperd without root, and a direct run).

Without root there is no bridge, tap or nftables, so each pod's NIC is
connected to its own passt (Debian's `passt`, the user-mode network of
podman and libvirt): a process in the host's network namespace that turns
the guest's Ethernet frames into ordinary sockets of the host (outbound
connections, UDP, ICMP echo) and listens on the published host ports for
the guest. QEMU's own user-mode network (`-netdev user`, slirp) is not an
option: QEMU runs in an empty network namespace (docs/confinement.md), and
slirp would make QEMU itself reach out to the world.

How one pod's passt is tied to its VM:
- hyperd makes a socket pair; passt gets one end (`--fd`) and QEMU the other
  (`-netdev stream,addr.type=fd`), so QEMU's network namespace stays empty.
  With `--fd` passt serves that one connection and quits when it closes: when
  QEMU exits, however it exits, its passt follows.
- passt daemonizes (it outlives hyperd, as QEMU does) after it has bound the
  published ports: a port it cannot bind fails the start, before the VM boots.
  Its pid file and log are `RUNTIME/passt/ID.pid|log`; a later hyperd finds a
  running pod's passt again by that pid file on its command line, and kills
  any passt whose pod no longer runs (`reap`). A passt started as root (a
  direct run's) becomes `nobody` before it opens those files, so it gets
  none and is known by the socket it holds instead (PasstProcess).
- It is started with an empty environment, no descriptor but the socket and
  /dev/null, in a session of its own; passt then confines itself (own user,
  mount, IPC, UTS and PID namespaces, an empty root, no capabilities,
  no_new_privs, a seccomp filter, not dumpable), which tests read from /proc.

What the guest gets is chosen by hyperd (`--address/--netmask/--gateway`) and
configured by the agent, never by passt's DHCP (turned off). DNS queries sent
to the gateway go to the host's first resolver (`--dns-forward`), so a host
resolver on 127.0.0.53 works. `--no-map-gw`: the gateway is not a way to the
host's loopback services (Docker's rootless default, `--disable-host-loopback`).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from hyper.errors import AlreadyExists, FailedPrecondition, Unavailable
from hyper.network.model import PortSpec

PASST_BINARY = "passt"
# passt's largest frame (65535 minus an Ethernet header, in 4-byte words): a
# stream socket has no wire, so the guest sends big segments instead of
# computing checksums for 1500-byte ones.
PASST_MTU = 65520
# The MAC of passt's side (the gateway's, to the guest). Given, because passt
# would otherwise take it from the host's default-route interface, and refuses
# to start on a host that has none.
PASST_MAC = "9a:55:9a:55:9a:55"
START_TIMEOUT = 30.0
EXIT_WAIT_SECONDS = 10.0
_BIND_FAILURE = re.compile(r"Failed to bind any port for '-([tu]) ([^']*)'")
_NAME = re.compile(r"^[0-9a-f]{12}$")


def find_passt() -> str | None:
    return shutil.which(os.environ.get("HYPER_PASST", PASST_BINARY))


def port_option(port: PortSpec) -> list[str]:
    """passt's forward of one published port: `-t [ADDR/]HOST:GUEST` (or -u)."""
    address = f"{port.host_ip}/" if port.host_ip else ""
    flag = "-t" if port.protocol == "tcp" else "-u"
    return [flag, f"{address}{port.host_port}:{port.container_port}"]


def has_default_route(proc_net_route: str) -> bool:
    """Whether /proc/net/route's table has an IPv4 default route."""
    for line in proc_net_route.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            return True
    return False


@dataclass(frozen=True)
class PasstPlan:
    """What one pod's passt serves: the guest's address and gateway, the
    published ports (host ports chosen by now), and where its files go."""

    address: IPv4Interface
    gateway: IPv4Address
    ports: tuple[PortSpec, ...]
    # Where passt writes its pid and log: None for a passt started as root,
    # which becomes `nobody` before it opens them (see PasstProcess).
    pid_file: Path | None
    log_file: Path | None
    default_route: bool = True

    def command(self, binary: str, fd: int) -> list[str]:
        """passt's command line (pure)."""
        command = [
            binary,
            "--fd",
            str(fd),
            *(["--pid", str(self.pid_file)] if self.pid_file is not None else []),
            *(["--log-file", str(self.log_file)] if self.log_file is not None else []),
            "--quiet",
            "--ipv4-only",
            "--address",
            str(self.address.ip),
            "--netmask",
            str(self.address.network.prefixlen),
            "--gateway",
            str(self.gateway),
            "--mac-addr",
            PASST_MAC,
            "--mtu",
            str(PASST_MTU),
            "--dns-forward",
            str(self.gateway),
            "--no-map-gw",
            "--no-dhcp",
            "--no-dhcpv6",
            "--no-ndp",
            "--no-ra",
        ]
        if not self.default_route:
            # passt looks for an outbound interface to copy settings from; with
            # every setting given, loopback does (the pod then has published
            # ports, and no way out, like the host itself).
            command += ["--interface", "lo"]
        for port in self.ports:
            command += port_option(port)
        return command


def explain_failure(stderr: str, status: int) -> Exception:
    """passt's refusal to start, as one line: a taken port is named."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "syslog" not in line]
    bound = _BIND_FAILURE.search(stderr)
    if bound is not None:
        protocol = "tcp" if bound.group(1) == "t" else "udp"
        where, _, _ = bound.group(2).partition(":")
        where = where.replace("/", ":") if "/" in where else f"0.0.0.0:{where}"
        return AlreadyExists(
            f"the host port {where}/{protocol} is already in use", hint="choose another host port with -p"
        )
    detail = lines[-1] if lines else f"exit status {status}"
    return Unavailable(f"passt (user-mode networking) did not start: {detail}")


@dataclass
class PasstProcess:
    """One pod's running passt: its pid, known by the pid file on its command
    line, or (passt started as root, which writes no file) by its end of the
    socket pair, `socket:[INODE]` among its descriptors."""

    pid: int
    pid_file: Path | None
    peer: str = ""

    @classmethod
    def start(cls, plan: PasstPlan) -> tuple[PasstProcess, int]:
        """Start passt for `plan`; returns it and QEMU's end of its socket
        (close-on-exec, the caller's to close). Blocking."""
        binary = find_passt()
        if binary is None:
            raise FailedPrecondition(
                "passt is not installed: user-mode networking needs it",
                hint="install Debian's passt, or run containers with --network none",
            )
        for stale in (plan.pid_file, plan.log_file):
            if stale is not None:
                stale.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        peer = f"socket:[{os.fstat(theirs.fileno()).st_ino}]"
        try:
            with theirs:
                launcher = subprocess.run(
                    plan.command(binary, theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=[theirs.fileno()],
                    env={},
                    cwd="/",
                    start_new_session=True,
                    timeout=START_TIMEOUT,
                    check=False,
                )
            # passt forked its daemon and exited once the ports were bound.
            if launcher.returncode != 0:
                raise explain_failure(launcher.stderr.decode(errors="replace"), launcher.returncode)
            process = cls(_started_pid(plan.pid_file, peer), plan.pid_file, peer)
            fd = ours.detach()
        except subprocess.TimeoutExpired as exc:
            ours.close()
            raise Unavailable(f"passt did not start in {START_TIMEOUT:.0f}s") from exc
        except BaseException:
            ours.close()  # a passt that did start quits when its peer closes
            raise
        return process, fd

    def alive(self) -> bool:
        """Whether this pid is still this passt."""
        if self.pid_file is None:
            return self.peer in _descriptors(self.pid)
        return _names_pid_file(self.pid, self.pid_file)

    def stop(self) -> None:
        """Kill passt (it quits by itself when QEMU closes its end; this makes
        sure) and remove its files. Idempotent; blocking."""
        if self.alive():
            _kill_and_wait(self.pid)
        if self.pid_file is None:
            return
        for path in (self.pid_file, self.pid_file.with_suffix(".log")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _started_pid(pid_file: Path | None, peer: str) -> int:
    """The pid of the passt daemon just started: from its pid file, or the
    process holding its end of the socket pair (root reads every /proc/PID/fd)."""
    if pid_file is not None:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise Unavailable(f"passt started but left no pid in {pid_file}") from exc
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and peer in _descriptors(int(entry)):
            return int(entry)
    raise Unavailable("passt started but no process holds its socket")


def _descriptors(pid: int) -> set[str]:
    """What the open descriptors of `pid` point to (empty when it is gone)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    targets = set()
    for name in names:
        with contextlib.suppress(OSError):
            targets.add(os.readlink(f"/proc/{pid}/fd/{name}"))
    return targets


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _names_pid_file(pid: int, pid_file: Path) -> bool:
    words = _cmdline(pid)
    return bool(words) and os.path.basename(words[0]).startswith("passt") and str(pid_file) in words


def _kill_and_wait(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        select.select([pidfd], [], [], EXIT_WAIT_SECONDS)
    finally:
        os.close(pidfd)


def passt_processes(directory: Path) -> dict[str, int]:
    """{pod name: pid} of the passt processes whose pid file is in `directory`."""
    marker = f"{directory}/"
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        words = _cmdline(int(entry))
        if not words or not os.path.basename(words[0]).startswith("passt"):
            continue
        for word in words:
            if word.startswith(marker) and word.endswith(".pid"):
                name = word[len(marker) : -len(".pid")]
                if _NAME.match(name):
                    found[name] = int(entry)
                break
    return found


def reap(directory: Path, keep: Iterable[str]) -> list[str]:
    """Kill the passt processes of `directory` whose pod is not in `keep`, and
    remove the files of every pod not kept. Returns the names killed. Blocking."""
    kept = set(keep)
    killed = []
    for name, pid in sorted(passt_processes(directory).items()):
        if name not in kept:
            _kill_and_wait(pid)
            killed.append(name)
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if entry.stem not in kept:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
    return killed
