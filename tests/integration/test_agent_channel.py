"""The agent channel across a host reconnect, with a real VM: nothing lost, nothing twice.

This is what lets a restarted hyperd pick up a running pod: the agent keeps
what it sent until acknowledged, and the new host resumes from its offset.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from hyper.agent.host import AgentClient
from hyper.agent.protocol import FrameKind
from hyper.image import ImageStore
from hyper.paths import HyperPaths
from hyper.runtime.run import make_writable_disk, prepare_vm_inputs
from hyper.runtime.settings import Settings
from hyper.vm.driver import DiskSpec
from hyper.vm.qemu import QemuDriver
from tests.integration.conftest import BUSYBOX
from tests.support.vm import agent_vm_spec, docker_confinement

pytestmark = pytest.mark.vm

LINES = 6000


async def _collect(
    channel_output: asyncio.Queue[tuple[FrameKind, bytes, int | None] | None], out: bytearray, stop_at: int
) -> None:
    while out.count(b"\n") < stop_at:
        item = await asyncio.wait_for(channel_output.get(), 120)
        if item is None:
            return
        out += item[1]


async def _reconnect_mid_stream(state: Path, cache: Path, run_dir: Path) -> bytes:
    paths = HyperPaths(state=state, cache=cache, runtime=run_dir)
    store = ImageStore(paths.images)
    image = store.get(BUSYBOX)
    (layer,) = store.layer_disks(image)
    inputs = await prepare_vm_inputs(paths, Settings(), None)
    writable = state / "writable.ext4"
    make_writable_disk(writable)
    spec = agent_vm_spec(
        "reconnect",
        inputs,
        run_dir / "vm",
        [DiskSpec(layer.path, "hl0", True), DiskSpec(writable, "hw0", False)],
    )
    vm = QemuDriver(spec)
    await vm.start()
    try:
        first = await AgentClient.connect(spec.agent_socket, 10)
        await first.hello(120)
        await first.request("setup", hostname="r", etc_files={})
        await first.request(
            "mount_container",
            container="c1",
            layers=[{"serial": "hl0", "fstype": layer.fs_type}],
            writable={"serial": "hw0", "fstype": "ext4", "options": "noinit_itable"},
        )
        channel = first.open_process(1)
        script = f"i=0; while [ $i -lt {LINES} ]; do echo line$i; i=$((i+1)); done"
        await first.request(
            "start",
            container="c1",
            process=1,
            args=["sh", "-c", script],
            env=[],
            cwd="/",
            user="0",
            confinement=docker_confinement(),
        )
        received = bytearray()
        await _collect(channel.output, received, LINES // 4)
        await first.close()  # the host goes away mid-stream, as a killed hyperd would
        while not channel.output.empty():  # frames already delivered before the cut
            item = channel.output.get_nowait()
            if item is not None:
                received += item[1]
        resume = first.received_offset
        assert resume is not None
        await asyncio.sleep(1.0)  # the guest keeps writing into its retained buffer meanwhile

        second = await AgentClient.connect(spec.agent_socket, 10)
        try:
            again = second.open_process(1)  # registered before the hello: the replay comes first
            # ...and read while the hello is pending: the replay precedes its answer.
            collector = asyncio.create_task(_collect(again.output, received, LINES + 1))
            reply = await second.hello(30, resume=resume)
            assert reply["resume_from"] == resume
            await collector
            assert await asyncio.wait_for(again.exit_status, 60) == 0
        finally:
            await second.close()
        return bytes(received)
    finally:
        await vm.close()


def test_reconnect_loses_and_repeats_nothing(tmp_path: Path, image_state: Path, shared_cache: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(image_state, state)
    run_dir = Path(tempfile.mkdtemp(prefix="hy-", dir="/tmp"))
    try:
        output = asyncio.run(_reconnect_mid_stream(state, shared_cache, run_dir))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert output.decode().split() == [f"line{i}" for i in range(LINES)]
