"""The confinement options of a container (capabilities, privileged, security
options, ulimits, shm size, init), checked as Docker checks them, and refused
by name while the runtime does not honour them yet.

`RunOptions` carries them in Docker's textual forms for every front end; the
guest's side of each lands separately. When one is honoured (with a test that
proves its effect inside the VM), its line goes from NOT_YET_HONOURED and
every front end accepts it at once.
"""

from __future__ import annotations

from hyper.errors import InvalidArgument
from hyper.runtime import security
from hyper.runtime import spec as specs

# RunOptions field → the option as users write it.
NOT_YET_HONOURED: dict[str, str] = {
    "cap_add": "--cap-add",
    "cap_drop": "--cap-drop",
    "privileged": "--privileged",
    "security_opt": "--security-opt",
    "ulimits": "--ulimit",
    "shm_size": "--shm-size",
    "init": "--init",
}
_DEFAULTS = specs.RunOptions(image="")


def check_confinement(options: specs.RunOptions) -> None:
    """Docker's checks of the confinement options: capability names, ulimits,
    security options (a bad one is refused at create, not at start)."""
    security.resolve_capabilities(options.cap_add, options.cap_drop, options.privileged)
    security.ulimits_from_flags(options.ulimits)
    security.parse_security_opts(options.security_opt)
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
