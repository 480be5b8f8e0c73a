"""The container endpoints of hyperd's Docker Engine API, driven by the real
`docker` CLI (with pexpect where it needs a terminal) and docker-py.

One hyperd serves the whole module, with the busybox image tagged `busybox`
(as `docker.io/library/busybox:latest`). A container named `counter`, which
prints a number five times a second, runs from the first test that asks for
it to the end; the containers each test makes are removed after it, and the
module ends by checking that hyperd left no QEMU behind. Every `docker run`
boots one VM: the module keeps to a few dozen.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
]

COUNTER_SCRIPT = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done"
DETACH = "\x10\x11"  # ctrl-p ctrl-q
WAIT_SECONDS = 120  # an upper bound for what should happen in seconds, never an assertion of speed


def qemu_processes(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if marker in line]


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="docker-containers-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        with serving(DockerHyperd(state=state, cache=shared_cache)) as daemon:
            yield daemon


def log_problems(log: str) -> list[str]:
    """Lines of hyperd's log that show an error nobody handled."""
    markers = ("Traceback", "exception was never retrieved", "Error handling request")
    return [line for line in log.splitlines() if any(marker in line for marker in markers)]


@contextmanager
def serving(daemon: DockerHyperd) -> Iterator[DockerHyperd]:
    """Start hyperd; at the end remove its containers, stop it, and check that
    no QEMU outlived it and that ordinary use (clients that leave their waits,
    cp, save) left its log clean."""
    marker = str(daemon.root)
    daemon.start()
    try:
        yield daemon
    finally:
        try:
            remove_all(daemon)
        finally:
            daemon.close()
            log = daemon.final_log  # its shutdown included
            leftovers = qemu_processes(marker)
            for line in leftovers:
                subprocess.run(["kill", "-9", line.split()[0]], check=False)
        assert not leftovers, f"QEMU left running after hyperd closed: {leftovers}\n{log[-4000:]}"
        assert not log_problems(log), log[-8000:]


def remove_all(hyperd: DockerHyperd, keep: frozenset[str] = frozenset()) -> None:
    with hyperd.http() as http:
        listed = http.get("/containers/json", params={"all": "1"}).json()
        for container in listed:
            if container["Id"] not in keep:
                http.delete(f"/containers/{container['Id']}", params={"force": "1"})


@pytest.fixture(scope="module")
def counter(hyperd: DockerHyperd) -> str:
    """The ID of the long-running `counter` container."""
    container_id = ok(hyperd.docker("run", "-d", "--name", "counter", "busybox", "sh", "-c", COUNTER_SCRIPT))
    return container_id.strip()


@pytest.fixture(autouse=True)
def _clean_up(hyperd: DockerHyperd) -> Iterator[None]:
    """Each test's containers go with it; `counter` stays for the module."""
    yield
    with hyperd.http() as http:
        counter = http.get("/containers/counter/json")
    remove_all(hyperd, frozenset({counter.json()["Id"]}) if counter.status_code == 200 else frozenset())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded: {result.stdout}"
    return result.stderr


def inspect(hyperd: DockerHyperd, ref: str, template: str) -> str:
    return ok(hyperd.docker("inspect", "-f", template, ref)).strip()


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def spawn(hyperd: DockerHyperd, *args: str) -> pexpect.spawn:
    """The docker CLI on a terminal of its own."""
    return pexpect.spawn(
        DOCKER_CLI,
        list(args),
        env=hyperd.cli_environ(),
        timeout=WAIT_SECONDS,
        encoding="utf-8",
        dimensions=(24, 80),
    )


