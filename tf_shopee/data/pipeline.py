"""The tf.data input pipeline: TFRecord shards → batches of decoded, augmented postings.

One function, :func:`make_dataset`, builds every dataset the project reads (training, validation,
prediction) in one fixed order, big_vision / flax style::

    files (shuffled when training) → interleave(TFRecordDataset) → parse → fold filter → (cache)
    → shuffle → repeat → (class-balanced rejection) → map(decode [+ augment])
    → batch (drop_remainder when training) → text preprocessor on the batched titles → prefetch

Image preprocessing is two pure-TensorFlow functions, :func:`decode_image` and
:func:`augment_image`. They run inside ``tf.data.Dataset.map`` and, for :func:`decode_image`, inside
the exported SavedModel's serving graph, so they use no ``py_function``. Random augmentation uses
stateless ops seeded from ``(seed, element index)``: the same seed gives the same batches, and an
element's augmentation does not depend on which worker thread happened to process it.

Each batch is a dict::

    posting_id  string  [B]
    title       string  [B]
    image_phash string  [B]
    label       int32   [B]   (-1 for an unlabelled set)
    fold        int32   [B]   (-1 for an unlabelled set)
    image       float32 [B, S, S, 3] in 0..255   (only when ``with_image``)
    ...         int32   [B, L]  whatever ``text_preprocessor(titles)`` returns, e.g. token_ids,
                                padding_mask (only when a preprocessor is given)
"""

from __future__ import annotations

import glob as glob_module
import math
import numbers
import os
import random
from typing import Callable, Iterable, Mapping, Sequence

import tensorflow as tf

from tf_shopee.config import MIN_IMAGE_SIZE
from tf_shopee.data.schema import SHARD_SUFFIX, parse_postings
from tf_shopee.errors import UserError

MANIFEST_NAME = "manifest.json"

# The keys every batch carries; a text preprocessor may not return one of these.
BASE_KEYS = ("posting_id", "title", "image_phash", "label", "fold")

# Augmentation defaults. Shopee duplicates differ by crop/zoom, lighting and mirror-image product
# shots, so those are the variations the model is taught to ignore. The crop keeps at least 60 %
# of the area: a smaller crop often cuts away the product itself (listings are tightly framed).
DEFAULT_CROP_AREA_RANGE = (0.6, 1.0)
DEFAULT_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_BRIGHTNESS = 0.2  # max added delta, on the 0..1 scale
DEFAULT_CONTRAST = (0.8, 1.2)
DEFAULT_SATURATION = (0.8, 1.2)
DEFAULT_HUE = 0.05  # max hue rotation, as a fraction of the colour circle

# libjpeg can decode a JPEG directly at 1/2, 1/4 or 1/8 of its size by dropping DCT coefficients.
# Measured here on a 1024 px photo resized to 256 px: 14.5 ms full decode vs 7.1 ms at 1/4, mean
# absolute difference 1.1 / 255. Decoding is the pipeline's main CPU cost, so it is worth it.
JPEG_DECODE_RATIOS = (8, 4, 2, 1)

# Tags mixed into the per-element seed so each random decision gets its own stream.
_SEED_TAG_AUGMENT = 1
_SEED_TAG_BALANCE = 2
# 3: the catalogue photos' variants (tf_shopee.data.studio.CATALOG_SEED_TAG)
_SEED_TAG_MIX = 4


# ----------------------------------------------------------------------------------------------
# Image preprocessing
# ----------------------------------------------------------------------------------------------


