"""The BPF compiler against the reference semantics: exhaustively on Docker's profile, and by property."""

from __future__ import annotations

import errno
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyper.agent.guest_security import CAPABILITY_NAMES
from hyper.errors import InvalidArgument
from hyper.runtime.seccomp import compile_profile, default_profile, parse_profile, resolve
from hyper.runtime.seccomp_bpf import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    BAD_ARCH_ACTION,
    BPF_JMP_JA,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    CompareOp,
    Condition,
    Insn,
    Policy,
    Rule,
    SeccompData,
    _ranges,
    check_program,
    compile_instructions,
    compile_policy,
    decode,
    encode,
    errno_action,
    execute,
    run,
)
from hyper.runtime.security import DEFAULT_CAPABILITIES
from hyper.runtime.syscalls_x86_64 import X86_64_SYSCALLS

KERNEL = (6, 1)
U64 = (1 << 64) - 1
EPERM = errno_action(errno.EPERM)
CAP_SETS = {
    "docker-default": DEFAULT_CAPABILITIES,
    "none": (),
    "sys-admin": (*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"),
    "all": CAPABILITY_NAMES,
}
INTERESTING_ARGS = (0, 1, 2, 8, 17, 40, 0x20000, 0x7E020000, 0xFFFFFFFF, 1 << 32, 1 << 40, U64, 0x80000000)


@pytest.mark.parametrize("caps", CAP_SETS.values(), ids=CAP_SETS.keys())
def test_the_default_profile_compiles_to_what_it_means_for_every_number(caps: tuple[str, ...]) -> None:
    policy = resolve(default_profile(), caps, KERNEL)
    program = compile_policy(policy)
    check_program(program)
    numbers = [
        *range(0, 600),
        0x3FFFFFFF,
        0x40000000,
        0x40000027,
        0x7FFFFFFF,
        0x80000000,
        0xFFFFFFFE,
        0xFFFFFFFF,
    ]
    for nr in numbers:
        for arg in INTERESTING_ARGS:
            data = SeccompData(nr, args=(arg, arg, 0, 0, 0, 0))
            assert run(program, data) == policy.decide(data), (nr, arg)


def test_the_default_profile_is_small_and_cheap_to_run() -> None:
    compiled = compile_profile(default_profile(), DEFAULT_CAPABILITIES, KERNEL)
    assert compiled.instructions < 400  # 176 for Docker's default capabilities
    ranges = _ranges(resolve(default_profile(), DEFAULT_CAPABILITIES, KERNEL))
    depth = math.ceil(math.log2(len(ranges)))
    costs = {nr: execute(compiled.program, SeccompData(nr))[1] for nr in range(0, 600)}
    # Five prologue instructions, the search, and the leaf.
    assert max(costs[nr] for nr in (0, 1, 3, 9, 59, 202, 257, 262)) <= 5 + depth + 1
    assert max(costs.values()) <= 5 + depth + 20  # socket, personality and clone test arguments


def test_other_architectures_and_x32_numbers_are_refused() -> None:
    policy = resolve(default_profile(), DEFAULT_CAPABILITIES, KERNEL)
    program = compile_policy(policy)
    getpid = X86_64_SYSCALLS["getpid"]
    assert run(program, SeccompData(getpid)) == SECCOMP_RET_ALLOW
    assert run(program, SeccompData(getpid, arch=AUDIT_ARCH_I386)) == BAD_ARCH_ACTION
    assert run(program, SeccompData(getpid | 0x40000000)) == BAD_ARCH_ACTION == SECCOMP_RET_KILL_PROCESS
    # nr -1 is how a tracer skips a call: the default action, not a kill.
    assert run(program, SeccompData(-1)) == EPERM


def test_a_long_left_side_is_jumped_over_with_ja() -> None:
    condition = (Condition(0, CompareOp.GT, 5), Condition(1, CompareOp.MASKED_EQ, 0xF0, 0x10))
    rules = (Rule(SECCOMP_RET_ALLOW, condition), Rule(SECCOMP_RET_TRAP, (Condition(2, CompareOp.NE, 1),)))
    policy = Policy(EPERM, {nr: rules for nr in range(0, 120, 2)})
    instructions = compile_instructions(policy)
    assert any(insn.code == BPF_JMP_JA for insn in instructions)
    assert all(insn.jt <= 255 and insn.jf <= 255 for insn in instructions)
    program = encode(instructions)
    check_program(program)
    for nr in range(0, 122):
        for args in ((6, 0x1F, 1, 0, 0, 0), (6, 0x0F, 2, 0, 0, 0), (5, 0x10, 1, 0, 0, 0)):
            data = SeccompData(nr, args=args)
            assert run(program, data) == policy.decide(data)


def test_a_program_over_the_kernels_limit_is_refused() -> None:
    six = tuple(Condition(index, CompareOp.MASKED_EQ, index + 1, 0) for index in range(6))
    rules = tuple(Rule(SECCOMP_RET_ALLOW, six) for _ in range(4))
    with pytest.raises(ValueError, match="over the kernel's 4096"):
        compile_policy(Policy(EPERM, {nr: rules for nr in range(40)}))
    names = list(X86_64_SYSCALLS)[:60]
    args = [{"index": index, "value": index + 1, "op": "SCMP_CMP_MASKED_EQ"} for index in range(6)]
    rule = {"names": names, "action": "SCMP_ACT_ALLOW", "args": args}
    profile = parse_profile(_json({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule] * 4}))
    assert profile is not None
    with pytest.raises(InvalidArgument, match="cannot be compiled"):
        compile_profile(profile, (), KERNEL)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def test_the_checker_catches_what_the_kernel_would_refuse() -> None:
    good = compile_policy(Policy(SECCOMP_RET_ALLOW))
    check_program(good)
    with pytest.raises(ValueError, match="whole number"):
        check_program(good[:-1])
    with pytest.raises(ValueError, match="1 to 4096"):
        check_program(b"")
    with pytest.raises(ValueError, match="outside struct seccomp_data"):
        check_program(encode([Insn(0x20, k=64), Insn(0x06, k=0)]))
    with pytest.raises(ValueError, match="outside struct seccomp_data"):
        check_program(encode([Insn(0x20, k=2), Insn(0x06, k=0)]))
    with pytest.raises(ValueError, match="jump past the end"):
        check_program(encode([Insn(0x15, 3, 0, 1), Insn(0x06, k=0)]))
    with pytest.raises(ValueError, match="must return"):
        check_program(encode([Insn(0x06, k=0), Insn(0x20, k=0)]))
    with pytest.raises(ValueError, match="not allowed"):
        check_program(encode([Insn(0x61), Insn(0x06, k=0)]))


