"""Restart policies (Docker's rules) and the event bus, without a daemon."""

from __future__ import annotations

import asyncio

import pytest

from hyper.daemon.events import SUBSCRIBER_QUEUE, Event, EventBus
from hyper.daemon.policy import (
    FIRST_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    PolicyName,
    RestartPolicy,
    next_delay,
)
from hyper.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no", RestartPolicy(PolicyName.NO)),
        ("", RestartPolicy(PolicyName.NO)),
        ("always", RestartPolicy(PolicyName.ALWAYS)),
        ("unless-stopped", RestartPolicy(PolicyName.UNLESS_STOPPED)),
        ("on-failure", RestartPolicy(PolicyName.ON_FAILURE, 0)),
        ("on-failure:3", RestartPolicy(PolicyName.ON_FAILURE, 3)),
    ],
)
def test_parse(text: str, expected: RestartPolicy) -> None:
    assert RestartPolicy.parse(text) == expected


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1"])
def test_bad_policies_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(InvalidArgument):
        RestartPolicy.parse(text)


def test_docker_document_round_trips() -> None:
    policy = RestartPolicy(PolicyName.ON_FAILURE, 2)
    assert RestartPolicy.from_document(policy.document()) == policy
    assert RestartPolicy.from_document({"Name": "", "MaximumRetryCount": 0}) == RestartPolicy()
    assert RestartPolicy.from_document(None) == RestartPolicy()
    # Docker ignores a count on policies other than on-failure.
    assert RestartPolicy.from_document({"Name": "always", "MaximumRetryCount": 5}).max_retries == 0
    with pytest.raises(InvalidArgument):
        RestartPolicy.from_document({"Name": "always", "MaximumRetryCount": -1})


def test_should_restart() -> None:
    no, always = RestartPolicy(PolicyName.NO), RestartPolicy(PolicyName.ALWAYS)
    unless = RestartPolicy(PolicyName.UNLESS_STOPPED)
    twice = RestartPolicy(PolicyName.ON_FAILURE, 2)
    forever = RestartPolicy(PolicyName.ON_FAILURE)
    assert not no.should_restart(1, 0, manually_stopped=False)
    assert always.should_restart(0, 50, manually_stopped=False)
    assert not always.should_restart(0, 0, manually_stopped=True)
    assert unless.should_restart(0, 0, manually_stopped=False)
    assert not unless.should_restart(0, 0, manually_stopped=True)
    assert twice.should_restart(3, 1, manually_stopped=False)
    assert not twice.should_restart(3, 2, manually_stopped=False)
    assert not twice.should_restart(0, 0, manually_stopped=False)
    assert forever.should_restart(137, 1000, manually_stopped=False)


def test_start_with_daemon() -> None:
    assert RestartPolicy(PolicyName.ALWAYS).start_with_daemon(manually_stopped=True)
    assert RestartPolicy(PolicyName.UNLESS_STOPPED).start_with_daemon(manually_stopped=False)
    assert not RestartPolicy(PolicyName.UNLESS_STOPPED).start_with_daemon(manually_stopped=True)
    assert not RestartPolicy(PolicyName.ON_FAILURE).start_with_daemon(manually_stopped=False)


def test_back_off_doubles_to_a_cap_and_resets_after_a_good_run() -> None:
    delay = next_delay(None, 0)
    assert delay == FIRST_DELAY_SECONDS
    for _ in range(20):
        delay = next_delay(delay, 0.5)
    assert delay == MAX_DELAY_SECONDS
    assert next_delay(delay, 60) == FIRST_DELAY_SECONDS


def test_event_bus_delivers_in_order_replays_since_and_drops_a_slow_subscriber() -> None:
    async def scenario() -> None:
        bus = EventBus()
        bus.publish(Event("container", "create", "a"))
        replay = bus.subscribe(since_ns=0)
        live = bus.subscribe()
        bus.publish(Event("container", "start", "a"))
        assert [(await replay.next(1)).action for _ in range(2)] == ["create", "start"]  # type: ignore[union-attr]
        first = await live.next(1)
        assert first is not None and first.action == "start"
        assert await live.next(0.01) is None  # nothing more: a timeout, not an end
        assert not live.ended
        for n in range(SUBSCRIBER_QUEUE + 1):
            bus.publish(Event("container", "die", str(n)))
        # `live` fell behind: it is dropped and learns it after what it had.
        seen = 0
        while (await live.next(0.01)) is not None:
            seen += 1
        assert live.ended and seen < SUBSCRIBER_QUEUE
        replay.close()
        live.close()

    asyncio.run(scenario())
