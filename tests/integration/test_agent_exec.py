"""The agent's exec, top, stats and archive requests, against a real VM.

One VM serves the whole module (a boot is the slow part under TCG): it holds
container c1, whose main process keeps running for every test, and c2, whose
main process one test kills. The tests drive the async AgentClient through
an event loop in a background thread, so each check is its own test.
"""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import shutil
import signal
import stat
import tarfile
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hyper.agent.host import AgentClient, AgentRequestError, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.image import ImageStore
from hyper.paths import HyperPaths
from hyper.runtime.run import make_writable_disk, prepare_vm_inputs
from hyper.runtime.settings import Settings
from hyper.vm.driver import DiskSpec
from hyper.vm.qemu import QemuDriver
from tests.integration.conftest import BUSYBOX, RESULTS
from tests.support.images import directory, file, hardlink, layer_tar, symlink
from tests.support.vm import agent_vm_spec, docker_confinement

pytestmark = pytest.mark.vm

T = TypeVar("T")
WAIT = 120.0
MAIN_SCRIPT = (
    "echo hi > /tmp/x; mkdir -p /data/sub; echo one > /data/sub/f; ln -s sub/f /data/link;"
    " ln -s /nowhere /data/broken; ln -s ../../../../.. /data/up; echo ready; exec sleep 1000"
)


