"""tf.data pipeline: image decoding, augmentation, make_dataset options, manifest sizes.

Every dataset here is written by the test itself with schema.serialize_posting (not the
converter), with tiny 32-48 px images, so the whole file runs in well under a minute.
"""

import collections
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_shopee.config import MIN_IMAGE_SIZE
from tf_shopee.data.pipeline import (
    augment_image,
    class_keep_probabilities,
    dataset_size,
    decode_image,
    decode_image_uint8,
    make_dataset,
    steps_per_epoch,
)
from tf_shopee.data.schema import SCHEMA_VERSION, Posting, serialize_posting, shard_name
from tf_shopee.errors import UserError
from tf_shopee.io_utils import sha256_file

IMAGE_SIZE = 32
NUM_FOLDS = 3

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def encode(pixels: np.ndarray, image_format: str = "JPEG", mode: str | None = None, **options):
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def smooth_pixels(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random colour field: JPEG-friendly, so decoded values stay close to the source."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def write_dataset(directory, postings, *, num_shards=2, has_images=True, manifest=True):
    """Write postings round-robin into shards plus a manifest following the shared contract."""
    os.makedirs(directory, exist_ok=True)
    labelled = any(posting.label >= 0 for posting in postings)
    split = "train" if labelled else "test"
    shards = []
    for index in range(num_shards):
        name = shard_name(split, index, num_shards)
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for posting in postings[index::num_shards]:
                writer.write(serialize_posting(posting))
        shards.append(
            {
                "file": name,
                "sha256": sha256_file(os.path.join(directory, name)),
                "examples": len(postings[index::num_shards]),
            }
        )
    if not manifest:
        return
    folds = collections.Counter(posting.fold for posting in postings if posting.fold >= 0)
    labels = collections.Counter(posting.label for posting in postings if posting.label >= 0)
    num_labels = max(labels) + 1 if labels else 0
    payload = {
        "schema_version": SCHEMA_VERSION,
        "created_by": "tf_shopee test",
        "split": split,
        "source_csv": os.path.join(str(directory), "train.csv"),
        "source_csv_sha256": "0" * 64,
        "images_dir": str(directory) if has_images else None,
        "has_images": has_images,
        "has_labels": labelled,
        "num_folds": NUM_FOLDS if labelled else 0,
        "fold_counts": {str(fold): folds[fold] for fold in sorted(folds)},
        "num_labels": num_labels,
        "label_counts": [labels[label] for label in range(num_labels)],
        "counts": {
            "rows": len(postings),
            "written": len(postings),
            "rejected": 0,
            "empty_titles": 0,
            "invalid_utf8_titles": 0,
            "reencoded_images": 0,
        },
        "shards": shards,
        "options": {},
    }
    with open(os.path.join(directory, "manifest.json"), "w") as stream:
        json.dump(payload, stream)


def image_postings(count=30):
    """`count` labelled postings with small non-square JPEGs; groups of 2, fold = group % 3."""
    postings = []
    for index in range(count):
        group = index // 2
        pixels = smooth_pixels(index, 40, 48)
        postings.append(
            Posting(
                posting_id=f"p{index:03d}",
                title=f"produk {group} warna {index % 5}",
                image=encode(pixels),
                height=40,
                width=48,
                image_phash=f"{index:016x}",
                label_group=1000 + group,
                label=group,
                fold=group % NUM_FOLDS,
            )
        )
    return postings


def long_tail_postings():
    """Text-only: one group of 40 postings and ten groups of 2 (labels 0 and 1..10)."""
    postings = []
    sizes = [40] + [2] * 10
    for label, size in enumerate(sizes):
        for member in range(size):
            postings.append(
                Posting(
                    posting_id=f"t{label:02d}_{member:02d}",
                    title=f"barang {label}",
                    label_group=label,
                    label=label,
                    fold=label % NUM_FOLDS,
                )
            )
    return postings


def collect(dataset, max_batches=None):
    """Concatenate the batches of a dataset into numpy arrays per key."""
    columns = collections.defaultdict(list)
    for index, batch in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        for key, value in batch.items():
            columns[key].append(value.numpy())
    return {key: np.concatenate(values) for key, values in columns.items()}


def hash_tokenizer(sequence_length=6, buckets=97):
    """A stand-in title preprocessor from plain tf ops: hashed words, bool mask (like keras-hub)."""

    def tokenize(titles):
        words = tf.strings.split(tf.strings.lower(titles))
        ids = tf.strings.to_hash_bucket_fast(words, buckets) + 1  # 0 stays the padding id
        token_ids = ids.to_tensor(default_value=0, shape=[None, sequence_length])
        return {"token_ids": token_ids, "padding_mask": token_ids > 0}

    return tokenize


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images_set")
    write_dataset(directory, image_postings(), num_shards=3)
    return str(directory)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("text_set")
    write_dataset(directory, long_tail_postings(), num_shards=2, has_images=False)
    return str(directory)


# ----------------------------------------------------------------------------------------------
# decode_image
# ----------------------------------------------------------------------------------------------


def test_decode_png_at_target_size_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image = decode_image(encode(pixels, "PNG"), IMAGE_SIZE)
    assert image.dtype == tf.float32 and image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(image.numpy(), pixels.astype(np.float32), atol=1e-3)


def test_decode_non_square_jpeg_resizes_to_square_in_range():
    pixels = smooth_pixels(1, 40, 64)
    image = decode_image(encode(pixels, quality=95), IMAGE_SIZE).numpy()
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert image.min() >= 0.0 and image.max() <= 255.0
    reference = np.asarray(Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    assert np.abs(image - reference).mean() < 4.0


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_decode_grayscale_gives_three_equal_channels(image_format):
    gray = smooth_pixels(2, IMAGE_SIZE, IMAGE_SIZE)[..., 0]
    image = decode_image(encode(gray, image_format, quality=95), IMAGE_SIZE).numpy()
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 0] - gray).mean() < 3.0


