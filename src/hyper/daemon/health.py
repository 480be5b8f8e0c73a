"""Health checks as Docker runs them: a probe started in the running container
every interval, its results kept, and the container's health derived from them.

The rules are Docker's (moby's daemon/health.go): a container with a health
check starts as `starting`; a probe that exits 0 makes it `healthy` and resets
the failing streak; a failing probe (any other status, a timeout, a probe that
cannot start) adds to the streak, except while the container is still starting
within its start period, and `retries` failures in a row make it `unhealthy`.
The last five results are kept, each probe's output cut at 4096 bytes. When
the container stops, checking stops and the health is reported `unhealthy`
(Docker's choice, kept for what scripts expect); a start begins at `starting`.

The decisions are pure functions over frozen values; `HealthMonitor` is the
loop that runs probes through a callable the pod gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hyper.agent.host import ProcessChannel
from hyper.daemon.state import ContainerRecord
from hyper.errors import HyperError, InvalidArgument
from hyper.image import Healthcheck
from hyper.image.model import parse_healthcheck
from hyper.runtime import spec as specs

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MIN_DURATION = 0.001  # Docker refuses durations between 0 (unset) and 1 ms
MAX_LOG_ENTRIES = 5
MAX_OUTPUT_BYTES = 4096
DEFAULT_SHELL = ("/bin/sh", "-c")
PROBE_KINDS = ("CMD", "CMD-SHELL", "NONE")
KILLED_PROBE_SECONDS = 10.0  # how long a probe killed at its timeout may take to go


class HealthStatus(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ProbeResult:
    start: float
    end: float
    exit_code: int  # -1: the probe timed out or could not start
    output: str


@dataclass(frozen=True)
class HealthState:
    status: HealthStatus = HealthStatus.STARTING
    failing_streak: int = 0
    log: tuple[ProbeResult, ...] = ()


# -- the configuration -------------------------------------------------------------
def requested(options: specs.RunOptions) -> Healthcheck | None:
    """The health check the user asked for (None: nothing asked, the image's applies)."""
    check = Healthcheck(
        test=options.health_test,
        interval=options.health_interval,
        timeout=options.health_timeout,
        start_period=options.health_start_period,
        retries=options.health_retries,
    )
    return None if check == Healthcheck() else check


def validate(check: Healthcheck) -> Healthcheck:
    """Docker's checks at create: a known probe kind, durations unset or at least 1 ms."""
    if check.test and check.test[0] not in PROBE_KINDS:
        raise InvalidArgument(
            f"unknown health check type {check.test[0]!r}", hint="use CMD, CMD-SHELL or NONE"
        )
    if check.test[:1] == ("CMD-SHELL",) and len(check.test) != 2:
        raise InvalidArgument("a CMD-SHELL health check takes exactly one command string")
    if check.test[:1] == ("CMD",) and len(check.test) < 2:
        raise InvalidArgument("a CMD health check needs a command")
    for name in ("interval", "timeout", "start_period", "start_interval"):
        value = getattr(check, name)
        if value != 0 and not value >= MIN_DURATION:
            raise InvalidArgument(f"the health check's {name.replace('_', ' ')} must be 0 or at least 1ms")
    if check.retries < 0:
        raise InvalidArgument("the health check's retries must not be negative")
    return check


def merge(user: Healthcheck | None, image: Healthcheck | None) -> Healthcheck | None:
    """Docker's merge at create: the user's test and timings, each unset one taken from the image's."""
    if user is None:
        return image
    if image is None:
        return user
    return Healthcheck(
        test=user.test or image.test,
        interval=user.interval or image.interval,
        timeout=user.timeout or image.timeout,
        start_period=user.start_period or image.start_period,
        retries=user.retries or image.retries,
        start_interval=user.start_interval or image.start_interval,
    )


def active(check: Healthcheck | None) -> Healthcheck | None:
    """The check that runs, with Docker's defaults; None when there is none or it is NONE."""
    if check is None or not check.test or check.test[0] == "NONE":
        return None
    return dataclasses.replace(
        check,
        interval=check.interval or DEFAULT_INTERVAL,
        timeout=check.timeout or DEFAULT_TIMEOUT,
        retries=check.retries or DEFAULT_RETRIES,
    )


def probe_command(check: Healthcheck, shell: tuple[str, ...] = DEFAULT_SHELL) -> tuple[str, ...]:
    if check.test[0] == "CMD-SHELL":
        return (*shell, check.test[1])
    return check.test[1:]


# -- the state ---------------------------------------------------------------------
def record_probe(
    state: HealthState, result: ProbeResult, check: Healthcheck, started_at: float
) -> HealthState:
    """The health after `result`, for a container started at `started_at`."""
    log = (*state.log, result)[-MAX_LOG_ENTRIES:]
    if result.exit_code == 0:
        return HealthState(HealthStatus.HEALTHY, 0, log)
    if state.status is HealthStatus.STARTING and result.start - started_at < check.start_period:
        return HealthState(state.status, state.failing_streak, log)  # still starting: not counted
    streak = state.failing_streak + 1
    status = HealthStatus.UNHEALTHY if streak >= check.retries else state.status
    return HealthState(status, streak, log)


def next_delay(state: HealthState, check: Healthcheck, started_at: float, now: float) -> float:
    """Seconds until the next probe: the start interval (when set) within the start period."""
    starting = state.status is HealthStatus.STARTING and now - started_at < check.start_period
    return check.start_interval if starting and check.start_interval else check.interval


def cut_output(data: bytes) -> str:
    return data[:MAX_OUTPUT_BYTES].decode(errors="replace")


def to_record(state: HealthState) -> dict[str, Any]:
    """The state as the container record keeps it (JSON)."""
    return {
        "status": state.status.value,
        "failing_streak": state.failing_streak,
        "log": [dataclasses.asdict(result) for result in state.log],
    }


def from_record(doc: dict[str, Any] | None) -> HealthState | None:
    if not doc:
        return None
    return HealthState(
        HealthStatus(doc["status"]),
        int(doc.get("failing_streak", 0)),
        tuple(ProbeResult(**entry) for entry in doc.get("log", [])),
    )


# -- running -----------------------------------------------------------------------
class ProbeTarget(Protocol):
    """What a probe needs of its container (a Pod)."""

    async def exec_process(self, process: specs.ProcessSpec, rows: int, cols: int) -> ProcessChannel: ...

    def consumed(self) -> None: ...

    async def signal_process(self, stream: int, signum: int) -> None: ...


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (`30s`, `1.5s`, `500ms`, `1m0s`), as Docker's messages show it."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes < 1:
        return f"{rest:g}s"
    hours, minutes = divmod(int(minutes), 60)
    text = f"{minutes}m{rest:g}s"
    return f"{hours}h{text}" if hours else text


async def run_probe(target: ProbeTarget, process: specs.ProcessSpec, timeout: float) -> ProbeResult:
    """Run one probe in the container: its status and the start of its output.

    A probe that cannot start, or that outlives `timeout` (it is killed), is a
    failure with status -1, as in Docker.
    """
    start = time.time()
    try:
        channel = await target.exec_process(process, 24, 80)
    except HyperError as exc:
        return ProbeResult(start, time.time(), -1, exc.message)
    output = bytearray()

    async def finish() -> int:
        # Read to the end whatever the size: the agent's reader waits on this queue.
        while (item := await channel.output.get()) is not None:
            target.consumed()
            if len(output) < MAX_OUTPUT_BYTES:
                output.extend(item[1])
        return await channel.exit_status

    finishing = asyncio.ensure_future(finish())
    try:
        status = await asyncio.wait_for(asyncio.shield(finishing), timeout)
    except TimeoutError:
        with contextlib.suppress(HyperError):
            await target.signal_process(channel.stream, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(finishing, KILLED_PROBE_SECONDS)
        return ProbeResult(start, time.time(), -1, f"Health check exceeded timeout ({go_duration(timeout)})")
    except HyperError as exc:  # the agent went away under the probe
        return ProbeResult(start, time.time(), -1, exc.message)
    finally:
        if not finishing.done():
            finishing.cancel()
    return ProbeResult(start, time.time(), status, cut_output(bytes(output)))


Probe = Callable[[tuple[str, ...], float], Awaitable[ProbeResult]]
Changed = Callable[[HealthState, bool], None]  # the new state, and whether its status changed


class HealthMonitor:
    """Runs a container's probes until stopped (the container stopped)."""

    def __init__(
        self, check: Healthcheck, probe: Probe, changed: Changed, started_at: float, shell: tuple[str, ...]
    ) -> None:
        self.check = check
        self.state = HealthState()
        self._probe = probe
        self._changed = changed
        self._started_at = started_at
        self._command = probe_command(check, shell)
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:
            await asyncio.sleep(next_delay(self.state, self.check, self._started_at, time.time()))
            result = await self._probe(self._command, self.check.timeout)
            if self.stopped:
                return
            new = record_probe(self.state, result, self.check, self._started_at)
            changed = new.status is not self.state.status
            self.state = new
            self._changed(new, changed)


class HealthChecks:
    """A container's health checks: begun with each run of it (or its adoption by a
    new hyperd), ended with the run; their state saved with the container's record."""

    def __init__(
        self,
        target: ProbeTarget,
        save: Callable[[dict[str, Any] | None], None],
        announce: Callable[[str], None],
    ) -> None:
        self._target = target
        self._save = save  # the state, into the record
        self._announce = announce  # an event's action
        self._task: asyncio.Task[None] | None = None
        self._monitor: HealthMonitor | None = None
        self._state: HealthState | None = None

    def start(self, record: ContainerRecord, spawn: Callable[[Any], asyncio.Task[None]]) -> None:
        """Check `record`'s container from now on, if it has a health check; the
        loop runs as one of its owner's tasks (`spawn`)."""
        check = configured(record)
        if check is None:
            return
        process = record.process or {}
        env, cwd, user = tuple(process.get("env", ())), process.get("cwd") or "/", process.get("user") or "0"

        async def probe(command: tuple[str, ...], timeout: float) -> ProbeResult:
            spec = specs.ProcessSpec(args=command, env=env, cwd=cwd, user=user, tty=False, stdin=False)
            return await run_probe(self._target, spec, timeout)

        monitor = HealthMonitor(
            check,
            probe,
            self._changed,
            record.started_at or time.time(),
            tuple(record.shell or DEFAULT_SHELL),
        )
        # An adopted container keeps the health it had; a new run starts at `starting`.
        monitor.state = from_record(record.health) or HealthState()
        self._state = monitor.state
        self._save(to_record(monitor.state))
        self._monitor = monitor
        self._task = spawn(monitor.run())

    def _changed(self, state: HealthState, status_changed: bool) -> None:
        if self._monitor is None:
            return  # stopped meanwhile: the run is over
        self._state = state
        self._save(to_record(state))
        if status_changed:
            self._announce(f"health_status: {state.status.value}")

    async def stop(self) -> None:
        """The run ended: no more probes, and (Docker's choice, which scripts see)
        the health of a stopped container reads unhealthy."""
        task, self._task = self._task, None
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stopped = True
        # Python 3.11's wait_for can swallow a cancel that meets a probe ending (a
        # probe every fraction of a second meets it often): cancel until it ends.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if self._state is not None:
            self._save(to_record(dataclasses.replace(self._state, status=HealthStatus.UNHEALTHY)))
            self._state = None


def configured(record: ContainerRecord) -> Healthcheck | None:
    """The health check a container's record asks for, with Docker's defaults (None: none, or NONE)."""
    return active(parse_healthcheck(record.healthcheck, f"container {record.name}"))
