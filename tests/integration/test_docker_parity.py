"""Docker parity, as users meet it through the real `docker` CLI and docker-py:
every option of `docker run` honoured or refused by name, and the everyday
behaviours that scripts depend on (stop signals and timeouts, health checks,
`kill` then `rm`, the 126/127 statuses, labels inherited from the image, disk
usage, platforms, paused stats, `top`'s columns).

One hyperd serves the module, with `busybox` and `labelled` (busybox with
labels, a HEALTHCHECK and a STOPSIGNAL in its config). The option walk
creates containers without starting them; the other tests boot about a dozen
VMs in all. The module ends by checking that hyperd's log holds no traceback:
ordinary use, clients that go away included, must leave it clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyper.image import Healthcheck, ImageConfig, ImageStore
from hyper.runtime.confinement import NOT_YET_HONOURED
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import (
    eventually,
    failed,
    inspect,
    ok,
    remove_all,
    serving,
)
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available
from tests.support.images import docker_archive, file, image_config, layer_tar, make_busybox_image

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
]

IMAGE_LABELS = (("org.example.from", "image"), ("tier", "image"))
IMAGE_HEALTH = Healthcheck(
    test=("CMD-SHELL", "test -e /tmp/healthy"), interval=0.2, retries=2, start_period=3600
)
TRAP_USR1 = 'trap "echo got usr1; exit 7" USR1; echo ready; while true; do sleep 0.1; done'


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="docker-parity-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        store = ImageStore(state / "images")
        store.tag(BUSYBOX, "busybox:latest")
        config = ImageConfig(
            cmd=("sh",), labels=IMAGE_LABELS, stop_signal="SIGUSR1", healthcheck=IMAGE_HEALTH
        )
        make_busybox_image(store, "labelled:latest", config)
        layer = layer_tar([file("hello", b"hi\n")])
        arm = Path(scratch) / "arm.tar"
        docker_archive(arm, [layer], image_config([layer], architecture="arm64"), "armish:latest")
        store.load(arm)
        with serving(DockerHyperd(state=state, cache=shared_cache)) as daemon:
            yield daemon


@pytest.fixture(autouse=True)
def _clean_up(hyperd: DockerHyperd) -> Iterator[None]:
    yield
    remove_all(hyperd)


# -- every option of docker run ---------------------------------------------------------------------

NOT_YET = {flag: flag for flag in NOT_YET_HONOURED.values()}  # refused, by name, until honoured
# Each docker run/create option that reaches hyperd, and what hyperd answers: None when it is
# honoured (or, for what only describes a container, recorded), else a fragment of the refusal
# that names it. Options the docker CLI handles itself (-d, -i, -t, --rm, --name, -e, -l,
# --pull, --sig-proxy, --detach-keys, …) are covered by the other tests.
OPTION_WALK: list[tuple[tuple[str, ...], str | None]] = [
    (("--expose", "80"), None),
    (("-a", "stdout"), None),
    (("--stop-signal", "USR1"), None),
    (("--stop-timeout", "3"), None),
    (("--health-cmd", "true", "--health-interval", "1s", "--health-retries", "2"), None),
    (("--health-timeout", "1s", "--health-start-period", "5s", "--health-cmd", "true"), None),
    (("--no-healthcheck",), None),
    (("--hostname", "box"), None),
    (("-m", "256m", "--cpus", "1.5"), None),
    (("-m", "256m", "--memory-swap", "256m"), None),
    (("--network", "none"), None),
    (("--ipc", "private"), None),
    (("--userns", "host"), None),
    (("--isolation", "default"), None),
    (("--log-driver", "json-file"), None),
    (("--platform", "linux/amd64"), None),
    (("--pids-limit", "-1"), None),
    (("--restart", "on-failure:2"), None),
    (("--cap-add", "NET_ADMIN"), NOT_YET.get("--cap-add")),
    (("--cap-drop", "CHOWN"), NOT_YET.get("--cap-drop")),
    (("--privileged",), NOT_YET.get("--privileged")),
    (("--security-opt", "no-new-privileges"), NOT_YET.get("--security-opt")),
    (("--ulimit", "nofile=100:200"), NOT_YET.get("--ulimit")),
    (("--shm-size", "128m"), NOT_YET.get("--shm-size")),
    (("--init",), NOT_YET.get("--init")),
    (("-v", "/tmp:/x"), None),
    (("--mount", "type=tmpfs,dst=/x"), None),
    (("--use-api-socket",), "a unix socket"),  # a host socket cannot be reached from a VM
    (("--tmpfs", "/run"), None),
    (("--volumes-from", "other"), "no such container for --volumes-from: other"),
    (("--volume-driver", "local"), None),
    (("--volume-driver", "nfs"), "--volume-driver"),
    (("--read-only",), None),
    # This hyperd runs with HYPER_BRIDGE=none (no network in the machine's own
    # namespace): what needs a network is refused as dockerd --bridge=none does;
    # tests/integration/test_network.py runs them on real networks.
    (("-p", "80:80"), "published ports need a network"),
    (("-P",), None),
    (("--network", "bridge"), "network bridge not found"),
    (("--network", "host"), "not possible in a VM"),
    (("--ip", "10.0.0.5"), "takes no alias or address"),
    (("--link-local-ip", "169.254.1.1"), "--link-local-ip"),
    (("--link", "other:o"), "--link"),
    (("--dns", "1.1.1.1"), None),
    (("--dns-option", "ndots:2"), None),
    (("--dns-search", "example.com"), None),
    (("--add-host", "db:10.0.0.2"), None),
    (("--device", "/dev/null"), "--device"),
    (("--device-cgroup-rule", "c 1:3 rwm"), "--device-cgroup-rule"),
    (("--gpus", "all"), "--gpus"),
    (("--domainname", "example.com"), "--domainname"),
    (("--group-add", "10"), None),
    (("--sysctl", "net.core.somaxconn=100"), None),
    (("--sysctl", "net.a/b=1"), "invalid sysctl name 'net.a/b'"),  # the CLI refuses kernel.panic itself
    (("--oom-score-adj", "10"), "--oom-score-adj"),
    (("--oom-kill-disable",), "--oom-kill-disable"),
    (("--pids-limit", "10"), None),
    (("--pid", "host"), "--pid"),
    (("--uts", "host"), "--uts"),
    (("--ipc", "host"), "--ipc"),
    (("--cgroupns", "private"), "--cgroupns"),
    (("--cgroup-parent", "hyper"), "--cgroup-parent"),
    (("-c", "512"), "--cpu-shares"),
    (("--cpu-period", "100000"), "--cpu-period"),
    (("--cpu-quota", "50000"), "--cpu-quota"),
    (("--cpu-rt-period", "1000"), "--cpu-rt-period"),
    (("--cpu-rt-runtime", "100"), "--cpu-rt-runtime"),
    (("--cpuset-cpus", "0"), None),
    (("--cpuset-cpus", "0-9"), "names CPU"),
    (("--cpuset-mems", "0"), "--cpuset-mems"),
    (("--memory-reservation", "100m"), "--memory-reservation"),
    (("-m", "256m", "--memory-swap", "1g"), None),
    (("-m", "256m", "--memory-swap", "128m"), "memoryswap limit should be larger"),
    (("--memory-swappiness", "10"), "--memory-swappiness"),
    (("--blkio-weight", "100"), "--blkio-weight"),
    (("--blkio-weight-device", "/dev/vda:100"), "--blkio-weight-device"),
    (("--device-read-bps", "/dev/vda:1mb"), "--device-read-bps"),
    (("--device-write-bps", "/dev/vda:1mb"), "--device-write-bps"),
    (("--device-read-iops", "/dev/vda:100"), "--device-read-iops"),
    (("--device-write-iops", "/dev/vda:100"), "--device-write-iops"),
    (("--storage-opt", "size=1G"), None),
    (("--storage-opt", "dm.basesize=1G"), "invalid --storage-opt"),
    (("--annotation", "a=b"), "--annotation"),
    (("--log-driver", "none"), "log driver 'none'"),
    (("--log-opt", "max-size=1m"), None),
    (("--log-opt", "compress=true"), "log option 'compress'"),
    (("--runtime", "runc"), "runtime 'runc'"),
    (("--isolation", "hyperv"), "isolation 'hyperv'"),
    (("--platform", "linux/arm64"), "cannot run linux/arm64"),
]


@pytest.mark.parametrize(("args", "refusal"), OPTION_WALK, ids=[" ".join(a) for a, _ in OPTION_WALK])
def test_every_run_option_is_honoured_or_refused_by_name(
    hyperd: DockerHyperd, args: tuple[str, ...], refusal: str | None
) -> None:
    result = hyperd.docker("create", *args, "busybox", "true")
    if refusal is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and refusal in result.stderr, result.stderr
        assert ok(hyperd.docker("ps", "-aq")) == ""  # nothing half-made


def test_an_honoured_option_shows_in_inspect_as_dockers_does(hyperd: DockerHyperd, tmp_path: Path) -> None:
    cid_file = tmp_path / "cid"
    ok(
        hyperd.docker(
            "create", "--name", "described", "--expose", "80", "--stop-signal", "SIGUSR2",
            "--stop-timeout", "3", "--health-cmd", "true", "--health-interval", "2s", "-a", "stdout",
            "--cidfile", str(cid_file), "busybox", "true",
        )
    )  # fmt: skip
    doc = json.loads(ok(hyperd.docker("inspect", "described")))[0]
    config, host = doc["Config"], doc["HostConfig"]
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGUSR2", 3)
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000}
    assert config["ExposedPorts"] == {"80/tcp": {}}
    assert (config["AttachStdout"], config["AttachStdin"]) == (True, False)
    assert host["ContainerIDFile"] == str(cid_file) and cid_file.read_text() == doc["Id"]
    assert (host["CapAdd"], host["Privileged"], host["ShmSize"]) == (None, False, 64 << 20)
    assert doc["State"]["Health"]["Status"] == "starting"  # created: not started yet, not checked


def test_the_default_vm_size_is_hyperds_configuration(image_state: Path, tmp_path: Path) -> None:
    config = tmp_path / "hyperd.json"
    config.write_text(json.dumps({"default-memory": "768m", "default-cpus": 2}))
    with DockerHyperd(state=image_state, environ={"HYPER_CONFIG": str(config)}) as configured:
        ok(configured.docker("create", "--name", "sized", BUSYBOX, "true"))
        ok(configured.docker("create", "--name", "asked", "-m", "256m", "--cpus", "1", BUSYBOX, "true"))
        size = "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}"
        assert ok(configured.docker("inspect", "-f", size, "sized")).strip() == f"{768 << 20} 2000000000"
        assert ok(configured.docker("inspect", "-f", size, "asked")).strip() == f"{256 << 20} 1000000000"
    config.write_text('{"default-memory": "lots"}')
    refused = subprocess.run(
        [sys.executable, "-m", "hyper.daemon", "--state-dir", str(tmp_path / "s"), "--runtime-dir",
         str(tmp_path / "r"), "--socket", str(tmp_path / "r" / "h.sock")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HYPER_CONFIG": str(config)},
    )  # fmt: skip
    assert refused.returncode == 1 and "invalid memory size 'lots'" in refused.stderr, refused.stderr


def test_container_names_follow_dockers_rule(hyperd: DockerHyperd) -> None:
    for name in ("a", "-lead", "na me", "caf\u00e9", "x" * 129):
        refused = failed(hyperd.docker("create", "--name", name, "busybox", "true"))
        assert "Invalid container name" in refused or "longer than 128" in refused, refused
    ok(hyperd.docker("create", "--name", "ok.name_1-2", "busybox", "true"))
    assert "Invalid container name" in failed(hyperd.docker("rename", "ok.name_1-2", "b\u00e4d"))
    assert ok(hyperd.docker("ps", "-a", "--format", "{{.Names}}")).split() == ["ok.name_1-2"]


def test_platform_of_the_image_must_be_the_vms(hyperd: DockerHyperd) -> None:
    refused = failed(hyperd.docker("create", "armish", "true"))
    assert "is for linux/arm64" in refused and "--platform linux/amd64" in refused, refused
    # An image for another platform than asked is missing, as in Docker: the CLI tries to pull it.
    asked = failed(hyperd.docker("create", "--pull", "never", "--platform", "linux/amd64", "armish", "true"))
    assert "does not match the specified platform" in asked, asked


def test_confinement_options_reach_the_container_and_show_in_inspect(hyperd: DockerHyperd) -> None:
    script = (
        "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'\n"
        "echo nofile=$(ulimit -n)\n"
        "echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')\n"
        "echo pid=$$\n"
        "echo groups=$(id -G | tr ' ' ,)\n"
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward)\n"
    )
    output = ok(
        hyperd.docker(
            "run", "--name", "confined", "--cap-add", "SYS_PTRACE", "--cap-drop", "CHOWN",
            "--ulimit", "nofile=512:1024", "--shm-size", "128m", "--security-opt", "no-new-privileges",
            "--init", "--group-add", "1234", "--sysctl", "net.ipv4.ip_forward=1",
            "busybox", "sh", "-c", script,
        )
    )  # fmt: skip
    seen = dict(line.split("=", 1) for line in output.split())
    assert (seen["groups"], seen["forward"]) == ("0,1234", "1")
    caps = int(seen["CapEff"], 16)
    assert not caps & (1 << 0) and caps & (1 << 19)  # CAP_CHOWN dropped, CAP_SYS_PTRACE added
    assert not caps & (1 << 21)  # no CAP_SYS_ADMIN: Docker's default set
    assert (seen["Seccomp"], seen["NoNewPrivs"]) == ("2", "1")
    assert (seen["nofile"], seen["shm"]) == ("512", str(128 << 10))
    assert seen["pid"] != "1"  # --init is PID 1, the command its child
    host = json.loads(inspect(hyperd, "confined", "{{json .HostConfig}}"))
    assert (host["CapAdd"], host["CapDrop"]) == (["CAP_SYS_PTRACE"], ["CAP_CHOWN"])
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 512, "Hard": 1024}]
    assert (host["ShmSize"], host["Init"], host["SecurityOpt"]) == (128 << 20, True, ["no-new-privileges"])
    assert (host["GroupAdd"], host["Sysctls"]) == (["1234"], {"net.ipv4.ip_forward": "1"})
    # A group name is looked up in the container's /etc/group when it starts, as Docker does.
    assert "unable to find group nosuch" in failed(
        hyperd.docker("run", "--rm", "--group-add", "nosuch", "busybox", "true")
    )
    privileged = ok(
        hyperd.docker(
            "run", "--rm", "--privileged", "busybox", "sh", "-c",
            "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'",
        )
    )  # fmt: skip
    seen = dict(line.split("=", 1) for line in privileged.split())
    assert int(seen["CapEff"], 16) & (1 << 21) and seen["Seccomp"] == "0"  # CAP_SYS_ADMIN, no filter
    assert "unknown capability" in failed(hyperd.docker("create", "--cap-add", "NO_SUCH_CAP", "busybox"))


# -- kill, stop ------------------------------------------------------------------------------------


def test_kill_returns_once_the_container_is_dead_so_rm_follows(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "-d", "--name", "victim", "busybox", "sleep", "1000"))
    chained = subprocess.run(
        ["sh", "-c", f"{DOCKER_CLI} kill victim && {DOCKER_CLI} rm victim"],
        capture_output=True,
        text=True,
        env=hyperd.cli_environ(),
        check=False,
    )
    assert chained.returncode == 0, chained.stderr
    client = hyperd.docker_py()
    container = client.containers.run("busybox", ["sleep", "1000"], detach=True)
    container.kill()
    container.remove()  # docker-py's own kill-then-remove
    assert client.containers.list(all=True) == []
    client.close()


def logged(hyperd: DockerHyperd, name: str, text: str) -> Callable[[], bool]:
    return lambda: ok(hyperd.docker("logs", name)) == text


def test_stop_sends_the_stop_signal_of_the_container_or_its_image(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "-d", "--name", "own", "--stop-signal", "USR1", "busybox", "sh", "-c", TRAP_USR1))
    ok(hyperd.docker("run", "-d", "--name", "inherited", "labelled", "sh", "-c", TRAP_USR1))
    for name in ("own", "inherited"):
        eventually(logged(hyperd, name, "ready\n"), f"{name} set its trap")
        ok(hyperd.docker("stop", name))
        assert inspect(hyperd, name, "{{.State.ExitCode}} {{.Config.StopSignal}}") in ("7 USR1", "7 SIGUSR1")
        assert ok(hyperd.docker("logs", name)) == "ready\ngot usr1\n"


def test_stop_timeout_of_the_container_is_the_grace_period(hyperd: DockerHyperd) -> None:
    # The trap takes its time to exit: with a grace period of 0 SIGKILL comes first (137);
    # with the default one it exits on its own (5).
    script = 'trap "sleep 1; exit 5" TERM; echo ready; while true; do sleep 0.1; done'
    for name, extra, status in (("patient", (), "5"), ("hasty", ("--stop-timeout", "0"), "137")):
        ok(hyperd.docker("run", "-d", "--name", name, *extra, "busybox", "sh", "-c", script))
        eventually(logged(hyperd, name, "ready\n"), f"{name} set its trap")
        ok(hyperd.docker("stop", name))
        assert inspect(hyperd, name, "{{.State.ExitCode}}") == status


# -- 126 and 127 -----------------------------------------------------------------------------------


def test_a_missing_command_exits_127_through_the_cli_and_docker_py(hyperd: DockerHyperd) -> None:
    import docker.errors

    result = hyperd.docker("run", "--rm", "busybox", "nosuch")
    assert result.returncode == 127 and 'exec: "nosuch": executable file not found' in result.stderr
    client = hyperd.docker_py()
    container = client.containers.create("busybox", ["nosuch"])
    with pytest.raises(docker.errors.APIError, match="executable file not found") as refused:
        container.start()
    assert refused.value.status_code == 400  # Docker's: the container's command is at fault
    assert container.wait()["StatusCode"] == 127
    container.remove()
    client.close()


@pytest.mark.parametrize("command", ["/etc/passwd", "/tmp"])
def test_a_command_that_cannot_be_invoked_exits_126(hyperd: DockerHyperd, command: str) -> None:
    import docker.errors

    result = hyperd.docker("run", "--rm", "busybox", command)
    assert "failed to create task for container" in result.stderr and f'exec: "{command}"' in result.stderr
    assert result.returncode == 126, result.stderr  # the CLI's choice, from the message's words
    client = hyperd.docker_py()
    container = client.containers.create("busybox", [command])
    with pytest.raises(docker.errors.APIError):
        container.start()
    assert container.wait()["StatusCode"] == 126
    container.remove()
    client.close()


# -- health checks ---------------------------------------------------------------------------------


def status_of(hyperd: DockerHyperd, name: str) -> str:
    return ok(hyperd.docker("ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}")).strip()


def test_the_images_healthcheck_runs_with_dockers_states_and_events(hyperd: DockerHyperd) -> None:
    since = str(time.time())
    ok(hyperd.docker("run", "-d", "--name", "checked", "labelled", "sleep", "1000"))
    # The start period is long: failures do not count, the container stays starting.
    eventually(
        lambda: '"ExitCode":1' in inspect(hyperd, "checked", "{{json .State.Health}}"), "a first probe"
    )
    assert status_of(hyperd, "checked").endswith("(health: starting)")
    ok(hyperd.docker("exec", "checked", "touch", "/tmp/healthy"))
    eventually(lambda: status_of(hyperd, "checked").endswith("(healthy)"), "healthy")
    assert ok(hyperd.docker("ps", "--filter", "health=healthy", "--format", "{{.Names}}")).split() == [
        "checked"
    ]
    ok(hyperd.docker("exec", "checked", "rm", "/tmp/healthy"))
    eventually(lambda: status_of(hyperd, "checked").endswith("(unhealthy)"), "unhealthy after 2 failures")
    health = json.loads(inspect(hyperd, "checked", "{{json .State.Health}}"))
    assert health["Status"] == "unhealthy" and health["FailingStreak"] >= 2
    assert 1 <= len(health["Log"]) <= 5 and health["Log"][-1]["ExitCode"] == 1
    assert {"Start", "End", "ExitCode", "Output"} <= set(health["Log"][-1])
    ok(hyperd.docker("stop", "-t", "1", "checked"))
    assert inspect(hyperd, "checked", "{{.State.Health.Status}}") == "unhealthy"  # Docker's, once stopped
    events = ok(
        hyperd.docker(
            "events", "--since", since, "--until", str(time.time()), "--filter", "container=checked",
            "--filter", "event=health_status", "--format", "{{.Action}}",
        )
    )  # fmt: skip
    assert events.strip().splitlines() == ["health_status: healthy", "health_status: unhealthy"], events
    ok(hyperd.docker("run", "-d", "--name", "unchecked", "--no-healthcheck", "labelled", "sleep", "1000"))
    assert inspect(hyperd, "unchecked", "{{json .State.Health}}") == "null"
    assert re.fullmatch(r"Up .*(second|minute)s?", status_of(hyperd, "unchecked"))


def test_docker_py_healthcheck_and_a_probe_that_times_out(hyperd: DockerHyperd) -> None:
    client = hyperd.docker_py()
    fine = client.containers.run(
        "busybox",
        ["sleep", "1000"],
        detach=True,
        healthcheck={"test": ["CMD", "true"], "interval": 200_000_000},
    )
    slow = client.containers.run(
        "busybox",
        ["sleep", "1000"],
        detach=True,
        healthcheck={
            "test": ["CMD", "sleep", "100"],
            "interval": 200_000_000,
            "timeout": 300_000_000,
            "retries": 1,
        },
    )

    def health(container: object) -> str:
        container.reload()  # type: ignore[attr-defined]
        return str(container.health)  # type: ignore[attr-defined]

    eventually(lambda: health(fine) == "healthy", "the CMD probe succeeds")
    eventually(lambda: health(slow) == "unhealthy", "the slow probe times out")
    entry = slow.attrs["State"]["Health"]["Log"][-1]
    assert (entry["ExitCode"], entry["Output"]) == (-1, "Health check exceeded timeout (300ms)")
    fine.remove(force=True)
    slow.remove(force=True)
    client.close()


# -- labels, disk usage, stats, top ------------------------------------------------------------------


def test_the_images_labels_are_merged_into_the_containers(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("create", "--name", "tagged", "-l", "tier=mine", "labelled", "true"))
    labels = json.loads(inspect(hyperd, "tagged", "{{json .Config.Labels}}"))
    assert labels == {"org.example.from": "image", "tier": "mine"}
    listed = ok(
        hyperd.docker("ps", "-a", "--filter", "label=org.example.from=image", "--format", "{{.Names}}")
    )
    assert listed.split() == ["tagged"]


def test_system_df_and_prune_count_bytes_on_disk(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "--name", "wrote", "busybox", "sh", "-c", "head -c 3000000 /dev/zero > /blob"))
    df = {
        row["Type"]: row
        for row in map(json.loads, ok(hyperd.docker("system", "df", "--format", "json")).split("\n")[:-1])
    }
    # The writable disk is a sparse 10 GiB file: what counts is what it holds.
    containers = df["Containers"]["Size"]
    assert re.fullmatch(r"[\d.]+MB", containers) and 3 <= float(containers[:-2]) < 100, df
    images = df["Images"]["Size"]
    assert re.fullmatch(r"[\d.]+MB", images) and float(images[:-2]) < 100, df
    pruned = hyperd.docker("system", "prune", "-f")  # networks and build cache answer as empty
    assert pruned.returncode == 0 and "wrote" not in ok(hyperd.docker("ps", "-a", "--format", "{{.Names}}"))
    assert re.search(r"Total reclaimed space: ", pruned.stdout), pruned.stdout


def test_stats_of_a_paused_container_and_tops_columns(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "-d", "--name", "frozen", "-u", "1000", "busybox", "sleep", "1000"))
    top = ok(hyperd.docker("top", "frozen")).splitlines()
    titles = top[0].split()
    row = dict(zip(titles, top[1].split(), strict=False))
    assert (row["UID"], row["PID"]) == ("app", "1")  # the name in the container's /etc/passwd
    assert re.fullmatch(r"\d\d:\d\d:\d\d", row["TIME"]), top
    ok(hyperd.docker("exec", "-d", "-u", "0", "frozen", "sleep", "999"))
    eventually(lambda: "root" in ok(hyperd.docker("top", "frozen")), "the exec's user by name")
    ok(hyperd.docker("pause", "frozen"))
    stats = ok(
        hyperd.docker("stats", "--no-stream", "--format", "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}", "frozen")
    )
    name, cpu, memory = stats.strip().split("|")
    assert name == "frozen" and float(cpu.rstrip("%")) == 0, stats  # a frozen container uses nothing
    assert re.match(r"[\d.]+[KMG]iB / [\d.]+[KMG]iB", memory) and not memory.startswith("0B"), stats
    ok(hyperd.docker("unpause", "frozen"))
