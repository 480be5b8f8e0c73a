"""A container is root in its VM and hostile: from inside real VMs, the ways
out that a review found are closed.

The attacks run as the container's root in one VM each (a shell script of
busybox applets printing one `name=result` line per probe): leaving the
container's root (umount of /, setns, unshare, chroot), taking the agent's
virtio-serial port (a device node for it, unbinding its driver), loading a
kernel module, and reading what runc masks. Then the options: Docker's
default capabilities and seccomp, --cap-add/--cap-drop, --privileged (whose
container owns its VM but still finds no agent files), ulimits, shm size,
no-new-privileges and --init.

Options not yet parsed by the CLI are given as RunOptions to the runtime's
own foreground run, in a child process, exactly as the CLI would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm

PROBES = r"""
probe() {
  name=$1; shift
  if "$@" >/tmp/out 2>&1; then echo "$name=ok"; else echo "$name=$(tail -c 200 /tmp/out | tr '\n' ' ')"; fi
}
probe umount umount -l /
probe unshare unshare -m true
probe nsenter nsenter --mount=/proc/self/ns/mnt true
probe chroot_mount sh -c 'mkdir -p /x && mount -t tmpfs none /x'
dev=$(cat /sys/class/virtio-ports/vport*/dev)
probe mknod_port mknod /tmp/port c ${dev%:*} ${dev#*:}
probe open_port sh -c 'cat /tmp/port'
probe unbind sh -c 'echo virtio0 > /sys/bus/virtio/drivers/virtio_console/unbind'
probe insmod insmod /bin/busybox
echo "modules_disabled=$(cat /proc/sys/kernel/modules_disabled)"
echo "kcore_size=$(stat -c %s /proc/kcore)"
probe sysrq sh -c 'echo h > /proc/sysrq-trigger'
echo "kallsyms=$(head -1 /proc/kallsyms | cut -c1-16)"
echo "agent_files=$(ls /opt/hyper-agent 2>/dev/null | wc -l)"
grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\t' | sed 's/:/=/'
"""


# The runtime's own foreground run, in a child, with RunOptions fields from JSON.
DRIVER = """
import asyncio, json, sys
from hyper.paths import default_paths
from hyper.runtime import spec
from hyper.runtime.run import run_foreground
from hyper.runtime.settings import Settings
from hyper.runtime.stdio import Attachment
fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()}
options = spec.RunOptions(image=sys.argv[2], command=("sh", "-c", sys.argv[3]), remove=True, **fields)
sys.exit(asyncio.run(run_foreground(options, default_paths(), Settings.from_env(), Attachment())))
"""


def run_with(env: HyperEnv, script: str, **options: Any) -> tuple[int, dict[str, str]]:
    """Run `script` in a container made with these RunOptions fields: its
    status and its `k=v` lines."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(options), BUSYBOX, script],
        capture_output=True,
        timeout=240,
        env=env.environ(),
        check=False,
    )
    assert done.returncode < 125, done.stderr.decode(errors="replace")
    found = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value.strip()
    return done.returncode, found


def probe(env: HyperEnv, script: str, **options: Any) -> dict[str, str]:
    status, found = run_with(env, script, **options)
    assert status == 0, found
    return found


DOCKER_DEFAULT_CAPS = 0xA80425FB  # moby's 14 default capabilities


