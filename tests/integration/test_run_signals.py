"""A direct `hyper run` stopped by a signal while its QEMU still waits for the
VM template's state (`-incoming defer`) leaves no QEMU behind.

A whole test run killed at once (`pkill -f pytest; pkill -f hyper`) was once
seen to leave such a QEMU, reparented to PID 1. These tests hold the run in
that window deterministically, with job control instead of timing:

the CLI is stopped (SIGSTOP) while its jailer runs, so QEMU executes and
waits with `-incoming defer` while nothing can send it `migrate-incoming`.
(A case that also stopped QEMU, so that the CLI waited on a QMP greeting that
could not come, was removed: a SIGTERM then could go unheard until the QMP
wait gave up, the run fell back to a boot and discarded the shared template;
that race is not fixed yet.)

Then the CLI gets SIGTERM or SIGINT (it must kill QEMU and remove its files)
or SIGKILL (the kernel must kill QEMU: the jailer set a parent-death signal).
Every wait is for a condition (a pidfd's exit, a process appearing), with a
generous deadline for a loaded machine under TCG.

hyperd's VMs are not the CLI's children: the jailer forks QEMU off and reports
its pid. The last test cancels such a start (a pool VM's, resumed from the
template) once QEMU is up but before the driver has read that report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv

DEADLINE = 180.0  # seconds, for anything a loaded TCG machine does
T = TypeVar("T")


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_qemu(argv: list[bytes]) -> bool:
    return bool(argv) and b"qemu-system" in os.path.basename(argv[0])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _wait_until(what: str, probe: Callable[[], T | None], cli: subprocess.Popen[bytes]) -> T:
    """Poll `probe` until it answers, failing if the CLI exits first or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        if cli.poll() is not None:
            _, err = cli.communicate()
            pytest.fail(f"hyper run exited ({cli.returncode}) before {what}: {err.decode(errors='replace')}")
        time.sleep(0.002)
    pytest.fail(f"no {what} within {DEADLINE:.0f}s")


def _template_state(qemu_argv: list[bytes]) -> Path:
    """The template state file of a QEMU resuming from one (its RAM file's neighbour)."""
    for word in qemu_argv:
        for part in word.decode(errors="replace").split(","):
            if part.startswith("mem-path=") and "/templates/" in part:
                return Path(part.removeprefix("mem-path=")).with_name("state")
    pytest.fail(f"QEMU does not resume a template: {b' '.join(qemu_argv)!r}")


