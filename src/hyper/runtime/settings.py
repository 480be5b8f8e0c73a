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
| HYPER_CONFIG | the configuration file | /etc/hyper/hyperd.json |

The configuration file (JSON, optional) sets the size of a VM whose container
does not ask for one (`-m`, `--cpus`):

    {"default-memory": "1g", "default-cpus": 2}

The built-in default is 1 vCPU and 512 MiB: enough for the guest kernel, the
agent and a typical service, while a VM uses on the host only the memory its
guest touches; each size has its own VM template, so most containers sharing
one size share one template; and under TCG each vCPU is a host thread that
slows every boot. hyperd and a foreground `hyper run` read the same file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import InvalidArgument
from hyper.runtime import spec as specs

DEFAULT_CONFIG = Path("/etc/hyper/hyperd.json")
CONFIG_KEYS = ("default-memory", "default-cpus")


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
    default_memory_mib: int = specs.DEFAULT_MEMORY_MIB
    default_cpus: int = 1

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
        memory, cpus = read_config(Path(env.get("HYPER_CONFIG") or DEFAULT_CONFIG))
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
            default_memory_mib=memory,
            default_cpus=cpus,
        )


def read_config(path: Path) -> tuple[int, int]:
    """The default VM size (MiB, vCPUs) the configuration file sets; the built-in one without it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return specs.DEFAULT_MEMORY_MIB, 1
    except OSError as exc:
        raise InvalidArgument(f"cannot read the configuration {path}: {exc.strerror}") from exc
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the configuration {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the configuration {path} must be a JSON object")
    unknown = sorted(set(doc) - set(CONFIG_KEYS))
    if unknown:
        raise InvalidArgument(
            f"unknown setting {unknown[0]!r} in {path}", hint=f"it takes {', '.join(CONFIG_KEYS)}"
        )
    memory = doc.get("default-memory", f"{specs.DEFAULT_MEMORY_MIB}m")
    cpus = doc.get("default-cpus", 1)
    if not isinstance(memory, str):
        raise InvalidArgument(f'default-memory in {path} must be a size such as "1g"')
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        raise InvalidArgument(f"default-cpus in {path} must be a whole number of vCPUs, at least 1")
    return specs.parse_memory(memory), cpus
