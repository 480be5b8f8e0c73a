"""Restart policies, as Docker defines them, applied by hyperd to its pods.

Pure: parsing a policy and deciding, from a container's exit, whether and
when it starts again. The pod carries the decision out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hyper.errors import InvalidArgument

FIRST_DELAY_SECONDS = 0.1  # Docker's: doubled after each restart, reset after a good run
MAX_DELAY_SECONDS = 60.0
GOOD_RUN_SECONDS = 10.0


class PolicyName(enum.Enum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True)
class RestartPolicy:
    name: PolicyName = PolicyName.NO
    max_retries: int = 0  # on-failure only; 0 means no limit

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """`--restart` forms: no, always, unless-stopped, on-failure[:N]."""
        word, _, count = text.strip().partition(":")
        try:
            name = PolicyName(word or "no")
        except ValueError:
            raise InvalidArgument(
                f"invalid restart policy {text!r}",
                hint="use no, always, unless-stopped or on-failure[:max-retries]",
            ) from None
        if count and name is not PolicyName.ON_FAILURE:
            raise InvalidArgument(f"restart policy {word} takes no maximum retry count")
        if count and (not count.isdigit() or int(count) < 0):
            raise InvalidArgument(f"invalid maximum retry count {count!r} in {text!r}")
        return cls(name, int(count) if count else 0)

    @classmethod
    def from_document(cls, doc: object) -> RestartPolicy:
        """The form kept in hyperd's state and Docker's HostConfig.RestartPolicy."""
        if not isinstance(doc, dict):
            return cls()
        name, retries = doc.get("Name") or "no", doc.get("MaximumRetryCount") or 0
        if not isinstance(name, str) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgument("RestartPolicy needs a Name and a non-negative MaximumRetryCount")
        policy = cls.parse(name)
        return cls(policy.name, retries if policy.name is PolicyName.ON_FAILURE else 0)

    def document(self) -> dict[str, object]:
        return {
            "Name": "" if self.name is PolicyName.NO else self.name.value,
            "MaximumRetryCount": self.max_retries,
        }

    def should_restart(self, exit_code: int, restart_count: int, *, manually_stopped: bool) -> bool:
        """After the container exited with `exit_code`, having restarted `restart_count` times."""
        if manually_stopped or self.name is PolicyName.NO:
            return False
        if self.name is PolicyName.ON_FAILURE:
            return exit_code != 0 and (self.max_retries == 0 or restart_count < self.max_retries)
        return True

    def start_with_daemon(self, *, manually_stopped: bool) -> bool:
        """Whether hyperd starts this stopped container when it starts."""
        if self.name is PolicyName.ALWAYS:
            return True
        return self.name is PolicyName.UNLESS_STOPPED and not manually_stopped


def next_delay(previous: float | None, ran_for: float) -> float:
    """Docker's back-off between restarts: 0.1 s doubling to a minute, reset by a 10 s run."""
    if previous is None or ran_for >= GOOD_RUN_SECONDS:
        return FIRST_DELAY_SECONDS
    return min(previous * 2, MAX_DELAY_SECONDS)
