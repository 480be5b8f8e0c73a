"""Docker seccomp profiles: parsing, errors, and what they resolve to for one container."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from hyper.errors import InvalidArgument
from hyper.runtime.seccomp import (
    Profile,
    compile_profile,
    default_profile,
    kernel_version,
    parse_profile,
    resolve,
)
from hyper.runtime.seccomp_bpf import (
    BAD_ARCH_ACTION,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    CompareOp,
    Condition,
    Rule,
    SeccompData,
    errno_action,
)
from hyper.runtime.seccomp_default import DEFAULT_PROFILE_JSON
from hyper.runtime.security import DEFAULT_CAPABILITIES
from hyper.runtime.syscalls_x86_64 import X86_64_SYSCALLS

KERNEL = (6, 1)
EPERM = errno_action(errno.EPERM)
NR = X86_64_SYSCALLS


def profile(**body: object) -> Profile:
    parsed = parse_profile(json.dumps(body))
    assert parsed is not None
    return parsed


def decide(
    policy_profile: Profile, name: str, *args: int, caps: tuple[str, ...] = DEFAULT_CAPABILITIES
) -> int:
    policy = resolve(policy_profile, caps, KERNEL)
    padded = (*args, 0, 0, 0, 0, 0, 0)[:6]
    return policy.decide(SeccompData(NR[name], args=padded))


def test_the_default_profile_is_mobys_text_byte_for_byte() -> None:
    digest = hashlib.sha256(DEFAULT_PROFILE_JSON.encode()).hexdigest()
    assert digest == "e40d78f7f0173467a5dfe32bb96227b78bdb92b0aa32ccd07600dacb09d4f454"
    assert default_profile().default_action == "SCMP_ACT_ERRNO"
    assert default_profile().default_errno_ret == errno.EPERM


def test_the_syscall_table_knows_x86_64_and_the_calls_after_linux_6_1() -> None:
    assert NR["read"] == 0 and NR["execve"] == 59 and NR["clone3"] == 435
    assert NR["fchmodat2"] == 452 and NR["mseal"] == 462 and NR["uretprobe"] == 335
    assert "socketcall" not in NR and "mmap2" not in NR  # i386-only names
    assert len(set(NR.values())) == len(NR)


@pytest.mark.parametrize(
    "name",
    ["read", "write", "openat", "execve", "mmap", "futex", "clone3", "fchmodat2", "statx", "arch_prctl"],
)
def test_the_default_profile_lets_ordinary_work_through(name: str) -> None:
    expected = errno_action(errno.ENOSYS) if name == "clone3" else SECCOMP_RET_ALLOW
    assert decide(default_profile(), name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "mount",
        "umount2",
        "setns",
        "kexec_load",
        "init_module",
        "finit_module",
        "bpf",
        "open_by_handle_at",
        "reboot",
        "clock_settime",
        "kcmp",
        "io_uring_setup",
        "userfaultfd",
        "perf_event_open",
        "lsm_set_self_attr",
        "swapon",
        "iopl",
    ],
)
def test_the_default_profile_refuses_what_docker_refuses(name: str) -> None:
    assert decide(default_profile(), name) == EPERM


def test_clone_is_allowed_without_namespace_flags_only() -> None:
    sigchld = 17
    assert decide(default_profile(), "clone", sigchld) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "clone", 0x003D0F00) == SECCOMP_RET_ALLOW  # pthread_create's flags
    for flag in (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000):
        assert decide(default_profile(), "clone", flag | sigchld) == EPERM
    # CLONE_NEWTIME (0x80) is not in Docker's mask: it shares bits with the exit signal.
    assert decide(default_profile(), "clone", 0x80) == SECCOMP_RET_ALLOW
    # The high half of the flags word is compared too.
    assert decide(default_profile(), "clone", 1 << 40) == SECCOMP_RET_ALLOW


def test_socket_allows_every_family_but_vsock_and_personality_only_five_values() -> None:
    assert decide(default_profile(), "socket", 2) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "socket", 40) == EPERM
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert decide(default_profile(), "personality", persona) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "personality", 0x0040000) == EPERM  # READ_IMPLIES_EXEC
    assert decide(default_profile(), "personality", 0xFFFFFFFF_FFFFFFFF) == EPERM


def test_capabilities_open_their_system_calls() -> None:
    admin = (*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN")
    for name in ("mount", "unshare", "setns", "bpf", "clone3", "fsopen"):
        assert decide(default_profile(), name, caps=admin) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "clone", 0x10000000, caps=admin) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "reboot", caps=("CAP_SYS_BOOT",)) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "ptrace", caps=()) == SECCOMP_RET_ALLOW  # minKernel 4.8
    assert decide(default_profile(), "kcmp", caps=("CAP_SYS_PTRACE",)) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "clock_settime", caps=("CAP_SYS_TIME",)) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "open_by_handle_at", caps=("CAP_DAC_READ_SEARCH",)) == SECCOMP_RET_ALLOW
    assert decide(default_profile(), "bpf", caps=("CAP_BPF",)) == SECCOMP_RET_ALLOW
    # Without CAP_SYS_CHROOT, no chroot.
    assert decide(default_profile(), "chroot", caps=()) == EPERM
    assert decide(default_profile(), "chroot") == SECCOMP_RET_ALLOW


def test_min_kernel_is_decided_against_the_guest_kernel() -> None:
    old = resolve(default_profile(), (), (4, 4))
    assert old.decide(SeccompData(NR["ptrace"])) == EPERM
    assert resolve(default_profile(), (), (4, 8)).decide(SeccompData(NR["ptrace"])) == SECCOMP_RET_ALLOW
    excluded = profile(
        defaultAction="SCMP_ACT_ALLOW",
        syscalls=[{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "5.10"}}],
    )
    assert resolve(excluded, (), (5, 4)).decide(SeccompData(NR["getpid"])) == EPERM
    assert resolve(excluded, (), (5, 10)).decide(SeccompData(NR["getpid"])) == SECCOMP_RET_ALLOW


def test_includes_need_every_cap_and_excludes_any() -> None:
    rules = [
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_A", "CAP_B"]}},
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_A", "CAP_B"]}},
    ]
    body = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules)
    assert decide(body, "getpid", caps=("CAP_A",)) == EPERM
    assert decide(body, "getpid", caps=("CAP_A", "CAP_B")) == SECCOMP_RET_ALLOW
    assert decide(body, "getppid", caps=("CAP_B",)) == EPERM
    assert decide(body, "getppid", caps=()) == SECCOMP_RET_ALLOW


def test_arches_are_decided_for_amd64() -> None:
    rules = [
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
    ]
    body = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules)
    assert decide(body, "getpid") == EPERM
    assert decide(body, "getppid") == SECCOMP_RET_ALLOW
    assert decide(body, "gettid") == EPERM


def test_the_first_matching_rule_decides() -> None:
    rules = [
        {
            "names": ["read"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 5,
            "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}],
        },
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["read"], "action": "SCMP_ACT_KILL"},
    ]
    body = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules)
    assert decide(body, "read", 3) == errno_action(5)
    assert decide(body, "read", 4) == SECCOMP_RET_ALLOW


def test_rules_with_the_default_action_are_skipped_as_runc_does() -> None:
    refused: dict[str, object] = {
        "names": ["read"],
        "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}],
    }
    rules = [refused, {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
    body = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules)
    assert decide(body, "read", 3) == SECCOMP_RET_ALLOW
    # A different errno is a different action, and is kept.
    refused["errnoRet"] = 13
    assert decide(profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules), "read", 3) == errno_action(13)


def test_conditions_are_anded_but_two_on_one_argument_become_alternatives() -> None:
    anded = [
        {
            "names": ["write"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 2, "value": 10, "op": "SCMP_CMP_LT"},
            ],
        }
    ]
    body = profile(defaultAction="SCMP_ACT_ERRNO", syscalls=anded)
    assert decide(body, "write", 1, 0, 9) == SECCOMP_RET_ALLOW
    assert decide(body, "write", 1, 0, 10) == EPERM
    assert decide(body, "write", 2, 0, 9) == EPERM
    same_index = [
        {
            "names": ["write"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
            ],
        }
    ]
    policy = resolve(profile(defaultAction="SCMP_ACT_ERRNO", syscalls=same_index), (), KERNEL)
    assert policy.syscalls[NR["write"]] == (
        Rule(SECCOMP_RET_ALLOW, (Condition(0, CompareOp.EQ, 1),)),
        Rule(SECCOMP_RET_ALLOW, (Condition(0, CompareOp.EQ, 2),)),
    )


def test_unknown_names_are_skipped_and_name_works_like_names() -> None:
    rules = [
        {"names": ["no_such_call", "getpid", "socketcall"], "action": "SCMP_ACT_ALLOW"},
        {"name": "gettid", "action": "SCMP_ACT_ALLOW"},
    ]
    policy = resolve(profile(defaultAction="SCMP_ACT_ERRNO", syscalls=rules), (), KERNEL)
    assert set(policy.syscalls) == {NR["getpid"], NR["gettid"]}


@pytest.mark.parametrize(
    ("action", "errno_ret", "expected"),
    [
        ("SCMP_ACT_KILL", None, SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", None, SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", None, SECCOMP_RET_KILL_PROCESS),
        ("SCMP_ACT_TRAP", None, SECCOMP_RET_TRAP),
        ("SCMP_ACT_ERRNO", None, EPERM),
        ("SCMP_ACT_ERRNO", 22, errno_action(22)),
        ("SCMP_ACT_TRACE", None, SECCOMP_RET_TRACE | 1),
        ("SCMP_ACT_TRACE", 7, SECCOMP_RET_TRACE | 7),
        ("SCMP_ACT_LOG", None, SECCOMP_RET_LOG),
    ],
)
def test_actions_map_to_the_kernels_return_values(action: str, errno_ret: int | None, expected: int) -> None:
    rule: dict[str, object] = {"names": ["getpid"], "action": action}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    body = profile(defaultAction="SCMP_ACT_ALLOW", syscalls=[rule])
    assert decide(body, "getpid") == expected


def test_the_default_errno_and_other_default_actions() -> None:
    body = profile(defaultAction="SCMP_ACT_ERRNO", defaultErrnoRet=38, syscalls=[])
    assert decide(body, "getpid") == errno_action(38)
    assert decide(profile(defaultAction="SCMP_ACT_KILL_PROCESS"), "getpid") == SECCOMP_RET_KILL_PROCESS
    assert (
        resolve(profile(defaultAction="SCMP_ACT_ALLOW"), (), KERNEL).decide(SeccompData(39, arch=0x40000003))
        == BAD_ARCH_ACTION
    )


def test_an_empty_profile_means_no_filter() -> None:
    assert parse_profile("{}") is None
    assert parse_profile('{"syscalls": []}') is None


def _read_rule(**fields: object) -> str:
    rule = {"names": ["read"], "action": "SCMP_ACT_ALLOW", **fields}
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule]})


def _read_arg(**fields: object) -> str:
    return _read_rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ", **fields}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "the profile: must be a JSON object"),
        ("{", "not valid JSON"),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "SCMP_ACT_NOTIFY needs a seccomp agent"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}', "listenerPath"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}',
            "unknown flag",
        ),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], "archMap": [{}]}', "both"),
        ('{"syscalls": [{"names": ["read"]}]}', "defaultAction: must be a string"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}', "errnoRet is only for"),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}',
            "defaultErrnoRet: must be an integer",
        ),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "syscalls: must be a list"),
        (_read_rule(names="read"), r"syscalls\[0\].names: must be a list"),
        (_read_rule(name="write"), "both 'name' and 'names'"),
        (_read_rule(errnoRet=1), "errnoRet is only for"),
        (_read_rule(action="ALLOW"), "unknown action 'ALLOW'"),
        (_read_rule(args={}), r"syscalls\[0\].args: must be a list"),
        (_read_rule(includes={"minKernel": "5"}), "not a kernel version"),
        (_read_rule(excludes={"caps": "CAP_SYS_ADMIN"}), r"excludes.caps: must be a list"),
        (_read_arg(index=6), r"args\[0\].index: must be an integer from 0 to 5"),
        (_read_arg(value=-1), r"args\[0\].value: must be an integer"),
        (_read_arg(value=1.5), r"args\[0\].value: must be an integer"),
        (_read_arg(valueTwo=1 << 64), r"args\[0\].valueTwo: must be an integer"),
        (_read_arg(op="SCMP_CMP_BETWEEN"), "unknown operator 'SCMP_CMP_BETWEEN'"),
    ],
)
def test_bad_profiles_are_refused_saying_where(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        parse_profile(text)
    assert caught.value.hint is not None


def test_compiled_profiles_carry_their_flags() -> None:
    body = profile(
        defaultAction="SCMP_ACT_ALLOW", flags=["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG"]
    )
    assert compile_profile(body, (), KERNEL).flags == 6


def test_kernel_versions_from_release_strings() -> None:
    assert kernel_version("6.1.0-28-amd64") == (6, 1)
    assert kernel_version("6.18.44-fc-v1098") == (6, 18)
    with pytest.raises(InvalidArgument):
        kernel_version("linux")