def test_decode_cmyk_jpeg_matches_pillow_rgb_conversion():
    pixels = smooth_pixels(3, IMAGE_SIZE, IMAGE_SIZE)
    cmyk_bytes = encode(pixels, "JPEG", mode="CMYK", quality=95)
    assert Image.open(io.BytesIO(cmyk_bytes)).mode == "CMYK"  # really a 4-channel JPEG
    image = decode_image(cmyk_bytes, IMAGE_SIZE).numpy()
    pillow_rgb = np.asarray(Image.open(io.BytesIO(cmyk_bytes)).convert("RGB"), np.float32)
    assert np.abs(image - pillow_rgb).mean() < 3.0
    assert np.abs(image - pixels).mean() < 6.0  # and close to the original colours


def test_decode_rgba_png_and_gif_first_frame():
    red = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros_like(red)
    blue[..., 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(red).save(
        buffer, "GIF", save_all=True, append_images=[Image.fromarray(blue)], duration=100
    )
    gif = decode_image(buffer.getvalue(), IMAGE_SIZE).numpy()
    np.testing.assert_allclose(gif.mean(axis=(0, 1)), [255, 0, 0], atol=2)

    rgba = np.dstack([red, np.full((IMAGE_SIZE, IMAGE_SIZE), 7, np.uint8)])
    png = decode_image(encode(rgba, "PNG"), IMAGE_SIZE).numpy()
    np.testing.assert_allclose(png, red, atol=1e-3)


def test_decode_empty_bytes_gives_black_image():
    image = decode_image(b"", IMAGE_SIZE)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert float(tf.reduce_max(tf.abs(image))) == 0.0


def test_decode_corrupt_bytes_raises():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(b"not an image at all", IMAGE_SIZE)


def test_large_jpeg_is_decoded_at_reduced_scale_close_to_full_decode():
    pixels = smooth_pixels(4, 256, 256)
    jpeg = encode(pixels, quality=95)
    # 256 px shorter side: ratio 8 leaves 32 >= 32; for 40 px only ratio 4 (64 px) is enough.
    assert decode_image_uint8(jpeg, min_side=32).shape == (32, 32, 3)
    assert decode_image_uint8(jpeg, min_side=40).shape == (64, 64, 3)
    assert decode_image_uint8(jpeg, min_side=300).shape == (256, 256, 3)
    assert decode_image_uint8(jpeg).shape == (256, 256, 3)
    assert decode_image_uint8(encode(pixels, "PNG"), min_side=32).shape == (256, 256, 3)
    fast = decode_image(jpeg, IMAGE_SIZE).numpy()
    full = tf.image.resize(
        tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32),
        [IMAGE_SIZE, IMAGE_SIZE],
        antialias=True,
    ).numpy()
    assert np.abs(fast - full).mean() < 3.0


