"""Where Hyper keeps its state and caches.

As root: state under /var/lib/hyper, caches under /var/cache/hyper, runtime
sockets under /run/hyper (Docker's habit). Otherwise the XDG directories.
`HYPER_STATE_DIR`, `HYPER_CACHE_DIR` and `HYPER_RUNTIME_DIR` override each one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HyperPaths:
    state: Path
    cache: Path
    runtime: Path

    @property
    def images(self) -> Path:
        return self.state / "images"

    @property
    def containers(self) -> Path:
        return self.state / "containers"

    @property
    def kernels(self) -> Path:
        return self.cache / "kernels"

    @property
    def appliances(self) -> Path:
        return self.cache / "appliances"

    @property
    def templates(self) -> Path:
        return self.cache / "templates"


def default_paths(environ: dict[str, str] | None = None, uid: int | None = None) -> HyperPaths:
    env = os.environ if environ is None else environ
    is_root = (os.getuid() if uid is None else uid) == 0
    home = Path(env.get("HOME", "/root" if is_root else "/tmp"))
    if is_root:
        state, cache, runtime = Path("/var/lib/hyper"), Path("/var/cache/hyper"), Path("/run/hyper")
    else:
        state = Path(env.get("XDG_DATA_HOME", home / ".local/share")) / "hyper"
        cache = Path(env.get("XDG_CACHE_HOME", home / ".cache")) / "hyper"
        runtime_base = env.get("XDG_RUNTIME_DIR") or f"/tmp/hyper-{os.getuid()}"
        runtime = Path(runtime_base) / "hyper"
    return HyperPaths(
        state=Path(env.get("HYPER_STATE_DIR", state)),
        cache=Path(env.get("HYPER_CACHE_DIR", cache)),
        runtime=Path(env.get("HYPER_RUNTIME_DIR", runtime)),
    )
