"""Docker's rules for capabilities, ulimits and security options, on the host (pure)."""

from __future__ import annotations

import json

import pytest

from hyper.agent.guest_security import CAPABILITY_NAMES, RLIM_INFINITY, read_confinement
from hyper.errors import InvalidArgument
from hyper.runtime.seccomp_bpf import SECCOMP_RET_ALLOW, SeccompData, errno_action, run
from hyper.runtime.security import (
    DEFAULT_CAPABILITIES,
    SeccompMode,
    SecurityOptions,
    Ulimit,
    capability_numbers,
    check_group,
    check_paths,
    confinement,
    normalize_capability,
    parse_security_opts,
    parse_sysctls,
    parse_ulimit,
    resolve_capabilities,
    seccomp_filter,
    ulimit_from_api,
    ulimits_from_flags,
)
from hyper.runtime.syscalls_x86_64 import X86_64_SYSCALLS

KERNEL = (6, 1)


def test_the_capability_table_is_linux_up_to_checkpoint_restore() -> None:
    assert len(CAPABILITY_NAMES) == 41
    assert CAPABILITY_NAMES[0] == "CAP_CHOWN"
    assert CAPABILITY_NAMES[21] == "CAP_SYS_ADMIN"
    assert CAPABILITY_NAMES[24] == "CAP_SYS_RESOURCE"
    assert CAPABILITY_NAMES[38:] == ("CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")


def test_without_options_a_container_gets_dockers_fourteen_defaults() -> None:
    assert resolve_capabilities() == DEFAULT_CAPABILITIES
    assert len(DEFAULT_CAPABILITIES) == 14
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    assert "CAP_NET_RAW" in DEFAULT_CAPABILITIES


@pytest.mark.parametrize("name", ["net_admin", "NET_ADMIN", "cap_net_admin", "CAP_NET_ADMIN", "Net_Admin"])
def test_capability_names_take_any_case_with_or_without_the_prefix(name: str) -> None:
    assert normalize_capability(name) == "CAP_NET_ADMIN"
    assert resolve_capabilities(cap_add=[name])[-1] == "CAP_NET_ADMIN"


def test_an_unknown_capability_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability: 'NET_WIZARD'") as caught:
        resolve_capabilities(cap_add=["NET_WIZARD"])
    assert caught.value.hint is not None
    with pytest.raises(InvalidArgument, match="CAP_ALL"):
        resolve_capabilities(cap_drop=["CAP_ALL"])


def test_drop_removes_from_the_defaults_and_add_appends() -> None:
    caps = resolve_capabilities(cap_add=["SYS_PTRACE"], cap_drop=["chown", "NET_RAW"])
    assert "CAP_CHOWN" not in caps
    assert "CAP_NET_RAW" not in caps
    assert caps[-1] == "CAP_SYS_PTRACE"
    assert len(caps) == 13


def test_a_capability_both_added_and_dropped_stays_as_in_moby() -> None:
    assert "CAP_NET_ADMIN" in resolve_capabilities(cap_add=["NET_ADMIN"], cap_drop=["NET_ADMIN"])
    assert "CAP_CHOWN" in resolve_capabilities(cap_add=["CHOWN"], cap_drop=["CHOWN"])


def test_drop_all_keeps_only_the_added() -> None:
    assert resolve_capabilities(cap_drop=["ALL"]) == ()
    assert resolve_capabilities(cap_add=["chown", "kill"], cap_drop=["all"]) == ("CAP_CHOWN", "CAP_KILL")


def test_add_all_gives_every_capability_but_the_dropped() -> None:
    caps = resolve_capabilities(cap_add=["ALL"], cap_drop=["SYS_ADMIN", "MKNOD"])
    assert len(caps) == len(CAPABILITY_NAMES) - 2
    assert "CAP_SYS_ADMIN" not in caps and "CAP_MKNOD" not in caps
    # ALL in both lists: add wins, as TweakCapabilities checks the adds first.
    assert resolve_capabilities(cap_add=["ALL"], cap_drop=["ALL"]) == CAPABILITY_NAMES


def test_privileged_gets_everything_whatever_is_dropped() -> None:
    assert resolve_capabilities(cap_drop=["ALL"], privileged=True) == CAPABILITY_NAMES


