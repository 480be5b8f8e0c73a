"""Docker Engine API: the image endpoints (list, inspect, history, pull, push, tag,
remove, prune, save and load) over Hyper's image store and registry client.

Store access and registry work block, so each runs in a thread. A pull or push
streams Docker's JSON progress messages while its thread works; the response
starts with the first progress event, so a failure before it (an unknown
image, an unreachable registry) is an ordinary error response with the right
status, and a failure after it is sent in the stream, as Docker does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from hyper.api.docker import image_json
from hyper.api.docker.common import DAEMON, Handler, docker_error, filters, flag, scope_of, tenants_of
from hyper.daemon.daemon import Daemon
from hyper.daemon.events import Event
from hyper.errors import FailedPrecondition, InvalidArgument, NotFound
from hyper.image import Image, ImageStore, parse_reference
from hyper.image.reference import lookup_candidates
from hyper.image.registry import (
    Credentials,
    CredentialStore,
    ProgressEvent,
    RegistryOptions,
    parse_platform,
    pull_image,
    push_image,
)
from hyper.image.registry.progress import short_id
from hyper.image.store import PruneReport, RemoveReport, familiar_name, repo_digests
from hyper.image.usage import images_in_use
from hyper.tenants.images import ImageView

T = TypeVar("T")
Message = dict[str, Any]

STREAM_INTERVAL = 0.1  # seconds between batches of progress messages: bounds a fast pull's output
UPLOAD_CHUNK = 1 << 20  # and the size of the chunks of a saved archive sent
_SHORT_ID_DIGITS = frozenset("0123456789abcdef")


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def _view(request: web.Request) -> ImageView:
    """The images the request sees: a tenant's own and the public ones, or (the admin) the store."""
    tenants = tenants_of(request)
    if tenants is not None:
        return tenants.image_view(scope_of(request))
    return ImageView(ImageStore(_daemon(request).paths.images))


def _store(request: web.Request) -> ImageStore:
    """The store the request's pulls, loads, tags and removals change."""
    return _view(request).store


async def list_store_images(daemon: Daemon) -> list[Image]:
    return await asyncio.to_thread(ImageStore(daemon.paths.images).images)


def _names_an_image(name: str) -> bool:
    """Whether `name` could name a local image at all (a reference, or an image ID prefix)."""
    if set(name.removeprefix("sha256:")) <= _SHORT_ID_DIGITS and name.removeprefix("sha256:"):
        return True
    try:
        lookup_candidates(name)
    except InvalidArgument:
        return False
    return True


def _find(store: ImageStore | ImageView, name: str) -> Image:
    """The image `name` names; Docker's `No such image` (404) otherwise, which clients rely on."""
    if not _names_an_image(name):
        raise NotFound(f"No such image: {name}")
    try:
        return store.find(name) if isinstance(store, ImageView) else store.get(name)
    except NotFound:
        raise NotFound(f"No such image: {name}") from None


def _containers_using_images(request: web.Request) -> dict[str, list[str]]:
    """Image ID → the containers using it that the request sees (read on the
    event loop, which owns them)."""
    scope = scope_of(request)
    users: dict[str, list[str]] = {}
    for pod in _daemon(request).pods.values():
        if scope.sees(pod.record.owner):
            users.setdefault(pod.record.image_id, []).append(pod.id)
    return users


def _on_disk_users(request: web.Request, daemon: Daemon) -> Mapping[str, Sequence[str]]:
    """The containers `hyper run` recorded on disk: the admin's own (a tenant has none)."""
    return images_in_use(daemon.paths.containers) if scope_of(request).is_admin else {}


