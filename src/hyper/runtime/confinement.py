"""The confinement options of a container (capabilities, privileged, security
options, ulimits, shm size, init), checked at create as Docker checks them,
and the table of those the runtime does not honour yet, which every front end
refuses by name rather than accept and ignore.

Every one of them is honoured now (the guest applies them; tests prove each
inside a VM). A confinement option added to `RunOptions` before the guest
applies it goes into NOT_YET_HONOURED until it does.
"""

from __future__ import annotations

from hyper.errors import InvalidArgument
from hyper.runtime import spec as specs

# RunOptions field → the option as users write it.
NOT_YET_HONOURED: dict[str, str] = {}
_DEFAULTS = specs.RunOptions(image="")


def check_confinement(options: specs.RunOptions) -> None:
    """Docker's checks of the confinement options (capability names, ulimits,
    security options): a bad one is refused at create, not at start."""
    specs.container_confinement(options)
    if options.shm_size < 0:
        raise InvalidArgument("the shm size must not be negative")


def refuse_unhonoured(options: specs.RunOptions) -> None:
    """Check the confinement options, then refuse any the runtime does not do yet."""
    check_confinement(options)
    for field, flag in NOT_YET_HONOURED.items():
        if getattr(options, field) != getattr(_DEFAULTS, field):
            raise InvalidArgument(
                f"Hyper does not honour {flag} yet",
                hint="leave it out for now; see docs/docker-api.md for the options Hyper supports",
            )