class Output:
    def __init__(self, status: int, stdout: bytes, stderr: bytes) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr

    def __repr__(self) -> str:
        return f"Output(status={self.status}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Guest:
    """A booted VM and its agent client, driven from synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.streams = itertools.count(100)
        self.vm: QemuDriver | None = None
        self.console_log: Path | None = None
        self._agent: AgentClient | None = None

    @property
    def agent(self) -> AgentClient:
        assert self._agent is not None
        return self._agent

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT * 2)

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.run(self.agent.request(kind, **fields))

    async def boot(self, state: Path, cache: Path, run_dir: Path) -> None:
        paths = HyperPaths(state=state, cache=cache, runtime=run_dir)
        store = ImageStore(paths.images)
        (layer,) = store.layer_disks(store.get(BUSYBOX))
        inputs = await prepare_vm_inputs(paths, Settings(), None)
        disks = [DiskSpec(layer.path, "hl0", True)]
        for name in ("hw1", "hw2"):
            make_writable_disk(state / f"{name}.ext4")
            disks.append(DiskSpec(state / f"{name}.ext4", name, False))
        spec = agent_vm_spec("exec", inputs, run_dir / "vm", disks)
        self.console_log = spec.console_log
        self.vm = QemuDriver(spec)
        await self.vm.start()
        self._agent = await AgentClient.connect(spec.agent_socket, 10)
        await self.agent.hello(WAIT)
        await self.agent.request("setup", hostname="exec-test", etc_files={})
        for container, disk in (("c1", "hw1"), ("c2", "hw2")):
            await self.agent.request(
                "mount_container",
                timeout=WAIT,
                container=container,
                layers=[{"serial": "hl0", "fstype": layer.fs_type}],
                writable={"serial": disk, "fstype": "ext4", "options": "noinit_itable"},
            )

    async def start_main(self, container: str, script: str) -> ProcessChannel:
        """Start `sh -c script` as the container's main process; wait until it says ready."""
        stream = next(self.streams)
        channel = self.agent.open_process(stream)
        await self.agent.request(
            "start",
            container=container,
            process=stream,
            args=["sh", "-c", script],
            env=[],
            cwd="/",
            user="0",
            confinement=docker_confinement(),
        )
        seen = b""
        while b"ready\n" not in seen:
            item = await asyncio.wait_for(channel.output.get(), WAIT)
            assert item is not None, f"main process of {container} ended early: {seen!r}"
            seen += item[1]
        return channel

    async def close(self) -> None:
        if self._agent is not None:
            await self._agent.close()
        if self.vm is not None:
            await self.vm.close()

    # -- processes on a stream --------------------------------------------------
    async def collect(self, channel: ProcessChannel) -> Output:
        out, err = bytearray(), bytearray()
        while (item := await asyncio.wait_for(channel.output.get(), WAIT)) is not None:
            (out if item[0] is FrameKind.STDOUT else err).extend(item[1])
        return Output(await asyncio.wait_for(channel.exit_status, WAIT), bytes(out), bytes(err))

    async def begin(self, kind: str, container: str = "c1", **fields: Any) -> tuple[int, ProcessChannel]:
        stream = next(self.streams)
        channel = self.agent.open_process(stream)
        await self.agent.request(kind, container=container, process=stream, **fields)
        return stream, channel

    async def exec_async(
        self, args: list[str], *, container: str = "c1", stdin: bytes | None = None, **fields: Any
    ) -> Output:
        fields.setdefault("env", [])
        stream, channel = await self.begin("exec", container, args=args, stdin=stdin is not None, **fields)
        if stdin is not None:
            await self.agent.write_stdin(stream, stdin)
            await self.agent.close_stdin(stream)
        return await self.collect(channel)

    def exec(self, args: list[str], **fields: Any) -> Output:
        return self.run(self.exec_async(args, **fields))

    def archive_get(self, path: str, container: str = "c1") -> Output:
        async def get() -> Output:
            _, channel = await self.begin("archive_get", container, path=path)
            return await self.collect(channel)

        return self.run(get())

    def archive_put(self, path: str, data: bytes, container: str = "c1") -> Output:
        async def put() -> Output:
            stream, channel = await self.begin("archive_put", container, path=path)
            await self.agent.write_stdin(stream, data)
            await self.agent.close_stdin(stream)
            return await self.collect(channel)

        return self.run(put())


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest, image_state: Path, shared_cache: Path) -> Iterator[Guest]:
    failures_before = request.session.testsfailed
    state = Path(tempfile.mkdtemp(prefix="hyper-exec-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True, symlinks=True)
    run_dir = Path(tempfile.mkdtemp(prefix="hy-", dir="/tmp"))  # socket paths must stay short
    guest = Guest()
    try:
        guest.run(guest.boot(state, shared_cache, run_dir))
        guest.run(guest.start_main("c1", MAIN_SCRIPT))
        yield guest
    finally:
        if guest.console_log is not None and request.session.testsfailed > failures_before:
            logs = RESULTS / "test_agent_exec"
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(guest.console_log, logs / "console.log")
        guest.run(guest.close())
        guest.loop.call_soon_threadsafe(guest.loop.stop)
        guest.thread.join(10)
        guest.loop.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def refusal(guest: Guest, kind: str, **fields: Any) -> AgentRequestError:
    with pytest.raises(AgentRequestError) as caught:
        guest.request(kind, **fields)
    return caught.value


def refused_exec(guest: Guest, args: list[str], **fields: Any) -> AgentRequestError:
    with pytest.raises(AgentRequestError) as caught:
        guest.exec(args, **fields)
    return caught.value


# -- exec -------------------------------------------------------------------------
def test_exec_sees_the_main_processs_files_and_pid_namespace(guest: Guest) -> None:
    shared = guest.exec(["cat", "/tmp/x"])
    assert (shared.status, shared.stdout) == (0, b"hi\n")
    pid_one = guest.exec(["cat", "/proc/1/cmdline"])
    assert pid_one.stdout == b"sleep\x001000\x00"  # PID 1 is the main process
    own = guest.exec(["sh", "-c", "echo $$; hostname"])
    assert own.status == 0, own
    pid, hostname = own.stdout.decode().split()
    assert int(pid) > 1
    assert hostname == "exec-test"


def test_exec_runs_as_the_user_in_the_directory_with_the_environment(guest: Guest) -> None:
    result = guest.exec(
        ["sh", "-c", 'id -u; id -g; pwd; echo "$FOO" "$HOME"'], user="app", cwd="/data/sub", env=["FOO=bar"]
    )
    assert result.status == 0, result
    assert result.stdout.decode().split("\n") == ["1000", "1000", "/data/sub", "bar /home/app", ""]
    numeric = guest.exec(["id", "-u"], user="4321:99")
    assert numeric.stdout == b"4321\n"


def test_exec_with_a_terminal(guest: Guest) -> None:
    result = guest.exec(["sh", "-c", "tty; stty size"], tty=True, rows=30, cols=100)
    assert result.status == 0, result
    lines = result.stdout.decode().split()
    assert lines[0].startswith("/dev/pts/")
    assert lines[1:] == ["30", "100"]
    assert result.stderr == b""  # a terminal has one stream


def test_execs_run_at_once_and_show_in_top(guest: Guest) -> None:
    async def together() -> tuple[Output, dict[str, Any], Output]:
        stream, reader = await guest.begin(
            "exec", args=["sh", "-c", "read line; echo got $line"], env=[], stdin=True
        )
        quick = await guest.exec_async(["echo", "quick"])  # ends while the first one waits
        listing = await guest.agent.request("top", container="c1")
        await guest.agent.write_stdin(stream, b"x\n")
        await guest.agent.close_stdin(stream)
        return quick, listing, await guest.collect(reader)

    quick, listing, waited = guest.run(together())
    assert quick.stdout == b"quick\n"
    assert waited.stdout == b"got x\n"
    assert listing["titles"] == ["UID", "PID", "PPID", "STAT", "TIME", "CMD"]
    rows = {row[1]: row for row in listing["processes"]}
    assert rows["1"][0] == "root"  # the user's name in the container, as Docker shows it
    assert rows["1"][2] == "0"  # its parent is outside the container
    assert rows["1"][5] == "sleep 1000"
    assert [row for row in rows.values() if row[5] == "sh -c read line; echo got $line"]
    assert all(row[4].replace(":", "").isdigit() for row in rows.values())


def test_exec_failures_have_their_stage(guest: Guest) -> None:
    missing = refused_exec(guest, ["no-such-binary"])
    assert (missing.stage, missing.errno) == ("exec", errno.ENOENT)
    assert "executable file not found" in str(missing)
    user = refused_exec(guest, ["true"], user="nosuchuser")
    assert user.stage == "user"
    cwd = refused_exec(guest, ["true"], cwd="/no/such/dir")  # an exec's directory is not created
    assert (cwd.stage, cwd.errno) == ("cwd", errno.ENOENT)
    unknown = refused_exec(guest, ["true"], container="c9")
    assert (unknown.stage, unknown.errno) == ("container", errno.ENOENT)


# -- stats ------------------------------------------------------------------------
def test_stats_are_sane(guest: Guest) -> None:
    figures = guest.request("stats")
    cpu, memory = figures["cpu"], figures["memory"]
    assert cpu["online_cpus"] == 1
    assert len(cpu["per_cpu_ns"]) == 1
    assert 0 < cpu["total_ns"] <= cpu["system_ns"]
    assert 0 < memory["available"] < memory["total"] <= 256 << 20
    assert memory["used"] == memory["total"] - memory["available"]
    assert {"vda", "vdb", "vdc"} <= set(figures["disks"])
    assert figures["disks"]["vda"]["read_bytes"] > 0
    assert figures["disks"]["vda"]["reads"] > 0
    assert "lo" not in figures["networks"]
    assert figures["pids"] >= 1  # c1's main process at least


# -- archives ---------------------------------------------------------------------
def test_archive_stat(guest: Guest) -> None:
    link = guest.request("archive_stat", container="c1", path="/data/link")
    assert stat.S_ISLNK(link["mode"])
    assert (link["name"], link["link_target"]) == ("link", "/data/sub/f")
    broken = guest.request("archive_stat", container="c1", path="/data/broken")
    assert broken["link_target"] == "/nowhere"
    # A symlink climbing out of the root stays at the container's root.
    escaped = guest.request("archive_stat", container="c1", path="/data/up/tmp/x")
    assert stat.S_ISREG(escaped["mode"])
    assert (escaped["name"], escaped["size"], escaped["link_target"]) == ("x", 3, "")
    assert escaped["mtime"] > 1_700_000_000
    missing = refusal(guest, "archive_stat", container="c1", path="/data/nothing")
    assert (missing.stage, missing.errno) == ("archive", errno.ENOENT)


def test_archive_get_of_a_file_and_a_directory(guest: Guest) -> None:
    single = guest.archive_get("/tmp/x")
    assert single.status == 0, single
    with tarfile.open(fileobj=io.BytesIO(single.stdout)) as tar:
        [member] = tar.getmembers()
        assert member.name == "x"
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == b"hi\n"

    tree = guest.archive_get("/data/")
    assert tree.status == 0, tree
    with tarfile.open(fileobj=io.BytesIO(tree.stdout)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {"data", "data/sub", "data/sub/f", "data/link", "data/broken"} <= set(members)
        assert members["data"].isdir()
        assert members["data/link"].issym() and members["data/link"].linkname == "sub/f"
        extracted = tar.extractfile(members["data/sub/f"])
        assert extracted is not None and extracted.read() == b"one\n"

    missing = refusal(guest, "archive_get", container="c1", process=next(guest.streams), path="/nope")
    assert (missing.stage, missing.errno) == ("archive", errno.ENOENT)


def test_archive_put_then_exec_sees_the_files(guest: Guest) -> None:
    data = layer_tar(
        [
            directory("new", 0o750, uid=1234, gid=4321, mtime=1_000_000_000),
            file("new/file", b"content\n", 0o640, uid=1234, gid=4321, mtime=1_000_000_000),
            symlink("new/ln", "file"),
            hardlink("new/hard", "new/file"),
            file("/rooted", b"kept inside\n"),
        ]
    )
    result = guest.archive_put("/data", data)
    assert (result.status, result.stderr) == (0, b""), result
    check = guest.exec(
        [
            "sh",
            "-c",
            "cat /data/new/file /data/rooted; stat -c '%u %g %a %Y %h' /data/new/file /data/new;"
            " readlink /data/new/ln",
        ]
    )
    assert check.stdout.decode().split("\n") == [
        "content",
        "kept inside",
        "1234 4321 640 1000000000 2",
        "1234 4321 750 1000000000 2",
        "file",
        "",
    ]


def test_archive_put_refusals(guest: Guest) -> None:
    not_dir = refusal(guest, "archive_put", container="c1", process=next(guest.streams), path="/tmp/x")
    assert (not_dir.stage, not_dir.errno) == ("archive", errno.ENOTDIR)
    missing = refusal(guest, "archive_put", container="c1", process=next(guest.streams), path="/nope")
    assert (missing.stage, missing.errno) == ("archive", errno.ENOENT)
    escaping = guest.archive_put("/data", layer_tar([file("../evil", b"no")]))
    assert escaping.status == 1
    assert b"outside" in escaping.stderr
    assert guest.exec(["ls", "/evil", "/data/evil"]).status != 0


# -- a container whose main process ends ---------------------------------------------
def test_execs_end_with_the_main_process_and_later_ones_are_refused(guest: Guest) -> None:
    async def kill_main() -> tuple[int, int]:
        main = await guest.start_main("c2", "echo ready; exec sleep 1000")
        _, sleeper = await guest.begin("exec", "c2", args=["sleep", "1000"], env=[])
        await guest.agent.request("signal", process=main.stream, signal=signal.SIGKILL)
        main_status = await asyncio.wait_for(main.exit_status, WAIT)
        return main_status, (await guest.collect(sleeper)).status

    main_status, exec_status = guest.run(kill_main())
    assert main_status == 128 + signal.SIGKILL
    assert exec_status == 128 + signal.SIGKILL  # the kernel ended it with the PID namespace
    after = refused_exec(guest, ["true"], container="c2")
    assert (after.stage, after.errno) == ("container", errno.ESRCH)
    assert "not running" in str(after)
    top = refusal(guest, "top", container="c2")
    assert top.stage == "container"
    # Files can still be copied out of a stopped container's root.
    passwd = guest.request("archive_stat", container="c2", path="/etc/passwd")
    assert stat.S_ISREG(passwd["mode"])
    copied = guest.archive_get("/etc/passwd", container="c2")
    assert copied.status == 0, copied
    with tarfile.open(fileobj=io.BytesIO(copied.stdout)) as tar:
        assert tar.getnames() == ["passwd"]
