"""What a container process is confined with, decided on the host the way Docker decides it.

Pure functions over the options a user gives (`--cap-add`, `--cap-drop`,
`--privileged`, `--ulimit`, `--security-opt`) or their Engine API forms.
The results go to the guest, whose `hyper.agent.guest_security.confine`
applies them just before the container's program is exec'ed:

- capabilities: Docker's default set, tweaked as moby's TweakCapabilities
  does (names with or without CAP_, any case, ALL in either list, and an
  added capability wins over a dropped one); `capability_numbers` gives the
  guest the numbers;
- ulimits: Docker's `name=soft[:hard]` text (docker/go-units ParseUlimit,
  its errors included) or the API's {"Name", "Soft", "Hard"}; -1 is
  unlimited; `Ulimit.rlimit` gives the guest (RLIMIT_* number, soft, hard);
- security options: no-new-privileges and seccomp (Docker's default
  profile, unconfined, or a profile's JSON text, which the docker CLI and
  `hyper` read from the file they are given); AppArmor and SELinux labels do
  not exist in the guest, so only their "off" forms are accepted;
- `seccomp_filter` ties them together: the compiled program the guest
  installs, or None when the container runs unconfined;
- the process's setup around them: supplementary groups (`--group-add`),
  namespaced sysctls (`--sysctl`, which the guest writes before the main
  process starts) and masked and read-only paths (CRI's, replacing runc's);
- `confinement` does all of it at once; its `message()` is the JSON the
  agent protocol carries, which the guest's `confine_message` applies.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hyper.agent.guest_security import CAPABILITY_NAMES, CAPABILITY_NUMBERS, RLIM_INFINITY, sysctl_problem
from hyper.errors import InvalidArgument
from hyper.runtime.seccomp import SeccompFilter, compile_profile, default_profile, parse_profile

ALL = "ALL"
# moby's oci/caps.DefaultCapabilities, in its order.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# docker/go-units' ulimit names (RLIMIT_AS is left out there too: it breaks
# a container's init) and Linux's RLIMIT_* numbers.
RLIMIT_NUMBERS = {
    "core": 4,
    "cpu": 0,
    "data": 2,
    "fsize": 1,
    "locks": 10,
    "memlock": 8,
    "msgqueue": 12,
    "nice": 13,
    "nofile": 7,
    "nproc": 6,
    "rss": 5,
    "rtprio": 14,
    "rttime": 15,
    "sigpending": 11,
    "stack": 3,
}
UNLIMITED = -1
_INT64_MAX = (1 << 63) - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


def normalize_capability(name: str) -> str:
    """'net_admin', 'CAP_NET_ADMIN', 'Net_Admin' → 'CAP_NET_ADMIN'; 'all' → 'ALL'."""
    upper = name.strip().upper()
    if upper == ALL:
        return ALL
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    if upper not in CAPABILITY_NUMBERS:
        raise InvalidArgument(
            f"unknown capability: {name!r}",
            hint="use a Linux capability name such as NET_ADMIN or CAP_SYS_PTRACE, or ALL",
        )
    return upper


def resolve_capabilities(
    cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), privileged: bool = False
) -> tuple[str, ...]:
    """The container's capability set, as moby's TweakCapabilities computes it.

    Privileged: every capability. ALL added: every capability but those
    dropped. ALL dropped: only those added. Otherwise Docker's defaults minus
    the dropped plus the added, so a capability both added and dropped stays.
    """
    drops = [normalize_capability(name) for name in cap_drop]
    adds = [normalize_capability(name) for name in cap_add]
    if privileged:
        return CAPABILITY_NAMES
    if ALL in adds:
        result = [cap for cap in CAPABILITY_NAMES if cap not in drops]
    elif ALL in drops:
        result = adds
    else:
        result = [cap for cap in DEFAULT_CAPABILITIES if cap not in drops] + adds
    return tuple(dict.fromkeys(result))


def capability_numbers(names: Iterable[str]) -> list[int]:
    """The numbers of a resolved capability set, ascending, for the guest's `confine`."""
    numbers = set()
    for name in names:
        normalized = normalize_capability(name)
        if normalized == ALL:
            raise InvalidArgument("ALL is not a capability; resolve the set first")
        numbers.add(CAPABILITY_NUMBERS[normalized])
    return sorted(numbers)