def test_decode_inside_tf_function_over_a_batch_like_the_serving_graph():
    images = [encode(smooth_pixels(seed, 40, 48)) for seed in range(3)] + [b""]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(image_bytes):
        return tf.map_fn(
            lambda one: decode_image(one, IMAGE_SIZE),
            image_bytes,
            fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
        )

    batch = serve(tf.constant(images)).numpy()
    for index, image_bytes in enumerate(images):
        np.testing.assert_array_equal(batch[index], decode_image(image_bytes, IMAGE_SIZE).numpy())


def test_decode_is_identical_eagerly_and_inside_dataset_map():
    images = [encode(smooth_pixels(seed, 40 + seed, 48)) for seed in range(4)]
    images.append(encode(smooth_pixels(9, 30, 30), "PNG"))
    eager = [decode_image(image_bytes, IMAGE_SIZE).numpy() for image_bytes in images]
    mapped = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image_bytes: decode_image(image_bytes, IMAGE_SIZE),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    for eager_image, mapped_image in zip(eager, mapped):
        np.testing.assert_array_equal(eager_image, mapped_image.numpy())


def test_decode_rejects_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        decode_image(b"", 0)
    # The project's one lower bound (tf_shopee.config.MIN_IMAGE_SIZE), not just "positive".
    with pytest.raises(ValueError, match=f"image_size must be an int >= {MIN_IMAGE_SIZE}"):
        decode_image(b"", MIN_IMAGE_SIZE - 1)
    assert decode_image(b"", MIN_IMAGE_SIZE).shape == (MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, 3)


# ----------------------------------------------------------------------------------------------
# augment_image
# ----------------------------------------------------------------------------------------------


def test_augment_is_identical_eagerly_and_inside_dataset_map():
    source = decode_image_uint8(encode(smooth_pixels(5, 40, 56)))
    seeds = tf.constant([[7, index] for index in range(5)], tf.int64)
    eager = [augment_image(source, seed, image_size=IMAGE_SIZE).numpy() for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: augment_image(source, seed, image_size=IMAGE_SIZE),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    for eager_image, mapped_image in zip(eager, mapped):
        np.testing.assert_allclose(eager_image, mapped_image.numpy(), atol=1e-4)


def test_augment_keeps_shape_dtype_range_and_depends_only_on_seed():
    source = decode_image_uint8(encode(smooth_pixels(6, 50, 70)))
    outputs = []
    for index in range(8):
        image = augment_image(source, tf.constant([1, index]), image_size=IMAGE_SIZE)
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == tf.float32
        assert float(tf.reduce_min(image)) >= 0.0 and float(tf.reduce_max(image)) <= 255.0
        outputs.append(image.numpy())
    again = augment_image(source, tf.constant([1, 3]), image_size=IMAGE_SIZE).numpy()
    np.testing.assert_array_equal(outputs[3], again)
    # Different seeds give different images (crop, flip and colour all vary).
    for first in range(len(outputs)):
        for second in range(first + 1, len(outputs)):
            assert np.abs(outputs[first] - outputs[second]).mean() > 0.5


def test_augment_flips_really_flip():
    pixels = np.random.default_rng(7).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    source = tf.constant(pixels)
    seen = collections.Counter()
    for index in range(16):
        image = augment_image(
            source,
            tf.constant([3, index]),
            image_size=IMAGE_SIZE,
            crop_area_range=None,
            brightness=None,
            contrast=None,
            saturation=None,
            hue=None,
        ).numpy()
        if np.allclose(image, pixels, atol=1e-3):
            seen["same"] += 1
        elif np.allclose(image, pixels[:, ::-1], atol=1e-3):
            seen["mirrored"] += 1
        else:
            seen["other"] += 1
    assert seen["other"] == 0
    assert seen["same"] >= 2 and seen["mirrored"] >= 2


def test_augment_crop_changes_content_scale():
    # A centred square on a black background: crops keep >= 60 % of the area, so the square
    # grows or shifts but never vanishes.
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 16:48] = 200
    areas = []
    for index in range(12):
        image = augment_image(
            tf.constant(pixels),
            tf.constant([4, index]),
            image_size=IMAGE_SIZE,
            flip=False,
            brightness=None,
            contrast=None,
            saturation=None,
            hue=None,
        ).numpy()
        areas.append(float((image[..., 0] > 100).mean()))
    assert min(areas) > 0.2
    assert max(areas) > 0.3  # at least one crop zoomed in (the uncropped share is 0.25)
    assert len({round(area, 3) for area in areas}) > 3


