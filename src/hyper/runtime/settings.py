"""Runtime settings from the environment, read once into a frozen value.

| variable | meaning | default |
|---|---|---|
| HYPER_ACCEL | kvm, tcg or auto | auto |
| HYPER_KERNEL | path of the guest kernel (vmlinux or bzImage) | Debian's generic kernel |
| HYPER_KERNEL_PVM | 1 when that kernel is PVM-enabled | 0 |
| HYPER_KERNEL_PARAMS | extra kernel command-line words | none |
| HYPER_BOOT_TIMEOUT | seconds for a VM to boot to its agent | 120 |
| HYPER_QEMU | the QEMU binary | qemu-system-x86_64 |
| HYPER_CONSOLE_LOG_DIR | copy each VM's console log here when it stops | unset |
| HYPER_TEMPLATES | 0 to boot every VM instead of starting it from a template | 1 |
| HYPER_KASLR | 0 to boot the uncompressed kernel (faster, but always at one address) | 1 |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import InvalidArgument


@dataclass(frozen=True)
class Settings:
    accel: str = "auto"
    kernel: Path | None = None
    kernel_is_pvm: bool = False
    kernel_params: str = ""
    boot_timeout: float = 120.0
    qemu_binary: str = "qemu-system-x86_64"
    console_log_dir: Path | None = None
    templates: bool = True
    kaslr: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        try:
            boot_timeout = float(env.get("HYPER_BOOT_TIMEOUT", "120"))
        except ValueError:
            raise InvalidArgument(
                f"HYPER_BOOT_TIMEOUT={env['HYPER_BOOT_TIMEOUT']!r} is not a number of seconds"
            ) from None
        if not math.isfinite(boot_timeout) or boot_timeout <= 0:
            raise InvalidArgument("HYPER_BOOT_TIMEOUT must be a positive number of seconds")
        kernel = env.get("HYPER_KERNEL")
        log_dir = env.get("HYPER_CONSOLE_LOG_DIR")
        return cls(
            accel=env.get("HYPER_ACCEL", "auto"),
            kernel=Path(kernel) if kernel else None,
            kernel_is_pvm=env.get("HYPER_KERNEL_PVM", "0") in ("1", "true", "yes"),
            kernel_params=env.get("HYPER_KERNEL_PARAMS", ""),
            boot_timeout=boot_timeout,
            qemu_binary=env.get("HYPER_QEMU", "qemu-system-x86_64"),
            console_log_dir=Path(log_dir) if log_dir else None,
            templates=env.get("HYPER_TEMPLATES", "1") not in ("0", "false", "no"),
            kaslr=env.get("HYPER_KASLR", "1") not in ("0", "false", "no"),
        )
