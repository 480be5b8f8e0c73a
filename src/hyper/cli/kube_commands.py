"""`hyper kube play|down FILE.yaml`: a Kubernetes Pod manifest run as a Hyper
pod, as `podman kube play|down` do (docs/kube.md).

The manifest is parsed and planned by pure functions (hyper.kube); this
module does the effects, through hyperd's API the way `hyper pod create` and
`hyper create --pod` do: host paths checked, images pulled, the pod made,
its containers created in it, the pod started. A play that fails part way
removes what it made (pod, containers, emptyDir volumes) before it reports.
`down` stops and removes the pods a file names (only pods `play` made), with
their containers and emptyDir volumes; hostPath directories stay.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from hyper.cli.context import CliContext
from hyper.errors import AlreadyExists, FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.kube.manifest import KUBE_LABEL, KUBE_POD_LABEL, PodManifest, parse_manifests
from hyper.kube.plan import ContainerPlan, PodPlan, plan_pod


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kube = subparsers.add_parser("kube", help="run Kubernetes Pod manifests as pods")
    commands = kube.add_subparsers(dest="kube_command", metavar="COMMAND", required=True)
    play = commands.add_parser("play", help="run the Pods of a manifest, each as a pod")
    play.add_argument("file", metavar="FILE", help="a YAML file of kind: Pod documents (- for stdin)")
    play.add_argument("-q", "--quiet", action="store_true", help="no pull progress")
    play.set_defaults(func=cmd_play)
    down = commands.add_parser("down", help="stop and remove the pods a manifest made")
    down.add_argument("file", metavar="FILE", help="the YAML file given to kube play (- for stdin)")
    down.set_defaults(func=cmd_down)


def read_manifests(name: str) -> tuple[PodManifest, ...]:
    """The Pods of the YAML file `name` (- for stdin)."""
    import yaml

    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{name} is not UTF-8 text") from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InvalidArgument(f"{name} is not valid YAML{line}: {problem}") from None
    return parse_manifests(documents)


def _source(name: str) -> str:
    return "-" if name == "-" else os.path.abspath(name)


def cmd_play(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.cli.container_commands import connect_daemon
    from hyper.runtime.settings import Settings

    settings = Settings.from_env()
    plans = [
        plan_pod(
            pod,
            source=_source(args.file),
            host_cpus=os.cpu_count() or 1,
            default_memory_mib=settings.default_memory_mib,
            default_cpus=settings.default_cpus,
            volume_suffix=secrets.token_hex(3),
        )
        for pod in read_manifests(args.file)
    ]
    for plan in plans:
        prepare_host_paths(plan)
    _pull_images(plans, ctx, quiet=args.quiet)
    played: list[tuple[PodPlan, list[str]]] = []
    with connect_daemon(ctx) as client:
        try:
            for plan in plans:
                create_pod(client, plan)
                ids: list[str] = []
                played.append((plan, ids))
                for container in plan.containers:
                    ids.append(client.create_container(container_request(plan, container)))
                client.api_request("POST", f"/v1/pods/{plan.name}/start", timeout=None)
        except BaseException:
            # All or nothing: what this play made goes, the error is reported.
            for plan, _ in reversed(played):
                with contextlib.suppress(HyperError):
                    remove_pod(client, plan.name, ctx)
            raise
    for plan, ids in played:
        print("Pod:", file=ctx.stdout)
        print(plan.name, file=ctx.stdout)
        print("Container:" if len(ids) == 1 else "Containers:", file=ctx.stdout)
        for container_id in ids:
            print(container_id, file=ctx.stdout)
    return 0


def prepare_host_paths(plan: PodPlan) -> None:
    """Kubernetes' hostPath types, here before any VM boots: Directory and File
    must be one; DirectoryOrCreate is made (0755) when missing, FileOrCreate
    an empty file (0644, in a directory that exists)."""
    for host in plan.host_paths:
        what = f"hostPath {host.path} of volume {host.name}"
        try:
            if host.type == "DirectoryOrCreate" and not os.path.lexists(host.path):
                os.makedirs(host.path, 0o755, exist_ok=True)
            if host.type == "FileOrCreate" and not os.path.lexists(host.path):
                os.close(os.open(host.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            pass  # made meanwhile: checked below
        except OSError as exc:
            raise FailedPrecondition(f"cannot create {what}: {exc.strerror}") from None
        if host.type.startswith("Directory") and not os.path.isdir(host.path):
            raise FailedPrecondition(
                f"{what} is not a directory", hint="create it, or give type: DirectoryOrCreate"
            )
        if host.type.startswith("File") and not os.path.isfile(host.path):
            raise FailedPrecondition(f"{what} is not a file", hint="create it, or give type: FileOrCreate")


def _pull_images(plans: list[PodPlan], ctx: CliContext, *, quiet: bool) -> None:
    """Each image as its imagePullPolicy says (IfNotPresent unless given), once."""
    from hyper.cli.run_commands import ensure_image

    done: set[tuple[str, str]] = set()
    for plan in plans:
        for container in plan.containers:
            key = (container.image, container.pull_policy)
            if key not in done:
                ensure_image(container.image, container.pull_policy, ctx, quiet=quiet)
                done.add(key)


def create_pod(client: Any, plan: PodPlan) -> None:
    """`hyper pod create` of the plan's pod: its VM's size, ports and namespaces."""
    body = {
        "name": plan.name,
        "labels": dict(plan.labels),
        "hostname": plan.hostname,
        "publish": list(plan.publish),
        "memory_mib": plan.memory_mib,
        "cpus": plan.cpus,
        "share": list(plan.share),
    }
    try:
        client.api_request("POST", "/v1/pods", json=body)
    except AlreadyExists as exc:
        raise AlreadyExists(
            exc.message, hint="`hyper kube down FILE` removes a pod a play made; or rename metadata.name"
        ) from None


def container_request(plan: PodPlan, container: ContainerPlan) -> Any:
    """`hyper create --pod` of one container: the same request body."""
    from hyper.cli.client import ContainerCreate
    from hyper.runtime import spec as specs

    options = specs.RunOptions(
        image=container.image,
        command=container.command,
        entrypoint=container.entrypoint,
        env=container.env,
        workdir=container.workdir,
        user=container.user,
        memory_mib=container.memory_mib,
        nano_cpus=container.nano_cpus,
        mounts=container.mounts,
        read_only=container.read_only,
        privileged=container.privileged,
        cap_add=container.cap_add,
        cap_drop=container.cap_drop,
        security_opt=container.security_opt,
        stop_timeout=container.stop_timeout,
        pod=plan.name,
    )
    request = ContainerCreate.from_run_options(
        options, name=container.name, labels=dict(container.labels), restart=container.restart, start=False
    )
    return dataclasses.replace(request, cpus=None)  # the pod's VM's


def remove_pod(client: Any, name: str, ctx: CliContext) -> list[str]:
    """Remove the pod `name` with its containers (force), then its emptyDir
    volumes; the volumes' names."""
    with contextlib.suppress(NotFound):
        client.api_request("DELETE", f"/v1/pods/{name}", params={"force": "1"}, timeout=None)
    return remove_volumes(name, ctx)