@dataclass(frozen=True)
class Ulimit:
    """A resource limit as Docker carries it: -1 is unlimited."""

    name: str
    soft: int
    hard: int

    @property
    def resource(self) -> int:
        return RLIMIT_NUMBERS[self.name]

    def rlimit(self) -> tuple[int, int, int]:
        """(RLIMIT_* number, soft, hard) for the guest's setrlimit."""

        def value(limit: int) -> int:
            return RLIM_INFINITY if limit == UNLIMITED else limit

        return self.resource, value(self.soft), value(self.hard)

    def api(self) -> dict[str, object]:
        return {"Name": self.name, "Soft": self.soft, "Hard": self.hard}


def _checked_ulimit(name: str, soft: int, hard: int, text: str) -> Ulimit:
    if name not in RLIMIT_NUMBERS:
        raise InvalidArgument(
            f"invalid ulimit type: {name}", hint=f"one of {', '.join(sorted(RLIMIT_NUMBERS))}"
        )
    for limit in (soft, hard):
        if limit < UNLIMITED:
            raise InvalidArgument(f"invalid ulimit {text}: {limit} is negative", hint="use -1 for unlimited")
    if hard != UNLIMITED:
        if soft == UNLIMITED:
            raise InvalidArgument(
                "ulimit soft limit must be less than or equal to hard limit: "
                f"soft: -1 (unlimited), hard: {hard}"
            )
        if soft > hard:
            raise InvalidArgument(
                f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )
    return Ulimit(name, soft, hard)


def _limit(text: str, whole: str) -> int:
    # Go's strconv.ParseInt(text, 10, 64): an optional sign and decimal digits.
    if not _INTEGER.fullmatch(text):
        raise InvalidArgument(
            f"invalid ulimit {whole}: {text!r} is not a number", hint="use -1 for unlimited"
        )
    value = int(text)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise InvalidArgument(f"invalid ulimit {whole}: {text} is out of the 64-bit range")
    return value


def parse_ulimit(text: str) -> Ulimit:
    """`--ulimit name=soft[:hard]`, as docker/go-units' ParseUlimit reads it."""
    name, sep, limits = text.partition("=")
    if not sep:
        raise InvalidArgument(
            f"invalid ulimit argument: {text}", hint="write name=soft[:hard], as nofile=1024:2048"
        )
    if name not in RLIMIT_NUMBERS:
        raise InvalidArgument(
            f"invalid ulimit type: {name}", hint=f"one of {', '.join(sorted(RLIMIT_NUMBERS))}"
        )
    values = limits.split(":")
    if len(values) > 2:
        raise InvalidArgument(
            f"too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
        )
    soft = _limit(values[0], text)
    hard = _limit(values[1], text) if len(values) == 2 else soft
    return _checked_ulimit(name, soft, hard, text)


def ulimit_from_api(body: Mapping[str, object]) -> Ulimit:
    """An Engine API HostConfig.Ulimits entry: {"Name": "nofile", "Soft": 1024, "Hard": 2048}."""
    name, soft, hard = body.get("Name"), body.get("Soft"), body.get("Hard")
    if not isinstance(name, str):
        raise InvalidArgument(f"invalid ulimit {dict(body)}: Name must be a string")
    for label, value in (("Soft", soft), ("Hard", hard)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"invalid ulimit {dict(body)}: {label} must be an integer")
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise InvalidArgument(f"invalid ulimit {dict(body)}: {label} is not a 64-bit integer")
    assert isinstance(soft, int) and isinstance(hard, int)
    return _checked_ulimit(name, soft, hard, f"{name}={soft}:{hard}")


