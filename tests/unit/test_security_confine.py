"""The guest's `confine`, run for real in forked children of the test (root, x86_64 Linux).

What the child reports is read back from the kernel (/proc/self/status,
getrlimit, getresuid), not from what confine was asked to do.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import tempfile
from pathlib import Path

import pytest

from hyper.agent.guest_security import confine, confine_message
from hyper.runtime.security import (
    DEFAULT_CAPABILITIES,
    SecurityOptions,
    capability_numbers,
    confinement,
    parse_security_opts,
    parse_ulimit,
    resolve_capabilities,
    seccomp_filter,
)
from tests.unit.test_seccomp_live import in_child, syscall

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/proc/self/status").exists(),
    reason="changes credentials and installs seccomp filters: needs root on Linux",
)

KERNEL = (6, 1)


def mask(names: tuple[str, ...]) -> int:
    return sum(1 << number for number in capability_numbers(names))


def status() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def credentials() -> dict[str, object]:
    fields = status()
    return {
        "CapEff": int(fields["CapEff"], 16),
        "CapPrm": int(fields["CapPrm"], 16),
        "CapBnd": int(fields["CapBnd"], 16),
        "CapInh": int(fields["CapInh"], 16),
        "CapAmb": int(fields["CapAmb"], 16),
        "NoNewPrivs": fields["NoNewPrivs"],
        "Seccomp": fields["Seccomp"],
        "uid": list(os.getresuid()),
        "gid": list(os.getresgid()),
        "groups": sorted(os.getgroups()),
    }


def confined(
    caps: tuple[str, ...],
    *,
    security_opts: tuple[str, ...] = (),
    uid: int = 0,
    gid: int = 0,
    groups: tuple[int, ...] = (),
    ulimits: tuple[str, ...] = (),
) -> dict[str, object]:
    """Confine a child as the guest would and report what the kernel then says."""
    options = parse_security_opts(security_opts)
    compiled = seccomp_filter(options, caps, privileged=False, kernel=KERNEL)

    def body() -> dict[str, object]:
        confine(
            uid=uid,
            gid=gid,
            groups=list(groups),
            capabilities=capability_numbers(caps),
            seccomp_program=None if compiled is None else compiled.program,
            seccomp_flags=0 if compiled is None else compiled.flags,
            no_new_privileges=options.no_new_privileges,
            rlimits=[parse_ulimit(text).rlimit() for text in ulimits],
        )
        report = credentials()
        report["nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
        report["core"] = list(resource.getrlimit(resource.RLIMIT_CORE))
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"])
        report["exec"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return report

    report, _ = in_child(body)
    assert isinstance(report, dict)
    return report


def test_root_keeps_exactly_dockers_defaults_under_the_default_profile() -> None:
    # Limits within the test's own: raising a hard limit needs CAP_SYS_RESOURCE.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(256, hard)
    core_hard = resource.getrlimit(resource.RLIMIT_CORE)[1]  # -1: unlimited
    report = confined(
        DEFAULT_CAPABILITIES,
        security_opts=("no-new-privileges",),
        ulimits=(f"nofile={soft}:{hard}", f"core=0:{core_hard}"),
    )
    defaults = mask(DEFAULT_CAPABILITIES)
    assert report["CapEff"] == report["CapPrm"] == report["CapBnd"] == defaults
    assert report["CapInh"] == report["CapAmb"] == 0
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "2"
    assert report["uid"] == [0, 0, 0] and report["gid"] == [0, 0, 0]
    assert report["groups"] == []
    assert report["nofile"] == [soft, hard]
    assert report["core"] == [0, core_hard]
    assert report["exec"] == 0


def test_another_user_gets_no_effective_capabilities_but_the_bounding_set() -> None:
    # Without no-new-privileges the filter goes in while the child is still
    # root: after the switch to uid 1000 the kernel would refuse it.
    report = confined(DEFAULT_CAPABILITIES, uid=1000, gid=1001, groups=(27, 1001))
    assert report["CapEff"] == report["CapPrm"] == report["CapInh"] == report["CapAmb"] == 0
    assert report["CapBnd"] == mask(DEFAULT_CAPABILITIES)
    assert report["NoNewPrivs"] == "0"
    assert report["Seccomp"] == "2"
    assert report["uid"] == [1000, 1000, 1000]
    assert report["gid"] == [1001, 1001, 1001]
    assert report["groups"] == [27, 1001]
    assert report["exec"] == 0


def test_unconfined_means_no_filter_and_added_capabilities_are_kept() -> None:
    caps = resolve_capabilities(cap_add=["SYS_ADMIN", "NET_ADMIN"], cap_drop=["MKNOD"])
    report = confined(caps, security_opts=("seccomp=unconfined",))
    assert report["Seccomp"] == "0"
    assert report["CapEff"] == mask(caps)
    assert report["CapEff"] & (1 << 21) and not report["CapEff"] & (1 << 27)


def chown_as(caps: tuple[str, ...]) -> int:
    with tempfile.NamedTemporaryFile() as target:

        def body() -> int:
            confine(uid=0, gid=0, groups=[], capabilities=capability_numbers(caps))
            try:
                os.chown(target.name, 4321, -1)
            except OSError as exc:
                return exc.errno or -1
            return 0

        result, _ = in_child(body)
    assert isinstance(result, int)
    return result


def test_a_dropped_capability_is_really_gone() -> None:
    assert chown_as(DEFAULT_CAPABILITIES) == 0
    assert chown_as(resolve_capabilities(cap_drop=["CHOWN"])) == errno.EPERM


def test_the_seccomp_profile_follows_the_kept_capabilities() -> None:
    # CAP_SYS_ADMIN kept: the default profile lets unshare through.
    def unshare_as(caps: tuple[str, ...]) -> int:
        compiled = seccomp_filter(SecurityOptions(), caps, privileged=False, kernel=KERNEL)
        assert compiled is not None

        def body() -> int:
            confine(
                uid=0,
                gid=0,
                groups=[],
                capabilities=capability_numbers(caps),
                seccomp_program=compiled.program,
                no_new_privileges=True,
            )
            return syscall(272, 0x00020000)  # unshare(CLONE_NEWNS)

        result, _ = in_child(body)
        assert isinstance(result, int)
        return result

    assert unshare_as(DEFAULT_CAPABILITIES) == -errno.EPERM
    assert unshare_as(resolve_capabilities(cap_add=["SYS_ADMIN"])) == 0


def test_a_failing_step_is_named() -> None:
    def body() -> str:
        try:
            confine(uid=0, gid=0, groups=[], capabilities=[], rlimits=[(99, 1, 1)])
        except OSError as exc:
            return f"{exc.errno} {exc.strerror}"
        return "confined"

    result, _ = in_child(body)
    assert result == f"{errno.EINVAL} confining the container process: setrlimit(99, 1, 1): Invalid argument"


def test_the_hosts_message_confines_the_guests_child() -> None:
    # What hyperd builds, through JSON as the agent protocol carries it, to confine_message.
    bundle = confinement(cap_add=["SYS_PTRACE"], security_opt=["no-new-privileges=true"], kernel=KERNEL)
    message = json.loads(json.dumps(bundle.message()))

    def body() -> dict[str, object]:
        confine_message(message, uid=0, gid=0, groups=[])
        return credentials()

    report, _ = in_child(body)
    assert isinstance(report, dict)
    expected = mask(resolve_capabilities(cap_add=["SYS_PTRACE"]))
    assert report["CapEff"] == report["CapBnd"] == expected
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "2"
