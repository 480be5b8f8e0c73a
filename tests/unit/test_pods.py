"""Pods' pure parts: who may join another's VM, a pod's options and records,
the bookkeeping of disks hot-added to a VM, the CLI's pod commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hyper.cli.main import build_parser
from hyper.daemon.members import check_member, host_reference, is_member
from hyper.daemon.named_pods import PodOptions, pod_options_from
from hyper.daemon.state import PodRecord, StateStore
from hyper.daemon.vm_disks import VmDisks
from hyper.errors import AlreadyExists, InvalidArgument, NotFound
from hyper.runtime import spec as specs
from hyper.vm.driver import HotDisk


def test_who_joins_another_vm() -> None:
    assert not is_member(specs.RunOptions(image="x"))
    assert is_member(specs.RunOptions(image="x", network="container:web"))
    assert is_member(specs.RunOptions(image="x", pod="p"))
    assert not is_member(specs.RunOptions(image="x", pod="p", infra=True))  # the pod's VM is its own
    assert host_reference(specs.RunOptions(image="x", network="container:web")) == "web"
    assert host_reference(specs.RunOptions(image="x", network="bridge")) is None
    with pytest.raises(InvalidArgument, match="needs a container"):
        host_reference(specs.RunOptions(image="x", network="container:"))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (specs.RunOptions(image="x", publish=("80:80",)), "--publish"),
        (specs.RunOptions(image="x", publish_all=True), "--publish-all"),
        (specs.RunOptions(image="x", hostname="h"), "--hostname"),
        (specs.RunOptions(image="x", ip="10.0.0.9"), "--ip"),
        (specs.RunOptions(image="x", dns=("1.1.1.1",)), "--dns"),
        (specs.RunOptions(image="x", extra_hosts=("a:1.2.3.4",)), "--add-host"),
    ],
)
def test_a_member_asks_nothing_of_the_network(options: specs.RunOptions, flag: str) -> None:
    with pytest.raises(InvalidArgument, match=f"conflicting options: {flag} "):
        check_member(options, "web")


def test_a_member_may_expose_and_limit_itself() -> None:
    check_member(specs.RunOptions(image="x", expose=("80/tcp",), memory_mib=32, nano_cpus=500_000_000), "web")


def test_pod_options_are_checked_and_read_back() -> None:
    options = PodOptions(memory_mib=1024, cpus=2, publish=("8080:80",))
    options.check()
    assert pod_options_from({"memory_mib": 1024, "cpus": 2, "publish": ["8080:80"], "later": 1}) == options
    with pytest.raises(InvalidArgument, match="at least"):
        PodOptions(memory_mib=16).check()
    with pytest.raises(InvalidArgument, match="vCPU"):
        PodOptions(cpus=0).check()
    with pytest.raises(InvalidArgument, match="network of its own"):
        PodOptions(network="container:x").check()


def test_a_member_may_have_less_memory_than_a_vm() -> None:
    assert specs.parse_memory("32m", 6) == 32
    with pytest.raises(InvalidArgument, match="minimum of 128m for a VM"):
        specs.parse_memory("32m")
    with pytest.raises(InvalidArgument, match="for a container"):
        specs.parse_memory("1m", 6)


def test_pod_records_are_found_by_name_id_and_prefix(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        record = PodRecord(id="ab" * 32, name="shop", created=1.0)
        store.insert_pod(record)
        with pytest.raises(AlreadyExists, match="already in use"):
            store.insert_pod(PodRecord(id="cd" * 32, name="shop", created=2.0))
        assert store.resolve_pod("shop") == record
        assert store.resolve_pod("abab") == record
        updated = store.update_pod(record, infra="ef" * 32)
        assert store.resolve_pod(record.id).infra == updated.infra
        store.delete_pod(record.id)
        with pytest.raises(NotFound, match="no such pod: shop"):
            store.resolve_pod("shop")
    finally:
        store.close()


class RecordingVm:
    """Stands in for QemuDriver's hot-plug calls, which the integration tests drive for real."""

    def __init__(self) -> None:
        self.attached: list[HotDisk] = []
        self.detached: list[HotDisk] = []

    async def attach_disk(self, disk: HotDisk) -> None:
        self.attached.append(disk)

    async def detach_disk(self, disk: HotDisk) -> None:
        self.detached.append(disk)


def test_a_shared_disk_stays_until_its_last_user_leaves() -> None:
    async def scenario() -> tuple[RecordingVm, VmDisks]:
        vm, disks = RecordingVm(), VmDisks()
        layer = await disks.take(vm, Path("/l"), read_only=True, owner="a")  # type: ignore[arg-type]
        again = await disks.take(vm, Path("/l"), read_only=True, owner="b")  # type: ignore[arg-type]
        own = await disks.take(vm, Path("/w"), read_only=False, owner="b")  # type: ignore[arg-type]
        assert layer == again and own.target != layer.target and own.serial == f"hot{own.target}"
        await disks.release(vm, "b")  # type: ignore[arg-type]
        assert vm.detached == [own]
        await disks.release(vm, "a")  # type: ignore[arg-type]
        return vm, disks

    vm, disks = asyncio.run(scenario())
    assert len(vm.attached) == 2 and len(vm.detached) == 2 and not disks.disks


def test_the_pod_commands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["pod", "create", "--name", "p", "-p", "8080:80", "-m", "1g", "--cpus", "2"])
    assert (args.name_option, args.publish, args.memory, args.cpus) == ("p", ["8080:80"], "1g", 2)
    assert parser.parse_args(["pod", "rm", "-f", "p", "q"]).pods == ["p", "q"]
    assert parser.parse_args(["run", "-d", "--pod", "p", "img"]).pod == "p"
    assert parser.parse_args(["create", "--pod", "p", "img"]).pod == "p"
