"""The local image store: load, import, list and remove images, and turn their layers
into read-only disks that a VM attaches.

The runtime uses `ImageStore` and the value types exported here; the modules behind
them are private to this package.
"""

from hyper.image.model import Healthcheck, Image, ImageConfig, LayerDisk
from hyper.image.reference import Reference, parse_reference
from hyper.image.store import ImageStore

__all__ = ["Healthcheck", "Image", "ImageConfig", "ImageStore", "LayerDisk", "Reference", "parse_reference"]
