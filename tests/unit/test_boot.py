"""hyper.runtime.boot: a boot cancelled just as the guest hangs up leaves no
task to fail unseen ("Task exception was never retrieved" on a Ctrl-C'd run)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hyper.runtime.boot import boot_agent
from hyper.vm.qemu import QemuDriver


@dataclass(frozen=True)
class _Spec:
    agent_socket: Path
    incoming_state: Path | None = None


class _Vm:
    """A VM whose QEMU never exits (its agent socket is the test's)."""

    def __init__(self, socket: Path) -> None:
        self.spec = _Spec(socket)

    async def wait(self, timeout: float | None = None) -> int | None:
        await asyncio.Event().wait()
        return None


def _problems_when_cancelled_after(steps: int) -> list[str]:
    """Boot, let the guest hang up on the hello, and cancel the boot `steps` loop
    turns later; what the loop's exception handler was told."""
    problems: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: problems.append(context))
        hung_up = asyncio.Event()

        async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # the hello's first byte
            writer.close()
            hung_up.set()

        with tempfile.TemporaryDirectory() as scratch:
            socket = Path(scratch) / "agent.sock"
            async with await asyncio.start_unix_server(guest, str(socket)):
                boot = asyncio.create_task(boot_agent(cast(QemuDriver, _Vm(socket)), 60))
                await hung_up.wait()
                for _ in range(steps):
                    await asyncio.sleep(0)
                boot.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await boot
                for _ in range(20):  # whatever was left behind runs to its end
                    await asyncio.sleep(0)
                gc.collect()

    asyncio.run(scenario())
    gc.collect()
    return [f"{p.get('message')}: {p.get('future')!r}"[:300] for p in problems]


def test_cancelling_a_boot_as_the_guest_hangs_up_leaves_no_failing_task() -> None:
    # Every interleaving of the cancellation with the hang-up, turn by turn.
    for steps in range(12):
        assert _problems_when_cancelled_after(steps) == [], steps