# ----------------------------------------------------------------------------------------------
# make_dataset
# ----------------------------------------------------------------------------------------------


def test_evaluation_dataset_reads_every_posting_once_with_contract_dtypes(image_dir):
    dataset = make_dataset(image_dir, training=False, global_batch_size=8, image_size=IMAGE_SIZE)
    spec = dataset.element_spec
    assert set(spec) == {"posting_id", "title", "image_phash", "label", "fold", "image"}
    assert spec["image"].dtype == tf.float32 and spec["image"].shape[1:] == (32, 32, 3)
    assert spec["label"].dtype == tf.int32 and spec["fold"].dtype == tf.int32
    assert spec["posting_id"].dtype == tf.string
    batches = list(dataset)
    assert [len(batch["posting_id"]) for batch in batches] == [8, 8, 8, 6]  # last batch kept
    columns = collect(dataset)
    postings = {posting.posting_id: posting for posting in image_postings()}
    assert sorted(columns["posting_id"].astype(str)) == sorted(postings)
    for index, posting_id in enumerate(columns["posting_id"].astype(str)):
        posting = postings[posting_id]
        assert columns["label"][index] == posting.label
        assert columns["fold"][index] == posting.fold
        assert columns["title"][index].decode() == posting.title
        assert columns["image_phash"][index].decode() == posting.image_phash
        expected = decode_image(posting.image, IMAGE_SIZE).numpy()
        np.testing.assert_array_equal(columns["image"][index], expected)
    # Evaluation order is reproducible by default.
    np.testing.assert_array_equal(collect(dataset)["posting_id"], columns["posting_id"])


def test_glob_file_and_list_forms_read_the_same_postings(image_dir):
    def ids(pattern):
        dataset = make_dataset(
            pattern, training=False, global_batch_size=16, image_size=None, with_image=False
        )
        return sorted(collect(dataset)["posting_id"].astype(str))

    every_id = ids(image_dir)
    shard_files = sorted(
        os.path.join(image_dir, name) for name in os.listdir(image_dir) if name.endswith(".tfrec")
    )
    assert ids(os.path.join(image_dir, "train-*.tfrec")) == every_id
    assert ids(shard_files) == every_id
    assert len(ids(shard_files[0])) == 10


