"""Compiled profiles installed for real, in forked children of the test (root, x86_64 Linux).

Each check runs in a child that installs a program and reports back over a
pipe; the test process itself is never filtered. The child keeps every
capability the test has, so an EPERM can only come from the filter, and a
control child without a filter shows the same calls failing otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hyper.agent.guest_security import install_seccomp, set_no_new_privileges
from hyper.runtime.seccomp import compile_profile, default_profile, parse_profile
from hyper.runtime.security import DEFAULT_CAPABILITIES

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or platform.machine() != "x86_64" or not Path("/proc/self/status").exists(),
    reason="installs seccomp filters: needs root on x86_64 Linux",
)

KERNEL = (6, 1)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SIGCHLD = 17
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000


def syscall(number: int, *args: int) -> int:
    """The raw system call: its result, or -errno."""
    result: int = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
    return -ctypes.get_errno() if result == -1 else result


def in_child(body: Callable[[], object]) -> tuple[object, int]:
    """Run `body` in a forked child; its JSON-able result and the child's wait status."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's exit code reports
        try:
            os.close(reader)
            try:
                result: object = {"ok": body()}
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(writer, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"null")
    if isinstance(report, dict) and "error" in report:
        pytest.fail(f"the child failed: {report['error']}")
    return (report or {}).get("ok"), status


def default_program() -> bytes:
    return compile_profile(default_profile(), DEFAULT_CAPABILITIES, KERNEL).program


def filtered(program: bytes, body: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        set_no_new_privileges()
        install_seccomp(program)
        return body()

    return run


# Calls Docker's default profile refuses, each with arguments that would fail
# harmlessly if the filter let them through.
REFUSED = {
    "keyctl": (250, 999),  # an unknown operation: EOPNOTSUPP
    "add_key": (248, 0, 0, 0, 0, 0),  # NULL type: EFAULT
    "unshare(CLONE_NEWUSER)": (272, CLONE_NEWUSER),  # would succeed, in this child only
    "mount": (165, 0, 0, 0, 0, 0),  # NULL target: EFAULT
    "kexec_load": (246, 0, 1000, 0, 1 << 16),  # too many segments, foreign arch: EINVAL
    "init_module": (175, 0, 0, 0),  # NULL image: EFAULT
    "bpf": (321, 9999, 0, 0),  # an unknown command: EINVAL
    "open_by_handle_at": (304, -1, 0, 0),  # a bad descriptor: EBADF
    "reboot": (169, 0, 0, 0, 0),  # bad magic numbers: EINVAL
    "clock_settime": (227, 999, 0),  # an unknown clock: EINVAL
}
# Whatever the host's configuration, these fail with something else than EPERM unfiltered.
CONTROLLED = ("keyctl", "add_key", "bpf", "clock_settime")


def probe_refused() -> dict[str, int]:
    return {name: syscall(*call) for name, call in REFUSED.items()}


def test_the_default_profile_refuses_dockers_dangerous_calls_with_eperm() -> None:
    results, _ = in_child(filtered(default_program(), probe_refused))
    assert results == {name: -errno.EPERM for name in REFUSED}
    control, _ = in_child(probe_refused)
    assert isinstance(control, dict)
    for name in CONTROLLED:
        assert control[name] not in (-errno.EPERM, 0), name


def ordinary_work() -> dict[str, object]:
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "file")
        path.write_bytes(b"hello")
        report["read"] = path.read_text()
        report["size"] = os.stat(path).st_size
        with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 5) as mapped:
            report["mmap"] = bytes(mapped[:5]).decode()
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(threading.current_thread().name), name="worker")
    thread.start()  # glibc tries clone3 (ENOSYS under the profile), then clone
    thread.join()
    report["thread"] = seen
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/true", ["/bin/true"])
    report["exec"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    report["clone3"] = syscall(435, 0, 0)
    return report


def test_ordinary_work_goes_on_under_the_default_profile() -> None:
    report, status = in_child(filtered(default_program(), ordinary_work))
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {
        "read": "hello",
        "size": 5,
        "mmap": "hello",
        "thread": ["worker"],
        "exec": 0,
        "clone3": -errno.ENOSYS,
    }


def clone_with(flags: int) -> int:
    result = syscall(56, flags, 0, 0, 0, 0)
    if result == 0:
        os._exit(0)  # the clone
    if result > 0:
        os.waitpid(result, 0)
        return 0
    return result


def test_clone_with_namespace_flags_is_refused() -> None:
    def body() -> list[int]:
        return [clone_with(SIGCHLD), clone_with(CLONE_NEWNS | SIGCHLD), clone_with(CLONE_NEWUSER | SIGCHLD)]

    results, _ = in_child(filtered(default_program(), body))
    assert results == [0, -errno.EPERM, -errno.EPERM]


def test_an_x32_system_call_kills_the_process() -> None:
    getpid_x32 = 0x40000000 | 39
    _, status = in_child(filtered(default_program(), lambda: syscall(getpid_x32)))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    # Unfiltered, the same number is merely unknown to the kernel (or an x32 getpid).
    _, status = in_child(lambda: syscall(getpid_x32))
    assert os.WIFEXITED(status)


def test_a_custom_profile_decides_by_arguments() -> None:
    rules = [
        {
            "names": ["getpgid"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 42,
            "args": [{"index": 0, "value": 12345, "op": "SCMP_CMP_EQ"}],
        },
        {
            "names": ["getpgid"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 43,
            "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_GT"}],
        },
        {
            "names": ["getsid"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 44,
            "args": [{"index": 0, "value": 0xF0, "valueTwo": 0x30, "op": "SCMP_CMP_MASKED_EQ"}],
        },
    ]
    profile = parse_profile(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}))
    assert profile is not None
    program = compile_profile(profile, (), KERNEL).program
    no_such_pid = 0x7FFFFFF0

    def body() -> list[int]:
        return [
            syscall(121, 12345),
            syscall(121, 1 << 32 | 5),
            syscall(121, 0) > 0,
            syscall(121, no_such_pid),
            syscall(124, 0x35),
            syscall(124, 0x7FFFFF45),
        ]

    results, _ = in_child(filtered(program, body))
    assert results == [-42, -43, True, -errno.ESRCH, -44, -errno.ESRCH]


def test_an_unconfined_child_has_no_filter() -> None:
    def seccomp_mode() -> str:
        status = Path("/proc/self/status").read_text()
        return next(line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:"))

    assert in_child(seccomp_mode)[0] == "0"
    assert in_child(filtered(default_program(), seccomp_mode))[0] == "2"