def test_privileged_still_refuses_unknown_names() -> None:
    with pytest.raises(InvalidArgument):
        resolve_capabilities(cap_drop=["bogus"], privileged=True)


def test_duplicates_collapse_in_order() -> None:
    caps = resolve_capabilities(cap_add=["CHOWN", "SYS_TIME", "sys_time"])
    assert caps.count("CAP_CHOWN") == 1
    assert caps.count("CAP_SYS_TIME") == 1


def test_capability_numbers_are_the_kernels() -> None:
    assert capability_numbers(["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_CHOWN"]) == [0, 5, 21]
    assert capability_numbers(DEFAULT_CAPABILITIES) == [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
    with pytest.raises(InvalidArgument):
        capability_numbers(["ALL"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nofile=1024", Ulimit("nofile", 1024, 1024)),
        ("nofile=1024:2048", Ulimit("nofile", 1024, 2048)),
        ("core=0", Ulimit("core", 0, 0)),
        ("core=-1", Ulimit("core", -1, -1)),
        ("memlock=-1:-1", Ulimit("memlock", -1, -1)),
        ("stack=8192:-1", Ulimit("stack", 8192, -1)),
        ("nproc=+5", Ulimit("nproc", 5, 5)),
    ],
)
def test_ulimits_parse_as_docker_does(text: str, expected: Ulimit) -> None:
    assert parse_ulimit(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nofile", "invalid ulimit argument: nofile"),
        ("as=1024", "invalid ulimit type: as"),
        ("NOFILE=1", "invalid ulimit type: NOFILE"),
        ("nofile=1:2:3", "too many limit value arguments - 1:2:3, can only have up to two"),
        ("nofile=2048:1024", "ulimit soft limit must be less than or equal to hard limit: 2048 > 1024"),
        ("nofile=-1:1024", r"soft: -1 \(unlimited\), hard: 1024"),
        ("nofile=ten", "is not a number"),
        ("nofile=unlimited", "is not a number"),
        ("nofile= 10", "is not a number"),
        ("nofile=1_000", "is not a number"),
        ("nofile=", "is not a number"),
        ("nofile=-2", "negative"),
        ("nofile=99999999999999999999", "out of the 64-bit range"),
    ],
)
def test_bad_ulimits_get_dockers_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_ulimit(text)


def test_every_docker_ulimit_name_has_its_rlimit_number() -> None:
    expected = {
        "cpu": 0,
        "fsize": 1,
        "data": 2,
        "stack": 3,
        "core": 4,
        "rss": 5,
        "nproc": 6,
        "nofile": 7,
        "memlock": 8,
        "locks": 10,
        "sigpending": 11,
        "msgqueue": 12,
        "nice": 13,
        "rtprio": 14,
        "rttime": 15,
    }
    for name, number in expected.items():
        assert parse_ulimit(f"{name}=1").resource == number


def test_unlimited_becomes_rlim_infinity_for_the_guest() -> None:
    assert parse_ulimit("nofile=512:-1").rlimit() == (7, 512, RLIM_INFINITY)
    assert parse_ulimit("core=-1").rlimit() == (4, RLIM_INFINITY, RLIM_INFINITY)


def test_the_api_form_is_checked_like_the_flag() -> None:
    assert ulimit_from_api({"Name": "nofile", "Soft": 1024, "Hard": 4096}) == Ulimit("nofile", 1024, 4096)
    assert ulimit_from_api(Ulimit("core", -1, -1).api()) == Ulimit("core", -1, -1)
    cases: list[tuple[dict[str, object], str]] = [
        ({"Name": "bogus", "Soft": 1, "Hard": 1}, "invalid ulimit type: bogus"),
        ({"Name": "nofile", "Soft": 9, "Hard": 1}, "9 > 1"),
        ({"Name": "nofile", "Soft": "1", "Hard": 1}, "Soft must be an integer"),
        ({"Name": "nofile", "Soft": 1, "Hard": True}, "Hard must be an integer"),
        ({"Soft": 1, "Hard": 1}, "Name must be a string"),
        ({"Name": "nofile", "Soft": 1 << 70, "Hard": 1 << 70}, "64-bit"),
    ]
    for body, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            ulimit_from_api(body)


def test_repeated_ulimit_flags_keep_the_last_of_each_name() -> None:
    assert ulimits_from_flags(["nofile=1", "core=0", "nofile=2:3"]) == (
        Ulimit("core", 0, 0),
        Ulimit("nofile", 2, 3),
    )


