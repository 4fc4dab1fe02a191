"""LiteRT (TensorFlow Lite) export of an image model, and loading it back for prediction.

``python -m tf_shopee.export litert SM OUT.tflite [--float16 | --int8 --calibration CSV --images
DIR]`` (:func:`convert_to_litert`) converts the ``embed_pixels`` signature of an image export
(decoded pixels → features) into one ``.tflite`` file:

==========  ===================================================================================
float32     the weights as they are (the reference conversion)
float16     weights stored as float16 (half the size); CPUs compute in float32
int8        full-integer: int8 weights and activations, calibrated on representative photos
            (``--calibration CSV --images DIR``, photos the model will meet, never the ones it is
            evaluated on); uint8 pixels in, float32 features out
==========  ===================================================================================

The JPEG decoder stays outside the model (a phone decodes with its own libraries; LiteRT has no
DecodeJpeg op), and so does the L2 normalisation (an int8 unit vector of 1,280 components
would keep about one significant digit per component). :class:`LiteRTModel` decodes photos with
the very function the SavedModel's serving graph uses
(:func:`tf_shopee.data.pipeline.decode_image`), feeds the interpreter and normalises: it has the
interface of :class:`~tf_shopee.export.saved_model.ExportedModel` (``kind``, ``embedding_dim``,
``threshold``, ``embed(images=...)``, ``embed_pixels``, ``embed_views``), so ``predict.py``, the
catalogue and the app take a ``.tflite`` path wherever they take an export folder.

The export's metadata (``tf_shopee_export.json``: kind, sizes, threshold, run) travels inside the
``.tflite`` file as a flatbuffer metadata entry named :data:`METADATA_NAME`, with the quantization,
the source export's fingerprint and the conversion's own check (cosine between the LiteRT and the
SavedModel embeddings of up to :data:`CHECK_IMAGES` calibration photos).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from pathlib import Path

import numpy as np

from tf_shopee.errors import UserError, warn_once
from tf_shopee.export.base import ViewEmbedder, as_bytes, l2_normalise
from tf_shopee.export.saved_model import (
    EXPORT_FORMAT,
    PIXELS_INPUT,
    PIXELS_OUTPUT,
    PIXELS_SIGNATURE,
    read_saved_model_metadata,
    rebuild_keras_model,
)
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger(__name__)

LITERT_SUFFIX = ".tflite"
METADATA_NAME = "tf_shopee_export"
QUANTIZATIONS = ("float32", "float16", "int8")
DEFAULT_CALIBRATION_IMAGES = 200
CHECK_IMAGES = 16
DEFAULT_BATCH = 8


def is_litert_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a LiteRT model (by its ``.tflite`` suffix)."""
    return str(path).lower().endswith(LITERT_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Metadata inside the flatbuffer


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def attach_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    """``model_bytes`` with ``metadata`` (JSON) added as the flatbuffer metadata entry
    :data:`METADATA_NAME` (an existing entry of that name is replaced)."""
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [item for item in (model.metadata or [])
                      if _text(item.name) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_litert_metadata(path: str | os.PathLike) -> dict:
    """The tf_shopee metadata inside a ``.tflite`` file.

    Raises:
        UserError: missing file, not a LiteRT flatbuffer, or a LiteRT model tf_shopee did not
            write (no :data:`METADATA_NAME` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LiteRT model not found: {path}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{path} is not a LiteRT (.tflite) model")
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if _text(entry.Name()) != METADATA_NAME:
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
                raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
            else:
                raw = buffer.DataAsNumpy().tobytes()
            metadata = json.loads(raw.decode("utf-8"))
            break
        else:
            raise UserError(f"{path} is a LiteRT model without tf_shopee metadata: convert an "
                            "export with python -m tf_shopee.export litert")
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as error:
        # struct.error: a file cut short after a valid header (flatbuffers reads past the end).
        raise UserError(f"{path}: cannot read its tf_shopee metadata ({error}); is the file "
                        "complete?") from None
    if (not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT
            or metadata.get("backend") != "litert"):
        raise UserError(f"{path}: its metadata is not a tf_shopee LiteRT export")
    return metadata


# ---------------------------------------------------------------------------------------------
# Conversion


def calibration_photos(csv_path: str | os.PathLike, images_dir: str | os.PathLike, *,
                       count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> list[bytes]:
    """Up to ``count`` photos of a posting CSV (its ``image`` column, relative to
    ``images_dir``), a seeded random sample of the rows; files that cannot be read or decoded are
    skipped (the first few named in a warning)."""
    import pandas as pd

    from tf_shopee.data.images import image_problem

    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not csv_path.is_file():
        raise UserError(f"--calibration: CSV not found: {csv_path}")
    if not images_dir.is_dir():
        raise UserError(f"--images: folder not found: {images_dir}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(f"--calibration: cannot read {csv_path} as a CSV ({error})") from None
    if "image" not in table.columns:
        raise UserError(f"--calibration: {csv_path} has no 'image' column")
    names = [name for name in table["image"].tolist() if name]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    photos, skipped = [], []
    for index in order:
        if len(photos) >= count:
            break
        path = images_dir / names[index]
        try:
            data = path.read_bytes()
        except OSError as error:
            skipped.append(f"{names[index]} ({error.strerror or error})")
            continue
        problem = image_problem(data, names[index])
        if problem is not None:
            skipped.append(problem)
            continue
        photos.append(data)
    if skipped:
        logger.warning("--calibration: %d photo(s) skipped, e.g. %s", len(skipped),
                       "; ".join(skipped[:3]))
    if not photos:
        raise UserError(f"--calibration: none of the images of {csv_path} could be read under "
                        f"{images_dir}")
    return photos


def _decode_function(image_size: int):
    """A traced batch decoder: string [B] → float32 [B, S, S, 3], the serving graph's decode."""
    import tensorflow as tf

    from tf_shopee.data.pipeline import decode_image

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(image_bytes):
        return tf.map_fn(lambda one: decode_image(one, image_size), image_bytes,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                           tf.float32))

    return decode


_DECODERS: dict = {}


def decode_photos(images, image_size: int) -> np.ndarray:
    """Encoded photos → float32 ``[N, S, S, 3]`` pixels, decoded as the SavedModel does."""
    import tensorflow as tf

    if image_size not in _DECODERS:
        _DECODERS[image_size] = _decode_function(image_size)
    images = [as_bytes(image, "image") for image in images]
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return _DECODERS[image_size](tf.constant(images, tf.string)).numpy()


def _frozen_pixels_function(export_dir: Path, metadata: dict):
    """The export's pixels → features function with its variables folded into constants, and
    the object that keeps its graph alive.

    Frozen here rather than by the converter: ``TFLiteConverter.from_saved_model`` keeps the
    embedding head's variables (read through Keras 3's casts) as resource variables, and the
    converted model then fails at its first call (``READ_VARIABLE ... variable != nullptr``).
    An export without the ``embed_pixels`` signature is rebuilt from its config.json.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    if PIXELS_SIGNATURE in (metadata.get("signatures") or []):
        owner = tf.saved_model.load(str(export_dir))
        function = owner.signatures[PIXELS_SIGNATURE]
    else:
        logger.warning("%s has no %s signature (exported before it existed): rebuilding its "
                       "model from config.json to convert it", export_dir, PIXELS_SIGNATURE)
        owner = rebuild_keras_model(export_dir, metadata)
        size = int(metadata["image_size"])
        function = tf.function(
            lambda pixels: {PIXELS_OUTPUT: tf.cast(owner({"image": pixels}, training=False),
                                                   tf.float32)},
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                           name=PIXELS_INPUT)],
        ).get_concrete_function()
    return convert_variables_to_constants_v2(function), owner


def convert_to_litert(
    export_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    quantization: str = "float16",
    calibration: list[bytes] | None = None,
    calibration_source: str | None = None,
    overwrite: bool = True,
    say=print,
) -> dict:
    """Convert an image export to a LiteRT model (see the module docstring).

    Args:
        export_dir: an image export folder (train.py --export).
        out_path: the ``.tflite`` file to write (atomically).
        quantization: float32 | float16 | int8.
        calibration: encoded photos; int8 calibrates on them (required), every mode checks its
            output against the SavedModel on the first :data:`CHECK_IMAGES`.
        calibration_source: where the photos came from, recorded in the metadata.
        overwrite: replace an existing file.
        say: where progress lines go.

    Returns:
        The metadata stored in the file.

    Raises:
        UserError: not an image export, a bad option, or a conversion that fails.
    """
    import tensorflow as tf

    from tf_shopee.export import model_fingerprint
    from tf_shopee.io_utils import atomic_path

    export_dir, out_path = Path(export_dir), Path(out_path)
    if quantization not in QUANTIZATIONS:
        raise UserError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got "
                        f"{quantization!r}")
    if not is_litert_path(out_path):
        raise UserError(f"the LiteRT model's file name must end in {LITERT_SUFFIX}: {out_path}")
    if out_path.exists() and not overwrite:
        raise UserError(f"{out_path} exists and replacing it was refused (--no-overwrite)")
    if out_path.is_dir():
        raise UserError(f"{out_path} is a folder; give a file name ending in {LITERT_SUFFIX}")
    metadata = read_saved_model_metadata(export_dir)
    if metadata["kind"] != ModelKind.IMAGE:
        raise UserError(f"{export_dir} holds a {metadata['kind']} model: only image models "
                        "convert to LiteRT here (tokenizers are not LiteRT ops)")
    if quantization == "int8" and not calibration:
        raise UserError("--int8 needs representative photos: --calibration CSV --images DIR")
    size = int(metadata["image_size"])
    calibration = list(calibration or [])

    started = time.perf_counter()
    function, owner = _frozen_pixels_function(export_dir, metadata)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], owner)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32

        def representative():
            total = len(calibration)
            for index, photo in enumerate(calibration):
                if index % 50 == 0:
                    say(f"  calibrating: photo {index + 1}/{total}")
                yield [decode_photos([photo], size)]

        converter.representative_dataset = representative
    say(f"converting {export_dir} to LiteRT {quantization} ...")
    try:
        model_bytes = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"LiteRT conversion of {export_dir} failed: "
                        f"{type(error).__name__}: {first}") from None
    convert_seconds = time.perf_counter() - started

    check = _check_against_saved_model(export_dir, model_bytes, metadata,
                                       calibration[:CHECK_IMAGES]) if calibration else None
    payload = dict(metadata)
    payload.update({
        "backend": "litert",
        "quantization": quantization,
        "inputs": [PIXELS_INPUT],
        "input": {"name": PIXELS_INPUT, "shape": [-1, size, size, 3],
                  "dtype": "uint8" if quantization == "int8" else "float32",
                  "meaning": "RGB pixels 0..255, decoded and resized like "
                             "tf_shopee.data.pipeline.decode_image"},
        "output": {"name": PIXELS_OUTPUT, "meaning": "features, not normalised"},
        "source_export": {"path": str(export_dir.resolve()),
                          "fingerprint": model_fingerprint(export_dir)},
        "calibration": ({"photos": len(calibration), "source": calibration_source}
                        if quantization == "int8" else None),
        "check_against_saved_model": check,
        "convert_seconds": round(convert_seconds, 1),
    })
    payload.pop("signatures", None)
    final = attach_metadata(model_bytes, payload)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as temporary:
        Path(temporary).write_bytes(final)
    say(f"wrote {out_path} ({len(final) / 2**20:.1f} MiB, {quantization}, "
        f"{convert_seconds:.0f} s)" + (
            f"; cosine to the SavedModel on {check['photos']} photos: mean {check['mean']:.4f}, "
            f"min {check['min']:.4f}" if check else ""))
    return payload


def _check_against_saved_model(export_dir: Path, model_bytes: bytes, metadata: dict,
                               photos: list[bytes]) -> dict:
    """Cosine between the SavedModel's and the LiteRT model's embeddings of ``photos``."""
    from tf_shopee.export.saved_model import load_saved_model

    reference = load_saved_model(export_dir).embed(images=photos)
    converted = LiteRTModel(None, metadata, model_bytes=model_bytes).embed(images=photos)
    cosines = np.sum(reference * converted, axis=1)
    return {"photos": len(photos), "mean": round(float(cosines.mean()), 5),
            "min": round(float(cosines.min()), 5)}


# ---------------------------------------------------------------------------------------------
# Loading


def default_threads() -> int:
    """The CPUs this process may use (the interpreter's default thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _interpreter(path: Path | None, model_bytes: bytes | None, num_threads: int):
    """An XNNPACK-backed interpreter from ai-edge-litert, else TensorFlow's own (logged)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        warn_once(logger, "ai-edge-litert is not installed: running LiteRT models with "
                  "TensorFlow's tf.lite.Interpreter (deprecated, may be slower); pip install "
                  "ai-edge-litert")
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    try:
        if model_bytes is not None:
            return Interpreter(model_content=model_bytes, num_threads=num_threads)
        return Interpreter(model_path=str(path), num_threads=num_threads)
    except (ValueError, RuntimeError) as error:
        raise UserError(f"cannot load the LiteRT model {path or '(in memory)'}: {error}") from None


class LiteRTModel(ViewEmbedder):
    """A loaded ``.tflite`` image model with the interface of
    :class:`~tf_shopee.export.saved_model.ExportedModel`.

    Args:
        path: the ``.tflite`` file (None with ``model_bytes``).
        metadata: its tf_shopee metadata (:func:`read_litert_metadata`).
        num_threads: interpreter threads (default: the CPUs this process may use).
        batch: photos per interpreter call; the input is sized once for it (a partial batch is
            padded), since resizing re-plans the XNNPACK graph.
        model_bytes: the model in memory instead of ``path``.
    """

    backend = "litert"

    def __init__(self, path, metadata: dict, *, num_threads: int | None = None,
                 batch: int = DEFAULT_BATCH, model_bytes: bytes | None = None):
        if batch < 1:
            raise UserError(f"batch must be >= 1, got {batch}")
        self.directory = Path(path) if path is not None else None
        self.metadata = metadata
        self.kind = ModelKind.parse(metadata["kind"], where=str(path))
        if self.kind is not ModelKind.IMAGE:
            raise UserError(f"{path}: a LiteRT model here is an image model, got {self.kind!r}")
        self.embedding_dim = int(metadata["embedding_dim"])
        self.image_size = int(metadata["image_size"])
        self.threshold = metadata.get("threshold")
        self.quantization = metadata.get("quantization")
        self.fingerprint = None
        self.num_threads = num_threads or default_threads()
        self.batch = int(batch)
        self._interpreter = _interpreter(self.directory, model_bytes, self.num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{path}: expected one input and one output, found {len(inputs)} "
                            f"and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        self._interpreter.resize_tensor_input(self._input["index"],
                                              [self.batch, self.image_size, self.image_size, 3])
        self._interpreter.allocate_tensors()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """float32 ``[B, S, S, 3]`` pixels (0..255) → float32 ``[B, D]`` features."""
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise UserError(f"pixels must have shape [B, {self.image_size}, {self.image_size}, 3]"
                            f", got {list(pixels.shape)}")
        dtype = self._input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(dtype)
            feed = np.clip(np.round(pixels / (scale or 1.0) + zero_point), info.min, info.max)
            feed = feed.astype(dtype)
        else:
            feed = pixels.astype(dtype)
        out_dtype = self._output["dtype"]
        result = np.zeros((len(pixels), self.embedding_dim), np.float32)
        for start in range(0, len(pixels), self.batch):
            chunk = feed[start:start + self.batch]
            count = len(chunk)
            if count < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - count,) + chunk.shape[1:],
                                                        chunk.dtype)])
            self._interpreter.set_tensor(self._input["index"], chunk)
            self._interpreter.invoke()
            output = self._interpreter.get_tensor(self._output["index"])[:count]
            if np.issubdtype(out_dtype, np.integer):
                scale, zero_point = self._output["quantization"]
                output = (output.astype(np.float32) - zero_point) * scale
            result[start:start + count] = output
        return result

    def embed(self, images=None, titles=None, batch_size: int = 64) -> np.ndarray:
        """Embed photos (titles are ignored: an image model), ``batch_size`` decoded at a time.

        Returns:
            float32 ``[N, embedding_dim]``, rows L2-normalised.
        """
        if images is None:
            raise UserError("this image model needs images to embed")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        images = list(images)
        parts = [np.zeros((0, self.embedding_dim), np.float32)]
        for start in range(0, len(images), batch_size):
            pixels = decode_photos(images[start:start + batch_size], self.image_size)
            parts.append(l2_normalise(self.embed_pixels(pixels)))
        return np.concatenate(parts)


def load_litert(path: str | os.PathLike, *, expected_kind: str | None = None,
                num_threads: int | None = None) -> LiteRTModel:
    """Load a ``.tflite`` file written by :func:`convert_to_litert`."""
    metadata = read_litert_metadata(path)
    if expected_kind is not None and metadata["kind"] != expected_kind:
        raise UserError(f"{path} holds a {metadata['kind']} model, but a {expected_kind} model "
                        "is needed")
    return LiteRTModel(path, metadata, num_threads=num_threads)
