"""A direct `hyper run` stopped by a signal while its QEMU still waits for the
VM template's state (`-incoming defer`) leaves no QEMU behind.

A whole test run killed at once (`pkill -f pytest; pkill -f hyper`) was once
seen to leave such a QEMU, reparented to PID 1. These tests hold the run in
that window deterministically, with job control instead of timing:

- the CLI is stopped (SIGSTOP) while its jailer runs, so QEMU executes and
  waits with `-incoming defer` while nothing can send it `migrate-incoming`;
- or QEMU itself is stopped once it runs, so the CLI waits on a QMP greeting
  that cannot come (QMP is the CLI's only way to load the template).

Then the CLI gets SIGTERM or SIGINT (it must kill QEMU and remove its files)
or SIGKILL (the kernel must kill QEMU: the jailer set a parent-death signal).
Every wait is for a condition (a pidfd's exit, a process appearing), with a
generous deadline for a loaded machine under TCG.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
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


def test_signal_while_qmp_does_not_answer(hyper_env: HyperEnv) -> None:
    """QEMU stopped before its QMP greeting: the CLI, waiting on it, is told to stop."""
    with run_held_at_incoming(hyper_env) as held:
        os.kill(held.qemu, signal.SIGSTOP)
        os.kill(held.cli.pid, signal.SIGCONT)
        # The CLI goes on to connect to QMP, which cannot answer: QEMU still has no state.
        os.kill(held.cli.pid, signal.SIGTERM)
        _, err = held.cli.communicate(timeout=DEADLINE)
        assert held.cli.returncode == 130, err
        assert held.qemu_exited(), f"QEMU {held.qemu} outlived hyper run"
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