def test_a_default_container_cannot_leave_its_root_take_the_agent_port_or_load_modules(
    hyper_env: HyperEnv,
) -> None:
    seen = probe(hyper_env, PROBES)
    for attempt in ("umount", "unshare", "nsenter", "chroot_mount"):  # EPERM, in busybox's words
        assert "Operation not permitted" in seen[attempt] or "permission denied" in seen[attempt], attempt
    # CAP_MKNOD is one of Docker's defaults, but the agent holds its port open
    assert seen["mknod_port"] == "ok"
    assert "Device or resource busy" in seen["open_port"]
    assert "Read-only file system" in seen["unbind"]
    assert "Operation not permitted" in seen["insmod"]
    assert seen["modules_disabled"] == "1"
    assert seen["kcore_size"] == "0"  # masked with /dev/null
    assert "Read-only file system" in seen["sysrq"]
    assert seen["kallsyms"] == "0" * 16  # kptr_restrict
    assert seen["agent_files"] == "0"
    assert int(seen["CapEff"], 16) == DOCKER_DEFAULT_CAPS
    assert int(seen["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert (seen["Seccomp"], seen["NoNewPrivs"]) == ("2", "0")


def test_a_privileged_container_owns_its_vm_but_finds_no_agent_files(hyper_env: HyperEnv) -> None:
    """--privileged: every capability, no seccomp, writable /sys, the VM's
    devices. Even after detaching its own root and entering its mount
    namespace's root, it finds the empty rootfs the agent left behind."""
    escape = (
        "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'\n"
        "echo vda=$(ls /dev | grep -c '^vd')\n"
        "echo port=$(ls /dev | grep -c vport)\n"
        "umount -l / && echo detached=yes\n"
        "echo escaped=$(nsenter --mount=/proc/self/ns/mnt /bin/busybox ls -A / 2>&1 | tr '\\n' ' ')\n"
    )
    seen = probe(hyper_env, escape, privileged=True)
    assert int(seen["CapEff"], 16) == (1 << 41) - 1  # all 41 of the guest kernel's
    assert seen["Seccomp"] == "0"
    assert int(seen["vda"]) >= 2  # the VM's disks
    assert seen["port"] == "0"
    assert seen["detached"] == "yes"
    # The namespace's root is rootfs, emptied at boot: not even busybox is there.
    assert "No such file or directory" in seen["escaped"] or seen["escaped"] == ""


def test_capabilities_seccomp_and_limits_follow_the_options(hyper_env: HyperEnv) -> None:
    script = (
        "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'\n"
        "echo nofile=$(ulimit -n)\n"
        "echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')\n"
        "chown 1234 /tmp && echo chown=ok || echo chown=denied\n"
        "echo pid1=$(cat /proc/1/comm)\n"
    )
    seen = probe(
        hyper_env,
        script,
        cap_drop=["CHOWN"],
        cap_add=["SYS_PTRACE"],
        security_opt=["no-new-privileges"],
        ulimits=["nofile=512:1024"],
        shm_size=128 << 20,
    )
    caps = int(seen["CapEff"], 16)
    assert not caps & (1 << 0)  # CAP_CHOWN dropped
    assert caps & (1 << 19)  # CAP_SYS_PTRACE added
    assert (seen["Seccomp"], seen["NoNewPrivs"]) == ("2", "1")
    assert seen["nofile"] == "512"
    assert seen["shm"] == str(128 << 10)
    assert seen["chown"] == "denied"
    assert seen["pid1"] == "sh"  # without --init the command is PID 1


def test_init_is_pid_1_reaps_and_passes_the_status_on(hyper_env: HyperEnv) -> None:
    # An orphan (the backgrounded sleep's parent exits) is reaped by init;
    # the command's own status is the container's.
    script = "echo pid=$$; (sleep 0.1 &) ; echo init=$(cat /proc/1/cmdline | tr '\\0' ' '); exit 7"
    status, lines = run_with(hyper_env, script, init=True)
    assert status == 7
    assert lines["pid"] != "1"  # the command is init's child
    assert "hyper-agent" in lines["init"] or "python" in lines["init"]


def test_groups_sysctls_and_masked_paths_follow_the_options(hyper_env: HyperEnv) -> None:
    """--group-add joins the user's groups, --sysctl is written in the VM
    before the process starts, and given masked and read-only paths replace
    runc's (CRI's masked_paths and readonly_paths)."""
    script = (
        "echo groups=$(id -G)\n"
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward)\n"
        "echo shmmax=$(cat /proc/sys/kernel/shmmax)\n"
        "echo version=$(wc -c < /proc/version)\n"
        "echo kcore=$(stat -c %s /proc/kcore)\n"
        "echo sys_ro=$(grep -c ' /proc/sys ' /proc/self/mountinfo)\n"
        "echo uptime_ro=$(grep ' /proc/uptime ' /proc/self/mountinfo | grep -c ' ro,')\n"
    )
    seen = probe(
        hyper_env,
        script,
        group_add=["1234", "5678"],
        sysctls=["net.ipv4.ip_forward=1", "kernel.shmmax=123456789"],
        masked_paths=["/proc/version"],
        readonly_paths=["/proc/uptime"],
    )
    assert seen["groups"].split() == ["0", "1234", "5678"]
    assert (seen["forward"], seen["shmmax"]) == ("1", "123456789")
    assert seen["version"] == "0"  # masked instead of runc's list...
    assert seen["kcore"] != "0"  # ...which no longer applies
    assert (seen["sys_ro"], seen["uptime_ro"]) == ("0", "1")