def terminal_size_becomes(shell: pexpect.spawn, expected: str) -> None:
    """Ask the shell its terminal size until it is `expected`: a resize reaches the guest a little later."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        shell.sendline("stty size")
        shell.expect(r"(\d+ \d+)\r\n")
        if shell.match.group(1) == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the terminal stayed {shell.match.group(1)}, never {expected}")
        time.sleep(0.2)


def last_number(hyperd: DockerHyperd, ref: str) -> int:
    """The last number `counter` printed; -1 before the first."""
    last = ok(hyperd.docker("logs", "--tail", "1", ref)).strip()
    return int(last) if last else -1


# -- docker run ------------------------------------------------------------------------------------


def test_run_separates_stdout_from_stderr_propagates_the_exit_code_and_rm_removes(
    hyperd: DockerHyperd,
) -> None:
    result = hyperd.docker(
        "run", "--rm", "--name", "once", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert ok(hyperd.docker("ps", "-a", "-q", "--filter", "name=once")) == ""
    assert "No such container: once" in failed(hyperd.docker("inspect", "--type", "container", "once"))


def test_run_applies_env_workdir_user_and_name(hyperd: DockerHyperd) -> None:
    script = 'echo "$GREETING"; pwd; id -u; id -g'
    output = ok(
        hyperd.docker(
            "run", "--name", "options", "-e", "GREETING=hello there", "-w", "/tmp", "-u", "1000:1000",
            "busybox", "sh", "-c", script,
        )
    )  # fmt: skip
    assert output.splitlines() == ["hello there", "/tmp", "1000", "1000"]
    assert (
        inspect(hyperd, "options", "{{.Name}} {{.Config.User}} {{.Config.WorkingDir}}")
        == "/options 1000:1000 /tmp"
    )
    assert "GREETING=hello there" in json.loads(inspect(hyperd, "options", "{{json .Config.Env}}"))


def test_run_entrypoint_replaces_the_images_command(hyperd: DockerHyperd) -> None:
    output = ok(hyperd.docker("run", "--name", "entry", "--entrypoint", "echo", "busybox", "hello", "world"))
    assert output == "hello world\n"
    config = json.loads(inspect(hyperd, "entry", "{{json .Config}}"))
    assert (config["Entrypoint"], config["Cmd"]) == (["echo"], ["hello", "world"])
    assert inspect(hyperd, "entry", "{{.Path}} {{json .Args}}") == 'echo ["hello","world"]'


def test_run_i_feeds_piped_stdin_and_sees_its_end(hyperd: DockerHyperd) -> None:
    # The CLI attaches, sends all of its input and the half-close, and only then starts the container.
    result = hyperd.docker("run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done; exit 4", input="hi\n")
    assert (result.returncode, result.stdout, result.stderr) == (4, "hi\ndone\n", "")


def test_run_of_a_missing_command_exits_127_and_rm_still_removes(hyperd: DockerHyperd) -> None:
    # The CLI waits for the removal of an --rm container even when its start fails.
    result = hyperd.docker("run", "--rm", "--name", "missing", "busybox", "no-such-command")
    assert result.returncode == 127 and "no-such-command" in result.stderr
    assert ok(hyperd.docker("ps", "-a", "-q", "--filter", "name=missing")) == ""


def test_run_it_drives_a_shell_and_logs_keep_the_tty_output_raw(hyperd: DockerHyperd) -> None:
    shell = spawn(hyperd, "run", "-it", "--name", "interactive", "busybox", "sh")
    shell.expect("# ")
    shell.sendline("echo $((6*7)); tty; stty size")
    shell.expect("42")
    shell.expect("/dev/pts/")
    shell.expect("24 80")  # the client's terminal size, from the start
    shell.sendline("exit 5")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 5
    assert inspect(hyperd, "interactive", "{{.Config.Tty}} {{.State.ExitCode}}") == "true 5"
    logs = subprocess.run(
        [DOCKER_CLI, "logs", "interactive"], capture_output=True, env=hyperd.cli_environ(), check=True
    )
    assert b"\r\n42\r\n/dev/pts/" in logs.stdout and logs.stderr == b""  # a terminal's bytes, unframed


def test_run_d_prints_the_id_and_the_container_runs(hyperd: DockerHyperd, counter: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", counter)
    assert inspect(hyperd, "counter", "{{.Id}}") == counter
    eventually(lambda: last_number(hyperd, "counter") > 1, "counter counts")


# -- ps, inspect, logs, wait -----------------------------------------------------------------------


def test_ps_lists_running_and_all_quiet_and_filtered(hyperd: DockerHyperd, counter: str) -> None:
    ok(hyperd.docker("run", "--name", "finished", "busybox", "true"))
    running = ok(hyperd.docker("ps", "--format", "{{.Names}} {{.Status}} {{.Image}}")).splitlines()
    assert next(line for line in running if line.startswith("counter ")).startswith("counter Up ")
    assert not any(line.startswith("finished ") for line in running)
    everything = ok(hyperd.docker("ps", "-a", "--format", "{{.Names}}|{{.Status}}")).splitlines()
    assert any(re.fullmatch(r"finished\|Exited \(0\) .* ago", line) for line in everything), everything
    assert counter[:12] in ok(hyperd.docker("ps", "-q")).split()
    assert ok(hyperd.docker("ps", "-q", "--filter", "name=counter")).split() == [counter[:12]]
    finished = ok(hyperd.docker("ps", "-aq", "--filter", "name=finished", "--filter", "status=exited"))
    assert finished.split() == [inspect(hyperd, "finished", "{{.Id}}")[:12]]
    assert ok(hyperd.docker("ps", "-q", "--filter", "name=finished")) == ""
    finished_id = inspect(hyperd, "finished", "{{.Id}}")
    assert finished_id in ok(hyperd.docker("container", "prune", "-f")).split()  # stopped ones only
    assert ok(hyperd.docker("ps", "-aq", "--filter", "name=finished")) == ""
    assert inspect(hyperd, "counter", "{{.State.Status}}") == "running"


def test_inspect_reports_what_scripts_read(hyperd: DockerHyperd, counter: str) -> None:
    doc = json.loads(ok(hyperd.docker("inspect", "counter")))[0]
    assert (doc["Id"], doc["Name"], doc["RestartCount"]) == (counter, "/counter", 0)
    state = doc["State"]
    assert (state["Status"], state["Running"], state["Paused"], state["ExitCode"]) == (
        "running",
        True,
        False,
        0,
    )
    assert state["Pid"] > 0 and Path(f"/proc/{state['Pid']}").exists()  # the VM's QEMU
    config = doc["Config"]
    assert (config["Image"], config["Tty"], config["Cmd"]) == ("busybox", False, ["sh", "-c", COUNTER_SCRIPT])
    assert isinstance(config["Env"], list)
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert inspect(hyperd, counter[:12], "{{.State.Status}} {{.State.Running}}") == "running true"

    assert hyperd.docker("run", "--name", "failing", "busybox", "sh", "-c", "exit 3").returncode == 3
    exited = "{{.State.Status}} {{.State.Running}} {{.State.ExitCode}} {{.State.Pid}}"
    assert inspect(hyperd, "failing", exited) == "exited false 3 0"
    assert ok(hyperd.docker("wait", "failing")) == "3\n"


def test_logs_follow_until_the_container_exits_and_tail(hyperd: DockerHyperd) -> None:
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done; echo bye >&2; exit 2"
    ok(hyperd.docker("run", "-d", "--name", "follow", "busybox", "sh", "-c", script))
    followed = hyperd.docker("logs", "-f", "follow")  # returns only because the container exited
    assert (followed.returncode, followed.stdout, followed.stderr) == (
        0,
        "".join(f"line{i}\n" for i in range(1, 6)),
        "bye\n",
    )
    assert inspect(hyperd, "follow", "{{.State.Status}}") == "exited"
    assert ok(hyperd.docker("wait", "follow")) == "2\n"
    tail = hyperd.docker("logs", "--tail", "2", "follow")  # the last two lines of both streams
    assert (tail.returncode, tail.stdout, tail.stderr) == (0, "line5\n", "bye\n")


# -- exec ------------------------------------------------------------------------------------------


def test_exec_with_env_workdir_user_and_exit_codes(hyperd: DockerHyperd, counter: str) -> None:
    script = 'echo "$X"; pwd; id -u; id -g'
    output = ok(
        hyperd.docker(
            "exec", "-e", "X=from exec", "-w", "/tmp", "-u", "1000:1000", "counter", "sh", "-c", script
        )
    )
    assert output.splitlines() == ["from exec", "/tmp", "1000", "1000"]
    assert ok(hyperd.docker("exec", "counter", "pwd")) == "/\n"
    piped = hyperd.docker("exec", "-i", "counter", "sh", "-c", "cat; exit 4", input="piped\n")
    assert (piped.returncode, piped.stdout) == (4, "piped\n")  # the client's half-close ends cat's input
    status = hyperd.docker("exec", "counter", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (status.returncode, status.stdout, status.stderr) == (7, "out\n", "err\n")
    missing = hyperd.docker("exec", "counter", "no-such-binary")
    assert missing.returncode == 127 and "no-such-binary" in missing.stdout + missing.stderr
    ok(hyperd.docker("exec", "-d", "counter", "touch", "/tmp/detached-exec"))
    eventually(
        lambda: hyperd.docker("exec", "counter", "test", "-e", "/tmp/detached-exec").returncode == 0,
        "exec -d ran",
    )


def test_two_execs_run_at_once(hyperd: DockerHyperd, counter: str) -> None:
    # Each waits for the other's file: run one after the other, both would wait forever.
    def waiter(mine: str, theirs: str) -> subprocess.Popen[str]:
        script = (
            f"touch /tmp/{mine}; while [ ! -e /tmp/{theirs} ]; do sleep 0.1; done; echo {mine} saw {theirs}"
        )
        return subprocess.Popen(
            [DOCKER_CLI, "exec", "counter", "sh", "-c", script],
            env=hyperd.cli_environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first, second = waiter("left", "right"), waiter("right", "left")
    try:
        outputs = [first.communicate(timeout=WAIT_SECONDS), second.communicate(timeout=WAIT_SECONDS)]
    finally:
        first.kill()
        second.kill()
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert [out for out, _ in outputs] == ["left saw right\n", "right saw left\n"]


def test_exec_it_gives_a_terminal(hyperd: DockerHyperd, counter: str) -> None:
    shell = spawn(hyperd, "exec", "-it", "counter", "sh")
    shell.expect("# ")
    shell.sendline("echo $((6*7)); tty; stty size")
    shell.expect("42")
    shell.expect("/dev/pts/")
    shell.expect("24 80")
    shell.setwinsize(40, 120)  # SIGWINCH: the CLI resizes the exec's terminal
    terminal_size_becomes(shell, "40 120")
    shell.sendline("exit 3")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 3
    assert inspect(hyperd, "counter", "{{.State.Status}}") == "running"


# -- attach ----------------------------------------------------------------------------------------


def test_attach_types_into_a_running_container_and_detaches(hyperd: DockerHyperd) -> None:
    script = 'while read line; do echo "got:$line"; done'
    ok(hyperd.docker("run", "-dit", "--name", "listener", "busybox", "sh", "-c", script))
    attached = spawn(hyperd, "attach", "listener")
    attached.sendline("hello")
    attached.expect("got:hello")
    attached.send(DETACH)
    attached.expect(pexpect.EOF)
    attached.close()
    assert "read escape sequence" in str(attached.before)
    assert inspect(hyperd, "listener", "{{.State.Status}}") == "running"
    attached = spawn(hyperd, "attach", "listener")  # and it still listens
    attached.sendline("again")
    attached.expect("got:again")
    attached.send(DETACH)
    attached.expect(pexpect.EOF)
    attached.close()


def test_attach_with_stdin_ends_when_the_container_exits(hyperd: DockerHyperd) -> None:
    script = 'echo ready; read line; echo "got:$line"; echo "to stderr" >&2; exit 6'
    ok(hyperd.docker("run", "-di", "--name", "reader", "busybox", "sh", "-c", script))
    eventually(lambda: ok(hyperd.docker("logs", "reader")) == "ready\n", "the reader is ready")
    result = hyperd.docker("attach", "reader", input="hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (6, "got:hello\n", "to stderr\n")
    assert inspect(hyperd, "reader", "{{.State.Status}} {{.State.ExitCode}}") == "exited 6"


# -- stop, kill, restart, rm -----------------------------------------------------------------------


def test_kill_with_a_signal_wait_and_stop_of_an_exited_container(hyperd: DockerHyperd) -> None:
    script = 'trap "echo got term; exit 42" TERM; echo ready; while true; do sleep 0.1; done'
    ok(hyperd.docker("run", "-d", "--name", "trapper", "busybox", "sh", "-c", script))
    eventually(lambda: ok(hyperd.docker("logs", "trapper")) == "ready\n", "the trap is set")
    assert ok(hyperd.docker("kill", "-s", "TERM", "trapper")) == "trapper\n"
    assert ok(hyperd.docker("wait", "trapper")) == "42\n"
    assert ok(hyperd.docker("logs", "trapper")) == "ready\ngot term\n"
    assert ok(hyperd.docker("stop", "trapper")) == "trapper\n"  # stopping a stopped container is no error
    assert "is not running" in failed(hyperd.docker("kill", "trapper"))
    assert inspect(hyperd, "trapper", "{{.State.Status}} {{.State.ExitCode}}") == "exited 42"
    # A wait for the next exit of a stopped container ends when the container is removed instead.
    with (
        hyperd.http() as http,
        http.stream("POST", "/containers/trapper/wait", params={"condition": "next-exit"}) as waiting,
    ):
        assert waiting.status_code == 200  # the headers come at once: hyperd is waiting
        ok(hyperd.docker("rm", "trapper"))
        assert json.loads(waiting.read()) == {"StatusCode": 42, "Error": None}


def test_restart_stop_start_and_rm_f(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "-d", "--name", "sleeper", "busybox", "sleep", "1000"))
    first_start = inspect(hyperd, "sleeper", "{{.State.StartedAt}}")
    assert ok(hyperd.docker("restart", "-t", "1", "sleeper")) == "sleeper\n"
    assert (
        inspect(hyperd, "sleeper", "{{.State.Status}} {{.RestartCount}}") == "running 0"
    )  # a user's restart
    assert inspect(hyperd, "sleeper", "{{.State.StartedAt}}") != first_start
    assert ok(hyperd.docker("stop", "-t", "1", "sleeper")) == "sleeper\n"  # sleep ignores SIGTERM as PID 1
    assert inspect(hyperd, "sleeper", "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    assert ok(hyperd.docker("start", "sleeper")) == "sleeper\n"
    assert inspect(hyperd, "sleeper", "{{.State.Status}} {{.State.ExitCode}}") == "running 0"
    assert ok(hyperd.docker("rm", "-f", "sleeper")) == "sleeper\n"
    assert ok(hyperd.docker("ps", "-aq", "--filter", "name=sleeper")) == ""
    assert "No such container: nosuch" in failed(hyperd.docker("rm", "nosuch"))


def test_rm_refuses_a_running_container(hyperd: DockerHyperd, counter: str) -> None:
    assert "is running" in failed(hyperd.docker("rm", "counter"))
    assert inspect(hyperd, "counter", "{{.State.Status}}") == "running"


def test_restart_policy_on_failure_restarts_twice_then_stays_exited(hyperd: DockerHyperd) -> None:
    script = "echo run; exit 3"
    ok(
        hyperd.docker(
            "run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", script
        )
    )
    template = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}"
    eventually(lambda: inspect(hyperd, "flaky", template) == "exited 2 3", "two restarts, then exited")
    assert ok(hyperd.docker("logs", "flaky")) == "run\nrun\nrun\n"
    policy = json.loads(inspect(hyperd, "flaky", "{{json .HostConfig.RestartPolicy}}"))
    assert policy == {"Name": "on-failure", "MaximumRetryCount": 2}


# -- pause, rename, top, stats, cp -----------------------------------------------------------------


def test_pause_freezes_the_container_and_unpause_resumes_it(hyperd: DockerHyperd, counter: str) -> None:
    ok(hyperd.docker("pause", "counter"))
    try:
        assert inspect(hyperd, "counter", "{{.State.Status}} {{.State.Paused}}") == "paused true"
        assert "(Paused)" in ok(hyperd.docker("ps", "--filter", "name=counter", "--format", "{{.Status}}"))
        frozen = last_number(hyperd, "counter")
        time.sleep(1.5)  # seven ticks of the counter, had it run
        assert last_number(hyperd, "counter") == frozen
        assert "paused" in failed(hyperd.docker("exec", "counter", "true"))
    finally:
        ok(hyperd.docker("unpause", "counter"))
    assert inspect(hyperd, "counter", "{{.State.Status}}") == "running"
    eventually(lambda: last_number(hyperd, "counter") > frozen, "the counter counts again")


def test_rename(hyperd: DockerHyperd, counter: str) -> None:
    ok(hyperd.docker("rename", "counter", "renamed"))
    try:
        assert inspect(hyperd, counter, "{{.Name}}") == "/renamed"
        assert ok(hyperd.docker("ps", "-q", "--filter", "name=renamed")).split() == [counter[:12]]
        assert "No such container: counter" in failed(
            hyperd.docker("inspect", "--type", "container", "counter")
        )
    finally:
        ok(hyperd.docker("rename", counter, "counter"))
    assert inspect(hyperd, "counter", "{{.Id}}") == counter


def test_top_and_stats(hyperd: DockerHyperd, counter: str) -> None:
    lines = ok(hyperd.docker("top", "counter")).splitlines()
    assert lines[0].split()[:2] == ["UID", "PID"]
    assert any("while true" in line for line in lines[1:]), lines
    stats = ok(
        hyperd.docker("stats", "--no-stream", "--format", "{{.Name}}|{{.ID}}|{{.MemUsage}}", "counter")
    )
    name, short_id, memory = stats.strip().split("|")
    assert (name, short_id) == ("counter", counter[:12])
    assert re.match(r"[\d.]+[KMG]iB / [\d.]+[KMG]iB", memory), memory


def test_cp_into_and_out_of_a_container(hyperd: DockerHyperd, counter: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "sub" / "deep.txt").write_text("deep\n")
    ok(hyperd.docker("cp", str(tree / "top.txt"), "counter:/tmp/copied.txt"))  # file to a file path
    ok(hyperd.docker("cp", str(tree), "counter:/tmp/"))  # directory into a directory
    assert (
        ok(hyperd.docker("exec", "counter", "cat", "/tmp/copied.txt", "/tmp/tree/sub/deep.txt"))
        == "top\ndeep\n"
    )

    out = tmp_path / "out"
    out.mkdir()
    ok(hyperd.docker("cp", "counter:/tmp/tree", str(out)))  # directory out, into a directory
    assert (out / "tree" / "top.txt").read_text() == "top\n"
    assert (out / "tree" / "sub" / "deep.txt").read_text() == "deep\n"
    ok(hyperd.docker("cp", "counter:/tmp/copied.txt", str(out / "single.txt")))
    assert (out / "single.txt").read_text() == "top\n"

    streamed = subprocess.run(
        [DOCKER_CLI, "cp", "counter:/tmp/tree", "-"],
        capture_output=True,
        env=hyperd.cli_environ(),
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as archive:
        names = sorted(archive.getnames())
        deep = archive.extractfile("tree/sub/deep.txt")
        assert deep is not None and deep.read() == b"deep\n"
    assert names == ["tree", "tree/sub", "tree/sub/deep.txt", "tree/top.txt"]
    assert "Could not find the file /nowhere" in failed(hyperd.docker("cp", "counter:/nowhere", str(out)))


# -- system: version, info, events -----------------------------------------------------------------


def test_cp_works_on_created_and_exited_containers(hyperd: DockerHyperd, tmp_path: Path) -> None:
    """As in Docker: inject a file before the first start, fetch a result after the exit
    (Hyper boots the container's VM for the copy and powers it off after)."""
    config = tmp_path / "app.conf"
    config.write_text("injected\n")
    ok(hyperd.docker("create", "--name", "cpcreated", "busybox", "cat", "/etc/app.conf"))
    ok(hyperd.docker("cp", str(config), "cpcreated:/etc/app.conf"))
    assert ok(hyperd.docker("start", "-a", "cpcreated")) == "injected\n"
    ok(hyperd.docker("run", "--name", "cpexited", "busybox", "sh", "-c", "echo result > /out.txt"))
    ok(hyperd.docker("cp", "cpexited:/out.txt", str(tmp_path / "out.txt")))
    assert (tmp_path / "out.txt").read_text() == "result\n"
    missing = hyperd.docker("cp", "cpexited:/nonexistent", str(tmp_path / "x"))
    assert missing.returncode != 0 and "Could not find the file /nonexistent" in missing.stderr
    state = ok(hyperd.docker("inspect", "-f", "{{.State.Status}}", "cpexited", "cpcreated"))
    assert state.split() == ["exited", "exited"]


def test_version_and_info(hyperd: DockerHyperd, counter: str) -> None:
    server = json.loads(ok(hyperd.docker("version", "--format", "{{json .Server}}")))
    assert (server["ApiVersion"], server["MinAPIVersion"], server["Os"]) == ("1.43", "1.41", "linux")
    engine = server["Components"][0]  # what `docker version` prints
    assert (engine["Name"], engine["Details"]["MinAPIVersion"]) == ("Engine", "1.41")
    template = "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}/{{.Server.Arch}}"
    assert re.fullmatch(r"1\.43 1\.41 linux/\w+", ok(hyperd.docker("version", "--format", template)).strip())
    info = json.loads(ok(hyperd.docker("info", "--format", "{{json .}}")))
    assert info["ContainersRunning"] >= 1 and info["Images"] >= 1
    assert info["DefaultRuntime"] == "hyper"


def test_events_since_and_until_with_filters(hyperd: DockerHyperd) -> None:
    since = time.time()
    assert hyperd.docker("run", "--rm", "--name", "eventful", "busybox", "sh", "-c", "exit 1").returncode == 1
    until = time.time()
    window = ("--since", f"{since:.9f}", "--until", f"{until:.9f}")
    actions = ok(
        hyperd.docker("events", *window, "--filter", "container=eventful", "--format", "{{.Action}}")
    )
    assert actions.split() == ["create", "start", "die", "destroy"]
    exits = "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}"
    died = ok(hyperd.docker("events", *window, "--filter", "event=die", "--format", exits))
    assert died.splitlines() == ["eventful 1"]
    earlier = ("--since", f"{since - 3600:.0f}", "--until", f"{since:.9f}", "--filter", "container=eventful")
    before = ok(hyperd.docker("events", *earlier))
    assert before == ""


# -- what Hyper does not do ------------------------------------------------------------------------


def test_unsupported_options_are_refused_by_name(hyperd: DockerHyperd) -> None:
    swappiness = ("--memory-swappiness", "10")
    assert "--memory-swappiness" in failed(hyperd.docker("run", "--rm", *swappiness, "busybox", "true"))
    # This hyperd has no default bridge (HYPER_BRIDGE=none): a published port needs a network.
    assert "published ports need a network" in failed(
        hyperd.docker("run", "--rm", "-p", "80:80", "busybox", "true")
    )
    refused = failed(hyperd.docker("plugin", "ls"))
    assert "Hyper does not implement GET /v1.43/plugins" in refused
    with hyperd.http() as http:
        answer = http.get("/v1.43/plugins")
        missing = http.get("/v1.43/containers/nosuch/json")
    assert answer.status_code == 501 and answer.headers["Content-Type"] == "application/json"
    assert "/plugins" in answer.json()["message"]
    assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/json")
    assert missing.json() == {"message": "No such container: nosuch"}
    # The CLI's inspect tries every kind of object; those Hyper lacks must not stop it.
    assert "No such object: nosuch" in failed(hyperd.docker("inspect", "nosuch"))
    assert set(ok(hyperd.docker("ps", "-a", "--format", "{{.Names}}")).split()) <= {"counter"}  # none made


# -- docker-py -------------------------------------------------------------------------------------


def test_docker_py_run_returns_the_output_or_raises_with_stderr(hyperd: DockerHyperd) -> None:
    import docker.errors

    client = hyperd.docker_py()
    output = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], remove=True)
    assert output == b"out\n"
    with pytest.raises(docker.errors.ContainerError) as caught:
        client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 3"], remove=True, stderr=True)
    stderr: object = caught.value.stderr  # bytes, whatever the stubs say
    assert caught.value.exit_status == 3 and stderr == b"bad\n"
    assert client.containers.list(all=True, filters={"ancestor": "busybox", "status": "exited"}) == []
    client.close()


