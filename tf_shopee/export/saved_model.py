"""SavedModel export of a trained embedding model, and loading it back for prediction.

An export is a folder::

    saved_model.pb, variables/, assets/   tf.saved_model.save of a tf.Module holding the model
    tf_shopee_export.json                 what the folder is: format, kind, sizes, threshold, run
    config.json                           the RunConfig that trained it
    thresholds.json                       best cosine threshold on the validation fold (if known)

Its ``serving_default`` signature takes raw inputs and does all preprocessing in the graph, so TF
Serving or a plain ``tf.saved_model.load`` can call it with nothing of tf_shopee installed:

======================  ======================================================================
model kind              inputs → outputs
======================  ======================================================================
image                   ``image_bytes``: tf.string [B] (JPEG/PNG bytes)
text                    ``titles``: tf.string [B] (UTF-8)
multimodal              ``image_bytes`` and ``titles``, both [B]
all                     → ``{"embeddings": float32 [B, D]}``, L2-normalised
======================  ======================================================================

Image exports also have an ``embed_pixels`` signature: ``pixels`` float32 [B, S, S, 3] (RGB,
0..255, already decoded and resized, S = ``image_size``) → ``{"features": float32 [B, D]}``, *not*
normalised. It is what test-time augmentation feeds (views made outside the graph) and what the
LiteRT conversion converts (:mod:`tf_shopee.export.litert`: no JPEG decoder on a phone, and an
int8 model keeps more of the embedding when the normalisation is left to the host). An export
written before it existed is rebuilt from its ``config.json`` and variables when pixels are needed
(:func:`rebuild_keras_model`).

Loading needs ``import tensorflow_text`` first when a tokenizer is in the graph (its ops are
registered by that import). The model is saved through a ``tf.Module`` rather than Keras
``ExportArchive`` / ``model.export``, which store every variable twice (DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from tf_shopee.errors import UserError, warn_once
from tf_shopee.export.base import ViewEmbedder, as_bytes
from tf_shopee.io_utils import read_json
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "tf_shopee.embedding_model"
EXPORT_FORMAT_VERSION = 1
METADATA_FILE = "tf_shopee_export.json"
CONFIG_FILE = "config.json"
THRESHOLDS_FILE = "thresholds.json"
SAVED_MODEL_FILE = "saved_model.pb"

# The pixel-input signature of image exports (see the module docstring).
PIXELS_SIGNATURE = "embed_pixels"
PIXELS_INPUT = "pixels"
PIXELS_OUTPUT = "features"

# Serving input names per model kind, in signature order.
SERVING_INPUTS = {
    "image": ("image_bytes",),
    "text": ("titles",),
    "multimodal": ("image_bytes", "titles"),
}


def _serving_module(embedding_model, *, kind: ModelKind, image_size: int, text_preprocessor):
    """A ``tf.Module`` holding the model (and tokenizer) with a raw-input serving function."""
    import tensorflow as tf

    from tf_shopee.data.pipeline import decode_image

    class EmbeddingServer(tf.Module):
        """Raw JPEG bytes and/or titles → L2-normalised embeddings, preprocessing in the graph."""

        def __init__(self):
            super().__init__(name="tf_shopee_embedding_server")
            self.embedding_model = embedding_model
            if text_preprocessor is not None:
                self.text_preprocessor = text_preprocessor

        def embed_raw(self, image_bytes=None, titles=None):
            inputs = {}
            if image_bytes is not None:
                inputs["image"] = tf.map_fn(
                    lambda one: decode_image(one, image_size),
                    image_bytes,
                    fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
                )
            if titles is not None:
                tokens = self.text_preprocessor(titles)
                inputs.update({key: tf.cast(value, tf.int32) for key, value in tokens.items()})
            embeddings = tf.cast(self.embedding_model(inputs, training=False), tf.float32)
            return {"embeddings": tf.math.l2_normalize(embeddings, axis=1)}

    server = EmbeddingServer()
    image_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    title_spec = tf.TensorSpec([None], tf.string, name="titles")
    if kind is ModelKind.IMAGE:
        server.serve = tf.function(
            lambda image_bytes: server.embed_raw(image_bytes=image_bytes),
            input_signature=[image_spec],
        )
        server.embed_pixels = tf.function(
            lambda pixels: {PIXELS_OUTPUT: tf.cast(
                server.embedding_model({"image": pixels}, training=False), tf.float32)},
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32,
                                           name=PIXELS_INPUT)],
        )
    elif kind is ModelKind.TEXT:
        server.serve = tf.function(
            lambda titles: server.embed_raw(titles=titles), input_signature=[title_spec]
        )
    else:

        def serve_both(image_bytes, titles):
            same_length = tf.debugging.assert_equal(
                tf.shape(image_bytes)[0],
                tf.shape(titles)[0],
                message="image_bytes and titles must have the same batch length",
            )
            with tf.control_dependencies([same_length]):
                return server.embed_raw(image_bytes=image_bytes, titles=titles)

        server.serve = tf.function(serve_both, input_signature=[image_spec, title_spec])
    return server


def export_model(
    embedding_model,
    *,
    kind: str,
    export_dir: str | os.PathLike,
    image_size: int,
    text_preprocessor=None,
    metadata: dict,
    config,
    thresholds: dict | None = None,
) -> Path:
    """Write ``embedding_model`` as a raw-input SavedModel to ``export_dir`` (see module docstring).

    Args:
        embedding_model: Keras model, dict inputs by kind → embedding [B, D] (not normalised).
        kind: image | text | multimodal.
        export_dir: destination folder. Written under a temporary name and renamed, so a crash
            never leaves a half export there. An existing tf_shopee export is replaced; any other
            non-empty folder is refused.
        image_size: side of the square images the model was trained on.
        text_preprocessor: trackable callable titles → {"token_ids", "padding_mask"} (text and
            multimodal kinds); saved inside the graph with its vocabulary.
        metadata: extra fields for ``tf_shopee_export.json``; ``num_classes``, ``threshold`` and
            ``run_name`` are expected (missing ones are stored as null).
        config: the ``RunConfig`` that trained the model, saved as ``config.json``.
        thresholds: validation threshold search result, saved as ``thresholds.json`` when given.

    Returns:
        The export folder.
    """
    import tensorflow as tf

    kind = ModelKind.parse(kind, where="export")
    if kind.uses_titles and text_preprocessor is None:
        raise UserError(f"a {kind} model needs its text_preprocessor to be exported")
    export_dir = Path(export_dir)
    if export_dir.exists() and not _replaceable(export_dir):
        raise UserError(
            f"export folder {export_dir} exists and is not a tf_shopee export: "
            "choose another --export folder"
        )
    embedding_dim = int(embedding_model.output_shape[-1])
    server = _serving_module(
        embedding_model, kind=kind, image_size=image_size, text_preprocessor=text_preprocessor
    )
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": kind,
        "embedding_dim": embedding_dim,
        "image_size": int(image_size),
        "num_classes": None,
        "threshold": None,
        "run_name": None,
        "inputs": list(SERVING_INPUTS[kind]),
        "signatures": ["serving_default"] + ([PIXELS_SIGNATURE] if kind is ModelKind.IMAGE else []),
    }
    payload.update(metadata)

    export_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = export_dir.parent / f".{export_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        signatures = {"serving_default": server.serve}
        if kind is ModelKind.IMAGE:
            signatures[PIXELS_SIGNATURE] = server.embed_pixels
        tf.saved_model.save(server, str(temporary), signatures=signatures)
        config.save(temporary / CONFIG_FILE)
        if thresholds is not None:
            _write_json(temporary / THRESHOLDS_FILE, thresholds)
        # Written last: a folder with this file is a finished export.
        _write_json(temporary / METADATA_FILE, payload)
        _swap_into_place(temporary, export_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return export_dir


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _replaceable(directory: Path) -> bool:
    """An existing destination may be replaced when it is empty or a previous export."""
    return directory.is_dir() and (
        not any(directory.iterdir()) or (directory / METADATA_FILE).is_file()
    )


def _swap_into_place(temporary: Path, export_dir: Path) -> None:
    from tf_shopee.io_utils import replace_directory

    replace_directory(temporary, export_dir)


def read_saved_model_metadata(directory: str | os.PathLike) -> dict:
    """Read and check ``tf_shopee_export.json`` of an export folder.

    Raises:
        UserError: the folder is missing, is not a tf_shopee export, or has another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"exported model folder not found: {directory}")
    metadata_path = directory / METADATA_FILE
    if not metadata_path.is_file():
        raise UserError(
            f"{directory} is not a tf_shopee export (no {METADATA_FILE}); "
            "export one with train.py --export"
        )
    metadata = read_json(metadata_path)
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise UserError(f"{metadata_path}: format is not {EXPORT_FORMAT!r}")
    version = metadata.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise UserError(
            f"{metadata_path}: format_version {version!r}; this tf_shopee reads version "
            f"{EXPORT_FORMAT_VERSION}"
        )
    if metadata.get("kind") not in SERVING_INPUTS:
        raise UserError(f"{metadata_path}: unknown model kind {metadata.get('kind')!r}")
    if not (directory / SAVED_MODEL_FILE).is_file():
        raise UserError(f"{directory} has {METADATA_FILE} but no {SAVED_MODEL_FILE}")
    return metadata