def remove_volumes(pod: str, ctx: CliContext, *, dry_run: bool = False) -> list[str]:
    """The emptyDir volumes a play made for the pod `pod`, removed (unless `dry_run`)."""
    from hyper.storage.volumes import VolumeStore

    found = []
    with VolumeStore(ctx.paths.volumes, ctx.paths.containers) as store:
        for volume in store.all():
            if volume.labels.get(KUBE_POD_LABEL) == pod:
                if not dry_run:
                    store.remove(volume.name, force=True)
                found.append(volume.name)
    return found


def cmd_down(args: argparse.Namespace, ctx: CliContext) -> int:
    """Stop and remove the file's pods; a pod already removed (`hyper pod rm`)
    that left emptyDir volumes has those removed."""
    from hyper.cli.container_commands import connect_daemon

    pods = read_manifests(args.file)
    stopped: list[str] = []
    volumes: list[str] = []
    with connect_daemon(ctx) as client:
        present = []
        for pod in pods:
            try:
                document = client.api_request("GET", f"/v1/pods/{pod.name}").json()
            except NotFound:
                document = {}
            if document.get("Name") != pod.name:  # none, or an ID's prefix, not the name
                if not remove_volumes(pod.name, ctx, dry_run=True):
                    raise NotFound(f"no such pod: {pod.name}", hint="hyper pod ps lists the pods")
            elif KUBE_LABEL not in (document.get("Labels") or {}):
                raise FailedPrecondition(
                    f"pod {pod.name} was not made by hyper kube play", hint=f"hyper pod rm -f {pod.name}"
                )
            else:
                present.append(pod.name)
        for pod in pods:
            if pod.name in present:
                client.api_request("POST", f"/v1/pods/{pod.name}/stop", timeout=None)
                stopped.append(pod.name)
                volumes += remove_pod(client, pod.name, ctx)
            else:
                volumes += remove_volumes(pod.name, ctx)
    print("Pods stopped:", file=ctx.stdout)
    for name in stopped:
        print(name, file=ctx.stdout)
    print("Pods removed:", file=ctx.stdout)
    for name in stopped:
        print(name, file=ctx.stdout)
    if volumes:
        print("Volumes removed:", file=ctx.stdout)
        for name in volumes:
            print(name, file=ctx.stdout)
    return 0
