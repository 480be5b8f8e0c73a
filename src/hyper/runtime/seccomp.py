"""Docker's seccomp profiles: parse the JSON, resolve it for one container, compile it to BPF.

A profile is the JSON `docker run --security-opt seccomp=FILE` reads (moby's
profiles/seccomp format: defaultAction, defaultErrnoRet, architectures or
archMap, flags, syscalls with names, action, errnoRet, args, includes and
excludes). What it means for one container follows moby and runc:

- includes and excludes are decided when the container is created, as
  moby's setupSeccomp does: against the container's capability set (its
  bounding set), the architecture (amd64) and the guest kernel's version;
- names this x86_64 table does not know are skipped, as libseccomp and runc
  skip them; a rule whose action is the default action is skipped, as runc
  does (libseccomp refuses it);
- the conditions of a rule are ANDed, unless two test the same argument:
  runc then adds each as a rule of its own (libseccomp allows one test per
  argument in a rule), so they become alternatives;
- several rules for one system call are tried in profile order and the
  first that matches decides (runc's behaviour; runtime-spec PR #1159).

The result is a `Policy` (hyper.runtime.seccomp_bpf), compiled to the
program the guest installs. Only x86_64 system calls are allowed; i386 and
x32 calls are refused (see seccomp_bpf). SCMP_ACT_NOTIFY needs a listener
the guest does not have and is refused by name, like any unknown field value.
"""

from __future__ import annotations

import errno
import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from hyper.errors import InvalidArgument
from hyper.runtime.seccomp_bpf import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    CompareOp,
    Condition,
    Policy,
    Rule,
    compile_instructions,
    encode,
)
from hyper.runtime.seccomp_default import DEFAULT_PROFILE_JSON
from hyper.runtime.syscalls_x86_64 import X86_64_SYSCALLS

NATIVE_ARCH = "amd64"  # moby's name (libseccomp's) for x86_64 in includes/excludes
_HINT = "a profile is JSON in Docker's seccomp format; see docs/seccomp.md"