class ExportedModel(ViewEmbedder):
    """A loaded tf_shopee export: call :meth:`embed` on raw images and/or titles.

    Attributes:
        directory: the export folder.
        metadata: the content of ``tf_shopee_export.json``.
        kind: image | text | multimodal.
        embedding_dim: length of each embedding.
        image_size: side of the images the model sees (image and multimodal models).
        threshold: best cosine threshold found on the validation fold, or None.
        fingerprint: sha256 of the export's files (:func:`tf_shopee.export.model_fingerprint`),
            set by :func:`tf_shopee.export.load_exported`.
    """

    backend = "saved_model"

    def __init__(self, directory: Path, metadata: dict, serving_function, pixels_function=None):
        self.directory = directory
        self.metadata = metadata
        self.kind = ModelKind(metadata["kind"])  # read_export_metadata checked it
        self.embedding_dim = int(metadata["embedding_dim"])
        self.image_size = int(metadata.get("image_size") or 0)
        self.threshold = metadata.get("threshold")
        self.fingerprint = None
        self._serving_function = serving_function
        self._pixels_function = pixels_function

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded pixels float32 ``[B, S, S, 3]`` (0..255) → features ``[B, D]``, not
        normalised (image exports; an export without the ``embed_pixels`` signature is rebuilt
        from its config.json and variables the first time)."""
        import tensorflow as tf

        if self.kind is not ModelKind.IMAGE:
            raise UserError(f"{self.directory} is a {self.kind} model: pixels need an image model")
        if self._pixels_function is None:
            warn_once(logger, f"{self.directory} has no {PIXELS_SIGNATURE} signature (exported "
                      "before it existed): rebuilding its Keras model from config.json for "
                      "pixel inputs")
            keras_model = rebuild_keras_model(self.directory, self.metadata)
            self._pixels_function = tf.function(
                lambda pixels: {PIXELS_OUTPUT: keras_model({"image": pixels}, training=False)})
            self._keras_model = keras_model
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise UserError(f"pixels must have shape [B, {self.image_size}, {self.image_size}, 3]"
                            f", got {list(pixels.shape)}")
        if len(pixels) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        output = self._pixels_function(**{PIXELS_INPUT: tf.constant(pixels)})
        return np.asarray(output[PIXELS_OUTPUT], np.float32)

    def embed(
        self,
        images: Sequence[bytes] | None = None,
        titles: Sequence[str] | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Embed postings, ``batch_size`` at a time.

        Args:
            images: encoded image bytes (JPEG/PNG) per posting; needed by image and multimodal
                models, ignored by text models. Empty bytes embed a black image.
            titles: title per posting (str or UTF-8 bytes); needed by text and multimodal models,
                ignored by image models.
            batch_size: postings per call of the serving function.

        Returns:
            float32 array [num_postings, embedding_dim], rows L2-normalised.
        """
        import tensorflow as tf

        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        columns = {}
        if "image_bytes" in SERVING_INPUTS[self.kind]:
            if images is None:
                raise UserError(f"this {self.kind} model needs images to embed")
            columns["image_bytes"] = [as_bytes(image, "image") for image in images]
        if "titles" in SERVING_INPUTS[self.kind]:
            if titles is None:
                raise UserError(f"this {self.kind} model needs titles to embed")
            columns["titles"] = [as_bytes(title, "title") for title in titles]
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"images and titles differ in length: {lengths}")
        count = next(iter(lengths.values()))
        if count == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        parts = []
        for start in range(0, count, batch_size):
            feed = {
                name: tf.constant(values[start : start + batch_size], dtype=tf.string)
                for name, values in columns.items()
            }
            parts.append(self._serving_function(**feed)["embeddings"].numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)


