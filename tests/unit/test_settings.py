"""Runtime settings read from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.errors import InvalidArgument
from hyper.runtime.settings import Settings


def test_defaults_from_an_empty_environment() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env({})
    assert (settings.accel, settings.kernel, settings.kernel_is_pvm) == ("auto", None, False)
    assert (settings.boot_timeout, settings.qemu_binary) == (120.0, "qemu-system-x86_64")
    assert (settings.kernel_params, settings.console_log_dir) == ("", None)


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "HYPER_ACCEL": "tcg",
            "HYPER_KERNEL": "/boot/vmlinuz-6.1",
            "HYPER_KERNEL_PVM": "1",
            "HYPER_KERNEL_PARAMS": "loglevel=7 debug",
            "HYPER_BOOT_TIMEOUT": "2.5",
            "HYPER_QEMU": "/opt/qemu/bin/qemu-system-x86_64",
            "HYPER_CONSOLE_LOG_DIR": "/tmp/logs",
        }
    )
    assert settings == Settings(
        accel="tcg",
        kernel=Path("/boot/vmlinuz-6.1"),
        kernel_is_pvm=True,
        kernel_params="loglevel=7 debug",
        boot_timeout=2.5,
        qemu_binary="/opt/qemu/bin/qemu-system-x86_64",
        console_log_dir=Path("/tmp/logs"),
    )


def test_empty_paths_mean_unset() -> None:
    settings = Settings.from_env({"HYPER_KERNEL": "", "HYPER_CONSOLE_LOG_DIR": ""})
    assert settings.kernel is None
    assert settings.console_log_dir is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("yes", True), ("0", False), ("no", False), ("", False)],
)
def test_kernel_pvm_flag(value: str, expected: bool) -> None:
    assert Settings.from_env({"HYPER_KERNEL_PVM": value}).kernel_is_pvm is expected


@pytest.mark.parametrize("value", ["abc", "", "10s", "0", "-1", "-0.5"])
def test_bad_boot_timeout_is_invalid(value: str) -> None:
    with pytest.raises(InvalidArgument, match="HYPER_BOOT_TIMEOUT"):
        Settings.from_env({"HYPER_BOOT_TIMEOUT": value})


def test_nan_boot_timeout_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        Settings.from_env({"HYPER_BOOT_TIMEOUT": "nan"})


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPER_ACCEL", "kvm")
    monkeypatch.setenv("HYPER_BOOT_TIMEOUT", "7")
    settings = Settings.from_env()
    assert (settings.accel, settings.boot_timeout) == ("kvm", 7.0)


def test_the_default_vm_size_comes_from_the_configuration_file(tmp_path: Path) -> None:
    assert (Settings().default_memory_mib, Settings().default_cpus) == (512, 1)
    missing = Settings.from_env({"HYPER_CONFIG": str(tmp_path / "none.json")})
    assert (missing.default_memory_mib, missing.default_cpus) == (512, 1)
    config = tmp_path / "hyperd.json"
    config.write_text('{"default-memory": "1g", "default-cpus": 2}')
    settings = Settings.from_env({"HYPER_CONFIG": str(config)})
    assert (settings.default_memory_mib, settings.default_cpus) == (1024, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{nope", "not valid JSON"),
        ('{"default-memory": 512}', "default-memory"),
        ('{"default-memory": "64m"}', "below the minimum"),
        ('{"default-cpus": 0}', "default-cpus"),
        ('{"default-cpus": true}', "default-cpus"),
        ('{"memory": "1g"}', "unknown setting 'memory'"),
    ],
)
def test_a_bad_configuration_is_refused_with_its_path(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "hyperd.json"
    config.write_text(text)
    with pytest.raises(InvalidArgument, match=message) as refused:
        Settings.from_env({"HYPER_CONFIG": str(config)})
    if "minimum" not in message:
        assert str(config) in str(refused.value)
