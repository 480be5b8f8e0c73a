"""Inside the guest: confine a container's process the way runc does, just before it execs.

Standard library only (ctypes). The host decides what a container may do
(hyper.runtime.security and hyper.runtime.seccomp: Docker's capability set,
ulimits, no-new-privileges and a compiled seccomp program); `confine` applies
it to the calling process, which must be the forked, single-threaded child
that is about to execve the container's program. The steps run in runc's
order (libcontainer's standard init and finalizeNamespace):

1. resource limits, while the process may still raise them;
2. no_new_privs, when asked;
3. the seccomp filter, when no_new_privs is off: the kernel then demands
   CAP_SYS_ADMIN, which the process holds only until step 7;
4. the capability bounding set, down to the kept capabilities;
5. PR_SET_KEEPCAPS, so that changing the user keeps the permitted set;
6. the supplementary groups, the group, the user;
7. the effective, permitted and inheritable sets (capset), and the ambient
   set cleared. As moby does (oci.SetCapabilities), root keeps the kept set
   as effective and permitted; any other user gets none, as execve would
   give it, and keeps only the bounding set, which limits what a set-uid
   program can gain. Inheritable is empty (CVE-2022-24769), ambient too;
8. the seccomp filter, when no_new_privs is on: installed last, so that the
   filter need not allow the steps above.

`confine_message` does the same from the host's JSON message
(hyper.runtime.security.Confinement.message()), checked by `read_confinement`.

The capability table lives here so that the host (which names capabilities)
and the guest (which numbers them) share one copy without the guest importing
host modules.
"""

from __future__ import annotations

import binascii
import ctypes
import errno
import os

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# Linux's capability numbers (include/uapi/linux/capability.h), up to what
# the guest kernel (6.1) knows: the index is the number.
CAPABILITY_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITY_NAMES)}

RLIM_INFINITY = (1 << 64) - 1

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SYS_CAPSET = 126
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_BPF_MAXINSNS = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


class _Rlimit(ctypes.Structure):
    _fields_ = (("rlim_cur", ctypes.c_ulong), ("rlim_max", ctypes.c_ulong))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_libc.setrlimit.argtypes = [ctypes.c_int, ctypes.POINTER(_Rlimit)]


def _name(number: int) -> str:
    return CAPABILITY_NAMES[number] if number < len(CAPABILITY_NAMES) else f"capability {number}"


def _fail(step: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"confining the container process: {step}: {os.strerror(code)}")


def _prctl(option: int, arg: int, step: str) -> int:
    result: int = _libc.prctl(option, arg, 0, 0, 0)
    if result < 0:
        raise _fail(step)
    return result


def last_capability() -> int:
    """The highest capability number the running kernel knows.

    Probed with PR_CAPBSET_READ rather than read from /proc, which the
    container's root may not have at this point.
    """
    number = 0
    while number + 1 < 64 and _libc.prctl(PR_CAPBSET_READ, number + 1, 0, 0, 0) >= 0:
        number += 1
    return number


