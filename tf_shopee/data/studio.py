"""Studio → shelf augmentation: catalogue photos made to look like shop photos.

A catalogue image is a studio shot: one product, centred, on a white background. A shop photo
shows the product on a shelf, in a hand or as a pile of fruit, with clutter behind it. A model
that learns from shelf photos alone ranks a shelf photo's own catalogue image far down (the
grocery set: 62 % top-1 among 27 products for a fine-tuned Lite0). This module bridges the two
in pure TensorFlow (it runs inside ``tf.data.Dataset.map`` and eagerly):

1. :func:`background_mask` finds the studio background: near-white pixels connected to the
   image border (a flood fill by repeated 3 × 3 max-pooling at 64 × 64, so white parts *inside*
   the product, a milk carton's label, stay product);
2. :func:`studio_to_shelf` optionally tiles the product (2 × 2 or 3 × 3 copies: a pile of fruit),
   shrinks and places it at a random spot, replaces the background (a crop of a shop photo when
   one is given, else a synthetic one: a random colour gradient with noise), then applies the
   project's usual crop / flip / colour jitter (:func:`tf_shopee.data.pipeline.augment_image`).

Random choices use stateless ops seeded per call, like the rest of the pipeline: the same seed
gives the same image whatever the threading.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from tf_shopee.data.pipeline import augment_image, decode_image_uint8, resize_image
from tf_shopee.errors import UserError

# Pixels whose darkest channel is at least this bright count as studio white.
WHITE_LEVEL = 235.0
MASK_SIDE = 64
# Flood-fill steps at MASK_SIDE: enough to cross the image from the border to the centre.
FLOOD_STEPS = MASK_SIDE // 2 + 4
# Fraction of the canvas side the product (or the pile) takes.
DEFAULT_SCALE_RANGE = (0.55, 1.0)
DEFAULT_TILE_PROBABILITY = 0.3
DEFAULT_SHELF_BACKGROUND_PROBABILITY = 0.8
# Mixed into each catalogue variant's seed (tf_shopee.data.pipeline's tags 1, 2 and 4 are
# the augmentation's, the class balancing's and the mix's).
CATALOG_SEED_TAG = 3


def background_mask(image: tf.Tensor) -> tf.Tensor:
    """float32 ``[H, W, 1]`` in 0..1: 1 where ``image`` (``[H, W, 3]``, 0..255) is studio
    background (near-white and connected to the border), 0 on the product; soft at the edges."""
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    small = tf.image.resize(image, [MASK_SIDE, MASK_SIDE], method="area")
    white = tf.cast(tf.reduce_min(small, axis=-1, keepdims=True) >= WHITE_LEVEL, tf.float32)
    white = white[tf.newaxis]  # [1, M, M, 1]
    border = tf.pad(tf.zeros([1, MASK_SIDE - 2, MASK_SIDE - 2, 1]), [[0, 0], [1, 1], [1, 1],
                                                                     [0, 0]],
                    constant_values=1.0)
    grown = border * white
    for _ in range(FLOOD_STEPS):
        grown = tf.nn.max_pool2d(grown, ksize=3, strides=1, padding="SAME") * white
    # Soft edge: a 3 × 3 blur, then back to the image size.
    grown = tf.nn.avg_pool2d(grown, ksize=3, strides=1, padding="SAME")
    mask = tf.image.resize(grown, tf.stack([height, width]), method="bilinear")[0]
    return tf.clip_by_value(mask, 0.0, 1.0)


def synthetic_background(seed: tf.Tensor, size: int) -> tf.Tensor:
    """float32 ``[size, size, 3]`` 0..255: a random two-colour linear gradient with blurred noise,
    the stand-in for shop clutter when no shop photo is at hand (catalogue-side views)."""
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=4)
    colours = tf.random.stateless_uniform([2, 3], seed=seeds[0], minval=0.0, maxval=255.0)
    angle = tf.random.stateless_uniform([], seed=seeds[1], maxval=6.2832)
    grid = tf.linspace(-1.0, 1.0, size)
    x, y = tf.meshgrid(grid, grid)
    t = tf.clip_by_value((x * tf.cos(angle) + y * tf.sin(angle) + 1.0) / 2.0, 0.0, 1.0)
    t = t[..., tf.newaxis]
    gradient = colours[0] * (1.0 - t) + colours[1] * t
    noise_side = max(4, size // 16)
    noise = tf.random.stateless_normal([1, noise_side, noise_side, 3], seed=seeds[2],
                                       stddev=40.0)
    noise = tf.image.resize(noise, [size, size], method="bilinear")[0]
    return tf.clip_by_value(gradient + noise, 0.0, 255.0)


def _tile(image: tf.Tensor, mask: tf.Tensor, copies: tf.Tensor):
    """``copies`` × ``copies`` copies of the product side by side, back at the input size."""
    size = tf.shape(image)[:2]
    both = tf.concat([image, mask], axis=-1)
    tiled = tf.tile(both, tf.stack([copies, copies, 1]))
    tiled = tf.image.resize(tiled, size, method="area")
    return tiled[..., :3], tiled[..., 3:]


def studio_to_shelf(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    background: tf.Tensor | None = None,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    tile_probability: float = DEFAULT_TILE_PROBABILITY,
    jitter: bool = True,
) -> tf.Tensor:
    """One shop-like view of a studio photo; deterministic for a seed.

    Args:
        image: ``[H, W, 3]`` studio photo, 0..255 (uint8 or float).
        seed: int tensor ``[2]``.
        image_size: output side S.
        background: ``[S, S, 3]`` float32 0..255 to put behind the product (a crop of a shop
            photo), or None for :func:`synthetic_background`.
        scale_range: fraction of the output side the product (or the pile) takes.
        tile_probability: chance of a 2 × 2 or 3 × 3 pile of copies instead of one product.
        jitter: finish with :func:`~tf_shopee.data.pipeline.augment_image` (crop, flip, colour).

    Returns:
        float32 ``[S, S, 3]``, 0..255.
    """

    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=7)
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, 3])
    mask = background_mask(image)

    draw = tf.random.stateless_uniform([], seed=seeds[0])
    copies = 2 + tf.cast(tf.random.stateless_uniform([], seed=seeds[1]) < 0.4, tf.int32)
    image, mask = tf.cond(draw < tile_probability, lambda: _tile(image, mask, copies),
                          lambda: (image, mask))

    scale = tf.random.stateless_uniform([], seed=seeds[2], minval=scale_range[0],
                                        maxval=scale_range[1])
    side = tf.maximum(8, tf.cast(tf.round(scale * image_size), tf.int32))
    product = resize_image(image, image_size)  # square, as the model sees photos
    product = tf.image.resize(product, tf.stack([side, side]), method="area")
    product_mask = tf.image.resize(tf.image.resize(mask, [image_size, image_size]),
                                   tf.stack([side, side]), method="area")
    room = image_size - side
    offsets = tf.random.stateless_uniform([2], seed=seeds[3], minval=0, maxval=room + 1,
                                          dtype=tf.int32)
    padding = [[offsets[0], room - offsets[0]], [offsets[1], room - offsets[1]], [0, 0]]
    canvas = tf.pad(product, padding)
    canvas_mask = tf.pad(product_mask, padding, constant_values=1.0)
    canvas.set_shape([image_size, image_size, 3])
    canvas_mask.set_shape([image_size, image_size, 1])

    if background is None:
        background = synthetic_background(seeds[4], image_size)
    background = tf.cast(background, tf.float32)
    composed = canvas * (1.0 - canvas_mask) + background * canvas_mask
    if jitter:
        composed = augment_image(composed, seeds[5], image_size=image_size)
    composed.set_shape([image_size, image_size, 3])
    return composed


def shelf_background(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """A random crop (a quarter to all of the area) of a shop photo, blurred a little and
    resized to ``[S, S, 3]``: the clutter behind a composited product."""

    blurred = augment_image(image, seed, image_size=image_size, crop_area_range=(0.25, 1.0),
                            brightness=None, contrast=None, saturation=None, hue=None)
    small = tf.image.resize(blurred[tf.newaxis], [image_size // 4, image_size // 4], method="area")
    return tf.image.resize(small, [image_size, image_size], method="bilinear")[0]


# ----------------------------------------------------------------------------------------------
# Catalogue photos as training examples


@dataclasses.dataclass(frozen=True)
class CatalogMix:
    """Catalogue (studio) photos that join the training stream as members of their classes.

    Attributes:
        image_bytes: encoded photos.
        labels: the dense label of each (the training data's label map).
        fraction: share of the training examples drawn from these photos (each draw a new
            shop-like variant, :func:`tf_shopee.data.studio.studio_to_shelf`).
        shelf_background_probability: chance a variant is composited on a crop of a shop photo
            of the training folds; otherwise on a synthetic background.
    """

    image_bytes: tuple
    labels: tuple
    fraction: float = 0.1
    shelf_background_probability: float = 0.8

    def __post_init__(self):
        if len(self.image_bytes) != len(self.labels) or not self.image_bytes:
            raise UserError("catalogue mix: need as many labels as photos, and at least one")
        if not 0.0 < self.fraction < 1.0:
            raise UserError(f"data.catalog_fraction must be in (0, 1), got {self.fraction}")
        if not 0.0 <= self.shelf_background_probability <= 1.0:
            raise UserError("data.catalog_shelf_background must be in [0, 1], got "
                            f"{self.shelf_background_probability}")

    def examples(self, backgrounds: tf.data.Dataset, *, image_size: int, seed: int
                 ) -> tf.data.Dataset:
        """An endless stream of shop-like variants of the catalogue photos, as training examples
        (the keys of :func:`~tf_shopee.data.pipeline.make_dataset`'s batches; posting_id
        ``catalog``, fold -1); ``backgrounds``: encoded shop photos to cut backgrounds from."""
        mix = self
        photos = tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(list(mix.image_bytes), tf.string),
             "label": tf.constant(list(mix.labels), tf.int32)})
        photos = photos.repeat().shuffle(max(1, len(mix.image_bytes)), seed=seed).enumerate()
        background_side = math.ceil(image_size / math.sqrt(0.25))

        def variant(indexed, background_bytes):
            index, record = indexed
            element_seed = tf.random.experimental.stateless_fold_in(
                tf.stack([tf.cast(seed, tf.int64), index]), CATALOG_SEED_TAG)
            seeds = tf.random.experimental.stateless_split(element_seed, num=4)
            use_shelf = tf.random.stateless_uniform([], seed=seeds[0]) < (
                mix.shelf_background_probability)
            background = tf.cond(
                use_shelf,
                lambda: shelf_background(decode_image_uint8(background_bytes,
                                                            min_side=background_side),
                                         seeds[1], image_size),
                lambda: synthetic_background(seeds[2], image_size))
            studio = decode_image_uint8(record["image"], min_side=image_size)
            image = studio_to_shelf(studio, seeds[3], image_size=image_size, background=background)
            return {"posting_id": tf.constant("catalog"), "title": tf.constant(""),
                    "image_phash": tf.constant(""), "label": record["label"],
                    "fold": tf.constant(-1, tf.int32), "image": image}

        return tf.data.Dataset.zip(photos, backgrounds).map(variant,
                                                            num_parallel_calls=tf.data.AUTOTUNE)
