"""The agent's requests about containers: mount one, start its main process,
exec into it, list its processes, copy files in and out; and the VM's stats.

Standard library only. A mixin of the Agent (guest.py), which owns the
state these requests work on and the stdio and exit reporting of the
processes they start (`_register`); split from it so that each file keeps to
one concern: guest.py the channel and the processes' I/O, this one what the
host asks of containers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from hyper.agent import guest_archive as archive
from hyper.agent import guest_cgroups, guest_container, guest_net, guest_security, guest_volumes
from hyper.agent import guest_stats as stats
from hyper.agent import guest_sys as sys_
from hyper.agent.guest_process import ContainerRoot, Process, spawn, spawn_call, spawn_keepalive
from hyper.agent.protocol import require

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class ContainerRequests:
    """Handlers `_do_<type>` for the container requests; the Agent sets the state."""

    containers: dict[str, guest_container.Container]
    processes: dict[int, Process]
    layer_mounts: dict[str, str]
    other_mounts: list[str]
    hostname: str
    etc_files: dict[str, str]

    def _register(self, process: Process) -> Process:
        """Watch a new process's stdio and report its exit (the Agent's)."""
        raise NotImplementedError

    def _mount_disk(self, serial: str, target: str, fstype: str, flags: int, options: str = "") -> None:
        """Mount the disk whose serial is `serial` once it can be used: a disk
        hot-added on the SCSI controller shows in sysfs before its device node
        opens, and before its size is read; its first opens, the mount's
        included, may still answer ENXIO while the kernel settles the new unit."""
        deadline = time.monotonic() + 10
        while True:
            device = sys_.find_disk(serial)
            if device is not None and sys_.disk_size(device) > 0:
                try:
                    sys_.flush_block_device(device)
                    sys_.mount(device, target, fstype, flags, options)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT, errno.ENODEV):
                        raise
            if time.monotonic() > deadline:
                raise guest_container.StartError(
                    "mount", errno.ENODEV, f"no usable disk with serial {serial}"
                )
            time.sleep(0.01)

    def _do_mount_container(self, message: dict[str, Any]) -> dict[str, Any]:
        container_id = require(message, "container", str)
        if not container_id.isalnum() or container_id in self.containers:
            raise ValueError(f"bad or duplicate container id {container_id!r}")
        layer_dirs = []
        for layer in require(message, "layers", list):
            serial, fstype = str(layer["serial"]), str(layer["fstype"])
            if serial not in self.layer_mounts:
                target = f"{guest_container.RUN_ROOT}/layers/{serial}"
                os.makedirs(target, exist_ok=True)
                self._mount_disk(serial, target, fstype, sys_.MS_RDONLY)
                self.layer_mounts[serial] = target
            layer_dirs.append(self.layer_mounts[serial])
        writable = require(message, "writable", dict)
        target = f"{guest_container.RUN_ROOT}/writable/{container_id}"
        os.makedirs(target, exist_ok=True)
        options = str(writable.get("options", ""))
        self._mount_disk(str(writable["serial"]), target, str(writable["fstype"]), 0, options)
        self.other_mounts.append(target)
        shm = message.get("shm_size") or guest_container.DEFAULT_SHM_BYTES
        if not isinstance(shm, int) or isinstance(shm, bool) or shm <= 0:
            raise ValueError("shm_size must be a positive number of bytes")
        mounts = guest_volumes.read_mounts(message.get("mounts"))
        limits = guest_cgroups.read_limits(message.get("resources"))
        container = guest_container.assemble_rootfs(
            container_id,
            layer_dirs,
            target,
            self.etc_files,
            privileged=message.get("privileged") is True,
            shm_bytes=shm,
            mounts=mounts,
            read_only=message.get("read_only") is True,
            agent_mounts=self.other_mounts,
        )
        container.writable = target
        if guest_cgroups.available():
            try:
                container.cgroup = guest_cgroups.create(container_id, limits)
            except OSError as exc:
                guest_container.teardown(container)
                raise guest_container.StartError(
                    "cgroup", exc.errno or 0, f"cannot set the container's limits: {exc.strerror}"
                ) from exc
        self.containers[container_id] = container
        return {"cgroup": container.cgroup is not None}

    def _do_remove_container(self, message: dict[str, Any]) -> dict[str, Any]:
        """Take a container out of the VM: its processes killed, its root, volumes
        and writable disk unmounted, its cgroup removed (the VM's other
        containers go on). Its layers stay mounted: another container may use them."""
        container = self._container(message)
        if container.cgroup is not None:
            guest_cgroups.kill_all(container.cgroup)
        main = container.running_main()
        if main is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main.init_pid, signal.SIGKILL)
        guest_container.teardown(container)
        if container.writable is not None:
            try:
                sys_.umount(container.writable)
            except OSError:
                sys_.umount(container.writable, sys_.MNT_DETACH)
            if container.writable in self.other_mounts:
                self.other_mounts.remove(container.writable)
        if container.cgroup is not None:
            guest_cgroups.remove(container.cgroup)
        del self.containers[container.id]
        return {}

    def _container(self, message: dict[str, Any]) -> guest_container.Container:
        container_id = require(message, "container", str)
        container = self.containers.get(container_id)
        if container is None:
            raise guest_container.StartError("container", errno.ENOENT, f"no container {container_id}")
        return container

    def _new_stream(self, message: dict[str, Any]) -> int:
        stream: int = require(message, "process", int)
        if stream in self.processes:
            raise ValueError(f"process id {stream} is in use")
        return stream

    def _process_request(
        self, message: dict[str, Any], container: guest_container.Container
    ) -> guest_container.ProcessRequest:
        args = [str(a) for a in require(message, "args", list)]
        if not args:
            raise ValueError(f"{message['type']} needs args")
        confinement = message.get("confinement")
        if confinement is None and message["type"] == "exec":
            confinement = container.confinement  # an exec is confined as its container
        if not isinstance(confinement, dict):
            raise ValueError(f"{message['type']} needs the process's confinement")
        guest_security.read_confinement(confinement)  # refused here, not in the child
        return guest_container.ProcessRequest(
            rootfs=container.rootfs,
            args=args,
            env=[str(e) for e in require(message, "env", list)],
            cwd=str(message.get("cwd") or "/"),
            user=str(message.get("user") or "0"),
            hostname=self.hostname,
            tty=bool(message.get("tty")),
            stdin=bool(message.get("stdin")),
            rows=int(message.get("rows") or 24),
            cols=int(message.get("cols") or 80),
            make_cwd=message["type"] == "start",
            confinement=confinement,
            privileged=container.privileged,
            init=message.get("init") is True and message["type"] == "start",
        )

    def _spawn_main_or_exec(
        self,
        stream: int,
        request: guest_container.ProcessRequest,
        container: guest_container.Container,
        root: ContainerRoot | None,
    ) -> Process:
        """Start the process, in the container's cgroup when it has one."""
        procs = guest_cgroups.procs_fd(container.cgroup) if container.cgroup is not None else None
        try:
            request.cgroup_fd = procs
            request.cgroupns_fd = root.cgroupns_fd if root is not None and procs is not None else None
            return self._register(spawn(stream, request, join=root))
        finally:
            if procs is not None:
                os.close(procs)

    def _do_start(self, message: dict[str, Any]) -> dict[str, Any]:
        container = self._container(message)
        stream = self._new_stream(message)
        first = container.running_main() is None
        if message.get("keepalive") is True:
            # A pod's infra container: a process that only keeps its VM up
            # (it owns the pod's network), whatever the image holds.
            if not first:
                raise ValueError("keepalive is a container's main process")
            process = self._register(spawn_keepalive(stream))
            process.owner = container
            container.main = process
            return {"pid": process.init_pid}
        request = self._process_request(message, container)
        shared = message.get("pid_namespace")
        if shared is not None:
            request.pid_ns_fd = self._pid_namespace(str(shared))
        if first and container.cgroup is not None:
            container.oom_base = guest_cgroups.oom_kills(container.cgroup)
        if first and request.confinement is not None:
            # The pod's namespaced sysctls, in the VM's kernel before the process starts.
            try:
                guest_security.apply_sysctls(guest_security.read_sysctls(request.confinement))
            except OSError as exc:
                raise guest_container.StartError("sysctl", exc.errno or 0, str(exc.strerror)) from exc
        try:
            process = self._spawn_main_or_exec(stream, request, container, None)
        finally:
            if request.pid_ns_fd is not None:
                os.close(request.pid_ns_fd)
        if first:
            process.owner = container
            container.confinement = request.confinement
            try:
                container.pid_ns = os.stat(f"/proc/{process.init_pid}/ns/pid").st_ino
            except OSError:
                container.pid_ns = 0  # already gone: nothing can join it
            container.main = process
        return {"pid": process.init_pid}

    def _pid_namespace(self, container_id: str) -> int:
        """The PID namespace of a running container's main process (a pod's
        infra, whose containers share it), opened."""
        holder = self.containers.get(container_id)
        main = holder.running_main() if holder is not None else None
        if main is None:
            raise guest_container.not_running(container_id)
        try:
            return os.open(f"/proc/{main.init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise guest_container.StartError(
                "setup", exc.errno or 0, f"the pod's PID namespace: {exc.strerror}"
            ) from exc

    def _do_exec(self, message: dict[str, Any]) -> dict[str, Any]:
        """Start a process in the namespaces and root of a running container's main process."""
        container = self._container(message)
        stream = self._new_stream(message)
        with ContainerRoot.open(container, need_running=True) as root:
            request = self._process_request(message, container)
            process = self._spawn_main_or_exec(stream, request, container, root)
        return {"pid": process.init_pid}

    def _do_top(self, message: dict[str, Any]) -> dict[str, Any]:
        container = self._container(message)
        if container.running_main() is None:
            raise guest_container.not_running(container.id)
        if container.cgroup is not None:
            # Its cgroup says which processes are the container's (a PID
            # namespace a pod's containers share holds others too).
            pids = guest_cgroups.members(container.cgroup)
            members = [e for e in stats.all_processes() if e.pid in pids]
            return stats.top(container.pid_ns, members, stats.clock_ticks(), members_only=True)
        members = stats.all_processes(pid_ns=container.pid_ns)
        return stats.top(container.pid_ns, members, stats.clock_ticks())

    def _do_stats(self, message: dict[str, Any]) -> dict[str, Any]:
        # Link state beside the counters: a NIC that is down is why traffic stopped.
        figures = {**stats.guest_stats(), "links": guest_net.link_states()}
        if "container" in message:  # and the container's own, from its cgroup
            cgroup = self._container(message).cgroup
            figures["cgroup"] = guest_cgroups.figures(cgroup) if cgroup is not None else {}
        return figures

    def _do_update_resources(self, message: dict[str, Any]) -> dict[str, Any]:
        """New limits for a container's cgroup (`docker update`, the CRI's UpdateContainerResources)."""
        cgroup = self._container(message).cgroup
        if cgroup is None:
            raise ValueError("the guest has no cgroup2: limits cannot be changed")
        guest_cgroups.update(cgroup, require(message, "values", dict))
        return {}

    def _do_port_forward(self, message: dict[str, Any]) -> dict[str, Any]:
        """Fork a child that relays its stdin and stdout to a TCP port on the VM's loopback."""
        stream = self._new_stream(message)
        port = require(message, "port", int)
        if not 0 < port < 65536:
            raise ValueError(f"no TCP port {port}")
        self._register(spawn_call(stream, lambda: guest_net.relay_tcp(port), stdin=True, keep=[]))
        return {}

    def _do_archive_stat(self, message: dict[str, Any]) -> dict[str, Any]:
        container = self._container(message)
        return archive.stat_path(archive.root_path(container), require(message, "path", str))

    def _do_archive_get(self, message: dict[str, Any]) -> dict[str, Any]:
        """Fork a child that writes a tar of `path` in the container to its stdout."""
        container = self._container(message)
        stream = self._new_stream(message)
        path = require(message, "path", str)
        source = archive.existing_path(archive.root_path(container), path)
        name = archive.tar_name(path)
        self._spawn_in_root(stream, container, lambda: archive.send_archive(source, name), stdin=False)
        return {}

    def _do_archive_put(self, message: dict[str, Any]) -> dict[str, Any]:
        """Fork a child that extracts the tar sent to its stdin under the directory `path`."""
        container = self._container(message)
        stream = self._new_stream(message)
        path = require(message, "path", str)
        no_overwrite = bool(message.get("no_overwrite_dir_non_dir"))
        dest = archive.existing_directory(archive.root_path(container), path)
        self._spawn_in_root(
            stream,
            container,
            lambda: archive.receive_archive(dest, no_overwrite_dir_non_dir=no_overwrite),
            stdin=True,
        )
        return {}

    def _spawn_in_root(
        self, stream: int, container: guest_container.Container, call: Callable[[], int], *, stdin: bool
    ) -> None:
        """Run `call` in a child inside the container's mount namespace and root."""
        archive.load_tarfile()
        with ContainerRoot.open(container, need_running=False) as root:

            def in_root() -> int:
                root.enter(pid_namespace=False)
                return call()

            self._register(spawn_call(stream, in_root, stdin=stdin, keep=root.fds))