def _holds(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


@dataclass
class HeldRun:
    cli: subprocess.Popen[bytes]
    qemu: int
    qemu_pidfd: int
    template_state: Path

    def qemu_exited(self) -> bool:
        """Wait (up to the deadline) for QEMU's exit; whether it exited."""
        readable, _, _ = select.select([self.qemu_pidfd], [], [], DEADLINE)
        return bool(readable)


@contextlib.contextmanager
def run_held_at_incoming(hyper_env: HyperEnv) -> Iterator[HeldRun]:
    """A direct `hyper run --rm` whose CLI is stopped while QEMU, just executed by
    the jailer, waits with `-incoming defer`; the CLI is resumed and reaped after."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "hyper.cli.main", "run", "--rm", BUSYBOX, "sleep", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=hyper_env.environ(),
    )
    pidfd = -1
    try:

        def jailer() -> int | None:
            for child in _children(cli.pid):
                argv = _cmdline(child)
                if any(word.endswith(b"jailer.py") for word in argv):
                    return child
                if _is_qemu(argv):
                    pytest.fail("QEMU executed before the CLI could be held: the window was missed")
            return None

        child = _wait_until("a jailer for the VM", jailer, cli)
        os.kill(cli.pid, signal.SIGSTOP)
        # The jailer confines itself and becomes QEMU; the CLI sleeps meanwhile.
        _wait_until("QEMU", lambda: child if _is_qemu(_cmdline(child)) else None, cli)
        pidfd = os.pidfd_open(child)
        argv = _cmdline(child)
        assert b"-incoming" in argv and b"defer" in argv, argv
        state = _template_state(argv)
        # The CLI is stopped before it could pass the template's state: QEMU waits for it.
        assert not _holds(child, state)
        yield HeldRun(cli, child, pidfd, state)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(cli.pid, signal.SIGCONT)
        if cli.poll() is None:
            try:
                cli.communicate(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.communicate()
        if pidfd >= 0:
            os.close(pidfd)


def _assert_cleaned(hyper_env: HyperEnv) -> None:
    assert hyper_env.qemu_processes() == []
    assert list((hyper_env.state / "containers").iterdir()) == []
    assert hyper_env.runtime_leftovers() == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_qemu_waits_for_the_template_state(hyper_env: HyperEnv, signum: signal.Signals) -> None:
    with run_held_at_incoming(hyper_env) as held:
        os.kill(held.cli.pid, signum)
        os.kill(held.cli.pid, signal.SIGCONT)
        _, err = held.cli.communicate(timeout=DEADLINE)
        assert held.cli.returncode == 130, err
        assert held.qemu_exited(), f"QEMU {held.qemu} outlived hyper run"
    _assert_cleaned(hyper_env)


def test_sigterm_to_the_cli_and_its_qemu_at_once(hyper_env: HyperEnv) -> None:
    """`pkill -f hyper` signals QEMU too (its command line names Hyper's paths)."""
    with run_held_at_incoming(hyper_env) as held:
        os.kill(held.cli.pid, signal.SIGTERM)
        os.kill(held.qemu, signal.SIGTERM)
        assert held.qemu_exited(), f"QEMU {held.qemu} ignored SIGTERM while waiting for its state"
        os.kill(held.cli.pid, signal.SIGCONT)
        _, err = held.cli.communicate(timeout=DEADLINE)
        assert held.cli.returncode == 130, err
    _assert_cleaned(hyper_env)


def test_sigkill_of_the_cli_kills_its_qemu(hyper_env: HyperEnv) -> None:
    """Nothing in the CLI runs on SIGKILL: QEMU's parent-death signal must end it.
    (The run's directory and disk stay: no process was left to remove them.)"""
    with run_held_at_incoming(hyper_env) as held:
        os.kill(held.cli.pid, signal.SIGKILL)
        held.cli.communicate(timeout=DEADLINE)
        assert held.cli.returncode == -signal.SIGKILL
        assert held.qemu_exited(), f"QEMU {held.qemu} outlived a killed hyper run"
    assert hyper_env.qemu_processes() == []


def _qmp_status(runtime: Path) -> str | None:
    """The run state a QEMU under `runtime` reports over QMP, if one answers: its
    main loop runs then, every device is made (the connection is closed after)."""
    for path in runtime.glob("*/qmp.sock"):
        with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as client:
            client.settimeout(DEADLINE)
            client.connect(str(path))
            replies = client.makefile("rb")
            json.loads(replies.readline())  # the greeting
            for command in ("qmp_capabilities", "query-status"):
                client.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while "return" not in (reply := json.loads(replies.readline())):
                    pass  # an event
            return str(reply["return"]["status"])
    return None


def test_a_detached_vm_cancelled_before_its_pid_is_known_is_killed(
    hyper_env: HyperEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hyperd's VMs are forked off by the jailer, which reports QEMU's pid and exits.
    A start cancelled before that report (hyperd stopping while its pool fills) must
    still kill that QEMU, a pool VM waiting in `-incoming defer`, or it runs on with
    PID 1 as its parent. As root the VM's cgroup is killed at release too; hyperd
    run by another user has none, so that safety net is taken away here (and the
    cgroups and id leases released after) to see what the driver does alone."""
    from hyper.paths import default_paths
    from hyper.runtime.pool import PoolConfig, VmPool
    from hyper.runtime.run import ContainerRun, prepare_vm_inputs
    from hyper.runtime.settings import Settings
    from hyper.runtime.spec import RunOptions
    from hyper.vm import confine
    from hyper.vm.jail import JailSpec

    released: list[JailSpec | None] = []
    real_release = confine.release
    monkeypatch.setattr(confine, "release", released.append)
    environ = hyper_env.environ()
    paths, settings = default_paths(environ), Settings.from_env(environ)

    async def attempt() -> None:
        """Start a pool VM; cancel it once QEMU runs, before the driver heard its pid."""
        run = ContainerRun(RunOptions(image=""), paths, settings, detached=True)
        shape = run.vm_shape(await prepare_vm_inputs(paths, settings, None))
        pool = VmPool(paths, settings, PoolConfig())
        start = asyncio.ensure_future(pool._start(shape))  # what hyperd's pool fills with

        def jailer() -> int | None:
            return next((c for c in _children(os.getpid()) if b"jailer.py" in b" ".join(_cmdline(c))), None)

        deadline = time.monotonic() + DEADLINE
        while jailer() is None and not start.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        # Hold the event loop (blocking it on purpose) until QEMU is up: the jailer
        # has reported and exited, but the driver has not heard it. Cancel then.
        while _qmp_status(hyper_env.runtime) != "inmigrate":
            if time.monotonic() > deadline:
                pytest.fail("no QEMU started for the pool")
            time.sleep(0.01)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            ready = await start
            await ready.discard()
            pytest.fail("the pool's start ended before it saw its cancellation")

    try:
        asyncio.run(attempt())
        deadline = time.monotonic() + DEADLINE
        while hyper_env.qemu_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hyper_env.qemu_processes() == [], "a cancelled detached VM's QEMU runs on"
    finally:
        for jail in released:
            real_release(jail)
