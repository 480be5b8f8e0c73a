"""VMs started from a template: what must differ between clones, and the fallbacks."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv
from tests.support import images

pytestmark = pytest.mark.vm


def _templates(env: HyperEnv) -> list[Path]:
    root = env.cache / "templates"
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.exists() else []


def test_clones_get_their_own_clock_and_randomness(hyper_env: HyperEnv) -> None:
    script = "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"
    first = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", script)
    second = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", script)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert _templates(hyper_env), "the runs should have made a template"
    (clock1, random1), (clock2, random2) = (r.stdout.decode().split() for r in (first, second))
    assert random1 != random2
    for clock in (clock1, clock2):
        assert abs(int(clock) - time.time()) < 120  # the template's own time would be stale


def test_cold_boot_when_templates_are_off(hyper_env: HyperEnv) -> None:
    result = hyper_env.run("run", "--rm", BUSYBOX, "sh", "-c", "echo cold", HYPER_TEMPLATES="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"cold\n"


def _private_cache(env: HyperEnv, tmp_path: Path) -> Path:
    """A cache of this test's own, sharing the kernel and appliances by hard links."""
    cache = tmp_path / "cache"
    for part in ("kernels", "appliances"):
        shutil.copytree(
            env.cache / part, cache / part, copy_function=os.link, ignore=shutil.ignore_patterns(".*")
        )
    return cache


def test_a_broken_template_falls_back_to_booting(hyper_env: HyperEnv, tmp_path: Path) -> None:
    cache = _private_cache(hyper_env, tmp_path)
    warm = hyper_env.run("run", "--rm", BUSYBOX, "true", HYPER_CACHE_DIR=str(cache))
    assert warm.returncode == 0, warm.stderr
    (template,) = [p for p in (cache / "templates").iterdir() if p.is_dir() and not p.name.startswith(".")]
    (template / "state").write_bytes(b"not a migration stream")
    result = hyper_env.run("run", "--rm", BUSYBOX, "echo", "still works", HYPER_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"still works\n"
    assert b"booting instead" in result.stderr
    assert not (template / "state").exists() or (template / "state").read_bytes() != b"not a migration stream"
    assert hyper_env.qemu_processes() == []


def test_more_layers_than_template_slots_boots(hyper_env: HyperEnv, tmp_path: Path) -> None:
    rootfs = images.busybox_rootfs_tar(tmp_path / "busybox.tar").read_bytes()
    layers: list[images.LayerSource] = [rootfs]
    layers += [images.layer_tar([images.file(f"layer{i}", f"{i}\n".encode())]) for i in range(14)]
    archive = images.docker_archive(
        tmp_path / "many.tar", layers, images.image_config(layers, {"Cmd": ["sh"]}), "localhost/many:1"
    )
    assert hyper_env.run("load", "-i", str(archive)).returncode == 0
    result = hyper_env.run("run", "--rm", "localhost/many:1", "sh", "-c", "cat /layer0 /layer13")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"0\n13\n"


def test_first_run_says_what_it_prepares(hyper_env: HyperEnv, tmp_path: Path) -> None:
    # A cache of its own: kernel fetch, appliance and template all happen here.
    cache = tmp_path / "cache"
    result = hyper_env.run("run", "--rm", BUSYBOX, "echo", "ready", HYPER_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ready\n"
    for step in (b"fetching the guest kernel", b"building the guest appliance", b"booting a VM template"):
        assert step in result.stderr
    again = hyper_env.run("run", "--rm", BUSYBOX, "echo", "ready", HYPER_CACHE_DIR=str(cache))
    assert again.returncode == 0 and again.stderr == b""


def test_clones_of_one_template_do_not_share_the_agents_randomized_layout(hyper_env: HyperEnv) -> None:
    """After a resume the agent is reseeded and executes itself again: each
    clone has its own stack address and hash seed (AT_RANDOM with them), not
    the template's."""
    import asyncio

    from hyper.paths import HyperPaths
    from hyper.runtime.run import ContainerRun
    from hyper.runtime.settings import Settings
    from hyper.runtime.spec import RunOptions

    paths = HyperPaths(state=hyper_env.state, cache=hyper_env.cache, runtime=hyper_env.runtime)
    settings = Settings.from_env(hyper_env.environ())

    async def clone() -> dict[str, object]:
        run = ContainerRun(RunOptions(image=BUSYBOX), paths, settings)
        vm, agent = await run.launch_for_files(await run.prepare())
        try:
            assert vm.spec.incoming_state is not None, "this VM should come from the template"
            greeting = agent.greeting
        finally:
            await agent.close()
            await vm.close()
            run.release_files(remove=True)
        assert any("agent executed again" in line for line in greeting["log"])
        fingerprint = greeting["process"]
        assert isinstance(fingerprint, dict)
        return fingerprint

    first = asyncio.run(clone())
    second = asyncio.run(clone())
    assert first["start_stack"] != second["start_stack"]
    assert first["hash_seed"] != second["hash_seed"]
