"""Waiting for a VM's agent, and explaining why a VM did not come up.

Shared by `hyper run` and the template builder: a panic, a hang or an early
QEMU exit becomes one error that names the cause and the console's last word.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from hyper.agent.host import AgentClient
from hyper.errors import DeadlineExceeded
from hyper.vm.qemu import QemuDriver, VmStartError, console_tail


def _explain_boot_failure(vm: QemuDriver, what: str) -> VmStartError:
    tail = console_tail(vm.spec.console_log)
    panic = next((line for line in tail.splitlines() if "Kernel panic" in line), None)
    if panic:
        return vm.start_error(
            f"{what}: the guest kernel panicked: {panic.split('] ', 1)[-1].strip()}",
            hint="check the kernel (--kernel, HYPER_KERNEL) and HYPER_KERNEL_PARAMS",
        )
    last = [line for line in tail.splitlines() if line.strip()][-1:]
    detail = f" (last console line: {last[0].strip()[:200]})" if last else ""
    return vm.start_error(f"{what}{detail}", hint="set HYPER_CONSOLE_LOG_DIR=DIR to keep the console log")


async def boot_agent(vm: QemuDriver, timeout: float, *, auto_ack: bool = True) -> AgentClient:
    """Connect to the agent and wait for its hello, failing fast if QEMU exits first.

    A VM resumed from a template is reseeded first: the host's clock and
    randomness, then the agent executes itself again (fresh AT_RANDOM, address
    layout and hash seed, none of them the template's) and is greeted anew.
    """
    agent = await _greet(vm, timeout, auto_ack=auto_ack)
    if vm.spec.incoming_state is None:
        return agent
    try:
        await agent.request("reseed", time_ns=time.time_ns(), entropy=secrets.token_hex(64))
        resume = agent.received_offset
    finally:
        await agent.close()
    return await _greet(vm, timeout, auto_ack=auto_ack, resume=resume)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _greet(vm: QemuDriver, timeout: float, *, auto_ack: bool, resume: int | None = None) -> AgentClient:
    agent = await AgentClient.connect(vm.spec.agent_socket, 10, auto_ack=auto_ack)
    hello = asyncio.create_task(agent.hello(timeout, resume=resume))
    exited = asyncio.create_task(vm.wait())
    try:
        await asyncio.wait({hello, exited}, return_when=asyncio.FIRST_COMPLETED)
        if hello.done() and hello.exception() is None:
            return agent
        if not hello.done():
            hello.cancel()
            raise _explain_boot_failure(vm, "the VM stopped before its agent answered")
        error = hello.exception()
        if isinstance(error, DeadlineExceeded):
            raise _explain_boot_failure(vm, f"the guest did not answer within {timeout:.0f}s") from error
        raise _explain_boot_failure(vm, f"the guest agent failed: {error}") from error
    except BaseException:
        await agent.close()
        raise
    finally:
        # Cancelled meanwhile (the run is stopping), the hello must not outlive
        # the agent, nor its failure go unseen ("Task exception was never
        # retrieved"): before Python 3.12 its wait_for may swallow the cancel.
        hello.cancel()
        hello.add_done_callback(_retrieve)
        exited.cancel()