def test_fold_selection_and_manifest_sizes(image_dir):
    postings = image_postings()

    def ids(**selection):
        dataset = make_dataset(
            image_dir,
            training=False,
            global_batch_size=4,
            image_size=None,
            with_image=False,
            **selection,
        )
        columns = collect(dataset)
        return set(columns["posting_id"].astype(str)), set(columns["fold"].tolist())

    for fold in range(NUM_FOLDS):
        expected = {posting.posting_id for posting in postings if posting.fold == fold}
        validation, validation_folds = ids(folds=[fold])
        training, training_folds = ids(exclude_folds=[fold])
        assert validation == expected and validation_folds == {fold}
        assert training == {posting.posting_id for posting in postings} - expected
        assert fold not in training_folds
        assert dataset_size(image_dir, folds=[fold]) == len(expected)
        assert dataset_size(image_dir, exclude_folds=fold) == len(postings) - len(expected)
    assert dataset_size(image_dir) == len(postings)
    assert dataset_size(os.path.join(image_dir, "manifest.json"), folds=[0, 1]) == 20
    assert steps_per_epoch(image_dir, 4, exclude_folds=[0]) == 20 // 4
    assert steps_per_epoch(image_dir, 3, folds=[1], drop_remainder=False) == 4
    with pytest.raises(UserError, match="fewer than one batch"):
        steps_per_epoch(image_dir, 64)
    with pytest.raises(UserError, match="fold 3 out of range"):
        make_dataset(image_dir, training=False, global_batch_size=4, image_size=IMAGE_SIZE,
                     folds=[3])
    with pytest.raises(UserError, match="no postings left"):
        make_dataset(
            image_dir,
            training=False,
            global_batch_size=4,
            image_size=IMAGE_SIZE,
            folds=[1],
            exclude_folds=[1],
        )