def _decode_jpeg_downscaled(image_bytes: tf.Tensor, min_side: int) -> tf.Tensor:
    """Decode a JPEG at the smallest 1/ratio scale whose shorter side is still >= ``min_side``."""
    shape = tf.image.extract_jpeg_shape(image_bytes)
    shorter_side = tf.minimum(shape[0], shape[1])
    # Ratios are largest first and "fits" is monotone (False..False, True..True), so the first
    # ratio that still leaves enough pixels sits at index = number of ratios that do not fit;
    # when none fits (a small image) the last ratio, 1, is used.
    fits = tf.stack([shorter_side >= ratio * min_side for ratio in JPEG_DECODE_RATIOS])
    not_fitting = tf.reduce_sum(tf.cast(tf.logical_not(fits), tf.int32))
    branch_index = tf.minimum(not_fitting, len(JPEG_DECODE_RATIOS) - 1)
    branches = [
        (lambda ratio=ratio: tf.io.decode_jpeg(image_bytes, channels=3, ratio=ratio))
        for ratio in JPEG_DECODE_RATIOS
    ]
    return tf.switch_case(branch_index, branches)


def decode_image_uint8(image_bytes: tf.Tensor, min_side: int | None = None) -> tf.Tensor:
    """Decode encoded image bytes to uint8 ``[H, W, 3]`` at (about) the original size.

    Handles JPEG (RGB, grayscale and CMYK/YCCK: libjpeg converts CMYK to RGB, checked against
    Pillow's conversion in the tests), PNG (8/16-bit, grayscale, palette, RGBA: alpha dropped),
    GIF (first frame), BMP and WebP. Grayscale images are repeated to 3 channels.

    Args:
        image_bytes: scalar ``tf.string`` with the encoded image; must not be empty.
        min_side: when given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its
            shorter side stays at least ``min_side`` pixels (a large speed-up for big photos).

    Corrupt bytes raise ``tf.errors.InvalidArgumentError`` when the op runs.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)

    def generic_decode():
        # expand_animations=False: a GIF gives its first frame as [H, W, C], like a still image.
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    if min_side is None:
        image = generic_decode()
    else:
        image = tf.cond(
            tf.io.is_jpeg(image_bytes),
            lambda: _decode_jpeg_downscaled(image_bytes, int(min_side)),
            generic_decode,
        )
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize an ``[H, W, 3]`` image (any dtype) to float32 ``[S, S, 3]``, values kept in range.

    Plain resize to a square, not keep-aspect-and-pad: Shopee photos are almost all square
    already (all 30 real sample photos in ../shared are, 300 to 4500 px; one is 4500x4501), so
    padding would only waste pixels on the few that are not, and the training crop augmentation
    varies the aspect ratio by up to 4:3 anyway, so the model is used to mild stretching.
    Antialiasing matters because typical inputs (640-1024 px) are shrunk 2-4x; without it fine
    print and textures alias.
    """
    resized = tf.image.resize(
        tf.cast(image, tf.float32), [image_size, image_size], method="bilinear", antialias=True
    )
    # Bilinear with antialias can overshoot by a hair; keep the documented 0..255 range.
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode encoded image bytes to float32 ``[image_size, image_size, 3]`` with values 0..255.

    Formats: see :func:`decode_image_uint8`. Large JPEGs are decoded at a reduced DCT scale that
    keeps the shorter side >= ``image_size`` and then resized with antialiasing (see
    :func:`resize_image` for why plain square resize).

    Empty bytes give an all-zero (black) image instead of an error: the serving graph may be fed
    a posting without a photo and must still return an embedding for the rest of the batch.
    :func:`make_dataset` refuses empty images in a dataset read ``with_image=True``, so training
    never sees these silently.

    Pure TensorFlow ops: works eagerly, in ``tf.data`` and inside a SavedModel / ``tf.function``.
    """
    if not isinstance(image_size, numbers.Integral) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    image_size = int(image_size)
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)

    def decode_and_resize():
        return resize_image(decode_image_uint8(image_bytes, min_side=image_size), image_size)

    def black_image():
        return tf.zeros([image_size, image_size, 3], tf.float32)

    image = tf.cond(tf.strings.length(image_bytes) > 0, decode_and_resize, black_image)
    image.set_shape([image_size, image_size, 3])
    return image


def augment_image(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    crop_area_range: tuple[float, float] | None = DEFAULT_CROP_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = DEFAULT_ASPECT_RATIO_RANGE,
    flip: bool = True,
    brightness: float | None = DEFAULT_BRIGHTNESS,
    contrast: tuple[float, float] | None = DEFAULT_CONTRAST,
    saturation: tuple[float, float] | None = DEFAULT_SATURATION,
    hue: float | None = DEFAULT_HUE,
) -> tf.Tensor:
    """Randomly crop-and-resize, flip and colour-jitter one image; deterministic for a seed.

    Args:
        image: ``[H, W, 3]`` image with values 0..255 (uint8 or float), any size: crop from the
            full-resolution decode (:func:`decode_image_uint8`) to keep detail.
        seed: int32/int64 tensor of shape ``[2]``; the same seed gives the same result.
        image_size: output side length S.
        crop_area_range: fraction of the image area the random crop keeps; ``None`` disables the
            crop (the whole image is resized).
        aspect_ratio_range: width / height range of the random crop.
        flip: random horizontal flip with probability 1/2.
        brightness: max delta added on the 0..1 scale; ``None`` disables.
        contrast: (lower, upper) contrast factor range; ``None`` disables.
        saturation: (lower, upper) saturation factor range; ``None`` disables.
        hue: max hue shift (0..0.5); ``None`` disables.

    Returns:
        float32 ``[image_size, image_size, 3]`` with values 0..255.

    Uses ``tf.image`` stateless ops rather than Keras / keras-cv layers: those draw from a layer's
    internal generator, so a result depends on call order across tf.data's parallel threads;
    stateless ops seeded per element are reproducible whatever the threading.
    """
    seed = tf.convert_to_tensor(seed)
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    image = tf.convert_to_tensor(image)
    image.set_shape([None, None, 3])

    if crop_area_range is not None:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=aspect_ratio_range,
            area_range=crop_area_range,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
    image = resize_image(image, image_size)

    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])

    # Colour ops expect 0..1 floats (hue and saturation go through HSV).
    image = image / 255.0
    if brightness is not None:
        image = tf.image.stateless_random_brightness(image, brightness, seed=seeds[2])
    if contrast is not None:
        image = tf.image.stateless_random_contrast(image, contrast[0], contrast[1], seed=seeds[3])
    if saturation is not None:
        image = tf.clip_by_value(image, 0.0, 1.0)
        image = tf.image.stateless_random_saturation(
            image, saturation[0], saturation[1], seed=seeds[4]
        )
    if hue is not None:
        image = tf.clip_by_value(image, 0.0, 1.0)
        image = tf.image.stateless_random_hue(image, hue, seed=seeds[5])
    image = tf.clip_by_value(image, 0.0, 1.0) * 255.0
    image.set_shape([image_size, image_size, 3])
    return image


# ----------------------------------------------------------------------------------------------
# Files, manifest and sizes
# ----------------------------------------------------------------------------------------------


def _manifest_of(directory_or_manifest: str | os.PathLike | Mapping) -> dict:
    """A manifest dict from a loaded manifest, a TFRecord folder or a path to manifest.json."""
    # Imported here: the manifest module belongs to the converter and is only needed for folders.
    from tf_shopee.data.manifest import load_manifest

    if isinstance(directory_or_manifest, Mapping):
        return dict(directory_or_manifest)
    path = os.fspath(directory_or_manifest)
    if os.path.basename(path) == MANIFEST_NAME and os.path.isfile(path):
        path = os.path.dirname(path) or "."
    return load_manifest(path)


def resolve_files(file_pattern) -> tuple[list[str], dict | None]:
    """Turn ``file_pattern`` into a sorted list of shard files and the manifest, if there is one.

    ``file_pattern`` is a TFRecord folder holding ``manifest.json`` (all its shards are used), a
    glob such as ``tfrecords/shopee/train-*.tfrec``, a single file, or a list of files.
    Nothing matching → :class:`UserError`.
    """
    if isinstance(file_pattern, (str, os.PathLike)):
        pattern = os.fspath(file_pattern)
        if not pattern:
            raise UserError("empty file pattern: give a TFRecord folder, a glob or a list of files")
        if os.path.isdir(pattern):
            manifest = _manifest_of(pattern)
            from tf_shopee.data.manifest import shard_paths

            files = [os.fspath(path) for path in shard_paths(pattern)]
            if not files:
                raise UserError(f"{pattern} lists no {SHARD_SUFFIX} shards in its manifest")
            return files, manifest
        files = sorted(tf.io.gfile.glob(pattern)) if glob_module.has_magic(pattern) else [pattern]
        if not files:
            raise UserError(f"no TFRecord files match {pattern!r}")
    else:
        files = [os.fspath(path) for path in file_pattern]
        if not files:
            raise UserError("empty list of TFRecord files")
    missing = [path for path in files if not tf.io.gfile.exists(path)]
    if missing:
        raise UserError(f"TFRecord file not found: {missing[0]}")
    directories = [path for path in files if tf.io.gfile.isdir(path)]
    if directories:
        raise UserError(f"expected TFRecord files, got a folder in the list: {directories[0]}")
    return files, None


def _normalise_folds(folds, option: str) -> list[int] | None:
    if folds is None:
        return None
    if isinstance(folds, int):
        folds = [folds]
    try:
        values = sorted({int(fold) for fold in folds})
    except (TypeError, ValueError):
        raise UserError(f"{option} must be a list of fold numbers, got {folds!r}") from None
    return values


def _check_folds_against_manifest(manifest: dict, folds, exclude_folds) -> None:
    selected = (folds or []) + (exclude_folds or [])
    if not selected:
        return
    num_folds = int(manifest.get("num_folds", 0))
    if num_folds == 0:
        raise UserError(
            "fold selection asked for, but this dataset has no folds (an unlabelled set; "
            "convert it with labels and --folds to validate on a fold)"
        )
    for fold in selected:
        if not 0 <= fold < num_folds:
            raise UserError(f"fold {fold} out of range: this dataset has folds 0..{num_folds - 1}")


def dataset_size(
    directory_or_manifest: str | os.PathLike | Mapping,
    folds: Iterable[int] | int | None = None,
    exclude_folds: Iterable[int] | int | None = None,
) -> int:
    """Number of postings in a converted dataset, optionally restricted to some folds.

    Read from the manifest (``fold_counts`` / ``counts.written``), so nothing is scanned.
    ``folds`` keeps only those folds, ``exclude_folds`` drops them (train on folds != k:
    ``exclude_folds=[k]``; validate on fold k: ``folds=[k]``).
    """
    manifest = _manifest_of(directory_or_manifest)
    folds = _normalise_folds(folds, "folds")
    exclude_folds = _normalise_folds(exclude_folds, "exclude_folds")
    if folds is None and exclude_folds is None:
        return int(manifest["counts"]["written"])
    _check_folds_against_manifest(manifest, folds, exclude_folds)
    fold_counts = {int(fold): int(count) for fold, count in manifest["fold_counts"].items()}
    kept = set(fold_counts) if folds is None else set(folds)
    kept -= set(exclude_folds or [])
    return sum(fold_counts.get(fold, 0) for fold in kept)


def steps_per_epoch(
    directory_or_manifest: str | os.PathLike | Mapping,
    global_batch_size: int,
    *,
    folds: Iterable[int] | int | None = None,
    exclude_folds: Iterable[int] | int | None = None,
    drop_remainder: bool = True,
) -> int:
    """Batches in one pass over the selected folds (floor when ``drop_remainder``, else ceil).

    A selection smaller than one batch is a :class:`UserError` (training would never step).
    """
    if global_batch_size < 1:
        raise UserError(f"global batch size must be >= 1, got {global_batch_size}")
    size = dataset_size(directory_or_manifest, folds=folds, exclude_folds=exclude_folds)
    steps = size // global_batch_size if drop_remainder else math.ceil(size / global_batch_size)
    if steps == 0:
        raise UserError(
            f"the selected data has {size} postings, fewer than one batch of {global_batch_size}"
        )
    return steps


def _first_record_has_image(files: Sequence[str]) -> bool | None:
    """Whether the first record found has image bytes; ``None`` when every file is empty."""
    for path in files:
        for serialized in tf.data.TFRecordDataset(path).take(1):
            return bool(tf.strings.length(parse_postings(serialized)["image"]) > 0)
    return None


def class_keep_probabilities(label_counts: Sequence[int], power: float = 1.0) -> tf.Tensor:
    """Keep-probability per dense label for class-balanced rejection sampling.

    ``p(label) = (min_count / count(label)) ** power``, ``min_count`` the smallest non-zero count.
    With ``power=1`` every label is expected to be kept ``min_count`` times per pass over the data
    whatever its size: a flat distribution over label groups (Shopee: groups of 2..51 postings all
    contribute about 2 per pass; the stream keeps about 64 % of the records). ``power=0.5`` is
    square-root sampling, halfway between the natural and the flat distribution. Labels with a
    zero count never occur, their probability is irrelevant (set to 1).
    """
    counts = [int(count) for count in label_counts]
    if not counts or any(count < 0 for count in counts):
        raise UserError("label_counts must be a non-empty list of non-negative counts")
    positive = [count for count in counts if count > 0]
    if not positive:
        raise UserError("label_counts are all zero")
    if power < 0:
        raise UserError(f"class_balance_power must be >= 0, got {power}")
    smallest = min(positive)
    probabilities = [(smallest / count) ** power if count > 0 else 1.0 for count in counts]
    return tf.constant(probabilities, tf.float32)


def _select_folds(dataset: tf.data.Dataset, folds, exclude_folds) -> tf.data.Dataset:
    """Parsed records of ``folds`` only (when given), without ``exclude_folds`` (when given)."""
    if folds is not None:
        wanted = tf.constant(folds, tf.int64)
        dataset = dataset.filter(lambda record: tf.reduce_any(tf.equal(record["fold"], wanted)))
    if exclude_folds is not None:
        unwanted = tf.constant(exclude_folds, tf.int64)
        dataset = dataset.filter(
            lambda record: tf.logical_not(tf.reduce_any(tf.equal(record["fold"], unwanted)))
        )
    return dataset


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def make_dataset(
    file_pattern,
    *,
    training: bool,
    global_batch_size: int,
    image_size: int | None,
    folds: Iterable[int] | int | None = None,
    exclude_folds: Iterable[int] | int | None = None,
    with_image: bool = True,
    text_preprocessor: Callable[[tf.Tensor], Mapping[str, tf.Tensor]] | None = None,
    augment: bool = True,
    shuffle_buffer: int = 2048,
    repeat: bool | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    class_balanced: bool = False,
    label_counts: Sequence[int] | None = None,
    class_balance_power: float = 1.0,
    cache: bool = False,
    num_parallel_reads: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    catalog=None,
) -> tf.data.Dataset:
    """Build the batched dataset of postings read from TFRecord shards (see the module docstring).

    Args:
        file_pattern: TFRecord folder with ``manifest.json``, a glob, a file, or a list of files.
        training: shuffle files and records, repeat by default, augment, drop the last partial
            batch (static batch shape, needed on TPU).
        global_batch_size: examples per batch over all replicas. With ``input_context`` (from
            ``strategy.distribute_datasets_from_function``) each pipeline makes per-replica
            batches of ``global_batch_size / num_replicas`` and reads its own share of files.
        image_size: side S of the square output images; required when ``with_image``.
        folds: keep only these folds (validate on fold k: ``folds=[k]``).
        exclude_folds: drop these folds (train on folds != k: ``exclude_folds=[k]``).
        with_image: decode images; ``False`` skips decoding entirely (text-only models, and the
            only choice for a text-only dataset, whose images are empty).
        text_preprocessor: called on each batch of titles (``tf.string [B]``), must return a dict
            of tensors (e.g. ``token_ids``, ``padding_mask``) that is merged into the batch; bool
            and integer outputs are cast to int32 (bool masks break ``MirroredStrategy``).
        augment: random crop/flip/colour jitter, only when ``training``.
        shuffle_buffer: records in the shuffle buffer (training only).
        repeat: repeat forever; default: ``training``.
        deterministic: same ``seed`` → identical batches (file order, interleave, parallel map).
            Default: ``False`` when training (faster), ``True`` otherwise (evaluation keeps the
            file order, so results are reproducible).
        seed: seed for file/record shuffling, augmentation and class balancing. ``None``: a random
            one, or 0 when ``deterministic``.
        class_balanced: rejection-sample the (repeated) stream so rare label groups are seen as
            often as big ones, see :func:`class_keep_probabilities`. Needs ``label_counts`` (taken
            from the manifest when ``file_pattern`` is a folder).
        label_counts: examples per dense label index (``manifest["label_counts"]``).
        class_balance_power: 1 = flat over label groups, 0.5 = square-root sampling, 0 = off.
        cache: cache the parsed (still encoded) records in memory after the fold filter; for data
            that fits in RAM.
        num_parallel_reads: shards read at once by the interleave; default min(files, 8).
        input_context: ``tf.distribute.InputContext`` for per-worker input pipelines.
        catalog: catalogue photos mixed into a training stream
            (:class:`tf_shopee.data.studio.CatalogMix`); their
            backgrounds are crops of the selected folds' photos.

    Returns:
        ``tf.data.Dataset`` of dict batches, as listed in the module docstring.
    """
    folds = _normalise_folds(folds, "folds")
    exclude_folds = _normalise_folds(exclude_folds, "exclude_folds")
    if not isinstance(global_batch_size, numbers.Integral) or global_batch_size < 1:
        raise UserError(f"global batch size must be a positive int, got {global_batch_size!r}")
    if with_image and (not isinstance(image_size, numbers.Integral)
                       or image_size < MIN_IMAGE_SIZE):
        raise UserError(
            f"image_size must be an int >= {MIN_IMAGE_SIZE} when images are read, got "
            f"{image_size!r}"
        )
    global_batch_size = int(global_batch_size)
    if with_image:
        image_size = int(image_size)
    if training and shuffle_buffer < 1:
        raise UserError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
    if repeat is None:
        repeat = training
    if deterministic is None:
        deterministic = not training
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2**31)

    files, manifest = resolve_files(file_pattern)

    if manifest is not None:
        _check_folds_against_manifest(manifest, folds, exclude_folds)
        if (folds is not None or exclude_folds is not None) and dataset_size(
            manifest, folds, exclude_folds
        ) == 0:
            raise UserError(
                f"no postings left after fold selection folds={folds} exclude_folds={exclude_folds}"
            )
    if with_image:
        has_images = (
            bool(manifest.get("has_images", True))
            if manifest is not None
            else _first_record_has_image(files) is not False
        )
        if not has_images:
            raise UserError(
                f"{file_pattern} is a text-only dataset (no image bytes): "
                "read it with with_image=False (a text model)"
            )

    keep_probabilities = None
    if class_balanced:
        if label_counts is None and manifest is not None:
            label_counts = manifest.get("label_counts")
        if not label_counts:
            raise UserError(
                "class_balanced sampling needs label_counts (manifest['label_counts']); "
                "this dataset has none (unlabelled?)"
            )
        keep_probabilities = class_keep_probabilities(label_counts, class_balance_power)
        num_labels = tf.constant(len(label_counts), tf.int64)

    batch_size = global_batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)

    dataset = tf.data.Dataset.from_tensor_slices(files)
    shard_records_instead = False
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        else:
            shard_records_instead = True  # too few files to give every worker one
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle_length = num_parallel_reads or min(len(files), 8)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shard_records_instead:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    dataset = dataset.map(
        parse_postings, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = _select_folds(dataset, folds, exclude_folds)
    if not with_image:
        # Drop the encoded bytes early: less to cache and to copy through the shuffle buffer.
        dataset = dataset.map(lambda record: {k: v for k, v in record.items() if k != "image"})
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # Element index after repeat: a different augmentation / sampling draw on every pass.
    dataset = dataset.enumerate()

    if keep_probabilities is not None:

        def keep(index, record):
            label = record["label"]
            if_valid = tf.debugging.Assert(
                tf.logical_and(label >= 0, label < num_labels),
                [
                    "class_balanced sampling: label outside label_counts (unlabelled posting?):",
                    record["posting_id"],
                    label,
                ],
            )
            with tf.control_dependencies([if_valid]):
                element_seed = tf.random.experimental.stateless_fold_in(
                    tf.stack([tf.cast(seed, tf.int64), index]), _SEED_TAG_BALANCE
                )
            draw = tf.random.stateless_uniform([], seed=element_seed)
            return draw < tf.gather(keep_probabilities, label)

        dataset = dataset.filter(keep)

    do_augment = training and augment and with_image
    decode_min_side = None
    if do_augment:
        # Decode at enough resolution that even the smallest crop is not upsampled.
        decode_min_side = math.ceil(image_size / math.sqrt(DEFAULT_CROP_AREA_RANGE[0]))

    def prepare(index, record):
        example = {
            "posting_id": record["posting_id"],
            "title": record["title"],
            "image_phash": record["image_phash"],
            "label": tf.cast(record["label"], tf.int32),
            "fold": tf.cast(record["fold"], tf.int32),
        }
        if with_image:
            image_bytes = record["image"]
            has_bytes = tf.debugging.Assert(
                tf.strings.length(image_bytes) > 0,
                [
                    "posting has no image bytes (read a text-only set with with_image=False):",
                    record["posting_id"],
                ],
            )
            with tf.control_dependencies([has_bytes]):
                image_bytes = tf.identity(image_bytes)
            if do_augment:
                element_seed = tf.random.experimental.stateless_fold_in(
                    tf.stack([tf.cast(seed, tf.int64), index]), _SEED_TAG_AUGMENT
                )
                full = decode_image_uint8(image_bytes, min_side=decode_min_side)
                example["image"] = augment_image(full, element_seed, image_size=image_size)
            else:
                example["image"] = decode_image(image_bytes, image_size)
        return example

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if catalog is not None:
        if not (training and with_image):
            raise UserError("catalogue photos join training streams of images only")
        backgrounds = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic).map(parse_postings)
        backgrounds = _select_folds(backgrounds, folds, exclude_folds)
        backgrounds = backgrounds.map(lambda record: record["image"]).shuffle(
            256, seed=seed + 1).repeat()
        extra = catalog.examples(backgrounds, image_size=image_size, seed=seed)
        dataset = tf.data.Dataset.sample_from_datasets(
            [dataset, extra], weights=[1.0 - catalog.fraction, catalog.fraction],
            seed=seed + _SEED_TAG_MIX)
    dataset = dataset.batch(batch_size, drop_remainder=training)

    if text_preprocessor is not None:

        def tokenize(batch):
            outputs = text_preprocessor(batch["title"])
            if not isinstance(outputs, Mapping):
                raise TypeError(
                    f"text_preprocessor must return a dict of tensors, got {type(outputs).__name__}"
                )
            merged = dict(batch)
            for key, value in outputs.items():
                if key in merged:
                    raise ValueError(f"text_preprocessor output {key!r} clashes with a batch key")
                value = tf.convert_to_tensor(value)
                if value.dtype.is_bool or value.dtype.is_integer:
                    value = tf.cast(value, tf.int32)
                if training and value.shape.rank:
                    # Tokenizers built on ragged tensors lose the static batch size; restore it
                    # (checked at run time) so training batches keep the static shapes TPUs need.
                    static = tf.TensorShape([batch_size] + [None] * (value.shape.rank - 1))
                    value = tf.ensure_shape(value, value.shape.merge_with(static))
                merged[key] = value
            return merged

        dataset = dataset.map(
            tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )

    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        # We sharded by hand above; stop tf.distribute from sharding a second time.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)
