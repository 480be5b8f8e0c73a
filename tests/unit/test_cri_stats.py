"""The CRI's figures and limits as pure functions, and the guest's cgroup reading and writing on files."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from hyper.agent import guest_cgroups, guest_net
from hyper.cri import stats
from hyper.errors import InvalidArgument


def test_cpu_rate_comes_from_the_previous_sample() -> None:
    first = stats.cpu_usage(1_000_000_000, 500_000_000, None)
    assert first.usage_core_nano_seconds.value == 500_000_000 and not first.HasField("usage_nano_cores")
    second = stats.cpu_usage(3_000_000_000, 1_500_000_000, stats.CpuSample(1_000_000_000, 500_000_000))
    assert second.usage_nano_cores.value == 500_000_000  # half a core over two seconds


def test_container_memory_is_the_working_set_without_inactive_cache() -> None:
    cgroup = {"memory.current": 100, "memory.inactive_file": 30, "memory.anon": 50, "memory.pgfault": 7}
    memory = stats.container_memory(1, cgroup, vm_total=1000)
    assert (memory.working_set_bytes.value, memory.usage_bytes.value, memory.rss_bytes.value) == (70, 100, 50)
    assert memory.available_bytes.value == 930  # no limit of its own: the VM's memory
    limited = stats.container_memory(1, {**cgroup, "memory.max": 200}, vm_total=1000)
    assert limited.available_bytes.value == 130


def test_network_usage_names_eth0_the_default() -> None:
    usage = stats.network_usage(1, {"eth1": {"rx_bytes": 1}, "eth0": {"rx_bytes": 5, "tx_bytes": 6}})
    assert usage.default_interface.name == "eth0" and usage.default_interface.tx_bytes.value == 6
    assert [i.name for i in usage.interfaces] == ["eth1"]
    assert not stats.network_usage(1, {}).HasField("default_interface")


def test_update_resources_become_cgroup_v2_files() -> None:
    linux = cri.LinuxContainerResources(
        cpu_quota=50_000, cpu_period=100_000, cpu_shares=1024, memory_limit_in_bytes=1 << 30,
        memory_swap_limit_in_bytes=(1 << 30) + 4096, cpuset_cpus="0-1",
    )  # fmt: skip
    assert stats.cgroup_values(linux) == {
        "cpu.max": "50000 100000",
        "cpu.weight": "39",  # runc's conversion of 1024 shares
        "memory.max": str(1 << 30),
        "memory.swap.max": "4096",
        "cpuset.cpus": "0-1",
    }
    assert stats.cgroup_values(cri.LinuxContainerResources()) == {}
    assert stats.cgroup_values(cri.LinuxContainerResources(cpu_quota=-1)) == {"cpu.max": "max 100000"}
    assert stats.cpu_weight(2) == 1 and stats.cpu_weight(262144) == 10000
    for bad in (
        cri.LinuxContainerResources(memory_limit_in_bytes=4096),
        cri.LinuxContainerResources(cpu_quota=1000, cpu_period=10),
        cri.LinuxContainerResources(cpuset_mems="1"),
    ):
        with pytest.raises(InvalidArgument):
            stats.cgroup_values(bad)


def test_guest_cgroup_figures_and_update(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (tmp_path / "memory.stat").write_text("anon 4096\nfile 8192\ninactive_file 1024\npgfault 3\n")
    (tmp_path / "memory.current").write_text("12288\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "pids.current").write_text("2\n")
    figures = guest_cgroups.figures(str(tmp_path))
    assert figures["cpu.usage_usec"] == 1500 and figures["memory.inactive_file"] == 1024
    assert figures["memory.current"] == 12288 and figures["pids.current"] == 2 and "memory.max" not in figures

    guest_cgroups.update(str(tmp_path), {"memory.max": "1048576", "cpu.max": "max 100000"})
    assert (tmp_path / "memory.max").read_text() == "1048576"
    assert (tmp_path / "cpu.max").read_text() == "max 100000"
    with pytest.raises(ValueError, match="not a limit"):
        guest_cgroups.update(str(tmp_path), {"cgroup.procs": "1"})
    with pytest.raises(ValueError, match="invalid value"):
        guest_cgroups.update(str(tmp_path), {"memory.max": "1\n2"})


def test_relay_tcp_carries_both_ways_and_half_closes(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):  # until the relay half-closes
                received.extend(data)
            conn.sendall(b"answer:" + bytes(received))

    thread = threading.Thread(target=serve)
    thread.start()
    stdin = tmp_path / "in"
    stdin.write_bytes(b"question")
    out = tmp_path / "out"
    with stdin.open("rb") as source, out.open("wb") as sink:
        assert guest_net.relay_tcp(port, source.fileno(), sink.fileno()) == 0
    thread.join()
    server.close()
    assert out.read_bytes() == b"answer:question"
    with pytest.raises(ConnectionRefusedError):
        guest_net.relay_tcp(port, 0, 1)