def ulimits_from_flags(values: Iterable[str]) -> tuple[Ulimit, ...]:
    """Repeated `--ulimit` flags: the last one of each name wins, as in docker's UlimitOpt."""
    by_name = {ulimit.name: ulimit for ulimit in map(parse_ulimit, values)}
    return tuple(by_name[name] for name in sorted(by_name))


class SeccompMode(enum.Enum):
    DEFAULT = "default"  # Docker's default profile
    UNCONFINED = "unconfined"
    CUSTOM = "custom"  # a profile's JSON text


@dataclass(frozen=True)
class SecurityOptions:
    no_new_privileges: bool = False
    seccomp: SeccompMode = SeccompMode.DEFAULT
    seccomp_profile: str | None = None  # the JSON text when seccomp is CUSTOM


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _split_option(option: str) -> tuple[str, str] | None:
    # The docker CLI and moby cut at the first '=', else at the first ':'
    # (the old separator, still accepted).
    for separator in ("=", ":"):
        key, sep, value = option.partition(separator)
        if sep:
            return key, value
    return None


def parse_security_opts(values: Sequence[str]) -> SecurityOptions:
    """`--security-opt` values (HostConfig.SecurityOpt), as moby's parseSecurityOpt reads them."""
    no_new_privileges = False
    seccomp, profile = SeccompMode.DEFAULT, None
    for option in values:
        if option == "no-new-privileges":
            no_new_privileges = True
            continue
        split = _split_option(option)
        if split is None or not split[1]:
            raise InvalidArgument(
                f"invalid --security-opt: {option!r}", hint="write KEY=VALUE, as no-new-privileges=true"
            )
        key, value = split
        if key == "no-new-privileges" and value in _TRUE | _FALSE:
            no_new_privileges = value in _TRUE
        elif key == "seccomp" and value in ("unconfined", "builtin"):
            seccomp = SeccompMode.UNCONFINED if value == "unconfined" else SeccompMode.DEFAULT
            profile = None
        elif key == "seccomp":
            if not value.lstrip().startswith("{"):
                raise InvalidArgument(
                    f"--security-opt seccomp={value}: expected a profile's JSON text",
                    hint="pass the file: the docker CLI and hyper read it and send its content",
                )
            parsed = parse_profile(value)  # refuse a bad profile now, not at start
            seccomp = SeccompMode.CUSTOM if parsed is not None else SeccompMode.UNCONFINED
            profile = value if parsed is not None else None
        elif (key, value) in (("apparmor", "unconfined"), ("label", "disable")):
            continue  # the guest has neither AppArmor nor SELinux: already so
        else:
            raise InvalidArgument(
                f"unsupported --security-opt: {option!r}",
                hint="Hyper accepts no-new-privileges[=true|false], seccomp=unconfined|PROFILE, "
                "apparmor=unconfined and label=disable",
            )
    return SecurityOptions(no_new_privileges, seccomp, profile)


def seccomp_filter(
    options: SecurityOptions,
    capabilities: Iterable[str],
    privileged: bool,
    kernel: tuple[int, int],
) -> SeccompFilter | None:
    """The seccomp program for a container, or None when it runs without one.

    As moby's WithSeccomp: unconfined and privileged containers get none; the
    profile's includes and excludes are decided against the container's
    capabilities and the guest kernel's (major, minor) version.
    """
    if options.seccomp is SeccompMode.UNCONFINED or privileged:
        return None
    if options.seccomp is SeccompMode.CUSTOM:
        assert options.seccomp_profile is not None
        profile = parse_profile(options.seccomp_profile)
        if profile is None:
            return None
    else:
        profile = default_profile()
    return compile_profile(profile, tuple(capabilities), kernel)


