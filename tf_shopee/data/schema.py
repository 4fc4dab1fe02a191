"""The one TFRecord schema of tf_shopee: how a posting is written and how it is parsed.

Writers (:func:`serialize_posting`) and the reader (:func:`feature_description`,
:func:`parse_postings`) live together so they cannot drift apart; ``tests/data/test_schema.py``
round-trips them. Bump :data:`SCHEMA_VERSION` whenever a feature is added, removed or changes
meaning: the manifest records it and readers refuse an unknown version.

Feature        | dtype  | meaning
-------------- | ------ | ---------------------------------------------------------------
posting_id     | bytes  | the CSV's posting_id
image          | bytes  | JPEG bytes (empty for a text-only dataset)
height, width  | int64  | size of the stored JPEG (0 when there is no image)
title          | bytes  | UTF-8 title ("" when the CSV had none)
image_phash    | bytes  | 16 hex digits as in Kaggle's CSV ("" when absent)
label_group    | int64  | the CSV's label_group, -1 for an unlabelled (test) set
label          | int64  | dense index 0..num_labels-1 from label_map.json, -1 when unlabelled
fold           | int64  | GroupKFold fold over label_group, -1 when unlabelled
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1
MISSING_INTEGER = -1
SHARD_SUFFIX = ".tfrec"


@dataclass(frozen=True)
class Posting:
    """One posting as it is stored in a TFRecord."""

    posting_id: str
    title: str
    image: bytes = b""
    height: int = 0
    width: int = 0
    image_phash: str = ""
    label_group: int = MISSING_INTEGER
    label: int = MISSING_INTEGER
    fold: int = MISSING_INTEGER


def serialize_posting(posting: Posting) -> bytes:
    """Encode a :class:`Posting` as a serialized ``tf.train.Example``."""
    import tensorflow as tf

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    features = {
        "posting_id": bytes_feature(posting.posting_id.encode("utf-8")),
        "image": bytes_feature(posting.image),
        "height": int_feature(posting.height),
        "width": int_feature(posting.width),
        "title": bytes_feature(posting.title.encode("utf-8")),
        "image_phash": bytes_feature(posting.image_phash.encode("ascii")),
        "label_group": int_feature(posting.label_group),
        "label": int_feature(posting.label),
        "fold": int_feature(posting.fold),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # deterministic=True: identical postings give identical bytes, so a resumed conversion can
    # be checked shard by shard against a clean one.
    return example.SerializeToString(deterministic=True)


def feature_description() -> dict:
    """The ``tf.io.parse_example`` spec matching :func:`serialize_posting`."""
    import tensorflow as tf

    return {
        "posting_id": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "title": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image_phash": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label_group": tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_INTEGER),
        "label": tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_INTEGER),
        "fold": tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_INTEGER),
    }


def parse_postings(serialized):
    """Parse a scalar or a batch (1-D) of serialized examples into a dict of tensors.

    Works eagerly and inside ``tf.data`` / ``tf.function``.
    """
    import tensorflow as tf

    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, feature_description())
    return tf.io.parse_example(serialized, feature_description())


def shard_name(split: str, index: int, count: int) -> str:
    """``{split}-{index:05d}-of-{count:05d}.tfrec``, the shard file name."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"
