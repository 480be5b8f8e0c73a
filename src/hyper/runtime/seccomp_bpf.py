"""Seccomp policies and their classic-BPF programs for x86_64, with a reference interpreter.

A `Policy` is what a seccomp profile means once it is resolved for one
container (hyper.runtime.seccomp turns Docker's JSON into one): for each
system call number, rules tried in order, each with an action and argument
conditions that must all hold; the first rule that matches decides, and a
call no rule matches gets the default action. `Policy.decide` is that
meaning, written plainly; `compile_policy` turns the policy into the
`struct sock_filter[]` the kernel runs, and `run` interprets such a program
over a `struct seccomp_data`, so that tests check the two against each other.

The program:
- refuses any architecture but x86_64 (the kernel tags i386 and x32 calls
  of a 64-bit task) and the x32 ABI's numbers (bit 30 set), with
  KILL_PROCESS, as libseccomp does for an architecture a filter lacks;
  nr -1, which a tracer uses to skip a call, falls to the default action;
- dispatches on the call number with a balanced binary search over ranges
  of numbers that share an outcome (the guest runs under software
  emulation, where every instruction counts: a lookup costs about eight
  comparisons instead of a scan of 350);
- compares 64-bit arguments as two 32-bit halves, unsigned, as libseccomp does.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF
BAD_ARCH_ACTION = SECCOMP_RET_KILL_PROCESS

BPF_MAXINSNS = 4096
MAX_JUMP = 255  # jt and jf are 8-bit forward offsets

# Classic BPF opcodes the compiler emits (and the interpreter runs).
BPF_LD_W_ABS = 0x20
BPF_ALU_AND_K = 0x54
BPF_JMP_JA = 0x05
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JGT_K = 0x25
BPF_JMP_JGE_K = 0x35
BPF_JMP_JSET_K = 0x45
BPF_RET_K = 0x06
_CONDITIONAL = {BPF_JMP_JEQ_K, BPF_JMP_JGT_K, BPF_JMP_JGE_K, BPF_JMP_JSET_K}

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_DATA = struct.Struct("<IIQ6Q")
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_INSN = struct.Struct("<HBBI")


def _arg_offset(index: int, high: bool) -> int:
    return 16 + 8 * index + (4 if high else 0)  # little-endian: low word first


def errno_action(code: int) -> int:
    return SECCOMP_RET_ERRNO | (code & SECCOMP_RET_DATA)


class CompareOp(enum.Enum):
    """libseccomp's argument comparisons (enum scmp_compare)."""

    NE = "SCMP_CMP_NE"
    LT = "SCMP_CMP_LT"
    LE = "SCMP_CMP_LE"
    EQ = "SCMP_CMP_EQ"
    GE = "SCMP_CMP_GE"
    GT = "SCMP_CMP_GT"
    MASKED_EQ = "SCMP_CMP_MASKED_EQ"


@dataclass(frozen=True)
class Condition:
    """One argument test: `args[index] OP value`, or `(args[index] & value) == value_two`."""

    index: int
    op: CompareOp
    value: int
    value_two: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5:
            raise ValueError(f"argument index {self.index} is not 0 to 5")
        if not (0 <= self.value <= _U64 and 0 <= self.value_two <= _U64):
            raise ValueError("condition values must be unsigned 64-bit integers")

    def holds(self, arg: int) -> bool:
        arg &= _U64
        match self.op:
            case CompareOp.NE:
                return arg != self.value
            case CompareOp.LT:
                return arg < self.value
            case CompareOp.LE:
                return arg <= self.value
            case CompareOp.EQ:
                return arg == self.value
            case CompareOp.GE:
                return arg >= self.value
            case CompareOp.GT:
                return arg > self.value
            case CompareOp.MASKED_EQ:
                return (arg & self.value) == self.value_two


