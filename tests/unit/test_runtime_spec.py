"""What runs and how: the process, sizes, the kernel command line and /etc files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.errors import Category, FailedPrecondition, InvalidArgument
from hyper.humanize import parse_duration, parse_size
from hyper.image import ImageConfig
from hyper.runtime.spec import (
    CONTAINER_TRANSITIONS,
    MIN_MEMORY_MIB,
    ContainerState,
    RunOptions,
    etc_files,
    host_tsc_khz,
    kernel_cmdline,
    merge_env,
    parse_cpus,
    parse_memory,
    process_spec,
    start_failure_status,
)
from hyper.vm.accel import Accel
from hyper.vm.appliance import AGENT_INIT, Appliance

IMAGE = ImageConfig(
    env=("PATH=/usr/bin:/bin", "LANG=C.UTF-8"),
    entrypoint=("/docker-entrypoint.sh",),
    cmd=("nginx", "-g", "daemon off;"),
    working_dir="/srv",
    user="www-data",
)


def spec_args(config: ImageConfig, **options: object) -> tuple[str, ...]:
    return process_spec(config, RunOptions("img", **options), {}).args  # type: ignore[arg-type]


def test_image_entrypoint_then_cmd() -> None:
    assert spec_args(IMAGE) == ("/docker-entrypoint.sh", "nginx", "-g", "daemon off;")


def test_user_command_replaces_cmd_only() -> None:
    assert spec_args(IMAGE, command=("sh", "-c", "ls")) == ("/docker-entrypoint.sh", "sh", "-c", "ls")


def test_entrypoint_option_replaces_entrypoint_and_drops_image_cmd() -> None:
    assert spec_args(IMAGE, entrypoint="/bin/sh") == ("/bin/sh",)
    assert spec_args(IMAGE, entrypoint="/bin/sh", command=("-c", "id")) == ("/bin/sh", "-c", "id")


def test_empty_entrypoint_option_clears_it() -> None:
    assert spec_args(IMAGE, entrypoint="", command=("ls", "/")) == ("ls", "/")
    with pytest.raises(FailedPrecondition):
        spec_args(IMAGE, entrypoint="")


def test_image_without_entrypoint_runs_cmd() -> None:
    assert spec_args(ImageConfig(cmd=("sh",))) == ("sh",)


def test_no_command_at_all_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        spec_args(ImageConfig())
    assert caught.value.hint is not None
    assert "img" in caught.value.message


def test_workdir_user_and_stdio_come_from_options_then_image() -> None:
    spec = process_spec(IMAGE, RunOptions("img", tty=True, interactive=True), {})
    assert (spec.cwd, spec.user, spec.tty, spec.stdin) == ("/srv", "www-data", True, True)
    spec = process_spec(IMAGE, RunOptions("img", workdir="/tmp", user="1000:1000"), {})
    assert (spec.cwd, spec.user, spec.tty, spec.stdin) == ("/tmp", "1000:1000", False, False)
    spec = process_spec(ImageConfig(cmd=("sh",)), RunOptions("img"), {})
    assert (spec.cwd, spec.user) == ("/", "0")


@pytest.mark.parametrize("workdir", ["srv", "./srv", "~/x"])
def test_relative_workdir_is_invalid(workdir: str) -> None:
    with pytest.raises(InvalidArgument):
        process_spec(IMAGE, RunOptions("img", workdir=workdir), {})
    with pytest.raises(InvalidArgument):
        process_spec(ImageConfig(cmd=("sh",), working_dir=workdir), RunOptions("img"), {})


def test_env_merge_overrides_in_place_and_appends_new() -> None:
    spec = process_spec(IMAGE, RunOptions("img", env=("LANG=en", "NEW=1", "EMPTY=")), {})
    assert spec.env == ("PATH=/usr/bin:/bin", "LANG=en", "NEW=1", "EMPTY=")


def test_env_name_alone_takes_the_host_value_or_unsets() -> None:
    host = {"TOKEN": "s3cret", "LANG": "fr_FR"}
    assert merge_env(("LANG=C", "KEEP=1"), ("TOKEN", "LANG", "KEEP", "ABSENT"), host) == (
        "LANG=fr_FR",
        "TOKEN=s3cret",
    )


def test_env_value_may_hold_equals_signs() -> None:
    assert merge_env((), ("A=b=c",), {}) == ("A=b=c",)


@pytest.mark.parametrize("item", ["=value", ""])
def test_env_without_a_name_is_invalid(item: str) -> None:
    with pytest.raises(InvalidArgument):
        merge_env((), (item,), {})


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("512m", 512),
        ("512M", 512),
        ("512mb", 512),
        ("1g", 1024),
        ("1GB", 1024),
        ("1.5g", 1536),
        ("0.5g", 512),
        ("1073741824", 1024),
        ("1073741824b", 1024),
        ("262144k", 256),
        ("1t", 1 << 20),
        (" 256m ", 256),
        (f"{MIN_MEMORY_MIB}m", MIN_MEMORY_MIB),
    ],
)
def test_parse_memory(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "abc", "-1g", "1x", "1 g", "1e9", "12mm"])
def test_parse_memory_refuses_malformed_sizes(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_memory(text)
    assert caught.value.hint is not None


@pytest.mark.parametrize("text", [f"{MIN_MEMORY_MIB - 1}m", "64m", "1k", "0"])
def test_parse_memory_refuses_too_little(text: str) -> None:
    with pytest.raises(InvalidArgument, match="minimum"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "cpus"), [("1", 1), ("2", 2), ("1.5", 2), ("0.25", 1), ("4", 4), ("4.0", 4)]
)
def test_parse_cpus_rounds_fractions_up(text: str, cpus: int) -> None:
    assert parse_cpus(text, 4) == cpus


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "4.5", "5", "inf"])
def test_parse_cpus_refuses_bad_or_too_many(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_cpus(text, 4)


def test_parse_cpus_refuses_nan() -> None:
    with pytest.raises(InvalidArgument):
        parse_cpus("nan", 4)


APPLIANCE = Appliance(Path("/cache/appliance.cpio"), "/usr/bin/python3.11", "key")


def test_kernel_cmdline_under_tcg_sets_the_tsc_and_ends_with_init_args() -> None:
    words = kernel_cmdline(APPLIANCE, Accel.TCG, 2_400_000, "loglevel=7  console=hvc0").split()
    assert words[:4] == ["console=ttyS0", "quiet", "panic=-1", "reboot=t"]
    assert "tsc_early_khz=2400000" in words
    assert words[-5:] == ["--", "-I", "-S", "-B", AGENT_INIT]
    assert words.count("--") == 1
    dashes = words.index("--")
    assert words.index("rdinit=/usr/bin/python3.11") < dashes
    # The user's words come after ours, so that the kernel lets them override.
    assert words.index("tsc_early_khz=2400000") < words.index("loglevel=7") < dashes
    assert words.index("console=ttyS0") < words.index("console=hvc0") < dashes


def test_kernel_cmdline_under_kvm_or_without_a_frequency_has_no_tsc() -> None:
    assert "tsc_early_khz" not in kernel_cmdline(APPLIANCE, Accel.KVM, 2_400_000)
    assert "tsc_early_khz" not in kernel_cmdline(APPLIANCE, Accel.TCG, None)
    line = kernel_cmdline(APPLIANCE, Accel.KVM, None)
    assert (
        line == f"console=ttyS0 quiet panic=-1 reboot=t rdinit=/usr/bin/python3.11 -- -I -S -B {AGENT_INIT}"
    )


def test_host_tsc_khz() -> None:
    cpuinfo = (
        "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2399.998\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n"
    )
    assert host_tsc_khz(cpuinfo) == 2_399_998
    assert host_tsc_khz("cpu MHz : 3000\n") == 3_000_000
    assert host_tsc_khz("processor : 0\nBogoMIPS : 100\n") is None
    assert host_tsc_khz("") is None


def test_etc_files_drop_loopback_nameservers_and_keep_the_rest() -> None:
    resolv = (
        "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n\nsearch lan\noptions edns0\nnameserver\n"
    )
    files = etc_files("box", resolv)
    assert (
        files["resolv.conf"] == "# generated\nnameserver 10.0.0.2\n\nsearch lan\noptions edns0\nnameserver\n"
    )
    assert files["hostname"] == "box\n"
    assert files["hosts"].startswith("127.0.0.1\tlocalhost box\n")
    assert "::1\tlocalhost" in files["hosts"]


def test_etc_files_with_only_loopback_servers_is_empty() -> None:
    assert etc_files("box", "nameserver 127.0.0.1\n")["resolv.conf"] == ""


def test_etc_files_drop_ipv6_loopback_nameserver() -> None:
    assert etc_files("box", "nameserver ::1\nnameserver 10.0.0.2\n")["resolv.conf"] == "nameserver 10.0.0.2\n"


@pytest.mark.parametrize(
    ("stage", "errno", "status"),
    [("exec", 2, 127), ("exec", 13, 126), ("user", 2, 126), ("cwd", None, 126), (None, None, 126)],
)
def test_start_failure_status(stage: str | None, errno: int | None, status: int) -> None:
    assert start_failure_status(stage, errno) == status


def test_container_transitions_end_in_removed() -> None:
    assert CONTAINER_TRANSITIONS[ContainerState.REMOVED] == frozenset()
    assert ContainerState.CREATED not in CONTAINER_TRANSITIONS[ContainerState.RUNNING]
    assert set(CONTAINER_TRANSITIONS) == set(ContainerState)


def test_errors_are_categorized() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_memory("x")
    assert caught.value.category is Category.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2m", 120.0),
        ("10us", 1e-5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--health-interval") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "-1s", "1s2"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(InvalidArgument, match="--health-interval"):
        parse_duration(text, "--health-interval")


@pytest.mark.parametrize(
    ("text", "size"), [("64m", 64 << 20), ("1g", 1 << 30), ("1024", 1024), ("2MB", 2 << 20)]
)
def test_docker_sizes(text: str, size: int) -> None:
    assert parse_size(text, "--shm-size") == size


def test_a_vm_bigger_than_the_host_is_refused_before_it_costs_a_template() -> None:
    from hyper.errors import ResourceExhausted
    from hyper.runtime.spec import admit_vm_size, host_memory_mib

    host = host_memory_mib("MemTotal:       24576000 kB\nMemFree: 1 kB\n")
    assert host == 24000
    admit_vm_size(512, 2, host, 2)
    for memory, cpus in ((host + 1, 1), (64, 1), (512, 3), (512, 0)):
        with pytest.raises(ResourceExhausted) as caught:
            admit_vm_size(memory, cpus, host, 2)
        assert caught.value.hint