def test_docker_py_detached_container_lifecycle(hyperd: DockerHyperd) -> None:
    import docker.errors

    client = hyperd.docker_py()
    container = client.containers.run(
        "busybox", ["sh", "-c", "echo started; exec sleep 1000"], detach=True, name="pyc", labels={"by": "py"}
    )
    assert container.name == "pyc"
    assert [c.name for c in client.containers.list(filters={"label": "by=py"})] == ["pyc"]
    fetched = client.containers.get("pyc")
    assert (fetched.id, fetched.status) == (container.id, "running")
    eventually(lambda: fetched.logs() == b"started\n", "the container logged")

    result = fetched.exec_run(["sh", "-c", "echo o; echo e >&2; exit 5"])
    assert (result.exit_code, result.output) == (5, b"o\ne\n")
    split = fetched.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
    streams: object = split.output  # (stdout, stderr) with demux
    assert (split.exit_code, streams) == (0, (b"o\n", b"e\n"))
    as_user = fetched.exec_run(
        ["sh", "-c", "echo $X; pwd; id -u"], environment={"X": "y"}, workdir="/tmp", user="1000"
    )
    assert (as_user.exit_code, as_user.output) == (0, b"y\n/tmp\n1000\n")

    fetched.stop(timeout=1)
    fetched.reload()
    assert (fetched.status, fetched.attrs["State"]["ExitCode"]) == ("exited", 137)
    fetched.remove()
    with pytest.raises(docker.errors.NotFound, match="No such container: pyc"):
        client.containers.get("pyc")
    client.close()


def test_docker_py_images_and_version(hyperd: DockerHyperd) -> None:
    client = hyperd.docker_py()
    tags = [tag for image in client.images.list() for tag in image.tags]
    assert "busybox:latest" in tags
    version = client.version()
    assert version["ApiVersion"] == "1.43"
    assert version["Components"][0]["Details"]["MinAPIVersion"] == "1.41"
    client.close()