def test_security_opts_default_to_dockers_profile_with_privileges_allowed() -> None:
    assert parse_security_opts([]) == SecurityOptions(False, SeccompMode.DEFAULT, None)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("no-new-privileges", True),
        ("no-new-privileges=true", True),
        ("no-new-privileges:true", True),
        ("no-new-privileges=1", True),
        ("no-new-privileges=false", False),
        ("no-new-privileges=False", False),
        ("no-new-privileges:0", False),
    ],
)
def test_no_new_privileges_forms(option: str, expected: bool) -> None:
    assert parse_security_opts([option]).no_new_privileges is expected


def test_the_last_no_new_privileges_wins() -> None:
    assert parse_security_opts(["no-new-privileges", "no-new-privileges=false"]).no_new_privileges is False


def test_seccomp_forms() -> None:
    assert parse_security_opts(["seccomp=unconfined"]).seccomp is SeccompMode.UNCONFINED
    assert parse_security_opts(["seccomp:unconfined"]).seccomp is SeccompMode.UNCONFINED
    assert parse_security_opts(["seccomp=builtin"]).seccomp is SeccompMode.DEFAULT
    profile = '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO"}]}'
    options = parse_security_opts([f"seccomp={profile}"])
    assert options.seccomp is SeccompMode.CUSTOM
    assert options.seccomp_profile == profile
    # An empty profile disables seccomp, as in moby.
    assert parse_security_opts(["seccomp={}"]).seccomp is SeccompMode.UNCONFINED


def test_the_noop_apparmor_and_label_forms_are_accepted() -> None:
    opts = ["apparmor=unconfined", "label=disable", "label:disable", "apparmor:unconfined"]
    assert parse_security_opts(opts) == SecurityOptions()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("apparmor=docker-default", "unsupported --security-opt: 'apparmor=docker-default'"),
        ("label=type:svirt_lxc_net_t", "unsupported --security-opt"),
        ("systempaths=unconfined", "unsupported --security-opt: 'systempaths=unconfined'"),
        ("no-new-privileges=maybe", "unsupported --security-opt: 'no-new-privileges=maybe'"),
        ("seccomp", "invalid --security-opt: 'seccomp'"),
        ("seccomp=", "invalid --security-opt"),
        ("nonsense", "invalid --security-opt: 'nonsense'"),
        ("seccomp=/etc/profile.json", "expected a profile's JSON text"),
        ("seccomp={not json", "not valid JSON"),
        ('seccomp={"defaultAction":"SCMP_ACT_BOGUS"}', "unknown action 'SCMP_ACT_BOGUS'"),
    ],
)
def test_other_security_opts_are_refused_by_name(option: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_security_opts([option])


def test_seccomp_filter_follows_mobys_choices() -> None:
    caps = DEFAULT_CAPABILITIES
    default = seccomp_filter(SecurityOptions(), caps, privileged=False, kernel=KERNEL)
    assert default is not None and default.flags == 0
    keyctl = SeccompData(X86_64_SYSCALLS["keyctl"])
    assert run(default.program, keyctl) == errno_action(1)
    assert seccomp_filter(parse_security_opts(["seccomp=unconfined"]), caps, False, KERNEL) is None
    assert seccomp_filter(SecurityOptions(), caps, privileged=True, kernel=KERNEL) is None
    logged = '{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}'
    custom = parse_security_opts([f"seccomp={logged}"])
    compiled = seccomp_filter(custom, caps, False, KERNEL)
    assert compiled is not None and compiled.flags == 2
    assert run(compiled.program, keyctl) == SECCOMP_RET_ALLOW


def test_the_profile_follows_the_capabilities() -> None:
    mount = SeccompData(X86_64_SYSCALLS["mount"])
    without = seccomp_filter(SecurityOptions(), DEFAULT_CAPABILITIES, False, KERNEL)
    added = resolve_capabilities(cap_add=["SYS_ADMIN"])
    with_admin = seccomp_filter(SecurityOptions(), added, False, KERNEL)
    assert without is not None and with_admin is not None
    assert run(without.program, mount) == errno_action(1)
    assert run(with_admin.program, mount) == SECCOMP_RET_ALLOW


def test_a_confinement_travels_to_the_guest_as_json_and_back() -> None:
    limits = ulimits_from_flags(["nofile=1024:2048", "core=-1"])
    bundle = confinement(
        cap_drop=["MKNOD"], security_opt=["no-new-privileges"], ulimits=limits, kernel=KERNEL
    )
    message = json.loads(json.dumps(bundle.message()))
    capabilities, no_new_privileges, rlimits, program, flags = read_confinement(message)
    assert capabilities == capability_numbers(resolve_capabilities(cap_drop=["MKNOD"]))
    assert 27 not in capabilities
    assert no_new_privileges is True
    assert rlimits == [(4, RLIM_INFINITY, RLIM_INFINITY), (7, 1024, 2048)]
    assert bundle.seccomp is not None and program == bundle.seccomp.program and flags == 0
    unconfined = confinement(privileged=True, kernel=KERNEL).message()
    assert unconfined["seccomp"] is None
    assert unconfined["capabilities"] == list(range(len(CAPABILITY_NAMES)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"capabilities": None}, "capabilities must be a list"),
        ({"capabilities": [64]}, "capabilities must be a list of integers from 0 to 63"),
        ({"capabilities": [True]}, "capabilities must be a list"),
        ({"no_new_privileges": "yes"}, "no_new_privileges must be true or false"),
        ({"rlimits": {}}, "rlimits must be a list"),
        ({"rlimits": [[7, 1]]}, r"each rlimit must be \[resource, soft, hard\]"),
        ({"rlimits": [[7, -1, 1]]}, "each rlimit must be a list of integers"),
        ({"seccomp": "not base64!"}, "not base64"),
        ({"seccomp": 12}, "seccomp must be base64 text or null"),
        ({"seccomp_flags": -1}, "seccomp_flags must be"),
    ],
)
def test_the_guest_refuses_a_malformed_confinement(change: dict[str, object], message: str) -> None:
    body = {**confinement(kernel=KERNEL).message(), **change}
    with pytest.raises(ValueError, match=message):
        read_confinement(body)


