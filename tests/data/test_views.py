"""Views of a photo (test-time and catalogue-side augmentation) and the studio → shelf
augmentation: shapes, determinism, the first view equal to the serving decode, eager and in
tf.data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_shopee  # noqa: F401
from tf_shopee.data.pipeline import decode_image
from tf_shopee.data.studio import background_mask, studio_to_shelf, synthetic_background
from tf_shopee.data.views import (
    ViewSpec,
    augment_spec,
    make_views,
    mean_of_views,
    parse_tta,
)
from tf_shopee.errors import UserError


def _studio_photo(side=96) -> np.ndarray:
    """A red product with a white label inside it, on a white studio background."""
    pixels = np.full((side, side, 3), 255, np.uint8)
    pixels[20:76, 28:68] = (200, 30, 30)
    pixels[40:56, 40:56] = 255  # white inside the product: product, not background
    return pixels


def _jpeg(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "PNG")
    return stream.getvalue()


def test_tta_options_parse_to_view_counts():
    assert parse_tta("").is_plain and parse_tta("none").is_plain
    assert parse_tta("flip").count == 2
    assert parse_tta("crop").count == 6
    assert parse_tta("flip,crop").count == 12
    assert augment_spec(4).count == 4 and not augment_spec(4).is_plain
    assert parse_tta("crop, flip").describe() == "flip,crop"
    with pytest.raises(UserError, match="--tta: unknown view"):
        parse_tta("flip,rotate")
    with pytest.raises(UserError, match="--catalog-augment"):
        augment_spec(0)


def test_views_start_with_the_serving_decode_and_flip_mirrors_it():
    rng = np.random.default_rng(0)
    photo = _jpeg(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    views = make_views([photo, b""], ViewSpec(flip=True, crop=True), 32)
    assert views.shape == (2, 12, 32, 32, 3) and views.dtype == np.float32
    served = decode_image(tf.constant(photo), 32).numpy()
    np.testing.assert_allclose(views[0, 0], served, atol=1e-4)
    np.testing.assert_allclose(views[0, 6], served[:, ::-1], atol=1e-4)  # mirror of view 0
    assert not np.allclose(views[0, 1], views[0, 2])  # centre and corner crops differ
    assert views[1].max() == 0  # empty bytes: black views, no error
    assert views.min() >= 0 and views.max() <= 255


def test_catalogue_views_are_deterministic_and_differ_from_each_other():
    photo = _jpeg(_studio_photo())
    first = make_views([photo], augment_spec(4), 48)
    second = make_views([photo], augment_spec(4), 48)
    np.testing.assert_array_equal(first, second)  # an index built twice stores the same
    assert all(not np.allclose(first[0, 0], first[0, index]) for index in (1, 2, 3))


def test_mean_of_views_is_unit_length():
    embeddings = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)
    mean = mean_of_views(embeddings)
    assert mean.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-6)


def test_background_mask_floods_from_the_border_only():
    mask = background_mask(tf.constant(_studio_photo())).numpy()[..., 0]
    assert mask.shape == (96, 96)
    assert mask[2, 2] > 0.9 and mask[90, 50] > 0.9  # studio white around the product
    assert mask[30, 35] < 0.1  # the red product
    assert mask[48, 48] < 0.1  # white label enclosed by the product stays product


def test_studio_to_shelf_is_deterministic_in_range_and_works_in_tf_data():
    photo = tf.constant(_studio_photo())
    seed = tf.constant([3, 4], tf.int64)
    first = studio_to_shelf(photo, seed, image_size=40).numpy()
    again = studio_to_shelf(photo, seed, image_size=40).numpy()
    other = studio_to_shelf(photo, tf.constant([3, 5], tf.int64), image_size=40).numpy()
    assert first.shape == (40, 40, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.min() >= 0 and first.max() <= 255
    # The studio white is gone: a synthetic background is behind the product.
    background = synthetic_background(tf.constant([1, 1], tf.int64), 40).numpy()
    assert background.shape == (40, 40, 3) and background.std() > 5
    with_background = studio_to_shelf(photo, seed, image_size=40,
                                      background=tf.zeros([40, 40, 3]), jitter=False).numpy()
    assert with_background[0, 0].max() < 50 or with_background[-1, -1].max() < 50
    dataset = tf.data.Dataset.from_tensors(photo).map(
        lambda image: studio_to_shelf(image, seed, image_size=40))
    np.testing.assert_allclose(next(iter(dataset)).numpy(), first, atol=1e-3)
