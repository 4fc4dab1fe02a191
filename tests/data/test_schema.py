"""TFRecord schema: serialize_posting → parse_postings round trip (scalar and batch)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_shopee.data.schema import (
    MISSING_INTEGER,
    Posting,
    feature_description,
    parse_postings,
    serialize_posting,
    shard_name,
)


def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


POSTINGS = [
    Posting(
        posting_id="train_129225211",
        title="Paper Bag Victoria Secret",
        image=jpeg_bytes(0),
        height=12,
        width=16,
        image_phash="94974f937d4c2433",
        label_group=249114794,
        label=7,
        fold=2,
    ),
    # Unicode title (Indonesian + emoji + CJK), empty image (text-only set), unlabelled.
    Posting(posting_id="test_2255846744", title="Kaos Polos 👕 ukuran M–XL 日本", image=b""),
    # Title with an embedded NUL and surrounding whitespace: bytes must come back untouched.
    Posting(
        posting_id="train_3",
        title="  a\x00b  ",
        image=jpeg_bytes(1),
        label_group=0,
        label=0,
        fold=0,
    ),
]


def expected_fields(posting: Posting) -> dict:
    return {
        "posting_id": posting.posting_id.encode("utf-8"),
        "title": posting.title.encode("utf-8"),
        "image": posting.image,
        "height": posting.height,
        "width": posting.width,
        "image_phash": posting.image_phash.encode("ascii"),
        "label_group": posting.label_group,
        "label": posting.label,
        "fold": posting.fold,
    }


@pytest.mark.parametrize("posting", POSTINGS, ids=lambda posting: posting.posting_id)
def test_scalar_round_trip_keeps_every_field(posting):
    parsed = parse_postings(serialize_posting(posting))
    assert set(parsed) == set(feature_description())
    for key, value in expected_fields(posting).items():
        assert parsed[key].shape == ()
        assert parsed[key].numpy() == value, key
    assert parsed["title"].numpy().decode("utf-8") == posting.title


def test_batch_round_trip_keeps_order_and_fields():
    parsed = parse_postings([serialize_posting(posting) for posting in POSTINGS])
    for key in feature_description():
        assert parsed[key].shape == (len(POSTINGS),), key
    for index, posting in enumerate(POSTINGS):
        for key, value in expected_fields(posting).items():
            assert parsed[key][index].numpy() == value, (index, key)


def test_int64_fields_have_int64_dtype_and_strings_string():
    parsed = parse_postings(serialize_posting(POSTINGS[0]))
    for key in ("height", "width", "label_group", "label", "fold"):
        assert parsed[key].dtype == tf.int64
    for key in ("posting_id", "title", "image", "image_phash"):
        assert parsed[key].dtype == tf.string


def test_parse_inside_dataset_map_matches_eager():
    serialized = [serialize_posting(posting) for posting in POSTINGS]
    eager = [parse_postings(record) for record in serialized]
    mapped = list(tf.data.Dataset.from_tensor_slices(serialized).map(parse_postings))
    for eager_record, mapped_record in zip(eager, mapped):
        for key in feature_description():
            assert eager_record[key].numpy() == mapped_record[key].numpy()


def test_missing_optional_features_take_documented_defaults():
    # An example carrying only posting_id (as a minimal foreign writer might produce).
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"p1"]))
    example = tf.train.Example(features=tf.train.Features(feature={"posting_id": feature}))
    parsed = parse_postings(example.SerializeToString())
    assert parsed["posting_id"].numpy() == b"p1"
    assert parsed["image"].numpy() == b""
    assert parsed["title"].numpy() == b""
    assert int(parsed["label"]) == MISSING_INTEGER
    assert int(parsed["fold"]) == MISSING_INTEGER
    assert int(parsed["label_group"]) == MISSING_INTEGER


def test_serialization_is_deterministic():
    assert serialize_posting(POSTINGS[0]) == serialize_posting(POSTINGS[0])


def test_shard_name_format():
    assert shard_name("train", 3, 12) == "train-00003-of-00012.tfrec"
