"""Health checks' rules (hyper.daemon.health) and the record a create makes
(hyper.daemon.records): Docker's merges and states, as pure functions."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from hyper.agent.host import ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.api.docker import convert
from hyper.daemon import health
from hyper.daemon.health import HealthState, HealthStatus, ProbeResult
from hyper.daemon.records import new_record
from hyper.daemon.requests import CreateRequest
from hyper.daemon.state import valid_name
from hyper.errors import InvalidArgument
from hyper.image import Healthcheck, Image, ImageConfig
from hyper.runtime import spec as specs

CHECK = Healthcheck(test=("CMD", "true"), interval=1.0, timeout=1.0, start_period=10.0, retries=3)


def result(start: float, code: int, output: str = "") -> ProbeResult:
    return ProbeResult(start, start + 0.1, code, output)


def test_merge_takes_each_unset_part_from_the_image() -> None:
    image = Healthcheck(
        test=("CMD-SHELL", "curl -f localhost"), interval=5, timeout=2, retries=4, start_interval=1
    )
    assert health.merge(None, image) == image
    assert health.merge(Healthcheck(interval=30), image) == dataclasses.replace(image, interval=30)
    user = Healthcheck(test=("CMD", "true"), retries=1)
    assert health.merge(user, image) == Healthcheck(("CMD", "true"), 5, 2, 0, 1, 1)
    assert health.merge(user, None) == user
    assert health.active(health.merge(Healthcheck(test=("NONE",)), image)) is None  # --no-healthcheck


def test_active_applies_dockers_defaults() -> None:
    assert health.active(None) is None and health.active(Healthcheck()) is None
    check = health.active(Healthcheck(test=("CMD", "true")))
    assert check is not None
    assert (check.interval, check.timeout, check.retries, check.start_period) == (30.0, 30.0, 3, 0.0)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (Healthcheck(test=("SHELL", "x")), "unknown health check type"),
        (Healthcheck(test=("CMD-SHELL", "a", "b")), "exactly one command"),
        (Healthcheck(test=("CMD",)), "needs a command"),
        (Healthcheck(test=("CMD", "true"), interval=0.0005), "at least 1ms"),
        (Healthcheck(test=("CMD", "true"), retries=-1), "negative"),
    ],
)
def test_validate_refuses_what_docker_refuses(check: Healthcheck, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        health.validate(check)


def test_probe_command_runs_cmd_shell_in_the_shell() -> None:
    assert health.probe_command(Healthcheck(test=("CMD-SHELL", "x && y"))) == ("/bin/sh", "-c", "x && y")
    assert health.probe_command(Healthcheck(test=("CMD-SHELL", "x")), ("bash", "-ec")) == ("bash", "-ec", "x")
    assert health.probe_command(Healthcheck(test=("CMD", "a", "b"))) == ("a", "b")


def test_failures_in_the_start_period_do_not_count_until_a_success() -> None:
    started = 1000.0
    state = HealthState()
    for offset in (1, 2, 3, 4):
        state = health.record_probe(state, result(started + offset, 1), CHECK, started)
    assert (state.status, state.failing_streak) == (HealthStatus.STARTING, 0)
    assert len(state.log) == 4
    state = health.record_probe(state, result(started + 5, 0), CHECK, started)
    assert (state.status, state.failing_streak) == (HealthStatus.HEALTHY, 0)
    # Once healthy, failures count even within the start period.
    for offset, streak in ((6, 1), (7, 2)):
        state = health.record_probe(state, result(started + offset, 1), CHECK, started)
        assert (state.status, state.failing_streak) == (HealthStatus.HEALTHY, streak)
    state = health.record_probe(state, result(started + 8, -1, "timed out"), CHECK, started)
    assert (state.status, state.failing_streak) == (HealthStatus.UNHEALTHY, 3)
    assert [r.exit_code for r in state.log] == [1, 0, 1, 1, -1]  # the last five
    assert state.log[-1].output == "timed out"
    state = health.record_probe(state, result(started + 9, 0), CHECK, started)
    assert (state.status, state.failing_streak) == (HealthStatus.HEALTHY, 0)


def test_failures_after_the_start_period_count_from_the_start() -> None:
    check = dataclasses.replace(CHECK, start_period=0.0, retries=2)
    state = health.record_probe(HealthState(), result(1.0, 1), check, 0.0)
    assert (state.status, state.failing_streak) == (HealthStatus.STARTING, 1)
    state = health.record_probe(state, result(2.0, 2), check, 0.0)
    assert (state.status, state.failing_streak) == (HealthStatus.UNHEALTHY, 2)


def test_the_start_interval_applies_while_starting_within_the_start_period() -> None:
    check = dataclasses.replace(CHECK, start_interval=0.5)
    assert health.next_delay(HealthState(), check, 0.0, 1.0) == 0.5
    assert health.next_delay(HealthState(), check, 0.0, 11.0) == 1.0
    assert health.next_delay(HealthState(HealthStatus.HEALTHY), check, 0.0, 1.0) == 1.0
    assert health.next_delay(HealthState(), CHECK, 0.0, 1.0) == 1.0  # none set: the interval


def test_state_round_trips_through_the_record_and_output_is_cut() -> None:
    state = HealthState(HealthStatus.UNHEALTHY, 2, (result(1.0, 1, "bad"),))
    assert health.from_record(health.to_record(state)) == state
    assert health.from_record(None) is None
    assert len(health.cut_output(b"x" * 10_000)) == 4096


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.3, "300ms"), (1, "1s"), (1.5, "1.5s"), (30, "30s"), (90, "1m30s"), (3600, "1h0m0s")],
)
def test_durations_are_shown_as_go_shows_them(seconds: float, text: str) -> None:
    assert health.go_duration(seconds) == text


class FakeTarget:
    """A container whose probe process prints, then exits with `status` (or never, when None)."""

    def __init__(self, status: int | None, output: bytes = b"") -> None:
        self.status, self.output = status, output
        self.signals: list[tuple[int, int]] = []
        self.channel: ProcessChannel | None = None

    async def exec_process(self, process: specs.ProcessSpec, rows: int, cols: int) -> ProcessChannel:
        if process.args == ("missing",):
            raise InvalidArgument('exec: "missing": executable file not found in $PATH')
        self.channel = ProcessChannel(7)
        if self.output:
            await self.channel.output.put((FrameKind.STDOUT, self.output, None))
        if self.status is not None:
            await self.channel.output.put(None)
            self.channel.exit_status.set_result(self.status)
        return self.channel

    def consumed(self) -> None:
        pass

    async def signal_process(self, stream: int, signum: int) -> None:
        self.signals.append((stream, signum))
        assert self.channel is not None
        await self.channel.output.put(None)
        self.channel.exit_status.set_result(137)


def probe(target: FakeTarget, args: tuple[str, ...] = ("check",), timeout: float = 5.0) -> ProbeResult:
    process = specs.ProcessSpec(args=args, env=(), cwd="/", user="0", tty=False, stdin=False)
    return asyncio.run(health.run_probe(target, process, timeout))


def test_a_probe_reports_its_status_and_output() -> None:
    done = probe(FakeTarget(3, b"not yet\n"))
    assert (done.exit_code, done.output) == (3, "not yet\n") and done.end >= done.start


def test_a_probe_that_cannot_start_or_outlives_its_timeout_fails_with_minus_one() -> None:
    missing = probe(FakeTarget(0), ("missing",))
    assert (missing.exit_code, missing.output) == (-1, 'exec: "missing": executable file not found in $PATH')
    hanging = FakeTarget(None)
    late = probe(hanging, timeout=0.05)
    assert (late.exit_code, late.output) == (-1, "Health check exceeded timeout (50ms)")
    assert hanging.signals == [(7, 9)]  # killed


# -- the record a create makes ------------------------------------------------------------------------


def image(**config: object) -> Image:
    return Image(
        id="sha256:" + "1" * 64,
        repo_tags=("busybox:latest",),
        manifest_digest=None,
        layers=(),
        diff_ids=(),
        config=ImageConfig(cmd=("sh",), **config),  # type: ignore[arg-type]
        created=None,
        architecture="amd64",
        os="linux",
        size=0,
    )


def test_a_record_merges_the_images_labels_stop_signal_and_health_check() -> None:
    made = image(
        labels=(("from", "image"), ("tier", "image")),
        stop_signal="SIGQUIT",
        healthcheck=Healthcheck(test=("CMD", "true"), interval=5.0),
        shell=("/bin/bash", "-c"),
    )
    request = CreateRequest(
        specs.RunOptions(image="busybox", health_retries=2), labels={"tier": "mine"}, console_size=(40, 120)
    )
    record = new_record(request, made, "c" * 64, 1.0)
    assert record.labels == {"from": "image", "tier": "mine"}
    assert record.options["stop_signal"] == "SIGQUIT"
    assert record.healthcheck == {"Test": ["CMD", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert (record.shell, record.console_size) == (["/bin/bash", "-c"], [40, 120])
    inspected = convert.inspect(record, [], "/log")
    assert inspected["State"]["Health"] == {"Status": "starting", "FailingStreak": 0, "Log": []}
    assert inspected["Config"]["StopSignal"] == "SIGQUIT"
    own = new_record(CreateRequest(specs.RunOptions(image="b", stop_signal="USR2")), made, "d" * 64, 1.0)
    assert own.options["stop_signal"] == "USR2"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (specs.RunOptions(image="b", stop_signal="SIGNOPE"), "unknown signal"),
        (specs.RunOptions(image="b", stop_timeout=-2), "stop timeout"),
        (specs.RunOptions(image="b", health_test=("CMD",)), "needs a command"),
    ],
)
def test_a_record_refuses_bad_stop_and_health_options(options: specs.RunOptions, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        new_record(CreateRequest(options), image(), "c" * 64, 1.0)


def test_an_image_for_another_platform_is_refused() -> None:
    arm = dataclasses.replace(image(), architecture="arm64")
    with pytest.raises(InvalidArgument, match="is for linux/arm64") as refused:
        new_record(CreateRequest(specs.RunOptions(image="b")), arm, "c" * 64, 1.0)
    assert refused.value.hint is not None and "--platform linux/amd64" in refused.value.hint
    unknown = dataclasses.replace(image(), architecture="")
    new_record(CreateRequest(specs.RunOptions(image="b")), unknown, "c" * 64, 1.0)  # says nothing: allowed


def test_status_and_the_health_filter_show_the_health() -> None:
    record = new_record(
        CreateRequest(specs.RunOptions(image="b", health_test=("CMD", "true"))), image(), "c" * 64, 1.0
    )
    running = dataclasses.replace(record, state="running", started_at=100.0)
    assert convert.statustext(running, 105.0) == "Up 5 seconds (health: starting)"
    healthy = dataclasses.replace(running, health=health.to_record(HealthState(HealthStatus.HEALTHY)))
    assert convert.statustext(healthy, 105.0) == "Up 5 seconds (healthy)"
    assert convert.statustext(dataclasses.replace(healthy, state="paused"), 105.0) == "Up 5 seconds (Paused)"
    assert convert.matches_filters(healthy, {"health": ["healthy"]})
    assert not convert.matches_filters(healthy, {"health": ["unhealthy", "none"]})
    plain = new_record(CreateRequest(specs.RunOptions(image="b")), image(), "d" * 64, 1.0)
    assert convert.matches_filters(plain, {"health": ["none"]})


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", "web-1", "a.b_c", "/web", "x" * 128, "0day"])
def test_valid_container_names(name: str) -> None:
    assert valid_name(name) == name.lstrip("/")


@pytest.mark.parametrize(
    "name", ["", "a", "-web", ".web", "we b", "caf\u00e9", "web/1", "x" * 129, "\u0661\u0662"]
)
def test_invalid_container_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        valid_name(name)


def test_stopping_ends_the_checks_even_when_probes_end_as_it_comes() -> None:
    """A probe every millisecond: the stop meets a probe ending again and again
    (where Python 3.11's wait_for can swallow a cancel), and still ends the loop."""
    from hyper.daemon.state import ContainerRecord

    record = ContainerRecord(
        id="c" * 64, name="web", image="b", image_id="sha256:" + "1" * 64, command=["sh"], created=0.0,
        state="running", options={}, started_at=0.0,
        healthcheck={"Test": ["CMD", "true"], "Interval": 1_000_000, "Timeout": 1_000_000_000},
    )  # fmt: skip
    saved: list[dict[str, object] | None] = []

    async def run() -> None:
        for attempt in range(50):
            checks = health.HealthChecks(FakeTarget(0), saved.append, lambda action: None)
            checks.start(record, asyncio.ensure_future)
            await asyncio.sleep(0.003)
            stopping = asyncio.ensure_future(checks.stop())
            done, _ = await asyncio.wait({stopping}, timeout=5)  # bounds a hang, which a lost cancel was
            assert done, f"the checks did not stop (attempt {attempt})"

    asyncio.run(run())
    assert saved[-1] is not None and saved[-1]["status"] == "unhealthy"  # a stopped container's
