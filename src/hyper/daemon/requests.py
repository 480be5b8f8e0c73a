"""What the front ends ask hyperd for, in one shape: a container to create, and
signals by name. hyperd's own API, the Docker Engine API and the `hyper` CLI
all translate their requests into these."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

from hyper.daemon.policy import RestartPolicy
from hyper.errors import InvalidArgument
from hyper.runtime import spec as specs


def parse_signal(text: str | int) -> int:
    """A signal by number, name (`SIGTERM`) or short name (`TERM`), as Docker takes it."""
    if isinstance(text, int) or text.isdigit():
        number = int(text)
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            number = int(signal.Signals[name])
        except KeyError:
            raise InvalidArgument(
                f"unknown signal {text!r}", hint="use a name such as SIGTERM or a number"
            ) from None
    if not 0 < number < signal.NSIG:
        raise InvalidArgument(f"signal {number} is out of range")
    return number


@dataclasses.dataclass(frozen=True)
class CreateRequest:
    """A container to create, as hyperd's and Docker's APIs both describe it."""

    options: specs.RunOptions
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    restart: RestartPolicy = dataclasses.field(default_factory=RestartPolicy)
    auto_remove: bool = False
    stdin_once: bool = False
    # The shell of CMD-SHELL health checks (Docker's Config.Shell); empty: the image's, else /bin/sh -c.
    shell: tuple[str, ...] = ()
    # The terminal size a TTY starts with (Docker's HostConfig.ConsoleSize), rows and columns.
    console_size: tuple[int, int] | None = None
    # Docker fields that only describe the container (which streams a client
    # attaches, exposed ports, the client's ID file): kept to report them in inspect.
    recorded: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_options_from(doc: dict[str, Any]) -> specs.RunOptions:
    """RunOptions from the record (tuples come back from JSON as lists)."""
    fields = {f.name for f in dataclasses.fields(specs.RunOptions)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in fields
    }
    return specs.RunOptions(**values)
