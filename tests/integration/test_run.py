"""`hyper run` end to end: real QEMU VMs (TCG is fine), the real CLI, a local image.

No test asserts a wall-clock time; timeouts only stop a test that hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pytest

from hyper.vm.kernel import debian_kernel
from tests.integration.conftest import BUSYBOX, HyperEnv
from tests.support import images
from tests.support.registry import RegistryServer, registry_available

pytestmark = pytest.mark.vm


@pytest.fixture(params=["daemon", "direct"])
def hyper_env(request: pytest.FixtureRequest, hyper_env: HyperEnv) -> HyperEnv:
    """Every test on both paths of a foreground run: through hyperd (the default) and
    in the CLI's own process (--direct, HYPER_RUN_DIRECT=1)."""
    return hyper_env.through(request.param)


def test_output_streams_and_exit_status(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


def test_stdin_is_forwarded_with_i(hyper_env: HyperEnv) -> None:
    payload = os.urandom(300_000)
    result = hyper_env.run("run", "--rm", "-i", BUSYBOX, "sh", "-c", "wc -c; echo done", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"300000", b"done"]


def test_stdin_is_empty_without_i(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", "cat; echo end", input=b"ignored\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"end\n"


def test_env_workdir_user_and_hostname(hyper_env: HyperEnv) -> None:
    result = hyper_env.run(
        "run",
        "--rm",
        "-e",
        "GREETING=hello world",
        "-w",
        "/home/app/work",
        "-u",
        "app",
        "--hostname",
        "vmbox",
        BUSYBOX,
        "sh",
        "-c",
        'echo "$GREETING"; pwd; id -u; id -g; echo "$HOME"; hostname; grep -c vmbox /etc/hosts; echo $$',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "hello world",
        "/home/app/work",
        "1000",
        "1000",
        "/home/app",
        "vmbox",
        "1",
        "1",  # the command is PID 1 of its container, as in Docker
    ]


def test_numeric_user_and_group(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", "-u", "4242:4343", BUSYBOX, "sh", "-c", "id -u; id -g")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"4242", b"4343"]


def test_entrypoint_replaces_image_command(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", "--entrypoint", "echo", BUSYBOX, "from", "entrypoint")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"from entrypoint\n"


def test_docker_exit_statuses_for_start_failures(hyper_env: HyperEnv) -> None:
    missing = hyper_env.run("run", "--rm", BUSYBOX, "no-such-command")
    assert missing.returncode == 127
    assert b"executable file not found" in missing.stderr
    not_executable = hyper_env.run("run", "--rm", BUSYBOX, "/etc/passwd")
    assert not_executable.returncode == 126
    unknown_user = hyper_env.run("run", "--rm", "-u", "nobody-here", BUSYBOX, "true")
    assert unknown_user.returncode == 126
    assert b"unable to find user" in unknown_user.stderr
    assert list((hyper_env.state / "containers").iterdir()) == []


def test_hyper_failures_exit_125(hyper_env: HyperEnv) -> None:
    unknown_image = hyper_env.run("run", "--rm", "--pull", "never", "no/such-image", "true")
    assert unknown_image.returncode == 125
    assert b"no such image" in unknown_image.stderr
    unreachable = hyper_env.run("run", "--rm", "no/such-image", "true")  # no Docker Hub from here
    assert unreachable.returncode == 125
    assert b"Unable to find image 'no/such-image' locally" in unreachable.stderr
    assert b"cannot reach registry" in unreachable.stderr
    bad_flag = hyper_env.run("run", "--no-such-flag", BUSYBOX)
    assert bad_flag.returncode == 125
    bad_memory = hyper_env.run("run", "--rm", "--memory", "lots", BUSYBOX, "true")
    assert bad_memory.returncode == 125
    assert b"invalid memory size" in bad_memory.stderr
    no_qemu = hyper_env.run("run", "--rm", BUSYBOX, "true", HYPER_QEMU="/nonexistent/qemu")
    assert no_qemu.returncode == 125
    assert b"not installed" in no_qemu.stderr
    assert list((hyper_env.state / "containers").iterdir()) == []


def test_rm_leaves_nothing_behind(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", "echo data > /root/file")
    assert result.returncode == 0, result.stderr
    assert list((hyper_env.state / "containers").iterdir()) == []
    assert hyper_env.runtime_leftovers() == []
    assert hyper_env.qemu_processes() == []


def test_without_rm_the_container_is_kept_as_exited(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", BUSYBOX, "sh", "-c", "exit 5")
    assert result.returncode == 5
    (container,) = list((hyper_env.state / "containers").iterdir())
    if hyper_env.direct:
        record = (container / "config.json").read_text()
        assert '"state": "exited"' in record and '"exit_code": 5' in record
    else:
        assert hyper_env.containers() == [container.name]
        shown = hyper_env.run("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container.name)
        assert shown.stdout.split() == [b"exited", b"5"], shown.stderr
    assert (container / "writable.ext4").exists()
    assert hyper_env.runtime_leftovers() == []


def test_writable_layer_is_per_container(hyper_env: HyperEnv) -> None:
    first = hyper_env.run(
        "run", "--rm", BUSYBOX, "sh", "-c", "echo changed > /etc/motd; rm /bin/ls; cat /etc/motd"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"changed\n"
    second = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", "test ! -e /etc/motd && test -e /bin/ls")
    assert second.returncode == 0, second.stderr


def test_container_sees_proc_dev_and_tmp(hyper_env: HyperEnv) -> None:
    script = (
        "test -c /dev/null && test -c /dev/urandom && test -d /dev/pts && test -d /proc/1 "
        "&& head -c 4 /dev/zero | wc -c && touch /tmp/x && cat /etc/hostname"
    )
    result = hyper_env.run("run", "--rm", "--hostname", "box1", BUSYBOX, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"4", b"box1"]


def test_sigterm_reaches_the_container(hyper_env: HyperEnv) -> None:
    script = 'trap "echo got TERM; exit 42" TERM; echo ready; while true; do sleep 0.1; done'
    process = subprocess.Popen(
        [sys.executable, "-m", "hyper.cli.main", "run", "--rm", BUSYBOX, "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hyper_env.environ(),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 42, err
    assert out == b"got TERM\n"


def test_ctrl_c_while_booting_cleans_up(hyper_env: HyperEnv) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hyper.cli.main", "run", "--rm", BUSYBOX, "sleep", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hyper_env.environ(),
    )
    deadline = time.monotonic() + 60
    while not hyper_env.qemu_processes() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert hyper_env.qemu_processes() == []
    assert list((hyper_env.state / "containers").iterdir()) == []
    assert hyper_env.runtime_leftovers() == []


def test_tty_session(hyper_env: HyperEnv) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "hyper.cli.main", "run", "--rm", "-it", BUSYBOX, "sh"],
        env=hyper_env.environ(),
        dimensions=(30, 100),
        timeout=120,
    )
    try:
        child.expect(r"[#$] ")
        child.sendline("stty size; tty")
        child.expect(r"30 100")
        child.expect(r"/dev/pts/\d+")
        child.setwinsize(40, 120)
        time.sleep(0.5)  # the window change travels as a signal, then a message
        child.sendline("stty size")
        child.expect(r"40 120")
        child.sendline("sleep 60")
        time.sleep(1)
        child.sendintr()  # Ctrl-C goes through the raw terminal to the container's TTY
        child.expect(r"[#$] ")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 7


def test_two_vms_at_once(hyper_env: HyperEnv) -> None:
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyper.cli.main",
                "run",
                "--rm",
                "--hostname",
                f"vm{i}",
                BUSYBOX,
                "hostname",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hyper_env.environ(),
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    assert sorted(out for out, _ in outputs) == [b"vm0\n", b"vm1\n"]


def test_layers_and_whiteouts_in_the_guest(hyper_env: HyperEnv, tmp_path: Path) -> None:
    rootfs = images.busybox_rootfs_tar(tmp_path / "busybox.tar").read_bytes()
    lower = images.layer_tar(
        [
            images.directory("data"),
            images.file("data/keep", b"keep\n"),
            images.file("data/gone", b"gone\n"),
            images.directory("opaque"),
            images.file("opaque/old", b"old\n"),
        ]
    )
    upper = images.layer_tar(
        [
            images.file("data/.wh.gone"),
            images.directory("opaque"),
            images.file("opaque/.wh..wh..opq"),
            images.file("opaque/new", b"new\n"),
        ]
    )
    layers: list[images.LayerSource] = [rootfs, lower, upper]
    archive = images.docker_archive(
        tmp_path / "layered.tar",
        layers,
        images.image_config(layers, {"Cmd": ["sh"]}),
        "localhost/layered:1",
    )
    loaded = hyper_env.run("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    result = hyper_env.run("run", "--rm", "localhost/layered:1", "sh", "-c", "ls /data; ls /opaque")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"keep", b"new"]


def test_kernel_panic_is_reported(hyper_env: HyperEnv) -> None:
    # A missing init makes the kernel panic; panic=-1 reboots, and QEMU exits.
    result = hyper_env.run("run", "--rm", BUSYBOX, "true", HYPER_KERNEL_PARAMS="rdinit=/nonexistent")
    assert result.returncode == 125
    assert b"panicked" in result.stderr
    assert hyper_env.qemu_processes() == []
    assert list((hyper_env.state / "containers").iterdir()) == []


def test_guest_that_never_answers_times_out(hyper_env: HyperEnv) -> None:
    # panic=0 makes the panicked guest hang instead of rebooting.
    result = hyper_env.run(
        "run",
        "--rm",
        BUSYBOX,
        "true",
        HYPER_KERNEL_PARAMS="rdinit=/nonexistent panic=0",
        HYPER_BOOT_TIMEOUT="20",
    )
    assert result.returncode == 125
    assert b"did not answer within 20s" in result.stderr
    assert hyper_env.qemu_processes() == []
    assert hyper_env.runtime_leftovers() == []


def test_info_names_accelerator_and_reason(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("info")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "QEMU emulator version" in text
    accel_line = next(line for line in text.splitlines() if line.startswith("Accelerator:"))
    assert ("tcg" in accel_line or "kvm" in accel_line) and "(" in accel_line
    forced = hyper_env.run("info", HYPER_ACCEL="tcg")
    assert b"tcg (HYPER_ACCEL=tcg)" in forced.stdout


def test_bring_your_own_kernel(hyper_env: HyperEnv) -> None:
    # Debian's own bzImage, given explicitly: unpacked into the cache, with its
    # modules found beside its /boot as on an installed system.
    debian_kernel(hyper_env.cache / "kernels")  # fetched once into the shared cache
    bzimages = sorted((hyper_env.cache / "kernels").glob("*/boot/vmlinuz-*"))
    result = hyper_env.run("run", "--rm", "--kernel", str(bzimages[-1]), BUSYBOX, "uname", "-r")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == bzimages[-1].name.removeprefix("vmlinuz-")
    info = hyper_env.run("info", HYPER_KERNEL=str(bzimages[-1]))
    assert f"file {bzimages[-1]}".encode() in info.stdout


def test_run_pulls_a_missing_image_from_a_registry(hyper_env: HyperEnv, tmp_path: Path) -> None:
    if not registry_available():
        pytest.skip("Debian's docker-registry is not installed (make test installs it)")
    with RegistryServer(tmp_path / "registry") as registry:
        remote = f"{registry.url.removeprefix('http://')}/team/busybox:v1"
        assert hyper_env.run("tag", BUSYBOX, remote).returncode == 0
        pushed = hyper_env.run("push", remote)
        assert pushed.returncode == 0, pushed.stderr
        assert hyper_env.run("rmi", remote).returncode == 0
        result = hyper_env.run("run", "--rm", remote, "echo", "pulled and ran")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"pulled and ran\n"
    assert f"Unable to find image '{remote}' locally".encode() in result.stderr
    assert b"Digest: sha256:" in result.stderr


def test_unprivileged_user(hyper_env: HyperEnv, tmp_path: Path) -> None:
    # Root ignores file modes, so only a real unprivileged run shows what a user
    # without root meets (this found read-only layer disks that could not be sized).
    if os.getuid() != 0:
        pytest.skip("switching to the user nobody needs root")
    home = Path(tempfile.mkdtemp(prefix="hyper-nobody-", dir="/tmp"))
    os.chmod(home, 0o777)
    try:
        probe = _as_nobody(home, f"{sys.executable} -c 'import hyper'")
        if probe.returncode != 0:
            pytest.skip(f"the user nobody cannot use this checkout: {probe.stderr.strip()[:200]}")
        # The kernel is shared by hard links; appliance and template are nobody's own.
        kernels = home / "cache" / "kernels"
        shutil.copytree(
            hyper_env.cache / "kernels", kernels, copy_function=os.link, ignore=shutil.ignore_patterns(".*")
        )
        # Only the directories change hands: the linked files are the shared cache's own inodes.
        for directory in (home / "cache", kernels):
            os.chown(directory, 65534, 65534)
        make_image = (
            "from pathlib import Path; from hyper.image import ImageStore; "
            "from tests.support.images import make_busybox_image; "
            f"make_busybox_image(ImageStore(Path('{home}/state/images')))"
        )
        built = _as_nobody(home, f'{sys.executable} -c "{make_image}"')
        assert built.returncode == 0, built.stderr
        script = "id -u; stat -c %u /bin/busybox; touch /new && echo ok"
        path = "--direct " if hyper_env.direct else ""  # else through a hyperd of nobody's own
        command = f"{sys.executable} -m hyper.cli.main run {path}--rm {BUSYBOX} sh -c '{script}'"
        result = _as_nobody(home, command)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["0", "0", "ok"]  # root inside the VM, whoever runs Hyper
    finally:
        _stop_daemon(home / "run" / "hyperd.sock")
        subprocess.run(["pkill", "-9", "-f", f"qemu-system.*{home}"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _stop_daemon(socket: Path) -> None:
    """Stop the hyperd answering on `socket`, if one does (SIGTERM; its VMs are gone by then)."""
    from hyper.cli.client import DaemonClient
    from hyper.errors import HyperError

    if not socket.exists():
        return
    try:
        with DaemonClient(socket) as client:
            pid = client.ping().pid
    except HyperError:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _as_nobody(home: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = (
        f"HOME={home} HYPER_STATE_DIR={home}/state HYPER_CACHE_DIR={home}/cache HYPER_RUNTIME_DIR={home}/run "
        f"PYTHONPATH={Path(__file__).resolve().parents[2]}"
    )
    return subprocess.run(
        ["su", "nobody", "-s", "/bin/sh", "-c", f"cd {home} && env {env} {command}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_confinement_options_of_the_cli_reach_the_container(hyper_env: HyperEnv, tmp_path: Path) -> None:
    # A profile file that the CLI reads and sends, as the docker CLI does: everything
    # allowed but mkdir, which fails with EPERM.
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    script = (
        "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'\n"
        "echo nofile=$(ulimit -n)\n"
        "echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')\n"
        "mkdir /tmp/x 2>/dev/null && echo mkdir=ok || echo mkdir=denied\n"
        "echo pid=$$\n"
        "echo groups=$(id -G | tr ' ' ,)\n"
        "echo msgmax=$(cat /proc/sys/kernel/msgmax)\n"
    )
    result = hyper_env.run(
        "run", "--rm", "--cap-drop", "chown", "--cap-add", "SYS_PTRACE", "--ulimit", "nofile=256:512",
        "--shm-size", "32m", "--security-opt", f"seccomp={profile}", "--init", "--group-add", "4321",
        "--sysctl", "kernel.msgmax=12345", BUSYBOX, "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.decode().split())
    caps = int(seen["CapEff"], 16)
    assert not caps & (1 << 0) and caps & (1 << 19)  # CAP_CHOWN dropped, CAP_SYS_PTRACE added
    assert (seen["Seccomp"], seen["mkdir"]) == ("2", "denied")  # the file's profile, not Docker's default
    assert (seen["nofile"], seen["shm"]) == ("256", str(32 << 10))
    assert seen["pid"] != "1"  # --init is PID 1
    assert (seen["groups"], seen["msgmax"]) == ("0,4321", "12345")
    refused = hyper_env.run("run", "--rm", "--cap-add", "NO_SUCH_CAP", BUSYBOX, "true")
    assert refused.returncode == 125 and b"unknown capability" in refused.stderr