def set_rlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2); RLIM_INFINITY (or -1) for unlimited."""
    limit = _Rlimit(soft & RLIM_INFINITY, hard & RLIM_INFINITY)
    if _libc.setrlimit(resource, ctypes.byref(limit)) != 0:
        raise _fail(f"setrlimit({resource}, {soft}, {hard})")


def set_no_new_privileges() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def install_seccomp(program: bytes, flags: int = 0) -> None:
    """Install a classic-BPF seccomp program (`struct sock_filter[]`) on the calling thread.

    Needs no_new_privs or CAP_SYS_ADMIN; see `confine` for the order.
    """
    count = len(program) // _SOCK_FILTER_SIZE
    if not program or len(program) % _SOCK_FILTER_SIZE or count > _BPF_MAXINSNS:
        raise OSError(
            errno.EINVAL, f"a seccomp program of {len(program)} bytes is not 1 to 4096 instructions"
        )
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.addressof(buffer))
    result = _libc.syscall(
        ctypes.c_long(SYS_SECCOMP),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(flags),
        ctypes.byref(prog),
    )
    if result != 0:
        raise _fail("seccomp(SECCOMP_SET_MODE_FILTER)")


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in range(2):
        shift = 32 * index
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _libc.syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(header), ctypes.byref(data)) != 0:
        raise _fail("capset")


def confine(
    *,
    uid: int,
    gid: int,
    groups: Sequence[int],
    capabilities: Iterable[int],
    seccomp_program: bytes | None = None,
    seccomp_flags: int = 0,
    no_new_privileges: bool = False,
    rlimits: Iterable[tuple[int, int, int]] = (),
) -> None:
    """Confine the calling process, in runc's order (see the module docstring).

    `capabilities` are the numbers the container keeps (its bounding set; also
    its effective and permitted sets when `uid` is 0); numbers the running
    kernel does not know are left out. `rlimits` are (RLIMIT_* number, soft,
    hard) with RLIM_INFINITY or -1 for unlimited. Raises OSError naming the
    step that failed; the caller must then not exec.
    """
    last = last_capability()
    kept = 0
    for number in capabilities:
        if 0 <= number <= last:
            kept |= 1 << number
    for resource, soft, hard in rlimits:
        set_rlimit(resource, soft, hard)
    if no_new_privileges:
        set_no_new_privileges()
    if seccomp_program is not None and not no_new_privileges:
        install_seccomp(seccomp_program, seccomp_flags)
    for number in range(last + 1):
        if not kept & (1 << number) and _libc.prctl(PR_CAPBSET_READ, number, 0, 0, 0) == 1:
            _prctl(PR_CAPBSET_DROP, number, f"dropping {_name(number)} from the bounding set")
    _prctl(PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")
    try:
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise OSError(
            exc.errno, f"confining the container process: setting user {uid}:{gid}: {exc.strerror}"
        ) from exc
    _prctl(PR_SET_KEEPCAPS, 0, "prctl(PR_SET_KEEPCAPS)")
    held = kept if uid == 0 else 0
    _capset(held, held, 0)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
    if seccomp_program is not None and no_new_privileges:
        install_seccomp(seccomp_program, seccomp_flags)


def _integers(value: object, what: str, low: int, high: int) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and low <= item <= high for item in value
    ):
        raise ValueError(f"{what} must be a list of integers from {low} to {high}")
    return value


def _rlimit(value: object) -> tuple[int, int, int]:
    limit = _integers(value, "each rlimit", 0, RLIM_INFINITY)
    if len(limit) != 3:
        raise ValueError("each rlimit must be [resource, soft, hard]")
    return limit[0], limit[1], limit[2]


def read_confinement(
    message: dict[str, object],
) -> tuple[list[int], bool, list[tuple[int, int, int]], bytes | None, int]:
    """(capabilities, no_new_privileges, rlimits, seccomp program, seccomp flags) from the host's message.

    The message is hyper.runtime.security.Confinement.message(): capability
    numbers, no_new_privileges, rlimits as [resource, soft, hard] and the
    seccomp program in base64 (or null); and, when set, the supplementary
    groups, masked and read-only paths and sysctls (`read_groups`,
    `read_paths`, `read_sysctls`). Raises ValueError for anything else.
    """
    seccomp = message.get("seccomp")
    if seccomp is None:
        program = None
    elif isinstance(seccomp, str):
        try:
            program = binascii.a2b_base64(seccomp.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError(f"the seccomp program is not base64: {exc}") from exc
    else:
        raise ValueError("seccomp must be base64 text or null")
    no_new_privileges = message.get("no_new_privileges", False)
    flags = message.get("seccomp_flags", 0)
    if not isinstance(no_new_privileges, bool):
        raise ValueError("no_new_privileges must be true or false")
    if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags < 1 << 32:
        raise ValueError("seccomp_flags must be an unsigned 32-bit integer")
    rlimits = message.get("rlimits", [])
    if not isinstance(rlimits, list):
        raise ValueError("rlimits must be a list")
    capabilities = _integers(message.get("capabilities"), "capabilities", 0, 63)
    # What the process's setup rather than `confine` applies, checked here too.
    read_groups(message)
    read_paths(message, "masked_paths")
    read_paths(message, "readonly_paths")
    read_sysctls(message)
    return capabilities, no_new_privileges, [_rlimit(limit) for limit in rlimits], program, flags


def confine_message(message: dict[str, object], *, uid: int, gid: int, groups: Sequence[int]) -> None:
    """`confine` with what the host sent (see `read_confinement`) and the process's user."""
    capabilities, no_new_privileges, rlimits, program, flags = read_confinement(message)
    confine(
        uid=uid,
        gid=gid,
        groups=groups,
        capabilities=capabilities,
        seccomp_program=program,
        seccomp_flags=flags,
        no_new_privileges=no_new_privileges,
        rlimits=rlimits,
    )