def test_training_batches_have_static_shape_repeat_and_are_augmented(image_dir):
    dataset = make_dataset(
        image_dir,
        training=True,
        global_batch_size=8,
        image_size=IMAGE_SIZE,
        exclude_folds=[0],
        seed=1,
        shuffle_buffer=64,
    )
    spec = dataset.element_spec
    assert spec["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert spec["label"].shape == (8,) and spec["posting_id"].shape == (8,)
    columns = collect(dataset, max_batches=6)  # 48 > the 20 postings of folds 1 and 2
    assert len(columns["posting_id"]) == 48
    assert set(columns["fold"].tolist()) <= {1, 2}
    counts = collections.Counter(columns["posting_id"].astype(str).tolist())
    assert len(counts) == 20 and max(counts.values()) >= 2  # repeated past one epoch
    # Augmentation: a training image differs from its plain evaluation decode.
    postings = {posting.posting_id: posting for posting in image_postings()}
    differences = [
        np.abs(image - decode_image(postings[posting_id].image, IMAGE_SIZE).numpy()).mean()
        for posting_id, image in zip(columns["posting_id"].astype(str), columns["image"])
    ]
    assert np.mean(differences) > 2.0
    assert columns["image"].min() >= 0.0 and columns["image"].max() <= 255.0


def test_training_without_augment_gives_plain_decodes(image_dir):
    dataset = make_dataset(
        image_dir,
        training=True,
        global_batch_size=4,
        image_size=IMAGE_SIZE,
        augment=False,
        repeat=False,
        seed=2,
    )
    columns = collect(dataset)
    assert len(columns["posting_id"]) == 28  # 30 postings, last partial batch dropped
    postings = {posting.posting_id: posting for posting in image_postings()}
    for posting_id, image in zip(columns["posting_id"].astype(str), columns["image"]):
        np.testing.assert_array_equal(image, decode_image(postings[posting_id].image, 32).numpy())


def test_same_seed_gives_identical_batches_and_other_seed_differs(image_dir):
    def first_batches(seed):
        dataset = make_dataset(
            image_dir,
            training=True,
            global_batch_size=4,
            image_size=IMAGE_SIZE,
            deterministic=True,
            seed=seed,
            shuffle_buffer=32,
        )
        return collect(dataset, max_batches=5)

    first, second, other = first_batches(11), first_batches(11), first_batches(12)
    np.testing.assert_array_equal(first["posting_id"], second["posting_id"])
    np.testing.assert_array_equal(first["image"], second["image"])
    assert not np.array_equal(first["posting_id"], other["posting_id"])
    assert not np.array_equal(first["image"], other["image"])


def test_class_balanced_sampling_flattens_the_label_distribution(text_dir):
    def label_counts(class_balanced):
        dataset = make_dataset(
            text_dir,
            training=True,
            global_batch_size=50,
            image_size=None,
            with_image=False,
            class_balanced=class_balanced,
            deterministic=True,
            seed=5,
            shuffle_buffer=60,
        )
        labels = collect(dataset, max_batches=24)["label"]  # 1,200 draws
        return np.bincount(labels, minlength=11)

    natural, balanced = label_counts(False), label_counts(True)
    # Natural: the group of 40 is 2/3 of the stream; flat: every group about 1/11.
    assert natural[0] / natural.sum() > 0.6
    assert balanced[0] / balanced.sum() < 0.2
    assert balanced.min() > 0
    assert balanced.std() / balanced.mean() < 0.3 < natural.std() / natural.mean()


def test_class_keep_probabilities_scheme():
    probabilities = class_keep_probabilities([2, 4, 40, 0]).numpy()
    np.testing.assert_allclose(probabilities, [1.0, 0.5, 0.05, 1.0])
    np.testing.assert_allclose(class_keep_probabilities([2, 8], power=0.5).numpy(), [1.0, 0.5])
    with pytest.raises(UserError):
        class_keep_probabilities([])


def test_class_balanced_needs_label_counts(tmp_path):
    unlabelled = [Posting(posting_id=f"u{index}", title="x") for index in range(4)]
    write_dataset(tmp_path, unlabelled, num_shards=1, has_images=False)
    with pytest.raises(UserError, match="label_counts"):
        make_dataset(
            str(tmp_path),
            training=True,
            global_batch_size=2,
            image_size=None,
            with_image=False,
            class_balanced=True,
        )
    with pytest.raises(UserError, match="no folds"):
        make_dataset(
            str(tmp_path),
            training=False,
            global_batch_size=2,
            image_size=None,
            with_image=False,
            folds=[0],
        )


def test_text_preprocessor_outputs_are_merged_as_int32(text_dir):
    dataset = make_dataset(
        text_dir,
        training=True,
        global_batch_size=4,
        image_size=None,
        with_image=False,
        text_preprocessor=hash_tokenizer(sequence_length=6),
        seed=3,
    )
    spec = dataset.element_spec
    assert "image" not in spec
    assert spec["token_ids"].dtype == tf.int32 and spec["token_ids"].shape == (4, 6)
    assert spec["padding_mask"].dtype == tf.int32 and spec["padding_mask"].shape == (4, 6)
    batch = next(iter(dataset))
    expected = hash_tokenizer(sequence_length=6)(batch["title"])
    np.testing.assert_array_equal(batch["token_ids"].numpy(), expected["token_ids"].numpy())
    # "barang N": two words, so exactly two real tokens per title.
    np.testing.assert_array_equal(batch["padding_mask"].numpy().sum(axis=1), [2, 2, 2, 2])


def test_text_preprocessor_key_clash_is_refused(text_dir):
    with pytest.raises(ValueError, match="clashes"):
        make_dataset(
            text_dir,
            training=False,
            global_batch_size=4,
            image_size=None,
            with_image=False,
            text_preprocessor=lambda titles: {"label": tf.zeros_like(titles, tf.int32)},
        )


def test_text_only_dataset_with_images_requested_is_a_user_error(text_dir, tmp_path):
    with pytest.raises(UserError, match="text-only"):
        make_dataset(text_dir, training=True, global_batch_size=4, image_size=IMAGE_SIZE)
    # Without a manifest the first record is inspected instead.
    write_dataset(tmp_path, long_tail_postings()[:6], num_shards=1, manifest=False)
    with pytest.raises(UserError, match="text-only"):
        make_dataset(
            str(tmp_path / "train-*.tfrec"), training=False, global_batch_size=2,
            image_size=IMAGE_SIZE,
        )


def test_one_empty_image_in_an_image_dataset_fails_naming_the_posting(tmp_path):
    postings = image_postings(4)
    postings[3] = Posting(posting_id="no_photo_7", title="t", label=1, fold=1)
    write_dataset(tmp_path, postings, num_shards=1)
    dataset = make_dataset(str(tmp_path), training=False, global_batch_size=4,
                           image_size=IMAGE_SIZE)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no_photo_7"):
        list(dataset)


def test_bad_file_patterns_are_user_errors(tmp_path):
    arguments = dict(training=False, global_batch_size=2, image_size=IMAGE_SIZE)
    with pytest.raises(UserError, match="empty file pattern"):
        make_dataset("", **arguments)
    with pytest.raises(UserError, match="empty list"):
        make_dataset([], **arguments)
    with pytest.raises(UserError, match="no TFRecord files match"):
        make_dataset(str(tmp_path / "*.tfrec"), **arguments)
    with pytest.raises(UserError, match="not found"):
        make_dataset(str(tmp_path / "missing.tfrec"), **arguments)
    # A folder without manifest.json is an unfinished conversion.
    with pytest.raises(UserError, match="manifest.json"):
        make_dataset(str(tmp_path), **arguments)
    with pytest.raises(UserError, match="image_size"):
        make_dataset(str(tmp_path), training=False, global_batch_size=2, image_size=None)
    with pytest.raises(UserError, match=f"image_size must be an int >= {MIN_IMAGE_SIZE}"):
        make_dataset(str(tmp_path), training=False, global_batch_size=2,
                     image_size=MIN_IMAGE_SIZE - 1)
    with pytest.raises(UserError, match="batch size"):
        make_dataset(str(tmp_path), training=False, global_batch_size=0, image_size=IMAGE_SIZE)


def test_input_context_gives_each_pipeline_its_own_files_and_per_replica_batches(image_dir):
    seen = []
    for pipeline_id in range(3):
        context = tf.distribute.InputContext(
            num_input_pipelines=3, input_pipeline_id=pipeline_id, num_replicas_in_sync=3
        )
        dataset = make_dataset(
            image_dir,
            training=False,
            global_batch_size=6,
            image_size=None,
            with_image=False,
            input_context=context,
        )
        columns = collect(dataset)
        assert max(len(batch["posting_id"]) for batch in dataset) == 2  # 6 / 3 replicas
        seen.append(set(columns["posting_id"].astype(str)))
    assert all(len(ids) == 10 for ids in seen)
    assert set.union(*seen) == {posting.posting_id for posting in image_postings()}


def test_cache_gives_the_same_postings(image_dir):
    dataset = make_dataset(
        image_dir,
        training=False,
        global_batch_size=8,
        image_size=None,
        with_image=False,
        cache=True,
    )
    first, second = collect(dataset), collect(dataset)
    np.testing.assert_array_equal(first["posting_id"], second["posting_id"])
    assert len(first["posting_id"]) == 30


# ../shared beside the repository root (DESIGN: never an absolute path in committed code).
REAL_IMAGES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "..", "shared", "data", "shopee", "train_images_sample",
)


@pytest.mark.real_data
@pytest.mark.skipif(not os.path.isdir(REAL_IMAGES), reason="real Shopee sample photos absent")
def test_real_shopee_photos_decode_close_to_a_full_resolution_decode():
    names = sorted(name for name in os.listdir(REAL_IMAGES) if name.endswith(".jpg"))
    assert names
    differences = []
    for name in names:
        with open(os.path.join(REAL_IMAGES, name), "rb") as stream:
            image_bytes = stream.read()
        image = decode_image(image_bytes, 128).numpy()
        assert image.shape == (128, 128, 3)
        full_resolution = tf.cast(tf.io.decode_jpeg(image_bytes, channels=3), tf.float32)
        reference = tf.image.resize(full_resolution, [128, 128], antialias=True).numpy()
        differences.append(np.abs(image - reference).mean())
    # The reduced-scale JPEG decode changes pixels only a little (measured: mean 1.6, worst 4.3
    # on a 449 px photo full of fine print). Pillow's Lanczos differs from either by up to 4.9.
    assert max(differences) < 5.0
    assert np.mean(differences) < 2.5
