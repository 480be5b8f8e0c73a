"""The container lifecycle through the real `hyper` CLI and real VMs: create,
start (-a), restart, pause, rename, exec, attach, inspect, top, stats, cp and
restart policies.

Each test runs `python -m hyper.cli.main` on its own state and runtime
directories (conftest's HyperEnv); the first container command starts hyperd
in the background, as it would for a user. The `hyper` fixture removes every
container and stops that hyperd afterwards, so no QEMU and no hyperd is left.
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import pexpect
import pytest

from hyper.cli.inspect_commands import STATS_HEADER
from tests.integration.conftest import BUSYBOX, HyperEnv, stop_hyperd

pytestmark = pytest.mark.vm

T = TypeVar("T")
WAIT = 120.0
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while true; do sleep 0.2; done']


@pytest.fixture
def hyper(hyper_env: HyperEnv) -> Iterator[HyperEnv]:
    try:
        yield hyper_env
    finally:
        stop_hyperd(hyper_env)


def ok(env: HyperEnv, *args: str, input: bytes | None = None) -> str:
    result = env.run(*args, input=input)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout.decode()


def eventually(probe: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll until `probe` returns something; a failure names what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.3)


def inspect_field(env: HyperEnv, ref: str, template: str) -> str:
    return ok(env, "inspect", "-f", template, ref).strip()


def spawn(env: HyperEnv, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "hyper.cli.main", *args], env=env.environ(), dimensions=(30, 100), timeout=WAIT
    )


# ---- create, start, restart -----------------------------------------------------------------


def test_create_then_start_and_wait(hyper: HyperEnv) -> None:
    created = ok(hyper, "create", "--name", "job", BUSYBOX, "sh", "-c", "echo hi; exit 4").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", created)
    assert inspect_field(hyper, "job", "{{.State.Status}} {{.Id}}") == f"created {created}"
    assert "Created" in ok(hyper, "ps", "-a")
    assert hyper.qemu_processes() == []  # nothing boots before start
    assert ok(hyper, "start", "job") == "job\n"
    assert ok(hyper, "wait", "job") == "4\n"
    assert ok(hyper, "logs", "job") == "hi\n"
    failed = hyper.run("start", "missing")
    assert failed.returncode == 1 and b"missing" in failed.stderr


def test_start_attached_passes_stdin_and_exits_with_the_status(hyper: HyperEnv) -> None:
    script = "read line; echo got $line; echo err >&2; exit 5"
    ok(hyper, "create", "-i", "--name", "reader", BUSYBOX, "sh", "-c", script)
    result = hyper.run("start", "-ai", "reader", input=b"hello\n")
    assert result.returncode == 5, result.stderr
    assert (result.stdout, result.stderr) == (b"got hello\n", b"err\n")


def test_restart_keeps_the_containers_files(hyper: HyperEnv) -> None:
    script = 'trap "exit 0" TERM; echo boot >> /boots; while true; do sleep 0.2; done'
    ok(hyper, "run", "-d", "--name", "keeper", BUSYBOX, "sh", "-c", script)
    ok(hyper, "exec", "keeper", "sh", "-c", "echo kept > /data")
    first_start = inspect_field(hyper, "keeper", "{{.State.StartedAt}}")
    assert ok(hyper, "restart", "-t", "5", "keeper") == "keeper\n"
    assert inspect_field(hyper, "keeper", "{{.State.Status}}") == "running"
    assert inspect_field(hyper, "keeper", "{{.State.StartedAt}}") != first_start
    assert ok(hyper, "exec", "keeper", "cat", "/data", "/boots") == "kept\nboot\nboot\n"


def test_restart_policy_on_failure_gives_up_after_its_count(hyper: HyperEnv) -> None:
    ok(
        hyper,
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        BUSYBOX,
        "sh",
        "-c",
        "echo try; exit 3",
    )

    def settled() -> str | None:
        text = inspect_field(hyper, "flaky", "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}")
        return text if text.startswith("exited 2") else None

    assert eventually(settled, "two restarts, then exited") == "exited 2 3"
    assert ok(hyper, "logs", "flaky") == "try\n" * 3
    assert inspect_field(hyper, "flaky", "{{json .HostConfig.RestartPolicy}}") == (
        '{"Name":"on-failure","MaximumRetryCount":2}'
    )


def test_run_detached_rm_removes_it_when_it_exits(hyper: HyperEnv) -> None:
    container = ok(hyper, "run", "-d", "--rm", BUSYBOX, "true").strip()
    eventually(lambda: True if container[:12] not in ok(hyper, "ps", "-a") else None, "its removal")
    assert hyper.run("inspect", container).returncode != 0


# ---- pause, rename ---------------------------------------------------------------------------


def _lines(env: HyperEnv, ref: str) -> int:
    return len(ok(env, "logs", ref).split())


def test_pause_stops_the_counter_and_rename(hyper: HyperEnv) -> None:
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"
    ok(hyper, "run", "-d", "--name", "counter", BUSYBOX, "sh", "-c", counter)
    eventually(lambda: True if _lines(hyper, "counter") >= 3 else None, "the counter counting")
    assert ok(hyper, "pause", "counter") == "counter\n"
    assert "(Paused)" in ok(hyper, "ps")
    assert inspect_field(hyper, "counter", "{{.State.Status}} {{.State.Paused}}") == "paused true"
    time.sleep(1)  # what was on its way when the vCPUs stopped
    frozen = _lines(hyper, "counter")
    time.sleep(2)
    assert _lines(hyper, "counter") == frozen
    refused = hyper.run("exec", "counter", "true")
    assert refused.returncode != 0 and b"paused" in refused.stderr
    assert ok(hyper, "unpause", "counter") == "counter\n"
    eventually(lambda: True if _lines(hyper, "counter") > frozen else None, "counting again")

    assert ok(hyper, "rename", "counter", "tally") == ""
    assert inspect_field(hyper, "tally", "{{.Name}}") == "/tally"
    assert "tally" in ok(hyper, "ps")
    assert hyper.run("inspect", "counter").returncode == 1


# ---- exec ------------------------------------------------------------------------------------


def test_exec_options_and_exit_codes(hyper: HyperEnv) -> None:
    ok(hyper, "run", "-d", "--name", "box", "-e", "FROM_RUN=1", BUSYBOX, *SLEEPER)
    shown = ok(
        hyper,
        "exec",
        "-e",
        "A=b c",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "box",
        "sh",
        "-c",
        'echo "$A|$FROM_RUN|$(pwd)|$(id -u):$(id -g)"',
    )
    assert shown == "b c|1|/tmp|1000:1000\n"
    streams = hyper.run("exec", "box", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (streams.returncode, streams.stdout, streams.stderr) == (3, b"out\n", b"err\n")
    missing = hyper.run("exec", "box", "no-such-command")
    assert missing.returncode == 127
    assert b"no-such-command" in missing.stdout + missing.stderr
    piped = hyper.run("exec", "-i", "box", "sh", "-c", "wc -c; echo end", input=b"x" * 100_000)
    assert (piped.returncode, piped.stdout.split()) == (0, [b"100000", b"end"])
    assert ok(hyper, "exec", "-d", "box", "sh", "-c", "sleep 0.5; echo later > /bg") == ""
    eventually(
        lambda: True if hyper.run("exec", "box", "cat", "/bg").stdout == b"later\n" else None, "exec -d"
    )
    unknown = hyper.run("exec", "nope", "true")
    assert unknown.returncode == 125 and b"nope" in unknown.stderr


def test_exec_with_a_terminal(hyper: HyperEnv) -> None:
    ok(hyper, "run", "-d", "--name", "box", BUSYBOX, *SLEEPER)
    child = spawn(hyper, "exec", "-it", "box", "sh")
    try:
        child.expect(r"[#$] ")
        child.sendline("stty size; tty")
        child.expect(r"30 100")
        child.expect(r"/dev/pts/\d+")
        child.setwinsize(40, 120)
        time.sleep(0.5)  # SIGWINCH, then a resize request
        child.sendline("stty size")
        child.expect(r"40 120")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 7


# ---- attach ----------------------------------------------------------------------------------


def _read_until(stream: IO[bytes], wanted: bytes, timeout: float = WAIT) -> bytes:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        if not selector.select(max(0.0, deadline - time.monotonic())):
            raise AssertionError(f"never read {wanted!r}; got {seen!r}")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the stream ended before {wanted!r}; got {seen!r}")
        seen += chunk
    return seen


def _attach(env: HyperEnv, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hyper.cli.main", "attach", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env.environ(),
    )


def test_attach_without_a_terminal_passes_the_detach_keys_as_data(hyper: HyperEnv) -> None:
    """As in Docker, ctrl-p ctrl-q detach only on a terminal: in a pipe they are
    data (binary input holds them sooner or later) and must reach the process."""
    script = 'while read x; do [ "$x" = quit ] && exit 6; echo "got $x"; done'
    ok(hyper, "run", "-d", "-i", "--name", "echoer", BUSYBOX, "sh", "-c", script)
    first = _attach(hyper, "echoer")
    assert first.stdin is not None and first.stdout is not None
    first.stdin.write(b"one\n")
    first.stdin.flush()
    assert b"got one" in _read_until(first.stdout, b"got one")
    first.stdin.write(b"\x10\x11two\n")  # ctrl-p ctrl-q, then more
    first.stdin.flush()
    assert b"got \x10\x11two" in _read_until(first.stdout, b"two")
    _, err = first.communicate(b"quit\n", timeout=WAIT)
    assert first.returncode == 6, err
    assert b"read escape sequence" not in err
    stopped = hyper.run("attach", "echoer")
    assert stopped.returncode != 0
    assert b"You cannot attach to a stopped container, start it first" in stopped.stderr


def test_attach_to_a_terminal_and_detach(hyper: HyperEnv) -> None:
    ok(hyper, "run", "-d", "-it", "--name", "term", BUSYBOX, "cat")
    child = spawn(hyper, "attach", "term")
    try:
        time.sleep(1)  # attached before typing: what is typed before is the terminal's, not cat's
        child.send("hello\r")
        child.expect("hello")
        child.expect("hello")  # the terminal's echo, then cat's copy
        child.send("\x10\x11")
        child.expect("read escape sequence")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert inspect_field(hyper, "term", "{{.State.Status}}") == "running"


# ---- inspect, top, stats ------------------------------------------------------------------------


def test_inspect_top_and_stats(hyper: HyperEnv) -> None:
    container = ok(hyper, "run", "-d", "--name", "web", "-l", "tier=front", BUSYBOX, *SLEEPER).strip()
    (document,) = json.loads(ok(hyper, "inspect", "web"))
    assert (document["Id"], document["Name"], document["State"]["Running"]) == (container, "/web", True)
    assert document["Config"]["Labels"] == {"tier": "front"}
    assert (
        inspect_field(hyper, container[:12], "{{.State.Status}} {{.Config.Labels.tier}}") == "running front"
    )
    partly = hyper.run("inspect", "web", "nope")
    assert partly.returncode == 1 and b"nope" in partly.stderr
    assert [d["Id"] for d in json.loads(partly.stdout)] == [container]

    top = ok(hyper, "top", "web").splitlines()
    assert "PID" in top[0].split() and "CMD" in top[0].split()
    assert any("sleep" in row for row in top[1:]), top

    stats = ok(hyper, "stats", "--no-stream", "web").splitlines()
    assert re.split(r"\s{2,}", stats[0]) == list(STATS_HEADER)
    row = re.split(r"\s{2,}", stats[1])
    assert row[:2] == [container[:12], "web"]
    assert re.fullmatch(r"\d+\.\d\d%", row[2]) and re.fullmatch(r"\d+\.\d\d%", row[4])
    _, limit = row[3].split(" / ")
    assert limit.endswith("MiB") and float(limit[:-3]) > 100
    assert int(row[7]) >= 1  # its shell at least
    assert len(stats) == 2


# ---- cp -------------------------------------------------------------------------------------------


def test_cp_both_ways(hyper: HyperEnv, tmp_path: Path) -> None:
    ok(hyper, "run", "-d", "--name", "files", BUSYBOX, *SLEEPER)
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("one\n")
    (source / "a").chmod(0o640)
    (source / "sub" / "b").write_text("two\n")
    (source / "link").symlink_to("a")

    # Host to container: a directory under a new name, a file into a directory.
    ok(hyper, "cp", str(source), "files:/data")
    ok(hyper, "cp", str(source / "a"), "files:/tmp/")
    listing = ok(
        hyper,
        "exec",
        "files",
        "sh",
        "-c",
        "cat /data/a /data/sub/b /tmp/a; readlink /data/link; stat -c '%a %u' /data/a",
    )
    assert listing == "one\ntwo\none\na\n640 0\n"

    # Container to host: a directory to a new name, a file into a directory, a directory's contents.
    ok(hyper, "cp", "files:/data", str(tmp_path / "back"))
    assert (tmp_path / "back" / "sub" / "b").read_text() == "two\n"
    assert os.readlink(tmp_path / "back" / "link") == "a"
    into = tmp_path / "into"
    into.mkdir()
    ok(hyper, "cp", "files:/data/sub/b", str(into))
    assert (into / "b").read_text() == "two\n"
    ok(hyper, "cp", "files:/data/.", str(tmp_path / "contents"))
    assert sorted(p.name for p in (tmp_path / "contents").iterdir()) == ["a", "link", "sub"]

    # Tar streams both ways.
    streamed = hyper.run("cp", "files:/data/sub/b", "-")
    assert streamed.returncode == 0, streamed.stderr
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as tar:
        assert tar.getnames() == ["b"]
    upload = io.BytesIO()
    with tarfile.open(fileobj=upload, mode="w") as tar:
        info = tarfile.TarInfo("from-stdin")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"tar\n"))
    ok(hyper, "cp", "-", "files:/tmp", input=upload.getvalue())
    assert ok(hyper, "exec", "files", "cat", "/tmp/from-stdin") == "tar\n"

    # Docker's errors.
    missing = hyper.run("cp", "files:/nope", str(tmp_path))
    assert missing.returncode != 0
    assert b"Could not find the file /nope in container files" in missing.stderr
    no_parent = hyper.run("cp", "files:/data/a", str(tmp_path / "none" / "x"))
    assert no_parent.returncode != 0 and b"no such directory" in no_parent.stderr
    no_dest = hyper.run("cp", str(source / "a"), "files:/none/x")
    assert no_dest.returncode != 0 and b"Could not find the file /none" in no_dest.stderr