# The sysctls runc lets a container set (libcontainer/configs/validate): those
# of the IPC and network namespaces. A Hyper VM's kernel belongs to its pod, and
# its containers share the VM's IPC and network namespaces, so these are the
# pod's; any other sysctl is the whole VM's and stays as the agent set it.
NAMESPACED_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
NAMESPACED_SYSCTL_PREFIXES = ("fs.mqueue.", "net.")
_SYSCTL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def sysctl_problem(name: str, value: str) -> str | None:
    """Why `name`=`value` cannot be set in a container, or None (host and guest share this check)."""
    parts = name.split(".")
    if not name or not set(name) <= _SYSCTL_NAME_CHARS or "" in parts:
        return f"invalid sysctl name {name!r}: use dotted names such as net.ipv4.ip_forward"
    if "\n" in value or "\0" in value:
        return f"the value of sysctl {name} must be one line"
    # The BPF JIT's sysctls sit under net.core but belong to the whole kernel
    # (a container's network namespace could not write them under runc either):
    # they stay hardened as the agent booted them.
    global_net = name.startswith("net.core.bpf_")
    if global_net or (name not in NAMESPACED_SYSCTLS and not name.startswith(NAMESPACED_SYSCTL_PREFIXES)):
        return f"sysctl {name!r} is not in a separate kernel namespace"
    return None


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings")
    return value


def read_groups(message: dict[str, object]) -> list[str]:
    """The supplementary groups to add (names or numbers) from the host's message."""
    groups = _strings(message.get("groups", []), "groups")
    for group in groups:
        if not group or ":" in group or "\n" in group:
            raise ValueError(f"invalid group {group!r}")
    return groups


def read_paths(message: dict[str, object], key: str) -> list[str] | None:
    """Masked or read-only paths replacing runc's defaults; None keeps the defaults."""
    if message.get(key) is None:
        return None
    paths = _strings(message[key], key)
    for path in paths:
        if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            raise ValueError(f"{key}: {path!r} is not an absolute path without '..'")
    return paths


def read_sysctls(message: dict[str, object]) -> list[tuple[str, str]]:
    """The sysctls to set before the container's main process starts, as [name, value] pairs."""
    pairs = []
    items = message.get("sysctls") or []
    if not isinstance(items, list):
        raise ValueError("sysctls must be a list of [name, value]")
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise ValueError("each sysctl must be [name, value]")
        problem = sysctl_problem(item[0], item[1])
        if problem is not None:
            raise ValueError(problem)
        pairs.append((item[0], item[1]))
    return pairs


def apply_sysctls(pairs: Iterable[tuple[str, str]]) -> None:
    """Write the sysctls into the guest kernel's /proc/sys (the VM's, shared by its containers)."""
    for name, value in pairs:
        try:
            with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
                f.write(value)
        except OSError as exc:
            raise OSError(exc.errno, f"setting sysctl {name}={value}: {exc.strerror}") from exc