def _merge_users(*sources: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """hyperd's containers and the ones `hyper run` recorded on disk, as one map."""
    merged: dict[str, list[str]] = {}
    for source in sources:
        for image_id, containers in source.items():
            known = merged.setdefault(image_id, [])
            known.extend(c for c in containers if c not in known)
    return merged


# -- list, inspect, history ---------------------------------------------------------------


async def list_images(request: web.Request) -> web.StreamResponse:
    wanted = filters(request)
    legacy = request.query.get("filter")  # the pre-1.13 reference filter
    if legacy:
        wanted.setdefault("reference", []).append(legacy)
    image_json.check_list_filters(wanted)
    view = _view(request)

    def select() -> list[Message]:
        def created(key: str) -> float | None:
            names = wanted.get(key)
            if not names:
                return None
            return image_json.created_time(_find(view, names[-1]).created)

        selection = image_json.ImageFilters(
            references=tuple(wanted.get("reference", ())),
            dangling=image_json.dangling_filter(wanted.get("dangling", ())),
            labels=tuple(wanted.get("label", ())),
            before=created("before"),
            since=created("since"),
        )
        return image_json.image_summaries(view.images(), selection)

    return web.json_response(await asyncio.to_thread(select))


async def inspect_image(request: web.Request) -> web.StreamResponse:
    view = _view(request)
    name = request.match_info["name"]

    def inspect() -> Message:
        image = _find(view, name)
        return image_json.inspect_document(image, view.store_for(image).config_document(image))

    return web.json_response(await asyncio.to_thread(inspect))


async def image_history(request: web.Request) -> web.StreamResponse:
    view = _view(request)
    name = request.match_info["name"]

    def history() -> list[Message]:
        image = _find(view, name)
        store = view.store_for(image)
        return image_json.history_entries(image, store.config_document(image), store.layer_sizes(image))

    return web.json_response(await asyncio.to_thread(history))


# -- tag, remove, prune --------------------------------------------------------------------------


def _publish(request: web.Request, action: str, actor: str, name: str) -> None:
    owner = scope_of(request).creator  # a tenant's image events are its own
    _daemon(request).events.publish(Event("image", action, actor, {"name": name}, owner=owner))


async def tag_image(request: web.Request) -> web.StreamResponse:
    view = _view(request)
    store = view.store
    name = request.match_info["name"]
    target = image_json.tag_target(request.query.get("repo", ""), request.query.get("tag", ""))

    def tag() -> Image:
        _find(view, name)
        image = view.localize(name)  # a public image becomes the tenant's own first
        store.tag(image.id, target)
        return image

    image = await asyncio.to_thread(tag)
    _publish(request, "tag", image.id, familiar_name(target))
    return web.Response(status=201)


async def remove_image(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    view = _view(request)
    store = view.store
    name = request.match_info["name"]
    force = flag(request, "force")  # noprune has no meaning here: Hyper's images have no parent images
    running_users = _containers_using_images(request)

    def remove() -> tuple[RemoveReport, list[str]]:
        if _names_an_image(name):
            view.refuse_public_removal(name)
        image = _find(store, name)
        users = _merge_users(running_users, _on_disk_users(request, daemon))
        try:
            report = store.remove_report(name, force=force, in_use=users)
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"conflict: {exc.message}", hint="force with docker rmi -f; an image in use is only untagged"
            ) from exc
        remaining = [] if report.deleted else repo_digests(store.get(image.id))
        untagged_digests = [d for d in repo_digests(image) if d not in remaining]
        return report, untagged_digests

    report, untagged_digests = await asyncio.to_thread(remove)
    answer: list[Message] = []
    for tag in report.untagged:
        answer.append({"Untagged": familiar_name(tag)})
        _publish(request, "untag", report.image_id, familiar_name(tag))
    answer.extend({"Untagged": digest} for digest in untagged_digests)
    for image_id in report.deleted:
        answer.append({"Deleted": image_id})
        _publish(request, "delete", image_id, image_id)
    return web.json_response(answer)


async def prune_images(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    store = _store(request)
    wanted = filters(request)
    for key in wanted:
        if key != "dangling":
            raise InvalidArgument(
                f"invalid filter {key!r} for image prune", hint="Hyper prunes by dangling only"
            )
    dangling = image_json.dangling_filter(wanted.get("dangling", ()))
    running_users = _containers_using_images(request)

    def prune() -> PruneReport:
        users = _merge_users(running_users, _on_disk_users(request, daemon))
        return store.prune(all_unused=dangling is False, in_use=users)

    report = await asyncio.to_thread(prune)
    deleted: list[Message] = [{"Untagged": name} for name in report.untagged]
    deleted += [{"Deleted": image_id} for image_id in report.deleted]
    for image_id in report.deleted:
        _publish(request, "delete", image_id, image_id)
    return web.json_response({"ImagesDeleted": deleted or None, "SpaceReclaimed": report.reclaimed_bytes})


# -- progress streams -----------------------------------------------------------------------------


class _ProgressStream:
    """Runs a blocking registry job in a thread and streams its messages as Docker's JSON lines.

    The job reports from any of its threads; messages are handed to the event
    loop and written in batches, a layer's superseded transfer updates dropped.
    """

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._pending: collections.deque[Message] = collections.deque()
        self._wake = asyncio.Event()
        self.response: web.StreamResponse | None = None
        self._client_gone = False

    def report(self, message: Message) -> None:
        """Called from the job's threads."""
        self._loop.call_soon_threadsafe(self._arrived, message)

    def report_event(self, event: ProgressEvent) -> None:
        self.report(image_json.progress_message(event))

    def _arrived(self, message: Message) -> None:
        self._pending.append(message)
        self._wake.set()

    async def run(self, job: Callable[[], T], opening: Sequence[Message] = ()) -> T | None:
        """The job's result, or None when it failed after the stream started (the error is sent).

        A failure before any progress is raised, to become a plain error response.
        """
        task = asyncio.ensure_future(asyncio.to_thread(job))
        task.add_done_callback(lambda _: self._wake.set())
        while True:
            await self._wake.wait()
            self._wake.clear()
            if task.done() and task.exception() is not None and self.response is None:
                raise task.exception()  # type: ignore[misc]
            if self.response is None:
                await self._start()
                await self.send(opening)
            batch = list(self._pending)
            self._pending.clear()
            await self.send(image_json.coalesce(batch))
            if task.done() and not self._pending:
                break
            await asyncio.sleep(STREAM_INTERVAL)
        error = task.exception()
        if error is not None:
            await self.send([image_json.error_message(error)])
            return None
        return task.result()

    async def _start(self) -> None:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(self._request)
        self.response = response

    async def send(self, messages: Iterable[Message]) -> None:
        if self.response is None:
            await self._start()
        assert self.response is not None
        data = b"".join(json.dumps(m).encode() + b"\r\n" for m in messages)
        if not data or self._client_gone:
            return
        try:
            await self.response.write(data)
        except ConnectionError:
            self._client_gone = True  # the job still finishes: a pull commits whole or not at all

    async def finish(self) -> web.StreamResponse:
        if self.response is None:
            await self._start()
        assert self.response is not None
        if not self._client_gone:
            with contextlib.suppress(ConnectionError):
                await self.response.write_eof()
        return self.response


def _registry_options(request: web.Request) -> RegistryOptions:
    """The registry settings of hyperd; the client's X-Registry-Auth before the
    stored credentials, which are the admin's: a tenant's request uses its own only."""
    credentials = image_json.registry_auth(request.headers.get("X-Registry-Auth"))
    if credentials is None and scope_of(request).is_admin:
        return RegistryOptions()
    return RegistryOptions(credentials=_RequestCredentials(credentials))


class _RequestCredentials(CredentialStore):
    """The credentials one request carried (None: none), for whichever registry it reaches."""

    def __init__(self, credentials: Credentials | None) -> None:
        super().__init__()
        self._credentials = credentials

    def get(self, domain: str) -> Credentials | None:
        del domain
        return self._credentials


def _current_id(store: ImageStore, reference: str) -> str | None:
    try:
        return store.get(reference).id
    except NotFound:
        return None


async def create_image(request: web.Request) -> web.StreamResponse:
    """POST /images/create: pull `fromImage` (importing `fromSrc` is not supported)."""
    query = request.query
    if not query.get("fromImage"):
        if "fromSrc" in query:
            return docker_error(
                501,
                "Hyper does not import root filesystems through the Docker API "
                "(POST /images/create?fromSrc=…); use `hyper import FILE NAME` on the host instead",
            )
        raise InvalidArgument("POST /images/create needs fromImage", hint="name the image to pull")
    reference = image_json.pull_reference(query["fromImage"], query.get("tag", ""))
    platform = parse_platform(query["platform"]) if query.get("platform") else None
    options = _registry_options(request)
    store = _store(request)
    name = image_json.familiar(reference)
    before = await asyncio.to_thread(_current_id, store, str(reference))
    stream = _ProgressStream(request)

    def pull() -> Image:
        return pull_image(
            store, str(reference), platform=platform, progress=stream.report_event, options=options
        )

    opening = [{"status": f"Pulling from {reference.path}", "id": reference.tag or reference.digest}]
    image = await stream.run(pull, opening)
    if image is not None:
        state = "Image is up to date" if before == image.id else "Downloaded newer image"
        await stream.send(
            [{"status": f"Digest: {image.manifest_digest}"}, {"status": f"Status: {state} for {name}"}]
        )
        _publish(request, "pull", name, name)
    return await stream.finish()


def _layers_only(stream: _ProgressStream, config_id: str) -> Callable[[ProgressEvent], None]:
    """Push progress without the config blob's lines: Docker lists the layers only."""

    def report(event: ProgressEvent) -> None:
        if event.id != config_id:
            stream.report_event(event)

    return report


def _push_targets(store: ImageStore, name: str, tag: str) -> list[str]:
    """The local tags `POST /images/{name}/push?tag=` pushes: one, or every tag of the repository."""
    if tag:
        reference = parse_reference(f"{parse_reference(name).repository}:{tag}")
        targets = [str(reference)] if _current_id(store, str(reference)) else []
    elif image_json.has_explicit_tag(name):
        targets = [str(parse_reference(name))] if _current_id(store, name) else []
    else:
        repository = parse_reference(name).repository
        targets = sorted(
            t
            for image in store.images()
            for t in image.repo_tags
            if parse_reference(t).repository == repository
        )
    if not targets:
        shown = f"{name}:{tag}" if tag else name
        raise NotFound(f"An image does not exist locally with the tag: {shown}")
    return targets


async def push_images(request: web.Request) -> web.StreamResponse:
    """POST /images/{name}/push: push one tag, or every tag of the repository, to its registry."""
    name = request.match_info["name"]
    if not _names_an_image(name):
        raise InvalidArgument(f"invalid reference format: {name}", hint="push NAME[:TAG]")
    options = _registry_options(request)
    store = _store(request)
    targets = await asyncio.to_thread(_push_targets, store, name, request.query.get("tag", ""))
    stream = _ProgressStream(request)

    def push() -> list[str]:
        pushed: list[str] = []
        for target in targets:
            report = _layers_only(stream, short_id(store.get(target).id))
            result = push_image(store, target, progress=report, options=options)
            tag = parse_reference(result.reference).tag
            stream.report({"status": f"{tag}: digest: {result.digest} size: {result.size}"})
            stream.report(
                {"progressDetail": {}, "aux": {"Tag": tag, "Digest": result.digest, "Size": result.size}}
            )
            pushed.append(familiar_name(result.reference))
        return pushed

    pushed = await stream.run(push)
    for reference in pushed or ():
        _publish(request, "push", reference, reference)
    return await stream.finish()


# -- save and load ----------------------------------------------------------------------------------


async def save_images(request: web.Request) -> web.StreamResponse:
    """GET /images/get?names=… and /images/{name}/get: a docker-archive tar of the images."""
    from hyper.image.save import save_images as write_archive

    names = (
        [request.match_info["name"]] if "name" in request.match_info else request.query.getall("names", [])
    )
    if not names:
        raise InvalidArgument("no image to save", hint="give names=IMAGE")
    view = _view(request)
    store = view.store

    def save() -> Path:
        for name in names:
            _find(view, name)
            view.localize(name)  # a public image is saved from the tenant's own store
        handle, target = store.blobs.new_ingest_file("docker-save-")
        os.close(handle)
        try:
            write_archive(store, names, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    archive = await asyncio.to_thread(save)
    try:
        source = await asyncio.to_thread(archive.open, "rb")
    finally:
        archive.unlink(missing_ok=True)  # the open file keeps the content until it is sent
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        while chunk := await asyncio.to_thread(source.read, UPLOAD_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away: nothing to answer
    finally:
        source.close()
    return response


async def load_images(request: web.Request) -> web.StreamResponse:
    """POST /images/load: the body is a docker-archive or OCI-layout tar (`docker load`)."""
    store = _store(request)
    handle, upload = await asyncio.to_thread(store.blobs.new_ingest_file, "docker-load-")
    try:
        with open(handle, "wb") as out:
            buffer = bytearray()
            async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
                buffer += chunk
                if len(buffer) >= UPLOAD_CHUNK:
                    await asyncio.to_thread(out.write, bytes(buffer))
                    buffer.clear()
            await asyncio.to_thread(out.write, bytes(buffer))
        loaded = await asyncio.to_thread(store.load, upload)
    finally:
        await asyncio.to_thread(upload.unlink, missing_ok=True)
    lines: list[Message] = []
    for image in loaded:
        names = [familiar_name(tag) for tag in image.repo_tags]
        for tag in names:
            lines.append({"stream": f"Loaded image: {tag}\n"})
            _publish(request, "load", tag, tag)
        if not names:
            lines.append({"stream": f"Loaded image ID: {image.id}\n"})
            _publish(request, "load", image.id, image.id)
    # A chunked stream of JSON lines, as dockerd sends it: docker-py decodes a
    # chunked answer line by line, and a plain body as one JSON document.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\r\n")
        await response.write_eof()
    return response


async def search_images(request: web.Request) -> web.StreamResponse:
    del request
    return docker_error(
        501, "Hyper does not search registries (GET /images/search); browse the registry instead"
    )


# Order matters where paths overlap: `{name:.+}` takes slashes, so the fixed
# paths (/images/json, /images/create, …) come first.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/images/json", list_images),
    ("POST", "/images/create", create_image),
    ("POST", "/images/prune", prune_images),
    ("POST", "/images/load", load_images),
    ("GET", "/images/get", save_images),
    ("GET", "/images/search", search_images),
    ("GET", "/images/{name:.+}/json", inspect_image),
    ("GET", "/images/{name:.+}/history", image_history),
    ("GET", "/images/{name:.+}/get", save_images),
    ("POST", "/images/{name:.+}/tag", tag_image),
    ("POST", "/images/{name:.+}/push", push_images),
    ("DELETE", "/images/{name:.+}", remove_image),
]