# Actions without data; ERRNO and TRACE carry errnoRet (EPERM when absent, as in runc).
_ACTIONS = {
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": SECCOMP_RET_TRACE,
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
}
_WITH_DATA = {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_OPERATORS = {op.value: op for op in CompareOp}
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class ProfileFilter:
    """A rule's includes or excludes."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class ProfileArg:
    index: int
    value: int
    value_two: int
    op: CompareOp


@dataclass(frozen=True)
class ProfileRule:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[ProfileArg, ...] = ()
    includes: ProfileFilter = ProfileFilter()
    excludes: ProfileFilter = ProfileFilter()


@dataclass(frozen=True)
class Profile:
    default_action: str
    default_errno_ret: int | None = None
    flags: tuple[str, ...] = ()
    rules: tuple[ProfileRule, ...] = ()


@dataclass(frozen=True)
class SeccompFilter:
    """A compiled profile: what the guest's `confine` installs."""

    program: bytes  # struct sock_filter[]
    flags: int  # SECCOMP_FILTER_FLAG_* for seccomp(2)

    @property
    def instructions(self) -> int:
        return len(self.program) // 8


def _invalid(where: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"seccomp profile: {where}: {problem}", hint=_HINT)


def _object(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _invalid(where, "must be a JSON object")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _invalid(where, "must be a string")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid(where, "must be a list of strings")
    return tuple(_string(item, f"{where}[{index}]") for index, item in enumerate(value))


def _unsigned(value: object, where: str, limit: int = _U64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _invalid(where, f"must be an integer from 0 to {limit}")
    return value


def _errno(value: object, where: str) -> int | None:
    return None if value is None else _unsigned(value, where, 0xFFFF)


def _kernel_version(value: object, where: str) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)", _string(value, where))
    if not match:
        raise _invalid(where, f'{value!r} is not a kernel version "<kernel>.<major>"')
    return int(match.group(1)), int(match.group(2))


def _filter(value: object, where: str) -> ProfileFilter:
    if value is None:
        return ProfileFilter()
    body = _object(value, where)
    return ProfileFilter(
        caps=_strings(body.get("caps"), f"{where}.caps"),
        arches=_strings(body.get("arches"), f"{where}.arches"),
        min_kernel=_kernel_version(body.get("minKernel"), f"{where}.minKernel"),
    )


def _arg(value: object, where: str) -> ProfileArg:
    body = _object(value, where)
    op = _string(body.get("op"), f"{where}.op")
    if op not in _OPERATORS:
        raise _invalid(f"{where}.op", f"unknown operator {op!r}; one of {', '.join(_OPERATORS)}")
    return ProfileArg(
        index=_unsigned(body.get("index"), f"{where}.index", 5),
        value=_unsigned(body.get("value", 0), f"{where}.value"),
        value_two=_unsigned(body.get("valueTwo", 0), f"{where}.valueTwo"),
        op=_OPERATORS[op],
    )


def _action(value: object, errno_ret: int | None, where: str) -> str:
    action = _string(value, where)
    if action == "SCMP_ACT_NOTIFY":
        raise _invalid(where, "SCMP_ACT_NOTIFY needs a seccomp agent, which Hyper's guest does not run")
    if action not in _ACTIONS:
        raise _invalid(where, f"unknown action {action!r}; one of {', '.join(_ACTIONS)}")
    if errno_ret is not None and action not in _WITH_DATA:
        raise _invalid(where, f"errnoRet is only for SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not {action}")
    return action


def _rule(value: object, where: str) -> ProfileRule:
    body = _object(value, where)
    names = _strings(body.get("names"), f"{where}.names")
    if body.get("name") not in (None, ""):
        if names:
            raise _invalid(where, "both 'name' and 'names' are set; use one")
        names = (_string(body["name"], f"{where}.name"),)
    errno_ret = _errno(body.get("errnoRet"), f"{where}.errnoRet")
    args = body.get("args")
    if args is None:
        args = []
    if not isinstance(args, list):
        raise _invalid(f"{where}.args", "must be a list")
    return ProfileRule(
        names=names,
        action=_action(body.get("action"), errno_ret, f"{where}.action"),
        errno_ret=errno_ret,
        args=tuple(_arg(arg, f"{where}.args[{index}]") for index, arg in enumerate(args)),
        includes=_filter(body.get("includes"), f"{where}.includes"),
        excludes=_filter(body.get("excludes"), f"{where}.excludes"),
    )


def parse_profile(text: str) -> Profile | None:
    """A profile from its JSON text; None for a profile that disables seccomp.

    As moby's setupSeccomp: a profile with neither a default action nor
    system calls (`{}`) means no filter at all.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"seccomp profile is not valid JSON: {exc}", hint=_HINT) from exc
    body = _object(document, "the profile")
    syscalls = body.get("syscalls")
    if syscalls is None:
        syscalls = []
    if not isinstance(syscalls, list):
        raise _invalid("syscalls", "must be a list")
    if not body.get("defaultAction") and not syscalls:
        return None
    if body.get("architectures") and body.get("archMap"):
        raise _invalid("the profile", "both 'architectures' and 'archMap' are set; use one")
    _strings(body.get("architectures"), "architectures")
    if body.get("listenerPath"):
        raise _invalid("listenerPath", "seccomp agents are not supported by Hyper's guest")
    flags = _strings(body.get("flags"), "flags")
    for flag in flags:
        if flag not in _FLAGS:
            raise _invalid("flags", f"unknown flag {flag!r}; one of {', '.join(_FLAGS)}")
    default_errno = _errno(body.get("defaultErrnoRet"), "defaultErrnoRet")
    return Profile(
        default_action=_action(body.get("defaultAction"), default_errno, "defaultAction"),
        default_errno_ret=default_errno,
        flags=flags,
        rules=tuple(_rule(rule, f"syscalls[{index}]") for index, rule in enumerate(syscalls)),
    )


@functools.cache
def default_profile() -> Profile:
    """Docker's default profile (hyper.runtime.seccomp_default)."""
    profile = parse_profile(DEFAULT_PROFILE_JSON)
    assert profile is not None
    return profile


def action_value(action: str, errno_ret: int | None) -> int:
    """The SECCOMP_RET_* value of a profile action."""
    base = _ACTIONS[action]
    if action in _WITH_DATA:
        return base | (errno.EPERM if errno_ret is None else errno_ret)
    return base


def _applies(rule: ProfileRule, capabilities: Collection[str], kernel: tuple[int, int]) -> bool:
    """moby's setupSeccomp: whether the rule is kept for this container."""
    excludes, includes = rule.excludes, rule.includes
    if NATIVE_ARCH in excludes.arches:
        return False
    if any(cap in capabilities for cap in excludes.caps):
        return False
    if excludes.min_kernel is not None and kernel >= excludes.min_kernel:
        return False
    if includes.arches and NATIVE_ARCH not in includes.arches:
        return False
    if not all(cap in capabilities for cap in includes.caps):
        return False
    return includes.min_kernel is None or kernel >= includes.min_kernel


def _conditions(args: tuple[ProfileArg, ...]) -> list[tuple[Condition, ...]]:
    """The alternatives a rule's args make, as runc adds them to libseccomp."""
    conditions = tuple(Condition(arg.index, arg.op, arg.value, arg.value_two) for arg in args)
    indexes = [condition.index for condition in conditions]
    if len(set(indexes)) != len(indexes):
        return [(condition,) for condition in conditions]
    return [conditions]


def resolve(profile: Profile, capabilities: Collection[str], kernel: tuple[int, int]) -> Policy:
    """The policy a container with these capabilities, on this guest kernel, runs under."""
    default = action_value(profile.default_action, profile.default_errno_ret)
    syscalls: dict[int, list[Rule]] = {}
    for rule in profile.rules:
        if not _applies(rule, capabilities, kernel):
            continue
        action = action_value(rule.action, rule.errno_ret)
        if action == default:
            continue
        alternatives = [Rule(action, conditions) for conditions in _conditions(rule.args)]
        for name in rule.names:
            number = X86_64_SYSCALLS.get(name)
            if number is not None:
                syscalls.setdefault(number, []).extend(alternatives)
    return Policy(default, {number: tuple(rules) for number, rules in syscalls.items()})


def profile_flags(profile: Profile) -> int:
    flags = 0
    for flag in profile.flags:
        flags |= _FLAGS[flag]
    return flags


def compile_profile(
    profile: Profile, capabilities: Collection[str], kernel: tuple[int, int]
) -> SeccompFilter:
    """Resolve and compile a profile for one container (capabilities as 'CAP_…' names)."""
    policy = resolve(profile, capabilities, kernel)
    try:
        program = encode(compile_instructions(policy))
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile cannot be compiled: {exc}", hint=_HINT) from exc
    return SeccompFilter(program, profile_flags(profile))


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as '6.1.0-28-amd64'."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        raise InvalidArgument(f"kernel release {release!r} does not start with <major>.<minor>")
    return int(match.group(1)), int(match.group(2))
