"""Several views of one photo, for test-time augmentation and catalogue-side augmentation.

* **Query-side test-time augmentation** (:class:`ViewSpec` from ``--tta``): the photo itself, its
  mirror image (``flip``) and crops of it (``crop``: the centre and the four corners, each keeping
  :data:`CROP_FRACTION` of the side). A query's embedding is the normalised mean of its views'
  (:func:`mean_of_views`).
* **Catalogue-side augmentation** (``augment`` views, ``--catalog-augment N``): the photo itself
  and N − 1 shop-like variants of it (:func:`tf_shopee.data.studio.studio_to_shelf` with a fixed
  seed per variant and a synthetic background). The views are kept apart and searched as one
  catalogue item: the item's score for a query is the best of its views'.

The first view is always the photo decoded exactly as the exported model's serving graph decodes
it (:func:`~tf_shopee.data.pipeline.decode_image`), so one view gives the same embedding as
``model.embed`` (except for a concatenated export, whose parts' pixels are resized from the
largest part's view rather than each decoded at its own size). Views are made in TensorFlow
(one traced function per spec and size), pixels 0..255, ``[V, S, S, 3]`` per photo.
"""

from __future__ import annotations

import dataclasses
import math

from tf_shopee.errors import UserError

CROP_FRACTION = 0.8
TTA_CHOICES = ("flip", "crop")
# Seeds of the catalogue variants: fixed, so an index built twice stores the same embeddings.
# Variant j has the same seed for every photo (the same background, scale and jitter), like a
# fixed test-time transform: items are compared with each other under the same transforms, and
# no item gets a background that happens to look like a query's by the luck of its own seed.
_AUGMENT_SEED = 20


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """Which views of each photo to embed.

    Attributes:
        flip: add the mirror image of every view.
        crop: add five crops (centre, four corners) keeping ``crop_fraction`` of the side.
        augment: total views including the photo itself when > 1: N − 1 shop-like variants of a
            studio photo (catalogue side), kept apart rather than averaged.
        crop_fraction: side fraction of the crops.
    """

    flip: bool = False
    crop: bool = False
    augment: int = 1
    crop_fraction: float = CROP_FRACTION

    @property
    def is_plain(self) -> bool:
        """One view, the photo itself: ``model.embed`` does the same faster."""
        return not self.flip and not self.crop and self.augment <= 1

    @property
    def count(self) -> int:
        """Views per photo."""
        base = 1 + (5 if self.crop else 0)
        return base * (2 if self.flip else 1) + max(0, self.augment - 1)

    def describe(self) -> str:
        parts = [name for name in TTA_CHOICES if getattr(self, name)]
        if self.augment > 1:
            parts.append(f"augment={self.augment}")
        return ",".join(parts) or "none"


def parse_tta(text: str | None, option: str = "--tta") -> ViewSpec:
    """``"flip"``, ``"crop"``, ``"flip,crop"`` or ``"none"``/empty → a :class:`ViewSpec`."""
    names = [part.strip().lower() for part in (text or "").split(",") if part.strip()]
    if names in ([], ["none"]):
        return ViewSpec()
    unknown = [name for name in names if name not in TTA_CHOICES]
    if unknown:
        raise UserError(f"{option}: unknown view(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(TTA_CHOICES)} (comma-separated) or none")
    return ViewSpec(flip="flip" in names, crop="crop" in names)


def augment_spec(count: int, option: str = "--catalog-augment") -> ViewSpec:
    """``count`` views per catalogue photo (1: the photo alone)."""
    if not isinstance(count, int) or count < 1:
        raise UserError(f"{option} must be a whole number of views >= 1, got {count!r}")
    return ViewSpec(augment=count)


_FUNCTIONS: dict = {}


def views_function(spec: ViewSpec, image_size: int):
    """A ``tf.function``: encoded image bytes (scalar string) → float32 ``[V, S, S, 3]``."""
    key = (spec, int(image_size))
    if key in _FUNCTIONS:
        return _FUNCTIONS[key]
    import tensorflow as tf

    from tf_shopee.data.pipeline import decode_image, decode_image_uint8, resize_image
    from tf_shopee.data.studio import studio_to_shelf

    size = int(image_size)
    fraction = float(spec.crop_fraction)

    def crops(image_bytes):
        def decoded():
            return decode_image_uint8(image_bytes, min_side=math.ceil(size / fraction))

        full = tf.cond(tf.strings.length(image_bytes) > 0, decoded,
                       lambda: tf.zeros([size, size, 3], tf.uint8))
        height, width = tf.shape(full)[0], tf.shape(full)[1]
        crop_height = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float32) * fraction),
                                            tf.int32))
        crop_width = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float32) * fraction),
                                           tf.int32))
        corners = [((height - crop_height) // 2, (width - crop_width) // 2),
                   (0, 0), (0, width - crop_width),
                   (height - crop_height, 0), (height - crop_height, width - crop_width)]
        return [resize_image(full[top:top + crop_height, left:left + crop_width], size)
                for top, left in corners]

    def make(image_bytes):
        views = [decode_image(image_bytes, size)]
        if spec.crop:
            views += crops(image_bytes)
        if spec.flip:
            views += [tf.image.flip_left_right(view) for view in views]
        if spec.augment > 1:
            studio = tf.cond(tf.strings.length(image_bytes) > 0,
                             lambda: decode_image_uint8(image_bytes, min_side=size),
                             lambda: tf.zeros([size, size, 3], tf.uint8))
            views += [studio_to_shelf(studio, tf.constant([_AUGMENT_SEED, index], tf.int64),
                                      image_size=size) for index in range(1, spec.augment)]
        return tf.stack(views)

    function = tf.function(make, input_signature=[tf.TensorSpec([], tf.string)])
    _FUNCTIONS[key] = function
    return function


def make_views(images, spec: ViewSpec, image_size: int):
    """float32 ``[N, V, S, S, 3]`` (NumPy) views of ``N`` encoded photos."""
    import numpy as np

    function = views_function(spec, image_size)
    if not images:
        return np.zeros((0, spec.count, image_size, image_size, 3), np.float32)
    return np.stack([function(image).numpy() for image in images])


def mean_of_views(embeddings):
    """``[N, V, D]`` per-view embeddings → ``[N, D]``: their mean, L2-normalised."""
    import numpy as np

    mean = embeddings.mean(axis=1)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norms, 1e-12)).astype(np.float32)
