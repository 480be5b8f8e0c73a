"""The images a scope sees: a tenant's own store, and the images the admin made public.

Each tenant has an image store of its own (`STATE/tenants/ID/images`):
what it pulls or loads lands there and nowhere else, under tags no one else
sees, so a pull made with its registry credentials never shows in another
tenant's view, and a tenant cannot re-tag a name another tenant (or the
admin) runs. The admin publishes images by name (`hyper tenant public
add`); a tenant sees those beside its own, and the first time it uses one
(runs, tags, pushes or saves it) the image is hard-linked into its store,
sharing the admin's files. Blocking throughout: call from a thread.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from hyper.errors import FailedPrecondition, InvalidArgument, NotFound
from hyper.image import Image, ImageStore
from hyper.image.reference import lookup_candidates

_ID = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


class ImageView:
    """`store` is the scope's own; `admin` and `public` (reference → image ID)
    are the admin's store and what it published (None for the admin itself)."""

    def __init__(
        self, store: ImageStore, admin: ImageStore | None = None, public: Mapping[str, str] | None = None
    ) -> None:
        self.store = store
        self.admin = admin
        self.public = dict(public or {})

    @property
    def is_tenant(self) -> bool:
        return self.admin is not None

    def public_images(self) -> list[Image]:
        """The published images that exist, each with the names it was published under."""
        if self.admin is None:
            return []
        by_id: dict[str, list[str]] = {}
        for reference, image_id in self.public.items():
            by_id.setdefault(image_id, []).append(reference)
        found = []
        for image_id, references in by_id.items():
            try:
                image = self.admin.get(image_id)
            except NotFound:
                continue  # removed by the admin since
            found.append(dataclasses.replace(image, repo_tags=tuple(sorted(references))))
        return found

    def images(self) -> list[Image]:
        own = self.store.images() if self.store.root.exists() else []
        ids = {image.id for image in own}
        return own + [image for image in self.public_images() if image.id not in ids]

    def find(self, name: str) -> Image:
        """The image `name` names in this view: the scope's own first, then a public one."""
        try:
            return self.store.get(name)
        except NotFound:
            if self.admin is None:
                raise
        public = self._public(name)
        if public is None:
            raise NotFound(f"no such image: {name}")
        return public

    def _public(self, name: str) -> Image | None:
        try:
            wanted = {str(candidate) for candidate in lookup_candidates(name)}
        except InvalidArgument:
            wanted = set()
        match = _ID.fullmatch(name)
        for image in self.public_images():
            if wanted & set(image.repo_tags):
                return image
            if match and image.id.removeprefix("sha256:").startswith(match.group(1)):
                return image
        return None

    def store_for(self, image: Image) -> ImageStore:
        """The store that holds `image`'s blobs: the scope's own, or the admin's for a public one."""
        if self.admin is None:
            return self.store
        try:
            self.store.get(image.id)
        except NotFound:
            return self.admin
        return self.store

    def is_public_only(self, name: str) -> bool:
        """Whether `name` is a public image this tenant has no copy of."""
        try:
            self.store.get(name)
        except NotFound:
            return self.admin is not None and self._public(name) is not None
        return False

    def localize(self, name: str) -> Image:
        """The image `name` names, in the scope's own store: a public image is
        linked in first (its published name becomes the tenant's own tag)."""
        try:
            return self.store.get(name)
        except NotFound:
            if self.admin is None:
                raise
        public = self._public(name)
        if public is None:
            raise NotFound(f"no such image: {name}")
        return self.store.link_from(self.admin, public, public.repo_tags[0])

    def refuse_public_removal(self, name: str) -> None:
        if self.is_public_only(name):
            raise FailedPrecondition(
                f"{name} is a public image of this service; only its admin removes it",
                hint="it takes no room of yours",
            )
