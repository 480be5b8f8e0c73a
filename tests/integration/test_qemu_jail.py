"""QEMU's confinement, read from /proc of real VMs, and a foreground run that can always be stopped.

What each VM's QEMU runs as (uid, groups, capabilities, seccomp, no_new_privs,
namespaces), its cgroup and limits, what its root holds, that all of it is
gone after the VM, and the same for hyperd's VMs across a hyperd restart.
Then the ways a stuck foreground run ends: two SIGTERMs to a frozen VM, an
unheard SIGTERM, SIGKILL of `hyper run` itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyper.vm import cgroups
from hyper.vm.confine import JAIL_DIRECTORY
from hyper.vm.jail import JAIL_ID_BASE, JAIL_ID_SLOTS, QEMU_OVERHEAD_MIB, cgroup_limits
from hyper.vm.qemu_command import SANDBOX
from tests.integration.conftest import BUSYBOX, HyperEnv
from tests.integration.test_daemon import Hyperd

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="QEMU's own uid and cgroup need root"),
]
NO_CAPABILITIES = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Polls `condition`; the timeout only bounds a hang, nothing asserts a speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def qemu_pid(find: Callable[[], list[int]]) -> int:
    """The one QEMU (past its jailer, which has the same pid before it executes QEMU)."""
    found: list[int] = []

    def running() -> bool:
        found[:] = [p for p in find() if _comm(p).startswith("qemu-system")]
        return len(found) == 1

    until(running, "one QEMU process")
    return found[0]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def env_qemus(env: HyperEnv) -> list[int]:
    return [int(line.split()[0]) for line in env.qemu_processes()]


def cgroup_dirs(pid: int) -> list[Path]:
    """The directories of the process's own cgroups in the hierarchies Hyper uses."""
    host = cgroups.probe()
    assert host is not None, "no cgroup hierarchy is mounted"
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for hierarchy in host.hierarchies:
            if (host.version == "v2" and controllers == "") or hierarchy.controllers & set(
                controllers.split(",")
            ):
                dirs.append(hierarchy.mount / path.lstrip("/"))
    return sorted(set(dirs))


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def running_as(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def assert_confined(pid: int, *, memory_mib: int = 512, cpus: int = 1) -> tuple[int, list[Path]]:
    """Everything the jail promises, read from the host's /proc. Returns uid and cgroups."""
    info = status(pid)
    uids, gids = info["Uid"].split(), info["Gid"].split()
    uid = int(uids[0])
    assert JAIL_ID_BASE < uid < JAIL_ID_BASE + JAIL_ID_SLOTS
    assert uids == [str(uid)] * 4 and gids == [str(uid)] * 4  # its own uid and gid, real to saved
    assert set(info["Groups"].split()) <= {str(JAIL_ID_BASE)}  # at most the template group
    assert info["NoNewPrivs"] == "1"
    assert info["Seccomp"] == "2"
    for caps in NO_CAPABILITIES:
        assert int(info[caps], 16) == 0, caps
    words = cmdline(pid)
    assert words[words.index("-sandbox") + 1] == SANDBOX
    for namespace in ("mnt", "net", "ipc"):
        assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}"), (
            namespace
        )

    dirs = cgroup_dirs(pid)
    assert dirs and all(d.name.endswith(f"-{uid}") for d in dirs)
    limits = cgroup_limits(memory_mib, cpus)
    values = {
        f.name: f.read_text().strip() for d in dirs for f in d.iterdir() if f.is_file() and _readable(f)
    }
    if "memory.limit_in_bytes" in values:  # cgroup v1
        assert int(values["memory.limit_in_bytes"]) == (memory_mib + QEMU_OVERHEAD_MIB) << 20
        assert int(values["cpu.cfs_quota_us"]) == limits.cpu_quota_us
    else:
        assert int(values["memory.max"]) == limits.memory_bytes
        assert values["cpu.max"] == f"{limits.cpu_quota_us} {limits.cpu_period_us}"
    assert int(values["pids.max"]) == limits.pids
    assert (JAIL_DIRECTORY / "ids" / str(uid)).exists()

    # Its root: the libraries read-only, and of the VM's own files only those QEMU opens by path.
    kernel, initrd = words[words.index("-kernel") + 1], words[words.index("-initrd") + 1]
    allowed = {"/etc/ld.so.cache", kernel, initrd, "/dev/null", "/dev/zero", "/dev/urandom", "/dev/net/tun"}
    allowed |= {w.split("mem-path=", 1)[1].split(",share=")[0] for w in words if "mem-path=" in w}
    root = Path(f"/proc/{pid}/root")
    found = set()
    for directory, subdirs, files in os.walk(root):
        relative = "/" + str(Path(directory).relative_to(root)).lstrip(".")
        if relative == "/":
            subdirs[:] = [d for d in subdirs if d != "usr"]
        found |= {os.path.join(relative, f) for f in files}
    assert found == allowed & found and {kernel, initrd} <= found, found - allowed
    return uid, dirs