def test_instructions_round_trip_through_their_encoding() -> None:
    instructions = compile_instructions(resolve(default_profile(), DEFAULT_CAPABILITIES, KERNEL))
    assert decode(encode(instructions)) == instructions
    assert len(encode(instructions)) == 8 * len(instructions)


# The property: for random policies and random calls, the compiled program
# returns what Policy.decide says. Arguments are drawn around the values the
# conditions compare with, where an off-by-one or a wrong half would show.

ACTION_VALUES = (
    SECCOMP_RET_ALLOW,
    EPERM,
    errno_action(errno.ENOSYS),
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRAP,
)
ACTIONS = st.sampled_from([*ACTION_VALUES, SECCOMP_RET_LOG, SECCOMP_RET_TRACE | 1])
EDGES = st.sampled_from(
    [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 1 << 63, U64 - 1, U64]
)
VALUES = st.one_of(EDGES, st.integers(0, U64), st.integers(0, 0xFFFF))
NUMBERS = st.one_of(
    st.sampled_from([0, 1, 2, 59, 60, 231, 335, 435, 470, 0x3FFFFFFF]), st.integers(0, 0x3FFFFFFF)
)


@st.composite
def conditions(draw: st.DrawFn) -> tuple[Condition, ...]:
    result = []
    for index in draw(st.lists(st.integers(0, 5), max_size=3, unique=True)):
        op, value, datum = draw(st.sampled_from(list(CompareOp))), draw(VALUES), draw(VALUES)
        if op is CompareOp.MASKED_EQ and draw(st.booleans()):
            datum &= value  # a datum inside its mask, which some arguments can match
        result.append(Condition(index, op, value, datum))
    return tuple(result)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    numbers = draw(st.lists(NUMBERS, min_size=0, max_size=12, unique=True))
    syscalls = {
        nr: tuple(Rule(draw(ACTIONS), draw(conditions())) for _ in range(draw(st.integers(1, 4))))
        for nr in numbers
    }
    return Policy(draw(ACTIONS), syscalls)


def _near(value: int) -> list[int]:
    high, low = value >> 32, value & 0xFFFFFFFF
    return [
        value,
        (value + 1) & U64,
        (value - 1) & U64,
        value ^ (1 << 32),
        (low << 32 | high) & U64,
        high << 32 | ((low + 1) & 0xFFFFFFFF),
        high << 32 | ((low - 1) & 0xFFFFFFFF),
        ((high + 1) & 0xFFFFFFFF) << 32 | low,
        ((high - 1) & 0xFFFFFFFF) << 32 | low,
    ]


def _candidates(condition: Condition) -> list[int]:
    """Arguments at the edges of a condition: equal, one off, a half changed."""
    mask_complement = condition.value_two | (~condition.value & U64)
    return [*_near(condition.value), *_near(condition.value_two), *_near(mask_complement)]


@st.composite
def calls(draw: st.DrawFn, policy: Policy) -> SeccompData:
    """A call aimed at one rule of the policy, most of the time, or anywhere."""
    arch = draw(st.sampled_from([AUDIT_ARCH_X86_64] * 8 + [AUDIT_ARCH_I386, 0]))
    args = [draw(st.one_of(EDGES, st.integers(0, U64))) for _ in range(6)]
    targets = [(nr, rule) for nr, rules in policy.syscalls.items() for rule in rules]
    if targets and draw(st.integers(0, 9)) < 8:
        nr, rule = draw(st.sampled_from(targets))
        for condition in rule.conditions:
            args[condition.index] = draw(st.sampled_from(_candidates(condition)))
        nr |= draw(st.sampled_from([0] * 9 + [0x40000000]))
    else:
        nr = draw(
            st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0x40000000, 0xFFFFFFFF, 0x3FFFFFFF]))
        )
    return SeccompData(nr, arch, draw(st.integers(0, U64)), tuple(args))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_programs_agree_with_the_reference(data: st.DataObject) -> None:
    policy = data.draw(policies())
    program = compile_policy(policy)
    check_program(program)
    for _ in range(8):
        call = data.draw(calls(policy))
        assert run(program, call) == policy.decide(call), call