def rebuild_keras_model(directory: str | os.PathLike, metadata: dict | None = None):
    """The export's Keras embedding model, rebuilt from ``config.json`` with the SavedModel's
    variables restored (image exports; no pretrained weights are read or downloaded).

    Raises:
        UserError: no config.json, or variables that do not fit the rebuilt model.
    """
    import tensorflow as tf

    from tf_shopee.config import RunConfig
    from tf_shopee.models import build_embedding_model

    directory = Path(directory)
    metadata = metadata or read_saved_model_metadata(directory)
    if metadata["kind"] != ModelKind.IMAGE:
        raise UserError(f"{directory}: only image exports can be rebuilt for pixel inputs")
    if not (directory / CONFIG_FILE).is_file():
        raise UserError(f"{directory} has no {CONFIG_FILE}: cannot rebuild its model for pixel "
                        "inputs; export it again with this version of tf_shopee")
    config = RunConfig.load(directory / CONFIG_FILE)
    model = build_embedding_model(config.model, image_size=int(metadata["image_size"]),
                                  load_pretrained_weights=False)
    status = tf.train.Checkpoint(embedding_model=model).restore(
        str(directory / "variables" / "variables"))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        unmatched = [line for line in str(error).splitlines() if "save_counter" not in line]
        if "save_counter" not in str(error) or len(unmatched) > 1:
            raise UserError(f"{directory}: its variables do not fit the model its config.json "
                            f"builds ({str(error).splitlines()[0]})") from None
    return model


