"""A foreground run's SIGINT/SIGTERM: forwarded first, then a local tear-down that cannot hang."""

from __future__ import annotations

import asyncio
import signal

from hyper.runtime.teardown import EXIT_KILLED, ForegroundStop


class Recorder:
    def __init__(self, *, forwards: bool = True) -> None:
        self.forwarded: list[int] = []
        self.kills = 0
        self.forwards = forwards

    def forward(self, signum: int) -> bool:
        self.forwarded.append(signum)
        return self.forwards

    def kill_vm(self) -> None:
        self.kills += 1


async def _stopper(grace: float = 60.0) -> tuple[ForegroundStop, asyncio.Task[int], Recorder]:
    task: asyncio.Task[int] = asyncio.create_task(asyncio.sleep(3600, 0))
    stop = ForegroundStop(task, grace=grace)
    recorder = Recorder()
    stop.kill_vm = recorder.kill_vm
    return stop, task, recorder


def test_the_first_signal_is_the_containers_and_the_second_tears_down() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper()
        stop.attached(recorder.forward)
        stop.on_signal(signal.SIGTERM)
        assert recorder.forwarded == [signal.SIGTERM] and recorder.kills == 0 and stop.status is None
        stop.on_signal(signal.SIGTERM)
        assert stop.status == 128 + signal.SIGTERM
        assert recorder.kills == 1
        assert not task.cancelled()  # the attached run returns the status itself
        task.cancel()

    asyncio.run(scenario())


def test_a_second_sigint_exits_130() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper()
        stop.attached(recorder.forward)
        stop.on_signal(signal.SIGINT)
        stop.on_signal(signal.SIGINT)
        assert stop.status == 130
        task.cancel()

    asyncio.run(scenario())


def test_an_unheard_signal_kills_after_the_grace_period() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper(grace=0.01)
        stop.attached(recorder.forward)
        stop.on_signal(signal.SIGTERM)
        await asyncio.wait_for(stop.torn_down, 10)
        assert stop.status == EXIT_KILLED == 137
        assert recorder.kills == 1
        task.cancel()

    asyncio.run(scenario())


def test_a_container_that_exits_in_time_disarms_the_timer() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper(grace=0.01)
        stop.attached(recorder.forward)
        stop.on_signal(signal.SIGTERM)
        stop.attached(None)  # it exited
        await asyncio.sleep(0.05)
        assert stop.status is None and recorder.kills == 0
        task.cancel()

    asyncio.run(scenario())


def test_before_the_container_runs_the_first_signal_cancels_and_the_second_kills() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper()
        stop.on_signal(signal.SIGINT)
        await asyncio.sleep(0)
        assert task.cancelled() or task.cancelling()
        assert recorder.kills == 0
        stop.on_signal(signal.SIGTERM)
        assert stop.status == 143 and recorder.kills == 1

    asyncio.run(scenario())


def test_a_signal_the_container_cannot_take_cancels() -> None:
    async def scenario() -> None:
        stop, task, recorder = await _stopper()
        recorder.forwards = False  # a terminal's Ctrl-C goes in as a keystroke
        stop.attached(recorder.forward)
        stop.on_signal(signal.SIGINT)
        await asyncio.sleep(0)
        assert task.cancelled() or task.cancelling()

    asyncio.run(scenario())


def test_a_cancellation_lost_during_boot_tears_down_once_the_container_runs() -> None:
    async def scenario() -> None:
        task: asyncio.Task[int] = asyncio.create_task(asyncio.sleep(3600, 0))
        stop = ForegroundStop(task)
        recorder = Recorder()
        stop.kill_vm = recorder.kill_vm
        stop.on_signal(signal.SIGINT)  # booting: cancels the run...
        task.uncancel()  # ...which asyncio.wait_for may swallow (Python < 3.12)
        stop.attached(recorder.forward)
        assert stop.status == 130 and recorder.kills == 1
        assert recorder.forwarded == []
        task.cancel()

    asyncio.run(scenario())
