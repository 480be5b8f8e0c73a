"""Where Hyper keeps its state and caches.

As root: state under /var/lib/hyper, caches under /var/cache/hyper, runtime
sockets under /run/hyper (Docker's habit). Otherwise the XDG directories.
`HYPER_STATE_DIR`, `HYPER_CACHE_DIR` and `HYPER_RUNTIME_DIR` override each one.

The state directory holds containers' environments, logs and disks, and the
runtime directory hyperd's socket: both are the user's alone (0700, and
`prepare` refuses a runtime directory someone else made, which would let a
fake hyperd capture requests). The cache holds nothing private (kernels, the
appliance, VM templates) and stays readable: confined QEMUs, running as
users of their own, open its kernel and appliance by path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import PermissionDenied

PRIVATE_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644


@dataclass(frozen=True)
class HyperPaths:
    state: Path
    cache: Path
    runtime: Path
    # The tenant whose images and VM templates these are ("": the admin's):
    # tenants share no image store and no template (hyper.tenants).
    tenant: str = ""

    def scoped(self, tenant: str) -> HyperPaths:
        """These paths as `tenant` sees them: its own image store and VM templates."""
        return HyperPaths(self.state, self.cache, self.runtime, tenant)

    @property
    def images(self) -> Path:
        if self.tenant:
            return self.state / "tenants" / self.tenant / "images"
        return self.state / "images"

    @property
    def containers(self) -> Path:
        return self.state / "containers"

    @property
    def volumes(self) -> Path:
        return self.state / "volumes"

    @property
    def kernels(self) -> Path:
        return self.cache / "kernels"

    @property
    def appliances(self) -> Path:
        return self.cache / "appliances"

    @property
    def templates(self) -> Path:
        # Clones of one template share its guest kernel's KASLR layout and
        # pointer-hashing key: each tenant boots templates of its own.
        if self.tenant:
            return self.cache / "templates" / "tenants" / self.tenant
        return self.cache / "templates"


def default_paths(environ: dict[str, str] | None = None, uid: int | None = None) -> HyperPaths:
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    is_root = uid == 0
    home = Path(env.get("HOME", "/root" if is_root else "/tmp"))
    if is_root:
        state, cache, runtime = Path("/var/lib/hyper"), Path("/var/cache/hyper"), Path("/run/hyper")
    else:
        state = Path(env.get("XDG_DATA_HOME", home / ".local/share")) / "hyper"
        cache = Path(env.get("XDG_CACHE_HOME", home / ".cache")) / "hyper"
        runtime_base = env.get("XDG_RUNTIME_DIR") or f"/tmp/hyper-{uid}"
        runtime = Path(runtime_base) / "hyper"
    return HyperPaths(
        state=Path(env.get("HYPER_STATE_DIR", state)),
        cache=Path(env.get("HYPER_CACHE_DIR", cache)),
        runtime=Path(env.get("HYPER_RUNTIME_DIR", runtime)),
    )


def private_dir(path: Path) -> None:
    """`path` (and missing parents) made 0700 for this user; an existing one is
    tightened when it is ours. One owned by another user is refused."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionDenied(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})",
            hint="someone may be impersonating hyperd: remove it, or set HYPER_RUNTIME_DIR/HYPER_STATE_DIR",
        )
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)


def public_dir(path: Path) -> None:
    """A cache directory the VMs' own users can read (made whatever the umask)."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PUBLIC_DIR_MODE and path.stat().st_uid == os.getuid():
        os.chmod(path, PUBLIC_DIR_MODE)


def make_readable(path: Path) -> None:
    """A cache file QEMU opens by path (kernel, appliance): readable by all."""
    os.chmod(path, PUBLIC_FILE_MODE)


def check_runtime_parent(paths: HyperPaths, environ: dict[str, str] | None = None) -> None:
    """Without XDG_RUNTIME_DIR the runtime directory lives in /tmp, where another
    user could have made it first: it must be this user's, mode 0700."""
    env = os.environ if environ is None else environ
    if os.getuid() == 0 or env.get("XDG_RUNTIME_DIR") or env.get("HYPER_RUNTIME_DIR"):
        return
    private_dir(paths.runtime.parent)


def prepare(paths: HyperPaths) -> None:
    """The state and runtime directories private, the cache's readable ones present."""
    check_runtime_parent(paths)
    private_dir(paths.state)
    private_dir(paths.runtime)
    for directory in (paths.cache, paths.kernels, paths.appliances, paths.templates):
        public_dir(directory)