def _readable(path: Path) -> bool:
    try:
        path.read_text()
    except OSError:
        return False
    return True


def assert_gone(uid: int, dirs: list[Path]) -> None:
    until(lambda: not any(d.exists() for d in dirs), "the VM's cgroups to go")
    until(lambda: not (JAIL_DIRECTORY / "ids" / str(uid)).exists(), "the VM's uid lease to end")
    # A detached QEMU stays a zombie until init reaps it.
    until(lambda: running_as(uid) == [], "no process to run as the VM's uid")


def run_dirs_left(env: HyperEnv) -> list[Path]:
    """What is left under the runtime directory (foreground VMs' run directories
    live under its foreground/)."""
    return [p for p in env.runtime.rglob("*") if p != env.runtime / "foreground"]


def start_run(env: HyperEnv, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hyper.cli.main", "run", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env.environ(),
    )


def test_a_foreground_vm_is_confined_and_leaves_nothing(hyper_env: HyperEnv) -> None:
    process = start_run(hyper_env, "--rm", "-i", BUSYBOX, "sh", "-c", "echo started; read line; echo $line")
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline() == b"started\n"
        pid = qemu_pid(lambda: env_qemus(hyper_env))
        uid, dirs = assert_confined(pid)
        # The state and runtime directories are nowhere in its root: its disks are descriptors.
        for hidden in (hyper_env.state, hyper_env.runtime):
            assert not Path(f"/proc/{pid}/root{hidden}").exists()
        opened = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert [path for path in opened if path.endswith("writable.ext4")]
        # Started from the VM template, whose state came in over fd: (no `cat` to spawn).
        words = cmdline(pid)
        assert words[words.index("-incoming") + 1] == "defer"
        assert "uri" not in " ".join(words)
        out, err = process.communicate(b"bye\n", timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out == b"bye\n"
    assert b"booting instead" not in err
    assert_gone(uid, dirs)


def test_a_frozen_vm_ends_on_two_sigterms(hyper_env: HyperEnv) -> None:
    """hyper holds the VM's only QMP connection, so the test freezes QEMU with
    SIGSTOP: like a QMP `stop` or an I/O-error pause, the guest answers nothing."""
    process = start_run(hyper_env, "--rm", BUSYBOX, "sh", "-c", "echo started; sleep 1000")
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        pid = qemu_pid(lambda: env_qemus(hyper_env))
        uid, dirs = int(status(pid)["Uid"].split()[0]), cgroup_dirs(pid)
        os.kill(pid, signal.SIGSTOP)
        process.send_signal(signal.SIGTERM)  # forwarded; the frozen guest never sees it
        # Again (and again: two signals sent at once may arrive as one) until torn down.
        until(lambda: _signal_until_exit(process), "hyper run to end")
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert env_qemus(hyper_env) == []
    assert run_dirs_left(hyper_env) == []
    assert list((hyper_env.state / "containers").iterdir()) == []  # --rm held
    assert_gone(uid, dirs)


def _signal_until_exit(process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(0.2)
    return process.poll() is not None


def test_a_forwarded_sigterm_nobody_heeds_ends_the_run_as_killed(hyper_env: HyperEnv) -> None:
    # PID 1 of a container ignores signals it has no handler for, as in Docker.
    process = start_run(hyper_env, "--rm", BUSYBOX, "sh", "-c", "echo started; sleep 1000")
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 137, err
    assert env_qemus(hyper_env) == []
    assert run_dirs_left(hyper_env) == []


def test_killing_hyper_run_kills_its_qemu(hyper_env: HyperEnv) -> None:
    process = start_run(hyper_env, "--rm", BUSYBOX, "sh", "-c", "echo started; sleep 1000")
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        pid = qemu_pid(lambda: env_qemus(hyper_env))
        process.kill()
        process.wait()
        until(lambda: _comm(pid) == "" or status(pid)["State"].startswith("Z"), "QEMU to die with hyper run")
    finally:
        process.kill()
    until(lambda: env_qemus(hyper_env) == [], "no QEMU of this run")


@pytest.fixture
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[Hyperd]:
    state = Path(tempfile.mkdtemp(prefix="hyperd-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
    daemon = Hyperd(state, runtime, shared_cache)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        for pid in daemon.qemu_processes():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def test_hyperds_vms_are_confined_adopted_and_cleaned_up(hyperd: Hyperd) -> None:
    container = hyperd.run(["sleep", "1000"], memory_mib=256, cpus=2)
    pid = qemu_pid(hyperd.qemu_processes)
    uid, dirs = assert_confined(pid, memory_mib=256, cpus=2)
    hyperd.stop()
    assert status(pid)["Uid"].split()[0] == str(uid)  # outlives hyperd: no parent-death signal
    hyperd.start()  # adopts it, and finds its cgroup and uid in its record
    assert hyperd.request("GET", f"/v1/containers/{container}").json()["state"] == "running"
    assert hyperd.request("POST", f"/v1/containers/{container}/stop", params={"t": "1"}).status_code < 300
    until(lambda: hyperd.qemu_processes() == [], "the VM to stop")
    assert_gone(uid, dirs)


def test_a_vm_that_died_while_hyperd_was_down_leaves_no_cgroup(hyperd: Hyperd) -> None:
    hyperd.run(["sleep", "1000"])
    pid = qemu_pid(hyperd.qemu_processes)
    uid, dirs = int(status(pid)["Uid"].split()[0]), cgroup_dirs(pid)
    hyperd.stop()
    os.kill(pid, signal.SIGKILL)
    until(lambda: hyperd.qemu_processes() == [], "QEMU to die")
    hyperd.start()
    assert_gone(uid, dirs)


def test_info_says_what_confines_qemu(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert "Confinement:  QEMU runs in a privileged jail (docs/confinement.md)" in lines
    start = lines.index("Confinement:  QEMU runs in a privileged jail (docs/confinement.md)") + 1
    layers = [line for line in lines[start:] if line.startswith("  ")][:6]
    assert lines[start + 6].startswith("Network:"), lines[start:]
    assert len(layers) == 6 and all(line.startswith("  yes  ") for line in layers), layers


def _pgrep(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def _as_nobody(home: Path, command: str) -> list[str]:
    env = (
        f"HOME={home} HYPER_STATE_DIR={home}/state HYPER_CACHE_DIR={home}/cache HYPER_RUNTIME_DIR={home}/run "
        f"PYTHONPATH={Path(__file__).resolve().parents[2]}"
    )
    return ["su", "nobody", "-s", "/bin/sh", "-c", f"cd {home} && env {env} {command}"]


def test_an_unprivileged_users_vm_is_jailed_in_a_user_namespace(hyper_env: HyperEnv) -> None:
    home = Path(tempfile.mkdtemp(prefix="hyper-nobody-", dir="/tmp"))
    os.chmod(home, 0o777)
    try:
        probe = subprocess.run(_as_nobody(home, f"{sys.executable} -c 'import hyper'"), check=False)
        if probe.returncode != 0:
            pytest.skip("the user nobody cannot use this checkout")
        kernels = home / "cache" / "kernels"
        shutil.copytree(
            hyper_env.cache / "kernels", kernels, copy_function=os.link, ignore=shutil.ignore_patterns(".*")
        )
        for directory in (home / "cache", kernels):
            os.chown(directory, 65534, 65534)
        make_image = (
            "from pathlib import Path; from hyper.image import ImageStore; "
            "from tests.support.images import make_busybox_image; "
            f"make_busybox_image(ImageStore(Path('{home}/state/images')))"
        )
        assert (
            subprocess.run(_as_nobody(home, f'{sys.executable} -c "{make_image}"'), check=False).returncode
            == 0
        )
        info = subprocess.run(
            _as_nobody(home, f"{sys.executable} -m hyper.cli.main info"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert "QEMU runs in a user-namespace jail" in info.stdout, info.stdout + info.stderr
        assert "  no   own uid and gid: needs root" in info.stdout
        assert "  no   own cgroup: needs root" in info.stdout
        run = f"{sys.executable} -m hyper.cli.main run --rm -i {BUSYBOX} sh -c 'echo started; read line'"
        process = subprocess.Popen(
            _as_nobody(home, f"HYPER_TEMPLATES=0 {run}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"started\n", process.stderr
            pid = qemu_pid(lambda: _pgrep(f"qemu-system.*{home}"))
            info_status = status(pid)
            assert info_status["Uid"].split() == ["65534"] * 4
            assert info_status["NoNewPrivs"] == "1" and info_status["Seccomp"] == "2"
            for caps in NO_CAPABILITIES:
                assert int(info_status[caps], 16) == 0, caps
            for namespace in ("user", "mnt", "net", "ipc"):
                assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}")
            assert not Path(f"/proc/{pid}/root{home}/state").exists()
            assert not Path(f"/proc/{pid}/root/home").exists()
            _, err = process.communicate(b"go\n", timeout=120)
        finally:
            process.kill()
        assert process.returncode == 0, err
    finally:
        subprocess.run(["pkill", "-9", "-f", f"qemu-system.*{home}"], check=False)
        shutil.rmtree(home, ignore_errors=True)