def load_saved_model(
    directory: str | os.PathLike, *, expected_kind: str | None = None
) -> ExportedModel:
    """Load an export written by :func:`export_model`.

    Args:
        directory: the export folder.
        expected_kind: when given, an export of another kind is refused.

    Raises:
        UserError: not a tf_shopee export, another format version or kind, or unloadable.
    """
    directory = Path(directory)
    metadata = read_saved_model_metadata(directory)
    if expected_kind is not None and metadata["kind"] != expected_kind:
        raise UserError(
            f"{directory} holds a {metadata['kind']} model, but a {expected_kind} model is needed"
        )
    import tensorflow as tf

    try:
        # Registers the tokenizer ops (FastBertNormalize, ...) that a text model's graph uses.
        import tensorflow_text  # noqa: F401
    except ImportError:
        if ModelKind(metadata["kind"]).uses_titles:
            raise UserError("loading a text or multimodal export needs tensorflow-text") from None
    try:
        loaded = tf.saved_model.load(str(directory))
    except (OSError, ValueError, IndexError, KeyError, tf.errors.OpError) as error:
        # IndexError: a variables file cut short (TensorFlow reads past its end).
        raise UserError(f"cannot load the SavedModel in {directory} (damaged or unfinished "
                        f"copy?): {type(error).__name__}: {str(error)[:300]}") from None
    if "serving_default" not in loaded.signatures:
        raise UserError(f"{directory} has no serving_default signature")
    serving_function = loaded.signatures["serving_default"]
    _check_signature(directory, metadata, serving_function)
    pixels_function = loaded.signatures.get(PIXELS_SIGNATURE)
    # Keep the loaded object alive: the signature function refers to its variables.
    model = ExportedModel(directory, metadata, serving_function, pixels_function)
    model._loaded = loaded
    return model


def _check_signature(directory: Path, metadata: dict, serving_function) -> None:
    """Refuse a SavedModel whose serving signature is not what :func:`export_model` writes for
    the metadata's kind (e.g. another SavedModel with a copied ``tf_shopee_export.json``):
    calling it would fail on every posting, each reported as a bad photo or title."""
    inputs = serving_function.structured_input_signature[1]
    outputs = serving_function.structured_outputs
    expected = set(SERVING_INPUTS[metadata["kind"]])
    embeddings = outputs.get("embeddings") if isinstance(outputs, dict) else None
    if (set(inputs) != expected or any(spec.dtype.name != "string" for spec in inputs.values())
            or embeddings is None or embeddings.shape[-1] != int(metadata["embedding_dim"])):
        found = ", ".join(f"{name}: {spec.dtype.name}" for name, spec in inputs.items())
        raise UserError(
            f"{directory} is not a tf_shopee {metadata['kind']} export: its serving signature "
            f"takes ({found}) and gives {sorted(outputs) if isinstance(outputs, dict) else '?'}"
            f", where one takes {sorted(expected)} as strings and gives 'embeddings' of "
            f"{metadata['embedding_dim']} (a SavedModel with a copied {METADATA_FILE}?)")
