"""The CRI ImageService over hyperd's image store.

Kubernetes names images the way Docker does (`busybox` is
`docker.io/library/busybox:latest`), which is how the store resolves names, so
the kubelet's references need no translation; the store's full names are what
ListImages and ImageStatus report, as containerd reports them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from pathlib import Path

from cri_api.v1 import api_pb2

from hyper.errors import InvalidArgument, NotFound
from hyper.image import Image, ImageStore, parse_reference
from hyper.image.model import config_to_json
from hyper.image.registry import Credentials, CredentialStore, RegistryOptions, pull_image
from hyper.image.store import allocated_bytes
from hyper.image.usage import images_in_use
from hyper.paths import HyperPaths


def cri_image(image: Image) -> api_pb2.Image:
    """An image as the CRI describes it: full names, the manifest digest per repository, the user."""
    repositories = dict.fromkeys(parse_reference(tag).repository for tag in image.repo_tags)
    digests = [f"{r}@{image.manifest_digest}" for r in repositories] if image.manifest_digest else []
    described = api_pb2.Image(
        id=image.id,
        repo_tags=list(image.repo_tags),
        repo_digests=digests,
        size=image.size,
        spec=api_pb2.ImageSpec(image=image.id),
    )
    user = (image.config.user or "").split(":", 1)[0]
    if user.isdigit():
        described.uid.value = int(user)
    elif user:
        described.username = user
    return described


def credentials(auth: api_pb2.AuthConfig) -> Credentials | None:
    """The user name and password the kubelet passed for a pull, if any.

    An identity or registry token (a cloud's OAuth flow) cannot be used by
    Hyper's registry client: refused, so that a pull does not silently go
    without the credentials the cluster gave it.
    """
    if auth.identity_token or auth.registry_token:
        raise InvalidArgument(
            "Hyper's registry client cannot use an identity or registry token",
            hint="give the pull secret as a user name and password",
        )
    if auth.username or auth.password:
        return Credentials(auth.username, auth.password)
    if auth.auth:
        try:
            username, _, password = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidArgument("the pull's auth is not base64 of USER:PASSWORD") from exc
        return Credentials(username, password)
    return None


class _PullCredentials(CredentialStore):
    """The credentials one PullImage carried, for whichever registry it reaches."""

    def __init__(self, given: Credentials) -> None:
        super().__init__()
        self._given = given

    def get(self, domain: str) -> Credentials | None:
        del domain
        return self._given


class ImageService:
    def __init__(self, paths: HyperPaths) -> None:
        self.paths = paths
        self.store = ImageStore(paths.images)

    async def list_images(self, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
        images = await asyncio.to_thread(self.store.images)
        if request.HasField("filter") and request.filter.image.image:
            try:
                wanted = (await asyncio.to_thread(self.store.get, request.filter.image.image)).id
            except NotFound:
                return api_pb2.ListImagesResponse()
            images = [image for image in images if image.id == wanted]
        return api_pb2.ListImagesResponse(images=[cri_image(image) for image in images])

    async def image_status(self, request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgument("ImageStatus needs an image", hint="name it by reference or ID")
        try:
            image = await asyncio.to_thread(self.store.get, request.image.image)
        except NotFound:
            return api_pb2.ImageStatusResponse()  # the CRI's "not present": no image, no error
        answer = api_pb2.ImageStatusResponse(image=cri_image(image))
        if request.verbose:
            answer.info["info"] = json.dumps(
                {
                    "id": image.id,
                    "manifest_digest": image.manifest_digest,
                    "layers": list(image.layers),
                    "diff_ids": list(image.diff_ids),
                    "architecture": image.architecture,
                    "os": image.os,
                    "created": image.created,
                    "config": config_to_json(image.config),
                }
            )
        return answer

    async def pull_image(self, request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("PullImage needs an image", hint="name it by reference")
        reference = str(parse_reference(request.image.image))
        given = credentials(request.auth) if request.HasField("auth") else None
        options = RegistryOptions(credentials=_PullCredentials(given)) if given else RegistryOptions()
        image = await asyncio.to_thread(pull_image, self.store, reference, options=options)
        return api_pb2.PullImageResponse(image_ref=image.id)

    async def remove_image(self, request: api_pb2.RemoveImageRequest) -> api_pb2.RemoveImageResponse:
        """Every name of the image goes; its data stays while a container uses it.
        Removing an image that is not there succeeds, as the CRI requires."""
        if not request.image.image:
            raise InvalidArgument("RemoveImage needs an image", hint="name it by reference or ID")

        def remove() -> None:
            try:
                image = self.store.get(request.image.image)
            except NotFound:
                return
            in_use = images_in_use(self.paths.containers)
            self.store.remove_report(image.id, force=True, in_use=in_use)

        await asyncio.to_thread(remove)
        return api_pb2.RemoveImageResponse()

    async def image_fs_info(self, request: api_pb2.ImageFsInfoRequest) -> api_pb2.ImageFsInfoResponse:
        del request
        images, containers = await asyncio.gather(
            asyncio.to_thread(filesystem_usage, self.paths.images),
            asyncio.to_thread(filesystem_usage, self.paths.containers),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[images], container_filesystems=[containers])


def filesystem_usage(directory: Path) -> api_pb2.FilesystemUsage:
    """Bytes (allocated blocks) and inodes that the files under `directory` take."""
    used = inodes = 0
    if directory.is_dir():
        for root, dirs, files in os.walk(directory):
            inodes += len(dirs) + len(files)
            for name in files:
                try:
                    used += allocated_bytes(Path(root) / name)
                except FileNotFoundError:
                    continue  # removed while we walked
    return api_pb2.FilesystemUsage(
        timestamp=time.time_ns(),
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(directory)),
        used_bytes=api_pb2.UInt64Value(value=used),
        inodes_used=api_pb2.UInt64Value(value=inodes),
    )