@dataclass(frozen=True)
class Rule:
    """An action taken when every condition holds (no conditions: always)."""

    action: int
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        indexes = [condition.index for condition in self.conditions]
        if len(set(indexes)) != len(indexes):
            # libseccomp allows one comparison per argument in a rule; the
            # profile layer splits such rules into alternatives, as runc does.
            raise ValueError("a rule may test each argument once")

    def matches(self, args: Sequence[int]) -> bool:
        return all(condition.holds(args[condition.index]) for condition in self.conditions)


@dataclass(frozen=True)
class SeccompData:
    """The kernel's `struct seccomp_data` for one system call."""

    nr: int
    arch: int = AUDIT_ARCH_X86_64
    instruction_pointer: int = 0
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)

    def pack(self) -> bytes:
        args = tuple(arg & _U64 for arg in self.args)
        return _DATA.pack(self.nr & _U32, self.arch & _U32, self.instruction_pointer & _U64, *args)


@dataclass(frozen=True)
class Policy:
    """What a container may call: rules per x86_64 system call number, and a default."""

    default_action: int
    syscalls: Mapping[int, tuple[Rule, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for number in self.syscalls:
            if not 0 <= number < X32_SYSCALL_BIT:
                raise ValueError(f"system call number {number} is out of the x86_64 range")

    def decide(self, data: SeccompData) -> int:
        """The action the kernel must take: the reference the compiled program is tested against."""
        if data.arch & _U32 != AUDIT_ARCH_X86_64:
            return BAD_ARCH_ACTION
        nr = data.nr & _U32
        if nr >= X32_SYSCALL_BIT:
            return self.default_action if nr == _U32 else BAD_ARCH_ACTION
        for rule in self.syscalls.get(nr, ()):
            if rule.matches(data.args):
                return rule.action
        return self.default_action


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0


def _ld(offset: int) -> Insn:
    return Insn(BPF_LD_W_ABS, k=offset)


def _ret(action: int) -> Insn:
    return Insn(BPF_RET_K, k=action)


# Jump targets while a condition is emitted: where to go when it holds and
# when it fails; resolved to offsets once the rule's layout is known.
_NEXT, _PASS, _FAIL = "next", "pass", "fail"


@dataclass(frozen=True)
class _Pending:
    code: int
    jt: str = _NEXT
    jf: str = _NEXT
    k: int = 0


def _condition_code(condition: Condition) -> list[_Pending]:
    """A condition's instructions: on success they fall through to the next one."""
    index, value = condition.index, condition.value
    high, low = value >> 32, value & _U32
    ld_high = _Pending(BPF_LD_W_ABS, k=_arg_offset(index, high=True))
    ld_low = _Pending(BPF_LD_W_ABS, k=_arg_offset(index, high=False))
    jeq, jgt, jge = BPF_JMP_JEQ_K, BPF_JMP_JGT_K, BPF_JMP_JGE_K
    match condition.op:
        case CompareOp.EQ:
            return [ld_high, _Pending(jeq, _NEXT, _FAIL, high), ld_low, _Pending(jeq, _PASS, _FAIL, low)]
        case CompareOp.NE:
            return [ld_high, _Pending(jeq, _NEXT, _PASS, high), ld_low, _Pending(jeq, _FAIL, _PASS, low)]
        case CompareOp.GT | CompareOp.GE:
            last = jgt if condition.op is CompareOp.GT else jge
            return [
                ld_high,
                _Pending(jgt, _PASS, _NEXT, high),
                _Pending(jeq, _NEXT, _FAIL, high),
                ld_low,
                _Pending(last, _PASS, _FAIL, low),
            ]
        case CompareOp.LT | CompareOp.LE:
            # The negation of GE and GT.
            last = jge if condition.op is CompareOp.LT else jgt
            return [
                ld_high,
                _Pending(jgt, _FAIL, _NEXT, high),
                _Pending(jeq, _NEXT, _PASS, high),
                ld_low,
                _Pending(last, _FAIL, _PASS, low),
            ]
        case CompareOp.MASKED_EQ:
            mask, datum = condition.value, condition.value_two
            return [
                ld_high,
                _Pending(BPF_ALU_AND_K, k=mask >> 32),
                _Pending(jeq, _NEXT, _FAIL, datum >> 32),
                ld_low,
                _Pending(BPF_ALU_AND_K, k=mask & _U32),
                _Pending(jeq, _PASS, _FAIL, datum & _U32),
            ]


def _rules_code(rules: Sequence[Rule], default_action: int) -> list[Insn]:
    """The rules of one system call, tried in order, then the default."""
    code: list[Insn] = []
    for rule in rules:
        pending: list[tuple[_Pending, int]] = []  # (instruction, end of its condition)
        for condition in rule.conditions:
            block = _condition_code(condition)
            end = len(pending) + len(block)
            pending.extend((insn, end) for insn in block)
        fail = len(pending) + 1  # past the rule's return
        start = len(code)
        for position, (insn, end) in enumerate(pending):
            targets = {_NEXT: position + 1, _PASS: end, _FAIL: fail}
            jt = targets[insn.jt] - position - 1
            jf = targets[insn.jf] - position - 1
            if insn.code not in _CONDITIONAL:
                jt = jf = 0
            if jt > MAX_JUMP or jf > MAX_JUMP:
                raise ValueError("a seccomp rule is too long to compile")
            code.append(Insn(insn.code, jt, jf, insn.k))
        code.append(_ret(rule.action))
        assert len(code) - start == fail
    code.append(_ret(default_action))
    return code


# A leaf of the dispatch tree: either one action for a whole range of
# numbers, or the rules of one system call (keyed by its number).
_Outcome = tuple[str, int]


def _outcome(number: int, rules: tuple[Rule, ...], default_action: int) -> _Outcome:
    if not rules:
        return ("ret", default_action)
    if not rules[0].conditions:
        return ("ret", rules[0].action)  # later rules can never be reached
    if all(rule.action == default_action for rule in rules):
        return ("ret", default_action)
    return ("rules", number)


def _ranges(policy: Policy) -> list[tuple[int, _Outcome]]:
    """(first number, outcome) for consecutive ranges covering 0 to the x32 bit."""
    ranges: list[tuple[int, _Outcome]] = []

    def add(start: int, outcome: _Outcome) -> None:
        if ranges and outcome[0] == "ret" and ranges[-1][1] == outcome:
            return
        ranges.append((start, outcome))

    cursor = 0
    for number in sorted(policy.syscalls):
        if number > cursor:
            add(cursor, ("ret", policy.default_action))
        add(number, _outcome(number, policy.syscalls[number], policy.default_action))
        cursor = number + 1
    if cursor < X32_SYSCALL_BIT:
        add(cursor, ("ret", policy.default_action))
    return ranges


def _dispatch(ranges: list[tuple[int, _Outcome]], policy: Policy) -> list[Insn]:
    """A balanced binary search over the ranges, the leaves in line."""
    if len(ranges) == 1:
        kind, value = ranges[0][1]
        if kind == "ret":
            return [_ret(value)]
        return _rules_code(policy.syscalls[value], policy.default_action)
    middle = len(ranges) // 2
    left = _dispatch(ranges[:middle], policy)
    right = _dispatch(ranges[middle:], policy)
    boundary = ranges[middle][0]
    if len(left) <= MAX_JUMP:
        return [Insn(BPF_JMP_JGE_K, len(left), 0, boundary), *left, *right]
    # Too far for an 8-bit offset: hop over the left side with a 32-bit ja.
    return [Insn(BPF_JMP_JGE_K, 0, 1, boundary), Insn(BPF_JMP_JA, k=len(left)), *left, *right]


def compile_instructions(policy: Policy) -> list[Insn]:
    prologue = [
        _ld(_ARCH_OFFSET),
        Insn(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _ret(BAD_ARCH_ACTION),
        _ld(_NR_OFFSET),
        Insn(BPF_JMP_JGE_K, 0, 3, X32_SYSCALL_BIT),
        Insn(BPF_JMP_JEQ_K, 1, 0, _U32),
        _ret(BAD_ARCH_ACTION),  # an x32 number, or out of range
        _ret(policy.default_action),  # nr -1: a tracer skipping the call
    ]
    program = prologue + _dispatch(_ranges(policy), policy)
    if len(program) > BPF_MAXINSNS:
        raise ValueError(f"the seccomp program has {len(program)} instructions, over the kernel's 4096")
    return program


def encode(instructions: Sequence[Insn]) -> bytes:
    return b"".join(_INSN.pack(insn.code, insn.jt, insn.jf, insn.k) for insn in instructions)


def decode(program: bytes) -> list[Insn]:
    if len(program) % _INSN.size:
        raise ValueError(f"a seccomp program is a whole number of {_INSN.size}-byte instructions")
    return [Insn(*fields) for fields in _INSN.iter_unpack(program)]


def compile_policy(policy: Policy) -> bytes:
    """The `struct sock_filter[]` that enforces `policy` (see the module docstring)."""
    return encode(compile_instructions(policy))


def check_program(program: bytes) -> None:
    """Reject what the kernel's checker (bpf_check_classic, seccomp_check_filter) would.

    Covers the instructions this module emits: aligned 32-bit loads inside
    struct seccomp_data, forward jumps that stay inside the program, and a
    return as the last instruction.
    """
    instructions = decode(program)
    if not 0 < len(instructions) <= BPF_MAXINSNS:
        raise ValueError(f"{len(instructions)} instructions: a program has 1 to 4096")
    allowed = {BPF_LD_W_ABS, BPF_ALU_AND_K, BPF_JMP_JA, BPF_RET_K, *_CONDITIONAL}
    for pc, insn in enumerate(instructions):
        if insn.code not in allowed:
            raise ValueError(f"instruction {pc}: opcode {insn.code:#x} is not allowed")
        if insn.code == BPF_LD_W_ABS and (insn.k % 4 or insn.k + 4 > _DATA.size):
            raise ValueError(f"instruction {pc}: load at offset {insn.k} is outside struct seccomp_data")
        if insn.code == BPF_JMP_JA and pc + 1 + insn.k >= len(instructions):
            raise ValueError(f"instruction {pc}: jump past the end")
        if insn.code in _CONDITIONAL and pc + 1 + max(insn.jt, insn.jf) >= len(instructions):
            raise ValueError(f"instruction {pc}: jump past the end")
    if instructions[-1].code != BPF_RET_K:
        raise ValueError("the last instruction must return")


def execute(program: bytes, data: SeccompData) -> tuple[int, int]:
    """Interpret a classic-BPF seccomp program over `data` as the kernel would.

    Returns the action and how many instructions ran (the cost of the call).
    """
    instructions = decode(program)
    packed = data.pack()
    accumulator = 0
    pc = 0
    count = 0
    while pc < len(instructions):
        insn = instructions[pc]
        pc += 1
        count += 1
        match insn.code:
            case 0x20:  # BPF_LD_W_ABS
                (accumulator,) = struct.unpack_from("<I", packed, insn.k)
            case 0x54:  # BPF_ALU_AND_K
                accumulator &= insn.k
            case 0x05:  # BPF_JMP_JA
                pc += insn.k
            case 0x15:  # BPF_JMP_JEQ_K
                pc += insn.jt if accumulator == insn.k else insn.jf
            case 0x25:  # BPF_JMP_JGT_K
                pc += insn.jt if accumulator > insn.k else insn.jf
            case 0x35:  # BPF_JMP_JGE_K
                pc += insn.jt if accumulator >= insn.k else insn.jf
            case 0x45:  # BPF_JMP_JSET_K
                pc += insn.jt if accumulator & insn.k else insn.jf
            case 0x06:  # BPF_RET_K
                return insn.k, count
            case _:
                raise ValueError(f"instruction {pc - 1}: opcode {insn.code:#x} is not supported")
    raise ValueError("the program ran past its end without returning")


def run(program: bytes, data: SeccompData) -> int:
    """The action the program returns for `data`."""
    return execute(program, data)[0]