@dataclass(frozen=True)
class Confinement:
    """Everything the guest's `confine` needs for one container process but its user."""

    capabilities: tuple[int, ...]
    no_new_privileges: bool = False
    rlimits: tuple[tuple[int, int, int], ...] = ()
    seccomp: SeccompFilter | None = None
    groups: tuple[str, ...] = ()  # added to the user's, resolved in the container's /etc/group
    sysctls: tuple[tuple[str, str], ...] = ()
    masked_paths: tuple[str, ...] | None = None  # None: runc's defaults
    readonly_paths: tuple[str, ...] | None = None

    def message(self) -> dict[str, object]:
        """The JSON form the agent protocol carries (guest_security.read_confinement reads it)."""
        message: dict[str, object] = {
            "capabilities": list(self.capabilities),
            "no_new_privileges": self.no_new_privileges,
            "rlimits": [list(limit) for limit in self.rlimits],
            "seccomp": None if self.seccomp is None else base64.b64encode(self.seccomp.program).decode(),
            "seccomp_flags": 0 if self.seccomp is None else self.seccomp.flags,
        }
        # Only when set, so that every other request stays as it was.
        if self.groups:
            message["groups"] = list(self.groups)
        if self.sysctls:
            message["sysctls"] = [list(pair) for pair in self.sysctls]
        if self.masked_paths is not None:
            message["masked_paths"] = list(self.masked_paths)
        if self.readonly_paths is not None:
            message["readonly_paths"] = list(self.readonly_paths)
        return message


def check_group(group: str) -> str:
    """A `--group-add` entry: a group name (looked up in the container's
    /etc/group when it starts) or a number."""
    if not group or ":" in group or "\n" in group or "," in group:
        raise InvalidArgument(f"invalid group {group!r}", hint="give a group name or a number to --group-add")
    if group.isdigit() and int(group) >= 1 << 32:
        raise InvalidArgument(f"group {group} is out of range", hint="give a number below 4294967296")
    return group


def parse_sysctls(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Docker's `--sysctl NAME=VALUE`: only sysctls of a kernel namespace (runc's rule)."""
    pairs: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid sysctl {text!r}", hint="use --sysctl NAME=VALUE")
        problem = sysctl_problem(name, value)
        if problem is not None:
            raise InvalidArgument(
                problem, hint="set only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* or net.* sysctls"
            )
        pairs[name] = value
    return tuple(pairs.items())


def check_paths(paths: Iterable[str], what: str) -> tuple[str, ...]:
    """Masked or read-only paths: absolute, without '..'."""
    for path in paths:
        if not path.startswith("/") or ".." in path.split("/") or "\0" in path or "\n" in path:
            raise InvalidArgument(f"{what} {path!r} is not an absolute path without '..'")
    return tuple(paths)


def confinement(
    *,
    cap_add: Iterable[str] = (),
    cap_drop: Iterable[str] = (),
    privileged: bool = False,
    security_opt: Sequence[str] = (),
    ulimits: Iterable[Ulimit] = (),
    kernel: tuple[int, int],
    group_add: Iterable[str] = (),
    sysctls: Iterable[str] = (),
    masked_paths: Iterable[str] | None = None,
    readonly_paths: Iterable[str] | None = None,
) -> Confinement:
    """A container's confinement from Docker's options; `kernel` is the guest's (major, minor)."""
    capabilities = resolve_capabilities(cap_add, cap_drop, privileged)
    options = parse_security_opts(security_opt)
    return Confinement(
        capabilities=tuple(capability_numbers(capabilities)),
        no_new_privileges=options.no_new_privileges,
        rlimits=tuple(ulimit.rlimit() for ulimit in ulimits),
        seccomp=seccomp_filter(options, capabilities, privileged, kernel),
        groups=tuple(check_group(group) for group in group_add),
        sysctls=parse_sysctls(sysctls),
        masked_paths=None if masked_paths is None else check_paths(masked_paths, "masked path"),
        readonly_paths=None if readonly_paths is None else check_paths(readonly_paths, "read-only path"),
    )