def test_namespaced_sysctls_pass_and_others_are_refused_naming_the_key() -> None:
    assert parse_sysctls(["net.ipv4.ip_forward=1", "kernel.shmmax=4096", "fs.mqueue.msg_max=20"]) == (
        ("net.ipv4.ip_forward", "1"),
        ("kernel.shmmax", "4096"),
        ("fs.mqueue.msg_max", "20"),
    )
    for text, message in [
        ("kernel.panic=1", "sysctl 'kernel.panic' is not in a separate kernel namespace"),
        ("vm.swappiness=1", "sysctl 'vm.swappiness' is not in a separate kernel namespace"),
        (
            "net.core.bpf_jit_harden=0",
            "sysctl 'net.core.bpf_jit_harden' is not in a separate kernel namespace",
        ),
        ("net.ipv4.ip_forward", "use --sysctl NAME=VALUE"),
        ("net/ipv4/ip_forward=1", "invalid sysctl name"),
        ("net..x=1", "invalid sysctl name"),
        ("net.core.somaxconn=1\n2", "must be one line"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            parse_sysctls([text])
        assert message in str(caught.value) + (caught.value.hint or "")


def test_group_add_and_paths_are_checked_and_carried_to_the_guest() -> None:
    assert check_group("audio") == "audio" and check_group("4000") == "4000"
    for bad in ("", "a:b", "a,b", str(1 << 32)):
        with pytest.raises(InvalidArgument):
            check_group(bad)
    with pytest.raises(InvalidArgument, match=r"not an absolute path without '\.\.'"):
        check_paths(["/proc/../x"], "masked path")
    message = confinement(
        kernel=(6, 1), group_add=["audio"], sysctls=["net.ipv4.ip_forward=1"], masked_paths=[]
    ).message()
    assert (message["groups"], message["sysctls"], message["masked_paths"]) == (
        ["audio"],
        [["net.ipv4.ip_forward", "1"]],
        [],
    )
    read_confinement(message)  # the guest takes what the host sends
    bad_fields: list[tuple[str, object]] = [
        ("groups", ["a:b"]),
        ("sysctls", [["kernel.panic", "1"]]),
        ("masked_paths", ["relative"]),
        ("readonly_paths", "/proc"),
    ]
    for key, wrong in bad_fields:
        with pytest.raises(ValueError):
            read_confinement({**message, key: wrong})
